//! What the server fills in and checks on the objects clients send.

use serde_json::{Value, json};

use crate::resources::Resource;
use crate::status::{ApiError, ApiResult};

/// Random bytes from the system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .expect("the system's random generator works");
    buf
}

/// A version-4 UUID.
pub fn uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Now, as Kubernetes writes timestamps: RFC 3339, UTC, whole seconds.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whether `name` is a DNS-1123 subdomain (most objects).
pub fn is_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(|part| is_label(part, 253))
}

/// Whether `name` is a DNS-1123 label (namespaces, services).
fn is_label(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Checks the name and the fields every object of `res` needs.
pub fn validate(res: &Resource, obj: &Value) -> ApiResult<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = Vec::new();
    let label_named = matches!(res.kind, "Namespace" | "Service");
    if name.is_empty() {
        causes.push((
            "metadata.name".to_string(),
            "Required value: name or generateName is required".to_string(),
        ));
    } else if label_named && !is_label(name, 63) {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
        ));
    } else if !label_named && !is_subdomain(name) {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ));
    }
    match res.kind {
        "Pod" => {
            let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
            if containers.is_none_or(|c| c.is_empty()) {
                causes.push(("spec.containers".into(), "Required value".into()));
            }
            for (i, c) in containers.into_iter().flatten().enumerate() {
                if c.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push((
                        format!("spec.containers[{i}].name"),
                        "Required value".into(),
                    ));
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push((
                        format!("spec.containers[{i}].image"),
                        "Required value".into(),
                    ));
                }
            }
        }
        "Deployment" | "ReplicaSet" => {
            if obj.pointer("/spec/selector").is_none() {
                causes.push(("spec.selector".into(), "Required value".into()));
            }
            if obj
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .is_none_or(|c| c.is_empty())
            {
                causes.push((
                    "spec.template.spec.containers".into(),
                    "Required value".into(),
                ));
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res.kind, name, causes))
    }
}

/// Fills in what the server sets on create: name from generateName, uid,
/// creationTimestamp, generation, namespace, kind/apiVersion, defaults.
pub fn prepare_create(res: &Resource, obj: &mut Value, namespace: Option<&str>) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    }
    let kind = obj.get("kind").and_then(Value::as_str);
    if kind.is_some_and(|k| k != res.kind) {
        return Err(ApiError::bad_request(format!(
            "the object's kind {:?} does not match the resource {} ({})",
            kind.unwrap_or_default(),
            res.plural,
            res.kind
        )));
    }
    obj["kind"] = json!(res.kind);
    obj["apiVersion"] = json!(res.api_version());
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("made an object above");
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name && let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let suffix: String = random_bytes::<5>()
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        meta.insert("name".into(), json!(format!("{prefix}{suffix}")));
    }
    if res.namespaced {
        let ns = namespace.unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            Some(given) if given != ns => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
                )));
            }
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), json!(uid()));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.insert("generation".into(), json!(1));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    // Status belongs to the server and its controllers, not the creator.
    if res.has_status {
        obj.as_object_mut().expect("checked above").remove("status");
    }
    defaults(res, obj);
    validate(res, obj)
}

/// The defaults kube-apiserver fills in for the kinds that have some.
fn defaults(res: &Resource, obj: &mut Value) {
    let set = |obj: &mut Value, pointer: &str, field: &str, value: Value| {
        if let Some(Value::Object(m)) = obj.pointer_mut(pointer) {
            m.entry(field).or_insert(value);
        }
    };
    match res.kind {
        "Pod" => {
            if obj.get("spec").is_none() {
                obj["spec"] = json!({});
            }
            for (f, v) in [
                ("restartPolicy", json!("Always")),
                ("terminationGracePeriodSeconds", json!(30)),
                ("dnsPolicy", json!("ClusterFirst")),
                ("schedulerName", json!("default-scheduler")),
                ("serviceAccountName", json!("default")),
                ("securityContext", json!({})),
            ] {
                set(obj, "/spec", f, v);
            }
            if let Some(cs) = obj
                .pointer_mut("/spec/containers")
                .and_then(Value::as_array_mut)
            {
                for c in cs {
                    let latest = c
                        .get("image")
                        .and_then(Value::as_str)
                        .is_some_and(|i| i.ends_with(":latest") || !i.contains(':'));
                    if let Value::Object(m) = c {
                        m.entry("imagePullPolicy").or_insert(json!(if latest {
                            "Always"
                        } else {
                            "IfNotPresent"
                        }));
                        m.entry("terminationMessagePath")
                            .or_insert(json!("/dev/termination-log"));
                        m.entry("terminationMessagePolicy").or_insert(json!("File"));
                        m.entry("resources").or_insert(json!({}));
                    }
                }
            }
            obj["status"] = json!({"phase": "Pending"});
        }
        "Namespace" => {
            set(obj, "", "spec", json!({"finalizers": ["kubernetes"]}));
            obj["status"] = json!({"phase": "Active"});
        }
        "Service" => {
            set(obj, "", "spec", json!({}));
            set(obj, "/spec", "type", json!("ClusterIP"));
            set(obj, "/spec", "sessionAffinity", json!("None"));
        }
        "Deployment" | "ReplicaSet" => {
            set(obj, "/spec", "replicas", json!(1));
            if res.kind == "Deployment" {
                set(obj, "/spec", "revisionHistoryLimit", json!(10));
                set(obj, "/spec", "progressDeadlineSeconds", json!(600));
                set(
                    obj,
                    "/spec",
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                );
            }
        }
        "Secret" => {
            set(obj, "", "type", json!("Opaque"));
            fold_string_data(obj);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_uids() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_867_200), "2026-11-28T12:00:00Z");
        let u = uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn names_are_checked() {
        let cm = crate::resources::find("", "v1", "configmaps").unwrap();
        assert!(validate(cm, &json!({"metadata": {"name": "a.b-c"}})).is_ok());
        let e = validate(cm, &json!({"metadata": {"name": "Bad_Name"}})).unwrap_err();
        assert_eq!(e.code, 422);
        let ns = crate::resources::find("", "v1", "namespaces").unwrap();
        assert!(validate(ns, &json!({"metadata": {"name": "a.b"}})).is_err());
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp ("…Z").
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// kubectl's short age: 42s, 5m, 3h, 2d.
pub fn age(created: &str) -> String {
    let Some(t) = parse_rfc3339(created) else {
        return "<unknown>".into();
    };
    let now = parse_rfc3339(&now()).unwrap_or(t);
    let s = (now - t).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86_400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339_round_trips() {
        for t in [0, 951_782_400, 1_795_867_200] {
            assert_eq!(super::parse_rfc3339(&super::rfc3339(t)), Some(t));
        }
    }
}

/// A Secret's `stringData` is write-only: it is folded into `data`
/// (base64), overriding keys of the same name.
pub fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}
