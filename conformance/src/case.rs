//! What a case is and what it gets: a [`Ctx`] with clients, a key prefix
//! of its own and checks that turn a mismatch into a [`Failure`] naming the
//! request, the expected answer and the observed one.

use std::cell::RefCell;
use std::fmt::{self, Debug};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use kine::proto::*;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::client::Clients;
use crate::target::TargetKind;

/// A case's outcome.
pub type CaseResult = Result<(), Failure>;
/// A case body, boxed so the registry can hold it.
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult>>>;

/// How long a case waits for a response it expects.
pub const WAIT: Duration = Duration::from_secs(5);

/// One registered case.
#[derive(Clone, Copy)]
pub struct Case {
    /// Group (module) name: `kv`, `txn`, ...
    pub group: &'static str,
    /// Case name, unique in its group.
    pub name: &'static str,
    /// What the case needs from its target.
    pub flags: Flags,
    /// The body.
    pub run: fn(Ctx) -> CaseFuture,
}

impl Case {
    /// `group::name`.
    pub fn id(&self) -> String {
        format!("{}::{}", self.group, self.name)
    }
}

/// What a case needs from its target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    /// Needs an empty store of its own: it reads absolute revisions or
    /// ranges that would see other cases' keys.
    pub fresh: bool,
    /// Pins current etcd behaviour that 3.4.23 (the local oracle) lacks, so
    /// it runs only against k3rs (and newer etcds given by endpoint).
    pub k3rs_only: bool,
}

impl Flags {
    /// No requirements.
    pub const NONE: Flags = Flags {
        fresh: false,
        k3rs_only: false,
    };
    /// Marks the case as needing a fresh store.
    pub const fn fresh(self) -> Flags {
        Flags {
            fresh: true,
            ..self
        }
    }
    /// Marks the case k3rs-only.
    pub const fn k3rs_only(self) -> Flags {
        Flags {
            k3rs_only: true,
            ..self
        }
    }
}

/// Why a case failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What was checked.
    pub what: String,
    /// The request whose answer was checked.
    pub request: String,
    /// etcd's behaviour.
    pub expected: String,
    /// The target's answer.
    pub observed: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "    check:    {}", self.what)?;
        writeln!(f, "    request:  {}", self.request)?;
        writeln!(f, "    expected: {}", self.expected)?;
        write!(f, "    observed: {}", self.observed)
    }
}

/// An etcd error as it appears on the wire: gRPC code and exact message
/// (clients match on both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdError {
    /// The gRPC status code.
    pub code: Code,
    /// The exact status message.
    pub message: &'static str,
}

/// etcd's error table (rpctypes), the part the cases use.
pub mod errors {
    use super::EtcdError;
    use tonic::Code;

    /// Read or compact below the compacted revision.
    pub const COMPACTED: EtcdError = EtcdError {
        code: Code::OutOfRange,
        message: "etcdserver: mvcc: required revision has been compacted",
    };
    /// Read or compact past the current revision.
    pub const FUTURE_REV: EtcdError = EtcdError {
        code: Code::OutOfRange,
        message: "etcdserver: mvcc: required revision is a future revision",
    };
    /// Empty key.
    pub const EMPTY_KEY: EtcdError = EtcdError {
        code: Code::InvalidArgument,
        message: "etcdserver: key is not provided",
    };
    /// ignore_value/ignore_lease on a missing key.
    pub const KEY_NOT_FOUND: EtcdError = EtcdError {
        code: Code::InvalidArgument,
        message: "etcdserver: key not found",
    };
    /// ignore_value with a value.
    pub const VALUE_PROVIDED: EtcdError = EtcdError {
        code: Code::InvalidArgument,
        message: "etcdserver: value is provided",
    };
    /// ignore_lease with a lease.
    pub const LEASE_PROVIDED: EtcdError = EtcdError {
        code: Code::InvalidArgument,
        message: "etcdserver: lease is provided",
    };
    /// More than 128 ops in one branch.
    pub const TOO_MANY_OPS: EtcdError = EtcdError {
        code: Code::InvalidArgument,
        message: "etcdserver: too many operations in txn request",
    };
    /// Two writes to one key in a txn.
    pub const DUPLICATE_KEY: EtcdError = EtcdError {
        code: Code::InvalidArgument,
        message: "etcdserver: duplicate key given in txn request",
    };
    /// Over 1.5 MiB.
    pub const REQUEST_TOO_LARGE: EtcdError = EtcdError {
        code: Code::InvalidArgument,
        message: "etcdserver: request is too large",
    };
    /// Unknown sort order or target.
    pub const INVALID_SORT: EtcdError = EtcdError {
        code: Code::InvalidArgument,
        message: "etcdserver: invalid sort option",
    };
    /// Unknown lease.
    pub const LEASE_NOT_FOUND: EtcdError = EtcdError {
        code: Code::NotFound,
        message: "etcdserver: requested lease not found",
    };
    /// Granting an ID in use.
    pub const LEASE_EXISTS: EtcdError = EtcdError {
        code: Code::FailedPrecondition,
        message: "etcdserver: lease already exists",
    };
    /// TTL over 9e9 s.
    pub const LEASE_TTL_TOO_LARGE: EtcdError = EtcdError {
        code: Code::OutOfRange,
        message: "etcdserver: too large lease TTL",
    };
}

