//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and
//! strategic merge patch without its `$` directives.

use serde_json::{Map, Value};

use crate::status::{ApiError, ApiResult};

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split(path: &str) -> ApiResult<(String, String)> {
    let (parent, last) = path.rsplit_once('/').ok_or_else(|| {
        ApiError::bad_request(format!(
            "the JSON patch path {path:?} does not start with /"
        ))
    })?;
    Ok((parent.to_string(), unescape(last)))
}

fn add(doc: &mut Value, path: &str, value: Value) -> ApiResult<()> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    let missing = || ApiError::unprocessable_patch(format!("the path {path:?} does not exist"));
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(missing)?
            };
            a.insert(i, value);
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> ApiResult<Value> {
    let (parent, last) = split(path)?;
    let missing = || ApiError::unprocessable_patch(format!("the path {path:?} does not exist"));
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902, applied to a copy: all operations or none.
/// kube-apiserver's cap on the operations of one JSON patch.
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// kube-apiserver's cap on what a JSON patch's copies may add, in bytes
/// (its `JSONPatchMaxCopyBytes`, the request body limit).
const MAX_JSON_PATCH_COPY_BYTES: usize = 3 << 20;

/// The size of `v` as compact JSON, counted up to `cap` only (a copied
/// value is measured before it is copied).
fn json_size(v: &Value, cap: usize) -> usize {
    struct Counter {
        n: usize,
        cap: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n > self.cap {
                return Err(std::io::Error::other("over the cap"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { n: 0, cap };
    let _ = serde_json::to_writer(&mut counter, v);
    counter.n
}

pub fn json_patch(doc: &Value, ops: &Value) -> ApiResult<Value> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be a list of operations"))?;
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::too_large(format!(
            "Request entity too large: The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        )));
    }
    let mut out = doc.clone();
    // What `copy` ops have added: doubling copies would otherwise grow the
    // document exponentially from a small patch.
    let mut copied = 0usize;
    for op in ops {
        let field = |name: &str| -> ApiResult<String> {
            op.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("a JSON patch operation lacks {name:?}: {op}"))
                })
        };
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                ApiError::bad_request(format!("a JSON patch operation lacks \"value\": {op}"))
            })
        };
        let path = field("path")?;
        match field("op")?.as_str() {
            "add" => add(&mut out, &path, value()?)?,
            "remove" => {
                remove(&mut out, &path)?;
            }
            "replace" => {
                remove(&mut out, &path)?;
                add(&mut out, &path, value()?)?;
            }
            "move" => {
                let v = remove(&mut out, &field("from")?)?;
                add(&mut out, &path, v)?;
            }
            "copy" => {
                let from = field("from")?;
                let v = out.pointer(&from).ok_or_else(|| {
                    ApiError::unprocessable_patch(format!("the path {from:?} does not exist"))
                })?;
                copied += json_size(v, MAX_JSON_PATCH_COPY_BYTES + 1);
                if copied > MAX_JSON_PATCH_COPY_BYTES {
                    return Err(ApiError::unprocessable_patch(format!(
                        "Unable to complete the copy, the accumulated size increase of copy is {copied}, exceeding the limit {MAX_JSON_PATCH_COPY_BYTES}"
                    )));
                }
                let v = v.clone();
                add(&mut out, &path, v)?;
            }
            "test" => {
                if out.pointer(&path) != Some(&value()?) {
                    return Err(ApiError::unprocessable_patch(format!(
                        "testing value {path} failed"
                    )));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown JSON patch operation {other:?}"
                )));
            }
        }
    }
    Ok(out)
}

/// The merge key of the lists strategic merge patch merges rather than
/// replaces (a subset of Kubernetes' `x-kubernetes-patch-merge-key`).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "hostAliases"
        | "conditions"
        | "ownerReferences" => match field {
            "conditions" => "type",
            "ownerReferences" => "uid",
            "hostAliases" => "ip",
            _ => "name",
        },
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        _ => return None,
    })
}

/// Lists of primitives that strategic merge patch merges (as sets) rather
/// than replaces (`patchStrategy: merge` without a merge key).
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch (Kubernetes' `application/strategic-merge-patch+json`):
/// maps merge, lists with a merge key merge element by element, other lists
/// are replaced; with the directives `$patch` (replace, delete, merge),
/// `$retainKeys`, `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`.
pub fn strategic(target: &mut Value, patch: &Value) -> ApiResult<()> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "a strategic merge patch must be a JSON object",
        ));
    }
    match merge_object(Some(target.clone()), patch)? {
        Some(v) => *target = v,
        None => {
            return Err(ApiError::bad_request(
                "a strategic merge patch cannot delete the whole object",
            ));
        }
    }
    Ok(())
}

/// The patch without its directives (for values inserted as they are).
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none() || e.as_object().is_some_and(|m| m.len() > 1))
                .map(strip)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merges an object patch into `target` (`None`: absent); `None` back
