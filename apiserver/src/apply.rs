//! Field ownership (`metadata.managedFields`, in Kubernetes' FieldsV1
//! format) and server-side apply (`application/apply-patch+yaml`), on the
//! main resource.
//!
//! A field set is the set of leaf paths an object sets, each step spelt
//! as FieldsV1 spells it: `f:name` for a field, `k:{"name":"a"}` for an
//! item of a list keyed by some of its fields, `v:"x"` for an item of a
//! set, `.` for a keyed item itself. Every write records who changed what
//! (operation `Update`); an apply owns exactly the fields of its last
//! configuration, takes only fields nobody else set to another value
//! (otherwise 409 with the conflicts, unless forced), and removes the
//! fields it applied before and dropped, when nobody else owns them.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::status::{ApiError, ApiResult};

type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

/// Metadata the server sets, which no manager owns.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Structs replaced as a whole (Kubernetes' `structType`/`mapType`
/// atomic), by field name.
const ATOMIC_STRUCTS: &[&str] = &[
    "selector",
    "requiredDuringSchedulingIgnoredDuringExecution",
    "involvedObject",
];

/// How a list merges, by field name (Kubernetes' `x-kubernetes-list-type`).
enum ListKind {
    /// Items identified by these fields (sorted).
    Keyed(&'static [&'static str]),
    /// Items are their own identity.
    Set,
    /// Replaced as a whole.
    Atomic,
}

fn list_kind(field: &str, items: &[Value]) -> ListKind {
    let keys: &'static [&'static str] = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => &["name"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        "conditions" => &["type"],
        "ownerReferences" => &["uid"],
        "hostAliases" => &["ip"],
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "ports" if items.iter().all(|i| i.get("containerPort").is_some()) => {
            &["containerPort", "protocol"]
        }
        "ports" => &["port", "protocol"],
        "finalizers" => return ListKind::Set,
        _ => return ListKind::Atomic,
    };
    // An item without its key cannot be told apart: the list is then
    // owned as a whole.
    if items.iter().all(|i| item_key(i, keys).is_some()) {
        ListKind::Keyed(keys)
    } else {
        ListKind::Atomic
    }
}

/// An item's FieldsV1 key step, `k:{"name":"a"}` (a missing `protocol`
/// is TCP, its default).
fn item_key(item: &Value, keys: &[&str]) -> Option<String> {
    let mut key = Map::new();
    for k in keys {
        let value = match item.get(*k) {
            Some(v) => v.clone(),
            None if *k == "protocol" => json!("TCP"),
            None => return None,
        };
        key.insert(k.to_string(), value);
    }
    Some(format!("k:{}", Value::Object(key)))
}

/// The leaf paths `obj` sets, without the server's metadata and status.
fn fields_of(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let Value::Object(m) = obj else {
        return out;
    };
    for (k, v) in m {
        match (k.as_str(), v) {
            ("apiVersion" | "kind" | "status", _) => {}
            ("metadata", Value::Object(meta)) => {
                for (mk, mv) in meta {
                    if !SERVER_METADATA.contains(&mk.as_str()) {
                        let path = vec!["f:metadata".to_string(), format!("f:{mk}")];
                        walk(mk, mv, path, &mut out);
                    }
                }
            }
            _ => walk(k, v, vec![format!("f:{k}")], &mut out),
        }
    }
    out
}

