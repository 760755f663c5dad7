//! The servers a case runs against: real etcd started from its binary, k3rs
//! started in-process, or any endpoint given by URL.
//!
//! A target owns its server: dropping it stops the server and removes its
//! data directory.

use std::fmt;
use std::io::Read;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::Clients;

/// Where etcd's binary is unless `CONFORMANCE_ETCD` says otherwise.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";
/// How long a started server has to answer `Status`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Port races (another process takes the port between our probe and etcd's
/// bind) are rare; a few attempts cover them.
const START_ATTEMPTS: usize = 3;

/// Which kind of server a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Real etcd (the oracle).
    Etcd,
    /// k3rs in-process.
    K3rs,
    /// An endpoint somebody else runs; its store cannot be made fresh.
    Endpoint,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Etcd => "etcd",
            TargetKind::K3rs => "k3rs",
            TargetKind::Endpoint => "endpoint",
        })
    }
}

/// A running server the cases can talk to.
pub trait Target: Send {
    /// `http://host:port`.
    fn endpoint(&self) -> &str;
    /// What kind of server this is.
    fn kind(&self) -> TargetKind;
}

/// The etcd binary to run.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("CONFORMANCE_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN))
}

/// Starts a fresh server of `kind`; `Endpoint` targets cannot be started.
pub async fn start(kind: TargetKind) -> Result<Box<dyn Target>, String> {
    match kind {
        TargetKind::Etcd => Ok(Box::new(EtcdTarget::start().await?)),
        TargetKind::K3rs => Ok(Box::new(K3rsTarget::start().await?)),
        TargetKind::Endpoint => Err("an endpoint target cannot be started".into()),
    }
}

fn free_port() -> Result<u16, String> {
    let l = StdListener::bind("127.0.0.1:0").map_err(|e| format!("bind a probe port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Waits until `endpoint` answers `Status`, or `alive` says the server died.
async fn wait_ready(endpoint: &str, mut alive: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(clients) = Clients::connect(endpoint).await {
            let mut m = clients.maintenance.clone();
            if m.status(kine::proto::StatusRequest {}).await.is_ok() {
                return Ok(());
            }
        }
        if !alive() {
            return Err(format!("server at {endpoint} exited before answering"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "server at {endpoint} did not answer within {READY_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Real etcd on free loopback ports with a temporary data directory.
///
/// etcd runs under a small `sh` watchdog that holds our end of a pipe on its
/// stdin: when this process goes away for any reason (drop, panic, SIGKILL
/// from a test runner's timeout) the pipe closes and the watchdog kills
/// etcd and removes its directory, so no etcd outlives its test.
pub struct EtcdTarget {
    endpoint: String,
    shell: Child,
    stdin: Option<ChildStdin>,
    dir: TempDir,
}

/// Kills etcd when stdin closes; exits when etcd exits.
/// (A background job's stdin is /dev/null unless redirected, hence fd 3.)
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" >"$ETCD_LOG" 2>&1 </dev/null 3<&- & pid=$!
(read _ignored <&3; kill -9 $pid 2>/dev/null; sleep 0.2; rm -rf "$ETCD_DIR") &
exec 3<&-
wait $pid"#;

impl EtcdTarget {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start().await {
                Ok(t) => return Ok(t),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn try_start() -> Result<Self, String> {
        let bin = etcd_binary();
        if !bin.exists() {
            return Err(format!("etcd binary {} not found", bin.display()));
        }
        let dir = tempfile::Builder::new()
            .prefix("conformance-etcd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(&bin)
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=error")
            .env("ETCD_LOG", &log)
            .env("ETCD_DIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn etcd: {e}"))?;
        let stdin = shell.stdin.take();
        let mut target = EtcdTarget {
            endpoint: client,
            shell,
            stdin,
            dir,
        };
        let ready = {
            let shell = &mut target.shell;
            wait_ready(&target.endpoint, || matches!(shell.try_wait(), Ok(None))).await
        };
        match ready {
            Ok(()) => Ok(target),
            Err(e) => {
                let mut text = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
                Err(format!("{e}; etcd log:\n{text}"))
            }
        }
    }
}

impl Target for EtcdTarget {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn kind(&self) -> TargetKind {
        TargetKind::Etcd
    }
}

impl Drop for EtcdTarget {
    fn drop(&mut self) {
        // Closing stdin makes the watchdog kill etcd; then reap the shell
        // before the data directory goes.
        drop(self.stdin.take());
        let _ = self.shell.wait();
        let _ = &self.dir;
    }
}

/// k3rs served in-process on `127.0.0.1:0` over SQLite in a temporary
/// directory. Must be started inside a multi-threaded tokio runtime, since
/// cases may block a thread on a child process while the server runs.
pub struct K3rsTarget {
    endpoint: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl K3rsTarget {
    /// Opens the store, starts serving and waits until it answers.
    pub async fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("conformance-k3rs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let store = kine::open_sqlite(&kine::backend::sqlite::SqliteConfig {
            path: dir.path().join("state.db"),
            durability: Default::default(),
        })
        .map_err(|e| format!("open k3rs store: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let endpoint = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let config = kine::ServerConfig {
            emulated_etcd_version: kine::DEFAULT_EMULATED_ETCD_VERSION.to_string(),
            name: "default".into(),
            advertise_client_urls: vec![endpoint.clone()],
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = kine::serve(listener, store, config, shutdown).await {
                eprintln!("k3rs server stopped with an error: {e}");
            }
        });
        let t = K3rsTarget {
            endpoint,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        };
        wait_ready(&t.endpoint, || true).await?;
        Ok(t)
    }
}

impl Target for K3rsTarget {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn kind(&self) -> TargetKind {
        TargetKind::K3rs
    }
}

impl Drop for K3rsTarget {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Streams (watches) may keep graceful shutdown waiting; the cases
        // are done with the server, so stop it outright.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A server somebody else runs, reached by URL.
pub struct EndpointTarget {
    endpoint: String,
}

impl EndpointTarget {
    /// Checks that `url` answers.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let endpoint = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        wait_ready(&endpoint, || true).await?;
        Ok(EndpointTarget { endpoint })
    }
}

impl Target for EndpointTarget {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn kind(&self) -> TargetKind {
        TargetKind::Endpoint
    }
}
