//! Joining a cluster, as a K3s agent does: fetch the CA without trusting
//! it, check it against the hash in the token, then present the node's
//! password to get the certificate the agent serves logs with.

use std::path::Path;

use anyhow::{Context, Result};
use apiserver::client::Client;

/// What joining gives the agent.
pub struct Joined {
    pub client: Client,
    pub ca_pem: String,
    pub token: String,
    /// The agent port's certificate and key (PEM).
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
}

/// The CA hash of a K3s token `K10<sha256 of the CA>::<credentials>`;
/// `None` for a bare secret (nothing to check the CA against).
pub fn ca_hash(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("K10")?;
    let (hash, _) = rest.split_once("::")?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

fn sha256_hex(s: &str) -> String {
    use std::fmt::Write as _;
    let digest = ring_digest(s.as_bytes());
    digest.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn ring_digest(data: &[u8]) -> Vec<u8> {
    apiserver::pki::sha256(data)
}

/// The node's password: made once, kept in the agent's directory (K3s
/// keeps it in /etc/rancher/node/password).
fn node_password(dir: &Path) -> Result<String> {
    let path = dir.join("node-password");
    if let Ok(p) = std::fs::read_to_string(&path)
        && !p.trim().is_empty()
    {
        return Ok(p.trim().to_string());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let password = apiserver::objects::uid().replace('-', "");
    apiserver::pki::write_private(&path, &password)?;
    Ok(password)
}

/// Why joining failed: worth retrying (the server is not up yet), or not.
#[derive(Debug)]
pub enum JoinError {
    Unreachable(anyhow::Error),
    Refused(anyhow::Error),
}

impl From<anyhow::Error> for JoinError {
    fn from(e: anyhow::Error) -> JoinError {
        JoinError::Refused(e)
    }
}

/// Joins `server` with `token` as node `node_name` at `addresses`.
pub async fn join(
    server: &str,
    token: &str,
    node_name: &str,
    addresses: &[String],
    agent_dir: &Path,
) -> Result<Joined, JoinError> {
    let Some(expected) = ca_hash(token) else {
        return Err(anyhow::anyhow!(
            "the token is not a full cluster token (K10<CA hash>::<secret>); use the server's token file (DATA_DIR/server/tls/token)"
        ).into());
    };
    let ca_pem = match apiserver::client::fetch_ca_unverified(server).await {
        Ok(pem) => pem,
        Err(e) => {
            return Err(JoinError::Unreachable(
                e.context(format!("cannot fetch the cluster CA from {server}")),
            ));
        }
    };
    if sha256_hex(&ca_pem) != expected.to_ascii_lowercase() {
        return Err(JoinError::Refused(anyhow::anyhow!(
            "the CA of {server} does not match the token's hash: wrong server, wrong token, or someone in between"
        )));
    }
    let client = Client::https(server, &ca_pem, token)?;
    let password = node_password(agent_dir)?;
    let headers = [
        ("k3s-Node-Name", node_name.to_string()),
        ("k3s-Node-Password", password),
        ("k3s-Node-IP", addresses.join(",")),
    ];
    let (status, body) = match client
        .post_with_headers("/v1-k3s/serving-kubelet.crt", &headers)
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            return Err(JoinError::Unreachable(
                anyhow::Error::new(e).context(format!("cannot reach {server}")),
            ));
        }
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    if status == http::StatusCode::UNAUTHORIZED {
        return Err(JoinError::Refused(anyhow::anyhow!(
            "the server refused the token (401 Unauthorized): check --token"
        )));
    }
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(JoinError::Refused(anyhow::anyhow!(
            "the server refused node {node_name:?} ({status}): {message}"
        )));
    }
    let split = text
        .find("-----BEGIN PRIVATE KEY-----")
        .context("the server's answer holds no private key")?;
    Ok(Joined {
        client,
        ca_pem,
        token: token.to_string(),
        serving_cert_pem: text[..split].to_string(),
        serving_key_pem: text[split..].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_ca_hash() {
        let hash = "a".repeat(64);
        assert_eq!(
            ca_hash(&format!("K10{hash}::server:secret")),
            Some(hash.as_str())
        );
        assert_eq!(ca_hash("secret"), None);
        assert_eq!(ca_hash("K10abc::server:x"), None);
    }
}
