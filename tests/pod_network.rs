//! The pod network across nodes, for real: a server and two agents on
//! containerd, each agent in a network namespace of its own joined to
//! the others by a bridge the test makes (10.251.0.0/24, on links of the
//! test's own only). Checks the node IPAM, pod addresses from each node's
//! podCIDR, pod to pod across nodes without masquerading, the pods'
//! resolv.conf, and that a deleted node's route goes away. Skipped,
//! saying why, without root, containerd, the CNI plugins, busybox-static
//! or nft.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::api_server::Server;
use support::containers::{Cleanup, airgap_busybox, missing};
use support::netns::Netns;

const IMAGE: &str = "k3rs.local/busybox:1";
const WAIT: Duration = Duration::from_secs(120);

struct Cluster {
    server: Server,
    agent_logs: Vec<PathBuf>,
}

impl Cluster {
    fn logs(&self) -> String {
        let mut all = format!("server log:\n{}", self.server.log());
        for log in &self.agent_logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            all.push_str(&format!("\n{}:\n{text}", log.display()));
        }
        all
    }

    /// Waits until `check` holds for kubectl `args`' JSON.
    fn until(&self, what: &str, args: &[&str], check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (ok, out, err) = self.server.kubectl(args);
            match serde_json::from_str::<Value>(&out) {
                Ok(v) if ok && check(&v) => return v,
                _ => last = format!("{out}{err}"),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{what}: not within {WAIT:?}; last: {last}\n{}", self.logs());
    }

    /// Waits until kubectl `args` succeeds with output `check` accepts.
    fn until_ok(&self, what: &str, args: &[&str], check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (ok, out, err) = self.server.kubectl(args);
            if ok && check(&out) {
                return out;
            }
            last = format!("{out}{err}");
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{what}: not within {WAIT:?}; last: {last}\n{}", self.logs());
    }
}

fn pod(name: &str, node: &str, command: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
          "spec": {{"nodeName": "{node}", "containers": [{{"name": "c", "image": "{IMAGE}",
            "command": ["sh", "-c", "{command}"]}}]}}}}"#
    )
}

fn in_subnet(ip: &str, cidr: &str) -> bool {
    let (net, prefix) = cidr.split_once('/').unwrap();
    let (ip, net): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (ip.parse().unwrap(), net.parse().unwrap());
    let prefix: u32 = prefix.parse().unwrap();
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

#[test]
fn pods_reach_each_other_across_nodes() {
    if let Some(why) = missing() {
        eprintln!("skipping the pod network test: {why}");
        return;
    }
    if !agent::cri::containerd::on_path("nft") {
        eprintln!("skipping the pod network test: nft is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Dropped last: kills containerd and the pods, unmounts.
    let _cleanup = Cleanup::new(dir.path());
    let netns = Netns::create(2);
    let data_dir = dir.path().join("data");
    let server = Netns::server(&data_dir);
    let mut cluster = Cluster {
        server,
        agent_logs: Vec::new(),
    };
    let mut agents = Vec::new();
    for n in 1..=2 {
        let agent_dir = dir.path().join(format!("n{n}"));
        airgap_busybox(&agent_dir, IMAGE);
        agents.push(Some(netns.join_agent(
            n,
            &cluster.server,
            &data_dir,
            &agent_dir,
        )));
        let log = agent_dir.join("agent.log");
        cluster.agent_logs.push(log);
    }

    // Each node gets its own subnet of 10.42.0.0/16.
    let nodes = cluster.until(
        "both nodes with a podCIDR",
        &["get", "nodes", "-o", "json"],
        |v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            items.len() == 2 && items.iter().all(|n| n["spec"]["podCIDR"].is_string())
        },
    );
    let mut cidrs = std::collections::HashMap::new();
    for n in nodes["items"].as_array().unwrap() {
        let cidr = n["spec"]["podCIDR"].as_str().unwrap().to_string();
        assert_eq!(n["spec"]["podCIDRs"], serde_json::json!([cidr]));
        cidrs.insert(n["metadata"]["name"].as_str().unwrap().to_string(), cidr);
    }
    let distinct: BTreeSet<&String> = cidrs.values().collect();
    assert_eq!(
        distinct.into_iter().cloned().collect::<Vec<_>>(),
        ["10.42.0.0/24", "10.42.1.0/24"],
        "{cidrs:?}"
    );

    // A web server on n2 and a client on n1.
    let manifests = dir.path().join("pods.json");
    let web = pod(
        "web",
        "n2",
        "mkdir -p /www && echo hello from n2 > /www/index.html && exec httpd -f -vv -p 8080 -h /www",
    );
    let client = pod("client", "n1", "exec sleep 3600");
    std::fs::write(
        &manifests,
        format!(r#"{{"apiVersion": "v1", "kind": "List", "items": [{web}, {client}]}}"#),
    )
    .unwrap();
    cluster
        .server
        .ok(&["apply", "-f", manifests.to_str().unwrap()]);
    let pods = cluster.until(
        "both pods running with an address",
        &["get", "pods", "-o", "json"],
        |v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            items.len() == 2
                && items.iter().all(|p| {
                    p["status"]["podIP"].is_string()
                        && p["status"]["containerStatuses"][0]["ready"] == true
                })
        },
    );
    let mut ips = std::collections::HashMap::new();
    for p in pods["items"].as_array().unwrap() {
        let (name, node, ip) = (
            p["metadata"]["name"].as_str().unwrap(),
            p["spec"]["nodeName"].as_str().unwrap(),
            p["status"]["podIP"].as_str().unwrap(),
        );
        assert!(
            in_subnet(ip, &cidrs[node]),
            "{name}'s address {ip} is from its node {node}'s podCIDR {}",
            cidrs[node]
        );
        ips.insert(name.to_string(), ip.to_string());
    }

    // n1 routes n2's pods through n2's address, and back.
    assert!(
        netns
            .k3rs_routes(1)
            .contains(&format!("{} via 10.251.0.3", cidrs["n2"])),
        "{}\n{}",
        netns.k3rs_routes(1),
        cluster.logs()
    );

    // Pod to pod across nodes, the source address kept (busybox 1.35's
    // wget crashes with -T, so timeout bounds it).
    let url = format!("http://{}:8080/", ips["web"]);
    let page = cluster.until_ok(
        "the client fetching the web pod's page on the other node",
        &[
            "exec", "client", "--", "timeout", "10", "wget", "-q", "-O-", &url,
        ],
        |o| !o.is_empty(),
    );
    assert_eq!(page, "hello from n2\n");
    let web_log = cluster.server.ok(&["logs", "web"]);
    assert!(
        web_log.contains(&format!("{}]:", ips["client"])),
        "the web pod sees the client pod's own address (no masquerade): {web_log}"
    );

    // The pods' DNS settings: the cluster DNS, kube's search path, ndots:5.
    let resolv = cluster
        .server
        .ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.43.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    // n2 goes away: its route on n1 does too (the agent is stopped first,
    // or it would register its Node again).
    agents[1] = None;
    cluster.server.ok(&["delete", "node", "n2"]);
    let deadline = Instant::now() + WAIT;
    while netns.k3rs_routes(1).contains(&cidrs["n2"]) {
        assert!(
            Instant::now() < deadline,
            "n2's route is still on n1: {}\n{}",
            netns.k3rs_routes(1),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(agents);
}
