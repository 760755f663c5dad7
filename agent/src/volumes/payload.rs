//! The files of configMap, secret, downwardAPI and projected volumes,
//! computed from the API objects they name.

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use base64::Engine;
use serde_json::Value;

use super::*;

pub(super) async fn volume_payload(
    pod: &Value,
    volume: &Value,
    source: &str,
    objects: &dyn Objects,
) -> Result<Payload, String> {
    let spec = volume.get(source).unwrap_or(&Value::Null);
    let namespace = pod_namespace(pod);
    match source {
        "configMap" => {
            let mode = mode_field(spec, "defaultMode")?.unwrap_or(DEFAULT_MODE);
            let mut payload = Payload::new();
            config_map_payload(objects, namespace, spec, mode, &mut payload).await?;
            Ok(payload)
        }
        "secret" => {
            let mode = mode_field(spec, "defaultMode")?.unwrap_or(DEFAULT_MODE);
            let mut payload = Payload::new();
            secret_payload(objects, namespace, spec, "secretName", mode, &mut payload).await?;
            Ok(payload)
        }
        "downwardAPI" => {
            let mode = mode_field(spec, "defaultMode")?.unwrap_or(DEFAULT_MODE);
            let mut payload = Payload::new();
            downward_payload(pod, spec, mode, &mut payload)?;
            Ok(payload)
        }
        "projected" => projected_payload(pod, spec, objects).await,
        other => Err(format!("unsupported volume type {other}")),
    }
}

pub(super) fn pod_namespace(pod: &Value) -> &str {
    match pod
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) if !ns.is_empty() => ns,
        _ => "default",
    }
}

/// A file mode field: an integer 0..=0777 (JSON carries it in decimal).
pub(super) fn mode_field(value: &Value, key: &str) -> Result<Option<u32>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(m) if m <= 0o777 => Ok(Some(m as u32)),
            _ => Err(format!(
                "invalid {key} {v}: must be between 0 and 0777 (511)"
            )),
        },
    }
}

pub(super) async fn config_map_payload(
    objects: &dyn Objects,
    namespace: &str,
    spec: &Value,
    default_mode: u32,
    payload: &mut Payload,
) -> Result<(), String> {
    let name = str_field(spec, "name");
    let optional = bool_field(spec, "optional");
    if name.is_empty() {
        return Err("configMap volume has no name".to_string());
    }
    let object = objects
        .get("configmaps", namespace, name)
        .await
        .map_err(|e| format!("couldn't get configmap {namespace}/{name}: {e}"))?;
    let Some(object) = object else {
        if optional {
            return Ok(());
        }
        return Err(format!("configmap \"{name}\" not found"));
    };
    let mut data = BTreeMap::new();
    if let Some(map) = object.get("data").and_then(Value::as_object) {
        for (key, value) in map {
            let text = value
                .as_str()
                .ok_or_else(|| format!("configmap \"{name}\" key {key} is not a string"))?;
            data.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    if let Some(map) = object.get("binaryData").and_then(Value::as_object) {
        for (key, value) in map {
            data.insert(key.clone(), decode_base64(value, "configmap", name, key)?);
        }
    }
    keyed_payload(
        &data,
        spec,
        default_mode,
        optional,
        "configmap references non-existent config key",
        payload,
    )
}

pub(super) async fn secret_payload(
    objects: &dyn Objects,
    namespace: &str,
    spec: &Value,
    name_field: &str,
    default_mode: u32,
    payload: &mut Payload,
) -> Result<(), String> {
    let name = str_field(spec, name_field);
    let optional = bool_field(spec, "optional");
    if name.is_empty() {
        return Err("secret volume has no secretName".to_string());
    }
    let object = objects
        .get("secrets", namespace, name)
        .await
        .map_err(|e| format!("couldn't get secret {namespace}/{name}: {e}"))?;
    let Some(object) = object else {
        if optional {
            return Ok(());
        }
        return Err(format!("secret \"{name}\" not found"));
    };
    let mut data = BTreeMap::new();
    // stringData is write-only on a real API server; honour it if it was stored as sent.
    if let Some(map) = object.get("stringData").and_then(Value::as_object) {
        for (key, value) in map {
            let text = value
                .as_str()
                .ok_or_else(|| format!("secret \"{name}\" key {key} is not a string"))?;
            data.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    if let Some(map) = object.get("data").and_then(Value::as_object) {
        for (key, value) in map {
            data.insert(key.clone(), decode_base64(value, "secret", name, key)?);
        }
    }
    keyed_payload(
        &data,
        spec,
        default_mode,
        optional,
        "secret references non-existent secret key",
        payload,
    )
}

pub(super) fn decode_base64(
    value: &Value,
    kind: &str,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, String> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("{kind} \"{name}\" key {key} is not a string"))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{kind} \"{name}\" key {key} is not valid base64: {e}"))
}

/// configMap and secret share the kubelet's rules: all keys, or just `items`, with modes.
pub(super) fn keyed_payload(
    data: &BTreeMap<String, Vec<u8>>,
    spec: &Value,
    default_mode: u32,
    optional: bool,
    missing_key: &str,
    payload: &mut Payload,
) -> Result<(), String> {
    let items = match spec.get("items") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(Value::Array(items)) => Some(items),
        Some(_) => return Err("items must be a list".to_string()),
    };
    let Some(items) = items else {
        for (key, bytes) in data {
            let path = clean_payload_path(key)?;
            payload.insert(
                path,
                FileContent {
                    data: bytes.clone(),
                    mode: default_mode,
                },
            );
        }
        return Ok(());
    };
    for item in items {
        let key = str_field(item, "key");
        let Some(bytes) = data.get(key) else {
            if optional {
                continue;
            }
            return Err(format!("{missing_key}: {key}"));
        };
        let path = clean_payload_path(str_field(item, "path"))?;
        let mode = mode_field(item, "mode")?.unwrap_or(default_mode);
        payload.insert(
            path,
            FileContent {
                data: bytes.clone(),
                mode,
            },
        );
    }
    Ok(())
}