/// A unary etcd request: knows which service answers it.
pub trait Rpc: Debug + Clone {
    /// The response message.
    type Resp: Debug;
    /// Sends the request.
    fn send(self, c: &Clients) -> impl Future<Output = Result<Self::Resp, Status>>;
}

macro_rules! rpc {
    ($req:ty => $resp:ty, $svc:ident . $method:ident) => {
        impl Rpc for $req {
            type Resp = $resp;
            async fn send(self, c: &Clients) -> Result<$resp, Status> {
                let mut svc = c.$svc.clone();
                svc.$method(self).await.map(|r| r.into_inner())
            }
        }
    };
}

rpc!(RangeRequest => RangeResponse, kv.range);
rpc!(PutRequest => PutResponse, kv.put);
rpc!(DeleteRangeRequest => DeleteRangeResponse, kv.delete_range);
rpc!(TxnRequest => TxnResponse, kv.txn);
rpc!(CompactionRequest => CompactionResponse, kv.compact);
rpc!(LeaseGrantRequest => LeaseGrantResponse, lease.lease_grant);
rpc!(LeaseRevokeRequest => LeaseRevokeResponse, lease.lease_revoke);
rpc!(LeaseTimeToLiveRequest => LeaseTimeToLiveResponse, lease.lease_time_to_live);
rpc!(LeaseLeasesRequest => LeaseLeasesResponse, lease.lease_leases);
rpc!(StatusRequest => StatusResponse, maintenance.status);
rpc!(AlarmRequest => AlarmResponse, maintenance.alarm);
rpc!(DefragmentRequest => DefragmentResponse, maintenance.defragment);
rpc!(HashKvRequest => HashKvResponse, maintenance.hash_kv);
rpc!(MemberListRequest => MemberListResponse, cluster.member_list);

/// Shortens long debug text (a 1.5 MiB value) for reports.
pub fn clip(s: String) -> String {
    const MAX: usize = 1200;
    if s.len() <= MAX {
        return s;
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes)", &s[..cut], s.len())
}

fn show_status(s: &Status) -> String {
    format!("error {:?} {:?}", s.code(), s.message())
}

/// What a case gets: clients, its own key prefix, and the last request it
/// sent (for reports).
pub struct Ctx {
    /// The clients.
    pub c: Clients,
    /// Every key the case writes starts with this.
    pub prefix: Bytes,
    /// `http://host:port`, for external tools.
    pub endpoint: String,
    /// The kind of server.
    pub kind: TargetKind,
    last: RefCell<String>,
}

impl Ctx {
    /// A context over `c` with keys under `prefix`.
    pub fn new(c: Clients, prefix: Bytes, endpoint: String, kind: TargetKind) -> Ctx {
        Ctx {
            c,
            prefix,
            endpoint,
            kind,
            last: RefCell::new(String::from("(none yet)")),
        }
    }

    /// How many members the target's cluster has (its endpoint is one;
    /// a follower when there are several).
    pub fn members(&self) -> usize {
        match self.kind {
            TargetKind::K3rsRaft => 3,
            _ => 1,
        }
    }

