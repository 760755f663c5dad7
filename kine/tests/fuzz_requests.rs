//! Fuzzing the request path against a real store.
//!
//! Two properties:
//! - Wire bytes, random or mutated from valid requests, decoded as each etcd
//!   request type and fed to the store: decoding may fail, but a decoded
//!   request gets an answer or an etcd error. Never a panic or a hang, never
//!   a revision going back, never a refused request that changed anything,
//!   and the store keeps serving afterwards.
//! - Random sequences of puts, deletes, ranges, txns (nested ones too) and
//!   compactions on six keys, run on the store and on a small model of etcd's
//!   revision semantics: every answer and every error must agree.
//!
//! Set `K3RS_FUZZ_CASES=N` to run N cases per property instead of the default.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use kine::backend::sqlite::{Durability, SqliteConfig};
use kine::proto::compare::{CompareResult, CompareTarget, TargetUnion};
use kine::proto::range_request::{SortOrder, SortTarget};
use kine::proto::request_op::Request;
use kine::proto::response_op::Response;
use kine::proto::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use kine::{Error, Store};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use prost::Message;

// ---------------------------------------------------------------------------
// Harness

/// Cases per property: `K3RS_FUZZ_CASES`, or `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("K3RS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A store on a fresh database, deleted with it.
struct TestStore {
    store: Store,
    _dir: tempfile::TempDir,
}

impl TestStore {
    fn open() -> TestStore {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = kine::open_sqlite(&SqliteConfig {
            path: dir.path().join("state.db"),
            // These databases are thrown away: fsync would only slow the run.
            durability: Durability::NoSyncUnsafe,
        })
        .expect("the store opens");
        TestStore { store, _dir: dir }
    }

    /// Stops the writer before the directory goes.
    async fn close(self) {
        self.store.shutdown().await;
    }
}

/// Longest one request may take before the run calls it a hang.
const HANG: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, TestCaseError> {
    tokio::time::timeout(HANG, fut)
        .await
        .map_err(|_| TestCaseError::fail(format!("{what} took over {HANG:?}")))
}

/// Fails the test with proptest's report, which shows the smallest
/// failing input it found.
fn report(result: Result<(), TestError<impl std::fmt::Debug>>) {
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Every key, at the revision `revision` (0: the current one).
fn everything_at(revision: i64) -> RangeRequest {
    RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        revision,
        ..Default::default()
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn revision_of(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

// ---------------------------------------------------------------------------
// Generators: valid requests on a small key space, so that compares, ranges
// and deletes often meet keys that exist.

static KEYS: [&[u8]; 6] = [b"a", b"b", b"c", b"d", b"e", b"f"];
static RANGE_ENDS: [&[u8]; 7] = [b"a", b"b", b"c", b"d", b"e", b"f", b"g"];
static VALUES: [&[u8]; 4] = [b"", b"v1", b"v2", b"v3"];
/// Revisions the generators name: a sequence gets about this far, so some
/// reads are historic, some current and some in the future.
const MAX_REVISION: i64 = 20;
/// The one lease the decoding property grants before each case.
const LEASE: i64 = 7;

fn key() -> impl Strategy<Value = Bytes> {
    select(&KEYS[..]).prop_map(Bytes::from_static)
}

fn value() -> impl Strategy<Value = Bytes> {
    select(&VALUES[..]).prop_map(Bytes::from_static)
}

/// Mostly a single key; sometimes "\0" (every key from `key` on), sometimes
/// an end that may lie before the key (an empty range).
fn range_end() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        5 => Just(Bytes::new()),
        1 => Just(Bytes::from_static(b"\0")),
        3 => select(&RANGE_ENDS[..]).prop_map(Bytes::from_static),
    ]
}

fn revision() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0), 2 => 1..=MAX_REVISION, 1 => Just(-1)]
}

