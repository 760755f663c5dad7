//! kubernetes: the request shapes of kube-apiserver's etcd3 storage.
//!
//! - create: `Txn{MOD(key)==0 → Put}`
//! - update: `Txn{MOD(key)==rev → Put, else Range(key)}`, the revision taken
//!   from the client's own cache of its objects (as the watch cache gives
//!   kube-apiserver); a conflict refreshes it from the failure branch
//! - delete: `Txn{MOD(key)==rev → DeleteRange(key), else Range(key)}`
//! - get: a linearizable `Range(key)`
//! - list: pages of `--page-limit` keys of a namespace (or every one), the
//!   first at the current revision, the rest at the first page's, each
//!   continuing from the last key + "\0"
//!
//! - event: a create under a lease, as kube-apiserver writes Events (one
//!   lease per client, granted with Events' TTL and reused)
//! - alongside, `--watchers` watch the whole prefix from the preload's
//!   revision + 1 with prev_kv and progress_notify, each sending a progress
//!   request every 100 ms, as the watch cache does; the events they receive
//!   are counted
//!
//! Each client owns its own objects, so conflicts only come from outside.
//! Objects are 1–8 KiB by default.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use bytes::Bytes;
use kine::proto::compare::{CompareResult, CompareTarget, TargetUnion};
use kine::proto::kv_client::KvClient;
use kine::proto::request_op::Request;
use kine::proto::response_op::Response;
use kine::proto::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use tonic::Status;
use tonic::transport::Channel;

use super::{preload, result_from};
use crate::cli::{Global, KubernetesArgs};
use crate::conn;
use crate::keys::{prefix_end, random_bytes};
use crate::report::BenchResult;
use crate::runner::{Client, Outcome, run_closed_loop};
use crate::workloads::list::paged_list;

const CLASSES: [&str; 6] = ["create", "update", "delete", "get", "list", "event"];
/// Events' TTL in kube-apiserver (1 h) plus its 5 % / 60 s margin.
const EVENT_LEASE_TTL: i64 = 3660;

/// A compare of `key`'s mod_revision with `rev`.
pub fn mod_equals(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::ModRevision(rev)),
        range_end: Bytes::new(),
    }
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// The mod_revision the failure branch's Range saw (0: the key is gone).
fn failure_revision(resp: &TxnResponse) -> i64 {
    match resp.responses.first().and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0),
        _ => 0,
    }
}

struct Shape {
    prefix: String,
    namespaces: u64,
    cumulative: [u32; 5],
    page_limit: i64,
    cluster_wide_lists: bool,
    min_val: usize,
    max_val: usize,
    blob: Bytes,
}

impl Shape {
    fn namespace_prefix(&self, ns: u64) -> String {
        format!("{}ns-{ns:03}/", self.prefix)
    }

    fn key(&self, ns: u64, name: &str) -> Bytes {
        Bytes::from(format!("{}{name}", self.namespace_prefix(ns)))
    }

    fn value(&self, rng: &mut fastrand::Rng) -> Bytes {
        let len = rng.usize(self.min_val..=self.max_val);
        let start = rng.usize(0..=self.blob.len() - len);
        self.blob.slice(start..start + len)
    }
}

struct KubeClient {
    kv: KvClient<Channel>,
    shape: Arc<Shape>,
    id: usize,
    created: u64,
    /// This client's objects and their last known mod_revision.
    objects: Vec<(Bytes, i64)>,
    rng: fastrand::Rng,
    conflicts: Arc<AtomicU64>,
    /// The lease this client's events are written under.
    lease: i64,
    events: u64,
}

impl KubeClient {
    async fn event(&mut self) -> Result<(), Status> {
        let ns = self.rng.u64(0..self.shape.namespaces);
        let key: Bytes = format!(
            "{}events/ns{ns}/e{}-{}",
            self.shape.prefix, self.id, self.events
        )
        .into_bytes()
        .into();
        self.events += 1;
        let put = PutRequest {
            key: key.clone(),
            value: self.shape.value(&mut self.rng),
            lease: self.lease,
            ..Default::default()
        };
        let req = TxnRequest {
            compare: vec![mod_equals(&key, 0)],
            success: vec![op(Request::RequestPut(put))],
            failure: vec![],
        };
        self.kv.txn(req).await.map(drop)
    }

