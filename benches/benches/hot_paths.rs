//! Micro-benchmarks of kine's hot paths, through its public API:
//! range scans over the in-memory index, txn evaluation by the applier,
//! a group commit to SQLite, and a put through the whole Store.
//!
//!     cargo bench -p k3rs-benches --bench hot_paths [-- FILTER]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kine::backend::sqlite::{Durability, SqliteConfig};
use kine::backend::{CommitBatch, LogRecord, LogWriter};
use kine::mvcc::apply::{self, WriteCtx};
use kine::mvcc::index::{Index, Revision};
use kine::mvcc::lease::LeaseTable;
use kine::mvcc::read::{self, ReadView};
use kine::proto::compare::{CompareResult, CompareTarget, TargetUnion};
use kine::proto::request_op::Request;
use kine::proto::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

const KEYS: u64 = 100_000;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("/registry/pods/ns-{:02}/pod-{i:08}", i % 10))
}

/// An index of `KEYS` keys under /registry/pods/, one revision each, with
/// 1 KiB values in memory.
fn index() -> (Index, i64) {
    let mut index = Index::default();
    let value = Bytes::from(vec![b'v'; 1024]);
    let mut keys: Vec<Bytes> = (0..KEYS).map(key).collect();
    keys.sort();
    for (n, k) in keys.into_iter().enumerate() {
        let rev = n as i64 + 2;
        index.push(
            k,
            Revision {
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                lease: 0,
                sub: 0,
                value: Some(value.clone()),
            },
        );
    }
    (index, KEYS as i64 + 1)
}

fn no_log(_: &[u8], _: i64) -> kine::Result<Bytes> {
    Ok(Bytes::new())
}

fn range_scan(c: &mut Criterion) {
    let (index, current) = index();
    let view = ReadView {
        current,
        compact: 0,
    };
    let prefix = Bytes::from_static(b"/registry/pods/");
    let end = Bytes::from_static(b"/registry/pods0");
    let mut g = c.benchmark_group("index_range");
    let page = RangeRequest {
        key: prefix.clone(),
        range_end: end.clone(),
        limit: 500,
        ..Default::default()
    };
    g.throughput(Throughput::Elements(500));
    g.bench_function("page_of_500_of_100k", |b| {
        b.iter(|| {
            read::range(black_box(&index), black_box(&page), view, &mut no_log)
                .unwrap()
                .response
                .kvs
                .len()
        })
    });
    let historic = RangeRequest {
        revision: current - 10,
        ..page.clone()
    };
    g.bench_function("page_of_500_at_older_revision", |b| {
        b.iter(|| {
            read::range(black_box(&index), black_box(&historic), view, &mut no_log)
                .unwrap()
                .response
                .kvs
                .len()
        })
    });
    g.throughput(Throughput::Elements(KEYS));
    let count = RangeRequest {
        key: prefix,
        range_end: end,
        count_only: true,
        ..Default::default()
    };
    g.bench_function("count_only_100k", |b| {
        b.iter(|| {
            read::range(black_box(&index), black_box(&count), view, &mut no_log)
                .unwrap()
                .response
                .count
        })
    });
    g.throughput(Throughput::Elements(1));
    let one = RangeRequest {
        key: key(4242),
        ..Default::default()
    };
    g.bench_function("one_key", |b| {
        b.iter(|| {
            read::range(black_box(&index), black_box(&one), view, &mut no_log)
                .unwrap()
                .response
                .kvs
                .len()
        })
    });
    g.finish();
}

fn txn_eval(c: &mut Criterion) {
    let (mut index, current) = index();
    let k = key(777);
    let rev = index.get(&k).unwrap().latest().unwrap().mod_revision;
    let cas = |rev: i64| TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: k.clone(),
            target_union: Some(TargetUnion::ModRevision(rev)),
            range_end: Bytes::new(),
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.clone(),
                value: Bytes::from(vec![b'u'; 2048]),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: k.clone(),
                ..Default::default()
            })),
        }],
    };
    let mut g = c.benchmark_group("txn_eval");
    for (name, req) in [
        ("kube_update_cas_succeeds", cas(rev)),
        ("kube_update_cas_conflicts", cas(rev - 1)),
    ] {
        g.bench_function(name, |b| {
            let mut records: Vec<LogRecord> = Vec::new();
            let mut leases = LeaseTable::default();
            b.iter(|| {
                let mut log = no_log;
                let mut ctx = WriteCtx {
                    index: &mut index,
                    base: current,
                    compact: 0,
                    records: &mut records,
                    first_record: 0,
                    next_sub: 0,
                    leases: &mut leases,
                    log_value: &mut log,
                };
                let resp = apply::txn(&mut ctx, black_box(&req)).unwrap();
                // Undo the write so every iteration sees the same state.
                ctx.rollback();
                records.clear();
                resp.succeeded
            })
        });
    }
    g.finish();
}

fn batch(first_rev: i64, n: usize, value: &Bytes) -> CommitBatch {
    let records = (0..n)
        .map(|i| {
            let rev = first_rev + i as i64;
            LogRecord {
                mod_revision: rev,
                sub: 0,
                key: key(rev as u64),
                create_revision: rev,
                version: 1,
                lease: 0,
                value: value.clone(),
            }
        })
        .collect();
    CommitBatch {
        records,
        current_revision: first_rev + n as i64 - 1,
        ..Default::default()
    }
}

fn sqlite_commit(c: &mut Criterion) {
    let value = Bytes::from(vec![b'v'; 1024]);
    let mut g = c.benchmark_group("sqlite_commit");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    for (durability, name) in [
        (Durability::Fsync, "fsync"),
        (Durability::NoSyncUnsafe, "nosync"),
    ] {
        for n in [1usize, 100] {
            let dir = tempfile::tempdir().unwrap();
            let (mut writer, _reader) = kine::backend::sqlite::open(&SqliteConfig {
                path: dir.path().join("state.db"),
                durability,
            })
            .unwrap();
            writer.load(&mut |_| {}).unwrap();
            let mut next = 2i64;
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("{name}_{n}x1KiB"), |b| {
                b.iter_batched(
                    || {
                        let bt = batch(next, n, &value);
                        next += n as i64;
                        bt
                    },
                    |bt| writer.commit(&bt).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn store_put(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = kine::open_sqlite(&SqliteConfig {
        path: dir.path().join("state.db"),
        durability: Durability::Fsync,
    })
    .unwrap();
    let value = Bytes::from(vec![b'v'; 1024]);
    let mut g = c.benchmark_group("store_put");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut i = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_put_1KiB_fsync", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(store.put(PutRequest {
                key: key(i % KEYS),
                value: value.clone(),
                ..Default::default()
            }))
            .unwrap()
        })
    });
    // 64 puts in flight: what group commit buys.
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_concurrent_puts_1KiB_fsync", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tasks = Vec::with_capacity(64);
                for _ in 0..64 {
                    i += 1;
                    let (store, value) = (store.clone(), value.clone());
                    let k = key(i % KEYS);
                    tasks.push(tokio::spawn(async move {
                        store
                            .put(PutRequest {
                                key: k,
                                value,
                                ..Default::default()
                            })
                            .await
                            .unwrap()
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.finish();
    rt.block_on(store.shutdown());
}

criterion_group!(benches, range_scan, txn_eval, sqlite_commit, store_put);
criterion_main!(benches);
