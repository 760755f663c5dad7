//! Several k3rs servers on one PostgreSQL or MariaDB database: K3s's
//! external-datastore HA mode. Every test runs three servers as processes
//! on a database of its own, on each database.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use conformance::linearizability::{Config, K3rsProcess, record_cluster, verify};
use conformance::target::TestDatabase;
use kine::proto::compare::{CompareResult, CompareTarget, TargetUnion};
use kine::proto::kv_client::KvClient;
use kine::proto::lease_client::LeaseClient;
use kine::proto::request_op::Request;
use kine::proto::watch_client::WatchClient;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use support::K3rs;
use tonic::Streaming;
use tonic::transport::Channel;

fn start(dir: &Path, db: &TestDatabase, n: usize) -> Vec<K3rs> {
    (0..n)
        .map(|i| K3rs::start(&dir.join(format!("s{i}")), &["--endpoint", &db.dsn]))
        .collect()
}

async fn channels(servers: &[K3rs]) -> Vec<Channel> {
    let mut out = Vec::new();
    for s in servers {
        out.push(s.channel().await);
    }
    out
}

/// A watch on `prefix` from `start_revision`.
async fn watch(channel: &Channel, prefix: &str, start_revision: i64) -> Streaming<WatchResponse> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: end.into(),
            start_revision,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    // The request stream stays open as long as the sender lives.
    std::mem::forget(tx);
    let mut stream = WatchClient::new(channel.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    stream
}

