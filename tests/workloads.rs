//! Workloads end to end: a `k3rs server` and two `k3rs agent`s as separate
//! processes on this machine, driven by the real kubectl: a Deployment runs,
//! spreads, logs, scales, rolls out, survives a node's death and goes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KUBECTL: &str = "/usr/bin/kubectl";

/// A k3rs process (server or agent), killed when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(args: &[String], log: PathBuf) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_k3rs"))
            .env("K3RS_CONTAINER_RUNTIME", "process")
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    dir: PathBuf,
    server: Process,
    server_args: Vec<String>,
    url: String,
    agents: Vec<Process>,
}

impl Cluster {
    /// A server without its own agent (short node-failure timings), and
    /// agents named n1, n2, ….
    fn start(dir: &Path, agents: usize) -> Cluster {
        let port = support::free_port();
        let server_dir = dir.join("server-node");
        std::fs::create_dir_all(&server_dir).unwrap();
        let args: Vec<String> = [
            "server",
            "--data-dir",
            server_dir.to_str().unwrap(),
            "--listen-address",
            &format!("127.0.0.1:{}", support::free_port()),
            "--https-listen-port",
            &port.to_string(),
            "--bind-address",
            "127.0.0.1",
            "--metrics-bind-address",
            "0",
            "--disable-agent",
            "--node-monitor-grace-period",
            "5s",
            "--default-not-ready-toleration-seconds",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = Process::spawn(&args, server_dir.join("k3rs.log"));
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            server,
            server_args: args,
            url: format!("https://127.0.0.1:{port}"),
            agents: Vec::new(),
        };
        cluster.wait_for("the API", || {
            cluster_log_has(&cluster.server, "serving the Kubernetes API")
        });
        for i in 1..=agents {
            let agent = cluster.start_agent(&format!("n{i}"));
            cluster.agents.push(agent);
        }
        cluster
    }