    async fn create(&mut self) -> Result<(), Status> {
        let ns = self.rng.u64(0..self.shape.namespaces);
        let key = self
            .shape
            .key(ns, &format!("c{}-{}", self.id, self.created));
        self.created += 1;
        let put = PutRequest {
            key: key.clone(),
            value: self.shape.value(&mut self.rng),
            ..Default::default()
        };
        let req = TxnRequest {
            compare: vec![mod_equals(&key, 0)],
            success: vec![op(Request::RequestPut(put))],
            failure: vec![],
        };
        let resp = self.kv.txn(req).await?.into_inner();
        if resp.succeeded {
            self.objects
                .push((key, resp.header.map(|h| h.revision).unwrap_or_default()));
        } else {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn update(&mut self) -> Result<(), Status> {
        let i = self.rng.usize(0..self.objects.len());
        let (key, rev) = self.objects[i].clone();
        let put = PutRequest {
            key: key.clone(),
            value: self.shape.value(&mut self.rng),
            ..Default::default()
        };
        let req = TxnRequest {
            compare: vec![mod_equals(&key, rev)],
            success: vec![op(Request::RequestPut(put))],
            failure: vec![op(Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            }))],
        };
        let resp = self.kv.txn(req).await?.into_inner();
        if resp.succeeded {
            self.objects[i].1 = resp.header.map(|h| h.revision).unwrap_or_default();
        } else {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            match failure_revision(&resp) {
                0 => {
                    self.objects.swap_remove(i);
                }
                now => self.objects[i].1 = now,
            }
        }
        Ok(())
    }

    async fn delete(&mut self) -> Result<(), Status> {
        let i = self.rng.usize(0..self.objects.len());
        let (key, rev) = self.objects.swap_remove(i);
        let req = TxnRequest {
            compare: vec![mod_equals(&key, rev)],
            success: vec![op(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            }))],
            failure: vec![op(Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            }))],
        };
        let resp = self.kv.txn(req).await?.into_inner();
        if !resp.succeeded {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            if let now @ 1.. = failure_revision(&resp) {
                self.objects.push((key, now));
            }
        }
        Ok(())
    }

    async fn get(&mut self) -> Result<(), Status> {
        let key = self.objects[self.rng.usize(0..self.objects.len())]
            .0
            .clone();
        self.kv
            .range(RangeRequest {
                key,
                ..Default::default()
            })
            .await
            .map(drop)
    }

    async fn list(&mut self) -> Result<(), Status> {
        let prefix = if self.shape.cluster_wide_lists {
            self.shape.prefix.clone()
        } else {
            self.shape
                .namespace_prefix(self.rng.u64(0..self.shape.namespaces))
        };
        let end = Bytes::from(prefix_end(prefix.as_bytes()));
        paged_list(
            &mut self.kv,
            Bytes::from(prefix),
            end,
            self.shape.page_limit,
            false,
        )
        .await
        .map(drop)
    }
}

impl Client for KubeClient {
    async fn call(&mut self, _: u64) -> Outcome {
        let roll = self.rng.u32(0..100);
        let mut class = self
            .shape
            .cumulative
            .iter()
            .position(|&c| roll < c)
            .unwrap_or(5);
        if self.objects.is_empty() && (1..=3).contains(&class) {
            class = 0;
        }
        let result = match class {
            0 => self.create().await,
            1 => self.update().await,
            2 => self.delete().await,
            3 => self.get().await,
            4 => self.list().await,
            _ => self.event().await,
        };
        Outcome { class, result }
    }
}

