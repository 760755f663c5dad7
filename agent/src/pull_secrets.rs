//! A pod's `imagePullSecrets` as the credentials of one pull: the
//! `kubernetes.io/dockerconfigjson` (`.dockerconfigjson`) or
//! `kubernetes.io/dockercfg` (`.dockercfg`) secrets it names, searched for
//! the image's registry as the kubelet searches them.

use base64::Engine;
use serde_json::Value;

use crate::volumes::Objects;

/// Credentials for one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullAuth {
    pub server: String,
    pub username: String,
    pub password: String,
    /// `base64(username:password)`, when the secret gives it so.
    pub auth: String,
}

/// The registry an image reference pulls from (`docker.io` when the
/// first component names no host).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

/// The credentials the pod's pull secrets hold for `image`'s registry;
/// secrets that are missing or malformed are skipped, as the kubelet
/// skips them (the pull then goes without).
pub async fn for_image(pod: &Value, image: &str, objects: &dyn Objects) -> Option<PullAuth> {
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let registry = registry_of(image);
    let names = pod
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str());
    for name in names {
        let Ok(Some(secret)) = objects.get("secrets", namespace, name).await else {
            tracing::warn!(
                secret = name,
                namespace,
                "an imagePullSecret cannot be read; pulling without it"
            );
            continue;
        };
        if let Some(auth) = find(&secret, &registry) {
            return Some(auth);
        }
    }
    None
}

/// The entry of a docker config secret for `registry`.
fn find(secret: &Value, registry: &str) -> Option<PullAuth> {
    let decode = |key: &str| -> Option<Value> {
        let encoded = secret["data"][key].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let auths = match decode(".dockerconfigjson") {
        Some(config) => config["auths"].clone(),
        None => decode(".dockercfg")?,
    };
    let (server, entry) = auths
        .as_object()?
        .iter()
        .find(|(key, _)| normalize(key) == normalize(registry))?;
    let text = |k: &str| entry[k].as_str().unwrap_or_default().to_string();
    Some(PullAuth {
        server: server.clone(),
        username: text("username"),
        password: text("password"),
        auth: text("auth"),
    })
}

/// A docker config key as a registry host: no scheme, no path, Docker
/// Hub's aliases as `docker.io`.
fn normalize(key: &str) -> String {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registries_and_entries_match_as_the_kubelet_matches_them() {
        assert_eq!(registry_of("nginx:alpine"), "docker.io");
        assert_eq!(registry_of("library/nginx"), "docker.io");
        assert_eq!(
            registry_of("registry.local:5000/web:1"),
            "registry.local:5000"
        );
        assert_eq!(registry_of("localhost/web"), "localhost");
        let config = json!({"auths": {
            "https://index.docker.io/v1/": {"auth": "dTpw"},
            "registry.local:5000": {"username": "u", "password": "p"},
        }});
        let data = base64::engine::general_purpose::STANDARD.encode(config.to_string());
        let secret = json!({"data": {".dockerconfigjson": data}});
        assert_eq!(find(&secret, "docker.io").unwrap().auth, "dTpw");
        let local = find(&secret, "registry.local:5000").unwrap();
        assert_eq!(
            (local.username.as_str(), local.password.as_str()),
            ("u", "p")
        );
        assert!(find(&secret, "other.local").is_none());
        assert!(find(&json!({"data": {".dockerconfigjson": "!!"}}), "docker.io").is_none());
    }
}
