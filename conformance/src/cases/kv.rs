//! Put, Range and DeleteRange: revisions, versions, ranges, limits, sorting,
//! filters, historic reads and request checks.

use bytes::Bytes;
use kine::proto::range_request::{SortOrder as So, SortTarget as St};
use kine::proto::*;

use crate::case::*;

/// An empty store is at revision 1 and the first write gets 2.
pub async fn empty_store_is_revision_1(cx: Ctx) -> CaseResult {
    let r = cx.ok(get(cx.k("a"))).await?;
    cx.eq("header.revision of an empty store", 1, hrev(&r.header))?;
    cx.eq("count", 0, r.count)?;
    cx.eq("kvs", 0, r.kvs.len())?;
    cx.eq("more", false, r.more)?;
    let p = cx.ok(put(cx.k("a"), "1")).await?;
    cx.eq("first write's revision", 2, hrev(&p.header))?;
    let r = cx.ok(get(cx.k("a"))).await?;
    cx.eq("kvs", vec![kv(cx.k("a"), "1", 2, 2, 1)], r.kvs)
}

/// Each put takes one revision; the version counts puts, even of the same
/// value; create_revision stays.
pub async fn put_one_revision_per_write(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.eq("put a", r0 + 1, cx.put("a", "x").await?)?;
    cx.eq("put b", r0 + 2, cx.put("b", "y").await?)?;
    cx.eq("put a again, same value", r0 + 3, cx.put("a", "x").await?)?;
    let r = cx.ok(get(cx.k("a"))).await?;
    cx.eq("header.revision", r0 + 3, hrev(&r.header))?;
    cx.eq("a", vec![kv(cx.k("a"), "x", r0 + 1, r0 + 3, 2)], r.kvs)?;
    let r = cx.ok(get(cx.k("b"))).await?;
    cx.eq("b", vec![kv(cx.k("b"), "y", r0 + 2, r0 + 2, 1)], r.kvs)
}

/// `prev_kv` returns the key before the put, and nothing for a new key.
pub async fn put_prev_kv(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let p = cx
        .ok(PutRequest {
            prev_kv: true,
            ..put(cx.k("a"), "1")
        })
        .await?;
    cx.eq("prev_kv of a new key", None, p.prev_kv)?;
    let p = cx
        .ok(PutRequest {
            prev_kv: true,
            ..put(cx.k("a"), "2")
        })
        .await?;
    cx.eq(
        "prev_kv",
        Some(kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1)),
        p.prev_kv,
    )?;
    let p = cx.ok(put(cx.k("a"), "3")).await?;
    cx.eq("prev_kv when not asked", None, p.prev_kv)
}

/// An empty value is a value.
pub async fn put_empty_value(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "").await?;
    let r = cx.ok(get(cx.k("a"))).await?;
    cx.eq("kvs", vec![kv(cx.k("a"), "", r0 + 1, r0 + 1, 1)], r.kvs)?;
    cx.eq("count", 1, r.count)
}

/// Empty keys are refused by Put, Range, DeleteRange and inside Txn.
pub async fn empty_key_errors(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.err(put("", "v"), errors::EMPTY_KEY).await?;
    cx.err(get(""), errors::EMPTY_KEY).await?;
    cx.err(range("", "z"), errors::EMPTY_KEY).await?;
    cx.err(del(""), errors::EMPTY_KEY).await?;
    cx.err(
        txn(vec![], vec![op_put(put("", "v"))], vec![]),
        errors::EMPTY_KEY,
    )
    .await?;
    cx.err(
        txn(vec![], vec![], vec![op_range(get(""))]),
        errors::EMPTY_KEY,
    )
    .await?;
    cx.eq("revision after refused requests", r0, cx.rev().await?)
}

