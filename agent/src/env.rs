//! A container's environment as the kubelet computes it at each start:
//! `envFrom` sources, then `env` (literal values with `$(VAR)` expansion,
//! and `valueFrom` configMap/secret keys, pod fields and resources), then
//! the service variables no container variable overrides: the cluster's
//! `KUBERNETES_SERVICE_*` and, unless `enableServiceLinks` is false, the
//! docker-link style variables of every Service of the pod's namespace.
//!
//! Order: first definition's position, last value wins (the kubelet
//! builds a map, so it has no order of its own).

use base64::Engine;
use serde_json::Value;

use crate::runtime::expand;
use crate::volumes::{Objects, field_value, resource_value};

/// The container's variables, or the `CreateContainerConfigError`
/// message when a source it needs is missing. `services` are the
/// Services of the pod's namespace and the `default/kubernetes` one.
pub async fn container_env(
    pod: &Value,
    container: &Value,
    objects: &dyn Objects,
    services: &[Value],
) -> Result<Vec<(String, String)>, String> {
    let namespace = text(pod, "/metadata/namespace");
    let mut env: Vec<(String, String)> = Vec::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = text(source, "/prefix");
        for (key, value) in env_from(source, namespace, objects).await? {
            let name = format!("{prefix}{key}");
            if is_env_name(&name) {
                set(&mut env, name, value);
            } else {
                tracing::warn!(variable = %name, "skipping an envFrom key that is no valid variable name");
            }
        }
    }
    let service_vars = service_env(pod, services);
    for var in container["env"].as_array().into_iter().flatten() {
        let name = text(var, "/name");
        if name.is_empty() {
            continue;
        }
        let value = match var.get("valueFrom") {
            Some(from) => match value_from(from, pod, container, objects).await? {
                Some(v) => v,
                None => continue,
            },
            None => {
                // Expansion sees what is defined so far and the services.
                let mut known = env.clone();
                known.extend(service_vars.iter().cloned());
                expand(text(var, "/value"), &known)
            }
        };
        set(&mut env, name.to_string(), value);
    }
    for (name, value) in service_vars {
        if !env.iter().any(|(k, _)| *k == name) {
            env.push((name, value));
        }
    }
    Ok(env)
}

fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A C identifier-ish name, as kube's IsEnvVarName allows: letters,
/// digits, `_`, `-`, `.`, not starting with a digit.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The keys of one `envFrom` source.
async fn env_from(
    source: &Value,
    namespace: &str,
    objects: &dyn Objects,
) -> Result<Vec<(String, String)>, String> {
    let (kind, reference) = match (source.get("configMapRef"), source.get("secretRef")) {
        (Some(r), _) => ("configmaps", r),
        (_, Some(r)) => ("secrets", r),
        _ => return Ok(Vec::new()),
    };
    let name = text(reference, "/name");
    let optional = reference["optional"].as_bool().unwrap_or(false);
    match objects.get(kind, namespace, name).await? {
        Some(object) => Ok(entries(kind, &object)),
        None if optional => Ok(Vec::new()),
        None => Err(not_found(kind, name)),
    }
}

fn not_found(kind: &str, name: &str) -> String {
    let singular = if kind == "secrets" {
        "secret"
    } else {
        "configmap"
    };
    format!("{singular} {name:?} not found")
}

/// A configMap's `data` or a secret's decoded `data`, sorted by key.
fn entries(kind: &str, object: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = object["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let v = v.as_str()?;
            let value = if kind == "secrets" {
                let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                v.to_string()
            };
            Some((k.clone(), value))
        })
        .collect();
    out.sort();
    out
}

/// A `valueFrom`; None when an optional source is missing.
async fn value_from(
    from: &Value,
    pod: &Value,
    container: &Value,
    objects: &dyn Objects,
) -> Result<Option<String>, String> {
    let namespace = text(pod, "/metadata/namespace");
    if let Some(field) = from.get("fieldRef") {
        return field_value(pod, text(field, "/fieldPath")).map(Some);
    }
    if let Some(resource) = from.get("resourceFieldRef") {
        let name = match text(resource, "/containerName") {
            "" => text(container, "/name"),
            n => n,
        };
        let divisor = resource.get("divisor");
        return resource_value(pod, name, text(resource, "/resource"), divisor).map(Some);
    }
    let (kind, reference, label) = match (from.get("configMapKeyRef"), from.get("secretKeyRef")) {
        (Some(r), _) => ("configmaps", r, "ConfigMap"),
        (_, Some(r)) => ("secrets", r, "Secret"),
        _ => return Err("valueFrom names no source".to_string()),
    };
    let (name, key) = (text(reference, "/name"), text(reference, "/key"));
    let optional = reference["optional"].as_bool().unwrap_or(false);
    let Some(object) = objects.get(kind, namespace, name).await? else {
        return if optional {
            Ok(None)
        } else {
            Err(not_found(kind, name))
        };
    };
    match entries(kind, &object).into_iter().find(|(k, _)| k == key) {
        Some((_, value)) => Ok(Some(value)),
        None if optional => Ok(None),
        None => Err(format!(
            "couldn't find key {key} in {label} {namespace}/{name}"
        )),
    }
}

