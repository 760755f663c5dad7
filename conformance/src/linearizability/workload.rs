//! The workload and history recorder: concurrent clients doing random
//! operations over a few keys, a compactor, watchers, and (for a k3rs
//! process) kill -9 faults with restarts on the same data directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use kine::proto::compare::{CompareResult, CompareTarget, TargetUnion};
use kine::proto::kv_client::KvClient;
use kine::proto::lease_client::LeaseClient;
use kine::proto::request_op::Request as ReqOp;
use kine::proto::response_op::Response as RespOp;
use kine::proto::watch_client::WatchClient;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{
    CompactionRequest, Compare, DeleteRangeRequest, KeyValue, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::history::{INFINITY, Op};
use super::model::{
    Cmp, EtcdError, Event, Key, Kv, Request, Response, State, value_bytes, value_id, value_of,
};
use super::server::K3rsProcess;
use super::watch::{WatchLog, WatchResp};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Concurrent KV/lease clients (the compactor is one more).
    pub clients: usize,
    /// Keys, at most 100 (`<prefix>k00` …).
    pub keys: usize,
    pub prefix: String,
    pub duration: Duration,
    /// Watchers on the whole prefix from revision 1, with prev_kv.
    pub watchers: usize,
    /// kill -9 + restart cycles (needs a [`K3rsProcess`]).
    pub kills: usize,
    pub request_timeout: Duration,
    pub compact_interval: Duration,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            clients: 8,
            keys: 10,
            prefix: "/lin/".into(),
            duration: Duration::from_secs(15),
            watchers: 2,
            kills: 0,
            request_timeout: Duration::from_secs(3),
            compact_interval: Duration::from_millis(400),
            seed: 0x6b33_7273,
        }
    }
}

/// Everything a run recorded.
pub struct Recorded {
    pub ops: Vec<Op>,
    pub keys: Vec<String>,
    pub init: State,
    pub watches: Vec<WatchLog>,
    /// A watch opened after the run from a middle revision.
    pub resumed: Option<WatchLog>,
    /// The header revision of the final list (a recorded op).
    pub final_rev: i64,
    pub kills: usize,
}