/// ignore_value/ignore_lease need an existing key, and refuse a value or
/// lease given with them.
pub async fn put_ignore_flags_errors(cx: Ctx) -> CaseResult {
    cx.err(
        PutRequest {
            ignore_value: true,
            ..put(cx.k("missing"), "")
        },
        errors::KEY_NOT_FOUND,
    )
    .await?;
    cx.err(
        PutRequest {
            ignore_lease: true,
            ..put(cx.k("missing"), "v")
        },
        errors::KEY_NOT_FOUND,
    )
    .await?;
    // A plain put checks its lease before the key (etcd's applier); a
    // lease id no test grants.
    cx.err(
        PutRequest {
            ignore_value: true,
            lease: 0x6b33_7273_dead,
            ..put(cx.k("missing"), "")
        },
        errors::LEASE_NOT_FOUND,
    )
    .await?;
    cx.put("a", "1").await?;
    cx.err(
        PutRequest {
            ignore_value: true,
            ..put(cx.k("a"), "v")
        },
        errors::VALUE_PROVIDED,
    )
    .await?;
    cx.err(
        PutRequest {
            ignore_lease: true,
            lease: 7,
            ..put(cx.k("a"), "v")
        },
        errors::LEASE_PROVIDED,
    )
    .await
}

/// ignore_value keeps the value but still bumps mod_revision and version.
pub async fn put_ignore_value(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "keep").await?;
    let p = cx
        .ok(PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put(cx.k("a"), "")
        })
        .await?;
    cx.eq("revision", r0 + 2, hrev(&p.header))?;
    cx.eq(
        "prev_kv",
        Some(kv(cx.k("a"), "keep", r0 + 1, r0 + 1, 1)),
        p.prev_kv,
    )?;
    cx.eq(
        "a",
        Some(kv(cx.k("a"), "keep", r0 + 1, r0 + 2, 2)),
        cx.get("a").await?,
    )?;
    // ignore_lease on a key without a lease keeps lease 0.
    cx.ok(PutRequest {
        ignore_lease: true,
        ..put(cx.k("a"), "new")
    })
    .await?;
    cx.eq(
        "a",
        Some(kv(cx.k("a"), "new", r0 + 1, r0 + 3, 3)),
        cx.get("a").await?,
    )
}

/// A delete resets the version; the next put creates the key anew.
pub async fn version_resets_on_delete(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    cx.put("a", "2").await?;
    let d = cx.ok(del(cx.k("a"))).await?;
    cx.eq("deleted", 1, d.deleted)?;
    cx.eq("delete revision", r0 + 3, hrev(&d.header))?;
    cx.eq("a after delete", None, cx.get("a").await?)?;
    cx.put("a", "3").await?;
    cx.eq(
        "a recreated",
        Some(kv(cx.k("a"), "3", r0 + 4, r0 + 4, 1)),
        cx.get("a").await?,
    )
}

/// Deleting nothing does not take a revision.
pub async fn delete_nothing_keeps_revision(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let d = cx.ok(del(cx.k("missing"))).await?;
    cx.eq("deleted", 0, d.deleted)?;
    cx.eq("header.revision", r0, hrev(&d.header))?;
    let d = cx
        .ok(DeleteRangeRequest {
            prev_kv: true,
            ..del_range(cx.k("m"), cx.k("n"))
        })
        .await?;
    cx.eq("deleted", 0, d.deleted)?;
    cx.eq("prev_kvs", 0, d.prev_kvs.len())?;
    cx.eq("header.revision", r0, hrev(&d.header))?;
    cx.eq("revision", r0, cx.rev().await?)
}

/// A range delete takes one revision for all its keys; prev_kvs in key order.
pub async fn delete_range_one_revision(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    for (i, n) in ["c", "a", "b", "d"].iter().enumerate() {
        cx.eq("put", r0 + 1 + i as i64, cx.put(n, n).await?)?;
    }
    let d = cx
        .ok(DeleteRangeRequest {
            prev_kv: true,
            ..del_range(cx.k("a"), cx.k("d"))
        })
        .await?;
    cx.eq("deleted", 3, d.deleted)?;
    cx.eq("header.revision", r0 + 5, hrev(&d.header))?;
    cx.eq(
        "prev_kvs",
        vec![
            kv(cx.k("a"), "a", r0 + 2, r0 + 2, 1),
            kv(cx.k("b"), "b", r0 + 3, r0 + 3, 1),
            kv(cx.k("c"), "c", r0 + 1, r0 + 1, 1),
        ],
        d.prev_kvs,
    )?;
    let r = cx.ok(range(cx.prefix.clone(), cx.end())).await?;
    cx.eq(
        "left",
        vec![cx.k("d")],
        r.kvs.into_iter().map(|k| k.key).collect::<Vec<_>>(),
    )?;
    // Without prev_kv, no prev_kvs.
    let d = cx.ok(del(cx.k("d"))).await?;
    cx.eq("prev_kvs when not asked", 0, d.prev_kvs.len())?;
    cx.eq("revision", r0 + 6, hrev(&d.header))
}

