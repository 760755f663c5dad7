//! The service proxy's rules in a real kernel: each test runs on a thread
//! that moved into a network namespace of its own (`unshare(CLONE_NEWNET)`),
//! so its nftables table, links and traffic exist only there and vanish
//! with the thread, even when the test fails. Needs root and nft.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent::proxy::nft::{Syncer, run_script};
use agent::proxy::{ProxyConfig, ruleset};
use serde_json::{Value, json};

const NFT: &str = "/usr/sbin/nft";

/// Why these tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, nftables)".into());
    }
    if !Path::new(NFT).exists() {
        return Some(format!("{NFT} is missing (apt-get install nftables)"));
    }
    None
}

/// Runs `f` on a new thread inside a new, empty network namespace.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    if let Some(why) = missing() {
        eprintln!("skipping: {why}");
        return;
    }
    let joined = std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread, which owns nothing yet.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        f();
    })
    .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn list_table() -> String {
    sh(&[NFT, "list", "table", "ip", "k3rs-proxy"])
}

/// Loopback up, a veth pair with 10.42.0.5 on one end, and the service
/// range routed onto it (as a node's default route would carry it).
fn links() {
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&[
        "ip", "link", "add", "k3rs-a", "type", "veth", "peer", "name", "k3rs-b",
    ]);
    sh(&["ip", "addr", "add", "10.42.0.5/24", "dev", "k3rs-a"]);
    sh(&["ip", "link", "set", "k3rs-a", "up"]);
    sh(&["ip", "link", "set", "k3rs-b", "up"]);
    sh(&["ip", "route", "add", "10.43.0.0/16", "dev", "k3rs-a"]);
}

fn config() -> ProxyConfig {
    let mut c = ProxyConfig::k3s_defaults("n1", vec!["10.42.0.5".parse::<IpAddr>().unwrap()]);
    c.nft = PathBuf::from(NFT);
    c
}

