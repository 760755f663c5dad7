//! A short sequence of requests, built from the fuzzer's bytes, applied to
//! one in-process store (opened once per process, so state and history
//! build up across runs).
//!
//! Every request gets an answer or one of etcd's errors, within a deadline.
//! The revision never goes back; a refused request takes none; a write
//! takes at most one; a put reads back; and an ordinary put and read still
//! work after each sequence.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use kine::backend::sqlite::{Durability, SqliteConfig};
use kine::proto::compare::TargetUnion;
use kine::proto::request_op::Request;
use kine::proto::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use kine::{Error, Store};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The store and the runtime its async API runs on.
struct Harness {
    rt: tokio::runtime::Runtime,
    store: Store,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("k3rs-fuzz-store-ops-")
            .tempdir()
            .expect("a temporary directory");
        let store = kine::open_sqlite(&SqliteConfig {
            path: dir.path().join("state.db"),
            // A throwaway database: fsync would only slow the fuzzer down.
            durability: Durability::NoSyncUnsafe,
        })
        .expect("the store opens");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Harness {
            rt,
            store,
            _dir: dir,
        }
    })
}

/// Keys come from a small space so that requests meet each other's keys.
fn key(k: u8) -> Bytes {
    Bytes::from(vec![b'a' + k % 8])
}

/// An empty end (one key), "\0" (every key from the start), or a key.
fn range_end(e: u8) -> Bytes {
    match e % 10 {
        0..=4 => Bytes::new(),
        5 => Bytes::from_static(b"\0"),
        k => key(k),
    }
}

#[derive(Arbitrary, Debug)]
struct Put {
    key: u8,
    value: Vec<u8>,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
    lease: u8,
}

