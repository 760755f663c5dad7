//! Taints and tolerations (kube's `ToleratesTaint`).

use serde_json::{Value, json};

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

pub fn key(taint: &Value) -> &str {
    text(taint, "key")
}

pub fn value(taint: &Value) -> &str {
    text(taint, "value")
}

pub fn effect(taint: &Value) -> &str {
    text(taint, "effect")
}

/// Whether `toleration` tolerates `taint`: an empty effect matches every
/// effect, an empty key with `Exists` every key.
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let t_effect = text(toleration, "effect");
    if !t_effect.is_empty() && t_effect != effect(taint) {
        return false;
    }
    let t_key = text(toleration, "key");
    if !t_key.is_empty() && t_key != key(taint) {
        return false;
    }
    match text(toleration, "operator") {
        "" | "Equal" => text(toleration, "value") == value(taint),
        "Exists" => true,
        _ => false,
    }
}

/// The first toleration in `tolerations` that tolerates `taint`.
pub fn matching<'a>(tolerations: &'a [Value], taint: &Value) -> Option<&'a Value> {
    tolerations.iter().find(|t| tolerates(t, taint))
}

/// The pod's tolerations.
pub fn of_pod(pod: &Value) -> Vec<Value> {
    pod.pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The pod's tolerations plus what kube's DefaultTolerationSeconds
/// admission adds: `Exists` for the not-ready and unreachable NoExecute
/// taints with `seconds`, unless the pod already says something about
/// them. k3rs admits pods without that plugin, so its readers add them.
pub fn with_defaults(tolerations: &[Value], seconds: i64) -> Vec<Value> {
    let mentions = |wanted: &str| {
        tolerations.iter().any(|t| {
            let k = text(t, "key");
            let e = text(t, "effect");
            (k == wanted || k.is_empty()) && (e == "NoExecute" || e.is_empty())
        })
    };
    let mut out = tolerations.to_vec();
    for k in [NOT_READY, UNREACHABLE] {
        if !mentions(k) {
            out.push(json!({"key": k, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
    out
}
