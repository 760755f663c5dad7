//! put, range, txn-put and txn-mixed.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, bail};
use bytes::Bytes;
use kine::proto::kv_client::KvClient;
use kine::proto::request_op::Request;
use kine::proto::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

use super::{preload, result_from};
use crate::cli::{Consistency, Global, PutArgs, RangeArgs, TxnMixedArgs, TxnPutArgs};
use crate::conn;
use crate::keys::{numbered_key, prefix_end, random_bytes};
use crate::report::BenchResult;
use crate::runner::{Client, Outcome, run_closed_loop};

/// One KV client per `--clients`, over the connections round-robin.
pub(crate) async fn kv_clients(g: &Global) -> Result<Vec<KvClient<Channel>>> {
    let channels = conn::connect(&g.endpoints, g.conns).await?;
    Ok((0..g.clients)
        .map(|i| conn::kv(&channels[i % channels.len()]))
        .collect())
}

struct PutClient {
    kv: KvClient<Channel>,
    key_size: usize,
    key_space: u64,
    sequential: bool,
    value: Bytes,
    rng: fastrand::Rng,
}

impl Client for PutClient {
    async fn call(&mut self, i: u64) -> Outcome {
        let n = if self.sequential {
            i % self.key_space
        } else {
            self.rng.u64(0..self.key_space)
        };
        let req = PutRequest {
            key: numbered_key(n, self.key_size).into(),
            value: self.value.clone(),
            ..Default::default()
        };
        Outcome::of(self.kv.put(req).await.map(drop))
    }
}

/// `put`.
pub async fn put(g: &Global, a: &PutArgs) -> Result<BenchResult> {
    if a.key_space_size == 0 || a.key_size == 0 {
        bail!("--key-space-size and --key-size must be at least 1");
    }
    let value = random_bytes(a.val_size, 1);
    let clients = kv_clients(g)
        .await?
        .into_iter()
        .enumerate()
        .map(|(c, kv)| PutClient {
            kv,
            key_size: a.key_size,
            key_space: a.key_space_size,
            sequential: a.sequential_keys,
            value: value.clone(),
            rng: fastrand::Rng::with_seed(c as u64 + 1),
        })
        .collect();
    let out = run_closed_loop(clients, 1, &g.run_opts("put", a.total, a.rate)).await?;
    Ok(result_from(g, "put", &["put"], out, BTreeMap::new()))
}

struct RangeClient {
    kv: KvClient<Channel>,
    req: RangeRequest,
}

impl Client for RangeClient {
    async fn call(&mut self, _: u64) -> Outcome {
        Outcome::of(self.kv.range(self.req.clone()).await.map(drop))
    }
}

/// The bytes of a command-line key: `\0` stands for the zero byte.
fn arg_bytes(s: &str) -> Vec<u8> {
    if s == "\\0" {
        vec![0]
    } else {
        s.as_bytes().to_vec()
    }
}

/// `range`.
pub async fn range(g: &Global, a: &RangeArgs) -> Result<BenchResult> {
    let key = arg_bytes(&a.key);
    let end = match (&a.end, a.prefix) {
        (Some(_), true) => bail!("give END or --prefix, not both"),
        (Some(e), false) => arg_bytes(e),
        (None, true) => prefix_end(&key),
        (None, false) => Vec::new(),
    };
    let clients = kv_clients(g).await?;
    if a.preload > 0 {
        let channels = conn::connect(&g.endpoints, g.conns.min(8)).await?;
        let value = random_bytes(a.preload_val_size, 3);
        let base = key.clone();
        let single = a.preload == 1;
        preload(
            &channels,
            "preload",
            a.preload,
            !g.no_progress,
            Arc::new(move |i| {
                if single {
                    Bytes::from(base.clone())
                } else {
                    crate::keys::prefixed_key(&base, i)
                }
            }),
            Arc::new(move |_| value.clone()),
        )
        .await?;
    }
    let req = RangeRequest {
        key: key.into(),
        range_end: end.into(),
        limit: a.limit,
        serializable: a.consistency == Consistency::S,
        keys_only: a.keys_only,
        count_only: a.count_only,
        ..Default::default()
    };
    let clients = clients
        .into_iter()
        .map(|kv| RangeClient {
            kv,
            req: req.clone(),
        })
        .collect();
    let out = run_closed_loop(clients, 1, &g.run_opts("range", a.total, a.rate)).await?;
    Ok(result_from(g, "range", &["range"], out, BTreeMap::new()))
}

