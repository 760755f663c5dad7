//! Network namespaces for multi-node tests: each agent in a namespace of
//! its own, joined to the host by a bridge the test makes; removed when
//! dropped, with what lives in them.

use std::path::Path;

use super::api_server::Server;

/// Network namespaces for agents, joined to the host by a bridge of the
/// test's own; removed when dropped, with what lives in them.
pub struct Netns {
    pub names: Vec<String>,
    pub bridge: String,
}

impl Netns {
    /// `count` namespaces `k3rsPID-N` at 10.251.0.(N+1)/24 on a host
    /// bridge at 10.251.0.1.
    pub fn create(count: usize) -> Netns {
        let tag = std::process::id() % 100_000;
        let bridge = format!("k3rsbr{tag}");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let mut netns = Netns {
            names: Vec::new(),
            bridge: bridge.clone(),
        };
        run(&["link", "add", &bridge, "type", "bridge"]);
        run(&["addr", "add", "10.251.0.1/24", "dev", &bridge]);
        run(&["link", "set", &bridge, "up"]);
        for n in 1..=count {
            let name = format!("k3rs{tag}-{n}");
            let (host, inner) = (format!("k3rsh{tag}{n}"), format!("k3rsi{tag}{n}"));
            run(&["netns", "add", &name]);
            netns.names.push(name.clone());
            run(&["link", "add", &host, "type", "veth", "peer", "name", &inner]);
            run(&["link", "set", &host, "master", &bridge, "up"]);
            run(&["link", "set", &inner, "netns", &name]);
            let ip = format!("10.251.0.{}/24", n + 1);
            run(&["-n", &name, "addr", "add", &ip, "dev", &inner]);
            run(&["-n", &name, "link", "set", &inner, "up"]);
            run(&["-n", &name, "link", "set", "lo", "up"]);
            run(&["-n", &name, "route", "add", "default", "via", "10.251.0.1"]);
        }
        netns
    }

    /// `k3rs agent ARGS` inside namespace `n` (its network only: the
    /// mounts and cgroups are the host's), logging to `log`.
    pub fn agent(&self, n: usize, args: &[&str], log: &Path) -> std::process::Child {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.names[n - 1]))
            .arg(env!("CARGO_BIN_EXE_k3rs"))
            .arg("agent")
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }
}

impl Netns {
    /// `k3rs server` for agents in these namespaces: no agent of its own,
    /// listening on the host's end of the test bridge.
    pub fn server(data_dir: &Path) -> Server {
        Server::with_agent(
            data_dir,
            &["--disable-agent", "--bind-address", "10.251.0.1"],
        )
    }

    /// Node `nN` (at 10.251.0.(N+1), on containerd) in namespace `n`,
    /// joined to `server`, whose data directory is `data_dir`; the agent's
    /// own directory is `agent_dir`, its log `agent_dir/agent.log`.
    pub fn join_agent(
        &self,
        n: usize,
        server: &Server,
        data_dir: &Path,
        agent_dir: &Path,
    ) -> Killed {
        let token = std::fs::read_to_string(data_dir.join("server/tls/token")).unwrap();
        let url = server.ok(&[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        let (ip, name) = (format!("10.251.0.{}", n + 1), format!("n{n}"));
        let args = [
            "--server",
            url.as_str(),
            "--token",
            token.trim(),
            "--data-dir",
            agent_dir.to_str().unwrap(),
            "--node-name",
            &name,
            "--node-ip",
            &ip,
            "--container-runtime",
            "containerd",
        ];
        Killed(self.agent(n, &args, &agent_dir.join("agent.log")))
    }

    /// k3rs's routes (proto 75) in namespace `n`.
    pub fn k3rs_routes(&self, n: usize) -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.names[n - 1], "route", "show", "proto", "75"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", name])
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .status();
    }
}

/// Kills a child when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
