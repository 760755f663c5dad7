//! Services' endpoints end to end, on a server with its own agent running
//! pods as host processes: EndpointSlices and Endpoints follow the pods'
//! readiness and termination, named ports resolve, publishNotReadyAddresses
//! and selector-less Services behave as in kube, LoadBalancers get the
//! node's address, kube-dns exists, and NetworkPolicies are warned about.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::api_server::Server;

const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` until it answers `Some`, or fails after `WAIT` with `what`.
fn until<T>(server: &Server, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The endpoints of Service `svc`'s slices: (pod, ready, serving, terminating).
fn endpoints(server: &Server, svc: &str) -> Vec<(String, bool, bool, bool)> {
    let out = server.ok(&[
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={svc}"),
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).unwrap();
    let mut eps: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let c = &e["conditions"];
            (
                e["targetRef"]["name"].as_str().unwrap_or("").to_string(),
                c["ready"] == true,
                c["serving"] == true,
                c["terminating"] == true,
            )
        })
        .collect();
    eps.sort();
    eps
}

fn apply(server: &Server, dir: &Path, name: &str, yaml: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
}

#[test]
fn services_get_endpoints_that_follow_their_pods() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_agent(
        &dir.path().join("data"),
        &["--container-runtime", "process", "--agent-port", "0"],
    );
    until(&server, "the node", || {
        server
            .ok(&["get", "nodes"])
            .contains(" Ready ")
            .then_some(())
    });
    let ready_file = dir.path().join("ready");
    // Ignoring SIGTERM (inherited through exec) keeps a deleted pod in its
    // grace period, terminating, until it is forced.
    apply(
        &server,
        dir.path(),
        "web",
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 60
      containers:
      - name: c
        image: none
        command: ["sh", "-c", "trap '' TERM; exec sleep 3600"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          exec: {{command: ["test", "-f", "{ready}"]}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-all}}
spec:
  selector: {{app: web}}
  publishNotReadyAddresses: true
  clusterIP: None
  ports: [{{name: http, port: 80, targetPort: http}}]
"#,
            ready = ready_file.display()
        ),
    );

    // Not ready yet: listed, not ready, not serving; the
    // publishNotReadyAddresses Service lists them ready.
    let eps = until(&server, "two unready endpoints", || {
        let eps = endpoints(&server, "web");
        (eps.len() == 2).then_some(eps)
    });
    assert!(eps.iter().all(|e| !e.1 && !e.2 && !e.3), "{eps:?}");
    let all = until(&server, "web-all's endpoints", || {
        let eps = endpoints(&server, "web-all");
        (eps.len() == 2).then_some(eps)
    });
    assert!(all.iter().all(|e| e.1 && e.2), "{all:?}");
    let slice: Value = serde_json::from_str(&server.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "json",
    ]))
    .unwrap();
    let slice = &slice["items"][0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["ports"][0]["port"], 8080,
        "the named port resolved: {slice}"
    );
    assert_eq!(slice["ports"][0]["name"], "http");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert!(
        slice["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("web-")
    );
    let node = server.ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert_eq!(slice["endpoints"][0]["nodeName"], node.as_str());
    assert_eq!(slice["endpoints"][0]["targetRef"]["kind"], "Pod");
    let legacy = server.ok(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[0].notReadyAddresses[*].ip}",
    ]);
    assert_eq!(legacy.split_whitespace().count(), 2, "{legacy}");

    // Ready.
    std::fs::write(&ready_file, "").unwrap();
    until(&server, "ready endpoints", || {
        let eps = endpoints(&server, "web");
        (eps.len() == 2 && eps.iter().all(|e| e.1 && e.2 && !e.3)).then_some(())
    });
    let pod_ip = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let table = until(&server, "ready Endpoints", || {
        let t = server.ok(&["get", "endpoints", "web"]);
        t.contains(&format!("{pod_ip}:8080")).then_some(t)
    });
    assert!(table.starts_with("NAME"), "{table}");
    let table = server.ok(&["get", "endpointslices"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("web-") && l.contains("8080"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("IPv4") && row.contains(pod_ip.as_str()),
        "{row}"
    );

    // A deleted pod is terminating (serving, not ready) during its grace.
    let pods = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let victim = pods.split_whitespace().next().unwrap().to_string();
    server.ok(&["delete", "pod", &victim, "--wait=false"]);
    until(&server, "a terminating endpoint", || {
        endpoints(&server, "web")
            .iter()
            .any(|e| e.0 == victim && !e.1 && e.2 && e.3)
            .then_some(())
    });
    // Legacy Endpoints drop it at once.
    until(&server, "the Endpoints without the deleted pod", || {
        let refs = server.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].targetRef.name}",
        ]);
        (!refs.contains(&victim)).then_some(())
    });
    server.ok(&["delete", "pod", &victim, "--grace-period=0", "--force"]);

    // Scaled to 0: the slice empties.
    server.ok(&["scale", "deployment", "web", "--replicas=0"]);
    for p in pods.split_whitespace() {
        let _ = server.kubectl(&["delete", "pod", p, "--grace-period=0", "--force"]);
    }
    until(&server, "no endpoints", || {
        let out = server.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ]);
        let list: Value = serde_json::from_str(&out).unwrap();
        let items = list["items"].as_array().unwrap();
        (items.len() == 1 && items[0]["endpoints"].as_array().is_none_or(Vec::is_empty))
            .then_some(())
    });

    // A selector-less Service keeps its hand-written slice.
    apply(
        &server,
        dir.path(),
        "manual",
        r#"
apiVersion: v1
kind: Service
metadata: {name: manual}
spec:
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  labels: {kubernetes.io/service-name: manual}
addressType: IPv4
endpoints:
- addresses: ["10.42.7.7"]
  conditions: {ready: true}
ports: [{name: "", port: 80, protocol: TCP}]
"#,
    );
    std::thread::sleep(Duration::from_secs(2));
    let kept = server.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=manual",
        "-o",
        "jsonpath={.items[*].metadata.name} {.items[*].endpoints[*].addresses[*]}",
    ]);
    assert_eq!(kept.trim(), "manual-1 10.42.7.7");
    // addressType cannot change.
    let (ok, _, err) = server.kubectl(&[
        "patch",
        "endpointslice",
        "manual-1",
        "--type=merge",
        "-p",
        r#"{"addressType":"IPv6"}"#,
    ]);
    assert!(
        !ok && err.contains("addressType: Invalid value: \"IPv6\": field is immutable"),
        "{err}"
    );

    // A LoadBalancer gets the node's address.
    server.ok(&["create", "service", "loadbalancer", "lb", "--tcp=80:8080"]);
    let node_ip = server.ok(&[
        "get",
        "nodes",
        "-o",
        r#"jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}"#,
    ]);
    until(&server, "the load balancer's ingress", || {
        let ip = server.ok(&[
            "get",
            "service",
            "lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ]);
        (ip == node_ip).then_some(())
    });
    let svc_table = server.ok(&["get", "service", "lb"]);
    assert!(svc_table.contains(&node_ip), "{svc_table}");
    // A younger LoadBalancer on the same port stays pending, told why;
    // it gets the port once the holder is gone.
    server.ok(&["create", "service", "loadbalancer", "lb2", "--tcp=80:9090"]);
    until(&server, "the port conflict event", || {
        let events = server.ok(&[
            "get",
            "events",
            "-o",
            r#"jsonpath={.items[?(@.involvedObject.name=="lb2")].message}"#,
        ]);
        events
            .contains("already used by LoadBalancer Service default/lb;")
            .then_some(())
    });
    let pending = server.ok(&[
        "get",
        "service",
        "lb2",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[*].ip}",
    ]);
    assert_eq!(pending, "");
    server.ok(&["delete", "service", "lb"]);
    until(&server, "the freed port's ingress", || {
        let ip = server.ok(&[
            "get",
            "service",
            "lb2",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ]);
        (ip == node_ip).then_some(())
    });
    // A deleted Service's cluster IP is free again.
    let fixed = "apiVersion: v1\nkind: Service\nmetadata: {name: fixed}\n\
                 spec: {clusterIP: 10.43.77.77, ports: [{port: 80}]}\n";
    apply(&server, dir.path(), "fixed", fixed);
    server.ok(&["delete", "service", "fixed"]);
    let file = dir.path().join("fixed.yaml");
    until(&server, "the fixed cluster IP free again", || {
        server
            .kubectl(&["apply", "-f", file.to_str().unwrap()])
            .0
            .then_some(())
    });
    // An invalid Service is refused in kube's words.
    let (ok, _, err) = server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "twice",
        "--tcp=80:8080",
        "--tcp=80:8081",
    ]);
    assert!(
        !ok && err.contains("spec.ports[1]: Duplicate value: core.ServicePort{"),
        "{err}"
    );

    // kube-dns and the kubernetes Service's own endpoints.
    let dns = server.ok(&[
        "get",
        "svc",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.ports[*].name}",
    ]);
    assert_eq!(dns, "10.43.0.10 dns dns-tcp metrics");
    let api = server.ok(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].ports[0].port}",
    ]);
    let port = server.ok(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    assert!(port.ends_with(&format!(":{api}")), "{port} vs {api}");
    let slice = server.ok(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "jsonpath={.ports[0].port}",
    ]);
    assert_eq!(slice, api);

    // A NetworkPolicy is stored and warned about.
    apply(
        &server,
        dir.path(),
        "policy",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 8080}]
"#,
    );
    let types = server.ok(&[
        "get",
        "networkpolicy",
        "deny",
        "-o",
        "jsonpath={.spec.policyTypes}",
    ]);
    assert_eq!(types, r#"["Ingress"]"#);
    until(&server, "the NetworkPolicy warning", || {
        let events = server.ok(&["get", "events", "-o", "json"]);
        let list: Value = serde_json::from_str(&events).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["reason"] == "NetworkPolicyNotEnforced"
                    && e["type"] == "Warning"
                    && e["involvedObject"]["name"] == "deny"
            })
            .then_some(())
    });
}
