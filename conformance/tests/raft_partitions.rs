//! A three-member k3rs raft cluster in this process, with links between
//! members cut or slowed by the peer transport's injected faults.

use std::time::{Duration, Instant};

use conformance::linearizability::{Config, record_cluster, verify};
use conformance::target::RaftClusterTarget;
use kine::proto::kv_client::KvClient;
use kine::proto::{PutRequest, RangeRequest};
use tonic::transport::Channel;

async fn kv(endpoint: &str) -> KvClient<Channel> {
    KvClient::new(
        Channel::from_shared(endpoint.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
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

async fn get(kv: &mut KvClient<Channel>, key: &str) -> Result<Option<String>, tonic::Status> {
    let r = kv
        .range(RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

fn is_etcd_unavailable(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::Unavailable
        && (e.message() == "etcdserver: request timed out"
            || e.message() == "etcdserver: no leader")
}

/// The leader cut off from the majority: it refuses linearizable reads and
/// writes with etcd's errors, the majority elects another leader and goes
/// on, and once the links are back the old leader follows and has it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_serve_and_the_majority_goes_on() {
    let cluster = RaftClusterTarget::start_with(50, 500).await.unwrap();
    let endpoints = cluster.endpoints();
    let old = cluster.leader().expect("a leader");
    let mut on_old = kv(&endpoints[old]).await;
    put(&mut on_old, "p/before", "1").await.unwrap();
    cluster.isolate(old);

    let err = put(&mut on_old, "p/minority", "x").await.unwrap_err();
    assert!(is_etcd_unavailable(&err), "{err:?}");
    let err = get(&mut on_old, "p/before").await.unwrap_err();
    assert!(is_etcd_unavailable(&err), "{err:?}");

    let other = (old + 1) % 3;
    let mut on_other = kv(&endpoints[other]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let rev = loop {
        match put(&mut on_other, "p/majority", "y").await {
            Ok(rev) => break rev,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the majority accepted no write: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let leaders = cluster.leaders();
    assert!(
        leaders.iter().any(|&l| l != old),
        "no leader in the majority: {leaders:?}"
    );
    // Only one side accepts writes: the old leader still refuses.
    let err = put(&mut on_old, "p/minority", "x").await.unwrap_err();
    assert!(is_etcd_unavailable(&err), "{err:?}");

    cluster.heal();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get(&mut on_old, "p/majority").await {
            Ok(Some(v)) => {
                assert_eq!(v, "y");
                break;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the old leader did not catch up: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(get(&mut on_old, "p/minority").await.unwrap(), None);
    let after = put(&mut on_old, "p/after", "z").await.unwrap();
    assert!(after > rev);
}

/// The linearizability checker's workload over the three members while the
/// leader is cut off twice and one link is slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_through_partitions() {
    let cluster = std::sync::Arc::new(RaftClusterTarget::start_with(50, 500).await.unwrap());
    let cfg = Config {
        duration: Duration::from_secs(10),
        clients: 6,
        watchers: 3,
        ..Default::default()
    };
    let faults = {
        let cluster = cluster.clone();
        async move {
            cluster.delay(0, 1, Duration::from_millis(20));
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(2000)).await;
                if let Some(leader) = cluster.leader() {
                    cluster.isolate(leader);
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
                cluster.heal();
                cluster.delay(0, 1, Duration::from_millis(20));
            }
            cluster.heal();
            0
        }
    };
    let rec = record_cluster(cluster.endpoints(), &cfg, faults).await;
    let report = verify("k3rs-raft-partitions", &rec, Duration::from_secs(60));
    println!("{}", report.summary());
    assert!(report.ops > 300, "too few ops: {}", report.summary());
    assert!(report.passed(), "{}", report.summary());
}