fn walk(field: &str, v: &Value, path: Path, out: &mut FieldSet) {
    let child = |path: &Path, k: &str| {
        let mut p = path.clone();
        p.push(format!("f:{k}"));
        p
    };
    match v {
        Value::Object(m) if !m.is_empty() && !ATOMIC_STRUCTS.contains(&field) => {
            for (k, c) in m {
                walk(k, c, child(&path, k), out);
            }
        }
        Value::Array(items) if !items.is_empty() => match list_kind(field, items) {
            ListKind::Keyed(keys) => {
                for item in items {
                    let mut p = path.clone();
                    p.push(item_key(item, keys).expect("checked by list_kind"));
                    let mut itself = p.clone();
                    itself.push(".".into());
                    out.insert(itself);
                    for (k, c) in item.as_object().into_iter().flatten() {
                        walk(k, c, child(&p, k), out);
                    }
                }
            }
            ListKind::Set => {
                for item in items {
                    let mut p = path.clone();
                    p.push(format!("v:{item}"));
                    out.insert(p);
                }
            }
            ListKind::Atomic => {
                out.insert(path);
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

/// The value at `path` (a keyed item itself for `.`).
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut here = obj;
    for step in path {
        here = match step.strip_prefix("f:") {
            Some(name) => here.get(name)?,
            None if step == "." => here,
            None => here
                .as_array()?
                .iter()
                .find(|item| matches_step(item, step))?,
        };
    }
    Some(here)
}

/// Removes the value at `path` (a keyed item for `…, k:…, .`), then any
/// object or list that removal left empty.
fn remove_at(obj: &mut Value, path: &[String]) {
    let path = match path.last().map(String::as_str) {
        Some(".") => &path[..path.len() - 1],
        _ => path,
    };
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(parent) = parent_mut(obj, parents) else {
        return;
    };
    let removed = match parent {
        Value::Object(m) => last
            .strip_prefix("f:")
            .and_then(|name| m.remove(name))
            .is_some(),
        Value::Array(items) => {
            let before = items.len();
            items.retain(|item| !matches_step(item, last));
            items.len() != before
        }
        _ => false,
    };
    let emptied = match parent {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    // Keep the top level (`metadata`, `spec`) even when emptied.
    if removed && emptied && parents.len() > 1 {
        remove_at(obj, parents);
    }
}

/// Whether a list item is the one a `k:` or `v:` step names.
fn matches_step(item: &Value, step: &str) -> bool {
    if let Some(key) = step.strip_prefix("k:") {
        let Ok(key) = serde_json::from_str::<Map<String, Value>>(key) else {
            return false;
        };
        let wanted = format!("k:{}", Value::Object(key.clone()));
        let keys: Vec<&str> = key.keys().map(String::as_str).collect();
        item_key(item, &keys) == Some(wanted)
    } else if let Some(value) = step.strip_prefix("v:") {
        serde_json::from_str::<Value>(value).is_ok_and(|v| v == *item)
    } else {
        false
    }
}

fn parent_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut here = obj;
    for step in path {
        here = if let Some(name) = step.strip_prefix("f:") {
            here.get_mut(name)?
        } else {
            here.as_array_mut()?
                .iter_mut()
                .find(|item| matches_step(item, step))?
        };
    }
    Some(here)
}

/// Whether `path` names one of the key fields of a keyed list item.
fn is_key_field(path: &[String]) -> bool {
    let [.., item, last] = path else {
        return false;
    };
    let (Some(key), Some(field)) = (item.strip_prefix("k:"), last.strip_prefix("f:")) else {
        return false;
    };
    serde_json::from_str::<Map<String, Value>>(key).is_ok_and(|k| k.contains_key(field))
}

/// Merges an applied configuration into the live object: maps field by
/// field, keyed lists item by item (new items last), sets as unions, the
/// rest replaced.
fn merge(live: &mut Value, applied: &Value, field: &str) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !ATOMIC_STRUCTS.contains(&field) => {
            for (k, av) in a {
                match l.get_mut(k) {
                    Some(lv) => merge(lv, av, k),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => {
            let both: Vec<Value> = l.iter().chain(a).cloned().collect();
            match list_kind(field, &both) {
                ListKind::Keyed(keys) => {
                    for item in a {
                        let key = item_key(item, keys);
                        match l.iter_mut().find(|i| item_key(i, keys) == key) {
                            Some(existing) => merge(existing, item, ""),
                            None => l.push(item.clone()),
                        }
                    }
                }
                ListKind::Set => {
                    for item in a {
                        if !l.contains(item) {
                            l.push(item.clone());
                        }
                    }
                }
                ListKind::Atomic => *l = a.clone(),
            }
        }
        (l, a) => *l = a.clone(),
    }
}

/// A `metadata.managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    fields: FieldSet,
    /// Entries of a subresource (`status`): kept as they are.
    raw: Option<Value>,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str) -> bool {
        self.raw.is_none() && self.manager == manager && self.operation == operation
    }
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter(|e| e.get("manager").is_some())
        .map(|e| {
            let text = |k: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let mut fields = FieldSet::new();
            if let Some(tree) = e.get("fieldsV1") {
                from_fields_v1(tree, &mut Vec::new(), &mut fields);
            }
            let ours = e.get("subresource").is_none() && text("fieldsType") == "FieldsV1";
            Entry {
                manager: text("manager"),
                operation: text("operation"),
                api_version: text("apiVersion"),
                time: e.get("time").and_then(Value::as_str).map(str::to_string),
                fields,
                raw: (!ours).then(|| e.clone()),
            }
        })
        .collect()
}

fn from_fields_v1(tree: &Value, path: &mut Path, out: &mut FieldSet) {
    match tree.as_object() {
        Some(m) if !m.is_empty() => {
            for (step, sub) in m {
                path.push(step.clone());
                from_fields_v1(sub, path, out);
                path.pop();
            }
        }
        _ if !path.is_empty() => {
            out.insert(path.clone());
        }
        _ => {}
    }
}

fn to_fields_v1(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for step in path {
            node = node
                .entry(step.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("FieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| e.raw.is_some() || !e.fields.is_empty())
        .map(|e| {
            e.raw.unwrap_or_else(|| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": to_fields_v1(&e.fields),
                });
                if let Some(t) = e.time {
                    v["time"] = json!(t);
                }
                v
            })
        })
        .collect();
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Who writes, as managedFields names it.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub now: &'a str,
}

/// Records an ordinary write (create, update, patch) from `old` (None:
/// created) to `new`: the writer now owns what it changed, and nobody owns
/// what it changed or removed any more. A body that sets managedFields to
/// entries without a manager (`[{}]`) clears them, as in Kubernetes; an
/// empty list keeps them.
pub fn track_update(old: Option<&Value>, new: &mut Value, writer: &Writer) {
    // An empty list changes nothing (kube's rule): only `[{}]` clears.
    let sent = new
        .pointer("/metadata/managedFields")
        .filter(|v| v.as_array().is_none_or(|a| !a.is_empty()))
        .cloned();
    let kept = old
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .cloned();
    if let Some(Value::Array(list)) = &sent
        && sent != kept
        && list.iter().all(|e| e.get("manager").is_none())
    {
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        return;
    }
    // Entries the client sent replace the stored ones; otherwise they stay.
    let mut entries = match (&sent, old) {
        (Some(_), _) => read_entries(new),
        (None, Some(o)) => read_entries(o),
        (None, None) => Vec::new(),
    };
    let before = old.map(fields_of).unwrap_or_default();
    let after = fields_of(new);
    let changed: FieldSet = after
        .iter()
        .filter(|p| !before.contains(*p) || old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .cloned()
        .collect();
    let removed: FieldSet = before.difference(&after).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        write_entries(new, entries);
        return;
    }
    for e in entries.iter_mut().filter(|e| e.raw.is_none()) {
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    match entries.iter_mut().find(|e| e.is(writer.manager, "Update")) {
        Some(mine) => {
            mine.fields.extend(changed);
            mine.api_version = writer.api_version.to_string();
            mine.time = Some(writer.now.to_string());
        }
        None => entries.push(Entry {
            manager: writer.manager.to_string(),
            operation: "Update".into(),
            api_version: writer.api_version.to_string(),
            time: Some(writer.now.to_string()),
            fields: changed,
            raw: None,
        }),
    }
    write_entries(new, entries);
}

/// Server-side apply of `applied` (already checked: its kind, apiVersion
/// and name are the target's) by `writer` to `live` (None: the apply
/// creates it). Answers the new object, or 409 naming the fields other
/// managers set to other values, unless `force`.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    writer: &Writer,
    force: bool,
) -> ApiResult<Value> {
    let empty = json!({});
    let live_obj = live.unwrap_or(&empty);
    let mut entries = read_entries(live_obj);
    let wanted = fields_of(applied);
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.raw.is_some() || e.is(writer.manager, "Apply") {
            continue;
        }
        for p in e.fields.intersection(&wanted) {
            let identity = p.last().is_some_and(|s| s == "." || s.starts_with("v:"));
            if !identity && value_at(live_obj, p) != value_at(applied, p) {
                conflicts.push((i, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&entries, &conflicts));
    }
    let mut new = live_obj.clone();
    let previous = entries
        .iter()
        .find(|e| e.is(writer.manager, "Apply"))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for p in previous.difference(&wanted) {
        if is_key_field(p) {
            // Goes with its item (the `.` path), never alone.
            continue;
        }
        // A keyed item stays while another manager owns any of its fields.
        let item = match p.split_last() {
            Some((last, item)) if last == "." => Some(item),
            _ => None,
        };
        let owned_elsewhere = entries.iter().any(|e| {
            !e.is(writer.manager, "Apply")
                && (e.fields.contains(p)
                    || item.is_some_and(|item| e.fields.iter().any(|q| q.starts_with(item))))
        });
        if !owned_elsewhere {
            remove_at(&mut new, p);
        }
    }
    let mut config = applied.clone();
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| {
            !SERVER_METADATA.contains(&k.as_str()) || k == "name" || k == "namespace"
        });
    }
    if let Some(m) = config.as_object_mut() {
        m.remove("status");
    }
    merge(&mut new, &config, "");
    for (i, p) in &conflicts {
        entries[*i].fields.remove(p);
    }
    let mine = Entry {
        manager: writer.manager.to_string(),
        operation: "Apply".into(),
        api_version: writer.api_version.to_string(),
        time: Some(writer.now.to_string()),
        fields: wanted,
        raw: None,
    };
    match entries.iter_mut().find(|e| e.is(writer.manager, "Apply")) {
        Some(e) => *e = mine,
        None => entries.push(mine),
    }
    write_entries(&mut new, entries);
    Ok(new)
}

/// A path as Kubernetes prints it: `.spec.containers[name="a"].image`.
fn path_text(path: &[String]) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(name) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = step.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = step.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

/// Kubernetes' apply conflict: 409 `Conflict`, one cause per field.
fn conflict_error(entries: &[Entry], conflicts: &[(usize, Path)]) -> ApiError {
    let who = |e: &Entry| {
        if e.operation == "Update" {
            format!("{:?} using {}", e.manager, e.api_version)
        } else {
            format!("{:?}", e.manager)
        }
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(i, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", who(&entries[*i])), "field": path_text(p)})
        })
        .collect();
    let message = if let [(i, p)] = conflicts {
        format!("conflict with {}: {}", who(&entries[*i]), path_text(p))
    } else {
        let mut managers: Vec<usize> = conflicts.iter().map(|(i, _)| *i).collect();
        managers.sort_by_key(|i| entries[*i].manager.clone());
        managers.dedup();
        let mut lines = Vec::new();
        for i in managers {
            lines.push(format!("conflicts with {}:", who(&entries[i])));
            for (_, p) in conflicts.iter().filter(|(j, _)| *j == i) {
                lines.push(format!("- {}", path_text(p)));
            }
        }
        lines.join("\n")
    };
    let plural = if conflicts.len() == 1 { "" } else { "s" };
    ApiError::apply_conflict(
        format!(
            "Apply failed with {} conflict{plural}: {message}",
            conflicts.len()
        ),
        causes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL: Writer = Writer {
        manager: "kubectl",
        api_version: "apps/v1",
        now: "2026-01-01T00:00:00Z",
    };
    const EDITOR: Writer = Writer {
        manager: "kubectl-edit",
        api_version: "apps/v1",
        now: "2026-01-01T00:00:01Z",
    };

    fn deployment(replicas: i64, image: &str, extra_env: bool) -> Value {
        let mut env = vec![json!({"name": "A", "value": "1"})];
        if extra_env {
            env.push(json!({"name": "B", "value": "2"}));
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": image, "env": env,
                                                              "ports": [{"containerPort": 80}]}]}}}})
    }

    fn stored(obj: Value) -> Value {
        let mut obj = obj;
        obj["metadata"]["uid"] = json!("u1");
        obj["metadata"]["resourceVersion"] = json!("5");
        obj
    }

    #[test]
    fn an_apply_owns_the_fields_of_its_configuration_in_fields_v1() {
        let created = apply(None, &deployment(2, "nginx", false), &KUBECTL, false).unwrap();
        let entry = &created["metadata"]["managedFields"][0];
        assert_eq!(entry["manager"], "kubectl");
        assert_eq!(entry["operation"], "Apply");
        let f = &entry["fieldsV1"];
        assert_eq!(f["f:spec"]["f:replicas"], json!({}));
        assert_eq!(
            f["f:spec"]["f:selector"],
            json!({}),
            "a label selector is atomic"
        );
        let container =
            &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert_eq!(container["."], json!({}));
        assert_eq!(container["f:image"], json!({}));
        assert_eq!(
            container["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["."],
            json!({})
        );
        assert!(
            f["f:metadata"].get("f:name").is_none(),
            "the server's metadata is nobody's"
        );
        // FieldsV1 reads back to the same set.
        let mut back = FieldSet::new();
        from_fields_v1(f, &mut Vec::new(), &mut back);
        assert_eq!(back, fields_of(&deployment(2, "nginx", false)));
    }

    #[test]
    fn a_field_another_manager_set_differently_conflicts_unless_forced() {
        let live = stored(apply(None, &deployment(2, "nginx", false), &KUBECTL, false).unwrap());
        let mut edited = live.clone();
        edited["spec"]["replicas"] = json!(5);
        track_update(Some(&live), &mut edited, &EDITOR);
        let entries = edited["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1]["fieldsV1"],
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert!(entries[0]["fieldsV1"]["f:spec"].get("f:replicas").is_none());

        // The same value as live: no conflict, the field is shared.
        let shared = apply(
            Some(&edited),
            &deployment(5, "nginx", false),
            &KUBECTL,
            false,
        )
        .unwrap();
        assert_eq!(shared["spec"]["replicas"], 5);
        let err = apply(
            Some(&edited),
            &deployment(3, "nginx", false),
            &KUBECTL,
            false,
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"
        );
        let forced = apply(
            Some(&edited),
            &deployment(3, "nginx", false),
            &KUBECTL,
            true,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            managers,
            ["kubectl"],
            "the editor owned nothing else, so its entry goes"
        );
    }

    #[test]
    fn fields_dropped_from_the_configuration_are_removed_unless_someone_else_owns_them() {
        let live = stored(apply(None, &deployment(2, "nginx", true), &KUBECTL, false).unwrap());
        let mut labelled = live.clone();
        labelled["metadata"]["labels"]["team"] = json!("a");
        track_update(Some(&live), &mut labelled, &EDITOR);
        let mut config = deployment(2, "nginx:2", false);
        config["metadata"].as_object_mut().unwrap().remove("labels");
        let new = apply(Some(&labelled), &config, &KUBECTL, false).unwrap();
        let env = &new["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(
            *env,
            json!([{"name": "A", "value": "1"}]),
            "env B was only the applier's"
        );
        assert_eq!(
            new["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        assert_eq!(
            new["metadata"]["labels"],
            json!({"team": "a"}),
            "app went; team is the editor's"
        );
    }

    #[test]
    fn a_dropped_item_stays_while_another_manager_owns_part_of_it() {
        let live = stored(apply(None, &deployment(2, "nginx", true), &KUBECTL, false).unwrap());
        let mut edited = live.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = json!("3");
        track_update(Some(&live), &mut edited, &EDITOR);
        let new = apply(
            Some(&edited),
            &deployment(2, "nginx", false),
            &KUBECTL,
            false,
        )
        .unwrap();
        let env = &new["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(
            *env,
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]),
            "B's value is the editor's, so B stays"
        );
    }

    #[test]
    fn an_update_that_changes_nothing_keeps_the_entries() {
        let live = stored(apply(None, &deployment(2, "nginx", false), &KUBECTL, false).unwrap());
        let mut same = live.clone();
        track_update(Some(&live), &mut same, &EDITOR);
        assert_eq!(same, live);
        let mut empty = live.clone();
        empty["metadata"]["managedFields"] = json!([]);
        track_update(Some(&live), &mut empty, &EDITOR);
        assert_eq!(empty, live, "an empty list changes nothing");
        let mut cleared = live.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        track_update(Some(&live), &mut cleared, &EDITOR);
        assert!(cleared["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn paths_print_as_kubernetes_prints_them() {
        let p: Path = ["f:spec", "f:containers", "k:{\"name\":\"a\"}", "f:image"]
            .map(String::from)
            .to_vec();
        assert_eq!(path_text(&p), ".spec.containers[name=\"a\"].image");
        let v: Path = ["f:metadata", "f:finalizers", "v:\"x\""]
            .map(String::from)
            .to_vec();
        assert_eq!(path_text(&v), ".metadata.finalizers[=\"x\"]");
    }
}