/// `kubernetes`.
pub async fn run(g: &Global, a: &KubernetesArgs) -> Result<BenchResult> {
    if a.min_val_size == 0
        || a.min_val_size > a.max_val_size
        || a.namespaces == 0
        || a.page_limit <= 0
    {
        bail!("need 0 < --min-val-size <= --max-val-size, --namespaces >= 1 and --page-limit >= 1");
    }
    let mix = [a.creates, a.updates, a.deletes, a.gets, a.lists, a.events];
    if mix.iter().sum::<u32>() != 100 {
        bail!(
            "--creates, --updates, --deletes, --gets, --lists and --events must add up to 100 (they add up to {})",
            mix.iter().sum::<u32>()
        );
    }
    let mut cumulative = [0u32; 5];
    let mut acc = 0;
    for (c, m) in cumulative.iter_mut().zip(mix) {
        acc += m;
        *c = acc;
    }
    let shape = Arc::new(Shape {
        prefix: a.prefix.clone(),
        namespaces: a.namespaces,
        cumulative,
        page_limit: a.page_limit,
        cluster_wide_lists: a.cluster_wide_lists,
        min_val: a.min_val_size,
        max_val: a.max_val_size,
        blob: random_bytes(a.max_val_size * 4, 9),
    });
    let channels = conn::connect(&g.endpoints, g.conns).await?;

    // Preloaded objects: object i lives in namespace i % namespaces and
    // belongs to client i % clients.
    let name = |i: u64| format!("obj-{i:08}");
    let revs = if a.preload > 0 {
        let s1 = shape.clone();
        let mut rng = fastrand::Rng::with_seed(99);
        let values: Vec<Bytes> = (0..64).map(|_| shape.value(&mut rng)).collect();
        preload(
            &channels,
            "preload objects",
            a.preload,
            !g.no_progress,
            Arc::new(move |i| s1.key(i % s1.namespaces, &name(i))),
            Arc::new(move |i| values[i as usize % values.len()].clone()),
        )
        .await?
    } else {
        Vec::new()
    };
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut leases = Vec::new();
    for c in 0..g.clients {
        let grant = kine::proto::LeaseGrantRequest {
            ttl: EVENT_LEASE_TTL,
            id: 0,
        };
        let lease = conn::lease(&channels[c % channels.len()])
            .lease_grant(grant)
            .await
            .map_err(|s| anyhow::anyhow!("LeaseGrant: {}", s.message()))?;
        leases.push(lease.into_inner().id);
    }
    let start_rev = revs.iter().copied().max().unwrap_or(0) + 1;
    let (watch_events, watchers) =
        start_watchers(&channels, &shape.prefix, a.watchers, start_rev).await?;
    let mut clients: Vec<KubeClient> = (0..g.clients)
        .map(|c| KubeClient {
            lease: leases[c],
            events: 0,
            kv: conn::kv(&channels[c % channels.len()]),
            shape: shape.clone(),
            id: c,
            created: 0,
            objects: Vec::new(),
            rng: fastrand::Rng::with_seed(1000 + c as u64),
            conflicts: conflicts.clone(),
        })
        .collect();
    for (i, rev) in revs.into_iter().enumerate() {
        let i = i as u64;
        clients[i as usize % g.clients]
            .objects
            .push((shape.key(i % shape.namespaces, &name(i)), rev));
    }
    let out = run_closed_loop(
        clients,
        CLASSES.len(),
        &g.run_opts("kubernetes", a.total, a.rate),
    )
    .await?;
    for w in watchers {
        w.abort();
    }
    let extra = BTreeMap::from([
        ("watchers".to_string(), a.watchers as f64),
        (
            "watch_events_received".to_string(),
            watch_events.load(Ordering::Relaxed) as f64,
        ),
        (
            "conflicts".to_string(),
            conflicts.load(Ordering::Relaxed) as f64,
        ),
        ("preloaded_objects".to_string(), a.preload as f64),
    ]);
    Ok(result_from(g, "kubernetes", &CLASSES, out, extra))
}

/// Opens `n` watchers of `prefix` from `start_rev`, spread over the
/// connections; returns the count of events they receive and their tasks.
async fn start_watchers(
    channels: &[Channel],
    prefix: &str,
    n: usize,
    start_rev: i64,
) -> Result<(Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>)> {
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    for i in 0..n {
        let create = kine::proto::WatchCreateRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: end.clone().into(),
            start_revision: start_rev,
            prev_kv: true,
            progress_notify: true,
            ..Default::default()
        };
        let (mut stream, _) =
            super::watch::WatchStream::open(&channels[i % channels.len()], create).await?;
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if stream.request_progress().await.is_err() {
                            return;
                        }
                    }
                    msg = stream.next() => match msg {
                        Ok(Some(resp)) => {
                            received.fetch_add(resp.events.len() as u64, Ordering::Relaxed);
                        }
                        _ => return,
                    },
                }
            }
        }));
    }
    Ok((received, tasks))
}
