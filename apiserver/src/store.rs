//! Objects in an etcd v3 datastore, as kube-apiserver keeps them: JSON
//! values under `/registry/...`, `resourceVersion` = the key's
//! `mod_revision`, writes as compare-and-swap transactions.

use bytes::Bytes;
use kine::proto::compare::{CompareResult, CompareTarget, TargetUnion};
use kine::proto::kv_client::KvClient;
use kine::proto::request_op::Request;
use kine::proto::response_op::Response as OpResponse;
use kine::proto::watch_client::WatchClient;
use kine::proto::{
    Compare, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use serde_json::Value;
use tonic::transport::Channel;

use crate::status::{ApiError, ApiResult};

/// Largest datastore answer the API server reads; etcd allows 1.5 MiB
/// per value and a list holds many, so kube-apiserver lifts gRPC's 4 MiB
/// default to `MaxInt32` as well.
const MAX_DATASTORE_MESSAGE: usize = i32::MAX as usize;

/// Keys per read of `Store::list_all`.
const INTERNAL_PAGE: i64 = 500;

/// A handle on the datastore; cheap to clone.
#[derive(Clone)]
pub struct Store {
    kv: KvClient<Channel>,
    /// Watches ride their own connection, so a watch stream's flow control
    /// never delays gets, lists and writes.
    watch_channel: Channel,
}

/// One page of a list.
pub struct Page {
    pub items: Vec<(String, Value)>,
    /// The revision the page was read at.
    pub revision: i64,
    /// Keys after the page.
    pub remaining: i64,
}

/// The outcome of a compare-and-swap write.
pub enum Swap {
    /// Written at this revision (the object with its new resourceVersion).
    Done(Value),
    /// The key's current state did not match (`None`: it does not exist).
    Mismatch(Option<Value>),
}

/// A lazily connected channel to an etcd v3 endpoint, `http://HOST:PORT`,
/// or a unix socket, `unix:///ABS/PATH` or `unix:PATH` (tonic dials those
/// itself; `k3rs server` reaches its own datastore so).
fn datastore_channel(endpoint: &str) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy(),
    )
}

fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The stored object with `metadata.resourceVersion` filled in.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "the object at {} is not JSON: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

pub fn set_resource_version(obj: &mut Value, revision: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// The bytes stored: the object without its resourceVersion.
fn encode(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).expect("a JSON value serializes")
}

