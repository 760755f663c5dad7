//! Embedded HA: k3rs servers replicating with raft, as separate processes
//! on loopback ports (K3s's `--cluster-init` / `--server` mode), at the
//! default raft settings unless a test says otherwise.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use conformance::linearizability::{Config, K3rsProcess, record_cluster, verify};
use kine::proto::kv_client::KvClient;
use kine::proto::lease_client::LeaseClient;
use kine::proto::maintenance_client::MaintenanceClient;
use kine::proto::watch_client::WatchClient;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    StatusRequest, WatchCreateRequest, WatchRequest,
};
use tonic::transport::Channel;

const TOKEN: &str = "raft-test-token";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_k3rs"))
}

/// One member: its process and its peer URL.
struct Member {
    process: K3rsProcess,
    peer_url: String,
}

impl Member {
    async fn start(name: &str, join: Option<&str>, extra: &[&str]) -> Member {
        Self::start_on(support::free_port(), name, join, extra).await
    }

    /// Like `start`, with the peer port chosen (a member added by its URL).
    async fn start_on(peer_port: u16, name: &str, join: Option<&str>, extra: &[&str]) -> Member {
        let scheme = if extra.contains(&"--peer-cert-file") {
            "https"
        } else {
            "http"
        };
        let peer_url = format!("{scheme}://127.0.0.1:{peer_port}");
        let mut args: Vec<String> = vec![
            "--name".into(),
            name.into(),
            "--token".into(),
            TOKEN.into(),
            "--peer-listen-address".into(),
            format!("127.0.0.1:{peer_port}"),
        ];
        match join {
            None => args.push("--cluster-init".into()),
            Some(url) => args.extend(["--server".into(), url.to_string()]),
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = K3rsProcess::start_with(bin(), args)
            .await
            .unwrap_or_else(|e| panic!("member {name}: {e}"));
        Member { process, peer_url }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.process.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn status(&self) -> Option<(u64, u64)> {
        let mut m = MaintenanceClient::connect(self.process.endpoint())
            .await
            .ok()?;
        let s = m.status(StatusRequest {}).await.ok()?.into_inner();
        Some((s.header?.member_id, s.leader))
    }
}

async fn cluster(n: usize, extra: &[&str]) -> Vec<Member> {
    let first = Member::start("m0", None, extra).await;
    let url = first.peer_url.clone();
    let mut members = vec![first];
    for i in 1..n {
        members.push(Member::start(&format!("m{i}"), Some(&url), extra).await);
    }
    members
}

/// The index of the leader, as the members report it.
async fn leader(members: &[Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut ids = Vec::new();
        let mut leader = 0;
        for m in members {
            let s = m.status().await;
            ids.push(s.map(|s| s.0));
            if let Some((_, l)) = s.filter(|s| s.1 != 0) {
                leader = l;
            }
        }
        if let Some(i) = ids.iter().position(|id| *id == Some(leader)) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A watch on `[key, end)` from revision 1 on `member`, once created.
async fn watch_from_start(
    member: &Member,
    key: &str,
    end: &str,
) -> tonic::Streaming<kine::proto::WatchResponse> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
            start_revision: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    // The request stream stays open as long as the sender lives.
    std::mem::forget(tx);
    let mut watch = WatchClient::new(member.channel().await)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().unwrap().created);
    watch
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> Result<i64, tonic::Status> {
    let r = kv
        .put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().header.unwrap().revision)
}

async fn get(kv: &mut KvClient<Channel>, key: &str, serializable: bool) -> Option<String> {
    let r = kv
        .range(RangeRequest {
            key: key.as_bytes().to_vec().into(),
            serializable,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn etcdctl(endpoints: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .output()
        .expect("etcdctl (apt-get install etcd-client)")
}

/// Members, writes through any member, reads and watches on every member,
/// a lease used across members, and etcdctl's view of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_replicate_and_tell_the_truth() {
    let members = cluster(3, &[]).await;
    let endpoints: Vec<String> = members
        .iter()
        .map(|m| {
            m.process
                .endpoint()
                .trim_start_matches("http://")
                .to_string()
        })
        .collect();
    let all = endpoints.join(",");

    // etcdctl: three started members with their names and URLs, one leader.
    let out = etcdctl(&all, &["member", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert_eq!(list.lines().count(), 3, "{list}");
    for (i, m) in members.iter().enumerate() {
        assert!(
            list.contains(&format!(
                "started, m{i}, {}, {}, false",
                m.peer_url,
                m.process.endpoint()
            )),
            "{list}"
        );
    }
    let out = etcdctl(&all, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leaders: Vec<u64> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "{status}"
    );
    let terms: Vec<u64> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["raftTerm"].as_u64().unwrap())
        .collect();
    assert!(terms.iter().all(|t| *t >= 1), "{status}");

    // A watcher on the last member from the start sees every write, in order.
    let mut watch = watch_from_start(&members[2], "w/", "w0").await;

    // Writes through every member: each readable on every member at once
    // (linearizable), and on the member written through even serializably.
    let mut revisions = Vec::new();
    for i in 0..30 {
        let m = &members[i % 3];
        let mut kv = KvClient::new(m.channel().await);
        let key = format!("w/{i:02}");
        revisions.push(put(&mut kv, &key, &format!("v{i}")).await.unwrap());
        assert_eq!(
            get(&mut kv, &key, true).await.as_deref(),
            Some(format!("v{i}").as_str())
        );
        let mut other = KvClient::new(members[(i + 1) % 3].channel().await);
        assert_eq!(
            get(&mut other, &key, false).await.as_deref(),
            Some(format!("v{i}").as_str())
        );
    }
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "{revisions:?}"
    );
    let mut seen = Vec::new();
    while seen.len() < 30 {
        let r = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the watcher went silent")
            .unwrap()
            .unwrap();
        seen.extend(r.events.into_iter().map(|e| e.kv.unwrap().mod_revision));
    }
    assert_eq!(seen, revisions);

    // A lease granted on one member, kept alive through another, read on a third.
    let mut lease = LeaseClient::new(members[1].channel().await);
    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 3, id: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut kv = KvClient::new(members[2].channel().await);
    kv.put(PutRequest {
        key: b"leased".to_vec().into(),
        value: b"x".to_vec().into(),
        lease: granted.id,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut keeper = LeaseClient::new(members[2].channel().await);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id: granted.id })
            .await
            .unwrap();
        let mut stream = keeper
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().ttl, 3);
    }
    let mut reader = LeaseClient::new(members[0].channel().await);
    let ttl = reader
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: granted.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ttl.granted_ttl, ttl.keys.len()), (3, 1));
    assert!(ttl.ttl > 0, "kept alive: {ttl:?}");
    // Left alone it expires once, everywhere.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for m in &members {
        let mut kv = KvClient::new(m.channel().await);
        assert_eq!(get(&mut kv, "leased", false).await, None);
    }

    // A server with the wrong token cannot join.
    let peer_port = support::free_port();
    let out = std::process::Command::new(bin())
        .args([
            "kine",
            "--listen-address",
            &format!("127.0.0.1:{}", support::free_port()),
        ])
        .args(["--peer-listen-address", &format!("127.0.0.1:{peer_port}")])
        .args(["--metrics-bind-address", "0", "--token", "wrong"])
        .args(["--server", &members[0].peer_url])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("token"), "{stderr}");
}

