//! Runs every workload with tiny totals against k3rs served in-process.
//! Checks that requests succeed and the report adds up; never timing.
//! Watch and Lease may answer Unimplemented on a k3rs without them: that
//! must come back as a clean `Unsupported` error.

use clap::Parser;
use k3rs_benches::runner::is_unsupported;
use k3rs_benches::{BenchResult, Cli};
use tokio::sync::oneshot;

struct Server {
    endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    store: kine::Store,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = kine::open_sqlite(&kine::backend::sqlite::SqliteConfig {
            path: dir.path().join("state.db"),
            durability: Default::default(),
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let (tx, rx) = oneshot::channel::<()>();
        let s = store.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            kine::serve(listener, s, kine::ServerConfig::default(), shutdown)
                .await
                .unwrap();
        });
        Server {
            endpoint,
            stop: Some(tx),
            task: Some(task),
            store,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.take().unwrap().await;
        self.store.shutdown().await;
    }

    async fn bench(&self, args: &str) -> anyhow::Result<BenchResult> {
        let argv = format!(
            "k3rs-bench --no-progress --endpoints {} {args}",
            self.endpoint
        );
        let cli = Cli::try_parse_from(argv.split_whitespace()).unwrap();
        k3rs_benches::run(&cli).await
    }
}

/// Asserts `r` counted `n` successful requests in its headline and no errors.
fn assert_all_ok(r: &BenchResult, n: u64) {
    let h = r.headline().expect("a headline section");
    assert_eq!(h.errors, Default::default(), "{}", r.render());
    assert_eq!(h.count, n, "{}", r.render());
    assert!(h.fastest <= h.slowest);
    assert_eq!(h.percentiles.len(), 8);
    serde_json::to_string(r).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_workloads_run_against_k3rs() {
    let server = Server::start().await;

    let r = server
        .bench("--conns 2 --clients 4 put --total 40 --key-space-size 10 --val-size 64")
        .await
        .unwrap();
    assert_all_ok(&r, 40);
    let r = server
        .bench("put --total 10 --sequential-keys --key-space-size 5 --key-size 256 --val-size 1024")
        .await
        .unwrap();
    assert_all_ok(&r, 10);

    let r = server
        .bench("--clients 3 range /one --total 30 --preload 1")
        .await
        .unwrap();
    assert_all_ok(&r, 30);
    let r = server
        .bench("range /p/ --prefix --consistency s --limit 5 --keys-only --total 10 --preload 20")
        .await
        .unwrap();
    assert_all_ok(&r, 10);
    let r = server
        .bench("range /p/ --prefix --count-only --total 5")
        .await
        .unwrap();
    assert_all_ok(&r, 5);

    let r = server
        .bench("--clients 2 txn-put --txn-ops 4 --total 20 --key-space-size 50")
        .await
        .unwrap();
    assert_all_ok(&r, 20);
    assert!(
        server
            .bench("txn-put --txn-ops 4 --key-space-size 2 --total 1")
            .await
            .is_err()
    );

    let r = server
        .bench("--clients 2 txn-mixed --total 40 --rw-ratio 1 --limit 10")
        .await
        .unwrap();
    assert_all_ok(&r, 40);
    assert_eq!(r.sections[0].name, "all");
    assert_eq!(
        r.sections
            .iter()
            .skip(1)
            .map(|s| s.summary.count)
            .sum::<u64>(),
        40
    );

    let r = server
        .bench("--clients 2 list /bench/list/ --preload 1200 --limit 500 --total 4 --val-size 64")
        .await
        .unwrap();
    assert_all_ok(&r, 4);
    assert_eq!(r.extra["keys_per_list"], 1200.0, "{}", r.render());
    assert_eq!(r.extra["pages_per_list"], 3.0);

    let r = server
        .bench("count /bench/count/ --preload 300 --total 5")
        .await
        .unwrap();
    assert_all_ok(&r, 5);
    assert_eq!(r.extra["keys_counted"], 300.0);
    // A second preload finds the keys there and writes nothing.
    let before = server.store.current_revision();
    server
        .bench("count /bench/count/ --preload 300 --total 1")
        .await
        .unwrap();
    assert_eq!(server.store.current_revision(), before);

    let r = server
        .bench("--conns 2 --clients 3 kubernetes --preload 50 --total 200 --namespaces 3 --page-limit 7 --max-val-size 2048")
        .await
        .unwrap();
    assert_all_ok(&r, 200);
    assert_eq!(r.extra["conflicts"], 0.0, "{}", r.render());
    assert!(
        server
            .bench("kubernetes --creates 50 --total 1")
            .await
            .is_err()
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_lease_workloads_run_or_report_unimplemented() {
    let server = Server::start().await;
    let check = |r: anyhow::Result<BenchResult>, ok: &dyn Fn(&BenchResult)| match r {
        Ok(r) => {
            eprintln!("{}", r.render());
            ok(&r)
        }
        Err(e) => {
            eprintln!("unsupported: {e:#}");
            assert!(
                is_unsupported(&e),
                "neither a result nor Unimplemented: {e:#}"
            )
        }
    };

    check(
        server.bench("watch --streams 2 --watch-per-stream 3 --put-total 20 --key-space-size 4 --drain-secs 5").await,
        &|r| {
            assert_eq!(r.section("watch creation").unwrap().count, 6);
            assert_eq!(r.section("put").unwrap().count, 20);
            assert_eq!(r.extra["events_received"], r.extra["events_expected"], "{}", r.render());
        },
    );
    check(
        server
            .bench("watch-latency --streams 2 --watchers-per-stream 2 --put-total 10 --put-rate 200 --prevkv --drain-secs 5")
            .await,
        &|r| {
            assert_eq!(r.headline().unwrap().count, 40, "{}", r.render());
            assert_eq!(r.section("put").unwrap().count, 10);
        },
    );
    check(
        server.bench("--clients 2 lease-keepalive --total 20").await,
        &|r| assert_all_ok(r, 20),
    );

    server.stop().await;
}

#[tokio::test]
async fn nothing_listening_is_a_clean_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cli = Cli::try_parse_from([
        "k3rs-bench",
        "--no-progress",
        "--endpoints",
        &addr.to_string(),
        "put",
        "--total",
        "1",
    ])
    .unwrap();
    let err = k3rs_benches::run(&cli).await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
}