fn mod_is(key: &str, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

impl Store {
    /// Connects (lazily) to an etcd v3 endpoint, `http://HOST:PORT`.
    pub fn connect(endpoint: &str) -> anyhow::Result<Store> {
        Ok(Store {
            kv: KvClient::new(datastore_channel(endpoint)?)
                .max_decoding_message_size(MAX_DATASTORE_MESSAGE),
            watch_channel: datastore_channel(endpoint)?,
        })
    }

    pub fn watch_client(&self) -> WatchClient<Channel> {
        WatchClient::new(self.watch_channel.clone())
            .max_decoding_message_size(MAX_DATASTORE_MESSAGE)
    }

    /// The object at `key`.
    pub async fn get(&self, key: &str) -> ApiResult<Option<Value>> {
        Ok(self.get_revision(key).await?.map(|(value, _)| value))
    }

    /// The value at `key` with its mod revision, for values without
    /// `metadata` (a reservation under `/registry/k3rs/`), which `get`
    /// cannot give a revision.
    pub async fn get_revision(&self, key: &str) -> ApiResult<Option<(Value, i64)>> {
        let resp = self
            .kv
            .clone()
            .range(RangeRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        match resp.kvs.first() {
            Some(kv) => Ok(Some((decode(kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Up to `limit` objects (0: all) under `prefix` from `start` (a full
    /// key), at `revision` (0: the current one).
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: i64,
        revision: i64,
    ) -> ApiResult<Page> {
        let from = start.unwrap_or(prefix);
        let resp = self
            .kv
            .clone()
            .range(RangeRequest {
                key: from.as_bytes().to_vec().into(),
                range_end: range_end(prefix).into(),
                limit,
                revision,
                ..Default::default()
            })
            .await?
            .into_inner();
        let revision = resp.header.map_or(0, |h| h.revision);
        let items = resp
            .kvs
            .iter()
            .map(|kv| Ok((String::from_utf8_lossy(&kv.key).into_owned(), decode(kv)?)))
            .collect::<ApiResult<Vec<_>>>()?;
        let remaining = resp.count - items.len() as i64;
        Ok(Page {
            items,
            revision,
            remaining,
        })
    }

    /// Every object under `prefix`, read in pages of `INTERNAL_PAGE` (what
    /// the server lists for itself, such as a namespace being emptied).
    pub async fn list_all(&self, prefix: &str) -> ApiResult<Vec<(String, Value)>> {
        let mut all = Vec::new();
        let mut start: Option<String> = None;
        let mut revision = 0;
        loop {
            let page = self
                .list(prefix, start.as_deref(), INTERNAL_PAGE, revision)
                .await?;
            revision = page.revision;
            let done = page.remaining <= 0 || page.items.is_empty();
            start = page.items.last().map(|(k, _)| format!("{k}\u{0}"));
            all.extend(page.items);
            if done {
                return Ok(all);
            }
        }
    }

    /// The store's current revision.
    pub async fn revision(&self) -> ApiResult<i64> {
        let resp = self
            .kv
            .clone()
            .range(RangeRequest {
                key: Bytes::from_static(b"/registry/health"),
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Writes `obj` at `key` if the key's mod revision is `expected` (0:
    /// the key must not exist).
    pub async fn swap(&self, key: &str, obj: &Value, expected: i64) -> ApiResult<Swap> {
        let resp = self
            .kv
            .clone()
            .txn(TxnRequest {
                compare: vec![mod_is(key, expected)],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: key.as_bytes().to_vec().into(),
                        value: encode(obj).into(),
                        ..Default::default()
                    })),
                }],
                failure: vec![get_op(key)],
            })
            .await?
            .into_inner();
        if resp.succeeded {
            let mut written = obj.clone();
            set_resource_version(&mut written, resp.header.map_or(0, |h| h.revision));
            return Ok(Swap::Done(written));
        }
        Ok(Swap::Mismatch(current(&resp.responses)?))
    }

    /// Deletes `key` if its mod revision is `expected`; `Done` holds the
    /// last state with the deletion's revision.
    pub async fn delete(&self, key: &str, expected: i64) -> ApiResult<Swap> {
        let resp = self
            .kv
            .clone()
            .txn(TxnRequest {
                compare: vec![mod_is(key, expected)],
                success: vec![RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: key.as_bytes().to_vec().into(),
                        prev_kv: true,
                        ..Default::default()
                    })),
                }],
                failure: vec![get_op(key)],
            })
            .await?
            .into_inner();
        if resp.succeeded {
            let prev = match resp.responses.first().and_then(|r| r.response.as_ref()) {
                Some(OpResponse::ResponseDeleteRange(d)) => {
                    d.prev_kvs.first().map(decode).transpose()?
                }
                _ => None,
            };
            let Some(mut obj) = prev else {
                return Ok(Swap::Mismatch(None));
            };
            set_resource_version(&mut obj, resp.header.map_or(0, |h| h.revision));
            return Ok(Swap::Done(obj));
        }
        Ok(Swap::Mismatch(current(&resp.responses)?))
    }
}

fn current(responses: &[kine::proto::ResponseOp]) -> ApiResult<Option<Value>> {
    match responses.first().and_then(|r| r.response.as_ref()) {
        Some(OpResponse::ResponseRange(r)) => r.kvs.first().map(decode).transpose(),
        _ => Ok(None),
    }
}

/// The mod revision an object read from the store carries.
pub fn revision_of(obj: &Value) -> i64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
