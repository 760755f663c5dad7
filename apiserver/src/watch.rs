//! Watch: one JSON event per line on a chunked response, from an etcd
//! watch on the resource's prefix.

use std::time::Duration;

use bytes::Bytes;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{WatchCreateRequest, WatchRequest};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::list::ListParams;
use crate::resources::Resource;
use crate::status::{ApiError, ApiResult};
use crate::store::{self, Store};

/// Longest watch when the client sets no timeout (kube-apiserver: 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How each event's object is sent: as it is, or (for `kubectl get -w`,
/// which asked for Tables) as a one-row Table.
#[derive(Clone, Copy)]
pub enum Shape {
    Object,
    Table(&'static Resource),
}

fn event(shape: Shape, kind: &str, object: &Value) -> Bytes {
    match shape {
        Shape::Object => line(kind, object),
        Shape::Table(res) => line(kind, &crate::list::table(res, object)),
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Starts a watch; the receiver yields the response body's chunks.
pub async fn start(
    store: Store,
    res: &'static Resource,
    namespace: Option<String>,
    params: ListParams,
    shape: Shape,
) -> ApiResult<mpsc::Receiver<Result<Bytes, std::convert::Infallible>>> {
    let (tx, rx) = mpsc::channel(64);
    let prefix = res.prefix(namespace.as_deref());
    // From "" or "0": the current state first, as ADDED events.
    let start_revision = match params.resource_version.as_deref() {
        None | Some("") | Some("0") => {
            let mut p = params.clone();
            p.limit = 0;
            p.continue_token = None;
            p.resource_version = None;
            let list = crate::list::list(&store, res, namespace.as_deref(), &p).await?;
            for item in list["items"].as_array().into_iter().flatten() {
                let _ = tx.send(Ok(event(shape, "ADDED", item))).await;
            }
            store::revision_of(&list) + 1
        }
        Some(rv) => {
            rv.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?
                + 1
        }
    };
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("prefixes end with /") += 1;
    let (req_tx, req_rx) = mpsc::channel(1);
    let _ = req_tx
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.clone().into_bytes().into(),
                range_end: end.into(),
                start_revision,
                prev_kv: true,
                progress_notify: params.allow_bookmarks,
                ..Default::default()
            })),
        })
        .await;
    let mut stream = store
        .watch_client()
        .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
        .await
        .map_err(ApiError::from)?
        .into_inner();
    let timeout = params
        .timeout_seconds
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    tokio::spawn(async move {
        let _keep_open = req_tx;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                msg = stream.message() => msg,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                _ => return,
            };
            if resp.canceled {
                let err = if resp.compact_revision > 0 {
                    ApiError::expired(format!(
                        "too old resource version: {} ({})",
                        start_revision - 1,
                        resp.compact_revision
                    ))
                } else {
                    ApiError::internal(format!("the watch ended: {}", resp.cancel_reason))
                };
                let _ = tx.send(Ok(line("ERROR", &err.to_status()))).await;
                return;
            }
            if resp.events.is_empty() {
                if params.allow_bookmarks && !resp.created {
                    let rev = resp.header.map_or(0, |h| h.revision);
                    let bookmark = json!({"kind": res.kind, "apiVersion": res.api_version(),
                                          "metadata": {"resourceVersion": rev.to_string()}});
                    if tx.send(Ok(line("BOOKMARK", &bookmark))).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            for ev in resp.events {
                let Some((kind, object)) = translate(&ev, &params) else {
                    continue;
                };
                if tx.send(Ok(event(shape, kind, &object))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// One etcd event as a Kubernetes watch event, after selectors: an object
/// that starts matching is ADDED, one that stops matching DELETED.
fn translate(ev: &kine::proto::Event, params: &ListParams) -> Option<(&'static str, Value)> {
    let kv = ev.kv.as_ref()?;
    let prev = ev.prev_kv.as_ref().and_then(|p| store::decode(p).ok());
    if ev.r#type == 1 {
        let mut last = prev?;
        store::set_resource_version(&mut last, kv.mod_revision);
        return params.matches(&last).then_some(("DELETED", last));
    }
    let obj = store::decode(kv).ok()?;
    let now = params.matches(&obj);
    let before = prev.as_ref().is_some_and(|p| params.matches(p));
    match (before, now) {
        (false, true) => Some(("ADDED", obj)),
        (true, true) => Some(("MODIFIED", obj)),
        (true, false) => Some(("DELETED", obj)),
        (false, false) => None,
    }
}
