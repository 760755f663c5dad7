//! Pods in real containers: `k3rs server` with its agent on containerd and
//! runc (started by the agent), CNI's bridge plugin, and images imported
//! from the airgap directory, driven by kubectl. Skipped, saying why, on
//! a machine without root or without containerd, runc, the CNI plugins
//! and busybox-static (scripts/test installs them).
//!
//! One test walks through the scenarios in turn: they share one
//! containerd (starting one is the slow part), and the node's bridge and
//! pod subnet are the host's, so no two such servers may run at once.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::api_server::{Server, WAIT, until, until_text};
use support::containers::{Cleanup, busybox_image, missing};
use support::netns::Netns;

const IMAGE: &str = "k3rs.local/busybox:1";

fn container_state<'a>(pod: &'a Value, key: &str) -> &'a Value {
    &pod["status"]["containerStatuses"][0]["state"][key]
}

/// The airgap directory: the busybox image (whose command says hello),
/// and a corrupt tarball the agent must log and skip.
fn airgap(data_dir: &Path) {
    let images = data_dir.join("agent/images");
    std::fs::create_dir_all(&images).unwrap();
    busybox_image(&["sh", "-c", "echo hello from $(hostname); exec sleep 3600"])
        .write_docker_archive(IMAGE, &images.join("busybox.tar"))
        .unwrap();
    std::fs::write(images.join("corrupt.tar"), b"this is no tarball").unwrap();
}

