//! The API server's certificates, token and admin kubeconfig: made on
//! first start under `DATA_DIR/server/`, reused afterwards.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

/// The PEM files and secrets the server runs with.
pub struct Pki {
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// K3s's token form: `K10<sha256 of the CA>::server:<secret>`.
    pub token: String,
}

fn write_secret(path: &Path, content: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn named(cn: &str, org: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    dn
}

/// Valid from yesterday (clock skew) for `days` days.
pub fn validity(params: &mut CertificateParams, days: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let date = |secs: i64| {
        let t = crate::objects::rfc3339(secs);
        let num = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap_or(1);
        rcgen::date_time_ymd(num(0..4) as i32, num(5..7) as u8, num(8..10) as u8)
    };
    params.not_before = date(now - 86_400);
    params.not_after = date(now + days * 86_400);
}

/// SHA-256 of `data` (the token's CA hash).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// Writes a file only its owner can read, atomically.
pub fn write_private(path: &Path, content: &str) -> Result<()> {
    write_secret(path, content, 0o600)
}

/// The CA's parameters; an issuer rebuilt from them and the CA key signs
/// certificates that chain to the stored CA certificate (same name, same key).
fn ca_params() -> Result<CertificateParams> {
    ca_named("k3rs-server-ca")
}

/// The node-serving CA signs only agents' serving certificates, and only
/// the API server trusts it, for its connections to agents: a certificate
/// a joining node asks for can never pass as the API server's.
fn node_ca_params() -> Result<CertificateParams> {
    ca_named("k3rs-node-serving-ca")
}

fn ca_named(cn: &str) -> Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = named(cn, "k3rs");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, 3650);
    Ok(ca)
}

/// The node-serving CA's certificate PEM, made in `dir` if missing.
pub fn ensure_node_ca(dir: &Path) -> Result<String> {
    if let Ok(pem) = std::fs::read_to_string(dir.join(NODE_CA_CERT)) {
        return Ok(pem);
    }
    let key = KeyPair::generate()?;
    let cert = node_ca_params()?.self_signed(&key)?;
    write_secret(&dir.join(NODE_CA_KEY), &key.serialize_pem(), 0o600)?;
    // The certificate last: its presence marks a complete pair.
    write_secret(&dir.join(NODE_CA_CERT), &cert.pem(), 0o644)?;
    Ok(cert.pem())
}

const NODE_CA_CERT: &str = "node-serving-ca.crt";
const NODE_CA_KEY: &str = "node-serving-ca.key";

/// A serving certificate for a node agent's port (K3s's
/// `serving-kubelet.crt`) naming exactly the node and its IP addresses,
/// signed by the node-serving CA kept in `dir`. Answers the certificate
/// and key PEM.
pub fn issue_node_serving(
    dir: &Path,
    node: &str,
    addresses: &[std::net::IpAddr],
) -> Result<(String, String)> {
    let ca_key_pem = std::fs::read_to_string(dir.join(NODE_CA_KEY))
        .with_context(|| format!("cannot read the node-serving CA key in {}", dir.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::new(node_ca_params()?, &ca_key);
    let key = KeyPair::generate()?;
    let mut sans = vec![node.to_string()];
    sans.extend(addresses.iter().map(|a| a.to_string()));
    sans.dedup();
    let mut p = CertificateParams::new(sans)?;
    p.distinguished_name = named(node, "system:nodes");
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut p, 365);
    Ok((p.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
}

/// Loads the PKI from `dir`, creating what is missing.
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = |name: &str| -> PathBuf { dir.join(name) };
    let read = |name: &str| std::fs::read_to_string(path(name)).ok();
    if let (Some(ca), Some(sc), Some(sk), Some(ac), Some(ak), Some(token)) = (
        read("server-ca.crt"),
        read("serving.crt"),
        read("serving.key"),
        read("client-admin.crt"),
        read("client-admin.key"),
        read("token"),
    ) {
        return Ok(Pki {
            ca_pem: ca,
            serving_cert_pem: sc,
            serving_key_pem: sk,
            admin_cert_pem: ac,
            admin_key_pem: ak,
            token: token.trim().to_string(),
        });
    }
    let ca_key = KeyPair::generate()?;
    let ca = ca_params()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |cn: &str, org: &str, sans: Vec<String>, usage| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name = named(cn, org);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        validity(&mut p, 365);
        Ok((p.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    };
    let mut sans: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sans.extend(hosts.iter().cloned());
    sans.dedup();
    let (serving_cert_pem, serving_key_pem) = leaf(
        "k3rs-apiserver",
        "k3rs",
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (admin_cert_pem, admin_key_pem) = leaf(
        "system:admin",
        "system:masters",
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let ca_pem = ca_cert.pem();
    let digest = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let token = format!(
        "K10{}::server:{}",
        hex(digest.as_ref()),
        hex(&crate::objects::random_bytes::<16>())
    );
    write_secret(&path("server-ca.key"), &ca_key.serialize_pem(), 0o600)?;
    write_secret(&path("serving.crt"), &serving_cert_pem, 0o644)?;
    write_secret(&path("serving.key"), &serving_key_pem, 0o600)?;
    write_secret(&path("client-admin.crt"), &admin_cert_pem, 0o644)?;
    write_secret(&path("client-admin.key"), &admin_key_pem, 0o600)?;
    write_secret(&path("token"), &token, 0o600)?;
    // The CA last: its presence marks a complete set.
    write_secret(&path("server-ca.crt"), &ca_pem, 0o644)?;
    Ok(Pki {
        ca_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
        token,
    })
}

/// Writes the admin kubeconfig (JSON, which every YAML reader takes).
pub fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default", "cluster": {"server": server, "certificate-authority-data": b64(&pki.ca_pem)}}],
        "users": [{"name": "default", "user": {"client-certificate-data": b64(&pki.admin_cert_pem), "client-key-data": b64(&pki.admin_key_pem)}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
        "current-context": "default",
        "preferences": {},
    });
    write_secret(path, &serde_json::to_string_pretty(&config)?, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn verifies(ca_pem: &str, cert_pem: &str, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        verifier
            .verify_server_cert(
                &cert,
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    /// A node's serving certificate names only the node and its addresses,
    /// and API clients, who trust the server CA, never accept it.
    #[test]
    fn node_serving_certificates_come_from_their_own_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure(dir.path(), &[]).unwrap();
        let node_ca = ensure_node_ca(dir.path()).unwrap();
        assert_eq!(ensure_node_ca(dir.path()).unwrap(), node_ca);
        let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let (cert, _) = issue_node_serving(dir.path(), "kubernetes.default.svc", &[ip]).unwrap();
        assert!(verifies(&node_ca, &cert, "kubernetes.default.svc"));
        assert!(verifies(&node_ca, &cert, "10.0.0.7"));
        assert!(!verifies(&node_ca, &cert, "localhost"));
        assert!(!verifies(&pki.ca_pem, &cert, "kubernetes.default.svc"));
        assert!(verifies(
            &pki.ca_pem,
            &pki.serving_cert_pem,
            "kubernetes.default.svc"
        ));
    }
}
