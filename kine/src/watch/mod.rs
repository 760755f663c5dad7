//! Watch: one fan-out from the commit path to every watcher of every stream.
//!
//! The writer hands each committed batch to the dispatcher thread (no
//! polling). A watcher is *synced* while it gets events straight from the
//! dispatcher; when its stream's buffer is full it becomes *unsynced* and a
//! catch-up task feeds it from history (index and log) until it reaches the
//! dispatched revision, then it rejoins the synced set. Nobody is skipped:
//! a watcher whose history was compacted away is canceled with the
//! compact revision, as etcd does.
//!
//! Lock order: `Hub::state` is never held across an await, nor while taking
//! the store's index lock.

mod catchup;
mod filter;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;

use crate::mvcc::index::KeyRange;
use crate::mvcc::{Committed, Store};
use crate::proto::{Event, ResponseHeader, WatchCreateRequest, WatchResponse};
pub use filter::Filter;

/// Responses buffered per stream before its watchers fall back to catch-up
/// (etcd's chanBufLen is 128).
pub const STREAM_BUFFER: usize = 256;
/// Largest response a fragmenting watcher gets (etcd's max request bytes).
pub const MAX_RESPONSE_BYTES: usize = 1536 * 1024;

/// What etcd answers a create that cannot be served.
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

type Sender = mpsc::Sender<WatchResponse>;

/// One watcher.
struct Watcher {
    range: KeyRange,
    filter: Filter,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// The next revision this watcher needs.
    next_rev: i64,
    synced: bool,
    /// Whether anything was sent since the last periodic progress tick.
    sent_since_tick: bool,
    tx: Sender,
}

#[derive(Default)]
struct StreamState {
    next_id: i64,
    watch_ids: Vec<i64>,
}

#[derive(Default)]
struct HubState {
    /// Every revision at or below this was handed to every synced watcher.
    dispatched: i64,
    watchers: HashMap<(u64, i64), Watcher>,
    streams: HashMap<u64, StreamState>,
    next_stream: u64,
}

/// Messages to the dispatcher thread, in the order they must be handled.
pub(crate) enum HubMsg {
    Committed(Arc<Committed>),
    /// A stream asked for progress; answered after every batch before it.
    Progress(u64, Sender),
}

/// The watch fan-out. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    state: Arc<Mutex<HubState>>,
    store: Store,
    msgs: mpsc::UnboundedSender<HubMsg>,
    /// Catch-up tasks are started from the dispatcher thread, which is not
    /// a runtime thread: they go to this runtime.
    runtime: tokio::runtime::Handle,
    /// Bounds the catch-up rounds in flight, and so the history held in
    /// memory, however many watchers fall behind at once.
    catchup_slots: Arc<tokio::sync::Semaphore>,
}

/// Catch-up rounds that may hold history in memory at once.
const CATCHUP_SLOTS: usize = 32;