impl Put {
    fn request(&self) -> PutRequest {
        PutRequest {
            key: key(self.key),
            value: Bytes::copy_from_slice(&self.value),
            lease: i64::from(self.lease % 4),
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Range {
    key: u8,
    end: u8,
    limit: i8,
    /// Back from the current revision; negative ones are in the future.
    back: i8,
    sort_order: i8,
    sort_target: i8,
    keys_only: bool,
    count_only: bool,
    min_mod: u8,
    max_create: u8,
}

impl Range {
    fn request(&self, current: i64) -> RangeRequest {
        RangeRequest {
            key: key(self.key),
            range_end: range_end(self.end),
            limit: i64::from(self.limit),
            revision: if self.back == 0 {
                0
            } else {
                current - i64::from(self.back)
            },
            sort_order: i32::from(self.sort_order),
            sort_target: i32::from(self.sort_target),
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: i64::from(self.min_mod),
            max_create_revision: i64::from(self.max_create),
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Delete {
    key: u8,
    end: u8,
    prev_kv: bool,
}

impl Delete {
    fn request(&self) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: key(self.key),
            range_end: range_end(self.end),
            prev_kv: self.prev_kv,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Cmp {
    key: u8,
    end: u8,
    target: i8,
    result: i8,
    operand: i8,
    value: Vec<u8>,
}

impl Cmp {
    fn compare(&self, current: i64) -> Compare {
        let n = i64::from(self.operand);
        let target_union = match self.target.rem_euclid(6) {
            0 => Some(TargetUnion::Version(n)),
            1 => Some(TargetUnion::CreateRevision(current - n)),
            2 => Some(TargetUnion::ModRevision(current - n)),
            3 => Some(TargetUnion::Value(Bytes::copy_from_slice(&self.value))),
            4 => Some(TargetUnion::Lease(n)),
            _ => None,
        };
        Compare {
            result: i32::from(self.result % 5),
            target: i32::from(self.target % 6),
            key: key(self.key),
            target_union,
            range_end: if self.end % 3 == 0 {
                range_end(self.end / 3)
            } else {
                Bytes::new()
            },
        }
    }
}

#[derive(Arbitrary, Debug)]
enum TxnOp {
    Range(Range),
    Put(Put),
    Delete(Delete),
    Txn(Box<Txn>),
    Empty,
}

#[derive(Arbitrary, Debug)]
struct Txn {
    compare: Vec<Cmp>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

impl Txn {
    fn request(&self, current: i64) -> TxnRequest {
        let ops = |ops: &[TxnOp]| {
            ops.iter()
                .map(|op| RequestOp {
                    request: match op {
                        TxnOp::Range(r) => Some(Request::RequestRange(r.request(current))),
                        TxnOp::Put(p) => Some(Request::RequestPut(p.request())),
                        TxnOp::Delete(d) => Some(Request::RequestDeleteRange(d.request())),
                        TxnOp::Txn(t) => Some(Request::RequestTxn(t.request(current))),
                        TxnOp::Empty => None,
                    },
                })
                .collect()
        };
        TxnRequest {
            compare: self.compare.iter().map(|c| c.compare(current)).collect(),
            success: ops(&self.success),
            failure: ops(&self.failure),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Range(Range),
    Put(Put),
    Delete(Delete),
    Txn(Txn),
    Compact {
        back: u8,
        physical: bool,
    },
    LeaseGrant {
        id: u8,
        ttl: i8,
    },
    LeaseRevoke {
        id: u8,
    },
    /// Bytes as they might come off the wire, decoded as a put or a txn.
    Wire {
        txn: bool,
        bytes: Vec<u8>,
    },
}

/// Whether a request wrote: it may then take one revision, else none.
enum Outcome {
    Read,
    Write,
    Put(PutRequest, i64),
}

async fn apply(store: &Store, op: &Op) -> Option<Result<Outcome, Error>> {
    let current = store.current_revision();
    Some(match op {
        Op::Range(r) => store
            .range(&r.request(current))
            .await
            .map(|_| Outcome::Read),
        Op::Put(p) => {
            let req = p.request();
            let answer = store.put(req.clone()).await;
            answer.map(|r| Outcome::Put(req, r.header.map_or(0, |h| h.revision)))
        }
        Op::Delete(d) => store
            .delete_range(d.request())
            .await
            .map(|_| Outcome::Write),
        Op::Txn(t) => store.txn(t.request(current)).await.map(|_| Outcome::Write),
        Op::Compact { back, physical } => {
            let revision = current - i64::from(*back);
            store
                .compact(revision, *physical)
                .await
                .map(|_| Outcome::Read)
        }
        Op::LeaseGrant { id, ttl } => {
            let answer = store.lease_grant(i64::from(id % 4), i64::from(*ttl)).await;
            answer.map(|_| Outcome::Read)
        }
        Op::LeaseRevoke { id } => store
            .lease_revoke(i64::from(id % 4))
            .await
            .map(|_| Outcome::Write),
        Op::Wire { txn: true, bytes } => {
            let t = TxnRequest::decode(&bytes[..]).ok()?;
            store.txn(t).await.map(|_| Outcome::Write)
        }
        Op::Wire { txn: false, bytes } => {
            let p = PutRequest::decode(&bytes[..]).ok()?;
            store.put(p).await.map(|_| Outcome::Write)
        }
    })
}

/// Longest one request may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(10);
/// Revisions kept before the harness compacts.
const HISTORY: i64 = 20_000;

async fn check(store: &Store, op: &Op) {
    let before = store.current_revision();
    let answer = tokio::time::timeout(DEADLINE, apply(store, op))
        .await
        .unwrap_or_else(|_| panic!("hung: {op:?}"));
    let after = store.current_revision();
    assert!(
        after >= before,
        "the revision went back: {before} -> {after}"
    );
    let Some(answer) = answer else { return };
    match answer {
        Err(e) => {
            assert!(
                e.to_string().starts_with("etcdserver: ") && !matches!(e, Error::Stopped),
                "not an etcd error: {e:?}"
            );
            assert_eq!(after, before, "a refused request took a revision");
        }
        Ok(Outcome::Read) => assert_eq!(after, before, "a read took a revision"),
        Ok(Outcome::Write) => assert!(after - before <= 1, "one request, two revisions"),
        Ok(Outcome::Put(req, revision)) => {
            assert_eq!(revision, before + 1);
            assert_eq!(after, revision);
            let got = store
                .range(&RangeRequest {
                    key: req.key.clone(),
                    ..Default::default()
                })
                .await
                .expect("a plain range");
            assert_eq!(got.kvs.len(), 1, "the put key is not there");
            assert_eq!(got.kvs[0].mod_revision, revision);
            if !req.ignore_value {
                assert_eq!(got.kvs[0].value, req.value);
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let h = harness();
    h.rt.block_on(async {
        for op in ops.iter().take(16) {
            check(&h.store, op).await;
        }
        // An ordinary put and read still work.
        let canary = PutRequest {
            key: Bytes::from_static(b"canary"),
            value: Bytes::from_static(b"alive"),
            ..Default::default()
        };
        let put = h.store.put(canary).await.expect("a plain put");
        let got = h
            .store
            .range(&RangeRequest {
                key: Bytes::from_static(b"canary"),
                ..Default::default()
            })
            .await
            .expect("a plain range");
        assert_eq!(
            got.kvs[0].mod_revision,
            put.header.map_or(0, |h| h.revision)
        );
        // History grows with every run; compact now and then, as a server
        // would, so that a long session stays within libFuzzer's memory limit.
        let current = h.store.current_revision();
        if current - h.store.compact_revision() > HISTORY {
            match h.store.compact(current - HISTORY / 2, false).await {
                Ok(_) | Err(Error::Compacted) => {}
                Err(e) => panic!("compaction failed: {e:?}"),
            }
        }
    });
});