/// The variables of the pod's services (kube's docker-link style ones).
fn service_env(pod: &Value, services: &[Value]) -> Vec<(String, String)> {
    let namespace = text(pod, "/metadata/namespace");
    let links = pod
        .pointer("/spec/enableServiceLinks")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut env = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for service in services {
        let (ns, name) = (
            text(service, "/metadata/namespace"),
            text(service, "/metadata/name"),
        );
        let master = ns == "default" && name == "kubernetes";
        if !(master || (links && ns == namespace)) || !seen.insert((ns, name)) {
            continue;
        }
        let ip = text(service, "/spec/clusterIP");
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        let ports: Vec<&Value> = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let Some(first) = ports.first() else { continue };
        let port_of = |p: &Value| p["port"].as_i64().unwrap_or_default();
        let proto_of = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
        env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        env.push((format!("{prefix}_SERVICE_PORT"), port_of(first).to_string()));
        for p in &ports {
            if let Some(port_name) = p["name"].as_str().filter(|n| !n.is_empty()) {
                let port_name = port_name.to_ascii_uppercase().replace('-', "_");
                env.push((
                    format!("{prefix}_SERVICE_PORT_{port_name}"),
                    port_of(p).to_string(),
                ));
            }
        }
        let url = |p: &Value| format!("{}://{ip}:{}", proto_of(p).to_ascii_lowercase(), port_of(p));
        env.push((format!("{prefix}_PORT"), url(first)));
        for p in &ports {
            let (port, proto) = (port_of(p), proto_of(p));
            let base = format!("{prefix}_PORT_{port}_{proto}");
            env.push((base.clone(), url(p)));
            env.push((format!("{base}_PROTO"), proto.to_ascii_lowercase()));
            env.push((format!("{base}_PORT"), port.to_string()));
            env.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::tests::Fake;
    use serde_json::json;

    fn objects() -> Fake {
        let fake = Fake::default();
        fake.put(
            "configmaps",
            "cfg",
            json!({"data": {"mode": "fast", "bad key": "x"}}),
        );
        fake.put("secrets", "s", json!({"data": {"pw": "aHVudGVyMg=="}}));
        fake
    }

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {"nodeName": "n1"},
               "status": {"podIP": "10.42.0.7"}})
    }

    #[tokio::test]
    async fn sources_combine_in_the_kubelets_way() {
        let container = json!({"name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(WEB_SERVICE_HOST):$(CFG_mode)"},
            {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}},
        ]});
        let services = vec![
            json!({"metadata": {"namespace": "default", "name": "kubernetes"},
                   "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}),
            json!({"metadata": {"namespace": "ns", "name": "web"},
                   "spec": {"clusterIP": "10.43.0.9", "ports": [{"port": 80}]}}),
        ];
        let env = container_env(&pod(), &container, &objects(), &services)
            .await
            .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CFG_mode"), Some("fast"));
        assert_eq!(get("CFG_bad key"), None);
        assert_eq!(get("PW"), Some("hunter2"));
        assert_eq!(get("NODE"), Some("n1"));
        assert_eq!(get("IP"), Some("10.42.0.7"));
        assert_eq!(get("URL"), Some("http://10.43.0.9:fast"));
        assert_eq!(get("GONE"), None);
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP"), Some("tcp://10.43.0.1:443"));
        assert_eq!(get("WEB_PORT_80_TCP_ADDR"), Some("10.43.0.9"));
        assert_eq!(env[0].0, "CFG_mode");
    }

    #[tokio::test]
    async fn missing_sources_are_config_errors() {
        let cases = [
            (
                json!({"configMapKeyRef": {"name": "nope", "key": "k"}}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"configMapKeyRef": {"name": "cfg", "key": "k"}}),
                "couldn't find key k in ConfigMap ns/cfg",
            ),
            (
                json!({"secretKeyRef": {"name": "s", "key": "k"}}),
                "couldn't find key k in Secret ns/s",
            ),
        ];
        for (from, message) in cases {
            let container = json!({"name": "c", "env": [{"name": "X", "valueFrom": from}]});
            let err = container_env(&pod(), &container, &objects(), &[])
                .await
                .unwrap_err();
            assert_eq!(err, message);
        }
    }
}
