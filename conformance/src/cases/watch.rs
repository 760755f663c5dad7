//! Watch: created and canceled responses, ids, start revisions, filters,
//! prev_kv, compaction, atomic multi-event revisions and progress.

use std::time::Duration;

use bytes::Bytes;
use kine::proto::watch_create_request::FilterType;
use kine::proto::*;

use crate::case::*;

/// How long a case waits to be sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(300);

fn create(key: Bytes, end: Bytes) -> WatchCreateRequest {
    WatchCreateRequest {
        key,
        range_end: end,
        ..Default::default()
    }
}

fn all_events(rs: &[WatchResponse]) -> Vec<Event> {
    rs.iter().flat_map(|r| r.events.clone()).collect()
}

/// Checks a created response: id, and header at `rev`.
fn is_created(cx: &Ctx, r: &WatchResponse, id: i64, rev: i64) -> CaseResult {
    cx.eq(
        "created response (watch_id, created, canceled, events)",
        (id, true, false, 0),
        (r.watch_id, r.created, r.canceled, r.events.len()),
    )?;
    cx.eq("created response header.revision", rev, hrev(&r.header))
}

/// Watch ids count from 0 per stream; each create gets a created response
/// at the current revision.
pub async fn ids_from_zero(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(create(cx.k("a"), Bytes::new())))
        .await?;
    let r = w.next(&cx).await?;
    is_created(&cx, &r, 0, r0)?;
    w.send(&cx, watch_create(create(cx.k("b"), Bytes::new())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 1, r0)?;
    w.send(&cx, watch_create(create(cx.k("c"), Bytes::new())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 2, r0)?;
    // A second stream starts again at 0.
    let mut w2 = cx
        .watch(watch_create(create(cx.k("a"), Bytes::new())))
        .await?;
    is_created(&cx, &w2.next(&cx).await?, 0, r0)
}

/// Puts and deletes arrive as events; a delete's kv is a tombstone with the
/// key and the deletion revision.
pub async fn put_and_delete_events(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(create(cx.k("a"), Bytes::new())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    cx.put("a", "1").await?;
    cx.put("b", "other key").await?;
    cx.put("a", "2").await?;
    cx.ok(del(cx.k("a"))).await?;
    let rs = w.events(&cx, 3).await?;
    cx.eq(
        "events",
        vec![
            ev_put(kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1), None),
            ev_put(kv(cx.k("a"), "2", r0 + 1, r0 + 3, 2), None),
            ev_del(cx.k("a"), r0 + 4, None),
        ],
        all_events(&rs),
    )?;
    for r in &rs {
        cx.eq(
            "event response (watch_id, created, canceled)",
            (0, false, false),
            (r.watch_id, r.created, r.canceled),
        )?;
        cx.eq(
            "event response header.revision",
            r.events
                .last()
                .and_then(|e| e.kv.as_ref())
                .map(|k| k.mod_revision),
            Some(hrev(&r.header)),
        )?;
    }
    w.silent(&cx, QUIET).await
}

/// A prefix watch sees every key under the prefix and nothing else.
pub async fn prefix_watch(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let pre = cx.k("dir/");
    let mut w = cx
        .watch(watch_create(create(pre.clone(), prefix_end(&pre))))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    cx.put("dir/x", "1").await?;
    cx.put("dis", "outside").await?;
    cx.put("dir/y/z", "2").await?;
    cx.put("dir0", "outside").await?;
    let rs = w.events(&cx, 2).await?;
    cx.eq(
        "events",
        vec![
            ev_put(kv(cx.k("dir/x"), "1", r0 + 1, r0 + 1, 1), None),
            ev_put(kv(cx.k("dir/y/z"), "2", r0 + 3, r0 + 3, 1), None),
        ],
        all_events(&rs),
    )?;
    w.silent(&cx, QUIET).await
}

/// prev_kv: the key before each event; none for a create.
pub async fn prev_kv(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            prev_kv: true,
            ..create(cx.k("a"), Bytes::new())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    cx.put("a", "1").await?;
    cx.put("a", "2").await?;
    cx.ok(del(cx.k("a"))).await?;
    let rs = w.events(&cx, 3).await?;
    cx.eq(
        "events",
        vec![
            ev_put(kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1), None),
            ev_put(
                kv(cx.k("a"), "2", r0 + 1, r0 + 2, 2),
                Some(kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1)),
            ),
            ev_del(
                cx.k("a"),
                r0 + 3,
                Some(kv(cx.k("a"), "2", r0 + 1, r0 + 2, 2)),
            ),
        ],
        all_events(&rs),
    )
}