/// `range_end` empty is one key; `[key, range_end)` excludes range_end;
/// range_end below key is empty.
pub async fn range_end_forms(cx: Ctx) -> CaseResult {
    for n in ["a", "a0", "b", "c"] {
        cx.put(n, n).await?;
    }
    let r = cx.ok(get(cx.k("a"))).await?;
    cx.eq(
        "single key",
        vec![format!("{}a", s(&cx.prefix))],
        keys(&r.kvs),
    )?;
    let r = cx.ok(range(cx.k("a"), cx.k("c"))).await?;
    cx.eq(
        "[a, c)",
        ["a", "a0", "b"]
            .iter()
            .map(|n| format!("{}{n}", s(&cx.prefix)))
            .collect::<Vec<_>>(),
        keys(&r.kvs),
    )?;
    cx.eq("count", 3, r.count)?;
    let r = cx.ok(range(cx.k("c"), cx.k("a"))).await?;
    cx.eq("end below key: kvs", 0, r.kvs.len())?;
    cx.eq("end below key: count", 0, r.count)?;
    let r = cx.ok(range(cx.k("a"), cx.k("a"))).await?;
    cx.eq("end equal to key: count", 0, r.count)?;
    let r = cx.ok(get(cx.k("zz"))).await?;
    cx.eq("missing key: count", 0, r.count)
}