impl Hub {
    /// Starts the dispatcher (fed by `store`'s commits) and the periodic
    /// progress notifier. Call from within a tokio runtime.
    pub fn start(store: Store, progress_interval: Duration) -> Hub {
        let (msgs, mut rx) = mpsc::unbounded_channel();
        let to_hub = msgs.clone();
        store.subscribe(Box::new(move |batch| {
            let _ = to_hub.send(HubMsg::Committed(batch));
        }));
        let state = Arc::new(Mutex::new(HubState {
            dispatched: store.current_revision(),
            ..Default::default()
        }));
        let hub = Hub {
            state,
            store,
            msgs,
            runtime: tokio::runtime::Handle::current(),
            catchup_slots: Arc::new(tokio::sync::Semaphore::new(CATCHUP_SLOTS)),
        };
        let dispatcher = hub.clone();
        std::thread::Builder::new()
            .name("k3rs-watch".into())
            .spawn(move || {
                while let Some(msg) = rx.blocking_recv() {
                    match msg {
                        HubMsg::Committed(batch) => dispatcher.dispatch(&batch),
                        HubMsg::Progress(stream, tx) => dispatcher.answer_progress(stream, &tx),
                    }
                }
            })
            .expect("spawning the watch dispatcher thread");
        let ticker = hub.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(progress_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                if ticker.msgs.is_closed() {
                    return;
                }
                ticker.notify_progress();
            }
        });
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(streams, watchers, unsynced watchers)`, for metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.lock();
        let unsynced = s.watchers.values().filter(|w| !w.synced).count();
        (s.streams.len(), s.watchers.len(), unsynced)
    }

    /// Opens a stream; watch ids are per stream.
    pub fn open_stream(&self) -> u64 {
        let mut s = self.lock();
        s.next_stream += 1;
        let id = s.next_stream;
        s.streams.insert(id, StreamState::default());
        id
    }

    /// Closes a stream and drops its watchers.
    pub fn close_stream(&self, stream: u64) {
        let mut s = self.lock();
        if let Some(st) = s.streams.remove(&stream) {
            for id in st.watch_ids {
                s.watchers.remove(&(stream, id));
            }
        }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision,
            ..Default::default()
        })
    }

    /// Creates a watcher: answers `created` (or `created` + `canceled` with
    /// etcd's reason), then events from its start revision on.
    pub async fn create(&self, stream: u64, tx: &Sender, req: WatchCreateRequest) {
        let current = self.store.current_revision();
        let key = if req.key.is_empty() {
            bytes::Bytes::from_static(b"\0")
        } else {
            req.key.clone()
        };
        let range = KeyRange::new(key.clone(), req.range_end.clone());
        let refuse = |reason: &str| WatchResponse {
            header: self.header(current),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if !req.range_end.is_empty() && req.range_end.as_ref() != [0] && req.range_end <= key {
            let _ = tx.send(refuse(ERR_EMPTY_RANGE)).await;
            return;
        }
        if req.start_revision < 0 {
            let _ = tx
                .send(refuse(
                    "etcdserver: mvcc: required revision is a future revision",
                ))
                .await;
            return;
        }
        let next_rev = if req.start_revision == 0 {
            current + 1
        } else {
            req.start_revision
        };
        let id = {
            let mut s = self.lock();
            let Some(st) = s.streams.get_mut(&stream) else {
                return;
            };
            let id = if req.watch_id != 0 {
                if st.watch_ids.contains(&req.watch_id) {
                    None
                } else {
                    Some(req.watch_id)
                }
            } else {
                while st.watch_ids.contains(&st.next_id) {
                    st.next_id += 1;
                }
                st.next_id += 1;
                Some(st.next_id - 1)
            };
            if let Some(id) = id {
                // Reserved now; registered once `created` is on its way.
                st.watch_ids.push(id);
            }
            id
        };
        let Some(id) = id else {
            let _ = tx.send(refuse(ERR_DUPLICATE_ID)).await;
            return;
        };
        let created = WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if tx.send(created).await.is_err() {
            return;
        }
        let watcher = Watcher {
            range,
            filter: Filter::from_request(&req.filters),
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            next_rev,
            synced: false,
            sent_since_tick: false,
            tx: tx.clone(),
        };
        let needs_catchup = {
            let mut s = self.lock();
            if !s
                .streams
                .get(&stream)
                .is_some_and(|st| st.watch_ids.contains(&id))
            {
                return; // canceled or closed meanwhile
            }
            // Compacted history is canceled by catch-up, even when the
            // dispatcher has not yet caught up with the commits (etcd
            // cancels such a watcher whatever its sync state).
            let behind = watcher.next_rev <= s.dispatched
                || watcher.next_rev < self.store.compact_revision();
            s.watchers.insert(
                (stream, id),
                Watcher {
                    synced: !behind,
                    ..watcher
                },
            );
            behind
        };
        if needs_catchup {
            catchup::spawn(self.clone(), stream, id);
        }
    }

    /// Cancels a watcher; unknown ids are ignored, as etcd does.
    pub async fn cancel(&self, stream: u64, tx: &Sender, watch_id: i64) {
        let found = {
            let mut s = self.lock();
            let known = s.streams.get_mut(&stream).is_some_and(|st| {
                let before = st.watch_ids.len();
                st.watch_ids.retain(|w| *w != watch_id);
                st.watch_ids.len() < before
            });
            s.watchers.remove(&(stream, watch_id));
            known
        };
        if found {
            let resp = WatchResponse {
                header: self.header(self.store.current_revision()),
                watch_id,
                canceled: true,
                ..Default::default()
            };
            let _ = tx.send(resp).await;
        }
    }

    /// Queues a progress request behind every commit already published.
    pub fn request_progress(&self, stream: u64, tx: &Sender) {
        let _ = self.msgs.send(HubMsg::Progress(stream, tx.clone()));
    }

    /// Answers a progress request if every watcher of the stream is synced
    /// and none waits for a future revision; otherwise drops it (etcd 3.5+).
    fn answer_progress(&self, stream: u64, tx: &Sender) {
        let s = self.lock();
        let Some(st) = s.streams.get(&stream) else {
            return;
        };
        let ready = st.watch_ids.iter().all(|id| {
            s.watchers
                .get(&(stream, *id))
                .is_none_or(|w| w.synced && w.next_rev <= s.dispatched + 1)
        });
        if ready {
            let _ = tx.try_send(WatchResponse {
                header: self.header(s.dispatched),
                watch_id: -1,
                ..Default::default()
            });
        }
    }

    /// Periodic progress for watchers that asked for it and got nothing
    /// since the last tick.
    fn notify_progress(&self) {
        let mut s = self.lock();
        let rev = s.dispatched;
        for ((_, id), w) in s.watchers.iter_mut() {
            if w.progress_notify && w.synced && !w.sent_since_tick && w.next_rev <= rev + 1 {
                let _ = w.tx.try_send(WatchResponse {
                    header: Some(ResponseHeader {
                        revision: rev,
                        ..Default::default()
                    }),
                    watch_id: *id,
                    ..Default::default()
                });
            }
            w.sent_since_tick = false;
        }
    }

    /// Hands one committed batch to every synced watcher.
    fn dispatch(&self, batch: &Committed) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let mut fallen_behind = Vec::new();
        let mut closed = Vec::new();
        for (&(stream, id), w) in s.watchers.iter_mut() {
            if !w.synced {
                continue;
            }
            if batch.restored {
                // The history was replaced: read from it like a watcher
                // that fell behind (canceled if it was compacted).
                w.synced = false;
                fallen_behind.push((stream, id));
                continue;
            }
            let events = select(&batch.events, w, w.next_rev);
            if !events.is_empty() {
                // Reserve room for every fragment first, so a watcher never
                // gets part of a batch and then the whole of it again.
                let resps = responses(id, batch.revision, events, w.fragment);
                match w.tx.try_reserve_many(resps.len()) {
                    Ok(permits) => {
                        for (permit, resp) in permits.zip(resps) {
                            permit.send(resp);
                        }
                        w.sent_since_tick = true;
                    }
                    Err(mpsc::error::TrySendError::Full(())) => {
                        // Resent from history by the catch-up: next_rev stays.
                        w.synced = false;
                        fallen_behind.push((stream, id));
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        closed.push((stream, id));
                        continue;
                    }
                }
            }
            w.next_rev = w.next_rev.max(batch.revision + 1);
        }
        s.dispatched = batch.revision;
        for key in closed {
            s.watchers.remove(&key);
        }
        drop(guard);
        for (stream, id) in fallen_behind {
            tracing::debug!(
                stream,
                watch_id = id,
                "watcher fell behind; catching up from history"
            );
            catchup::spawn(self.clone(), stream, id);
        }
    }
}

/// The events of `events` a watcher wants, from revision `from` on, with
/// `prev_kv` stripped unless it asked for it.
fn select(events: &[Event], w: &Watcher, from: i64) -> Vec<Event> {
    events
        .iter()
        .filter(|e| {
            let kv = e.kv.as_ref().expect("events carry a kv");
            kv.mod_revision >= from && w.range.contains(&kv.key) && w.filter.passes(e)
        })
        .map(|e| {
            let mut e = e.clone();
            if !w.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect()
}

/// Packs events into responses of at most `MAX_RESPONSE_BYTES` where it
/// can: whole revisions together, never a revision split across responses,
/// except for a watcher that asked for `fragment`, whose oversized
/// revisions are split into fragments. A single event is never split.
fn responses(
    watch_id: i64,
    revision: i64,
    events: Vec<Event>,
    fragment: bool,
) -> Vec<WatchResponse> {
    let rev_of = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let size_of = |e: &Event| e.encoded_len() + 8;
    let mut out: Vec<WatchResponse> = Vec::new();
    let mut pending: Vec<Event> = Vec::new();
    let mut pending_size = 0;
    let flush = |out: &mut Vec<WatchResponse>, events: Vec<Event>, fragment: bool| {
        if events.is_empty() {
            return;
        }
        let header_rev = events.last().map(rev_of).unwrap_or(revision);
        out.push(WatchResponse {
            header: Some(ResponseHeader {
                revision: header_rev,
                ..Default::default()
            }),
            watch_id,
            events,
            fragment,
            ..Default::default()
        });
    };
    let mut events = events.into_iter().peekable();
    while let Some(first) = events.next() {
        // One revision's events.
        let rev = rev_of(&first);
        let mut group = vec![first];
        while events.peek().is_some_and(|e| rev_of(e) == rev) {
            group.extend(events.next());
        }
        let group_size: usize = group.iter().map(size_of).sum();
        if pending_size + group_size > MAX_RESPONSE_BYTES && !pending.is_empty() {
            flush(&mut out, std::mem::take(&mut pending), false);
            pending_size = 0;
        }
        if group_size > MAX_RESPONSE_BYTES && fragment {
            let mut chunk = Vec::new();
            let mut size = 0;
            for event in group {
                let len = size_of(&event);
                if !chunk.is_empty() && size + len > MAX_RESPONSE_BYTES {
                    flush(&mut out, std::mem::take(&mut chunk), true);
                    size = 0;
                }
                size += len;
                chunk.push(event);
            }
            flush(&mut out, chunk, false);
            continue;
        }
        pending_size += group_size;
        pending.extend(group);
    }
    flush(&mut out, pending, false);
    if let Some(last) = out.last_mut() {
        last.header = Some(ResponseHeader {
            revision: revision.max(rev_of(last.events.last().unwrap())),
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::KeyValue;

    fn event(rev: i64, size: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: "k".into(),
                mod_revision: rev,
                value: vec![0; size].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn revisions_stay_whole_and_responses_stay_small() {
        let events: Vec<Event> = (1..=10)
            .flat_map(|r| [event(r, 200_000), event(r, 200_000)])
            .collect();
        let out = responses(7, 10, events, false);
        assert!(out.len() > 1);
        let mut revs = Vec::new();
        for resp in &out {
            assert!(!resp.fragment);
            assert!(resp.encoded_len() <= MAX_RESPONSE_BYTES + 64);
            let first = resp
                .events
                .first()
                .unwrap()
                .kv
                .as_ref()
                .unwrap()
                .mod_revision;
            assert!(
                !revs.contains(&first),
                "revision {first} split across responses"
            );
            revs.extend(
                resp.events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision),
            );
        }
        assert_eq!(revs.len(), 20);
        assert_eq!(out.last().unwrap().header.as_ref().unwrap().revision, 10);
    }

    #[test]
    fn an_oversized_revision_is_fragmented_only_on_request() {
        let events: Vec<Event> = (0..4).map(|_| event(5, 1_000_000)).collect();
        assert_eq!(responses(1, 5, events.clone(), false).len(), 1);
        let frags = responses(1, 5, events, true);
        assert!(frags.len() > 1);
        assert!(frags[..frags.len() - 1].iter().all(|f| f.fragment));
        assert!(!frags.last().unwrap().fragment);
    }
}