/// A past start revision replays history in order, then goes live.
pub async fn start_revision_in_the_past(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    cx.put("b", "1").await?;
    cx.put("a", "2").await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            start_revision: r0 + 1,
            prev_kv: true,
            ..create(cx.prefix.clone(), cx.end())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0 + 3)?;
    let rs = w.events(&cx, 3).await?;
    cx.eq(
        "replayed events",
        vec![
            ev_put(kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1), None),
            ev_put(kv(cx.k("b"), "1", r0 + 2, r0 + 2, 1), None),
            ev_put(
                kv(cx.k("a"), "2", r0 + 1, r0 + 3, 2),
                Some(kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1)),
            ),
        ],
        all_events(&rs),
    )?;
    cx.put("c", "1").await?;
    let rs = w.events(&cx, 1).await?;
    cx.eq(
        "live event",
        vec![ev_put(kv(cx.k("c"), "1", r0 + 4, r0 + 4, 1), None)],
        all_events(&rs),
    )
}

/// Start revision 0 means "after now": no history.
pub async fn start_revision_zero(cx: Ctx) -> CaseResult {
    cx.put("a", "old").await?;
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            start_revision: 0,
            ..create(cx.k("a"), Bytes::new())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    w.silent(&cx, QUIET).await?;
    cx.put("a", "new").await?;
    let rs = w.events(&cx, 1).await?;
    cx.eq(
        "events",
        vec![ev_put(kv(cx.k("a"), "new", r0, r0 + 1, 2), None)],
        all_events(&rs),
    )
}

/// A future start revision waits for it: earlier writes are not sent.
pub async fn start_revision_in_the_future(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            start_revision: r0 + 3,
            ..create(cx.k("a"), Bytes::new())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    cx.put("a", "1").await?; // r0+1
    cx.put("a", "2").await?; // r0+2
    w.silent(&cx, QUIET).await?;
    cx.put("a", "3").await?; // r0+3
    let rs = w.events(&cx, 1).await?;
    cx.eq(
        "events",
        vec![ev_put(kv(cx.k("a"), "3", r0 + 1, r0 + 3, 3), None)],
        all_events(&rs),
    )
}

/// NOPUT and NODELETE filters.
pub async fn filters(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..create(cx.k("a"), Bytes::new())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    w.send(
        &cx,
        watch_create(WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..create(cx.k("a"), Bytes::new())
        }),
    )
    .await?;
    is_created(&cx, &w.next(&cx).await?, 1, r0)?;
    cx.put("a", "1").await?;
    cx.ok(del(cx.k("a"))).await?;
    let rs = w.events(&cx, 2).await?;
    let mut by_watch: Vec<(i64, Vec<Event>)> =
        rs.iter().map(|r| (r.watch_id, r.events.clone())).collect();
    by_watch.sort_by_key(|(id, _)| *id);
    cx.eq(
        "events by watch",
        vec![
            (0, vec![ev_del(cx.k("a"), r0 + 2, None)]),
            (1, vec![ev_put(kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1), None)]),
        ],
        by_watch,
    )
}