/// `(revision, key, is_delete)` of every event until revision `last`.
async fn events_until(
    stream: &mut Streaming<WatchResponse>,
    last: i64,
) -> Vec<(i64, String, bool)> {
    let mut seen: Vec<(i64, String, bool)> = Vec::new();
    while seen.last().map_or(0, |e| e.0) < last {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a watcher went silent")
            .unwrap()
            .unwrap();
        for e in resp.events {
            let kv = e.kv.unwrap();
            seen.push((
                kv.mod_revision,
                String::from_utf8(kv.key.to_vec()).unwrap(),
                e.r#type == 1,
            ));
        }
    }
    seen
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_servers_see_every_write_once_in_order() {
    three_servers_see_every_write_once_in_order(TestDatabase::create().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_three_servers_see_every_write_once_in_order() {
    three_servers_see_every_write_once_in_order(TestDatabase::create_mysql().await.unwrap()).await;
}

/// Writers on all three servers at once, a watcher on each from revision 1:
/// acknowledged revisions are unique, every watcher gets every revision
/// exactly once and in order with the key that was written there, and
/// every server reads every acknowledged write.
async fn three_servers_see_every_write_once_in_order(db: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let servers = start(dir.path(), &db, 3);
    let channels = channels(&servers).await;
    let mut watchers = Vec::new();
    for c in &channels {
        watchers.push(watch(c, "/ha/", 1).await);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut writers = Vec::new();
    for (s, channel) in channels.iter().enumerate() {
        for w in 0..4 {
            let mut kv = KvClient::new(channel.clone());
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    i += 1;
                    let key = format!("/ha/{s}/{w}/{i}");
                    let r = kv.put(put(&key, "v")).await.unwrap();
                    acked.push((key, r.into_inner().header.unwrap().revision));
                }
                acked
            }));
        }
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 100, "only {} puts acknowledged", acked.len());
    let by_revision: HashMap<i64, String> = acked.iter().map(|(k, r)| (*r, k.clone())).collect();
    assert_eq!(
        by_revision.len(),
        acked.len(),
        "two writes got one revision"
    );
    let last = *by_revision.keys().max().unwrap();
    let expected: Vec<(i64, String, bool)> = (2..=last)
        .map(|r| (r, by_revision[&r].clone(), false))
        .collect();
    for (i, w) in watchers.iter_mut().enumerate() {
        let seen = events_until(w, last).await;
        assert!(
            seen == expected,
            "server {i}'s watcher: events lost, repeated or out of order ({} seen, {} expected)",
            seen.len(),
            expected.len()
        );
    }
    for c in &channels {
        support::assert_acked_present(&mut KvClient::new(c.clone()), &acked).await;
    }

    // Cross-server watch latency (reported, not asserted): a put on one
    // server until the watcher on another has it.
    let mut kv = KvClient::new(channels[0].clone());
    let mut latencies = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        let rev = kv
            .put(put(&format!("/ha/latency/{i}"), "v"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        events_until(&mut watchers[1], rev).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "put on one server to event on another: p50 {:?}, p99 {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_compare_and_swap_is_linearizable_across_servers() {
    compare_and_swap_is_linearizable_across_servers(TestDatabase::create().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_compare_and_swap_is_linearizable_across_servers() {
    compare_and_swap_is_linearizable_across_servers(TestDatabase::create_mysql().await.unwrap())
        .await;
}

/// Three clients on each of three servers increment one counter by
/// compare-and-swap on its mod revision: no increment is lost, so the
/// final value is the number of successful swaps.
async fn compare_and_swap_is_linearizable_across_servers(db: TestDatabase) {
    const PER_CLIENT: u64 = 15;
    let dir = tempfile::tempdir().unwrap();
    let servers = start(dir.path(), &db, 3);
    let channels = channels(&servers).await;
    KvClient::new(channels[0].clone())
        .put(put("/ha/counter", "0"))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for channel in &channels {
        for _ in 0..3 {
            let mut kv = KvClient::new(channel.clone());
            clients.push(tokio::spawn(async move {
                let mut done = 0;
                while done < PER_CLIENT {
                    let got = kv
                        .range(RangeRequest {
                            key: "/ha/counter".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let kv0 = &got.kvs[0];
                    let n: u64 = std::str::from_utf8(&kv0.value).unwrap().parse().unwrap();
                    let swapped = kv
                        .txn(TxnRequest {
                            compare: vec![Compare {
                                result: CompareResult::Equal as i32,
                                target: CompareTarget::Mod as i32,
                                key: "/ha/counter".into(),
                                target_union: Some(TargetUnion::ModRevision(kv0.mod_revision)),
                                ..Default::default()
                            }],
                            success: vec![RequestOp {
                                request: Some(Request::RequestPut(put(
                                    "/ha/counter",
                                    &(n + 1).to_string(),
                                ))),
                            }],
                            failure: vec![],
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .succeeded;
                    done += swapped as u64;
                }
            }));
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    for channel in &channels {
        let got = KvClient::new(channel.clone())
            .range(RangeRequest {
                key: "/ha/counter".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.kvs[0].value, (9 * PER_CLIENT).to_string().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lease_kept_alive_anywhere_expires_once() {
    a_lease_kept_alive_anywhere_expires_once(TestDatabase::create().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_lease_kept_alive_anywhere_expires_once() {
    a_lease_kept_alive_anywhere_expires_once(TestDatabase::create_mysql().await.unwrap()).await;
}

/// A lease granted on one server and kept alive through another outlives
/// its TTL on all three; once the keep-alives stop it expires, and its key
/// is deleted exactly once, cluster-wide.
async fn a_lease_kept_alive_anywhere_expires_once(db: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let servers = start(dir.path(), &db, 3);
    let channels = channels(&servers).await;
    let mut watcher = watch(&channels[2], "/ha/", 0).await;
    let id = LeaseClient::new(channels[0].clone())
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut kv = KvClient::new(channels[0].clone());
    let put_rev = kv
        .put(PutRequest {
            lease: id,
            ..put("/ha/leased", "v")
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut keepalive = LeaseClient::new(channels[1].clone())
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
        let resp = keepalive.message().await.unwrap().unwrap();
        assert_eq!(resp.ttl, 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for channel in &channels {
        let got = KvClient::new(channel.clone())
            .range(RangeRequest {
                key: "/ha/leased".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.count, 1, "the lease expired while kept alive elsewhere");
    }
    drop(tx);

    let seen = events_until(&mut watcher, put_rev + 1).await;
    assert_eq!(
        seen,
        vec![
            (put_rev, "/ha/leased".to_string(), false),
            (put_rev + 1, "/ha/leased".to_string(), true)
        ]
    );
    // No second expiry from another server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kv.put(put("/ha/after", "v")).await.unwrap();
    let after = events_until(&mut watcher, put_rev + 2).await;
    assert_eq!(after, vec![(put_rev + 2, "/ha/after".to_string(), false)]);
    for channel in &channels {
        let ttl = LeaseClient::new(channel.clone())
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
            .await
            .unwrap()
            .into_inner()
            .ttl;
        assert_eq!(ttl, -1, "the lease lives on on some server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_server_killed_leaves_the_others_going() {
    a_server_killed_leaves_the_others_going(TestDatabase::create().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_server_killed_leaves_the_others_going() {
    a_server_killed_leaves_the_others_going(TestDatabase::create_mysql().await.unwrap()).await;
}

/// kill -9 of one of three servers while all are written to: the other two
/// keep acknowledging writes, nothing acknowledged anywhere is lost, and the
/// killed server, restarted, has every write.
async fn a_server_killed_leaves_the_others_going(db: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = start(dir.path(), &db, 3);
    let channels = channels(&servers).await;
    let killed_at = Instant::now() + Duration::from_millis(800);
    let deadline = killed_at + Duration::from_millis(1200);
    let mut writers = Vec::new();
    for (s, channel) in channels.iter().enumerate() {
        for w in 0..3 {
            let mut kv = KvClient::new(channel.clone());
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    i += 1;
                    let key = format!("/ha/{s}/{w}/{i}");
                    match kv.put(put(&key, "v")).await {
                        Ok(r) => acked.push((
                            key,
                            r.into_inner().header.unwrap().revision,
                            Instant::now(),
                        )),
                        Err(_) if s == 0 => break,
                        Err(e) => panic!("server {s} failed a write: {e}"),
                    }
                }
                acked
            }));
        }
    }
    tokio::time::sleep_until(killed_at.into()).await;
    drop(servers.remove(0)); // SIGKILL
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let after_kill = acked
        .iter()
        .filter(|a| a.2 > killed_at + Duration::from_millis(100))
        .count();
    assert!(
        after_kill > 20,
        "only {after_kill} writes acknowledged after the kill"
    );
    let acked: Vec<(String, i64)> = acked.into_iter().map(|(k, r, _)| (k, r)).collect();
    let restarted = K3rs::start(&dir.path().join("s0"), &["--endpoint", &db.dsn]);
    for s in servers.iter().chain([&restarted]) {
        support::assert_acked_present(&mut s.kv().await, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cluster_is_linearizable_through_kills_and_cuts() {
    cluster_is_linearizable_through_kills_and_cuts(TestDatabase::create().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_cluster_is_linearizable_through_kills_and_cuts() {
    cluster_is_linearizable_through_kills_and_cuts(TestDatabase::create_mysql().await.unwrap())
        .await;
}

/// The linearizability checker's workload spread over three servers, with
/// one server killed and restarted and every database connection cut
/// (as a database restart does) during the run.
async fn cluster_is_linearizable_through_kills_and_cuts(db: TestDatabase) {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_k3rs"));
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(
            K3rsProcess::start_with(bin.clone(), vec!["--endpoint".into(), db.dsn.clone()])
                .await
                .unwrap(),
        );
    }
    let endpoints: Vec<String> = servers.iter().map(|s| s.endpoint()).collect();
    let cfg = Config {
        duration: Duration::from_secs(8),
        clients: 6,
        watchers: 3,
        ..Default::default()
    };
    let db = std::sync::Arc::new(db);
    let cut = db.clone();
    let logs: Vec<std::path::PathBuf> = servers.iter().map(|s| s.log_path()).collect();
    let victim = std::sync::Arc::new(tokio::sync::Mutex::new(servers.remove(1)));
    let killed = victim.clone();
    let faults = async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut victim = killed.lock().await;
        victim.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        victim.restart().await.expect("restarting a killed server");
        tokio::time::sleep(Duration::from_millis(2000)).await;
        tokio::task::spawn_blocking(move || cut.drop_connections())
            .await
            .unwrap();
        victim.kills
    };
    let rec = record_cluster(endpoints, &cfg, faults).await;
    let report = verify("k3rs-three-servers", &rec, Duration::from_secs(60));
    println!("{}", report.summary());
    assert_eq!(report.kills, 1);
    assert!(report.ops > 500, "too few ops: {}", report.summary());
    if !report.passed() {
        for (i, log) in logs.iter().enumerate() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            println!("--- server {i}'s log, last lines:");
            tail.iter().rev().for_each(|l| println!("{l}"));
        }
    }
    assert!(report.passed(), "{}", report.summary());
    drop((servers, victim));
}
