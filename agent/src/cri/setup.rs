//! Everything a node needs before its first pod runs on CRI: the runtime
//! (containerd started and kept by the agent, or an existing CRI socket),
//! the CNI configuration its sandboxes get their network from, and the
//! images imported locally (the sandbox image, the airgap tarballs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Cri;
use super::containerd::{self, Layout};
use super::images;
use super::registries::Registries;
use super::runtime::CriRuntime;

/// Where Debian and most distributions install the CNI plugins.
const CNI_BIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"];
/// The pods' subnet on this node until the cluster hands out one per node.
pub const DEFAULT_POD_SUBNET: &str = "10.42.0.0/24";
/// How long an existing CRI socket may take to answer.
const ENDPOINT_WAIT: Duration = Duration::from_secs(60);

/// The CRI runtime of the agent living in `agent_dir`: `endpoint` if
/// given, else a containerd of its own.
pub async fn start(
    agent_dir: &Path,
    node: &str,
    endpoint: Option<&Path>,
    private_registry: &Path,
) -> Result<CriRuntime> {
    let cri = match endpoint {
        Some(socket) => connect(socket).await?,
        None => {
            let cni_bin_dir = cni_bin_dir().context(
                "no CNI plugins found (looked in /usr/lib/cni, /opt/cni/bin): install containernetworking-plugins",
            )?;
            let registries = Registries::load(private_registry)?;
            let layout = Layout::new(agent_dir, images::PAUSE_IMAGE, &cni_bin_dir)
                .with_registries(registries);
            write_cni_config(
                &layout.cni_conf_dir(),
                &agent_dir.join("cni"),
                DEFAULT_POD_SUBNET,
            )?;
            containerd::start(layout).await?
        }
    };
    import_images(&cri.socket, agent_dir).await;
    let (name, version) = cri.version().await.map_err(|e| {
        anyhow::anyhow!(
            "the CRI runtime does not answer: {}",
            super::client::go_error(&e)
        )
    })?;
    Ok(CriRuntime::new(cri, node, &name, &version))
}

/// A client of an existing CRI socket, once it answers.
async fn connect(socket: &Path) -> Result<Cri> {
    let cri = Cri::new(socket);
    let deadline = tokio::time::Instant::now() + ENDPOINT_WAIT;
    loop {
        match cri.version().await {
            Ok((name, version)) => {
                tracing::info!(runtime = %name, version = %version, socket = %cri.socket.display(), "using the CRI endpoint");
                return Ok(cri);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "the CRI endpoint {} does not answer: {}",
                    socket.display(),
                    super::client::go_error(&e)
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The sandbox image, then `AGENT/images/*` (K3s's airgap directory).
async fn import_images(socket: &Path, agent_dir: &Path) {
    if !containerd::on_path("ctr") {
        tracing::warn!("ctr is not on PATH: the sandbox and airgap images are not imported");
        return;
    }
    if let Err(e) = images::import_pause_image(socket, &agent_dir.join("containerd")).await {
        tracing::error!(error = %format!("{e:#}"), "importing the sandbox image failed; pods cannot start");
    }
    let dir = agent_dir.join("images");
    let count = images::import_airgap_images(socket, &dir).await;
    if count > 0 {
        tracing::info!(count, dir = %dir.display(), "imported airgap images");
    }
}

fn cni_bin_dir() -> Option<PathBuf> {
    CNI_BIN_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").is_file() && d.join("host-local").is_file())
}

/// A bridge network for the node's pods: `cni0`, addresses from
/// `subnet` kept in `state_dir`, host ports when iptables is there.
pub fn write_cni_config(conf_dir: &Path, state_dir: &Path, subnet: &str) -> Result<()> {
    std::fs::create_dir_all(conf_dir)
        .with_context(|| format!("cannot create {}", conf_dir.display()))?;
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": state_dir.join("ipam"),
        },
    })];
    if containerd::on_path("iptables") {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    let conf = json!({"cniVersion": "0.4.0", "name": "k3rs", "plugins": plugins});
    let path = conf_dir.join("10-k3rs.conflist");
    let text = serde_json::to_string_pretty(&conf).context("encoding the CNI configuration")?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_config_is_a_bridge_with_host_local_addresses() {
        let dir = tempfile::tempdir().unwrap();
        write_cni_config(
            &dir.path().join("net.d"),
            &dir.path().join("cni"),
            "10.42.0.0/24",
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("net.d/10-k3rs.conflist")).unwrap();
        let conf: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(conf["plugins"][0]["type"], "bridge");
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.0.0/24"
        );
    }
}
