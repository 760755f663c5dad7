//! Compact: what stays readable, what errors, and that compaction takes no
//! revision.

use kine::proto::*;

use crate::case::*;

/// After compacting at R: reads below R fail, at and above R work; history
/// at R keeps each key's latest version as of R.
pub async fn compact_then_read(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?; // r0+1
    cx.put("a", "2").await?; // r0+2
    cx.put("b", "1").await?; // r0+3
    cx.ok(del(cx.k("b"))).await?; // r0+4
    cx.put("a", "3").await?; // r0+5
    let c = cx
        .ok(CompactionRequest {
            revision: r0 + 4,
            physical: false,
        })
        .await?;
    cx.eq(
        "compact header.revision is current",
        r0 + 5,
        hrev(&c.header),
    )?;
    cx.eq("revision after compact", r0 + 5, cx.rev().await?)?;
    let at = |rev: i64| RangeRequest {
        revision: rev,
        ..range(cx.prefix.clone(), cx.end())
    };
    for rev in [r0 + 1, r0 + 3] {
        cx.err(at(rev), errors::COMPACTED).await?;
    }
    let r = cx.ok(at(r0 + 4)).await?;
    cx.eq(
        "at the compact revision",
        vec![kv(cx.k("a"), "2", r0 + 1, r0 + 2, 2)],
        r.kvs,
    )?;
    let r = cx.ok(at(r0 + 5)).await?;
    cx.eq(
        "current",
        vec![kv(cx.k("a"), "3", r0 + 1, r0 + 5, 3)],
        r.kvs,
    )?;
    cx.eq(
        "current read",
        vec![kv(cx.k("a"), "3", r0 + 1, r0 + 5, 3)],
        cx.ok(at(0)).await?.kvs,
    )
}

/// Compacting at or below the compacted revision is ErrCompacted; past
/// current is ErrFutureRev; at current is fine.
pub async fn compact_errors(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    cx.put("a", "2").await?;
    cx.put("a", "3").await?;
    cx.err(
        CompactionRequest {
            revision: r0 + 4,
            physical: false,
        },
        errors::FUTURE_REV,
    )
    .await?;
    cx.err(
        CompactionRequest {
            revision: r0 + 100,
            physical: true,
        },
        errors::FUTURE_REV,
    )
    .await?;
    cx.ok(CompactionRequest {
        revision: r0 + 2,
        physical: false,
    })
    .await?;
    cx.err(
        CompactionRequest {
            revision: r0 + 2,
            physical: false,
        },
        errors::COMPACTED,
    )
    .await?;
    cx.err(
        CompactionRequest {
            revision: r0 + 1,
            physical: false,
        },
        errors::COMPACTED,
    )
    .await?;
    let c = cx
        .ok(CompactionRequest {
            revision: r0 + 3,
            physical: true,
        })
        .await?;
    cx.eq(
        "compact at current: header.revision",
        r0 + 3,
        hrev(&c.header),
    )?;
    cx.err(
        RangeRequest {
            revision: r0 + 2,
            ..get(cx.k("a"))
        },
        errors::COMPACTED,
    )
    .await?;
    let r = cx
        .ok(RangeRequest {
            revision: r0 + 3,
            ..get(cx.k("a"))
        })
        .await?;
    cx.eq(
        "read at the compact revision",
        vec![kv(cx.k("a"), "3", r0 + 1, r0 + 3, 3)],
        r.kvs,
    )?;
    cx.eq("revision", r0 + 3, cx.rev().await?)
}