/// A revision bound for the min/max filters: mostly none.
fn bound() -> impl Strategy<Value = i64> {
    prop_oneof![12 => Just(0), 1 => 1..=MAX_REVISION]
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    (
        (
            key(),
            range_end(),
            prop_oneof![Just(0), 1..4i64, Just(-1)],
            revision(),
        ),
        (
            0..3i32,
            0..5i32,
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
        ),
        (bound(), bound(), bound(), bound()),
    )
        .prop_map(
            |(
                (key, range_end, limit, revision),
                (sort_order, sort_target, keys_only, count_only),
                (min_mod_revision, max_mod_revision, min_create_revision, max_create_revision),
            )| RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order,
                sort_target,
                keys_only,
                count_only,
                min_mod_revision,
                max_mod_revision,
                min_create_revision,
                max_create_revision,
                ..Default::default()
            },
        )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (key(), value(), any::<bool>(), 0..24u8).prop_map(|(key, value, prev_kv, twist)| {
        let mut p = PutRequest {
            key,
            value,
            prev_kv,
            ..Default::default()
        };
        // A few puts use the options that can fail.
        match twist {
            0 => {
                p.ignore_value = true;
                p.value = Bytes::new();
            }
            1 => p.ignore_value = true,
            2 => p.ignore_lease = true,
            3 => p.lease = LEASE,
            _ => {}
        }
        p
    })
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    (
        key(),
        prop_oneof![4 => Just(Bytes::new()), 1 => range_end()],
        0..5i32,
        0..4i32,
        0..=MAX_REVISION,
        value(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(key, range_end, target, result, n, v, no_operand)| {
            let target_union = if no_operand {
                None
            } else {
                Some(match CompareTarget::try_from(target).unwrap() {
                    CompareTarget::Version => TargetUnion::Version(n % 5),
                    CompareTarget::Create => TargetUnion::CreateRevision(n),
                    CompareTarget::Mod => TargetUnion::ModRevision(n),
                    CompareTarget::Value => TargetUnion::Value(v),
                    CompareTarget::Lease => TargetUnion::Lease(n % 2),
                })
            };
            Compare {
                result,
                target,
                key,
                target_union,
                range_end,
            }
        })
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn leaf_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        20 => range_request().prop_map(|r| op(Request::RequestRange(r))),
        20 => put_request().prop_map(|p| op(Request::RequestPut(p))),
        12 => delete_request().prop_map(|d| op(Request::RequestDeleteRange(d))),
        // An empty op: etcd answers "key not found".
        1 => Just(RequestOp { request: None }),
    ]
}

/// A txn whose ops may hold txns `depth` levels down.
fn txn_request(depth: u32) -> BoxedStrategy<TxnRequest> {
    let op = if depth == 0 {
        leaf_op().boxed()
    } else {
        prop_oneof![
            4 => leaf_op(),
            1 => txn_request(depth - 1).prop_map(|t| op(Request::RequestTxn(t))),
        ]
        .boxed()
    };
    (vec(compare(), 0..3), vec(op.clone(), 0..4), vec(op, 0..4))
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
        .boxed()
}

// ---------------------------------------------------------------------------
// Property a: decoding arbitrary bytes, and what the store does with them.

/// The request types of the KV and Lease services that reach the store.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compaction,
    LeaseGrant,
    LeaseRevoke,
}

static KINDS: [Kind; 7] = [
    Kind::Range,
    Kind::Put,
    Kind::DeleteRange,
    Kind::Txn,
    Kind::Compaction,
    Kind::LeaseGrant,
    Kind::LeaseRevoke,
];

/// A change to an encoding; positions wrap around its length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        match self {
            Mutation::FlipBit(at, bit) if len > 0 => bytes[at % len] ^= 1 << (bit % 8),
            Mutation::SetByte(at, b) if len > 0 => bytes[at % len] = *b,
            Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
            Mutation::Insert(at, extra) => {
                let at = at % (len + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            _ => {}
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), vec(any::<u8>(), 1..8)).prop_map(|(at, b)| Mutation::Insert(at, b)),
    ]
}

fn lease_id() -> impl Strategy<Value = i64> {
    prop_oneof![Just(LEASE), 0..3i64, any::<i64>()]
}

/// A valid request of each type, encoded.
fn valid_encoding() -> impl Strategy<Value = (Kind, Vec<u8>)> {
    prop_oneof![
        range_request().prop_map(|r| (Kind::Range, r.encode_to_vec())),
        put_request().prop_map(|p| (Kind::Put, p.encode_to_vec())),
        delete_request().prop_map(|d| (Kind::DeleteRange, d.encode_to_vec())),
        txn_request(2).prop_map(|t| (Kind::Txn, t.encode_to_vec())),
        (0..12i64, any::<bool>()).prop_map(|(revision, physical)| {
            let c = CompactionRequest { revision, physical };
            (Kind::Compaction, c.encode_to_vec())
        }),
        (-5..100i64, lease_id()).prop_map(|(ttl, id)| {
            (
                Kind::LeaseGrant,
                LeaseGrantRequest { ttl, id }.encode_to_vec(),
            )
        }),
        lease_id().prop_map(|id| (Kind::LeaseRevoke, LeaseRevokeRequest { id }.encode_to_vec())),
    ]
}