/// A txn's events share one revision and arrive in one response, in op
/// order; a range delete likewise.
pub async fn txn_events_in_one_response(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("c", "1").await?;
    let mut w = cx
        .watch(watch_create(create(cx.prefix.clone(), cx.end())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0 + 1)?;
    cx.ok(txn(
        vec![],
        vec![
            op_put(put(cx.k("b"), "1")),
            op_put(put(cx.k("a"), "1")),
            op_del(del(cx.k("c"))),
        ],
        vec![],
    ))
    .await?;
    let r = w.next(&cx).await?;
    cx.eq(
        "one response with the txn's events",
        vec![
            ev_put(kv(cx.k("b"), "1", r0 + 2, r0 + 2, 1), None),
            ev_put(kv(cx.k("a"), "1", r0 + 2, r0 + 2, 1), None),
            ev_del(cx.k("c"), r0 + 2, None),
        ],
        r.events,
    )?;
    cx.eq("header.revision", r0 + 2, hrev(&r.header))?;
    cx.ok(del_range(cx.k("a"), cx.k("c"))).await?;
    let r = w.next(&cx).await?;
    cx.eq(
        "one response with the range delete's events",
        vec![
            ev_del(cx.k("a"), r0 + 3, None),
            ev_del(cx.k("b"), r0 + 3, None),
        ],
        r.events,
    )
}

/// Cancel: a canceled response, then no more events for that watch.
pub async fn cancel(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(create(cx.k("a"), Bytes::new())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    w.send(&cx, watch_cancel(0)).await?;
    let r = w.next(&cx).await?;
    cx.eq(
        "cancel response (watch_id, created, canceled, events)",
        (0, false, true, 0),
        (r.watch_id, r.created, r.canceled, r.events.len()),
    )?;
    cx.put("a", "1").await?;
    w.silent(&cx, QUIET).await?;
    // The id is not reused on this stream.
    w.send(&cx, watch_create(create(cx.k("a"), Bytes::new())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 1, r0 + 1)
}

/// A client-chosen watch id is used as is.
pub async fn explicit_watch_id(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            watch_id: 7,
            ..create(cx.k("a"), Bytes::new())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 7, r0)?;
    cx.put("a", "1").await?;
    let rs = w.events(&cx, 1).await?;
    cx.eq("event watch_id", 7, rs[0].watch_id)?;
    // The same id again on this stream is refused: created and canceled.
    w.send(
        &cx,
        watch_create(WatchCreateRequest {
            watch_id: 7,
            ..create(cx.k("b"), Bytes::new())
        }),
    )
    .await?;
    let r = w.next(&cx).await?;
    cx.eq(
        "duplicate id (watch_id, created, canceled)",
        (-1, true, true),
        (r.watch_id, r.created, r.canceled),
    )?;
    // Server-chosen ids skip nothing: the first is 0.
    w.send(&cx, watch_create(create(cx.k("c"), Bytes::new())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0 + 1)
}

/// Canceling an unknown watch id is answered with nothing.
pub async fn cancel_unknown_id(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(create(cx.k("a"), Bytes::new())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    w.send(&cx, watch_cancel(99)).await?;
    w.silent(&cx, QUIET).await?;
    // The stream still works.
    cx.put("a", "1").await?;
    let rs = w.events(&cx, 1).await?;
    cx.eq("event watch_id", 0, rs[0].watch_id)
}

/// Starting below the compacted revision: created, then canceled with
/// compact_revision set.
pub async fn compacted_start_revision(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    cx.put("a", "2").await?;
    cx.put("a", "3").await?;
    cx.ok(CompactionRequest {
        revision: r0 + 2,
        physical: true,
    })
    .await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            start_revision: r0 + 1,
            ..create(cx.k("a"), Bytes::new())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0 + 3)?;
    let r = w.next(&cx).await?;
    cx.eq(
        "compacted response (watch_id, canceled, compact_revision, events)",
        (0, true, r0 + 2, 0),
        (r.watch_id, r.canceled, r.compact_revision, r.events.len()),
    )?;
    // Starting exactly at the compact revision works.
    w.send(
        &cx,
        watch_create(WatchCreateRequest {
            start_revision: r0 + 2,
            ..create(cx.k("a"), Bytes::new())
        }),
    )
    .await?;
    is_created(&cx, &w.next(&cx).await?, 1, r0 + 3)?;
    let rs = w.events(&cx, 2).await?;
    cx.eq(
        "revisions from the compact revision",
        vec![r0 + 2, r0 + 3],
        all_events(&rs)
            .iter()
            .filter_map(|e| e.kv.as_ref().map(|k| k.mod_revision))
            .collect::<Vec<_>>(),
    )
}

/// A range with end below key cannot be watched: created and canceled, id -1.
pub async fn invalid_range(cx: Ctx) -> CaseResult {
    let mut w = cx.watch(watch_create(create(cx.k("b"), cx.k("a")))).await?;
    let r = w.next(&cx).await?;
    cx.eq(
        "(watch_id, created, canceled)",
        (-1, true, true),
        (r.watch_id, r.created, r.canceled),
    )
}

/// An empty key watches from "\0": with range_end "\0", every key.
pub async fn empty_key_watches_all(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(create(
            Bytes::new(),
            Bytes::from_static(b"\0"),
        )))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    cx.put("a", "1").await?;
    cx.ok(put(Bytes::from_static(b"zzz-elsewhere"), "2"))
        .await?;
    let rs = w.events(&cx, 2).await?;
    cx.eq(
        "keys",
        vec![cx.k("a"), Bytes::from_static(b"zzz-elsewhere")],
        all_events(&rs)
            .iter()
            .filter_map(|e| e.kv.as_ref().map(|k| k.key.clone()))
            .collect::<Vec<_>>(),
    )
}

/// A progress request on a synced stream is answered with watch_id -1, the
/// current revision and no events.
pub async fn progress_request(cx: Ctx) -> CaseResult {
    let r0 = cx.put("a", "1").await?;
    let mut w = cx
        .watch(watch_create(create(cx.k("a"), Bytes::new())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    cx.put("b", "other key").await?;
    w.send(&cx, watch_progress()).await?;
    let r = w.next(&cx).await?;
    cx.eq(
        "progress (watch_id, created, canceled, compact_revision, events)",
        (-1, false, false, 0, 0),
        (
            r.watch_id,
            r.created,
            r.canceled,
            r.compact_revision,
            r.events.len(),
        ),
    )?;
    cx.eq("progress header.revision", r0 + 1, hrev(&r.header))
}

/// While a watcher on the stream waits for a future revision the progress
/// request is not answered (etcd fixed this after 3.4.23); once the store
/// reaches it, events come and a later request is answered.
pub async fn progress_waits_for_sync(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            start_revision: r0 + 2,
            ..create(cx.k("a"), Bytes::new())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    w.send(&cx, watch_progress()).await?;
    w.silent(&cx, QUIET).await?;
    cx.put("a", "1").await?;
    cx.put("a", "2").await?;
    let rs = w.events(&cx, 1).await?;
    cx.eq(
        "event revision",
        Some(r0 + 2),
        rs[0].events[0].kv.as_ref().map(|k| k.mod_revision),
    )?;
    w.send(&cx, watch_progress()).await?;
    let r = w.next(&cx).await?;
    cx.eq(
        "progress (watch_id, events, revision)",
        (-1, 0, r0 + 2),
        (r.watch_id, r.events.len(), hrev(&r.header)),
    )
}

/// Kubernetes' watch: prefix, start = rv + 1, prev_kv, progress_notify,
/// `hasleader` metadata; every non-create event carries prev_kv.
pub async fn kubernetes_watch(cx: Ctx) -> CaseResult {
    let pre = cx.k("pods/");
    let rv = cx.put("pods/a", "v1").await?;
    let mut w = cx
        .watch_with(
            watch_create(WatchCreateRequest {
                start_revision: rv + 1,
                prev_kv: true,
                progress_notify: true,
                ..create(pre.clone(), prefix_end(&pre))
            }),
            true,
        )
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, rv)?;
    cx.put("pods/a", "v2").await?;
    cx.put("pods/b", "v1").await?;
    cx.ok(del(cx.k("pods/a"))).await?;
    let rs = w.events(&cx, 3).await?;
    cx.eq(
        "events",
        vec![
            ev_put(
                kv(cx.k("pods/a"), "v2", rv, rv + 1, 2),
                Some(kv(cx.k("pods/a"), "v1", rv, rv, 1)),
            ),
            ev_put(kv(cx.k("pods/b"), "v1", rv + 2, rv + 2, 1), None),
            ev_del(
                cx.k("pods/a"),
                rv + 3,
                Some(kv(cx.k("pods/a"), "v2", rv, rv + 1, 2)),
            ),
        ],
        all_events(&rs),
    )
}

/// Many writes arrive in revision order.
pub async fn events_in_order(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let mut w = cx
        .watch(watch_create(create(cx.prefix.clone(), cx.end())))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0)?;
    for i in 0..20 {
        cx.put(&format!("k{}", i % 3), &i.to_string()).await?;
    }
    let rs = w.events(&cx, 20).await?;
    let revs: Vec<i64> = all_events(&rs)
        .iter()
        .filter_map(|e| e.kv.as_ref().map(|k| k.mod_revision))
        .collect();
    cx.eq("revisions", (r0 + 1..=r0 + 20).collect::<Vec<_>>(), revs)
}

/// Compacting at a key's deletion revision: a watch from the compact
/// revision still gets the delete. etcd 3.4.23 loses it (etcd #18089,
/// #19179, fixed later), hence k3rs-only.
pub async fn compaction_at_delete_revision(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?; // r0+1
    cx.ok(del(cx.k("a"))).await?; // r0+2
    cx.put("b", "1").await?; // r0+3
    cx.ok(CompactionRequest {
        revision: r0 + 2,
        physical: true,
    })
    .await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            start_revision: r0 + 2,
            ..create(cx.prefix.clone(), cx.end())
        }))
        .await?;
    is_created(&cx, &w.next(&cx).await?, 0, r0 + 3)?;
    let rs = w.events(&cx, 2).await?;
    cx.eq(
        "events from the compact revision",
        vec![
            ev_del(cx.k("a"), r0 + 2, None),
            ev_put(kv(cx.k("b"), "1", r0 + 3, r0 + 3, 1), None),
        ],
        all_events(&rs),
    )
}