/// Compaction keeps the current state of every key, including versions and
/// create revisions, and later writes continue the revision sequence.
pub async fn compact_keeps_current_state(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?; // r0+1
    cx.put("b", "1").await?; // r0+2
    cx.put("a", "2").await?; // r0+3
    cx.ok(CompactionRequest {
        revision: r0 + 3,
        physical: true,
    })
    .await?;
    let r = cx.ok(range(cx.prefix.clone(), cx.end())).await?;
    cx.eq(
        "state",
        vec![
            kv(cx.k("a"), "2", r0 + 1, r0 + 3, 2),
            kv(cx.k("b"), "1", r0 + 2, r0 + 2, 1),
        ],
        r.kvs,
    )?;
    cx.eq("next put", r0 + 4, cx.put("a", "3").await?)?;
    cx.eq(
        "a",
        Some(kv(cx.k("a"), "3", r0 + 1, r0 + 4, 3)),
        cx.get("a").await?,
    )?;
    // A txn with a range at a compacted revision fails whole.
    cx.err(
        txn(
            vec![],
            vec![
                op_put(put(cx.k("c"), "x")),
                op_range(RangeRequest {
                    revision: r0 + 1,
                    ..get(cx.k("a"))
                }),
            ],
            vec![],
        ),
        errors::COMPACTED,
    )
    .await?;
    cx.eq("c not written", None, cx.get("c").await?)?;
    // count at the compact revision.
    let r = cx
        .ok(RangeRequest {
            revision: r0 + 3,
            count_only: true,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq("count at the compact revision", 2, r.count)
}

/// A key deleted before the compact revision is gone from every readable
/// revision; a key deleted after it is still readable at it.
pub async fn compact_and_deletes(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("gone", "1").await?; // r0+1
    cx.put("kept", "1").await?; // r0+2
    cx.ok(del(cx.k("gone"))).await?; // r0+3
    cx.put("x", "1").await?; // r0+4
    cx.ok(del(cx.k("kept"))).await?; // r0+5
    cx.ok(CompactionRequest {
        revision: r0 + 4,
        physical: true,
    })
    .await?;
    let r = cx
        .ok(RangeRequest {
            revision: r0 + 4,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq(
        "at the compact revision",
        keys(&[kv(cx.k("kept"), "", 0, 0, 0), kv(cx.k("x"), "", 0, 0, 0)]),
        keys(&r.kvs),
    )?;
    let r = cx.ok(range(cx.prefix.clone(), cx.end())).await?;
    cx.eq(
        "current",
        vec![kv(cx.k("x"), "1", r0 + 4, r0 + 4, 1)],
        r.kvs,
    )?;
    // Recreating a compacted-away key starts it over.
    cx.put("gone", "2").await?;
    cx.eq(
        "gone recreated",
        Some(kv(cx.k("gone"), "2", r0 + 6, r0 + 6, 1)),
        cx.get("gone").await?,
    )
}

/// Compaction takes no revision, physical or not.
pub async fn compact_takes_no_revision(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    cx.put("a", "2").await?;
    let c = cx
        .ok(CompactionRequest {
            revision: r0 + 1,
            physical: false,
        })
        .await?;
    cx.eq("header.revision", r0 + 2, hrev(&c.header))?;
    let c = cx
        .ok(CompactionRequest {
            revision: r0 + 2,
            physical: true,
        })
        .await?;
    cx.eq("header.revision", r0 + 2, hrev(&c.header))?;
    cx.eq("revision", r0 + 2, cx.rev().await?)?;
    cx.eq("next put", r0 + 3, cx.put("a", "3").await?)
}

/// A physical compaction answers even when it has no row to delete
/// (k3rs once waited for a deletion that never came).
pub async fn physical_compaction_with_nothing_to_delete(cx: Ctx) -> CaseResult {
    cx.put("a", "1").await?;
    let first = cx.rev().await?;
    cx.ok(CompactionRequest {
        revision: first,
        physical: true,
    })
    .await?;
    // A new key, so nothing below the next revision is superseded.
    cx.put("fresh", "1").await?;
    let second = CompactionRequest {
        revision: first + 1,
        physical: true,
    };
    let answered = tokio::time::timeout(std::time::Duration::from_secs(10), cx.ok(second)).await;
    match answered {
        Ok(r) => cx.eq("header.revision", first + 1, hrev(&r?.header)),
        Err(_) => Err(cx.fail(
            "physical compaction answers",
            "an answer",
            "no answer in 10 s",
        )),
    }
}
