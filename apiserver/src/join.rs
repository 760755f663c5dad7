//! What agents join through (K3s's supervisor routes): `/cacerts` and
//! `/ping` without authentication (the agent checks the CA against the hash
//! in its token), and `/v1-k3s/serving-kubelet.crt`, which checks the node
//! password and issues the certificate the agent serves logs with, from a
//! CA of its own that API clients do not trust.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::handlers::Api;
use crate::resources;
use crate::status::{ApiError, ApiResult};
use crate::store::Swap;

/// The node-password Secret's name, as K3s names it.
fn password_secret(node: &str) -> String {
    format!("{node}.node-password.k3s")
}

fn sha256_hex(s: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// K3s's rule: the first agent to register a node name sets its password; a
/// later one must present the same password, unless the Node was deleted.
async fn check_node_password(api: &Api, node: &str, password: &str) -> ApiResult<()> {
    let secrets = resources::find("", "v1", "secrets").expect("served");
    let nodes = resources::find("", "v1", "nodes").expect("served");
    let key = secrets.key(Some("kube-system"), &password_secret(node));
    let hash = sha256_hex(password);
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&hash);
    let existing = api.store.get(&key).await?;
    if let Some(secret) = &existing {
        let stored = secret.pointer("/data/hash").and_then(Value::as_str);
        if stored == Some(encoded.as_str()) {
            return Ok(());
        }
        if api.store.get(&nodes.key(None, node)).await?.is_some() {
            return Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "Node password rejected, duplicate hostname or contents of the node password file may not match server node-passwd entry; node {node:?} is registered by another machine (delete that node, or use another --node-name)"
                ),
                details: None,
            });
        }
    }
    let mut secret = json!({
        "metadata": {"name": password_secret(node)},
        "type": "k3s.cattle.io/node-password",
        "data": {"hash": encoded},
    });
    crate::objects::prepare_create(secrets, &mut secret, Some("kube-system"))?;
    let expected = existing
        .as_ref()
        .map(crate::store::revision_of)
        .unwrap_or(0);
    match api.store.swap(&key, &secret, expected).await? {
        Swap::Done(_) => Ok(()),
        Swap::Mismatch(_) => Err(ApiError::conflict("secrets", &password_secret(node))),
    }
}

/// The routes before authentication; `None` when the path is not one.
pub fn unauthenticated(api: &Api, path: &str) -> Option<(StatusCode, Bytes)> {
    match path {
        "/cacerts" => Some((StatusCode::OK, Bytes::from(api.ca_pem.clone()))),
        "/ping" => Some((StatusCode::OK, Bytes::from_static(b"pong"))),
        _ => None,
    }
}

/// `POST /v1-k3s/serving-kubelet.crt` with headers `k3s-Node-Name`,
/// `k3s-Node-Password` and `k3s-Node-IP` (comma-separated addresses):
/// answers the certificate PEM followed by its key PEM.
pub async fn serving_certificate(api: &Api, headers: &HeaderMap) -> ApiResult<Bytes> {
    let node = header(headers, "k3s-Node-Name")
        .ok_or_else(|| ApiError::bad_request("the k3s-Node-Name header is missing"))?;
    let password = header(headers, "k3s-Node-Password")
        .ok_or_else(|| ApiError::bad_request("the k3s-Node-Password header is missing"))?;
    if !crate::objects::is_subdomain(node) {
        return Err(ApiError::bad_request(format!(
            "node name {node:?} is not a lowercase RFC 1123 subdomain"
        )));
    }
    check_node_password(api, node, password).await?;
    let addresses = header(headers, "k3s-Node-IP")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse::<std::net::IpAddr>().map_err(|_| {
                ApiError::bad_request(format!("k3s-Node-IP {a:?} is not an IP address"))
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let (cert, key) = crate::pki::issue_node_serving(&api.tls_dir, node, &addresses)
        .map_err(|e| ApiError::internal(format!("cannot issue the node's certificate: {e:#}")))?;
    Ok(Bytes::from(format!("{cert}{key}")))
}
