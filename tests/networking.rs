//! Cluster networking end to end, as a newcomer's first app uses it: a
//! server and two agents, each agent in a network namespace of its own
//! on containerd. A client pod on node 1 reaches a web pod on node 2
//! through its Service by name, by ClusterIP and by NodePort on either
//! node; EndpointSlices follow readiness; a Service with no ready
//! endpoint rejects; a headless Service resolves to its pods; a
//! hostPort answers on its node's address; `externalTrafficPolicy:
//! Local` and `sessionAffinity: ClientIP` hold. Skipped,
//! saying why, on a machine that cannot run containers.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::api_server::{Server, until, until_text};
use support::containers::{Cleanup, airgap_busybox, missing};
use support::netns::Netns;

const IMAGE: &str = "k3rs.local/busybox:1";

const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: n2}
      containers:
      - name: web
        image: k3rs.local/busybox:1
        command: [sh, -c, "mkdir -p /www && echo hello from $(hostname) > /www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080, hostPort: 8081}]
        readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: n1}
  containers:
  - name: client
    image: k3rs.local/busybox:1
    command: [sleep, "3600"]
---
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: sticky}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: sticky-1, labels: {app: sticky}}
spec:
  nodeSelector: {kubernetes.io/hostname: n1}
  containers:
  - name: web
    image: k3rs.local/busybox:1
    command: [sh, -c, "mkdir -p /www && echo $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {name: sticky-2, labels: {app: sticky}}
spec:
  nodeSelector: {kubernetes.io/hostname: n2}
  containers:
  - name: web
    image: k3rs.local/busybox:1
    command: [sh, -c, "mkdir -p /www && echo $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#;

/// `sh -c SCRIPT` in the client pod: (success, stdout + stderr).
fn in_client(server: &Server, script: &str) -> (bool, String) {
    let (ok, out, err) = server.kubectl(&["exec", "client", "--", "sh", "-c", script]);
    (ok, format!("{out}{err}"))
}

/// Fetches `url` from the client pod, retrying while the network settles.
fn fetch(server: &Server, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = in_client(server, &format!("timeout 5 wget -q -O- {url}"));
        if ok && out.starts_with("hello from web-") {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{url} from the client pod: {out}\nserver log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Fetches `url` from the client pod, retrying while the network settles;
/// any non-empty answer.
fn fetch_any(server: &Server, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = in_client(server, &format!("timeout 5 wget -q -O- {url}"));
        if ok && !out.is_empty() {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{url} from the client pod: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The web Service's EndpointSlice endpoints.
fn endpoints(slices: &Value) -> Vec<Value> {
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// An HTTP GET of `/` from this (the host's) namespace, off the cluster:
/// the answer's body, or None when nothing answered within 3 s.
fn get_from_outside(address: &str) -> Option<String> {
    use std::io::{Read, Write};
    let address: std::net::SocketAddr = address.parse().unwrap();
    let mut tcp = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(3)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

#[test]
fn services_route_across_nodes() {
    if let Some(why) = missing() {
        eprintln!("skipping the networking test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let data_dir = dir.path().join("data");
    let netns = Netns::create(2);
    let server = Netns::server(&data_dir);
    let mut agents = Vec::new();
    for n in 1..=2 {
        let agent_dir = dir.path().join(format!("n{n}"));
        airgap_busybox(&agent_dir, IMAGE);
        agents.push(netns.join_agent(n, &server, &data_dir, &agent_dir));
    }
    until_text(
        &server,
        "both nodes",
        &["get", "nodes", "--no-headers"],
        |o| o.matches(" Ready ").count() == 2,
    );
    let manifests = dir.path().join("web.yaml");
    std::fs::write(&manifests, MANIFESTS).unwrap();
    server.ok(&["apply", "-f", manifests.to_str().unwrap()]);
    let web = until(
        &server,
        "the web pod ready on n2",
        &["get", "pods", "-l", "app=web", "-o", "json"],
        |v| v["items"][0]["status"]["containerStatuses"][0]["ready"] == true,
    );
    let web_pod = web["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let web_ip = web["items"][0]["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    until_text(
        &server,
        "the client pod running",
        &["get", "pod", "client", "-o", "jsonpath={.status.phase}"],
        |o| o == "Running",
    );

    // The EndpointSlice lists the ready pod with its named port.
    let slice_args = [
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "json",
    ];
    let slices = until(&server, "the web EndpointSlice", &slice_args, |v| {
        endpoints(v)
            .iter()
            .any(|e| e["conditions"]["ready"] == true)
    });
    let endpoint = &endpoints(&slices)[0];
    assert_eq!(endpoint["addresses"][0], web_ip.as_str());
    assert_eq!(endpoint["nodeName"], "n2");
    assert_eq!(slices["items"][0]["ports"][0]["name"], "http");
    assert_eq!(slices["items"][0]["ports"][0]["port"], 8080);

    // By name (the search path and the cluster DNS), by ClusterIP, by
    // NodePort on either node's address.
    let hello = format!("hello from {web_pod}\n");
    assert_eq!(
        fetch(&server, "http://web.default.svc.cluster.local/"),
        hello
    );
    assert_eq!(fetch(&server, "http://web/"), hello);
    let cluster_ip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(fetch(&server, &format!("http://{cluster_ip}/")), hello);
    let node_port = server.ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    for node_ip in ["10.251.0.2", "10.251.0.3"] {
        assert_eq!(
            fetch(&server, &format!("http://{node_ip}:{node_port}/")),
            hello
        );
    }
    // Pod to pod across nodes, straight, and through the hostPort.
    assert_eq!(fetch(&server, &format!("http://{web_ip}:8080/")), hello);
    assert_eq!(fetch(&server, "http://10.251.0.3:8081/"), hello);

    // The headless Service resolves to its pod; an unknown name does not.
    let (ok, out) = in_client(&server, "nslookup web-headless.default.svc.cluster.local");
    assert!(ok && out.contains(&web_ip), "{out}");
    let (ok, out) = in_client(&server, "nslookup nosuch.default.svc.cluster.local");
    assert!(!ok, "{out}");
    let resolv = in_client(&server, "cat /etc/resolv.conf").1;
    assert!(
        resolv.contains("nameserver 10.43.0.10")
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("ndots:5"),
        "{resolv}"
    );
    let dns = server.ok(&[
        "get",
        "svc",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(dns, "10.43.0.10");

    // Connection latency through the Service against pod to pod, with
    // the same loop (printed for the closing note, not asserted).
    for (what, target) in [
        ("pod to pod", format!("{web_ip}:8080")),
        ("pod to Service", format!("{cluster_ip}:80")),
    ] {
        let started = Instant::now();
        let (ok, out) = in_client(
            &server,
            &format!(
                "for i in $(seq 200); do wget -q -O /dev/null http://{target}/ || exit 1; done"
            ),
        );
        assert!(ok, "{what}: {out}");
        println!("{what}: 200 connections in {:?}", started.elapsed());
    }

    // externalTrafficPolicy: Local: from off the cluster, only the node
    // with an endpoint answers; the other drops.
    let local_port = server.ok(&[
        "get",
        "svc",
        "web-local",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_from_outside(&format!("10.251.0.3:{local_port}")).as_deref() != Some(hello.as_str()) {
        assert!(Instant::now() < deadline, "eTP Local: no answer from n2");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(get_from_outside(&format!("10.251.0.2:{local_port}")), None);

    // sessionAffinity ClientIP: one client keeps reaching one of the two
    // pods (by chance, ten answers from two pods agree once in 512).
    until_text(
        &server,
        "both sticky pods ready",
        &["get", "pods", "-l", "app=sticky", "--no-headers"],
        |o| o.matches(" 1/1 ").count() == 2,
    );
    let first = fetch_any(&server, "http://sticky/");
    for _ in 0..9 {
        assert_eq!(fetch_any(&server, "http://sticky/"), first);
    }

    // Readiness: a pod that stops being ready leaves the Service.
    server.ok(&["exec", &web_pod, "--", "rm", "/tmp/ready"]);
    until(&server, "the endpoint not ready", &slice_args, |v| {
        endpoints(v)
            .iter()
            .any(|e| e["conditions"]["ready"] == false)
    });
    let refused = |server: &Server| {
        let started = Instant::now();
        let (ok, out) = in_client(
            server,
            &format!("timeout 5 wget -q -O- http://{cluster_ip}/"),
        );
        (!ok && started.elapsed() < Duration::from_secs(4), out)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused(&server).0 {
        assert!(
            Instant::now() < deadline,
            "no reject: {}",
            refused(&server).1
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    server.ok(&["exec", &web_pod, "--", "touch", "/tmp/ready"]);
    assert_eq!(fetch(&server, "http://web/"), hello);

    // Scaled to zero, the Service rejects at once instead of timing out.
    server.ok(&["scale", "deployment", "web", "--replicas=0"]);
    until(&server, "the slice empty", &slice_args, |v| {
        endpoints(v).is_empty()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rejected, out) = refused(&server);
        if rejected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reject after scaling to 0: {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    server.ok(&["delete", "pod", "client", "--grace-period=1"]);
    server.ok(&["delete", "deployment", "web"]);
    server.ok(&["delete", "pod", "sticky-1", "sticky-2", "--grace-period=1"]);
    drop(agents);
}