pub(super) fn downward_payload(
    pod: &Value,
    spec: &Value,
    default_mode: u32,
    payload: &mut Payload,
) -> Result<(), String> {
    let items = match spec.get("items") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("downwardAPI items must be a list".to_string()),
    };
    for item in items {
        let path = clean_payload_path(str_field(item, "path"))?;
        let mode = mode_field(item, "mode")?.unwrap_or(default_mode);
        let field = item.get("fieldRef").filter(|v| !v.is_null());
        let resource = item.get("resourceFieldRef").filter(|v| !v.is_null());
        let text = match (field, resource) {
            (Some(f), None) => field_value(pod, str_field(f, "fieldPath"))?,
            (None, Some(r)) => {
                let container = str_field(r, "containerName");
                if container.is_empty() {
                    return Err(format!(
                        "downwardAPI item \"{path}\": resourceFieldRef needs containerName"
                    ));
                }
                resource_value(pod, container, str_field(r, "resource"), r.get("divisor"))?
            }
            _ => {
                return Err(format!(
                    "downwardAPI item \"{path}\" needs exactly one of fieldRef and resourceFieldRef"
                ));
            }
        };
        payload.insert(
            path,
            FileContent {
                data: text.into_bytes(),
                mode,
            },
        );
    }
    Ok(())
}

pub(super) async fn projected_payload(
    pod: &Value,
    spec: &Value,
    objects: &dyn Objects,
) -> Result<Payload, String> {
    let default_mode = mode_field(spec, "defaultMode")?.unwrap_or(DEFAULT_MODE);
    let namespace = pod_namespace(pod);
    let sources = match spec.get("sources") {
        None | Some(Value::Null) => return Ok(Payload::new()),
        Some(Value::Array(sources)) => sources,
        Some(_) => return Err("projected sources must be a list".to_string()),
    };
    let mut payload = Payload::new();
    for source in sources {
        let Some(fields) = source.as_object() else {
            return Err("a projected source is not an object".to_string());
        };
        for (key, value) in fields {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "configMap" => {
                    config_map_payload(objects, namespace, value, default_mode, &mut payload)
                        .await?
                }
                "secret" => {
                    secret_payload(
                        objects,
                        namespace,
                        value,
                        "name",
                        default_mode,
                        &mut payload,
                    )
                    .await?
                }
                "downwardAPI" => downward_payload(pod, value, default_mode, &mut payload)?,
                "serviceAccountToken" => {
                    if !TOKEN_NOTICE.swap(true, Ordering::Relaxed) {
                        tracing::info!("service-account tokens are not projected yet");
                    }
                }
                "clusterTrustBundle" => {
                    return Err("clusterTrustBundle projections are not supported".to_string());
                }
                other => return Err(format!("unsupported projected source {other}")),
            }
        }
    }
    Ok(payload)
}

/// A payload path: relative, no `..` component, not starting with `..` (reserved for the writer).
pub(super) fn clean_payload_path(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("a volume file has an empty path".to_string());
    }
    if raw.starts_with('/') {
        return Err(format!("invalid path \"{raw}\": must be relative"));
    }
    if raw.contains('\0') {
        return Err(format!("invalid path \"{raw}\""));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("invalid path \"{raw}\": must not contain '..'")),
            p => parts.push(p),
        }
    }
    match parts.first() {
        None => Err(format!("invalid path \"{raw}\"")),
        Some(first) if first.starts_with("..") => {
            Err(format!("invalid path \"{raw}\": must not start with '..'"))
        }
        Some(_) => Ok(parts.join("/")),
    }
}
