//! containerd as the agent's child, as K3s runs it: a generated config,
//! its own root, state and socket under the agent's directory, its log in
//! a file, restarted when it dies, and left running when the agent stops
//! (its containers keep running; the next agent adopts them).
//!
//! Layout under `DIR` (the agent's directory):
//! - `containerd/config.toml`, `containerd/containerd.log`, `containerd/root/`
//!   (images, snapshots, containers' metadata);
//! - `containerd/state/` (sockets, the runc state, the pods' network
//!   namespaces), `containerd/state/containerd.sock` the CRI socket;
//! - `containerd/containerd.pid`, the running daemon's pid;
//! - `cni/net.d/` the CNI configuration, `cni/ipam/` the addresses given out.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Cri;
use super::registries::Registries;

/// How long a starting containerd may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the running daemon is checked.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Failed checks in a row before it is taken for dead.
const DEAD_AFTER: u32 = 3;

/// Where containerd keeps its files, and what it runs pods with.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    /// The image every sandbox runs (made locally, imported at start).
    pub sandbox_image: String,
    /// Where the CNI plugins are.
    pub cni_bin_dir: PathBuf,
    /// Mirrors, TLS and credentials from registries.yaml.
    pub registries: Registries,
}

impl Layout {
    pub fn new(agent_dir: &Path, sandbox_image: &str, cni_bin_dir: &Path) -> Layout {
        Layout {
            dir: agent_dir.join("containerd"),
            sandbox_image: sandbox_image.to_string(),
            cni_bin_dir: cni_bin_dir.to_path_buf(),
            registries: Registries::default(),
        }
    }

    /// This layout with the registries of a registries.yaml.
    pub fn with_registries(mut self, registries: Registries) -> Layout {
        self.registries = registries;
        self
    }

    /// containerd's per-registry hosts files.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.state().join("containerd.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }

    /// `DIR/cni/net.d`, next to `containerd/`.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.with_file_name("cni").join("net.d")
    }

    /// containerd's configuration (version 2 schema, as containerd 1.6
    /// and 1.7 read it). The streaming server (exec, attach,
    /// port-forward) listens on loopback only: the agent proxies to it.
    pub fn config(&self, stream_port: u16) -> String {
        let q = |p: PathBuf| toml_string(&p.to_string_lossy());
        format!(
            r#"# Written by the k3rs agent at every start; edits are lost.
version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream_port}"
  sandbox_image = {sandbox}
  enable_selinux = false
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = {restrict_oom}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {runc_root}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {certs}
{auth}"#,
            root = q(self.root()),
            state = q(self.state()),
            socket = q(self.socket()),
            ttrpc = q(self.state().join("containerd.sock.ttrpc")),
            sandbox = toml_string(&self.sandbox_image),
            cni_bin = q(self.cni_bin_dir.clone()),
            cni_conf = q(self.cni_conf_dir()),
            certs = q(self.certs_dir()),
            auth = self.registries.auth_toml(),
            restrict_oom = !may_lower_oom_score(),
            runc_root = q(self.state().join("runc")),
        )
    }
}

/// Whether this process may lower OOM scores (CAP_SYS_RESOURCE). Without
/// it (a container without that capability, say) runc fails to start
/// any sandbox at the kubelet's -998, so containerd is told to clamp
/// scores to its own, as K3s does when rootless.
fn may_lower_oom_score() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

/// Where `program` is on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts containerd unless one already answers on the socket (a previous
/// agent's, whose containers are then adopted), waits until it answers,
/// and keeps it running from a background task.
pub async fn start(layout: Layout) -> Result<Cri> {
    for dir in [layout.root(), layout.state(), layout.cni_conf_dir()] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cri = Cri::new(&layout.socket());
    if answers(&cri).await {
        tracing::info!(socket = %layout.socket().display(), "containerd is already running; adopting it and its containers");
    } else {
        spawn(&layout)?;
        wait_until_up(&cri, &layout).await?;
    }
    let (name, version) = cri
        .version()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    tracing::info!(runtime = %name, version = %version, socket = %layout.socket().display(), "container runtime ready");
    tokio::spawn(keep_running(layout, cri.clone()));
    Ok(cri)
}

async fn answers(cri: &Cri) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), cri.version()).await,
        Ok(Ok(_))
    )
}

async fn wait_until_up(cri: &Cri, layout: &Layout) -> Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if answers(cri).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "containerd did not answer on {} within {}s; its log is {}",
        layout.socket().display(),
        START_TIMEOUT.as_secs(),
        layout.log_file().display()
    )
}

/// Writes a fresh config and starts the daemon in its own session, so it
/// outlives the agent and no signal meant for the agent reaches it.
fn spawn(layout: &Layout) -> Result<()> {
    let port = free_loopback_port()?;
    layout.registries.write_hosts(&layout.certs_dir())?;
    std::fs::write(layout.config_file(), layout.config(port))
        .with_context(|| format!("cannot write {}", layout.config_file().display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.log_file())
        .with_context(|| format!("cannot open {}", layout.log_file().display()))?;
    let mut cmd = std::process::Command::new("containerd");
    cmd.arg("--config")
        .arg(layout.config_file())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .context("cannot start containerd (is it installed and on PATH?)")?;
    let pid = child.id();
    std::fs::write(layout.pid_file(), format!("{pid}\n"))
        .with_context(|| format!("cannot write {}", layout.pid_file().display()))?;
    // Reaped by a thread, so a daemon that dies leaves no zombie.
    std::thread::Builder::new()
        .name("containerd-wait".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut child = child;
            let status = child.wait();
            tracing::warn!(pid, status = ?status, "containerd exited");
        })?;
    tracing::info!(pid, config = %layout.config_file().display(), log = %layout.log_file().display(), "started containerd");
    Ok(())
}

/// A loopback port free right now, for containerd's streaming server
/// (its config needs a number; 0 would be written into the URLs it hands out).
fn free_loopback_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot pick a port")?;
    Ok(listener.local_addr()?.port())
}

/// Checks the daemon every few seconds and starts a new one when it has
/// stopped answering (killed, crashed); running containers survive that,
/// their shims are separate processes.
async fn keep_running(layout: Layout, cri: Cri) {
    let mut failures = 0;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if answers(&cri).await {
            failures = 0;
            continue;
        }
        failures += 1;
        if failures < DEAD_AFTER {
            continue;
        }
        tracing::warn!(socket = %layout.socket().display(), "containerd stopped answering; starting it again");
        if let Err(e) = spawn(&layout) {
            tracing::error!(error = %format!("{e:#}"), "restarting containerd failed");
        } else if let Err(e) = wait_until_up(&cri, &layout).await {
            tracing::error!(error = %format!("{e:#}"), "restarted containerd does not answer");
        } else {
            tracing::info!("containerd is back");
        }
        failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_agents_paths() {
        let layout = Layout::new(
            Path::new("/var/lib/k3rs/agent"),
            "k3rs.local/pause:1",
            Path::new("/usr/lib/cni"),
        );
        let config = layout.config(10010);
        assert!(
            config.contains(r#"address = "/var/lib/k3rs/agent/containerd/state/containerd.sock""#)
        );
        assert!(config.contains(r#"conf_dir = "/var/lib/k3rs/agent/cni/net.d""#));
        assert!(config.contains(r#"stream_server_port = "10010""#));
        assert!(config.contains(r#"sandbox_image = "k3rs.local/pause:1""#));
        assert_eq!(toml_string("a\"b\\c"), r#""a\"b\\c""#);
    }
}
