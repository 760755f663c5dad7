//! Catch-up: feeds an unsynced watcher from history until it reaches the
//! dispatched revision, then hands it back to the dispatcher.

use super::{Hub, responses, select};
use crate::error::Error;
use crate::proto::{ResponseHeader, WatchResponse};

/// Revisions read from history per round: bounds memory per watcher.
const REVISIONS_PER_ROUND: i64 = 256;

/// Starts catching up watcher `(stream, id)`.
pub(super) fn spawn(hub: Hub, stream: u64, id: i64) {
    hub.runtime.clone().spawn(run(hub, stream, id));
}

async fn run(hub: Hub, stream: u64, id: i64) {
    loop {
        // Held while this round's history is in memory.
        let Ok(_slot) = hub.catchup_slots.clone().acquire_owned().await else {
            return;
        };
        // Decide the next round, or rejoin the synced set, under the lock.
        let (range, from, to, tx, fragment) = {
            let mut s = hub.lock();
            let dispatched = s.dispatched;
            let Some(w) = s.watchers.get_mut(&(stream, id)) else {
                return;
            };
            let compacted = w.next_rev < hub.store.compact_revision();
            if w.next_rev > dispatched && !compacted {
                w.synced = true;
                return;
            }
            // A compacted start fails in `history` whatever `to` is.
            let to = dispatched
                .min(w.next_rev + REVISIONS_PER_ROUND - 1)
                .max(w.next_rev);
            (w.range.clone(), w.next_rev, to, w.tx.clone(), w.fragment)
        };
        let history = hub.store.history(range, from, to).await;
        let events = match history {
            Ok(events) => events,
            Err(Error::Compacted) => {
                let compact = hub.store.compact_revision();
                return cancel(
                    &hub,
                    stream,
                    id,
                    &tx,
                    WatchResponse {
                        compact_revision: compact,
                        ..Default::default()
                    },
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, stream, watch_id = id, "watch catch-up failed; canceling the watcher");
                let reason = WatchResponse {
                    cancel_reason: e.to_string(),
                    ..Default::default()
                };
                return cancel(&hub, stream, id, &tx, reason).await;
            }
        };
        let wanted = {
            let s = hub.lock();
            let Some(w) = s.watchers.get(&(stream, id)) else {
                return;
            };
            select(&events, w, from)
        };
        if !wanted.is_empty() {
            for resp in responses(id, to, wanted, fragment) {
                if tx.send(resp).await.is_err() {
                    return;
                }
            }
        }
        let mut s = hub.lock();
        let Some(w) = s.watchers.get_mut(&(stream, id)) else {
            return;
        };
        w.next_rev = to + 1;
        w.sent_since_tick = true;
    }
}

/// Drops the watcher and tells the client why (`why` carries the compact
/// revision or the reason).
async fn cancel(hub: &Hub, stream: u64, id: i64, tx: &super::Sender, why: WatchResponse) {
    hub.lock().watchers.remove(&(stream, id));
    let resp = WatchResponse {
        header: Some(ResponseHeader {
            revision: hub.store.current_revision(),
            ..Default::default()
        }),
        watch_id: id,
        canceled: true,
        ..why
    };
    let _ = tx.send(resp).await;
}