    /// Kills the server with -9 and starts it again on the same ports.
    fn restart_server(&mut self) {
        self.server.kill();
        let log = self.dir.join("server-node/k3rs-restarted.log");
        self.server = Process::spawn(&self.server_args, log);
        self.wait_for("the API after a restart", || {
            cluster_log_has(&self.server, "serving the Kubernetes API")
        });
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("server-node/server/tls/token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn start_agent(&self, name: &str) -> Process {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let args: Vec<String> = [
            "agent",
            "--server",
            &self.url,
            "--token",
            &self.token(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--node-name",
            name,
            "--node-ip",
            "127.0.0.1",
            "--agent-port",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Process::spawn(&args, dir.join("k3rs.log"))
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("server-node/server/cred/admin.kubeconfig")
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(KUBECTL)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &self.dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn logs(&self) -> String {
        let mut all = format!("--- server\n{}", self.server.log());
        for a in &self.agents {
            all.push_str(&format!("--- {}\n{}", a.log.display(), a.log()));
        }
        all
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {err}\n{out}\n{}", self.logs());
        out
    }

    /// Polls `check` every 200 ms for up to 90 s.
    fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `(name, node, phase, deleting)` of the pods with `selector`.
    fn pods(&self, selector: &str) -> Vec<(String, String, String, bool)> {
        let out = self.ok(&[
            "get", "pods", "-l", selector, "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ]);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[0].to_string(),
                    f.get(1).unwrap_or(&"").to_string(),
                    f.get(2).unwrap_or(&"").to_string(),
                    f.get(3).is_some_and(|d| !d.is_empty()),
                )
            })
            .collect()
    }

    fn running(&self, selector: &str) -> Vec<(String, String, String, bool)> {
        self.pods(selector)
            .into_iter()
            .filter(|p| p.2 == "Running" && !p.3)
            .collect()
    }
}

impl Drop for Cluster {
    /// Agents killed with -9 leave their pods' processes running (as
    /// K3s leaves containers); the test ends them through the pid files.
    fn drop(&mut self) {
        self.server.kill();
        for a in &mut self.agents {
            a.kill();
        }
        let agents = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        for agent in agents {
            let pods = std::fs::read_dir(agent.path().join("agent/pods"));
            for pod in pods.into_iter().flatten().flatten() {
                for file in std::fs::read_dir(pod.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if file.path().extension().is_some_and(|e| e == "pid") {
                        let record = std::fs::read_to_string(file.path()).unwrap_or_default();
                        if let Some(pid) = record.split_whitespace().next() {
                            let _ = Command::new("kill")
                                .args(["-9", "--", &format!("-{pid}")])
                                .output();
                        }
                    }
                }
            }
        }
    }
}

fn cluster_log_has(p: &Process, text: &str) -> bool {
    p.log().contains(text)
}

#[test]
fn a_deployment_runs_scales_rolls_out_and_survives_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 2);
    c.wait_for("two Ready nodes", || {
        let (_, out, _) = c.kubectl(&["get", "nodes", "--no-headers"]);
        out.lines().filter(|l| l.contains(" Ready ")).count() == 2
    });

    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=3",
        "--",
        "sh",
        "-c",
        "echo started $HOSTNAME; while true; do sleep 1; done",
    ]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let pods = c.running("app=web");
    assert_eq!(pods.len(), 3, "{pods:?}");
    let nodes: std::collections::BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(nodes.len(), 2, "replicas spread over both nodes: {pods:?}");

    // Logs come from the agent running the pod, through the API server.
    let first = &pods[0].0;
    c.wait_for("the pod's output", || {
        c.kubectl(&["logs", first])
            .1
            .contains(&format!("started {first}"))
    });
    let described = c.ok(&["describe", "pod", first]);
    assert!(described.contains("Scheduled"), "{described}");

    // Scale.
    c.ok(&["scale", "deployment/web", "--replicas=5"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    c.wait_for("five running pods", || c.running("app=web").len() == 5);

    // A new template rolls out; the old ReplicaSet ends at zero.
    c.ok(&["set", "env", "deployment/web", "COLOR=blue"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    c.wait_for("five new pods", || {
        let out = c.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.containers[0].env[0].value}{\"\\n\"}{end}",
        ]);
        out.lines().filter(|l| *l == "blue").count() == 5 && c.running("app=web").len() == 5
    });
    let rs = c.ok(&["get", "rs", "-l", "app=web", "--no-headers"]);
    assert_eq!(rs.lines().count(), 2, "{rs}");
    assert!(
        rs.lines().any(|l| l.split_whitespace().nth(1) == Some("0")),
        "{rs}"
    );
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Node n2 dies: it turns NotReady, its pods are replaced on n1.
    c.agents[1].kill();
    c.wait_for("n2 NotReady", || {
        c.kubectl(&["get", "node", "n2", "--no-headers"])
            .1
            .contains("NotReady")
    });
    c.wait_for("five pods running on n1", || {
        let running = c.running("app=web");
        running.len() == 5 && running.iter().all(|p| p.1 == "n1")
    });

    // Deleting the Deployment takes its ReplicaSets and pods with it.
    c.ok(&[
        "delete",
        "deployment",
        "web",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_for("no pods left on n1", || {
        c.pods("app=web").iter().all(|p| p.1 != "n1")
    });
    c.wait_for("no ReplicaSets left", || {
        c.ok(&["get", "rs", "--no-headers"]).trim().is_empty()
    });
}

#[test]
fn a_failing_container_shows_why_and_nothing_else_suffers() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 1);
    c.wait_for("a Ready node", || {
        c.kubectl(&["get", "nodes", "--no-headers"])
            .1
            .contains(" Ready ")
    });
    c.ok(&[
        "run",
        "crash",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo bye; exit 3",
    ]);
    c.ok(&[
        "run",
        "missing",
        "--image=busybox",
        "--",
        "no-such-command-k3rs",
    ]);
    c.ok(&[
        "run",
        "chatty",
        "--image=busybox",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "yes k3rs | head -c 30000000",
    ]);
    c.ok(&[
        "run",
        "fine",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo fine; sleep 1000",
    ]);
    c.wait_for("CrashLoopBackOff", || {
        c.ok(&["get", "pod", "crash", "--no-headers"])
            .contains("CrashLoopBackOff")
    });
    let exit = c.ok(&[
        "get",
        "pod",
        "crash",
        "-o",
        "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}",
    ]);
    assert_eq!(exit, "3");
    assert!(c.ok(&["logs", "crash", "--previous"]).contains("bye"));
    c.wait_for("StartError", || {
        c.ok(&[
            "get",
            "pod",
            "missing",
            "-o",
            "jsonpath={.status.containerStatuses[0].lastState.terminated.reason}",
        ]) == "StartError"
    });
    c.wait_for("the chatty pod finishes", || {
        c.ok(&["get", "pod", "chatty", "-o", "jsonpath={.status.phase}"]) == "Succeeded"
    });
    let tail = c.ok(&["logs", "chatty", "--tail=2"]);
    assert_eq!(tail, "k3rs\nk3rs\n");
    assert!(
        c.ok(&["get", "pod", "fine", "--no-headers"])
            .contains("Running")
    );
    assert!(c.ok(&["logs", "fine"]).contains("fine"));

    // A wrong token is refused with a clear error.
    let token = c.token();
    let wrong = format!("{}::server:wrong", token.split("::").next().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args([
            "agent",
            "--server",
            &c.url,
            "--token",
            &wrong,
            "--data-dir",
            tmp.path().join("bad").to_str().unwrap(),
            "--node-name",
            "bad",
            "--agent-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the token"), "{err}");
    c.ok(&["delete", "pod", "fine", "--wait=true", "--timeout=60s"]);
}

#[test]
fn agents_recover_from_restarts_and_names_are_not_stolen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 1);
    c.wait_for("a Ready node", || {
        c.kubectl(&["get", "nodes", "--no-headers"])
            .1
            .contains(" Ready ")
    });
    c.ok(&["run", "keep", "--image=busybox", "--", "sleep", "1000"]);
    let container_id = |c: &Cluster| {
        c.ok(&[
            "get",
            "pod",
            "keep",
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ])
    };
    c.wait_for("the pod running", || {
        container_id(&c).starts_with("process://")
    });
    let first = container_id(&c);
    let pid = first.trim_start_matches("process://").to_string();

    // The agent killed with -9 and started again: the process it left is
    // killed, the pod started afresh and reported truthfully.
    c.agents[0].kill();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the pod outlives its agent"
    );
    c.agents[0] = c.start_agent("n1");
    c.wait_for("the pod running under the new agent", || {
        let id = container_id(&c);
        id.starts_with("process://") && id != first
    });
    c.wait_for("the old process gone", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });

    // Another machine cannot take the name n1 while that node exists.
    let dir = tmp.path().join("impostor");
    let out = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args([
            "agent",
            "--server",
            &c.url,
            "--token",
            &c.token(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--node-name",
            "n1",
            "--agent-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Node password rejected"), "{err}");

    // The server restarted: the agent reconnects by itself and runs new pods.
    c.restart_server();
    c.ok(&["run", "after", "--image=busybox", "--", "sleep", "1000"]);
    c.wait_for("a pod after the server restart", || {
        c.kubectl(&["get", "pod", "after", "-o", "jsonpath={.status.phase}"])
            .1
            == "Running"
    });
    assert!(
        c.kubectl(&["get", "nodes", "--no-headers"])
            .1
            .contains(" Ready ")
    );

    // Deleting a namespace stops its pods gracefully, empties it and ends.
    c.ok(&["create", "namespace", "team"]);
    c.ok(&[
        "run",
        "-n",
        "team",
        "worker",
        "--image=busybox",
        "--",
        "sleep",
        "1000",
    ]);
    c.wait_for("the team's pod running", || {
        c.kubectl(&[
            "get",
            "pod",
            "-n",
            "team",
            "worker",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .1 == "Running"
    });
    c.ok(&["delete", "namespace", "team", "--timeout=60s"]);
    assert!(!c.kubectl(&["get", "namespace", "team"]).0);
    let described = c.ok(&["describe", "pod", "after"]);
    assert!(described.contains("Started container after"), "{described}");
}