struct TxnPutClient {
    kv: KvClient<Channel>,
    ops: usize,
    key_size: usize,
    key_space: u64,
    value: Bytes,
    rng: fastrand::Rng,
}

impl Client for TxnPutClient {
    async fn call(&mut self, _: u64) -> Outcome {
        let first = self.rng.u64(0..self.key_space);
        let success = (0..self.ops as u64)
            .map(|j| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: numbered_key((first + j) % self.key_space, self.key_size).into(),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        Outcome::of(
            self.kv
                .txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await
                .map(drop),
        )
    }
}

/// `txn-put`.
pub async fn txn_put(g: &Global, a: &TxnPutArgs) -> Result<BenchResult> {
    if a.txn_ops == 0 || a.key_space_size < a.txn_ops as u64 {
        bail!(
            "--txn-ops must be at least 1 and at most --key-space-size (a txn may not put one key twice)"
        );
    }
    let value = random_bytes(a.val_size, 2);
    let clients = kv_clients(g)
        .await?
        .into_iter()
        .enumerate()
        .map(|(c, kv)| TxnPutClient {
            kv,
            ops: a.txn_ops,
            key_size: a.key_size,
            key_space: a.key_space_size,
            value: value.clone(),
            rng: fastrand::Rng::with_seed(c as u64 + 11),
        })
        .collect();
    let out = run_closed_loop(clients, 1, &g.run_opts("txn-put", a.total, a.rate)).await?;
    let extra = [("ops_per_txn".to_string(), a.txn_ops as f64)].into();
    Ok(result_from(g, "txn-put", &["txn-put"], out, extra))
}

struct TxnMixedClient {
    kv: KvClient<Channel>,
    read_fraction: f64,
    limit: i64,
    key_size: usize,
    key_space: u64,
    value: Bytes,
    rng: fastrand::Rng,
}

/// Keys of `numbered_key` are all digits, which sort below ':'.
const DIGITS_END: &[u8] = b":";

impl Client for TxnMixedClient {
    async fn call(&mut self, _: u64) -> Outcome {
        let read = self.rng.f64() < self.read_fraction;
        let op = if read {
            Request::RequestRange(RangeRequest {
                key: numbered_key(0, self.key_size).into(),
                range_end: Bytes::from_static(DIGITS_END),
                limit: self.limit,
                ..Default::default()
            })
        } else {
            Request::RequestPut(PutRequest {
                key: numbered_key(self.rng.u64(0..self.key_space), self.key_size).into(),
                value: self.value.clone(),
                ..Default::default()
            })
        };
        let req = TxnRequest {
            success: vec![RequestOp { request: Some(op) }],
            ..Default::default()
        };
        Outcome {
            class: if read { 0 } else { 1 },
            result: self.kv.txn(req).await.map(drop),
        }
    }
}

/// `txn-mixed`.
pub async fn txn_mixed(g: &Global, a: &TxnMixedArgs) -> Result<BenchResult> {
    if a.rw_ratio < 0.0 || a.key_space_size == 0 {
        bail!("--rw-ratio must be at least 0 and --key-space-size at least 1");
    }
    let value = random_bytes(a.val_size, 4);
    let clients = kv_clients(g)
        .await?
        .into_iter()
        .enumerate()
        .map(|(c, kv)| TxnMixedClient {
            kv,
            read_fraction: a.rw_ratio / (a.rw_ratio + 1.0),
            limit: a.limit,
            key_size: a.key_size,
            key_space: a.key_space_size,
            value: value.clone(),
            rng: fastrand::Rng::with_seed(c as u64 + 21),
        })
        .collect();
    let out = run_closed_loop(clients, 2, &g.run_opts("txn-mixed", a.total, a.rate)).await?;
    Ok(result_from(
        g,
        "txn-mixed",
        &["read", "write"],
        out,
        BTreeMap::new(),
    ))
}