/// With fragment=true a revision whose events exceed the request limit
/// (three 700 KiB prev_kvs of one range delete) comes in several responses,
/// every one but the last flagged `fragment`; without it, in one.
pub async fn fragment(cx: Ctx) -> CaseResult {
    let big = Bytes::from(vec![b'f'; 700 * 1024]);
    for n in ["a", "b", "c"] {
        cx.ok(PutRequest {
            key: cx.k(n),
            value: big.clone(),
            ..Default::default()
        })
        .await?;
    }
    let r0 = cx.rev().await?;
    let mut frag = cx
        .watch(watch_create(WatchCreateRequest {
            prev_kv: true,
            fragment: true,
            ..create(cx.prefix.clone(), cx.end())
        }))
        .await?;
    is_created(&cx, &frag.next(&cx).await?, 0, r0)?;
    let mut whole = cx
        .watch(watch_create(WatchCreateRequest {
            prev_kv: true,
            ..create(cx.prefix.clone(), cx.end())
        }))
        .await?;
    is_created(&cx, &whole.next(&cx).await?, 0, r0)?;
    cx.ok(del_range(cx.prefix.clone(), cx.end())).await?;
    let rs = frag.events(&cx, 3).await?;
    let flags: Vec<bool> = rs.iter().map(|r| r.fragment).collect();
    cx.check("several responses", rs.len() > 1, &flags)?;
    let mut want = vec![true; rs.len() - 1];
    want.push(false);
    cx.eq("fragment flags", want, flags)?;
    let keys: Vec<Bytes> = all_events(&rs)
        .iter()
        .filter_map(|e| e.kv.as_ref().map(|k| k.key.clone()))
        .collect();
    cx.eq("events", vec![cx.k("a"), cx.k("b"), cx.k("c")], keys)?;
    let r = whole.next(&cx).await?;
    cx.eq(
        "without fragment: one response, (events, fragment)",
        (3, false),
        (r.events.len(), r.fragment),
    )
}
