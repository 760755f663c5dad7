//! The k3rs binary as a process: crash safety and start-up errors.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kine::proto::kv_client::KvClient;
use kine::proto::lease_client::LeaseClient;
use kine::proto::watch_client::WatchClient;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{
    LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};
use tonic::transport::Channel;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args(["kine", "--listen-address", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting k3rs")
}

async fn connect(port: u16) -> KvClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = KvClient::connect(format!("http://127.0.0.1:{port}")).await {
            return c;
        }
        assert!(Instant::now() < deadline, "k3rs did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kill -9 in the middle of a write load, restart: every acknowledged write
/// is there, and revisions go on from where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(dir.path(), port);
    let client = connect(port).await;

    let mut writers = Vec::new();
    for w in 0..16 {
        let mut c = client.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let key = format!("/crash/{w}/{}", i % 50);
                let value = format!("{w}-{i}");
                let put = PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..Default::default()
                };
                match c.put(put).await {
                    Ok(r) => acked.push((key, value, r.into_inner().header.unwrap().revision)),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 100,
        "too few writes acknowledged to mean anything: {}",
        acked.len()
    );

    let mut server = start(dir.path(), port);
    let mut client = connect(port).await;
    let max_acked = acked.iter().map(|a| a.2).max().unwrap();
    for (key, value, revision) in &acked {
        let got = client
            .range(RangeRequest {
                key: key.clone().into(),
                revision: *revision,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.kvs.len(), 1, "{key} at {revision} lost");
        assert_eq!(got.kvs[0].value, value.as_bytes(), "{key} at {revision}");
        assert_eq!(got.kvs[0].mod_revision, *revision);
    }
    let next = client
        .put(PutRequest {
            key: "/crash/after".into(),
            value: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next.header.unwrap().revision > max_acked);
    server.kill().unwrap();
    server.wait().unwrap();
}

fn run_to_exit(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_foreign_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server/db/state.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, b"definitely not sqlite, but precious").unwrap();
    let port = free_port().to_string();
    let (ok, err) = run_to_exit(
        &["kine", "--listen-address", &format!("127.0.0.1:{port}")],
        dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("not a SQLite database"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"definitely not sqlite, but precious"
    );
}

#[test]
fn a_bad_endpoint_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = run_to_exit(&["kine", "--endpoint", "state.db"], dir.path());
    assert!(!ok);
    assert!(err.contains("sqlite://PATH"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_database_or_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(dir.path(), port);
    connect(port).await;
    let other_port = free_port().to_string();
    let (ok, err) = run_to_exit(
        &[
            "kine",
            "--listen-address",
            &format!("127.0.0.1:{other_port}"),
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("in use by another k3rs process"), "{err}");

    let other_dir = tempfile::tempdir().unwrap();
    let (ok, err) = run_to_exit(
        &["kine", "--listen-address", &format!("127.0.0.1:{port}")],
        other_dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("address is in use"), "{err}");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// SIGTERM: stop accepting, finish, exit 0, even with a watch stream open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(dir.path(), port);
    let mut client = connect(port).await;
    client
        .put(PutRequest {
            key: "k".into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut watch = WatchClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "k".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut events = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().unwrap().created);
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "k3rs did not stop on SIGTERM");
        let _ = &tx;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kill -9 and restart: leases and their keys come back, and a watcher that
/// resumes from its last revision sees every later event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_watch_resume_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(dir.path(), port);
    let mut kv = connect(port).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let lease = LeaseClient::new(channel)
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut last = 0;
    for i in 0..20 {
        let put = PutRequest {
            key: format!("/l/{i}").into_bytes().into(),
            value: "v".into(),
            lease: lease.id,
            ..Default::default()
        };
        last = kv
            .put(put)
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
    }
    server.kill().unwrap();
    server.wait().unwrap();

    let mut server = start(dir.path(), port);
    let mut kv = connect(port).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ttl = LeaseClient::new(channel.clone())
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 600);
    assert!(
        ttl.ttl > 590,
        "a restart gives leases their full TTL again: {}",
        ttl.ttl
    );
    assert_eq!(ttl.keys.len(), 20);

    // Resume from the middle of the history, then write more.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "/l/".into(),
            range_end: "/l0".into(),
            start_revision: last - 9,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut events = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().unwrap().created);
    let after = kv
        .put(PutRequest {
            key: "/l/after".into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    assert_eq!(after, last + 1);
    let mut seen = Vec::new();
    while seen.len() < 11 {
        let resp = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    assert_eq!(seen, ((last - 9)..=after).collect::<Vec<_>>());
    server.kill().unwrap();
    server.wait().unwrap();
}