/// A small deterministic PRNG (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Shared {
    start: Instant,
    up: AtomicBool,
    stop: AtomicBool,
    max_rev: AtomicI64,
    watch_floor: Vec<AtomicI64>,
    watch_until: AtomicI64,
    watch_abort: AtomicBool,
    keys: Vec<Vec<u8>>,
    prefix: Vec<u8>,
    range_end: Vec<u8>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn key_index(&self, k: &[u8]) -> Key {
        self.keys
            .iter()
            .position(|x| x == k)
            .map_or(255, |i| i as Key)
    }
    fn kv(&self, kv: &KeyValue) -> Kv {
        Kv {
            key: self.key_index(&kv.key),
            value: value_id(&kv.value),
            create: kv.create_revision,
            modr: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
    fn saw(&self, rev: i64) {
        self.max_rev.fetch_max(rev, SeqCst);
    }
    async fn wait_up(&self) {
        while !self.up.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn channel(endpoint: &str) -> Channel {
    Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy()
}

fn classify(s: &Status) -> Response {
    match s.code() {
        Code::OutOfRange if s.message().contains("compacted") => {
            Response::Error(EtcdError::Compacted)
        }
        Code::OutOfRange if s.message().contains("future") => Response::Error(EtcdError::FutureRev),
        Code::NotFound if s.message().contains("lease") => {
            Response::Error(EtcdError::LeaseNotFound)
        }
        c => Response::Unknown(format!("{c:?}: {}", s.message())),
    }
}

struct Conn {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
}

impl Conn {
    fn new(endpoint: &str) -> Self {
        let ch = channel(endpoint);
        Conn {
            kv: KvClient::new(ch.clone()),
            lease: LeaseClient::new(ch),
        }
    }

    async fn execute(&mut self, sh: &Shared, req: &Request) -> Result<Response, Status> {
        let key = |k: Key| sh.keys[k as usize].clone();
        let rev = |h: Option<kine::proto::ResponseHeader>| h.map_or(0, |h| h.revision);
        Ok(match *req {
            Request::Get { key: k } => {
                let r = self
                    .kv
                    .range(RangeRequest {
                        key: key(k).into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Response::Get {
                    rev: rev(r.header),
                    kv: r.kvs.first().map(|kv| sh.kv(kv)),
                }
            }
            Request::List => {
                let r = self
                    .kv
                    .range(RangeRequest {
                        key: sh.prefix.clone().into(),
                        range_end: sh.range_end.clone().into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Response::List {
                    rev: rev(r.header),
                    kvs: r.kvs.iter().map(|kv| sh.kv(kv)).collect(),
                }
            }
            Request::Put {
                key: k,
                value,
                lease,
            } => {
                let r = self
                    .kv
                    .put(PutRequest {
                        key: key(k).into(),
                        value: value_bytes(value).into(),
                        lease,
                        prev_kv: true,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Response::Put {
                    rev: rev(r.header),
                    prev: Some(r.prev_kv.as_ref().map(|kv| sh.kv(kv))),
                }
            }
            Request::Delete { key: k } => {
                let r = self
                    .kv
                    .delete_range(DeleteRangeRequest {
                        key: key(k).into(),
                        prev_kv: true,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Response::Delete {
                    rev: rev(r.header),
                    deleted: r.deleted,
                    prev: r.prev_kvs.iter().map(|kv| sh.kv(kv)).collect(),
                }
            }
            Request::Cas { key: k, cmp, value } => {
                let (target, union) = match cmp {
                    Cmp::ModRevision(m) => (CompareTarget::Mod, TargetUnion::ModRevision(m)),
                    Cmp::Value(v) => (
                        CompareTarget::Value,
                        TargetUnion::Value(value_bytes(v).into()),
                    ),
                };
                let txn = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: target as i32,
                        key: key(k).into(),
                        target_union: Some(union),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(ReqOp::RequestPut(PutRequest {
                            key: key(k).into(),
                            value: value_bytes(value).into(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(ReqOp::RequestRange(RangeRequest {
                            key: key(k).into(),
                            ..Default::default()
                        })),
                    }],
                };
                let r = self.kv.txn(txn).await?.into_inner();
                let kv = match r.responses.first().and_then(|o| o.response.as_ref()) {
                    Some(RespOp::ResponseRange(rr)) if !r.succeeded => {
                        rr.kvs.first().map(|kv| sh.kv(kv))
                    }
                    _ => None,
                };
                Response::Cas {
                    rev: rev(r.header),
                    succeeded: r.succeeded,
                    kv,
                }
            }
            Request::LeaseGrant => {
                let r = self
                    .lease
                    .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
                    .await?
                    .into_inner();
                Response::LeaseGrant {
                    rev: rev(r.header),
                    id: r.id,
                }
            }
            Request::LeaseRevoke { id } => {
                let r = self
                    .lease
                    .lease_revoke(LeaseRevokeRequest { id })
                    .await?
                    .into_inner();
                Response::LeaseRevoke { rev: rev(r.header) }
            }
            Request::Compact { revision } => {
                let r = self
                    .kv
                    .compact(CompactionRequest {
                        revision,
                        physical: false,
                    })
                    .await?
                    .into_inner();
                Response::Compact { rev: rev(r.header) }
            }
        })
    }

    /// Runs `req` and records it.
    async fn record(&mut self, sh: &Shared, client: usize, req: Request, timeout: Duration) -> Op {
        let invoke = sh.now();
        let resp = match tokio::time::timeout(timeout, self.execute(sh, &req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(status)) => classify(&status),
            Err(_) => Response::Unknown(format!("no answer in {timeout:?}")),
        };
        let ret = if resp.is_unknown() {
            INFINITY
        } else {
            sh.now()
        };
        match &resp {
            Response::Get { rev, .. }
            | Response::List { rev, .. }
            | Response::Put { rev, .. }
            | Response::Delete { rev, .. }
            | Response::Cas { rev, .. }
            | Response::LeaseGrant { rev, .. }
            | Response::LeaseRevoke { rev }
            | Response::Compact { rev } => sh.saw(*rev),
            _ => {}
        }
        Op {
            client,
            req,
            resp,
            invoke,
            ret,
        }
    }
}

async fn client_loop(id: usize, sh: Arc<Shared>, endpoint: String, cfg: Config) -> Vec<Op> {
    let mut conn = Conn::new(&endpoint);
    let mut rng = Rng(cfg.seed ^ (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut seq = 0u32;
    let mut leases: Vec<i64> = Vec::new();
    let mut revoked: Vec<i64> = Vec::new();
    let mut known: Vec<Option<Kv>> = vec![None; cfg.keys];
    let mut ops = Vec::new();
    while !sh.stop.load(SeqCst) {
        sh.wait_up().await;
        let key = rng.below(cfg.keys) as Key;
        let mut fresh = || {
            seq += 1;
            value_of(id, seq)
        };
        let req = match rng.below(100) {
            0..20 => Request::Get { key },
            20..28 => Request::List,
            28..46 => Request::Put {
                key,
                value: fresh(),
                lease: 0,
            },
            46..54 => Request::Delete { key },
            54..76 => {
                let cmp = match known[key as usize] {
                    Some(kv) if rng.below(2) == 0 => Cmp::Value(kv.value),
                    Some(kv) => Cmp::ModRevision(kv.modr),
                    None => Cmp::ModRevision(0),
                };
                Request::Cas {
                    key,
                    cmp,
                    value: fresh(),
                }
            }
            76..88 if !leases.is_empty() => {
                let lease = if !revoked.is_empty() && rng.below(8) == 0 {
                    revoked[rng.below(revoked.len())]
                } else {
                    leases[rng.below(leases.len())]
                };
                Request::Put {
                    key,
                    value: fresh(),
                    lease,
                }
            }
            88..94 if !leases.is_empty() => {
                let id = leases.swap_remove(rng.below(leases.len()));
                revoked.push(id);
                Request::LeaseRevoke { id }
            }
            _ if leases.len() < 3 => Request::LeaseGrant,
            _ => Request::Get { key },
        };
        let op = conn.record(&sh, id, req, cfg.request_timeout).await;
        match (&op.req, &op.resp) {
            (Request::Get { key }, Response::Get { kv, .. }) => known[*key as usize] = *kv,
            (
                Request::Cas { key, .. },
                Response::Cas {
                    succeeded: false,
                    kv,
                    ..
                },
            ) => known[*key as usize] = *kv,
            (Request::Put { key, value, .. }, Response::Put { rev, .. })
            | (
                Request::Cas { key, value, .. },
                Response::Cas {
                    rev,
                    succeeded: true,
                    ..
                },
            ) => {
                known[*key as usize] = Some(Kv {
                    key: *key,
                    value: *value,
                    create: 0,
                    modr: *rev,
                    version: 0,
                    lease: 0,
                });
            }
            (Request::Delete { key }, Response::Delete { .. }) => known[*key as usize] = None,
            (Request::List, Response::List { kvs, .. }) => {
                known.iter_mut().for_each(|k| *k = None);
                for kv in kvs {
                    if let Some(slot) = known.get_mut(kv.key as usize) {
                        *slot = Some(*kv);
                    }
                }
            }
            (Request::LeaseGrant, Response::LeaseGrant { id, .. }) => leases.push(*id),
            _ => {}
        }
        let unknown = op.resp.is_unknown();
        ops.push(op);
        if unknown {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    ops
}

/// Compacts every `compact_interval` to a recent revision no watcher still
/// needs; sometimes to a future or an already compacted revision.
async fn compactor_loop(id: usize, sh: Arc<Shared>, endpoint: String, cfg: Config) -> Vec<Op> {
    let mut conn = Conn::new(&endpoint);
    let mut rng = Rng(cfg.seed ^ 0xc0_4ac7);
    let mut ops = Vec::new();
    let mut last = 0i64;
    while !sh.stop.load(SeqCst) {
        tokio::time::sleep(cfg.compact_interval).await;
        if !sh.up.load(SeqCst) || sh.stop.load(SeqCst) {
            continue;
        }
        let max = sh.max_rev.load(SeqCst);
        let floor = sh
            .watch_floor
            .iter()
            .map(|w| w.load(SeqCst))
            .min()
            .unwrap_or(max)
            .min(max);
        let revision = match rng.below(10) {
            0 => max + 100,
            1 if last > 0 => last,
            _ => floor - rng.below(5) as i64,
        };
        if revision < 2 {
            continue;
        }
        let op = conn
            .record(&sh, id, Request::Compact { revision }, cfg.request_timeout)
            .await;
        if matches!(op.resp, Response::Compact { .. }) {
            last = revision;
        }
        ops.push(op);
    }
    ops
}

fn events(sh: &Shared, evs: &[kine::proto::Event]) -> Vec<Event> {
    evs.iter()
        .map(|e| Event {
            delete: e.r#type == kine::proto::mvccpb::event::EventType::Delete as i32,
            kv: e.kv.as_ref().map(|kv| sh.kv(kv)).unwrap_or(Kv {
                key: 255,
                value: 0,
                create: 0,
                modr: 0,
                version: 0,
                lease: 0,
            }),
            prev: e.prev_kv.as_ref().map(|kv| sh.kv(kv)),
        })
        .collect()
}

/// Watches the prefix from `start_rev` with prev_kv until it has seen the
/// final revision; reconnects from the next revision when the stream breaks.
async fn watch_loop(
    name: String,
    slot: Option<usize>,
    sh: Arc<Shared>,
    endpoint: String,
    start_rev: i64,
) -> WatchLog {
    let mut log = WatchLog {
        name,
        start_rev,
        last_rev: start_rev - 1,
        ..Default::default()
    };
    let done = |last: i64| {
        let until = sh.watch_until.load(SeqCst);
        sh.watch_abort.load(SeqCst) || (until > 0 && last >= until)
    };
    let mut stream_no = 0;
    'outer: while !done(log.last_rev) {
        if !sh.up.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let mut client = WatchClient::new(channel(&endpoint));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchCreateRequest {
            key: sh.prefix.clone().into(),
            range_end: sh.range_end.clone().into(),
            start_revision: log.last_rev + 1,
            prev_kv: true,
            ..Default::default()
        };
        let _ = tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await;
        let mut stream = match tokio::time::timeout(
            Duration::from_secs(2),
            client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        {
            Ok(Ok(s)) => s.into_inner(),
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stream_no += 1;
        loop {
            if done(log.last_rev) {
                break 'outer;
            }
            match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(resp))) => {
                    if resp.canceled {
                        log.problems.push(format!(
                            "{}: watch canceled (compact_revision {}, reason {:?}) at revision {}",
                            log.name, resp.compact_revision, resp.cancel_reason, log.last_rev
                        ));
                        break 'outer;
                    }
                    if resp.events.is_empty() {
                        continue;
                    }
                    let evs = events(&sh, &resp.events);
                    let at = sh.now();
                    log.last_rev = log
                        .last_rev
                        .max(evs.iter().map(|e| e.kv.modr).max().unwrap_or(0));
                    log.responses.push(WatchResp {
                        at,
                        stream: stream_no,
                        header_rev: resp.header.map_or(0, |h| h.revision),
                        events: evs,
                    });
                    if let Some(i) = slot {
                        sh.watch_floor[i].store(log.last_rev, SeqCst);
                    }
                }
                Ok(_) => {
                    // Stream broken (server killed): resume after the last revision.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'outer;
                }
            }
        }
    }
    let until = sh.watch_until.load(SeqCst);
    if log.last_rev < until {
        log.problems.push(format!(
            "{}: saw revisions only up to {}, the run ended at {until} (reliable)",
            log.name, log.last_rev
        ));
    }
    log
}

/// Joins `handles`, giving up (and telling the watchers to stop) after `wait`.
async fn join_watchers(
    sh: &Shared,
    handles: Vec<tokio::task::JoinHandle<WatchLog>>,
    wait: Duration,
) -> Vec<WatchLog> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    for mut h in handles {
        let log = match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(r) => r,
            Err(_) => {
                sh.watch_abort.store(true, SeqCst);
                h.await
            }
        };
        out.push(log.expect("watcher task"));
    }
    out
}

/// Runs the workload against `endpoint` (or against `process`, which is
/// then killed and restarted `cfg.kills` times) and records everything.
/// Returns the process so the caller decides when it stops.
pub async fn record(
    endpoint: String,
    cfg: &Config,
    process: Option<K3rsProcess>,
) -> (Recorded, Option<K3rsProcess>) {
    let (kills, duration) = (cfg.kills, cfg.duration);
    record_on(vec![endpoint], cfg, move |sh: Arc<Shared>| {
        tokio::spawn(async move {
            let mut process = process;
            if let Some(p) = process.as_mut() {
                for i in 0..kills {
                    tokio::time::sleep_until(
                        (sh.start + duration * (i as u32 + 1) / (kills as u32 + 1)).into(),
                    )
                    .await;
                    sh.up.store(false, SeqCst);
                    p.kill();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Err(e) = p.restart().await {
                        panic!("restarting k3rs after kill -9: {e}");
                    }
                    sh.up.store(true, SeqCst);
                }
            }
            let killed = process.as_ref().map_or(0, |p| p.kills);
            (process, killed)
        })
    })
    .await
}

/// Runs the workload against several servers of one cluster: client `i`
/// and watcher `i` talk to `endpoints[i % n]`, the compactor and the final
/// read to the first. `faults` runs beside the workload (it kills servers,
/// cuts the database...) and returns how many servers it killed; the
/// clients are not paused for it.
pub async fn record_cluster(
    endpoints: Vec<String>,
    cfg: &Config,
    faults: impl std::future::Future<Output = usize> + Send + 'static,
) -> Recorded {
    record_on(endpoints, cfg, move |_| {
        tokio::spawn(async move { (None, faults.await) })
    })
    .await
    .0
}

async fn record_on(
    endpoints: Vec<String>,
    cfg: &Config,
    faults: impl FnOnce(Arc<Shared>) -> tokio::task::JoinHandle<(Option<K3rsProcess>, usize)>,
) -> (Recorded, Option<K3rsProcess>) {
    assert!(cfg.keys <= 100, "at most 100 keys");
    let at = |i: usize| endpoints[i % endpoints.len()].clone();
    let endpoint = at(0);
    let keys: Vec<String> = (0..cfg.keys)
        .map(|i| format!("{}k{i:02}", cfg.prefix))
        .collect();
    let sh = Arc::new(Shared {
        start: Instant::now(),
        up: AtomicBool::new(true),
        stop: AtomicBool::new(false),
        max_rev: AtomicI64::new(1),
        watch_floor: (0..cfg.watchers).map(|_| AtomicI64::new(0)).collect(),
        watch_until: AtomicI64::new(0),
        watch_abort: AtomicBool::new(false),
        keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        prefix: cfg.prefix.as_bytes().to_vec(),
        range_end: prefix_end(cfg.prefix.as_bytes()),
    });
    let watchers: Vec<_> = (0..cfg.watchers)
        .map(|i| {
            tokio::spawn(watch_loop(
                format!("watcher w{i}"),
                Some(i),
                sh.clone(),
                at(i),
                1,
            ))
        })
        .collect();
    let clients: Vec<_> = (0..cfg.clients)
        .map(|i| tokio::spawn(client_loop(i, sh.clone(), at(i), cfg.clone())))
        .collect();
    let compactor = tokio::spawn(compactor_loop(
        cfg.clients,
        sh.clone(),
        endpoint.clone(),
        cfg.clone(),
    ));
    let faults = faults(sh.clone());
    tokio::time::sleep_until((sh.start + cfg.duration).into()).await;
    sh.stop.store(true, SeqCst);
    let (process, kills) = faults.await.expect("fault task");
    let mut ops = Vec::new();
    for c in clients {
        ops.extend(c.await.expect("client task"));
    }
    ops.extend(compactor.await.expect("compactor task"));

    // The final read: everything acknowledged must be in it.
    let mut conn = Conn::new(&endpoint);
    let final_rev = loop {
        sh.up.store(true, SeqCst);
        let op = conn
            .record(&sh, cfg.clients + 1, Request::List, cfg.request_timeout)
            .await;
        let rev = match op.resp {
            Response::List { rev, .. } => Some(rev),
            _ => None,
        };
        ops.push(op);
        if let Some(rev) = rev {
            break rev;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sh.watch_until.store(final_rev, SeqCst);
    let watches = join_watchers(&sh, watchers, Duration::from_secs(15)).await;

    // Resumable: a new watch from a middle revision, after the last compaction.
    let compacted = ops
        .iter()
        .filter_map(|o| match (&o.req, &o.resp) {
            (Request::Compact { revision }, Response::Compact { .. }) => Some(*revision),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let resumed = if cfg.watchers > 0 && final_rev > 2 {
        let from = (compacted + 1).max(final_rev / 2).min(final_rev);
        sh.watch_abort.store(false, SeqCst);
        let h = tokio::spawn(watch_loop(
            format!("resumed watch from {from}"),
            None,
            sh.clone(),
            at(endpoints.len() - 1),
            from,
        ));
        join_watchers(&sh, vec![h], Duration::from_secs(10))
            .await
            .pop()
    } else {
        None
    };
    ops.sort_by_key(|o| (o.invoke, o.client));
    (
        Recorded {
            ops,
            keys,
            init: State::new(cfg.keys),
            watches,
            resumed,
            final_rev,
            kills,
        },
        process,
    )
}
