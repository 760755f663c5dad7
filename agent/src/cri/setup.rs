//! Everything a node needs before its first pod runs on CRI: the runtime
//! (containerd started and kept by the agent, or an existing CRI socket)
//! and the images imported locally (the sandbox image, the airgap
//! tarballs). The CNI configuration its sandboxes get their network from
//! is written later, once the node's podCIDR is known (`network`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Cri;
use super::containerd::{self, Layout};
use super::images;
use super::registries::Registries;
use super::runtime::CriRuntime;
use crate::resolv::ClusterDns;

/// Where Debian and most distributions install the CNI plugins.
const CNI_BIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"];
/// How long an existing CRI socket may take to answer.
const ENDPOINT_WAIT: Duration = Duration::from_secs(60);

/// Where the agent's own containerd reads its CNI configuration.
#[derive(Debug, Clone)]
pub struct CniDirs {
    /// containerd's CRI `conf_dir`, reloaded by containerd on change.
    pub conf_dir: PathBuf,
    /// Where the plugins are.
    pub bin_dir: PathBuf,
    /// host-local's addresses given out.
    pub state_dir: PathBuf,
}

/// The runtime, and the CNI directories when the containerd is the
/// agent's own (an existing CRI endpoint has its own network set-up).
pub struct Started {
    pub runtime: CriRuntime,
    pub cni: Option<CniDirs>,
}

/// The CRI runtime of the agent living in `agent_dir`: `endpoint` if
/// given, else a containerd of its own.
pub async fn start(
    agent_dir: &Path,
    node: &str,
    endpoint: Option<&Path>,
    private_registry: &Path,
    dns: ClusterDns,
) -> Result<Started> {
    let mut cni = None;
    let cri = match endpoint {
        Some(socket) => connect(socket).await?,
        None => {
            let cni_bin_dir = cni_bin_dir().context(
                "no CNI plugins found (looked in /usr/lib/cni, /opt/cni/bin): install containernetworking-plugins",
            )?;
            let registries = Registries::load(private_registry)?;
            let layout = Layout::new(agent_dir, images::PAUSE_IMAGE, &cni_bin_dir)
                .with_registries(registries);
            cni = Some(CniDirs {
                conf_dir: layout.cni_conf_dir(),
                bin_dir: cni_bin_dir,
                state_dir: agent_dir.join("cni"),
            });
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
    Ok(Started {
        runtime: CriRuntime::new(cri, node, &name, &version, dns),
        cni,
    })
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