/// kill -9 of the leader under write load: a new leader takes over, no
/// acknowledged write is lost, the killed member catches up on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_loses_nothing() {
    let mut members = cluster(3, &[]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Instant)>::new()));
    let mut writers = Vec::new();
    for w in 0..6 {
        let endpoint = members[w % 3].process.endpoint();
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(channel) = Channel::from_shared(endpoint.clone())
                    .unwrap()
                    .connect()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut kv = KvClient::new(channel);
                let key = format!("load/{w}/{i:05}");
                match tokio::time::timeout(Duration::from_secs(8), put(&mut kv, &key, "v")).await {
                    Ok(Ok(_)) => {
                        acked.lock().unwrap().push((key, Instant::now()));
                        i += 1;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = leader(&members).await;
    members[victim].process.kill();
    let killed_at = Instant::now();
    // The next acknowledged write after the kill, through a survivor.
    let survivor = (victim + 1) % 3;
    let mut kv = KvClient::new(members[survivor].channel().await);
    let recovered = loop {
        if put(&mut kv, "after-kill", "v").await.is_ok() {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no write accepted within 30 s of the leader's kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("leader kill to the next acknowledged write: {recovered:?}");
    assert!(recovered < Duration::from_secs(10), "took {recovered:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    members[victim].process.restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "too few writes: {}", acked.len());
    // Every acknowledged write is on every member, the restarted one too.
    for m in &members {
        let mut kv = KvClient::new(m.channel().await);
        let all = kv
            .range(RangeRequest {
                key: b"load/".to_vec().into(),
                range_end: b"load0".to_vec().into(),
                keys_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let keys: std::collections::HashSet<Vec<u8>> =
            all.kvs.into_iter().map(|kv| kv.key.to_vec()).collect();
        for (key, _) in &acked {
            assert!(
                keys.contains(key.as_bytes()),
                "{key} lost on {}",
                m.process.endpoint()
            );
        }
    }
}

/// Every member killed at once and restarted: the data and the membership
/// come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_data_and_members() {
    let mut members = cluster(
        3,
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
    )
    .await;
    let mut kv = KvClient::new(members[1].channel().await);
    for i in 0..20 {
        put(&mut kv, &format!("r/{i}"), "v").await.unwrap();
    }
    let before = etcdctl(&members[0].process.endpoint(), &["member", "list"]).stdout;
    for m in members.iter_mut() {
        m.process.kill();
    }
    // Restarted in the other order.
    for m in members.iter_mut().rev() {
        m.process.restart().await.unwrap();
    }
    leader(&members).await;
    for m in &members {
        let mut kv = KvClient::new(m.channel().await);
        assert_eq!(get(&mut kv, "r/19", false).await.as_deref(), Some("v"));
        assert_eq!(get(&mut kv, "r/0", true).await.as_deref(), Some("v"));
    }
    let after = etcdctl(&members[2].process.endpoint(), &["member", "list"]).stdout;
    let sorted = |b: &[u8]| {
        let mut l: Vec<String> = String::from_utf8_lossy(b)
            .lines()
            .map(String::from)
            .collect();
        l.sort();
        l
    };
    assert_eq!(sorted(&before), sorted(&after));
}

/// The last member standing has no quorum: writes and linearizable reads
/// fail with etcd's errors, serializable reads still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_writes_and_linearizable_reads() {
    let mut members = cluster(
        3,
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
    )
    .await;
    let mut kv = KvClient::new(members[0].channel().await);
    put(&mut kv, "m/a", "1").await.unwrap();
    members[1].process.kill();
    members[2].process.kill();
    let err = put(&mut kv, "m/b", "2").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message() == "etcdserver: request timed out"
            || err.message() == "etcdserver: no leader",
        "{err:?}"
    );
    let err = kv
        .range(RangeRequest {
            key: b"m/a".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(get(&mut kv, "m/a", true).await.as_deref(), Some("1"));
    // A quorum back: writes go on.
    members[1].process.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while put(&mut kv, "m/c", "3").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no write after the quorum came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// etcd's membership API under write load: add a member, start it, then
/// remove one; etcdctl's member list follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load() {
    let extra = ["--heartbeat-interval", "50", "--election-timeout", "500"];
    let mut members = cluster(3, &extra).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, endpoint) = (stop.clone(), members[0].process.endpoint());
        tokio::spawn(async move {
            let mut kv = KvClient::new(
                Channel::from_shared(endpoint)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if put(&mut kv, &format!("mc/{i:05}"), "v").await.is_ok() {
                    acked.push(i);
                }
                i += 1;
            }
            acked
        })
    };
    let endpoint = members[0].process.endpoint();
    let peer_port = support::free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let out = etcdctl(
        &endpoint,
        &["member", "add", "m3", &format!("--peer-urls={peer_url}")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(added.contains("added to cluster"), "{added}");
    // The added member starts with the peer URL it was added with.
    let fourth = Member::start_on(peer_port, "m3", Some(&members[1].peer_url), &extra)
        .await
        .process;
    let out = etcdctl(&endpoint, &["member", "list"]);
    let list = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(
        list.contains(&format!(
            "started, m3, {peer_url}, {}, false",
            fourth.endpoint()
        )),
        "{list}"
    );
    // Remove one of the first three (not the one the writer uses).
    let id = list
        .lines()
        .find(|l| l.contains(", m2, "))
        .and_then(|l| l.split(", ").next())
        .unwrap()
        .to_string();
    let out = etcdctl(&endpoint, &["member", "remove", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&etcdctl(&endpoint, &["member", "list"]).stdout).to_string();
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains(", m2, "), "{list}");
    let out = etcdctl(&endpoint, &["member", "remove", &id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("member not found"));
    members[2].process.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    let mut kv = KvClient::new(
        Channel::from_shared(fourth.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for i in acked {
        assert_eq!(
            get(&mut kv, &format!("mc/{i:05}"), false).await.as_deref(),
            Some("v"),
            "mc/{i:05}"
        );
    }
}

/// The linearizability checker's workload spread over three members, with
/// the leader killed and restarted twice during the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_through_leader_kills() {
    let members = cluster(
        3,
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
    )
    .await;
    let endpoints: Vec<String> = members.iter().map(|m| m.process.endpoint()).collect();
    let cfg = Config {
        duration: Duration::from_secs(10),
        clients: 6,
        watchers: 3,
        ..Default::default()
    };
    let logs: Vec<PathBuf> = members.iter().map(|m| m.process.log_path()).collect();
    let members = std::sync::Arc::new(tokio::sync::Mutex::new(members));
    let faults = {
        let members = members.clone();
        async move {
            let mut kills = 0;
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                let mut members = members.lock().await;
                let victim = leader(&members).await;
                members[victim].process.kill();
                kills += 1;
                tokio::time::sleep(Duration::from_millis(1000)).await;
                members[victim]
                    .process
                    .restart()
                    .await
                    .expect("restarting a killed member");
            }
            kills
        }
    };
    let rec = record_cluster(endpoints, &cfg, faults).await;
    let report = verify("k3rs-raft-three-members", &rec, Duration::from_secs(60));
    println!("{}", report.summary());
    assert_eq!(report.kills, 2);
    assert!(report.ops > 300, "too few ops: {}", report.summary());
    if !report.passed() {
        for (i, log) in logs.iter().enumerate() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            println!("--- member {i}'s log, last lines:");
            tail.iter().rev().for_each(|l| println!("{l}"));
        }
    }
    assert!(report.passed(), "{}", report.summary());
}

/// With snapshots every 100 entries: a member that was down while the log
/// moved on, and a member that joins later, catch up from the leader's
/// snapshot; every member ends with the same history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_and_new_members_catch_up_from_snapshots() {
    let extra = [
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
        "--snapshot-count",
        "100",
    ];
    let mut members = cluster(3, &extra).await;
    let mut kv = KvClient::new(members[0].channel().await);
    put(&mut kv, "s/000", "v").await.unwrap();
    members[2].process.kill();
    for i in 1..600 {
        put(&mut kv, &format!("s/{i:03}"), "v").await.unwrap();
    }
    members[2].process.restart().await.unwrap();
    let mut lagging = KvClient::new(members[2].channel().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&mut lagging, "s/599", true).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new member joins after the log was purged.
    let fourth = Member::start("m3", Some(&members[1].peer_url), &extra)
        .await
        .process;
    let mut late = KvClient::new(
        Channel::from_shared(fourth.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    assert_eq!(get(&mut late, "s/599", false).await.as_deref(), Some("v"));
    // A watcher on the restarted member replays the whole history in order.
    let mut watch = watch_from_start(&members[2], "s/", "s0").await;
    let mut keys = Vec::new();
    while keys.len() < 600 {
        let r = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the watcher went silent")
            .unwrap()
            .unwrap();
        keys.extend(
            r.events
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.kv.unwrap().key).into_owned()),
        );
    }
    let want: Vec<String> = (0..600).map(|i| format!("s/{i:03}")).collect();
    assert_eq!(keys, want);
    // Every member holds the same history.
    let mut hashes = Vec::new();
    for endpoint in members
        .iter()
        .map(|m| m.process.endpoint())
        .chain([fourth.endpoint()])
    {
        let mut m = MaintenanceClient::connect(endpoint).await.unwrap();
        let h = m
            .hash_kv(kine::proto::HashKvRequest { revision: 0 })
            .await
            .unwrap()
            .into_inner();
        hashes.push((h.hash, h.header.unwrap().revision));
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let leader_log = members.iter().map(|m| m.process.log()).collect::<String>();
    assert!(
        leader_log.contains("built a snapshot"),
        "no snapshot was built"
    );
    assert!(
        members[2]
            .process
            .log()
            .contains("installed the leader's snapshot")
    );
    assert!(
        std::fs::read_to_string(fourth.log_path())
            .unwrap()
            .contains("installed the leader's snapshot")
    );
}

/// A member whose log ends in a corrupt entry refuses to start, saying
/// which file and index; the other two go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_tail_stops_that_member_only() {
    let mut members = cluster(
        3,
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
    )
    .await;
    let mut kv = KvClient::new(members[0].channel().await);
    for i in 0..20 {
        put(&mut kv, &format!("c/{i}"), "v").await.unwrap();
    }
    members[2].process.kill();
    let dir = members[2]
        .process
        .log_path()
        .parent()
        .unwrap()
        .to_path_buf();
    let log = rusqlite::Connection::open(dir.join("server/db/raft.db")).unwrap();
    log.execute(
        "UPDATE log SET entry = x'ff00ff' WHERE idx = (SELECT max(idx) FROM log)",
        [],
    )
    .unwrap();
    drop(log);
    let refused = members[2].process.restart().await;
    assert!(refused.is_err(), "started on a corrupt log");
    let said = members[2].process.log();
    assert!(said.contains("the raft log is corrupt at index"), "{said}");
    for i in 20..30 {
        put(&mut kv, &format!("c/{i}"), "v").await.unwrap();
    }
    let mut other = KvClient::new(members[1].channel().await);
    assert_eq!(get(&mut other, "c/29", false).await.as_deref(), Some("v"));
}

/// Members over mutual TLS (etcd's peer flags, certificates from `k3rs
/// certs generate`): they replicate; a server whose peer certificate
/// another CA signed cannot join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_over_mutual_tls() {
    let certs = tempfile::tempdir().unwrap();
    let generate = |dir: &std::path::Path| {
        let out = std::process::Command::new(bin())
            .args(["certs", "generate", "--dir"])
            .arg(dir)
            .args(["--hosts", "127.0.0.1,localhost"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    generate(certs.path());
    let file = |name: &str| certs.path().join(name).to_string_lossy().into_owned();
    let (crt, key, ca) = (file("peer.crt"), file("peer.key"), file("ca.crt"));
    let extra = [
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
        "--peer-cert-file",
        crt.as_str(),
        "--peer-key-file",
        key.as_str(),
        "--peer-trusted-ca-file",
        ca.as_str(),
    ];
    let members = cluster(3, &extra).await;
    assert!(members[0].peer_url.starts_with("https://"));
    let mut kv = KvClient::new(members[1].channel().await);
    put(&mut kv, "tls/a", "1").await.unwrap();
    let mut other = KvClient::new(members[2].channel().await);
    assert_eq!(get(&mut other, "tls/a", false).await.as_deref(), Some("1"));
    let list = String::from_utf8_lossy(
        &etcdctl(&members[0].process.endpoint(), &["member", "list"]).stdout,
    )
    .to_string();
    assert_eq!(list.matches("https://127.0.0.1:").count(), 3, "{list}");

    let stranger = tempfile::tempdir().unwrap();
    generate(stranger.path());
    let sfile = |name: &str| stranger.path().join(name).to_string_lossy().into_owned();
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg(bin())
        .args([
            "kine",
            "--listen-address",
            &format!("127.0.0.1:{}", support::free_port()),
        ])
        .args([
            "--peer-listen-address",
            &format!("127.0.0.1:{}", support::free_port()),
        ])
        .args(["--metrics-bind-address", "0", "--token", TOKEN])
        .args([
            "--peer-cert-file",
            &sfile("peer.crt"),
            "--peer-key-file",
            &sfile("peer.key"),
        ])
        .args(["--peer-trusted-ca-file", &sfile("ca.crt")])
        .args(["--server", &members[0].peer_url])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a stranger joined");
    assert_eq!(
        String::from_utf8_lossy(
            &etcdctl(&members[0].process.endpoint(), &["member", "list"]).stdout
        )
        .lines()
        .count(),
        3
    );
}

/// A member whose disk fills stops with a clear error; the other two go on
/// accepting writes. (Its data directory is a small tmpfs: needs root.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_that_member_only() {
    let small = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(small.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("skipped: mounting a small tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(small.path().to_path_buf());
    let fast = ["--heartbeat-interval", "50", "--election-timeout", "500"];
    let first = Member::start("m0", None, &fast).await;
    let url = first.peer_url.clone();
    let second = Member::start("m1", Some(&url), &fast).await;
    let endpoint = format!("sqlite://{}/state.db", small.path().display());
    let mut extra: Vec<&str> = fast.to_vec();
    extra.extend(["--endpoint", endpoint.as_str()]);
    let mut third = Member::start("m2", Some(&url), &extra).await;
    let mut kv = KvClient::new(first.channel().await);
    let value = "x".repeat(512 * 1024);
    for i in 0..40 {
        put(&mut kv, &format!("full/{i}"), &value).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !third.process.exited() {
        assert!(
            Instant::now() < deadline,
            "the member with a full disk kept running: {}",
            third.process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = third.process.log();
    assert!(said.contains("this cluster member stopped"), "{said}");
    put(&mut kv, "full/after", "v").await.unwrap();
    let mut other = KvClient::new(second.channel().await);
    assert_eq!(
        get(&mut other, "full/after", false).await.as_deref(),
        Some("v")
    );
}