/// Raw bytes, or (more often, so that decoding succeeds) a valid encoding
/// with a few mutations, now and then decoded as another type.
fn wire_input() -> impl Strategy<Value = (Kind, Vec<u8>)> {
    prop_oneof![
        1 => (select(&KINDS[..]), vec(any::<u8>(), 0..128)),
        4 => (
            valid_encoding(),
            vec(mutation(), 0..3),
            prop::option::weighted(0.1, select(&KINDS[..])),
        )
            .prop_map(|((kind, mut bytes), mutations, retyped)| {
                for m in &mutations {
                    m.apply(&mut bytes);
                }
                (retyped.unwrap_or(kind), bytes)
            }),
    ]
}

/// What the store answered a decoded request, with what the checks need.
enum Answer {
    Range(RangeResponse),
    Put(PutRequest, PutResponse),
    DeleteRange(DeleteRangeRequest, DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(i64),
    LeaseGrant,
    LeaseRevoke(i64),
}

/// Decodes `bytes` as `kind` and sends it to the store the way the gRPC
/// services do; `None` when it does not decode.
async fn feed(store: &Store, kind: Kind, bytes: &[u8]) -> Option<Result<Answer, Error>> {
    Some(match kind {
        Kind::Range => {
            let r = RangeRequest::decode(bytes).ok()?;
            store.range(&r).await.map(Answer::Range)
        }
        Kind::Put => {
            let p = PutRequest::decode(bytes).ok()?;
            store.put(p.clone()).await.map(|r| Answer::Put(p, r))
        }
        Kind::DeleteRange => {
            let d = DeleteRangeRequest::decode(bytes).ok()?;
            let answer = store.delete_range(d.clone()).await;
            answer.map(|r| Answer::DeleteRange(d, r))
        }
        Kind::Txn => {
            let t = TxnRequest::decode(bytes).ok()?;
            store.txn(t).await.map(Answer::Txn)
        }
        Kind::Compaction => {
            let c = CompactionRequest::decode(bytes).ok()?;
            let answer = store.compact(c.revision, c.physical).await;
            answer.map(Answer::Compaction)
        }
        Kind::LeaseGrant => {
            let g = LeaseGrantRequest::decode(bytes).ok()?;
            store
                .lease_grant(g.id, g.ttl)
                .await
                .map(|_| Answer::LeaseGrant)
        }
        Kind::LeaseRevoke => {
            let r = LeaseRevokeRequest::decode(bytes).ok()?;
            store.lease_revoke(r.id).await.map(Answer::LeaseRevoke)
        }
    })
}

/// etcd's own errors; the rest mean the store itself failed.
fn is_etcd_error(e: &Error) -> bool {
    !matches!(
        e,
        Error::Storage(_) | Error::CommitUnknown(_) | Error::Stopped | Error::Unimplemented(_)
    )
}

async fn read(store: &Store, req: &RangeRequest) -> Result<RangeResponse, TestCaseError> {
    within("a range", store.range(req))
        .await?
        .map_err(|e| TestCaseError::fail(format!("a plain range failed: {e:?}")))
}

fn one_key(key: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

/// Sends one fuzzed request and checks what it did to the store.
async fn check_fuzzed(store: &Store, kind: Kind, bytes: &[u8]) -> Result<(), TestCaseError> {
    let before = store.current_revision();
    let data_before = read(store, &everything_at(0)).await?.kvs;
    let Some(answer) = within("the fuzzed request", feed(store, kind, bytes)).await? else {
        return Ok(());
    };
    let after = store.current_revision();
    prop_assert!(
        after >= before,
        "the revision went back: {before} -> {after}"
    );
    match answer {
        Err(e) => {
            prop_assert!(is_etcd_error(&e), "not an etcd error: {e:?}");
            prop_assert_eq!(after, before, "a refused request took a revision");
            let data_after = read(store, &everything_at(0)).await?.kvs;
            prop_assert_eq!(
                data_after,
                data_before,
                "a refused request changed the data"
            );
        }
        Ok(Answer::Range(r)) => {
            prop_assert_eq!(after, before);
            prop_assert_eq!(revision_of(&r.header), before);
            prop_assert!(r.kvs.len() as i64 <= r.count, "more kvs than count");
        }
        Ok(Answer::Put(req, r)) => {
            let rev = revision_of(&r.header);
            prop_assert_eq!(rev, before + 1);
            prop_assert_eq!(after, rev);
            let stored = read(store, &one_key(&req.key)).await?.kvs;
            prop_assert_eq!(stored.len(), 1, "the put key is not there");
            prop_assert_eq!(stored[0].mod_revision, rev);
            if !req.ignore_value {
                prop_assert_eq!(&stored[0].value, &req.value);
            }
        }
        Ok(Answer::DeleteRange(req, r)) => {
            let rev = revision_of(&r.header);
            prop_assert_eq!(rev, before + (r.deleted > 0) as i64);
            prop_assert_eq!(after, rev);
            let left = RangeRequest {
                key: req.key.clone(),
                range_end: req.range_end.clone(),
                count_only: true,
                ..Default::default()
            };
            prop_assert_eq!(read(store, &left).await?.count, 0, "deleted keys remain");
        }
        Ok(Answer::Txn(r)) => {
            prop_assert!(after - before <= 1, "a txn took two revisions");
            prop_assert_eq!(revision_of(&r.header), after);
        }
        Ok(Answer::Compaction(rev)) => {
            prop_assert_eq!(after, before);
            prop_assert_eq!(rev, after);
            prop_assert!(store.compact_revision() <= after);
        }
        Ok(Answer::LeaseGrant) => prop_assert_eq!(after, before),
        Ok(Answer::LeaseRevoke(rev)) => {
            prop_assert!(after - before <= 1, "a revoke took two revisions");
            prop_assert_eq!(rev, after);
        }
    }
    // Whatever came before, an ordinary put and read still work.
    let canary = Bytes::from_static(b"canary");
    let put = PutRequest {
        key: canary.clone(),
        value: Bytes::copy_from_slice(&after.to_be_bytes()),
        ..Default::default()
    };
    let put = within("a plain put", store.put(put.clone()))
        .await?
        .map_err(|e| TestCaseError::fail(format!("a plain put failed: {e:?}")))?;
    let got = read(store, &one_key(&canary)).await?.kvs;
    prop_assert_eq!(got.len(), 1);
    prop_assert_eq!(got[0].mod_revision, revision_of(&put.header));
    prop_assert_eq!(&got[0].value[..], &after.to_be_bytes()[..]);
    Ok(())
}

/// A store with the six keys (two under the lease) and a second revision.
async fn seeded_store() -> Result<TestStore, TestCaseError> {
    let ts = TestStore::open();
    let store = &ts.store;
    let failed = |e: Error| TestCaseError::fail(format!("seeding failed: {e:?}"));
    store.lease_grant(LEASE, 60).await.map_err(failed)?;
    let puts = KEYS
        .iter()
        .enumerate()
        .map(|(i, k)| {
            op(Request::RequestPut(PutRequest {
                key: Bytes::from_static(k),
                value: Bytes::from_static(VALUES[i % VALUES.len()]),
                lease: if i < 2 { LEASE } else { 0 },
                ..Default::default()
            }))
        })
        .collect();
    let txn = TxnRequest {
        success: puts,
        ..Default::default()
    };
    store.txn(txn).await.map_err(failed)?;
    let again = PutRequest {
        key: Bytes::from_static(b"a"),
        value: Bytes::from_static(b"v2"),
        ..Default::default()
    };
    store.put(again).await.map_err(failed)?;
    Ok(ts)
}

#[test]
fn fuzzed_requests_get_an_answer_or_an_etcd_error() {
    let rt = runtime();
    let mut runner = TestRunner::new(config(256));
    let result = runner.run(&vec(wire_input(), 1..6), |inputs| {
        rt.block_on(async {
            let ts = seeded_store().await?;
            for (kind, bytes) in &inputs {
                check_fuzzed(&ts.store, *kind, bytes).await?;
            }
            ts.close().await;
            Ok(())
        })
    });
    report(result);
}

// ---------------------------------------------------------------------------
// Property b: the store against a model of etcd's semantics.

/// One key in the model.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    value: Bytes,
    create: i64,
    modified: i64,
    version: i64,
}

type Keys = BTreeMap<Bytes, Entry>;

fn key_value(key: &Bytes, e: &Entry) -> KeyValue {
    KeyValue {
        key: key.clone(),
        create_revision: e.create,
        mod_revision: e.modified,
        version: e.version,
        value: e.value.clone(),
        lease: 0,
    }
}

/// etcd's key ranges: an empty end is the key alone, "\0" every key from
/// `key` on, anything else `[key, end)`.
fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        _ => key <= k && k < end,
    }
}