    /// `prefix + name`.
    pub fn k(&self, name: &str) -> Bytes {
        let mut v = self.prefix.to_vec();
        v.extend_from_slice(name.as_bytes());
        v.into()
    }

    /// The end of the case's own key range.
    pub fn end(&self) -> Bytes {
        prefix_end(&self.prefix)
    }

    /// Records `what` as the request the next checks are about.
    pub fn note(&self, what: impl Into<String>) {
        *self.last.borrow_mut() = clip(what.into());
    }

    /// A failure about the last request.
    pub fn fail(
        &self,
        what: impl Into<String>,
        expected: impl Into<String>,
        observed: impl Into<String>,
    ) -> Failure {
        Failure {
            what: what.into(),
            request: self.last.borrow().clone(),
            expected: clip(expected.into()),
            observed: clip(observed.into()),
        }
    }

    /// Sends `req`, which must succeed.
    pub async fn ok<R: Rpc>(&self, req: R) -> Result<R::Resp, Failure> {
        self.note(format!("{req:?}"));
        req.send(&self.c)
            .await
            .map_err(|s| self.fail("request succeeds", "success", show_status(&s)))
    }

    /// Sends `req`, which must fail with exactly `want`.
    pub async fn err<R: Rpc>(&self, req: R, want: EtcdError) -> CaseResult {
        self.note(format!("{req:?}"));
        let expected = format!("error {:?} {:?}", want.code, want.message);
        match req.send(&self.c).await {
            Ok(resp) => Err(self.fail("request fails", expected, format!("success: {resp:?}"))),
            Err(s) if s.code() == want.code && s.message() == want.message => Ok(()),
            Err(s) => Err(self.fail("error code and message", expected, show_status(&s))),
        }
    }

    /// Fails unless `expected == observed`.
    pub fn eq<T: PartialEq + Debug>(&self, what: &str, expected: T, observed: T) -> CaseResult {
        if expected == observed {
            Ok(())
        } else {
            Err(self.fail(what, format!("{expected:?}"), format!("{observed:?}")))
        }
    }

    /// Fails unless `cond`.
    pub fn check(&self, what: &str, cond: bool, observed: impl Debug) -> CaseResult {
        if cond {
            Ok(())
        } else {
            Err(self.fail(what, "true", format!("{observed:?}")))
        }
    }

    /// The store's current revision, read with a range over the case's keys.
    pub async fn rev(&self) -> Result<i64, Failure> {
        let resp = self
            .ok(RangeRequest {
                key: self.prefix.clone(),
                range_end: self.end(),
                count_only: true,
                ..Default::default()
            })
            .await?;
        Ok(hrev(&resp.header))
    }

    /// Puts `value` at `prefix + name` and returns the put's revision.
    pub async fn put(&self, name: &str, value: &str) -> Result<i64, Failure> {
        let resp = self
            .ok(put(self.k(name), Bytes::copy_from_slice(value.as_bytes())))
            .await?;
        Ok(hrev(&resp.header))
    }

