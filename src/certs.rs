//! `k3rs certs generate`: a CA, a server certificate and a client
//! certificate for a quick start with TLS and client-certificate auth.
//!
//! Lifetimes follow K3s: the CA for ten years, the leaf certificates for
//! one. Keys are ECDSA P-256, written with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Writes `ca.crt`, `ca.key`, `server.crt`, `server.key`, `client.crt`,
/// `client.key`, `peer.crt` and `peer.key` into `dir`; `hosts` are the
/// server's names and addresses (the peer certificate, for replication
/// between members, serves and authenticates with the same names).
/// Refuses to overwrite existing files.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<()> {
    let names = [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
        "peer.crt",
        "peer.key",
    ];
    for name in names {
        if dir.join(name).exists() {
            bail!(
                "{} already exists; pick an empty --dir",
                dir.join(name).display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = named("k3rs-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca, 10 * 365);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let leaf = |cn: &str,
                sans: Vec<String>,
                usage: Vec<ExtendedKeyUsagePurpose>|
     -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = named(cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usage;
        set_validity(&mut params, 365);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_crt, server_key) = leaf(
        "k3rs-server",
        hosts.to_vec(),
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let (client_crt, client_key) = leaf(
        "k3rs-client",
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    let (peer_crt, peer_key) = leaf(
        "k3rs-peer",
        hosts.to_vec(),
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;

    write(dir, "ca.crt", &ca_cert.pem(), 0o644)?;
    write(dir, "ca.key", &ca_key.serialize_pem(), 0o600)?;
    write(dir, "server.crt", &server_crt, 0o644)?;
    write(dir, "server.key", &server_key, 0o600)?;
    write(dir, "client.crt", &client_crt, 0o644)?;
    write(dir, "client.key", &client_key, 0o600)?;
    write(dir, "peer.crt", &peer_crt, 0o644)?;
    write(dir, "peer.key", &peer_key, 0o600)?;
    Ok(())
}

fn named(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "k3rs");
    dn
}

/// Valid from yesterday (clock skew) for `days` days.
fn set_validity(params: &mut CertificateParams, days: i64) {
    apiserver::pki::validity(params, days);
}

fn write(dir: &Path, name: &str, content: &str, mode: u32) -> Result<()> {
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
