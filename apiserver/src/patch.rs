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
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| ApiError::bad_request(format!("the JSON patch path {path:?} does not start with /")))?;
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
                last.parse::<usize>().ok().filter(|i| *i <= a.len()).ok_or_else(missing)?
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
            let i = last.parse::<usize>().ok().filter(|i| *i < a.len()).ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902, applied to a copy: all operations or none.
pub fn json_patch(doc: &Value, ops: &Value) -> ApiResult<Value> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be a list of operations"))?;
    let mut out = doc.clone();
    for op in ops {
        let field = |name: &str| -> ApiResult<String> {
            op.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request(format!("a JSON patch operation lacks {name:?}: {op}")))
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request(format!("a JSON patch operation lacks \"value\": {op}")))
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
                let v = out
                    .pointer(&from)
                    .cloned()
                    .ok_or_else(|| ApiError::unprocessable_patch(format!("the path {from:?} does not exist")))?;
                add(&mut out, &path, v)?;
            }
            "test" => {
                if out.pointer(&path) != Some(&value()?) {
                    return Err(ApiError::unprocessable_patch(format!("testing value {path} failed")));
                }
            }
            other => return Err(ApiError::bad_request(format!("unknown JSON patch operation {other:?}"))),
        }
    }
    Ok(out)
}

/// The merge key of the lists strategic merge patch merges rather than
/// replaces (a subset of Kubernetes' `x-kubernetes-patch-merge-key`).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets"
        | "hostAliases" | "conditions" | "ownerReferences" => match field {
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

/// Strategic merge patch: merge patch, except that lists with a merge key
/// are merged element by element. Directives (`$patch`, `$retainKeys`,
/// `$setElementOrder/…`, `$deleteFromPrimitiveList/…`) are not built yet
/// and are refused, never ignored.
pub fn strategic(target: &mut Value, patch: &Value) -> ApiResult<()> {
    if let Some(directive) = find_directive(patch) {
        return Err(ApiError::unsupported_media(format!(
            "strategic merge patch directive {directive:?} is not built yet in k3rs; use a JSON merge patch (--type merge) or a JSON patch"
        )));
    }
    strategic_merge(target, patch, "");
    Ok(())
}

fn find_directive(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m
            .iter()
            .find_map(|(k, v)| if k.starts_with('$') { Some(k.clone()) } else { find_directive(v) }),
        Value::Array(a) => a.iter().find_map(find_directive),
        _ => None,
    }
}

fn strategic_merge(target: &mut Value, patch: &Value, field: &str) {
    match (target, patch) {
        (t @ Value::Object(_), Value::Object(p)) => {
            let t = t.as_object_mut().expect("matched an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    match t.get_mut(k) {
                        Some(existing) => strategic_merge(existing, v, k),
                        None => {
                            t.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if merge_key(field).is_some() => {
            let key = merge_key(field).expect("checked");
            // Ports may be keyed by `port` (services) rather than `containerPort`.
            let key = if field == "ports" && p.iter().all(|e| e.get(key).is_none()) { "port" } else { key };
            for element in p {
                let id = element.get(key);
                match t.iter_mut().find(|e| id.is_some() && e.get(key) == id) {
                    Some(existing) => strategic_merge(existing, element, ""),
                    None => t.push(element.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
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
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2"}}, "list": [0, 2, 3]}));
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic(&mut pod, &json!({"spec": {"containers": [{"name": "b", "image": "z"}]}})).unwrap();
        assert_eq!(pod, json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]}}));
        assert_eq!(
            strategic(&mut pod, &json!({"spec": {"$retainKeys": ["x"]}})).unwrap_err().code,
            415
        );
    }
}