/// etcd's revision model written as plainly as possible: the whole key space
/// at every revision. The model grants no leases.
struct Model {
    /// `revisions[r]` is the key space at revision `r`; a new store is at 1.
    revisions: Vec<Keys>,
    /// Reads below it fail; -1 before the first compaction, as in etcd.
    compacted: i64,
}

impl Model {
    fn new() -> Model {
        Model {
            revisions: vec![Keys::new(), Keys::new()],
            compacted: -1,
        }
    }

    fn current(&self) -> i64 {
        self.revisions.len() as i64 - 1
    }

    /// Runs one request: its writes become one new revision, unless it fails.
    fn write<T>(&mut self, f: impl FnOnce(&mut Tx) -> Result<T, Error>) -> Result<T, Error> {
        let mut tx = Tx {
            keys: self.revisions.last().unwrap().clone(),
            model: self,
            wrote: false,
        };
        let answer = f(&mut tx)?;
        if tx.wrote {
            let keys = tx.keys;
            self.revisions.push(keys);
        }
        Ok(answer)
    }

    fn range(&mut self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        check_range(req)?;
        self.write(|tx| tx.range(req))
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Error> {
        check_put(req)?;
        self.write(|tx| tx.put(req))
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        self.write(|tx| tx.delete_range(req))
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, Error> {
        check_txn(req)?;
        check_intervals(&req.success)?;
        check_intervals(&req.failure)?;
        self.write(|tx| tx.txn(req))
    }

    fn compact(&mut self, revision: i64) -> Result<i64, Error> {
        if revision <= self.compacted {
            return Err(Error::Compacted);
        }
        if revision > self.current() {
            return Err(Error::FutureRevision);
        }
        self.compacted = revision;
        Ok(self.current())
    }
}

/// One request while it runs: the key space as it has changed it so far.
struct Tx<'m> {
    model: &'m Model,
    keys: Keys,
    wrote: bool,
}

impl Tx<'_> {
    /// The revision this request writes at.
    fn revision(&self) -> i64 {
        self.model.current() + 1
    }

