//! list (Kubernetes-style paged lists) and count (count_only over a prefix).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use bytes::Bytes;
use kine::proto::RangeRequest;
use kine::proto::kv_client::KvClient;
use tonic::Status;
use tonic::transport::Channel;

use super::{ensure_prefix, result_from};
use crate::cli::{Consistency, CountArgs, Global, ListArgs};
use crate::conn;
use crate::keys::{key_after, prefix_end};
use crate::report::BenchResult;
use crate::runner::{Client, Outcome, run_closed_loop};

/// What one paged list returned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// Keys in all pages.
    pub keys: u64,
    /// Pages fetched.
    pub pages: u64,
    /// The revision every page was read at.
    pub revision: i64,
}

/// Lists `[key, end)` as kube-apiserver does: pages of `limit` keys, the
/// first at the current revision and the rest at the first page's revision,
/// each page starting just after the last key of the one before.
pub async fn paged_list(
    kv: &mut KvClient<Channel>,
    key: Bytes,
    end: Bytes,
    limit: i64,
    serializable: bool,
) -> Result<Listed, Status> {
    let mut listed = Listed::default();
    let mut start = key;
    loop {
        let resp = kv
            .range(RangeRequest {
                key: start,
                range_end: end.clone(),
                limit,
                revision: listed.revision,
                serializable,
                ..Default::default()
            })
            .await?
            .into_inner();
        listed.pages += 1;
        if listed.revision == 0 {
            listed.revision = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
        }
        listed.keys += resp.kvs.len() as u64;
        match resp.kvs.last() {
            Some(last) if resp.more => start = key_after(&last.key),
            _ => return Ok(listed),
        }
    }
}

struct ListClient {
    kv: KvClient<Channel>,
    key: Bytes,
    end: Bytes,
    limit: i64,
    serializable: bool,
    keys: Arc<AtomicU64>,
    pages: Arc<AtomicU64>,
}

impl Client for ListClient {
    async fn call(&mut self, _: u64) -> Outcome {
        let r = paged_list(
            &mut self.kv,
            self.key.clone(),
            self.end.clone(),
            self.limit,
            self.serializable,
        )
        .await;
        Outcome::of(r.map(|l| {
            self.keys.fetch_add(l.keys, Ordering::Relaxed);
            self.pages.fetch_add(l.pages, Ordering::Relaxed);
        }))
    }
}

/// `list`.
pub async fn list(g: &Global, a: &ListArgs) -> Result<BenchResult> {
    if a.limit <= 0 {
        bail!("--limit must be at least 1 for a paged list");
    }
    let channels = conn::connect(&g.endpoints, g.conns).await?;
    ensure_prefix(&channels, &a.prefix, a.preload, a.val_size, !g.no_progress).await?;
    let (keys, pages) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients = (0..g.clients)
        .map(|i| ListClient {
            kv: conn::kv(&channels[i % channels.len()]),
            key: Bytes::from(a.prefix.clone()),
            end: Bytes::from(prefix_end(a.prefix.as_bytes())),
            limit: a.limit,
            serializable: a.consistency == Consistency::S,
            keys: keys.clone(),
            pages: pages.clone(),
        })
        .collect();
    let out = run_closed_loop(clients, 1, &g.run_opts("list", a.total, a.rate)).await?;
    let lists = out.recorders[0].len().max(1) as f64;
    let (keys, pages) = (
        keys.load(Ordering::Relaxed) as f64,
        pages.load(Ordering::Relaxed) as f64,
    );
    let extra = BTreeMap::from([
        ("keys_per_list".to_string(), keys / lists),
        ("pages_per_list".to_string(), pages / lists),
        (
            "pages_per_sec".to_string(),
            pages / out.elapsed.as_secs_f64().max(1e-9),
        ),
    ]);
    Ok(result_from(g, "list", &["list"], out, extra))
}

struct CountClient {
    kv: KvClient<Channel>,
    req: RangeRequest,
    last_count: Arc<AtomicU64>,
}

impl Client for CountClient {
    async fn call(&mut self, _: u64) -> Outcome {
        Outcome::of(self.kv.range(self.req.clone()).await.map(|r| {
            self.last_count
                .store(r.into_inner().count as u64, Ordering::Relaxed);
        }))
    }
}

/// `count`.
pub async fn count(g: &Global, a: &CountArgs) -> Result<BenchResult> {
    let channels = conn::connect(&g.endpoints, g.conns).await?;
    ensure_prefix(&channels, &a.prefix, a.preload, a.val_size, !g.no_progress).await?;
    let last_count = Arc::new(AtomicU64::new(0));
    let req = RangeRequest {
        key: Bytes::from(a.prefix.clone()),
        range_end: Bytes::from(prefix_end(a.prefix.as_bytes())),
        count_only: true,
        serializable: a.consistency == Consistency::S,
        ..Default::default()
    };
    let clients = (0..g.clients)
        .map(|i| CountClient {
            kv: conn::kv(&channels[i % channels.len()]),
            req: req.clone(),
            last_count: last_count.clone(),
        })
        .collect();
    let out = run_closed_loop(clients, 1, &g.run_opts("count", a.total, a.rate)).await?;
    let extra = BTreeMap::from([(
        "keys_counted".to_string(),
        last_count.load(Ordering::Relaxed) as f64,
    )]);
    Ok(result_from(g, "count", &["count"], out, extra))
}