    /// Reads `prefix + name`.
    pub async fn get(&self, name: &str) -> Result<Option<KeyValue>, Failure> {
        let resp = self.ok(get(self.k(name))).await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Opens a watch stream whose first request is `first`, and returns the
    /// stream; the first response is left to read.
    pub async fn watch(&self, first: WatchRequest) -> Result<WatchStream, Failure> {
        self.watch_with(first, false).await
    }

    /// [`Ctx::watch`], optionally with Kubernetes' `hasleader: true` metadata.
    pub async fn watch_with(
        &self,
        first: WatchRequest,
        hasleader: bool,
    ) -> Result<WatchStream, Failure> {
        self.note(format!("Watch stream, first {first:?}"));
        let (tx, rx) = mpsc::channel(64);
        // gRPC servers may hold the response headers until the first
        // message, so queue it before waiting for the call to open.
        tx.send(first).await.expect("receiver is alive");
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if hasleader {
            request
                .metadata_mut()
                .insert("hasleader", "true".parse().expect("ascii"));
        }
        let mut client = self.c.watch.clone();
        let opened = tokio::time::timeout(WAIT, client.watch(request)).await;
        match opened {
            Err(_) => Err(self.fail("watch stream opens", "open", "timed out")),
            Ok(Err(s)) => Err(self.fail("watch stream opens", "open", show_status(&s))),
            Ok(Ok(resp)) => Ok(WatchStream {
                tx,
                rx: resp.into_inner(),
            }),
        }
    }

    /// Opens a lease keep-alive stream and sends `id` on it.
    pub async fn keep_alive(&self, id: i64) -> Result<KeepAliveStream, Failure> {
        self.note(format!(
            "LeaseKeepAlive stream, first LeaseKeepAliveRequest {{ id: {id} }}"
        ));
        let (tx, rx) = mpsc::channel(16);
        tx.send(LeaseKeepAliveRequest { id })
            .await
            .expect("receiver is alive");
        let mut client = self.c.lease.clone();
        match tokio::time::timeout(
            WAIT,
            client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        {
            Err(_) => Err(self.fail("keep-alive stream opens", "open", "timed out")),
            Ok(Err(s)) => Err(self.fail("keep-alive stream opens", "open", show_status(&s))),
            Ok(Ok(resp)) => Ok(KeepAliveStream {
                tx,
                rx: resp.into_inner(),
            }),
        }
    }
}

/// A bidirectional watch stream.
pub struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    /// Sends a request on the stream.
    pub async fn send(&self, cx: &Ctx, req: WatchRequest) -> CaseResult {
        cx.note(format!("Watch stream: {req:?}"));
        self.tx
            .send(req)
            .await
            .map_err(|_| cx.fail("watch request is sent", "sent", "stream closed"))
    }

    /// The next response, within [`WAIT`].
    pub async fn next(&mut self, cx: &Ctx) -> Result<WatchResponse, Failure> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Err(_) => Err(cx.fail(
                "a watch response arrives",
                "a response",
                "nothing within 5 s",
            )),
            Ok(Err(s)) => Err(cx.fail("a watch response arrives", "a response", show_status(&s))),
            Ok(Ok(None)) => Err(cx.fail("a watch response arrives", "a response", "stream ended")),
            Ok(Ok(Some(r))) => Ok(r),
        }
    }

    /// Fails if any response arrives within `d`.
    pub async fn silent(&mut self, cx: &Ctx, d: Duration) -> CaseResult {
        match tokio::time::timeout(d, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(r) => Err(cx.fail(
                format!("no watch response within {d:?}"),
                "nothing",
                format!("{r:?}"),
            )),
        }
    }

    /// Reads responses until `n` events arrived; returns the responses.
    pub async fn events(&mut self, cx: &Ctx, n: usize) -> Result<Vec<WatchResponse>, Failure> {
        let mut got = Vec::new();
        let mut count = 0;
        while count < n {
            let r = self.next(cx).await?;
            if r.events.is_empty() {
                return Err(cx.fail(
                    format!("{n} events arrive"),
                    "an event response",
                    format!("{r:?} after {got:?}"),
                ));
            }
            count += r.events.len();
            got.push(r);
        }
        if count != n {
            return Err(cx.fail(
                format!("exactly {n} events arrive"),
                n.to_string(),
                format!("{got:?}"),
            ));
        }
        Ok(got)
    }
}

/// A lease keep-alive stream.
pub struct KeepAliveStream {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl KeepAliveStream {
    /// Sends a keep-alive for `id`.
    pub async fn send(&self, cx: &Ctx, id: i64) -> CaseResult {
        cx.note(format!(
            "LeaseKeepAlive stream: LeaseKeepAliveRequest {{ id: {id} }}"
        ));
        self.tx
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| cx.fail("keep-alive is sent", "sent", "stream closed"))
    }

    /// The next response, within [`WAIT`].
    pub async fn next(&mut self, cx: &Ctx) -> Result<LeaseKeepAliveResponse, Failure> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Err(_) => Err(cx.fail(
                "a keep-alive response arrives",
                "a response",
                "nothing within 5 s",
            )),
            Ok(Err(s)) => Err(cx.fail(
                "a keep-alive response arrives",
                "a response",
                show_status(&s),
            )),
            Ok(Ok(None)) => Err(cx.fail(
                "a keep-alive response arrives",
                "a response",
                "stream ended",
            )),
            Ok(Ok(Some(r))) => Ok(r),
        }
    }
}