/// `range_end = "\0"` reads every key from `key` on; `key = range_end = "\0"`
/// reads everything.
pub async fn range_from_key(cx: Ctx) -> CaseResult {
    for n in ["a", "b", "c"] {
        cx.put(n, n).await?;
    }
    let r = cx.ok(range(cx.k("b"), Bytes::from_static(b"\0"))).await?;
    cx.eq(
        "from b",
        vec![cx.k("b"), cx.k("c")],
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )?;
    cx.eq("count", 2, r.count)?;
    let r = cx
        .ok(range(Bytes::from_static(b"\0"), Bytes::from_static(b"\0")))
        .await?;
    cx.eq("all keys", 3, r.count)?;
    let d = cx
        .ok(del_range(cx.k("b"), Bytes::from_static(b"\0")))
        .await?;
    cx.eq("deleted from b", 2, d.deleted)?;
    let r = cx
        .ok(range(Bytes::from_static(b"\0"), Bytes::from_static(b"\0")))
        .await?;
    cx.eq(
        "left",
        vec![cx.k("a")],
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `limit` cuts kvs; `more` says whether more matched; `count` ignores limit.
pub async fn range_limit(cx: Ctx) -> CaseResult {
    for n in ["a", "b", "c", "d", "e"] {
        cx.put(n, n).await?;
    }
    for (limit, n, more) in [
        (0, 5, false),
        (1, 1, true),
        (2, 2, true),
        (4, 4, true),
        (5, 5, false),
        (6, 5, false),
        (100, 5, false),
    ] {
        let r = cx
            .ok(RangeRequest {
                limit,
                ..range(cx.prefix.clone(), cx.end())
            })
            .await?;
        cx.eq(&format!("limit {limit}: kvs"), n, r.kvs.len())?;
        cx.eq(&format!("limit {limit}: more"), more, r.more)?;
        cx.eq(&format!("limit {limit}: count"), 5, r.count)?;
    }
    let r = cx
        .ok(RangeRequest {
            limit: 2,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq(
        "first two in key order",
        vec![cx.k("a"), cx.k("b")],
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )?;
    // A negative limit means no limit.
    let r = cx
        .ok(RangeRequest {
            limit: -1,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq("limit -1: kvs", 5, r.kvs.len())?;
    cx.eq("limit -1: more", false, r.more)
}

/// Three keys whose key, version, create, mod and value orders all differ:
/// a (version 4, create 3rd, mod last, value "x"), b (2, 1st, 1st, "z"),
/// c (3, 2nd, 2nd, "y").
async fn sort_fixture(cx: &Ctx) -> CaseResult {
    for (n, v) in [
        ("b", "z"),
        ("c", "y"),
        ("a", "x"),
        ("c", "y"),
        ("a", "x"),
        ("a", "x"),
        ("b", "z"),
        ("c", "y"),
        ("a", "x"),
    ] {
        cx.put(n, v).await?;
    }
    Ok(())
}

/// Every sort target in every order; a non-key target with order NONE
/// sorts ascending; sort with limit.
pub async fn range_sort(cx: Ctx) -> CaseResult {
    sort_fixture(&cx).await?;
    let cases: &[(St, So, &[&str])] = &[
        (St::Key, So::None, &["a", "b", "c"]),
        (St::Key, So::Ascend, &["a", "b", "c"]),
        (St::Key, So::Descend, &["c", "b", "a"]),
        (St::Version, So::Ascend, &["b", "c", "a"]),
        (St::Version, So::Descend, &["a", "c", "b"]),
        (St::Version, So::None, &["b", "c", "a"]),
        (St::Create, So::Ascend, &["b", "c", "a"]),
        (St::Create, So::Descend, &["a", "c", "b"]),
        (St::Create, So::None, &["b", "c", "a"]),
        (St::Mod, So::Ascend, &["b", "c", "a"]),
        (St::Mod, So::Descend, &["a", "c", "b"]),
        (St::Mod, So::None, &["b", "c", "a"]),
        (St::Value, So::Ascend, &["a", "c", "b"]),
        (St::Value, So::Descend, &["b", "c", "a"]),
        (St::Value, So::None, &["a", "c", "b"]),
    ];
    for (target, order, want) in cases {
        let r = cx
            .ok(RangeRequest {
                sort_target: *target as i32,
                sort_order: *order as i32,
                ..range(cx.prefix.clone(), cx.end())
            })
            .await?;
        let want: Vec<Bytes> = want.iter().map(|n| cx.k(n)).collect();
        cx.eq(
            &format!("order by {target:?} {order:?}"),
            want.clone(),
            r.kvs.iter().map(|k| k.key.clone()).collect(),
        )?;
        cx.eq("count", 3, r.count)?;
        // With a limit, the sort applies before the cut.
        let r = cx
            .ok(RangeRequest {
                sort_target: *target as i32,
                sort_order: *order as i32,
                limit: 2,
                ..range(cx.prefix.clone(), cx.end())
            })
            .await?;
        let want2: Vec<Bytes> = want[..2].to_vec();
        cx.eq(
            &format!("limit 2, order by {target:?} {order:?}"),
            want2,
            r.kvs.iter().map(|k| k.key.clone()).collect(),
        )?;
        cx.eq("more", true, r.more)?;
        cx.eq("count", 3, r.count)?;
    }
    Ok(())
}

/// Sort order and target outside the enums are refused (etcd 3.5+;
/// 3.4.23 accepted them, hence k3rs-only).
pub async fn range_invalid_sort(cx: Ctx) -> CaseResult {
    cx.err(
        RangeRequest {
            sort_order: 7,
            ..get(cx.k("a"))
        },
        errors::INVALID_SORT,
    )
    .await?;
    cx.err(
        RangeRequest {
            sort_target: 9,
            ..get(cx.k("a"))
        },
        errors::INVALID_SORT,
    )
    .await
}

/// min/max mod and create revision filters; count ignores them.
pub async fn range_revision_filters(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?; // a create r0+1
    cx.put("b", "1").await?; // b create r0+2
    cx.put("c", "1").await?; // c create r0+3
    cx.put("a", "2").await?; // a mod r0+4
    let base = || range(cx.prefix.clone(), cx.end());
    let cases: Vec<(&str, RangeRequest, Vec<&str>)> = vec![
        (
            "min_mod r0+3",
            RangeRequest {
                min_mod_revision: r0 + 3,
                ..base()
            },
            vec!["a", "c"],
        ),
        (
            "max_mod r0+2",
            RangeRequest {
                max_mod_revision: r0 + 2,
                ..base()
            },
            vec!["b"],
        ),
        (
            "min_create r0+2",
            RangeRequest {
                min_create_revision: r0 + 2,
                ..base()
            },
            vec!["b", "c"],
        ),
        (
            "max_create r0+2",
            RangeRequest {
                max_create_revision: r0 + 2,
                ..base()
            },
            vec!["a", "b"],
        ),
        (
            "min_mod r0+2 max_mod r0+3",
            RangeRequest {
                min_mod_revision: r0 + 2,
                max_mod_revision: r0 + 3,
                ..base()
            },
            vec!["b", "c"],
        ),
        (
            "min_create r0+2 max_mod r0+3",
            RangeRequest {
                min_create_revision: r0 + 2,
                max_mod_revision: r0 + 3,
                ..base()
            },
            vec!["b", "c"],
        ),
    ];
    for (what, req, want) in cases {
        let r = cx.ok(req).await?;
        let want: Vec<Bytes> = want.iter().map(|n| cx.k(n)).collect();
        cx.eq(what, want, r.kvs.iter().map(|k| k.key.clone()).collect())?;
        cx.eq(&format!("{what}: count ignores filters"), 3, r.count)?;
        cx.eq(&format!("{what}: more"), false, r.more)?;
    }
    // A filter with a limit: the filter applies first, then the limit.
    let r = cx
        .ok(RangeRequest {
            min_mod_revision: r0 + 2,
            limit: 1,
            ..base()
        })
        .await?;
    cx.eq(
        "filter + limit 1",
        vec![cx.k("a")],
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )?;
    cx.eq("filter + limit 1: more", true, r.more)?;
    cx.eq("filter + limit 1: count", 3, r.count)
}

/// keys_only drops values and keeps everything else.
pub async fn range_keys_only(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "value-a").await?;
    cx.put("b", "value-b").await?;
    let r = cx
        .ok(RangeRequest {
            keys_only: true,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq(
        "kvs",
        vec![
            kv(cx.k("a"), "", r0 + 1, r0 + 1, 1),
            kv(cx.k("b"), "", r0 + 2, r0 + 2, 1),
        ],
        r.kvs,
    )?;
    cx.eq("count", 2, r.count)?;
    let r = cx
        .ok(RangeRequest {
            keys_only: true,
            limit: 1,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq("kvs", vec![kv(cx.k("a"), "", r0 + 1, r0 + 1, 1)], r.kvs)?;
    cx.eq("more", true, r.more)
}

/// count_only returns the count and no kvs, whatever the limit.
pub async fn range_count_only(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    for n in ["a", "b", "c"] {
        cx.put(n, "v").await?;
    }
    let r = cx
        .ok(RangeRequest {
            count_only: true,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq("kvs", 0, r.kvs.len())?;
    cx.eq("count", 3, r.count)?;
    cx.eq("more", false, r.more)?;
    cx.eq("header.revision", r0 + 3, hrev(&r.header))?;
    let r = cx
        .ok(RangeRequest {
            count_only: true,
            limit: 1,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq("count with limit 1", 3, r.count)?;
    cx.eq("kvs with limit 1", 0, r.kvs.len())?;
    cx.eq("more with limit 1", false, r.more)?;
    let r = cx
        .ok(RangeRequest {
            count_only: true,
            revision: r0 + 1,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq("count at r0+1", 1, r.count)
}

/// A read at revision R sees the store as of R; header.revision stays the
/// current revision.
pub async fn range_historic(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?; // r0+1
    cx.put("a", "2").await?; // r0+2
    cx.put("b", "1").await?; // r0+3
    cx.ok(del(cx.k("a"))).await?; // r0+4
    cx.put("a", "3").await?; // r0+5
    let at = |rev: i64| RangeRequest {
        revision: rev,
        ..get(cx.k("a"))
    };
    let r = cx.ok(at(r0)).await?;
    cx.eq("a at r0", 0, r.count)?;
    cx.eq("header.revision is current", r0 + 5, hrev(&r.header))?;
    cx.eq(
        "a at r0+1",
        vec![kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1)],
        cx.ok(at(r0 + 1)).await?.kvs,
    )?;
    cx.eq(
        "a at r0+2",
        vec![kv(cx.k("a"), "2", r0 + 1, r0 + 2, 2)],
        cx.ok(at(r0 + 2)).await?.kvs,
    )?;
    cx.eq(
        "a at r0+3",
        vec![kv(cx.k("a"), "2", r0 + 1, r0 + 2, 2)],
        cx.ok(at(r0 + 3)).await?.kvs,
    )?;
    let r = cx.ok(at(r0 + 4)).await?;
    cx.eq("a at r0+4 (deleted)", (0, 0), (r.kvs.len(), r.count))?;
    cx.eq(
        "a at r0+5",
        vec![kv(cx.k("a"), "3", r0 + 5, r0 + 5, 1)],
        cx.ok(at(r0 + 5)).await?.kvs,
    )?;
    let r = cx
        .ok(RangeRequest {
            revision: r0 + 3,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq(
        "prefix at r0+3",
        vec![
            kv(cx.k("a"), "2", r0 + 1, r0 + 2, 2),
            kv(cx.k("b"), "1", r0 + 3, r0 + 3, 1),
        ],
        r.kvs,
    )?;
    cx.eq("header.revision", r0 + 5, hrev(&r.header))?;
    let r = cx
        .ok(RangeRequest {
            revision: r0 + 2,
            limit: 1,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq(
        "at r0+2 limit 1: count, more",
        (1, false),
        (r.count, r.more),
    )
}

/// Revision 0 or negative means current; past current is ErrFutureRev.
pub async fn range_future_and_current_revision(cx: Ctx) -> CaseResult {
    let cur = cx.put("a", "1").await?;
    for rev in [0, -1, -100, cur] {
        let r = cx
            .ok(RangeRequest {
                revision: rev,
                ..get(cx.k("a"))
            })
            .await?;
        cx.eq(&format!("count at revision {rev}"), 1, r.count)?;
    }
    cx.err(
        RangeRequest {
            revision: cur + 1,
            ..get(cx.k("a"))
        },
        errors::FUTURE_REV,
    )
    .await?;
    cx.err(
        RangeRequest {
            revision: cur + 1000,
            ..range(cx.prefix.clone(), cx.end())
        },
        errors::FUTURE_REV,
    )
    .await
}

/// Keys and values are bytes: 0x00 and 0xff survive, and a prefix ending in
/// 0xff still ranges correctly.
pub async fn binary_keys_and_values(cx: Ctx) -> CaseResult {
    let mut k1 = cx.prefix.to_vec();
    k1.extend_from_slice(&[0xff, 0x00, 0x01]);
    let mut k2 = cx.prefix.to_vec();
    k2.extend_from_slice(&[0xff, 0xff]);
    let mut k3 = cx.prefix.to_vec();
    k3.extend_from_slice(&[0x00]);
    let value = Bytes::from_static(&[0, 1, 2, 0xff, 0xfe]);
    for k in [&k1, &k2, &k3] {
        cx.ok(PutRequest {
            key: k.clone().into(),
            value: value.clone(),
            ..Default::default()
        })
        .await?;
    }
    let mut pre = cx.prefix.to_vec();
    pre.push(0xff);
    let r = cx
        .ok(range(Bytes::from(pre.clone()), prefix_end(&pre)))
        .await?;
    cx.eq(
        "0xff-prefixed keys",
        vec![Bytes::from(k1), Bytes::from(k2)],
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )?;
    cx.eq("value", value.clone(), r.kvs[0].value.clone())?;
    let r = cx.ok(range(cx.prefix.clone(), cx.end())).await?;
    cx.eq("count", 3, r.count)?;
    cx.eq("first key", Bytes::from(k3), r.kvs[0].key.clone())
}

/// A request over 1.5 MiB is refused with "request is too large"; the store
/// does not move.
pub async fn request_too_large(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let big = Bytes::from(vec![b'x'; 1536 * 1024 + 1024]);
    cx.err(
        PutRequest {
            key: cx.k("big"),
            value: big.clone(),
            ..Default::default()
        },
        errors::REQUEST_TOO_LARGE,
    )
    .await?;
    cx.err(
        txn(
            vec![],
            vec![op_put(PutRequest {
                key: cx.k("big"),
                value: big,
                ..Default::default()
            })],
            vec![],
        ),
        errors::REQUEST_TOO_LARGE,
    )
    .await?;
    cx.eq("revision", r0, cx.rev().await?)?;
    // Just under the limit is fine.
    let ok = Bytes::from(vec![b'y'; 1024 * 1024]);
    let p = cx
        .ok(PutRequest {
            key: cx.k("ok"),
            value: ok.clone(),
            ..Default::default()
        })
        .await?;
    cx.eq("revision", r0 + 1, hrev(&p.header))?;
    let r = cx.ok(get(cx.k("ok"))).await?;
    cx.eq("1 MiB value round-trips", ok.len(), r.kvs[0].value.len())
}

/// Response headers carry ids and the current revision.
pub async fn response_headers(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let p = cx.ok(put(cx.k("a"), "1")).await?;
    let h = p.header.unwrap_or_default();
    cx.check("cluster_id is set", h.cluster_id != 0, h)?;
    cx.check("member_id is set", h.member_id != 0, h)?;
    cx.check("raft_term is set", h.raft_term != 0, h)?;
    cx.eq(
        "masked header",
        Some(ResponseHeader {
            revision: r0 + 1,
            ..Default::default()
        }),
        masked(&p.header),
    )?;
    let r = cx.ok(get(cx.k("a"))).await?;
    let h2 = r.header.unwrap_or_default();
    cx.eq(
        "same cluster and member on every response",
        (h.cluster_id, h.member_id),
        (h2.cluster_id, h2.member_id),
    )
}

/// A serializable read answers like a linearizable one on a single member.
pub async fn range_serializable(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    let r = cx
        .ok(RangeRequest {
            serializable: true,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq("kvs", vec![kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1)], r.kvs)?;
    cx.eq("header.revision", r0 + 1, hrev(&r.header))?;
    let r = cx
        .ok(RangeRequest {
            serializable: true,
            revision: r0,
            ..get(cx.k("a"))
        })
        .await?;
    cx.eq("historic serializable count", 0, r.count)
}

/// Concurrent writers each get their own revision: the responses' header
/// revisions are exactly the next N revisions, and each key's mod_revision
/// is the revision its put reported.
pub async fn concurrent_writes_get_distinct_revisions(cx: Ctx) -> CaseResult {
    const N: usize = 40;
    let r0 = cx.rev().await?;
    cx.note(format!("{N} concurrent Puts of distinct keys"));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let mut client = cx.c.kv.clone();
        let key = cx.k(&format!("k{i:02}"));
        set.spawn(async move {
            (
                key.clone(),
                client
                    .put(put(key, "v"))
                    .await
                    .map(|r| hrev(&r.into_inner().header)),
            )
        });
    }
    let mut got = Vec::new();
    while let Some(res) = set.join_next().await {
        let (key, rev) = res.map_err(|e| cx.fail("task", "ok", e.to_string()))?;
        let rev = rev.map_err(|s| cx.fail("put succeeds", "ok", format!("{s:?}")))?;
        got.push((key, rev));
    }
    let mut revs: Vec<i64> = got.iter().map(|(_, r)| *r).collect();
    revs.sort();
    cx.eq(
        "revisions",
        (r0 + 1..=r0 + N as i64).collect::<Vec<_>>(),
        revs,
    )?;
    let r = cx.ok(range(cx.prefix.clone(), cx.end())).await?;
    for (key, rev) in got {
        let m = r.kvs.iter().find(|k| k.key == key).map(|k| k.mod_revision);
        cx.eq("mod_revision is the put's revision", Some(rev), m)?;
    }
    Ok(())
}

/// A range response larger than 4 MiB (five 1 MiB values) arrives whole.
pub async fn large_range_response(cx: Ctx) -> CaseResult {
    let value = Bytes::from(vec![b'L'; 1024 * 1024]);
    for i in 0..5 {
        cx.ok(PutRequest {
            key: cx.k(&format!("big{i}")),
            value: value.clone(),
            ..Default::default()
        })
        .await?;
    }
    let r = cx.ok(range(cx.prefix.clone(), cx.end())).await?;
    cx.eq("(kvs, count)", (5, 5), (r.kvs.len(), r.count))?;
    cx.check(
        "values whole",
        r.kvs.iter().all(|k| k.value == value),
        r.kvs.iter().map(|k| k.value.len()).collect::<Vec<_>>(),
    )
}