    /// What reads inside the request see: the revision before it, or its
    /// own once it has written.
    fn read_revision(&self) -> i64 {
        if self.wrote {
            self.revision()
        } else {
            self.model.current()
        }
    }

    fn keys_at(&self, revision: i64) -> &Keys {
        if revision > self.model.current() {
            &self.keys
        } else {
            &self.model.revisions[revision as usize]
        }
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        let current = self.read_revision();
        // Inside a txn, `check_puts` has already refused ranges past the
        // revision before the txn (etcd's checkRequestRange).
        if req.revision > current {
            return Err(Error::FutureRevision);
        }
        let at = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if at < self.model.compacted {
            return Err(Error::Compacted);
        }
        let mut kvs: Vec<KeyValue> = self
            .keys_at(at)
            .iter()
            .filter(|(k, _)| in_range(k, &req.key, &req.range_end))
            .map(|(k, e)| key_value(k, e))
            .collect();
        let count = kvs.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                header: header(current),
                count,
                ..Default::default()
            });
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // etcd fetches limit + 1 keys in key order unless it sorts or
        // filters afterwards; it looks at the order as requested, before
        // NONE turns into ASCEND for targets other than the key.
        if req.sort_order == SortOrder::None as i32 && !filtered && req.limit > 0 {
            kvs.truncate(req.limit as usize + 1);
        }
        let over = |bound: i64, v: i64| bound != 0 && v > bound;
        let under = |bound: i64, v: i64| bound != 0 && v < bound;
        kvs.retain(|kv| {
            !(over(req.max_mod_revision, kv.mod_revision)
                || under(req.min_mod_revision, kv.mod_revision)
                || over(req.max_create_revision, kv.create_revision)
                || under(req.min_create_revision, kv.create_revision))
        });
        let target = SortTarget::try_from(req.sort_target).unwrap();
        let order = match (target, SortOrder::try_from(req.sort_order).unwrap()) {
            (SortTarget::Key, order) => order,
            (_, SortOrder::None) => SortOrder::Ascend,
            (_, order) => order,
        };
        if order != SortOrder::None {
            // etcd leaves the order of ties unspecified; the store keeps key
            // order among them (reversed with the rest when descending).
            match target {
                SortTarget::Key => {}
                SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        let more = req.limit > 0 && kvs.len() > req.limit as usize;
        if more {
            kvs.truncate(req.limit as usize);
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            header: header(current),
            kvs,
            more,
            count,
        })
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Error> {
        let prev = self.keys.get(&req.key).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        if req.lease != 0 {
            return Err(Error::LeaseNotFound);
        }
        let rev = self.revision();
        let entry = Entry {
            value: match (&prev, req.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => req.value.clone(),
            },
            create: prev.as_ref().map_or(rev, |p| p.create),
            modified: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
        };
        self.keys.insert(req.key.clone(), entry);
        self.wrote = true;
        Ok(PutResponse {
            header: header(rev),
            prev_kv: prev
                .filter(|_| req.prev_kv)
                .map(|p| key_value(&req.key, &p)),
        })
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        let doomed: Vec<KeyValue> = self
            .keys
            .iter()
            .filter(|(k, _)| in_range(k, &req.key, &req.range_end))
            .map(|(k, e)| key_value(k, e))
            .collect();
        for kv in &doomed {
            self.keys.remove(&kv.key);
        }
        // Deleting nothing writes nothing, and takes no revision.
        self.wrote |= !doomed.is_empty();
        Ok(DeleteRangeResponse {
            header: header(self.read_revision()),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }

    /// etcd decides the branch of every txn on the path (nested ones too)
    /// against the state before the txn, checks the path's puts, then runs it.
    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, Error> {
        let mut path = Vec::new();
        self.choose(req, &mut path);
        self.check_puts(req, &mut path.iter().copied())?;
        self.run(req, &mut path.into_iter())
    }

    fn choose(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let ok = req.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        for op in branch(req, ok) {
            if let Some(Request::RequestTxn(t)) = &op.request {
                self.choose(t, path);
            }
        }
    }

    fn check_puts(
        &self,
        req: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<(), Error> {
        let ok = path.next().unwrap();
        for op in branch(req, ok) {
            match &op.request {
                // etcd's checkRequestRange, against the revision before the txn.
                Some(Request::RequestRange(r)) if r.revision != 0 => {
                    if r.revision > self.model.current() {
                        return Err(Error::FutureRevision);
                    }
                    if r.revision < self.model.compacted {
                        return Err(Error::Compacted);
                    }
                }
                Some(Request::RequestPut(p)) => {
                    if (p.ignore_value || p.ignore_lease) && !self.keys.contains_key(&p.key) {
                        return Err(Error::KeyNotFound);
                    }
                    if p.lease != 0 {
                        return Err(Error::LeaseNotFound);
                    }
                }
                Some(Request::RequestTxn(t)) => self.check_puts(t, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        req: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<TxnResponse, Error> {
        let succeeded = path.next().unwrap();
        let mut responses = Vec::new();
        for op in branch(req, succeeded) {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => Response::ResponseRange(self.range(r)?),
                Some(Request::RequestPut(p)) => Response::ResponsePut(self.put(p)?),
                Some(Request::RequestDeleteRange(d)) => {
                    Response::ResponseDeleteRange(self.delete_range(d)?)
                }
                Some(Request::RequestTxn(t)) => Response::ResponseTxn(self.run(t, path)?),
                None => return Err(Error::KeyNotFound),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        // FIXME: etcd fills in only the outermost txn's header; a nested
        // txn's response carries an empty header (revision 0). The store gives
        // nested txns the revision their reads saw, like the outermost one.
        // See `known_differences_from_etcd`.
        Ok(TxnResponse {
            header: header(self.read_revision()),
            succeeded,
            responses,
        })
    }

    /// etcd's `applyCompare`: every key in the range must match; with no key
    /// a value compare fails and the other targets compare against zero.
    fn compare(&self, c: &Compare) -> bool {
        let found: Vec<&Entry> = self
            .keys
            .iter()
            .filter(|(k, _)| in_range(k, &c.key, &c.range_end))
            .map(|(_, e)| e)
            .collect();
        if found.is_empty() {
            return c.target != CompareTarget::Value as i32 && compare_entry(c, None);
        }
        found.iter().all(|e| compare_entry(c, Some(e)))
    }
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// etcd's `compareKV`: an operand of the wrong kind (or none) counts as
/// zero, or as the empty value.
fn compare_entry(c: &Compare, e: Option<&Entry>) -> bool {
    use std::cmp::Ordering;
    let u = &c.target_union;
    let int = |have: i64, want: Option<i64>| have.cmp(&want.unwrap_or(0));
    let ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match u {
                Some(TargetUnion::Value(v)) => v,
                _ => b"",
            };
            e.map_or(&b""[..], |e| &e.value[..]).cmp(want)
        }
        Ok(CompareTarget::Version) => int(
            e.map_or(0, |e| e.version),
            match u {
                Some(TargetUnion::Version(v)) => Some(*v),
                _ => None,
            },
        ),
        Ok(CompareTarget::Create) => int(
            e.map_or(0, |e| e.create),
            match u {
                Some(TargetUnion::CreateRevision(v)) => Some(*v),
                _ => None,
            },
        ),
        Ok(CompareTarget::Mod) => int(
            e.map_or(0, |e| e.modified),
            match u {
                Some(TargetUnion::ModRevision(v)) => Some(*v),
                _ => None,
            },
        ),
        Ok(CompareTarget::Lease) => int(
            0,
            match u {
                Some(TargetUnion::Lease(v)) => Some(*v),
                _ => None,
            },
        ),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

/// etcd's `checkRangeRequest`.
fn check_range(req: &RangeRequest) -> Result<(), Error> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if SortOrder::try_from(req.sort_order).is_err()
        || SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
fn check_put(req: &PutRequest) -> Result<(), Error> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: counts, empty keys and empty ops, in its order.
fn check_txn(req: &TxnRequest) -> Result<(), Error> {
    let most = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if most > 128 {
        return Err(Error::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => check_range(r)?,
            Some(Request::RequestPut(p)) => check_put(p)?,
            Some(Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(Error::EmptyKey);
            }
            Some(Request::RequestDeleteRange(_)) => {}
            // FIXME: etcd lets a nested txn have only the ops its parent
            // leaves (`maxTxnOps - opc`); the store allows 128 at every
            // level. See `known_differences_from_etcd`.
            Some(Request::RequestTxn(t)) => check_txn(t)?,
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// A delete's `(key, range_end)`.
type Interval = (Bytes, Bytes);

/// etcd's `checkIntervals`, as it is written there: within one branch a key
/// is put at most once and never both put and deleted. A nested txn's two
/// branches may put the same key, since only one runs; a delete's "\0" end
/// is compared literally (so it covers nothing here); a nested delete is
/// checked only against the puts that come after it.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Bytes>, Vec<Interval>), Error> {
    let covered = |dels: &[Interval], k: &Bytes| {
        dels.iter().any(|(key, end)| {
            if end.is_empty() {
                k == key
            } else {
                key <= k && k < end
            }
        })
    };
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || covered(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) || covered(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || covered(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// A top-level request of a generated sequence.
#[derive(Debug, Clone)]
enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact { revision: i64, physical: bool },
}

fn top_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => put_request().prop_map(Op::Put),
        2 => delete_request().prop_map(Op::DeleteRange),
        2 => range_request().prop_map(Op::Range),
        4 => txn_request(2).prop_map(Op::Txn),
        1 => (0..MAX_REVISION, any::<bool>())
            .prop_map(|(revision, physical)| Op::Compact { revision, physical }),
    ]
}

/// Runs `ops` on a fresh store and on the model; every answer must match,
/// and so must the whole key space after each op and at every retained
/// revision at the end.
async fn check_against_model(ops: &[Op]) -> Result<(), TestCaseError> {
    let ts = TestStore::open();
    let store = &ts.store;
    let mut model = Model::new();
    prop_assert_eq!(store.current_revision(), model.current());
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Range(r) => {
                let got = within("range", store.range(r)).await?;
                prop_assert_eq!(got, model.range(r), "op {}: {:?}", i, op);
            }
            Op::Put(p) => {
                let got = within("put", store.put(p.clone())).await?;
                prop_assert_eq!(got, model.put(p), "op {}: {:?}", i, op);
            }
            Op::DeleteRange(d) => {
                let got = within("delete", store.delete_range(d.clone())).await?;
                prop_assert_eq!(got, model.delete_range(d), "op {}: {:?}", i, op);
            }
            Op::Txn(t) => {
                let got = within("txn", store.txn(t.clone())).await?;
                prop_assert_eq!(got, model.txn(t), "op {}: {:?}", i, op);
            }
            Op::Compact { revision, physical } => {
                let got = within("compact", store.compact(*revision, *physical)).await?;
                prop_assert_eq!(got, model.compact(*revision), "op {}: {:?}", i, op);
            }
        }
        prop_assert_eq!(store.current_revision(), model.current(), "after op {}", i);
        let all = everything_at(0);
        let got = within("range", store.range(&all)).await?;
        prop_assert_eq!(got, model.range(&all), "key space after op {}", i);
    }
    for revision in model.compacted.max(1)..=model.current() {
        let all = everything_at(revision);
        let got = within("range", store.range(&all)).await?;
        prop_assert_eq!(got, model.range(&all), "key space at revision {}", revision);
    }
    ts.close().await;
    Ok(())
}

#[test]
fn store_agrees_with_a_model_of_etcd() {
    let rt = runtime();
    let mut runner = TestRunner::new(config(256));
    let result = runner.run(&vec(top_op(), 1..32), |ops| {
        rt.block_on(check_against_model(&ops))
    });
    report(result);
}

/// Where the store and etcd (3.4.23, checked against the binary) answer the
/// same request differently. Each assert pins the store's current answer, so
/// that a fix shows up here.
#[test]
fn known_differences_from_etcd() {
    let rt = runtime();
    rt.block_on(async {
        let ts = TestStore::open();
        let store = &ts.store;
        let a = Bytes::from_static(b"a");
        let put_a = |v: &'static [u8]| {
            op(Request::RequestPut(PutRequest {
                key: a.clone(),
                value: Bytes::from_static(v),
                ..Default::default()
            }))
        };
        let range_a = |revision: i64| {
            op(Request::RequestRange(RangeRequest {
                revision,
                ..one_key(&a)
            }))
        };
        let txn = |success: Vec<RequestOp>| TxnRequest {
            success,
            ..Default::default()
        };
        store
            .put(PutRequest {
                key: a.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(store.current_revision(), 2);

        // As etcd: a txn's ranges are checked against the revision before
        // the txn, so not at the txn's own new revision.
        let r = store.txn(txn(vec![put_a(b"x"), range_a(3)])).await;
        assert_eq!(r.unwrap_err(), kine::Error::FutureRevision);
        store.txn(txn(vec![put_a(b"x")])).await.unwrap();

        // FIXME: etcd leaves a nested txn's header empty (revision 0); the
        // store fills in the revision.
        let nested = op(Request::RequestTxn(txn(vec![range_a(0)])));
        let r = store.txn(txn(vec![nested])).await.unwrap();
        let Some(Response::ResponseTxn(inner)) = &r.responses[0].response else {
            panic!("not a txn response: {r:?}");
        };
        assert_eq!(revision_of(&inner.header), 3);

        // FIXME: etcd answers "too many operations in txn request": a nested
        // txn may have only the 128 - 101 ops its parent leaves. The store
        // allows 128 at every level.
        let nested = op(Request::RequestTxn(txn((0..50)
            .map(|_| range_a(0))
            .collect())));
        let mut ops: Vec<RequestOp> = (0..100).map(|_| range_a(0)).collect();
        ops.push(nested);
        assert!(store.txn(txn(ops)).await.is_ok());

        // As etcd: a range in a txn whose negative revision is below the
        // compact revision (-5 on a new store; -1 after any compaction) is
        // "compacted"; a plain range, there as here, reads the current one.
        assert!(store.txn(txn(vec![range_a(-1)])).await.is_ok());
        let r = store.txn(txn(vec![range_a(-5)])).await;
        assert_eq!(r.unwrap_err(), kine::Error::Compacted);
        store.compact(2, true).await.unwrap();
        let r = store.txn(txn(vec![range_a(-1)])).await;
        assert_eq!(r.unwrap_err(), kine::Error::Compacted);

        ts.close().await;
    });
}
