//! The Kubernetes API under what real clients and an attacker do to it:
//! watchers that stop reading, lists over gRPC's default 4 MiB, Python's
//! `watch=True`, impersonation headers, a JSON patch bomb, half-sent
//! requests, and error bodies compared byte for byte.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::api_server::{KUBECTL, Server};
use tokio_stream::StreamExt;

async fn client_of(server: &Server) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn config_map(name: &str, bytes: usize) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"blob": "x".repeat(bytes)},
    }))
    .unwrap()
}

/// `(status, body)` of a raw request, the body exactly as sent.
async fn raw(client: &kube::Client, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect_bytes().await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// kubectl watchers that are stopped (SIGSTOP) and never read; killed on drop.
struct StalledWatchers(Vec<Child>);

impl StalledWatchers {
    fn start(server: &Server, namespace: &str, n: usize) -> StalledWatchers {
        let children = (0..n)
            .map(|_| {
                Command::new(KUBECTL)
                    .args(["get", "configmaps", "-n", namespace, "-w", "-o", "json"])
                    .env("KUBECONFIG", &server.kubeconfig)
                    .env("HOME", server.kubeconfig.parent().unwrap())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        StalledWatchers(children)
    }

    fn stop(&self) {
        for c in &self.0 {
            let stopped = Command::new("kill")
                .args(["-STOP", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(stopped.success());
        }
    }
}

impl Drop for StalledWatchers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Ten watchers stop reading while 25 MB of ConfigMaps are written: writes,
/// reads and another watch go on at normal latency (kube-apiserver drops a
/// watcher that falls behind; none may hold back the datastore connection).
async fn stalled_watchers_hold_back_nobody(server: &Server) {
    let client = client_of(server).await;
    create_namespace(&client, "stall").await;
    let stalled = StalledWatchers::start(server, "stall", 10);
    // Let each kubectl list and start its watch, then freeze it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stalled.stop();

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "stall");
    let healthy = {
        let config_maps = config_maps.clone();
        tokio::spawn(async move {
            let mut events = Box::pin(
                config_maps
                    .watch(&WatchParams::default().timeout(120), "0")
                    .await
                    .unwrap(),
            );
            let mut added = 0;
            while let Some(event) = events.next().await {
                if let Ok(WatchEvent::Added(_)) = event {
                    added += 1;
                    if added == 250 {
                        break;
                    }
                }
            }
            added
        })
    };
    let mut latencies = Vec::new();
    for i in 0..250 {
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            config_maps.create(
                &PostParams::default(),
                &config_map(&format!("cm-{i}"), 100_000),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("create {i} hung behind stalled watchers: {}", server.log()))
        .unwrap();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (p50, max) = (
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    eprintln!("250 creates of 100 KB beside 10 stalled watchers: p50 {p50:?}, max {max:?}");
    assert!(max < Duration::from_secs(3), "p50 {p50:?}, max {max:?}");
    // Reads and other resources answer too.
    let listed = tokio::time::timeout(
        Duration::from_secs(10),
        config_maps.list_metadata(&ListParams::default()),
    )
    .await
    .expect("a list hung")
    .unwrap();
    assert_eq!(listed.items.len(), 250);
    let (ok, out, err) =
        server.kubectl(&["get", "namespaces", "-o", "name", "--request-timeout=10s"]);
    assert!(ok && out.contains("namespace/stall"), "{err}");
    let added = tokio::time::timeout(Duration::from_secs(30), healthy)
        .await
        .expect("the reading watcher fell behind")
        .unwrap();
    assert_eq!(added, 250);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watchers_hold_back_nobody_on_the_embedded_datastore() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    stalled_watchers_hold_back_nobody(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watchers_hold_back_nobody_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, server) = Server::start_on_etcd(dir.path());
    stalled_watchers_hold_back_nobody(&server).await;
}

/// Ten 1 MiB ConfigMaps (over gRPC's default 4 MiB in one answer): listed,
/// then their namespace deleted, all of it gone.
async fn a_namespace_over_4_mib_lists_and_deletes(server: &Server) {
    let client = client_of(server).await;
    create_namespace(&client, "big").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "big");
    for i in 0..10 {
        config_maps
            .create(
                &PostParams::default(),
                &config_map(&format!("mb-{i}"), 1 << 20),
            )
            .await
            .unwrap();
    }
    let listed = config_maps.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 10);
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        10
    );
    server.ok(&["delete", "namespace", "big", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (found, _, err) = server.kubectl(&["get", "namespace", "big"]);
        if !found && err.contains("NotFound") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "namespace big is still there: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        all.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_over_4_mib_lists_and_deletes_on_the_embedded_datastore() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    a_namespace_over_4_mib_lists_and_deletes(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_over_4_mib_lists_and_deletes_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, server) = Server::start_on_etcd(dir.path());
    a_namespace_over_4_mib_lists_and_deletes(&server).await;
}

/// The official Python client's `Watch().stream` (it sends `watch=True`).
#[test]
fn the_python_clients_watch_sees_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.python("watch_events.py");
}

/// Booleans as kube's parameter codec reads them, error bodies as kube
/// writes them, and a JSON patch bomb refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_errors_and_patches_as_kube_answers_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = client_of(&server).await;

    let (code, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps/nope",
        "",
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
    );
    let (code, body) = raw(
        &client,
        "GET",
        "/apis/apps/v1/namespaces/default/deployments/nope",
        "",
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"deployments.apps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"nope\",\"group\":\"apps\",\"kind\":\"deployments\"},\"code\":404}\n"
    );

    // `watch=True` (Python's spelling) and an empty value are watches;
    // `watch=False` is a list.
    for (query, is_watch) in [
        ("watch=True", true),
        ("watch=", true),
        ("watch=1", true),
        ("watch=False", false),
        ("watch=0", false),
    ] {
        let (code, body) = raw(
            &client,
            "GET",
            &format!("/api/v1/namespaces/default/configmaps?{query}&timeoutSeconds=1"),
            "",
        )
        .await;
        assert_eq!(code, 200, "{query}: {body}");
        assert_eq!(
            !body.contains("\"kind\":\"ConfigMapList\""),
            is_watch,
            "{query}: {body}"
        );
    }

    // A Service answers with kube's defaulted status.
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/services",
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"ports":[{"port":80}]}}"#,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let service: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(service["status"], json!({"loadBalancer": {}}));

    // 18 doubling copies would build hundreds of MB from 2 KB.
    server.ok(&["create", "configmap", "bomb", "--from-literal=a=x"]);
    let mut ops = vec![json!({"op": "add", "path": "/data/b", "value": "x".repeat(100)})];
    for i in 0..18 {
        ops.push(json!({"op": "copy", "from": "/data", "path": format!("/data/c{i}")}));
    }
    let patch = serde_json::Value::Array(ops).to_string();
    let started = Instant::now();
    let (ok, _, err) = server.kubectl(&["patch", "configmap", "bomb", "--type=json", "-p", &patch]);
    assert!(!ok);
    assert!(
        err.contains("Unable to complete the copy, the accumulated size increase of copy is"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let many = serde_json::Value::Array(vec![
        json!({"op": "test", "path": "/data/a", "value": "x"});
        10_001
    ]);
    let many_file = dir.path().join("many.json");
    std::fs::write(&many_file, many.to_string()).unwrap();
    let (ok, _, err) = server.kubectl(&[
        "patch",
        "configmap",
        "bomb",
        "--type=json",
        "--patch-file",
        many_file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("The allowed maximum operations in a JSON patch is 10000, got 10001"),
        "{err}"
    );
}

/// `kubectl --as` must never run with the caller's own rights.
#[test]
fn impersonation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // Discovery first, as any earlier kubectl call leaves it cached (a
    // discovery refused with 403 prints client-go's "unknown" instead).
    server.ok(&["get", "pods"]);
    let (ok, out, err) = server.kubectl(&[
        "--as=system:serviceaccount:ns:nobody",
        "get",
        "pods",
        "-n",
        "kube-system",
    ]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(
            "Error from server (Forbidden): serviceaccounts \"nobody\" is forbidden: User \"system:admin\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"ns\""
        ),
        "{err}"
    );
    let (ok, _, err) = server.kubectl(&["--as=jane", "--as-group=devs", "get", "pods"]);
    assert!(!ok);
    assert!(
        err.contains(
            "users \"jane\" is forbidden: User \"system:admin\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        ),
        "{err}"
    );
}

/// Half-sent requests are closed: headers after kube's 32 s, a body after
/// 60 s (504); and one client cannot hold more than its share of sockets.
#[test]
fn half_sent_requests_and_connection_floods_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server.kubeconfig).unwrap()).unwrap();
    let url = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();

    // Python's ssl: a TLS client that sends part of a request and times
    // how long the server keeps the connection.
    let probe = |partial: &str| {
        let script = format!(
            r#"
import socket, ssl, sys, time
ctx = ssl._create_unverified_context()
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})))
s.sendall({partial:?}.encode())
s.settimeout(90)
start = time.time()
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except (ConnectionResetError, ssl.SSLError):
        break
    if not chunk:
        break
    data += chunk
print(round(time.time() - start, 1), data.split(b"\r\n")[0].decode() if data else "closed")
"#
        );
        std::thread::spawn(move || {
            let out = Command::new("python3")
                .args(["-c", &script])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
    };
    let headers = probe("GET /version HTTP/1.1\r\nHost: k3rs\r\nX-Slow: ");
    let body = probe(
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: k3rs\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    );

    // A flood from one address: past its share, connections close at once.
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut extra, &mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "connection 257 was kept open"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    server.ok(&["get", "namespaces"]);

    let headers = headers.join().unwrap();
    let secs: f64 = headers.split(' ').next().unwrap().parse().unwrap();
    assert!((25.0..45.0).contains(&secs), "half-sent headers: {headers}");
    let body = body.join().unwrap();
    let secs: f64 = body.split(' ').next().unwrap().parse().unwrap();
    assert!((55.0..75.0).contains(&secs), "half-sent body: {body}");
    assert!(body.ends_with("HTTP/1.1 504 Gateway Timeout"), "{body}");
}
