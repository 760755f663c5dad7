//! The workloads, and what they share: building results and preloading keys.

pub mod kubernetes;
pub mod kv;
pub mod lease;
pub mod list;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use kine::proto::request_op::Request;
use kine::proto::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

use crate::cli::Global;
use crate::conn;
use crate::keys::prefix_end;
use crate::report::{BenchResult, Section};
use crate::runner::{Progress, RunOutput, status_error};

/// Puts per preload txn: under etcd's default limit of 128 ops per txn.
pub const PRELOAD_BATCH: u64 = 100;
/// Preload txns in flight.
const PRELOAD_CONCURRENCY: usize = 8;

/// A result with one section per class of `out`, named by `names`, after
/// an "all" section when there are several classes.
pub fn result_from(
    g: &Global,
    workload: &str,
    names: &[&str],
    out: RunOutput,
    extra: BTreeMap<String, f64>,
) -> BenchResult {
    let mut sections = Vec::new();
    if names.len() > 1 {
        let mut all = crate::stats::Recorder::default();
        for r in &out.recorders {
            all.merge(r.clone());
        }
        sections.push(Section {
            name: "all".to_string(),
            summary: all.summarize(out.elapsed),
        });
    }
    sections.extend(
        names
            .iter()
            .zip(out.recorders)
            .filter(|(_, r)| names.len() == 1 || !r.is_empty())
            .map(|(name, r)| Section {
                name: name.to_string(),
                summary: r.summarize(out.elapsed),
            }),
    );
    new_result(g, workload, sections, extra)
}

/// A result with the given sections.
pub fn new_result(
    g: &Global,
    workload: &str,
    sections: Vec<Section>,
    extra: BTreeMap<String, f64>,
) -> BenchResult {
    BenchResult {
        workload: workload.to_string(),
        endpoints: g.endpoints.clone(),
        conns: g.conns,
        clients: g.clients,
        sections,
        extra,
    }
}

/// The number of keys under `prefix` (a count_only Range).
pub async fn count_prefix(channel: &Channel, prefix: &[u8]) -> Result<i64> {
    let resp = conn::kv(channel)
        .range(RangeRequest {
            key: Bytes::copy_from_slice(prefix),
            range_end: Bytes::from(prefix_end(prefix)),
            count_only: true,
            ..Default::default()
        })
        .await
        .map_err(|s| status_error("Range", s))?;
    Ok(resp.into_inner().count)
}

/// Writes keys `0..n` (`key_of`, `value_of`) in txns of `PRELOAD_BATCH`
/// puts, several in flight; returns each key's mod_revision.
pub async fn preload(
    channels: &[Channel],
    label: &str,
    n: u64,
    progress: bool,
    key_of: Arc<dyn Fn(u64) -> Bytes + Send + Sync>,
    value_of: Arc<dyn Fn(u64) -> Bytes + Send + Sync>,
) -> Result<Vec<i64>> {
    let batches = n.div_ceil(PRELOAD_BATCH);
    let next = Arc::new(AtomicU64::new(0));
    let bar = Progress::start(label, n, progress);
    let done = bar.counter();
    let mut tasks = Vec::new();
    for t in 0..PRELOAD_CONCURRENCY.min(batches as usize) {
        let mut kv = conn::kv(&channels[t % channels.len()]);
        let (next, done, key_of, value_of) =
            (next.clone(), done.clone(), key_of.clone(), value_of.clone());
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<_, anyhow::Error>(revs);
                }
                let range = b * PRELOAD_BATCH..((b + 1) * PRELOAD_BATCH).min(n);
                let success = range
                    .clone()
                    .map(|i| RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key_of(i),
                            value: value_of(i),
                            ..Default::default()
                        })),
                    })
                    .collect();
                let resp = kv
                    .txn(TxnRequest {
                        success,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| status_error("Txn (preload)", s))?
                    .into_inner();
                let rev = resp.header.map(|h| h.revision).unwrap_or_default();
                done.fetch_add(range.end - range.start, Ordering::Relaxed);
                revs.push((range, rev));
            }
        }));
    }
    let mut revs = vec![0; n as usize];
    for t in tasks {
        for (range, rev) in t.await.context("a preload task failed")?? {
            for i in range {
                revs[i as usize] = rev;
            }
        }
    }
    bar.finish();
    Ok(revs)
}

/// Makes sure `prefix` holds at least `n` keys (`prefix` + number), writing
/// them when it holds fewer.
pub async fn ensure_prefix(
    channels: &[Channel],
    prefix: &str,
    n: u64,
    val_size: usize,
    progress: bool,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let have = count_prefix(&channels[0], prefix.as_bytes()).await?;
    if have as u64 >= n {
        return Ok(());
    }
    let p = prefix.as_bytes().to_vec();
    let value = crate::keys::random_bytes(val_size, 7);
    preload(
        channels,
        &format!("preload {n} keys"),
        n,
        progress,
        Arc::new(move |i| crate::keys::prefixed_key(&p, i)),
        Arc::new(move |_| value.clone()),
    )
    .await?;
    Ok(())
}
