//! k3rs as a separate process, so it can be killed with SIGKILL and
//! restarted on the same data directory and port.
//!
//! The binary: `$K3RS_BIN` if set, else `$CARGO_TARGET_DIR/debug/k3rs`, else
//! `<workspace>/target/debug/k3rs`. `cargo test -p conformance` does not
//! build it (it belongs to the `k3rs` package): run `cargo build -p k3rs`
//! first (`cargo test --workspace` builds it too).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where the k3rs binary is expected (it may not exist).
pub fn k3rs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("K3RS_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join("debug").join("k3rs")
}

/// A k3rs server process on a fixed loopback port and data directory.
pub struct K3rsProcess {
    bin: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Arguments after the listen address and data directory.
    extra: Vec<String>,
    /// How many times it was killed.
    pub kills: usize,
}

impl K3rsProcess {
    /// Starts k3rs from `bin` on a free port with a fresh data directory.
    pub async fn start(bin: PathBuf) -> Result<Self, String> {
        Self::start_with(bin, Vec::new()).await
    }

    /// Like [`start`](Self::start), with more arguments (`--endpoint DSN`).
    pub async fn start_with(bin: PathBuf, extra: Vec<String>) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = tempfile::Builder::new()
            .prefix("linearizability-k3rs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut p = K3rsProcess {
            bin,
            port,
            dir,
            child: None,
            extra,
            kills: 0,
        };
        p.spawn().await?;
        Ok(p)
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.bin)
            .args([
                "kine",
                "--listen-address",
                &format!("127.0.0.1:{}", self.port),
            ])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--metrics-bind-address", "0"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log_path())
                    .map_err(|e| format!("open the log: {e}"))?,
            )
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut m) =
                kine::proto::maintenance_client::MaintenanceClient::connect(self.endpoint()).await
                && m.status(kine::proto::StatusRequest {}).await.is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("k3rs exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err("k3rs did not answer within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where its stderr goes (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("k3rs.log")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL and reap (counted in [`kills`](Self::kills)).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.kills += 1;
        }
    }

    /// Whether the process has exited by itself (not counting kills).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Starts it again on the same data directory and port.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for K3rsProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
