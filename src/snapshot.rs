//! `k3rs kine snapshot save|restore`.
//!
//! `save` asks a running server for Maintenance.Snapshot, as `etcdctl
//! snapshot save` does, and writes the stream (database, then its SHA-256)
//! to a temporary file that is fsynced and renamed into place only once
//! complete and checked. `restore` turns such a file into a new database,
//! offline (see `kine::backend::snapshot`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use kine::backend::snapshot::{HASH_LEN, Sha256};
use kine::proto::SnapshotRequest;
use kine::proto::maintenance_client::MaintenanceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How to reach a server: etcdctl's flags.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` or a URL.
    pub endpoint: String,
    /// CA that signed the server's certificate: turns on TLS.
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate and key, for servers that require one.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

async fn connect(config: &ClientConfig) -> Result<Channel> {
    let tls = config.cacert.is_some() || config.cert.is_some();
    if config.endpoint.starts_with("unix:") {
        // `k3rs server`'s own socket: plain, its file mode is the guard.
        if tls {
            bail!("--cacert, --cert and --key are for TCP endpoints, not a unix socket");
        }
        return tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .with_context(|| format!("--endpoints {:?} is not unix://PATH", config.endpoint))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", config.endpoint));
    }
    let address = config
        .endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let scheme = if tls { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{address}"))
        .with_context(|| format!("--endpoints {:?} is not HOST:PORT", config.endpoint))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if tls {
        let read =
            |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &config.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => bail!("--cert and --key go together"),
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", config.endpoint))
}

/// Saves a snapshot of the server at `config` into `path`.
pub async fn save(config: &ClientConfig, path: &Path) -> Result<()> {
    let channel = connect(config).await?;
    let mut client = MaintenanceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .context("the server refused the snapshot")?
        .into_inner();
    let mut partial = path.as_os_str().to_owned();
    partial.push(".part");
    let partial = std::path::PathBuf::from(partial);
    // Owner-only, as etcdctl writes it: the snapshot holds every Secret.
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
    }
    .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut sha = Sha256::default();
    let mut last = Vec::new();
    let mut total = 0u64;
    let mut revision = 0;
    let mut last_report = std::time::Instant::now();
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e).context("the snapshot stream broke off");
            }
        };
        if let Some(h) = &message.header {
            revision = h.revision;
        }
        // The last message is the hash of everything before it.
        sha.update(&last);
        file.write_all(&message.blob)?;
        total += message.blob.len() as u64;
        last = message.blob.to_vec();
        if last_report.elapsed() > std::time::Duration::from_secs(2) {
            eprintln!("received {} MiB", total >> 20);
            last_report = std::time::Instant::now();
        }
    }
    let check = (|| {
        if last.len() != HASH_LEN {
            bail!("the stream ended without its SHA-256");
        }
        // `sha` covers everything up to the last message, excluding it.
        if sha.finish()[..] != last[..] {
            bail!("the SHA-256 does not match the data received");
        }
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(())
    })();
    if let Err(e) = check {
        let _ = std::fs::remove_file(&partial);
        return Err(e).context("the snapshot is not complete; nothing was saved");
    }
    eprintln!(
        "snapshot saved at {} ({} bytes, revision {revision})",
        path.display(),
        total
    );
    Ok(())
}

/// Restores the snapshot at `from` as the database `to`.
pub fn restore(from: &Path, to: &Path, skip_hash_check: bool) -> Result<()> {
    let restored =
        kine::backend::snapshot::restore(from, to, skip_hash_check).map_err(|e| match e {
            kine::Error::Storage(message) => anyhow::anyhow!(message),
            other => other.into(),
        })?;
    eprintln!(
        "restored {} into {} at revision {} (compact revision {}), new cluster id {:016x}",
        from.display(),
        to.display(),
        restored.revision,
        restored.compact_revision,
        restored.cluster_id
    );
    Ok(())
}