/// means the object is deleted (`$patch: delete`).
fn merge_object(target: Option<Value>, patch: &Value) -> ApiResult<Option<Value>> {
    let p = patch.as_object().expect("called with objects");
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => return Ok(Some(strip(patch))),
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown $patch directive {other:?}"
            )));
        }
    }
    let mut t = match target {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut orders = Vec::new();
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), v.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone: Vec<&Value> = v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|e| !gone.contains(&e));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(ApiError::bad_request(format!(
                "unknown strategic merge patch directive {k:?}"
            )));
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(_) => {
                if let Some(merged) = merge_object(t.remove(k), v)? {
                    t.insert(k.clone(), merged);
                }
            }
            Value::Array(items) => {
                let merged = merge_list(k, t.remove(k), items)?;
                t.insert(k.clone(), merged);
            }
            scalar => {
                t.insert(k.clone(), scalar.clone());
            }
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (t.get_mut(&field), order.as_array()) {
            let key = merge_key(&field);
            let position = |e: &Value| {
                order.iter().position(|o| match key {
                    Some(k) => o.get(k).is_some() && o.get(k) == e.get(k),
                    None => o == e,
                })
            };
            // Listed elements in the given order; the others after them, as they were.
            let mut indexed: Vec<(usize, usize, Value)> = list
                .drain(..)
                .enumerate()
                .map(|(i, e)| (position(&e).unwrap_or(usize::MAX), i, e))
                .collect();
            indexed.sort_by_key(|(p, i, _)| (*p, *i));
            list.extend(indexed.into_iter().map(|(_, _, e)| e));
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()) || p.contains_key(k));
    }
    Ok(Some(Value::Object(t)))
}

fn merge_list(field: &str, target: Option<Value>, items: &[Value]) -> ApiResult<Value> {
    // `{"$patch": "replace"}` among the elements: the list is replaced.
    if items
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(strip(&Value::Array(items.to_vec())));
    }
    let mut list = match target {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    if let Some(key) = merge_key(field).filter(|_| items.iter().all(Value::is_object)) {
        // Ports may be keyed by `port` (services) rather than `containerPort`.
        let key = if field == "ports" && items.iter().all(|e| e.get(key).is_none()) {
            "port"
        } else {
            key
        };
        for element in items {
            let id = element.get(key);
            let found = list.iter().position(|e| id.is_some() && e.get(key) == id);
            let deleting = element.get("$patch").and_then(Value::as_str) == Some("delete");
            match (found, deleting) {
                (Some(i), true) => {
                    list.remove(i);
                }
                (None, true) => {}
                (Some(i), false) => {
                    let existing = list[i].clone();
                    match merge_object(Some(existing), element)? {
                        Some(v) => list[i] = v,
                        None => {
                            list.remove(i);
                        }
                    }
                }
                (None, false) => list.push(strip(element)),
            }
        }
        return Ok(Value::Array(list));
    }
    if merges_primitives(field) {
        for e in items {
            if !list.contains(e) {
                list.push(e.clone());
            }
        }
        return Ok(Value::Array(list));
    }
    Ok(strip(&Value::Array(items.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "replace", "path": "/list/0", "value": 0},
                {"op": "test", "path": "/list/2", "value": 3}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b": "2"}}, "list": [0, 2, 3]})
        );
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    #[test]
    fn json_patches_are_bounded() {
        // 18 doubling copies of a 100-byte string would build 26 MB.
        let doc = json!({"data": {"a": "x".repeat(100)}});
        let mut ops = vec![json!({"op": "add", "path": "/data/b", "value": ["x".repeat(100)]})];
        for _ in 0..18 {
            ops.push(json!({"op": "copy", "from": "/data/b", "path": "/data/b/-"}));
            ops.push(json!({"op": "copy", "from": "/data/b", "path": "/data/c"}));
            ops.push(json!({"op": "move", "from": "/data/c", "path": "/data/b"}));
        }
        let e = json_patch(&doc, &Value::Array(ops)).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert!(
            e.message.starts_with(
                "Unable to complete the copy, the accumulated size increase of copy is "
            ) && e.message.ends_with("exceeding the limit 3145728"),
            "{}",
            e.message
        );

        let many = vec![json!({"op": "test", "path": "/data/a", "value": "x".repeat(100)}); 10_001];
        let e = json_patch(&doc, &Value::Array(many)).unwrap_err();
        assert_eq!((e.code, e.reason), (413, "RequestEntityTooLarge"));
        assert_eq!(
            e.message,
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
        let enough =
            vec![json!({"op": "test", "path": "/data/a", "value": "x".repeat(100)}); 10_000];
        assert!(json_patch(&doc, &Value::Array(enough)).is_ok());
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}),
        )
        .unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]}})
        );
        // kubectl apply's directives: order, deletion by merge key, retained keys.
        strategic(
            &mut pod,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                             "containers": [{"name": "a", "image": "x2"}]}}),
        )
        .unwrap();
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "b", "image": "z"}, {"name": "a", "image": "x2"}])
        );
        strategic(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "image": "x2"}])
        );
        let mut d = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        strategic(&mut d, &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}})).unwrap();
        assert_eq!(d, json!({"spec": {"strategy": {"type": "Recreate"}}}));
        let mut m = json!({"metadata": {"finalizers": ["a", "b"]}});
        strategic(&mut m, &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]}})).unwrap();
        assert_eq!(m, json!({"metadata": {"finalizers": ["b", "c"]}}));
        assert!(strategic(&mut m, &json!({"$bogus": 1})).is_err());
    }
}
