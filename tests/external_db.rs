//! k3rs on PostgreSQL and on MariaDB as a process: faults of the database
//! and of k3rs, and the errors a user sees. Each test gets a database of
//! its own.

mod support;

use std::process::Command;
use std::time::Duration;

use conformance::target::{TestDatabase, postgres_admin_dsn};
use kine::proto::kv_client::KvClient;
use kine::proto::watch_client::WatchClient;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{PutRequest, WatchCreateRequest, WatchRequest};
use support::K3rs;
use tonic::transport::Channel;

/// Ends every connection k3rs has to `db`, as a database restart would.
fn drop_connections(db: &TestDatabase) {
    db.drop_connections();
}

fn start(dir: &std::path::Path, db: &TestDatabase) -> K3rs {
    K3rs::start(dir, &["--endpoint", &db.dsn])
}

/// Puts unique keys from 8 clients until told to stop; returns what was
/// acknowledged, with revisions. With `server_stays`, every failure must
/// be a clean Unavailable (the database's fault, not the server's).
fn writers(
    channel: &Channel,
    stop: &tokio::sync::watch::Receiver<bool>,
    server_stays: bool,
) -> Vec<tokio::task::JoinHandle<Vec<(String, i64)>>> {
    (0..8)
        .map(|w| {
            let mut kv = KvClient::new(channel.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !*stop.borrow() {
                    i += 1;
                    let key = format!("/pg/{w}/{i}");
                    let put = PutRequest {
                        key: key.clone().into(),
                        value: "v".into(),
                        ..Default::default()
                    };
                    match kv.put(put).await {
                        Ok(r) => acked.push((key, r.into_inner().header.unwrap().revision)),
                        Err(s) => {
                            if server_stays {
                                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_cut_under_load() {
    connections_cut_under_load(TestDatabase::create().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connections_cut_under_load() {
    connections_cut_under_load(TestDatabase::create_mysql().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_writes_survive_kill_9() {
    acknowledged_writes_survive_kill_9(TestDatabase::create().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_acknowledged_writes_survive_kill_9() {
    acknowledged_writes_survive_kill_9(TestDatabase::create_mysql().await.unwrap()).await;
}

/// Connections to the database cut twice under write load: writes in
/// flight fail with Unavailable, k3rs reconnects by itself, nothing
/// acknowledged is lost, and a watcher sees every revision once, in order.
async fn connections_cut_under_load(db: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &db);
    let channel = server.channel().await;

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "/pg/".into(),
            range_end: "/pg0".into(),
            start_revision: 1,
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

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = writers(&channel, &stop, true);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop_connections(&db);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop_tx.send(true).unwrap();
    let mut acked = Vec::new();
    for w in running {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 50, "only {} puts acknowledged", acked.len());
    let last = acked.iter().map(|a| a.1).max().unwrap();

    let mut kv = KvClient::new(channel.clone());
    support::assert_acked_present(&mut kv, &acked).await;

    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < last {
        let resp = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the watcher went silent")
            .unwrap()
            .unwrap();
        seen.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    // Every write here is a put of one key: one event per revision.
    let expected: Vec<i64> = (2..=last).collect();
    assert_eq!(
        seen, expected,
        "watch events lost, repeated or out of order"
    );
    drop(server);
}

/// kill -9 of k3rs under write load, then a restart on the same database:
/// every acknowledged write is there and revisions go on.
async fn acknowledged_writes_survive_kill_9(db: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &db);
    let channel = server.channel().await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = writers(&channel, &stop, false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(server); // SIGKILL
    stop_tx.send(true).unwrap();
    let mut acked = Vec::new();
    for w in running {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 50, "only {} puts acknowledged", acked.len());
    let server = start(dir.path(), &db);
    let mut kv = server.kv().await;
    let reply = kv
        .put(PutRequest {
            key: "/pg/after".into(),
            value: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let after = reply.header.unwrap().revision;
    support::assert_acked_present(&mut kv, &acked).await;
    assert!(acked.iter().all(|(_, revision)| after > *revision));
}

fn run_to_exit(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_k3rs"))
        .env("K3RS_CONTAINER_RUNTIME", "process")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wrong credentials are refused with an error that says so; a database
/// that does not exist yet is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let (base, _) = db.dsn.rsplit_once('/').unwrap();
    let stranger = base.replacen("postgres://postgres@", "postgres://nobody_k3rs@", 1);
    let (ok, stderr) = run_to_exit(&[
        "kine",
        "--endpoint",
        &format!("{stranger}/postgres"),
        "--listen-address",
        "127.0.0.1:0",
        "--metrics-bind-address",
        "0",
    ]);
    assert!(!ok);
    assert!(stderr.contains("wrong user or password"), "{stderr}");

    // A fresh name: k3rs creates the database (cleaned up by the guard).
    let fresh = TestDatabase::create().await.unwrap();
    drop_database_keep_guard(&fresh);
    let server = start(&dir.path().join("b"), &fresh);
    let mut kv = server.kv().await;
    kv.put(PutRequest {
        key: "a".into(),
        value: "b".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        server.log().contains("created the database"),
        "{}",
        server.log()
    );
}

/// A commit the database refuses fails every request whose answer
/// depended on it: a revoke of a lease without keys (it writes no log row,
/// only the lease's) and a read that saw an earlier write of the same
/// batch, not only the writes. The refused changes stay undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_refused_commit_fails_every_answer_that_depended_on_it() {
    use kine::proto::lease_client::LeaseClient;
    use kine::proto::{
        Compare, LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, TxnRequest, compare,
    };
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let server = start(dir.path(), &db);
    let channel = server.channel().await;
    let mut leases = LeaseClient::new(channel.clone());
    let grant = LeaseGrantRequest { ttl: 60, id: 0 };
    let id = leases.lease_grant(grant).await.unwrap().into_inner().id;
    let mut kv = KvClient::new(channel.clone());
    let revision = kv
        .put(put("/refused/base"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    run_sql(
        &db.dsn,
        "CREATE FUNCTION k3rs_test_refuse() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER k3rs_test_refuse BEFORE INSERT OR UPDATE ON k3rs_leases
             FOR EACH ROW EXECUTE FUNCTION k3rs_test_refuse();
         CREATE TRIGGER k3rs_test_refuse BEFORE INSERT ON k3rs_log
             FOR EACH ROW EXECUTE FUNCTION k3rs_test_refuse()",
    );
    let refused = leases.lease_revoke(LeaseRevokeRequest { id }).await;
    assert!(
        refused.is_err(),
        "a revoke whose commit failed succeeded: {refused:?}"
    );
    // Puts and read-only txns at once, so that they share batches: every
    // put fails, and no read may report a revision that never committed.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let mut kv = KvClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                kv.put(put(&format!("/refused/{i}"))).await.err().map(|_| 0)
            } else {
                let never = Compare {
                    key: "/refused/base".into(),
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Version as i32,
                    target_union: Some(compare::TargetUnion::Version(99)),
                    ..Default::default()
                };
                let txn = TxnRequest {
                    compare: vec![never],
                    ..Default::default()
                };
                kv.txn(txn)
                    .await
                    .ok()
                    .map(|r| r.into_inner().header.unwrap().revision)
            }
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        match (i % 2, task.await.unwrap()) {
            (0, outcome) => assert_eq!(outcome, Some(0), "put {i} succeeded"),
            (_, Some(seen)) => assert_eq!(seen, revision, "txn {i} saw an uncommitted write"),
            (_, None) => {}
        }
    }
    run_sql(
        &db.dsn,
        "DROP TRIGGER k3rs_test_refuse ON k3rs_leases; DROP TRIGGER k3rs_test_refuse ON k3rs_log",
    );
    let alive = LeaseTimeToLiveRequest { id, keys: false };
    let ttl = leases
        .lease_time_to_live(alive)
        .await
        .unwrap()
        .into_inner()
        .ttl;
    assert!(
        ttl > 0,
        "the lease is gone after a refused revoke (ttl {ttl})"
    );
    leases
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap();
    let after = kv.put(put("/refused/after")).await.unwrap().into_inner();
    assert_eq!(
        after.header.unwrap().revision,
        revision + 1,
        "a refused write kept its revision"
    );
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.to_string().into(),
        value: "v".into(),
        ..Default::default()
    }
}

/// Runs `sql` on a PostgreSQL database (off the async threads).
fn run_sql(dsn: &str, sql: &str) {
    let (dsn, sql) = (dsn.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
        c.batch_execute(&sql).unwrap();
    })
    .join()
    .unwrap();
}

/// Drops the guard's database so k3rs has to create it; the guard drops
/// it again at the end.
fn drop_database_keep_guard(db: &TestDatabase) {
    let name = db.dsn.rsplit('/').next().unwrap();
    run_sql(&postgres_admin_dsn(), &format!("DROP DATABASE {name}"));
}

/// TLS to PostgreSQL (the test server's own self-signed certificate):
/// `sslmode=require` encrypts; `verify-ca` with that certificate as the CA
/// accepts it; `verify-full` refuses it, since it does not name 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls() {
    const SERVER_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let name = db.dsn.rsplit('/').next().unwrap().to_string();
    let encrypted = |name: String| {
        let admin = postgres_admin_dsn();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
            c.query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = $1 AND a.application_name = 'k3rs'",
                &[&name],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, bool>(0))
            .collect::<Vec<bool>>()
        })
        .join()
        .unwrap()
    };

    let require = format!("{}?sslmode=require", db.dsn);
    let server = K3rs::start(&dir.path().join("a"), &["--endpoint", &require]);
    server
        .kv()
        .await
        .put(PutRequest {
            key: "a".into(),
            value: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ssl = encrypted(name.clone());
    assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{ssl:?}");
    drop(server);

    let verify_ca = format!("{}?sslmode=verify-ca", db.dsn);
    let server = K3rs::start(
        &dir.path().join("b"),
        &["--endpoint", &verify_ca, "--datastore-cafile", SERVER_CERT],
    );
    let got = server
        .kv()
        .await
        .range(kine::proto::RangeRequest {
            key: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.count, 1);
    drop(server);

    let verify_full = format!("{}?sslmode=verify-full", db.dsn);
    let (ok, stderr) = run_to_exit(&[
        "kine",
        "--endpoint",
        &verify_full,
        "--datastore-cafile",
        SERVER_CERT,
        "--listen-address",
        "127.0.0.1:0",
        "--metrics-bind-address",
        "0",
    ]);
    assert!(!ok);
    assert!(stderr.contains("certificate"), "{stderr}");
}
