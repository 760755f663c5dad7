//! Watch: one JSON event per line on a chunked response, from an etcd
//! watch on the resource's prefix.
//!
//! Each watcher reads its etcd stream at once, whatever its client does,
//! into its own bounded outbox (kube-apiserver's cacheWatcher buffer): a
//! client that stops reading fills only its outbox and is then dropped, as
//! kube drops a watcher too slow to keep up (the client lists again).
//! Were the etcd stream left unread, its HTTP/2 window would fill the
//! datastore connection's and stall every other watch.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{WatchCreateRequest, WatchRequest};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

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

/// An ERROR event; its `Status` in kube's field order, as errors are.
fn error_line(err: &ApiError) -> Bytes {
    let status = err.to_status_json();
    Bytes::from(format!(
        "{{\"type\":\"ERROR\",\"object\":{}}}\n",
        status.trim_end()
    ))
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Bytes a watcher may have queued for its client; past it (after
/// `DRAIN_GRACE`), the watcher is dropped. Several of etcd's largest
/// values (1.5 MiB) fit, so a burst to a client that reads does not.
const MAX_QUEUED_BYTES: usize = 8 << 20;
/// How long a live event waits for a full outbox to drain (kube's
/// dispatch budget is 100 ms); the etcd stream is not read meanwhile.
const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// The sending half of a watcher's outbox: unbounded in events, bounded
/// in bytes by `MAX_QUEUED_BYTES`.
struct Outbox {
    tx: mpsc::UnboundedSender<Bytes>,
    queue: Arc<Queue>,
}

#[derive(Default)]
struct Queue {
    bytes: AtomicUsize,
    drained: Notify,
}

impl Outbox {
    /// Queues an event whatever the outbox holds (the initial state).
    fn push(&self, chunk: Bytes) -> bool {
        self.queue.bytes.fetch_add(chunk.len(), Ordering::AcqRel);
        self.tx.send(chunk).is_ok()
    }

    /// Queues a live event; false when the client has gone or stopped
    /// reading (its outbox stayed full for `DRAIN_GRACE`).
    async fn send(&self, chunk: Bytes) -> bool {
        let fits = || self.queue.bytes.load(Ordering::Acquire) + chunk.len() <= MAX_QUEUED_BYTES;
        if !fits() {
            let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
            while !fits() {
                let drained = self.queue.drained.notified();
                if fits() {
                    break;
                }
                if tokio::time::timeout_at(deadline, drained).await.is_err() {
                    tracing::debug!(
                        queued = self.queue.bytes.load(Ordering::Acquire),
                        "closing a watch whose client stopped reading"
                    );
                    return false;
                }
            }
        }
        self.push(chunk)
    }
}

/// The response body of a watch: its outbox's events, in order.
pub struct WatchBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    queue: Arc<Queue>,
}

impl tokio_stream::Stream for WatchBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(chunk)) = &polled {
            self.queue.bytes.fetch_sub(chunk.len(), Ordering::AcqRel);
            self.queue.drained.notify_waiters();
        }
        polled.map(|c| c.map(Ok))
    }
}

fn outbox() -> (Outbox, WatchBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Queue::default());
    (
        Outbox {
            tx,
            queue: queue.clone(),
        },
        WatchBody { rx, queue },
    )
}

/// Starts a watch; the body yields the response's chunks.
pub async fn start(
    store: Store,
    res: &'static Resource,
    namespace: Option<String>,
    params: ListParams,
    shape: Shape,
) -> ApiResult<WatchBody> {
    let (tx, rx) = outbox();
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
                tx.push(event(shape, "ADDED", item));
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
                _ = tx.tx.closed() => return,
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
                tx.push(error_line(&err));
                return;
            }
            if resp.events.is_empty() {
                if params.allow_bookmarks && !resp.created {
                    let rev = resp.header.map_or(0, |h| h.revision);
                    let bookmark = json!({"kind": res.kind, "apiVersion": res.api_version(),
                                          "metadata": {"resourceVersion": rev.to_string()}});
                    if !tx.send(line("BOOKMARK", &bookmark)).await {
                        return;
                    }
                }
                continue;
            }
            for ev in resp.events {
                let Some((kind, object)) = translate(&ev, &params) else {
                    continue;
                };
                if !tx.send(event(shape, kind, &object)).await {
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