// ---- request builders ----

/// The header's revision (0 when missing).
pub fn hrev(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// The smallest key after every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

/// `Put{key, value}`.
pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// `Range{key}`.
pub fn get(key: impl Into<Bytes>) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

/// `Range{key, range_end}`.
pub fn range(key: impl Into<Bytes>, end: impl Into<Bytes>) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

/// `DeleteRange{key}`.
pub fn del(key: impl Into<Bytes>) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

/// `DeleteRange{key, range_end}`.
pub fn del_range(key: impl Into<Bytes>, end: impl Into<Bytes>) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

/// A txn op.
pub fn op_put(p: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(p)),
    }
}
/// A txn op.
pub fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}
/// A txn op.
pub fn op_del(d: DeleteRangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(d)),
    }
}
/// A txn op.
pub fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(t)),
    }
}

/// `Txn{compare, success, failure}`.
pub fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

pub use kine::proto::compare::{CompareResult as Cr, CompareTarget as Ct};

/// A compare on `key` (and `range_end` when non-empty).
pub fn cmp(key: impl Into<Bytes>, result: Cr, target: Ct, value: Tv) -> Compare {
    use kine::proto::compare::TargetUnion as U;
    let union = match value {
        Tv::Version(v) => U::Version(v),
        Tv::Create(v) => U::CreateRevision(v),
        Tv::Mod(v) => U::ModRevision(v),
        Tv::Value(v) => U::Value(Bytes::copy_from_slice(v.as_bytes())),
        Tv::Lease(v) => U::Lease(v),
    };
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        target_union: Some(union),
        range_end: Bytes::new(),
    }
}

/// A compare's operand.
#[derive(Debug, Clone)]
pub enum Tv {
    /// Version.
    Version(i64),
    /// Create revision.
    Create(i64),
    /// Mod revision.
    Mod(i64),
    /// Value.
    Value(String),
    /// Lease.
    Lease(i64),
}

/// The compare target matching an operand.
pub fn target_of(v: &Tv) -> Ct {
    match v {
        Tv::Version(_) => Ct::Version,
        Tv::Create(_) => Ct::Create,
        Tv::Mod(_) => Ct::Mod,
        Tv::Value(_) => Ct::Value,
        Tv::Lease(_) => Ct::Lease,
    }
}

/// An expected key-value.
pub fn kv(key: Bytes, value: &str, create: i64, modr: i64, version: i64) -> KeyValue {
    KeyValue {
        key,
        create_revision: create,
        mod_revision: modr,
        version,
        value: Bytes::copy_from_slice(value.as_bytes()),
        lease: 0,
    }
}

/// The keys of `kvs`, as text, for compact comparisons.
pub fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|k| String::from_utf8_lossy(&k.key).into_owned())
        .collect()
}

/// A create request.
pub fn watch_create(c: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(c)),
    }
}

/// A cancel request.
pub fn watch_cancel(watch_id: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id },
        )),
    }
}

/// A progress request.
pub fn watch_progress() -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    }
}

/// An expected watch event.
pub fn ev_put(kv: KeyValue, prev: Option<KeyValue>) -> Event {
    Event {
        r#type: kine::proto::mvccpb::event::EventType::Put as i32,
        kv: Some(kv),
        prev_kv: prev,
    }
}

/// An expected delete event: the tombstone carries only key and revision.
pub fn ev_del(key: Bytes, rev: i64, prev: Option<KeyValue>) -> Event {
    Event {
        r#type: kine::proto::mvccpb::event::EventType::Delete as i32,
        kv: Some(KeyValue {
            key,
            mod_revision: rev,
            ..Default::default()
        }),
        prev_kv: prev,
    }
}

/// The response with header identity fields (cluster, member, term) masked:
/// those legitimately differ between servers.
pub fn masked(h: &Option<ResponseHeader>) -> Option<ResponseHeader> {
    h.as_ref().map(|h| ResponseHeader {
        cluster_id: 0,
        member_id: 0,
        raft_term: 0,
        revision: h.revision,
    })
}