/// A directory for a container test, with the clean-up of what
/// containerd leaves below it; None (saying why) on a machine that cannot
/// run them. Bind it first, so it is dropped last, even on a failure.
fn prepare() -> Option<(Cleanup, tempfile::TempDir)> {
    if let Some(why) = missing() {
        eprintln!("skipping the container tests: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let cleanup = Cleanup::new(dir.path());
    Some((cleanup, dir))
}

#[test]
fn pods_run_in_containers() {
    let Some((_cleanup, dir)) = prepare() else {
        return;
    };
    let data_dir = dir.path().join("data");
    airgap(&data_dir);
    let mut server = Server::with_agent(
        &data_dir,
        &["--container-runtime", "containerd", "--agent-port", "0"],
    );
    until_text(&server, "the node", &["get", "nodes"], |o| {
        o.contains(" Ready ")
    });
    let runtime = server.ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.nodeInfo.containerRuntimeVersion}",
    ]);
    assert!(runtime.starts_with("containerd://1."), "{runtime}");
    let wide = server.ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINER-RUNTIME") && wide.contains(&runtime),
        "{wide}"
    );
    assert!(
        server
            .log()
            .contains("importing images failed; skipping the file"),
        "the corrupt tarball is logged:\n{}",
        server.log()
    );

    // A Deployment of an image with no command runs the image's own.
    server.ok(&["create", "deployment", "web", &format!("--image={IMAGE}")]);
    let web = until(
        &server,
        "the web pod running",
        &["get", "pods", "-l", "app=web", "-o", "json"],
        |v| v["items"][0]["status"]["containerStatuses"][0]["ready"] == true,
    );
    let web = &web["items"][0];
    let web_name = web["metadata"]["name"].as_str().unwrap().to_string();
    let container_id = web["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(container_id.starts_with("containerd://"), "{container_id}");
    let pod_ip = web["status"]["podIP"].as_str().unwrap();
    assert!(
        pod_ip.starts_with("10.42.0."),
        "the pod has its own address: {pod_ip}"
    );
    let logs = until_text(&server, "the web pod's log", &["logs", &web_name], |o| {
        !o.is_empty()
    });
    assert_eq!(
        logs,
        format!("hello from {web_name}\n"),
        "the hostname is the pod's"
    );
    let events = server.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={web_name}"),
    ]);
    for said in [
        "Container image \"k3rs.local/busybox:1\" already present on machine",
        "Created container busybox",
        "Started container busybox",
    ] {
        assert!(events.contains(said), "{said}: {events}");
    }
    let stamped = server.ok(&["logs", &web_name, "--timestamps"]);
    let (stamp, rest) = stamped.split_once(' ').unwrap();
    assert!(stamp.ends_with('Z') && stamp.contains('T'), "{stamped}");
    assert_eq!(rest, logs);

    // A configMap seen as a volume and as env, and its update.
    server.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
    ]);
    let pod = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vol"},
      "spec": {"containers": [{"name": "c", "image": "k3rs.local/busybox:1",
        "command": ["sh", "-c", "echo env=$GREETING ip=$MY_IP; while true; do echo file=$(cat /cfg/greeting); sleep 1; done"],
        "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
        "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}}"#;
    let file = dir.path().join("vol.json");
    std::fs::write(&file, pod).unwrap();
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    let logs = until_text(
        &server,
        "the configMap in the container",
        &["logs", "vol"],
        |o| o.contains("file=hello"),
    );
    assert!(logs.starts_with("env=hello ip=10.42.0."), "{logs}");
    // `logs -f` follows the CRI log as the container writes it.
    let mut follow = std::process::Command::new(&server.kubectl)
        .args(["logs", "-f", "--tail=1", "vol"])
        .env("KUBECONFIG", &server.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let _ = follow.kill();
    let followed = follow.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(followed.matches("file=hello\n").count() >= 3, "{followed}");
    server.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data": {"greeting": "updated"}}"#,
    ]);
    until_text(
        &server,
        "the configMap update in the container",
        &["logs", "vol"],
        |o| o.contains("file=updated"),
    );

    // A container over its memory limit is OOMKilled, as the kubelet says.
    let oom = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "oom"},
      "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "k3rs.local/busybox:1",
        "command": ["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived"],
        "resources": {"limits": {"memory": "16Mi"}}}]}}"#;
    std::fs::write(&file, oom).unwrap();
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    let oom = until(
        &server,
        "the OOM kill",
        &["get", "pod", "oom", "-o", "json"],
        |v| container_state(v, "terminated").is_object(),
    );
    let terminated = container_state(&oom, "terminated");
    assert_eq!(terminated["reason"], "OOMKilled", "{oom}");
    assert_eq!(terminated["exitCode"], 137);
    assert_eq!(oom["status"]["phase"], "Failed");

    // A hostNetwork pod has the node's address.
    server.ok(&[
        "run",
        "host",
        &format!("--image={IMAGE}"),
        "--overrides",
        r#"{"spec": {"hostNetwork": true}}"#,
    ]);
    let host = until(
        &server,
        "the hostNetwork pod",
        &["get", "pod", "host", "-o", "json"],
        |v| v["status"]["containerStatuses"][0]["ready"] == true,
    );
    assert_eq!(host["status"]["podIP"], host["status"]["hostIP"], "{host}");

    // Termination messages: the file the container wrote, or its log's
    // end with FallbackToLogsOnError.
    let messages = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bye"},
      "spec": {"restartPolicy": "Never", "containers": [
        {"name": "file", "image": "k3rs.local/busybox:1", "command": ["sh", "-c", "echo bye > /dev/termination-log; exit 2"]},
        {"name": "logs", "image": "k3rs.local/busybox:1", "command": ["sh", "-c", "echo oops; exit 1"],
         "terminationMessagePolicy": "FallbackToLogsOnError"}]}}"#;
    std::fs::write(&file, messages).unwrap();
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    let bye = until(
        &server,
        "the termination messages",
        &["get", "pod", "bye", "-o", "json"],
        |v| v["status"]["phase"] == "Failed",
    );
    let message = |name: &str| {
        let statuses = bye["status"]["containerStatuses"].as_array().unwrap();
        let status = statuses.iter().find(|s| s["name"] == name).unwrap();
        status["state"]["terminated"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(message("file"), "bye\n", "{bye}");
    assert_eq!(message("logs"), "oops\n", "{bye}");

    // An image no registry has: ErrImagePull, then ImagePullBackOff, with
    // the registry's error in the event; the agent goes on.
    server.ok(&[
        "run",
        "nope",
        "--image=127.0.0.1:1/nope:1",
        "--restart=Never",
    ]);
    let nope = until(
        &server,
        "the pull failure",
        &["get", "pod", "nope", "-o", "json"],
        |v| {
            matches!(
                container_state(v, "waiting")["reason"].as_str(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        },
    );
    assert_eq!(nope["status"]["phase"], "Pending");
    let events = until_text(
        &server,
        "the pull failure's events",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=nope",
        ],
        |o| o.contains("Failed to pull image \"127.0.0.1:1/nope:1\""),
    );
    assert!(events.contains("connection refused"), "{events}");

    // The agent killed with -9: its containers keep running and are
    // adopted, not started again.
    server.restart_killed();
    until_text(&server, "the agent back", &["get", "nodes"], |o| {
        o.contains(" Ready ")
    });
    std::thread::sleep(Duration::from_secs(3));
    let web = until(
        &server,
        "the web pod after the restart",
        &["get", "pod", &web_name, "-o", "json"],
        |v| v["status"]["containerStatuses"][0]["ready"] == true,
    );
    let status = &web["status"]["containerStatuses"][0];
    assert_eq!(
        status["containerID"],
        container_id.as_str(),
        "the same container"
    );
    assert_eq!(status["restartCount"], 0);
    assert!(
        server.log().contains("adopted a running container"),
        "{}",
        server.log()
    );
    let logs = server.ok(&["logs", &web_name]);
    assert_eq!(
        logs.matches("hello from").count(),
        1,
        "started once: {logs}"
    );

    // containerd killed with -9: the agent starts it again, and the
    // running containers (their shims outlive it) are still the pod's.
    let pid_file = data_dir.join("agent/containerd/containerd.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + WAIT;
    while !server.log().contains("containerd is back") {
        assert!(
            Instant::now() < deadline,
            "containerd not restarted:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let web = server.ok(&["get", "pod", &web_name, "-o", "json"]);
    let web: Value = serde_json::from_str(&web).unwrap();
    let status = &web["status"]["containerStatuses"][0];
    assert_eq!(status["containerID"], container_id.as_str(), "{web}");
    assert_eq!(
        (status["ready"].as_bool(), status["restartCount"].as_u64()),
        (Some(true), Some(0))
    );

    // exec, cp and port-forward, with kubectl 1.32 and 1.37; exec into a
    // finished pod gets kube's refusal.
    let hostname = server.ok(&["exec", &web_name, "--", "cat", "/etc/hostname"]);
    assert_eq!(hostname.trim(), web_name);
    // kubectl's default, WebSocket v5, is answered: no fallback to SPDY.
    let (ok, out, err) = server.kubectl(&["exec", "-v=7", &web_name, "--", "hostname"]);
    assert!(ok && out.trim() == web_name, "{err}");
    assert!(
        // kubectl 1.32 and 1.37 word it differently.
        (err.contains("The subprotocol is v5.channel.k8s.io")
            || err.contains(r#"protocol="v5.channel.k8s.io""#))
            && !err.contains("RemoteCommand fallback"),
        "{err}"
    );
    if let Some(newer) = support::api_server::kubectl_1_37() {
        let out = std::process::Command::new(newer)
            .args([
                "exec",
                &web_name,
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ])
            .env("KUBECONFIG", &server.kubeconfig)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        // kubectl adds its own line about the exit code.
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("err\n"),
            "{out:?}"
        );
    }
    // The node's files are not the container's: the cluster CA's key is
    // out of its reach.
    let ca_key = data_dir.join("server/tls/server-ca.key");
    assert!(ca_key.exists(), "{}", ca_key.display());
    let (ok, _, err) = server.kubectl(&["exec", &web_name, "--", "cat", ca_key.to_str().unwrap()]);
    assert!(!ok && err.contains("No such file or directory"), "{err}");
    let local = dir.path().join("copied");
    server.ok(&[
        "cp",
        &format!("{web_name}:/etc/hostname"),
        local.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&local).unwrap().trim(), web_name);
    std::fs::write(&local, "sent in\n").unwrap();
    server.ok(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{web_name}:/tmp/sent"),
    ]);
    assert_eq!(
        server.ok(&["exec", &web_name, "--", "cat", "/tmp/sent"]),
        "sent in\n"
    );
    let (ok, _, err) = server.kubectl(&["exec", "oom", "--", "true"]);
    assert!(!ok);
    assert!(
        err.contains("cannot exec into a container in a completed pod; current phase is Failed"),
        "{err}"
    );
    port_forward(&server, &web_name);

    // `kubectl run -i --rm` attaches to the new container's stdin.
    let mut run = std::process::Command::new(&server.kubectl)
        .args([
            "run",
            "t",
            &format!("--image={IMAGE}"),
            "--rm",
            "-i",
            "--restart=Never",
            "--",
            "sh",
        ])
        .env("KUBECONFIG", &server.kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = run.stdin.take().unwrap();
        stdin.write_all(b"echo from-stdin; exit 0\n").unwrap();
    }
    let out = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("from-stdin"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting a pod removes its sandbox and its cgroup.
    server.ok(&["delete", "pod", "vol", "--wait=true", "--timeout=60s"]);
    server.ok(&["delete", "deployment", "web"]);
    until_text(
        &server,
        "the pods gone",
        &["get", "pods", "-l", "app=web", "-o", "name"],
        |o| o.trim().is_empty(),
    );
}

/// `kubectl port-forward` to busybox's httpd started in the pod.
fn port_forward(server: &Server, pod: &str) {
    server.ok(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "mkdir -p /www && echo served > /www/index.html && (httpd -p 8080 -h /www &)",
    ]);
    let port = support::free_port();
    let mut forward = std::process::Command::new(&server.kubectl)
        .args([
            "port-forward",
            &format!("pod/{pod}"),
            &format!("{port}:8080"),
        ])
        .env("KUBECONFIG", &server.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let body = loop {
        if let Some(body) = http_get(port) {
            break body;
        }
        assert!(Instant::now() < deadline, "no answer through port-forward");
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = forward.kill();
    let _ = forward.wait();
    assert!(body.ends_with("served\n"), "{body}");
}

fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.").then_some(answer)
}

#[test]
fn two_agents_in_their_own_network_namespaces() {
    let Some((_cleanup, dir)) = prepare() else {
        return;
    };
    let data_dir = dir.path().join("data");
    let netns = Netns::create(2);
    let server = Netns::server(&data_dir);
    let mut agents = Vec::new();
    for n in 1..=2 {
        let agent_dir = dir.path().join(format!("n{n}"));
        airgap(&agent_dir);
        agents.push(netns.join_agent(n, &server, &data_dir, &agent_dir));
    }
    until_text(
        &server,
        "both nodes",
        &["get", "nodes", "--no-headers"],
        |o| o.matches(" Ready ").count() == 2,
    );
    server.ok(&[
        "create",
        "deployment",
        "spread",
        &format!("--image={IMAGE}"),
        "--replicas=4",
    ]);
    let pods = until(
        &server,
        "the pods on both nodes",
        &["get", "pods", "-l", "app=spread", "-o", "json"],
        |v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let ready = items
                .iter()
                .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true);
            let nodes: std::collections::HashSet<&str> = ready
                .filter_map(|p| p["spec"]["nodeName"].as_str())
                .collect();
            nodes.len() == 2 && items.len() == 4
        },
    );
    // exec and logs reach each node's agent across its namespace.
    let mut seen = std::collections::HashSet::new();
    for pod in pods["items"].as_array().unwrap() {
        let (name, node) = (
            pod["metadata"]["name"].as_str().unwrap(),
            pod["spec"]["nodeName"].as_str().unwrap(),
        );
        if !seen.insert(node.to_string()) {
            continue;
        }
        assert_eq!(server.ok(&["exec", name, "--", "hostname"]).trim(), name);
        let logs = until_text(&server, "a pod's log", &["logs", name], |o| !o.is_empty());
        assert_eq!(logs, format!("hello from {name}\n"));
    }
    server.ok(&["delete", "deployment", "spread"]);
    until_text(
        &server,
        "the pods gone",
        &["get", "pods", "-l", "app=spread", "-o", "name"],
        |o| o.trim().is_empty(),
    );
    drop(agents);
}