fn service(name: &str, ip: &str, extra: Value) -> Value {
    let mut spec = json!({"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn slice(service: &str, ip: &str) -> Value {
    json!({"metadata": {"name": format!("{service}-1"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": [ip], "nodeName": "n1", "conditions": {"ready": true}}]})
}

/// Connects to `to`, has the listener answer, returns what came back.
fn round_trip(listener: &TcpListener, to: &str) -> std::io::Result<String> {
    let addr: SocketAddr = to.parse().unwrap();
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    let (mut s, _) = listener.accept()?;
    s.write_all(b"hello from the endpoint")?;
    drop(s);
    let mut got = String::new();
    c.set_read_timeout(Some(Duration::from_secs(3)))?;
    c.read_to_string(&mut got)?;
    Ok(got)
}

#[test]
fn cluster_ip_dnat_reject_and_affinity_in_a_netns() {
    in_netns(|| {
        links();
        let listener = TcpListener::bind("10.42.0.5:8080").unwrap();
        let services = [
            service("web", "10.43.0.1", json!({"sessionAffinity": "ClientIP"})),
            service("empty", "10.43.0.2", json!({})),
            // The cluster DNS Service is left to the node's own server.
            service("kube-dns", "10.43.0.10", json!({})),
        ];
        let slices = [slice("web", "10.42.0.5"), slice("kube-dns", "10.42.0.5")];
        let rs = ruleset(&services, &slices, &config());
        let mut syncer = Syncer::new(PathBuf::from(NFT));
        syncer.sync(&rs).unwrap();

        let listed = list_table();
        assert!(listed.contains("dnat to 10.42.0.5:8080"), "{listed}");
        assert!(!listed.contains("10.43.0.10"), "{listed}");
        // What nft prints back is itself a valid ruleset.
        assert!(dry_run(&format!("flush ruleset\n{listed}")), "{listed}");

        // Through the ClusterIP to the endpoint.
        assert_eq!(
            round_trip(&listener, "10.43.0.1:80").unwrap(),
            "hello from the endpoint"
        );
        // No endpoints: refused at once, not a timeout.
        let refused =
            TcpStream::connect_timeout(&"10.43.0.2:80".parse().unwrap(), Duration::from_secs(3));
        assert_eq!(
            refused.as_ref().map_err(std::io::Error::kind).unwrap_err(),
            std::io::ErrorKind::ConnectionRefused,
            "{refused:?}"
        );

        // The client was remembered, and a later sync keeps it.
        let set = rs
            .affinity_sets
            .keys()
            .next()
            .expect("an affinity set")
            .clone();
        let members = sh(&[NFT, "list", "set", "ip", "k3rs-proxy", &set]);
        assert!(members.contains("elements = { 10.42.0.5"), "{members}");
        syncer.sync(&rs).unwrap();
        let members = sh(&[NFT, "list", "set", "ip", "k3rs-proxy", &set]);
        assert!(members.contains("elements = { 10.42.0.5"), "{members}");
    });
}

/// `nft -c`: the kernel checks the script and discards it.
fn dry_run(script: &str) -> bool {
    let mut c = Command::new(NFT)
        .args(["-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    c.wait().unwrap().success()
}

#[test]
fn replacing_is_atomic_and_stale_chains_go() {
    in_netns(|| {
        let cfg = config();
        let mut syncer = Syncer::new(PathBuf::from(NFT));
        let services = [
            service("a", "10.43.0.1", json!({})),
            service("b", "10.43.0.2", json!({})),
        ];
        let slices = [slice("a", "10.42.0.5"), slice("b", "10.42.0.6")];
        let rs = ruleset(&services, &slices, &cfg);
        syncer.sync(&rs).unwrap();
        let first = list_table();
        // Applying the same rules again leaves the same table.
        syncer.sync(&rs).unwrap();
        assert_eq!(list_table(), first);

        // A script that fails to parse half-way, and one that parses but
        // that the kernel refuses at the end: neither changes anything.
        let other = ruleset(&services[..1], &slices, &cfg);
        let good = agent::proxy::rules::render(&other, None, &Default::default());
        assert!(dry_run(&good));
        for bad in [
            format!("{good}add rule ip k3rs-proxy services this is not nft\n"),
            format!("{good}add rule ip k3rs-proxy no-such-chain accept\n"),
        ] {
            assert!(run_script(Path::new(NFT), &bad).is_err());
            assert_eq!(
                list_table(),
                first,
                "a failed transaction changed the table"
            );
        }
        // Another table (the host's firewall, say) is never touched.
        sh(&[NFT, "add", "table", "ip", "host-fw"]);
        sh(&[NFT, "add", "chain", "ip", "host-fw", "keep"]);

        // Service b goes: its chains are flushed now, deleted a sync later.
        syncer.sync(&other).unwrap();
        let chain_b = rs
            .chains
            .keys()
            .find(|c| !other.chains.contains_key(*c))
            .unwrap()
            .clone();
        let listed = list_table();
        assert!(listed.contains(&chain_b), "{listed}");
        assert!(!listed.contains("dnat to 10.42.0.6"), "{listed}");
        assert_eq!(syncer.pending_deletes(), 2);
        std::thread::sleep(Duration::from_millis(1100));
        syncer.sync(&other).unwrap();
        assert_eq!(syncer.pending_deletes(), 0);
        assert!(!list_table().contains(&chain_b));
        assert!(sh(&[NFT, "list", "table", "ip", "host-fw"]).contains("chain keep"));

        // A sync after a failure starts from scratch and succeeds.
        let broken = PathBuf::from("/nonexistent/nft");
        let mut failing = Syncer::new(broken);
        assert!(failing.sync(&rs).is_err());
        syncer.sync(&rs).unwrap();
        // The same content; chains recreated are listed in a new order.
        let lines = |t: &str| {
            let mut l: Vec<String> = t.lines().map(str::to_string).collect();
            l.sort();
            l
        };
        assert_eq!(lines(&list_table()), lines(&first));

        // A partial sync rewrites the changed Service's chains only, and
        // the result is what a full one gives.
        let mut moved = slices.to_vec();
        moved[0] = slice("a", "10.42.0.7");
        let rs3 = ruleset(&services, &moved, &cfg);
        syncer.sync_with(&rs3, false).unwrap();
        let partial = list_table();
        assert!(partial.contains("dnat to 10.42.0.7:8080"), "{partial}");
        assert!(partial.contains("dnat to 10.42.0.6:8080"), "{partial}");
        assert!(!partial.contains("dnat to 10.42.0.5:8080"), "{partial}");
        let mut full = Syncer::new(PathBuf::from(NFT));
        full.sync(&rs3).unwrap();
        let stale: Vec<&String> = rs
            .chains
            .keys()
            .filter(|c| !rs3.chains.contains_key(*c))
            .collect();
        let keep = |t: &str| {
            let mut l: Vec<String> = lines(t)
                .into_iter()
                .filter(|l| !stale.iter().any(|c| l.contains(c.as_str())))
                .collect();
            l.retain(|l| !matches!(l.trim(), "}" | ""));
            l
        };
        assert_eq!(keep(&partial), keep(&list_table()));
    });
}

/// Services that ask for one map key twice, and API names full of nft
/// syntax: the kernel takes the transaction (it rejects a whole
/// transaction that names a key twice).
#[test]
fn clashing_services_and_odd_names_still_apply() {
    in_netns(|| {
        let lb = |name: &str, ip: &str, node_port: u16| {
            let mut s = service(
                name,
                ip,
                json!({"type": "LoadBalancer", "externalIPs": ["10.43.0.1"],
                       "ports": [{"port": 80, "nodePort": node_port}]}),
            );
            s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.42.0.5"}]}});
            s
        };
        let evil = "x\"; }\nflush ruleset\n{ ;";
        let services = [
            service("a", "10.43.0.1", json!({})),
            lb("b", "10.43.0.2", 30080),
            lb("c", "10.43.0.3", 30081),
            service(
                "d",
                "10.43.0.4",
                json!({"ports": [{"name": "p", "port": 80}, {"name": evil, "port": 80}]}),
            ),
        ];
        let slices = [slice("a", "10.42.0.5"), slice("b", "10.42.0.6")];
        let rs = ruleset(&services, &slices, &config());
        assert_eq!(rs.conflicts.len(), 3, "{:?}", rs.conflicts);
        let mut syncer = Syncer::new(PathBuf::from(NFT));
        syncer.sync(&rs).unwrap();
        syncer.sync_with(&rs, false).unwrap();
        assert!(list_table().contains("10.42.0.5 . tcp . 80 : goto external-"));
    });
}
