//! Day-two operations against the k3rs binary: TLS and client
//! certificates, snapshots, the space quota (side by side with real etcd),
//! metrics and health, SIGTERM under load, a flood of bad input, file
//! modes and the datastore's socket, and damaged database files.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kine::proto::kv_client::KvClient;
use kine::proto::lease_client::LeaseClient;
use kine::proto::maintenance_client::MaintenanceClient;
use kine::proto::watch_client::WatchClient;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{
    AlarmRequest, CompactionRequest, DefragmentRequest, DeleteRangeRequest, HashKvRequest,
    LeaseGrantRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use support::{K3rs, etcdctl, http_get};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn generate_certs(dir: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args(["certs", "generate", "--dir"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.to_string().into(),
        value: value.to_string().into(),
        ..Default::default()
    }
}

async fn tls_channel(port: u16, certs: &Path, client: Option<&Path>) -> Result<Channel, String> {
    let read = |name: &str| std::fs::read(certs.join(name)).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .domain_name("localhost");
    if let Some(dir) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join("client.crt")).unwrap(),
            std::fs::read(dir.join("client.key")).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// With `--trusted-ca-file`, only clients holding a certificate from that
/// CA get through, with etcdctl as with the Rust client; without it, TLS
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let strangers = dir.path().join("strangers");
    generate_certs(&certs);
    generate_certs(&strangers);
    let flag = |name: &str| certs.join(name).display().to_string();
    let mtls = K3rs::start(
        &dir.path().join("mtls"),
        &[
            "--server-cert-file",
            &flag("server.crt"),
            "--server-key-file",
            &flag("server.key"),
            "--trusted-ca-file",
            &flag("ca.crt"),
        ],
    );
    mtls.wait_listening();
    let endpoint = format!("https://127.0.0.1:{}", mtls.port);
    let with = |dir: &Path| {
        vec![
            format!("--endpoints={endpoint}"),
            format!("--cacert={}", certs.join("ca.crt").display()),
            format!("--cert={}", dir.join("client.crt").display()),
            format!("--key={}", dir.join("client.key").display()),
            "--dial-timeout=2s".into(),
            "--command-timeout=3s".into(),
        ]
    };
    let mut args = with(&certs);
    args.extend(["put".into(), "/tls/a".into(), "1".into()]);
    let (ok, out) = etcdctl(&args);
    assert!(ok, "etcdctl with the right certificate: {out}");
    let mut args = with(&certs);
    args.extend(["get".into(), "/tls/a".into(), "--print-value-only".into()]);
    assert_eq!(etcdctl(&args), (true, "1\n".into()));

    let mut args = with(&strangers);
    args.extend(["get".into(), "/tls/a".into()]);
    let (ok, out) = etcdctl(&args);
    assert!(!ok, "a certificate from another CA must be refused: {out}");
    let (ok, out) = etcdctl(&[
        format!("--endpoints={endpoint}"),
        format!("--cacert={}", certs.join("ca.crt").display()),
        "--dial-timeout=2s".into(),
        "--command-timeout=3s".into(),
        "get".into(),
        "/tls/a".into(),
    ]);
    assert!(!ok, "no client certificate must be refused: {out}");
    let (ok, _) = etcdctl(&[
        format!("--endpoints=127.0.0.1:{}", mtls.port),
        "--dial-timeout=2s".into(),
        "--command-timeout=3s".into(),
        "get".into(),
        "/tls/a".into(),
    ]);
    assert!(!ok, "plaintext must be refused on a TLS listener");

    let channel = tls_channel(mtls.port, &certs, Some(&certs)).await.unwrap();
    let got = KvClient::new(channel)
        .range(RangeRequest {
            key: "/tls/a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value, "1".as_bytes());
    // rustls finishes the client's side of a TLS 1.3 handshake before the
    // server checks the certificate: the refusal shows on the first call.
    let refused = match tls_channel(mtls.port, &certs, None).await {
        Err(_) => true,
        Ok(channel) => KvClient::new(channel)
            .range(RangeRequest {
                key: "/tls/a".into(),
                ..Default::default()
            })
            .await
            .is_err(),
    };
    assert!(refused, "the Rust client without a certificate got through");

    let tls_only = K3rs::start(
        &dir.path().join("tls"),
        &[
            "--server-cert-file",
            &flag("server.crt"),
            "--server-key-file",
            &flag("server.key"),
        ],
    );
    tls_only.wait_listening();
    let channel = tls_channel(tls_only.port, &certs, None).await.unwrap();
    KvClient::new(channel)
        .put(put("/tls/b", "2"))
        .await
        .expect("TLS without client auth takes any client");
}

/// Everything a client can read of a store, for comparing two stores.
async fn dump(kv: &mut KvClient<Channel>, revision: i64) -> String {
    let r = kv
        .range(RangeRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            revision,
            ..Default::default()
        })
        .await;
    match r {
        Ok(r) => {
            let r = r.into_inner();
            format!(
                "rev {} count {} kvs {:?}",
                r.header.unwrap().revision,
                r.count,
                r.kvs
            )
        }
        Err(e) => format!("{:?} {}", e.code(), e.message()),
    }
}

/// A snapshot taken with etcdctl (and with `k3rs kine snapshot save`) and
/// restored serves the same keys, revisions, history and compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_restore_compare() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = K3rs::start(&dir.path().join("source"), &[]);
    let mut kv = source.kv().await;
    for i in 0..300 {
        kv.put(put(&format!("/snap/{}", i % 120), &format!("v{i}")))
            .await
            .unwrap();
    }
    kv.delete_range(DeleteRangeRequest {
        key: "/snap/1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let lease = LeaseClient::new(source.channel().await)
        .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    kv.put(PutRequest {
        lease,
        ..put("/snap/leased", "x")
    })
    .await
    .unwrap();
    kv.compact(CompactionRequest {
        revision: 100,
        physical: true,
    })
    .await
    .unwrap();
    let mut before = Vec::new();
    for rev in [0, 99, 100, 250] {
        before.push(dump(&mut kv, rev).await);
    }
    let mut maintenance = MaintenanceClient::new(source.channel().await);
    let hash_before = maintenance
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();

    let saved_by_etcdctl = dir.path().join("etcdctl.snap");
    let (ok, out) = etcdctl(&[
        format!("--endpoints=127.0.0.1:{}", source.port),
        "snapshot".into(),
        "save".into(),
        saved_by_etcdctl.display().to_string(),
    ]);
    assert!(ok, "etcdctl snapshot save: {out}");
    let saved_by_k3rs = dir.path().join("k3rs.snap");
    let status = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args(["kine", "snapshot", "save", "--endpoints"])
        .arg(format!("127.0.0.1:{}", source.port))
        .arg(&saved_by_k3rs)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    source.stop();

    for (name, snapshot) in [("a", &saved_by_etcdctl), ("b", &saved_by_k3rs)] {
        let data_dir = dir.path().join(format!("restored-{name}"));
        let out = Command::new(env!("CARGO_BIN_EXE_k3rs"))
            .env("K3RS_CONTAINER_RUNTIME", "process")
            .args(["kine", "snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let restored = K3rs::start(&data_dir, &[]);
        let mut kv = restored.kv().await;
        let mut after = Vec::new();
        for rev in [0, 99, 100, 250] {
            after.push(dump(&mut kv, rev).await);
        }
        assert_eq!(before, after, "snapshot {name}");
        let hash_after = MaintenanceClient::new(restored.channel().await)
            .hash_kv(HashKvRequest { revision: 0 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hash_before.hash, hash_after.hash);
        assert_eq!(hash_before.compact_revision, hash_after.compact_revision);
        let leases = LeaseClient::new(restored.channel().await)
            .lease_leases(kine::proto::LeaseLeasesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(leases.leases.len(), 1);
    }

    // A damaged snapshot is refused, and nothing is left behind.
    let mut bytes = std::fs::read(&saved_by_etcdctl).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let damaged = dir.path().join("damaged.snap");
    std::fs::write(&damaged, &bytes).unwrap();
    let target = dir.path().join("restored-damaged");
    let out = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args(["kine", "snapshot", "restore"])
        .arg(&damaged)
        .arg("--data-dir")
        .arg(&target)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SHA-256 does not match"), "{stderr}");
    assert!(!target.join("server/db/state.db").exists());
}

/// The quota scenario, run the same way against etcd and k3rs; the
/// transcript holds what a client sees once the quota is reached.
async fn quota_scenario(channel: Channel) -> Vec<String> {
    let mut kv = KvClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel);
    let outcome = |r: Result<(), tonic::Status>| match r {
        Ok(()) => "ok".to_string(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    let big = "x".repeat(64 * 1024);
    let mut filled = None;
    for i in 0..1000 {
        if let Err(e) = kv.put(put(&format!("/quota/{i}"), &big)).await {
            filled = Some(format!("{:?}: {}", e.code(), e.message()));
            break;
        }
    }
    let mut log = vec![format!("filling: {filled:?}")];
    let alarms = maintenance
        .alarm(AlarmRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alarms;
    log.push(format!(
        "alarms: {:?}",
        alarms.iter().map(|a| a.alarm).collect::<Vec<_>>()
    ));
    let member_id = alarms.first().map(|a| a.member_id).unwrap_or_default();
    log.push(format!(
        "small put: {}",
        outcome(kv.put(put("/quota/small", "1")).await.map(drop))
    ));
    log.push(format!(
        "lease grant: {}",
        outcome(
            lease
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await
                .map(drop)
        )
    ));
    log.push(format!(
        "get: {}",
        outcome(
            kv.range(RangeRequest {
                key: "/quota/0".into(),
                count_only: true,
                ..Default::default()
            })
            .await
            .map(drop)
        )
    ));
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: "/quota/".into(),
            range_end: "/quota0".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().header.unwrap().revision);
    log.push(format!("delete: {}", outcome(deleted.clone().map(drop))));
    log.push(format!(
        "compact: {}",
        outcome(
            kv.compact(CompactionRequest {
                revision: deleted.unwrap_or(1),
                physical: true,
            })
            .await
            .map(drop)
        )
    ));
    log.push(format!(
        "defragment: {}",
        outcome(maintenance.defragment(DefragmentRequest {}).await.map(drop))
    ));
    log.push(format!(
        "put before disarm: {}",
        outcome(kv.put(put("/quota/small", "1")).await.map(drop))
    ));
    let disarmed = maintenance
        .alarm(AlarmRequest {
            action: kine::proto::alarm_request::AlarmAction::Deactivate as i32,
            member_id,
            alarm: kine::proto::AlarmType::Nospace as i32,
        })
        .await
        .unwrap()
        .into_inner();
    log.push(format!("disarmed: {}", disarmed.alarms.len()));
    log.push(format!(
        "put after disarm: {}",
        outcome(kv.put(put("/quota/small", "1")).await.map(drop))
    ));
    log
}

/// Past `--quota-backend-bytes`, k3rs answers as etcd 3.4 does, and
/// compaction, defragment and disarm recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exhaustion_matches_etcd() {
    const QUOTA: &str = "4194304";
    let dir = tempfile::tempdir().unwrap();
    let etcd = support::Etcd::start(
        &dir.path().join("etcd"),
        &[&format!("--quota-backend-bytes={QUOTA}")],
    );
    let from_etcd = quota_scenario(etcd.channel().await).await;
    let k3rs = K3rs::start(&dir.path().join("k3rs"), &["--quota-backend-bytes", QUOTA]);
    let from_k3rs = quota_scenario(k3rs.channel().await).await;
    assert_eq!(
        from_etcd[0],
        "filling: Some(\"ResourceExhausted: etcdserver: mvcc: database space exceeded\")"
    );
    eprintln!("etcd: {from_etcd:#?}\nk3rs: {from_k3rs:#?}");
    assert_eq!(from_k3rs, from_etcd);
    let metrics = http_get(k3rs.metrics_port, "/metrics").1;
    assert!(!metrics.contains("etcd_server_alarms{alarm_type=\"NOSPACE\"}"));
    assert!(metrics.contains("k3rs_quota_refusals_total"));
}

/// A minimal Prometheus text-format parser: every sample line is
/// `name{labels} value`, every family has HELP and TYPE first.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "{line}");
                (n, l.trim_end_matches('}'))
            }
            None => (series, ""),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE before {line}");
        samples.push((name.to_string(), labels.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, String, f64)], name: &str, label: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && l.contains(label))
        .map(|(_, _, v)| *v)
        .sum()
}

/// `/metrics` parses as Prometheus text and counts what happened; health
/// endpoints answer; slow requests are logged without keys or values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    // 1µs: every unary call is "slow", whatever the machine's disk.
    let server = K3rs::start(dir.path(), &["--slow-request-threshold", "1us"]);
    let channel = server.channel().await;
    let mut kv = KvClient::new(channel.clone());
    for i in 0..20 {
        kv.put(put(&format!("/m/{i}"), "supersecret-value"))
            .await
            .unwrap();
    }
    let _ = kv
        .range(RangeRequest {
            key: "".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "/m/".into(),
            range_end: "/m0".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut watch = WatchClient::new(channel.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap(); // created
    kv.put(put("/m/watched", "x")).await.unwrap();
    watch.message().await.unwrap().unwrap();

    let (status, body) = http_get(server.metrics_port, "/metrics");
    assert_eq!(status, 200, "{body}");
    let samples = parse_metrics(&body);
    let handled = |method: &str, code: &str| {
        sample(
            &samples,
            "grpc_server_handled_total",
            &format!("grpc_code=\"{code}\",grpc_method=\"{method}\""),
        )
    };
    assert!(handled("Put", "OK") >= 21.0);
    assert_eq!(handled("Range", "InvalidArgument"), 1.0);
    assert!(
        sample(
            &samples,
            "grpc_server_handling_seconds_count",
            "grpc_method=\"Put\""
        ) >= 21.0
    );
    assert!(
        sample(
            &samples,
            "etcd_disk_backend_commit_duration_seconds_count",
            ""
        ) >= 21.0
    );
    assert_eq!(
        sample(&samples, "etcd_debugging_mvcc_watcher_total", ""),
        1.0
    );
    assert!(sample(&samples, "etcd_debugging_mvcc_events_total", "") >= 1.0);
    assert!(sample(&samples, "etcd_mvcc_db_total_size_in_bytes", "") > 0.0);
    assert!(sample(&samples, "etcd_debugging_mvcc_current_revision", "") >= 22.0);
    assert!(sample(&samples, "process_resident_memory_bytes", "") > 0.0);
    // Buckets are cumulative.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, _, _)| n == "etcd_disk_backend_commit_duration_seconds_bucket")
        .map(|s| s.2)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    assert_eq!(
        http_get(server.metrics_port, "/healthz"),
        (200, "ok".into())
    );
    assert_eq!(http_get(server.metrics_port, "/readyz"), (200, "ok".into()));
    assert_eq!(
        http_get(server.metrics_port, "/health"),
        (200, "{\"health\":\"true\",\"reason\":\"\"}".into())
    );
    assert_eq!(http_get(server.metrics_port, "/nope").0, 404);
    drop(watch);
    let log = server.log();
    assert!(log.contains("slow request"), "{log}");
    assert!(!log.contains("supersecret"), "a value reached the log");
}

/// SIGTERM in the middle of a write load: the server stops accepting,
/// finishes what it acknowledged, exits 0, and every acknowledged write
/// is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = K3rs::start(dir.path(), &[]);
    let channel = server.channel().await;
    let mut writers = Vec::new();
    for w in 0..16 {
        let mut kv = KvClient::new(channel.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let key = format!("/term/{w}/{i}");
                match kv.put(put(&key, "v")).await {
                    Ok(r) => acked.push((key, r.into_inner().header.unwrap().revision)),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let server = K3rs::start(dir.path(), &[]);
    let mut kv = server.kv().await;
    support::assert_acked_present(&mut kv, &acked).await;
}

/// Bad input in bulk: silent and slow connections, garbage bytes, broken
/// protobuf, oversized requests. A well-behaved client keeps working
/// through it all and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_input_leaves_good_clients_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = K3rs::start(
        dir.path(),
        &[
            "--handshake-timeout",
            "1s",
            "--grpc-keepalive-interval",
            "1s",
            "--grpc-keepalive-timeout",
            "1s",
        ],
    );
    let port = server.port;
    let channel = server.channel().await;
    let flood_for = Duration::from_secs(4);

    let good = {
        let mut kv = KvClient::new(channel.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut acked = Vec::new();
            let mut slowest = Duration::ZERO;
            while started.elapsed() < flood_for {
                let key = format!("/good/{}", acked.len());
                let t = Instant::now();
                let r = kv.put(put(&key, "v")).await.expect("a good put failed");
                slowest = slowest.max(t.elapsed());
                acked.push((key, r.into_inner().header.unwrap().revision));
            }
            (acked, slowest)
        })
    };

    let silent = tokio::spawn(support::silent_connections(port, 200));
    let slow = tokio::spawn(support::slow_loris(port, 20));
    let garbage = tokio::spawn(support::garbage_connections(port, 200));
    let malformed = tokio::spawn(support::malformed_grpc(channel.clone(), flood_for));

    let (acked, slowest) = good.await.unwrap();
    let closed_silent = silent.await.unwrap();
    let closed_slow = slow.await.unwrap();
    garbage.await.unwrap();
    let answered = malformed.await.unwrap();

    assert_eq!(closed_silent, 200, "silent connections must be closed");
    assert_eq!(closed_slow, 20, "slow-loris connections must be closed");
    assert!(answered > 50, "malformed requests answered: {answered}");
    assert!(acked.len() > 20, "good client made {} puts", acked.len());
    assert!(
        slowest < Duration::from_secs(2),
        "a good put took {slowest:?}"
    );
    let mut kv = server.kv().await;
    support::assert_acked_present(&mut kv, &acked).await;
    let samples = parse_metrics(&http_get(server.metrics_port, "/metrics").1);
    assert!(sample(&samples, "k3rs_handshake_timeouts_total", "") >= 220.0);
    assert!(server.is_running(), "{}", server.log());
}

/// `kubectl` against `server`: `(success, stdout + stderr)`.
fn kubectl(server: &support::K3rsServer, args: &[&str]) -> (bool, String) {
    let out = Command::new("/usr/bin/kubectl")
        .args(args)
        .env("KUBECONFIG", server.kubeconfig())
        .env("HOME", server.data_dir.join("home"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Everything under DATA_DIR is its owner's alone: directories 0700, the
/// database files and the lock 0600, the datastore on a 0600 socket and on
/// no TCP port. The API server works through the socket. A socket left by
/// a killed server does not stop the next start, and an older k3rs's loose
/// modes are tightened; `--listen-address` adds TCP, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_files_are_owner_only_and_its_datastore_is_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let agent_port = support::free_port();
    let agent_flags = [
        "--disable-controllers",
        "--node-name",
        "modes",
        "--node-ip",
        "127.0.0.1",
        "--agent-port",
        &agent_port.to_string(),
    ];
    let mut server = support::K3rsServer::start(&data, &agent_flags);
    let dirs = [
        "",
        "server",
        "server/db",
        "server/tls",
        "server/cred",
        "agent",
        "agent/pods",
    ];
    let files = [
        "server/db/state.db",
        "server/db/state.db-wal",
        "server/db/state.db-shm",
        "server/db/state.db.lock",
        "server/tls/serving.key",
        "server/tls/token",
        "server/cred/admin.kubeconfig",
    ];
    let check_modes = |what: &str| {
        // The agent makes its pods directory once it has joined.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !data.join("agent/pods").exists() {
            assert!(Instant::now() < deadline, "no agent/pods ({what})");
            std::thread::sleep(Duration::from_millis(50));
        }
        for d in dirs {
            assert_eq!(mode(&data.join(d)), 0o700, "{what}: DATA_DIR/{d}");
        }
        for f in files {
            assert_eq!(mode(&data.join(f)), 0o600, "{what}: DATA_DIR/{f}");
        }
    };
    check_modes("a new data directory");
    let socket = server.socket();
    {
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::symlink_metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
    }
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(
        support::listening_tcp_ports(server.pid()),
        vec![
            server.https_port.min(agent_port),
            server.https_port.max(agent_port)
        ],
        "the Kubernetes API and the agent's port only: no etcd port"
    );
    let (ok, out) = kubectl(&server, &["get", "ns", "default", "-o", "name"]);
    assert!(
        ok && out.contains("namespace/default"),
        "{out}\n{}",
        server.log()
    );
    let mut kv = KvClient::new(server.socket_channel().await);
    kv.put(put("/modes/a", "1")).await.unwrap();
    let (ok, out) = kubectl(&server, &["create", "configmap", "through-the-socket"]);
    assert!(ok, "{out}");

    // Killed: its socket stays behind. Then loosen the modes an older k3rs
    // left loose (its keys were 0600 already).
    server.kill();
    assert!(socket.exists());
    for d in dirs {
        set_mode(&data.join(d), 0o755);
    }
    for f in files
        .iter()
        .filter(|f| f.starts_with("server/db/") && data.join(f).exists())
    {
        set_mode(&data.join(f), 0o644);
    }

    let etcd_port = support::free_port();
    let listen = format!("127.0.0.1:{etcd_port}");
    let mut server = support::K3rsServer::start(
        &data,
        &[&agent_flags[..], &["--listen-address", &listen]].concat(),
    );
    check_modes("an older k3rs's modes");
    let log = server.log();
    assert!(log.contains("tightened the mode"), "{log}");
    assert!(
        log.contains(&format!("the etcd API on {listen} takes no credentials"))
            && log.contains("every local user can read and write all cluster state"),
        "{log}"
    );
    assert!(support::listening_tcp_ports(server.pid()).contains(&etcd_port));
    let channel = Channel::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let got = KvClient::new(channel)
        .range(RangeRequest {
            key: "/modes/a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    let (ok, out) = kubectl(
        &server,
        &["get", "configmap", "through-the-socket", "-o", "name"],
    );
    assert!(ok, "{out}\n{}", server.log());
    let status = server.terminate();
    assert!(status.success(), "{}", server.log());
    assert!(!socket.exists(), "a clean stop removes its socket");
}

/// A zero-length or headerless state.db, or a -wal without its database,
/// would open as an empty store: refused, naming the file and what to do,
/// until --init-empty says to start empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_database_is_refused_until_init_empty() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let db = dir.path().join("server/db/state.db");
    let wal = dir.path().join("server/db/state.db-wal");
    let mut server = K3rs::start(dir.path(), &[]);
    let mut kv = server.kv().await;
    for i in 0..100 {
        kv.put(put(&format!("/acked/{i}"), "v")).await.unwrap();
    }
    server.stop();

    std::fs::File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(0)
        .unwrap();
    let https = support::free_port().to_string();
    let server_args = [
        "server",
        "--data-dir",
        data,
        "--disable-agent",
        "--https-listen-port",
        &https,
        "--bind-address",
        "127.0.0.1",
        "--metrics-bind-address",
        "0",
    ];
    let (ok, err) = support::k3rs_to_exit(&server_args);
    assert!(!ok);
    for words in [
        format!("{} is empty (0 bytes)", db.display()),
        "k3rs kine snapshot restore".into(),
        "pass --init-empty".into(),
    ] {
        assert!(err.contains(&words), "{words:?} in: {err}");
    }
    let port = support::free_port().to_string();
    let kine_args = [
        "kine",
        "--data-dir",
        data,
        "--listen-address",
        &format!("127.0.0.1:{port}"),
        "--metrics-bind-address",
        "0",
    ];
    let (ok, err) = support::k3rs_to_exit(&kine_args);
    assert!(!ok && err.contains("is empty (0 bytes)"), "{err}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as it was");

    // Told to, it starts empty; a log that held pages is kept aside.
    let had_wal = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    let mut server = K3rs::start(dir.path(), &["--init-empty"]);
    let mut kv = server.kv().await;
    let all = kv
        .range(RangeRequest {
            key: "/".into(),
            range_end: "0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.count, all.header.unwrap().revision), (0, 1));
    kv.put(put("/new", "v")).await.unwrap();
    server.stop();
    let set_aside = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("state.db-wal.set-aside-")
        })
        .count();
    assert_eq!(set_aside, had_wal as usize);

    // A log without its database.
    std::fs::remove_file(&db).unwrap();
    std::fs::write(&wal, vec![1u8; 4096]).unwrap();
    let (ok, err) = support::k3rs_to_exit(&kine_args);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{} (4096 bytes of write-ahead log) has no database beside it",
            wal.display()
        )) && err.contains("--init-empty"),
        "{err}"
    );
    let (ok, err) = support::k3rs_to_exit(&server_args);
    assert!(!ok && err.contains("has no database beside it"), "{err}");

    // A file without the SQLite header.
    std::fs::remove_file(&wal).unwrap();
    std::fs::write(&db, vec![0u8; 8192]).unwrap();
    let (ok, err) = support::k3rs_to_exit(&kine_args);
    assert!(!ok && err.contains("is not a SQLite database"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), vec![0u8; 8192]);
}
