//! The request shapes kube-apiserver sends (its etcd3 storage layer and the
//! Kubernetes client wrapper): get, paged list, count, size estimate,
//! create/update/delete transactions, the compactor's CAS and the health
//! probe.

use bytes::Bytes;
use kine::proto::response_op::Response as R;
use kine::proto::*;

use crate::case::*;

/// Get: `Range{key, limit 1}`; the object's resourceVersion is its
/// mod_revision, and a missing object still reports the current revision.
pub async fn get_object(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let r = cx
        .ok(RangeRequest {
            limit: 1,
            ..get(cx.k("pods/ns/missing"))
        })
        .await?;
    cx.eq(
        "missing: (kvs, count, more)",
        (0, 0, false),
        (r.kvs.len(), r.count, r.more),
    )?;
    cx.eq("missing: header.revision", r0, hrev(&r.header))?;
    cx.put("pods/ns/p1", "{}").await?;
    let r = cx
        .ok(RangeRequest {
            limit: 1,
            ..get(cx.k("pods/ns/p1"))
        })
        .await?;
    cx.eq(
        "found",
        vec![kv(cx.k("pods/ns/p1"), "{}", r0 + 1, r0 + 1, 1)],
        r.kvs,
    )?;
    cx.eq("found: (count, more)", (1, false), (r.count, r.more))?;
    // GetCurrentResourceVersion: a range on the resource prefix, header only.
    let r = cx
        .ok(RangeRequest {
            limit: 1,
            ..get(cx.k("pods"))
        })
        .await?;
    cx.eq("current resource version", r0 + 1, hrev(&r.header))
}

/// Paged list: the first page at revision 0, then `lastKey + "\0"` at the
/// first page's revision; writes between pages do not show; `count` is the
/// keys left in `[continue, end)`, and Kubernetes computes hasMore from it.
pub async fn paged_list(cx: Ctx) -> CaseResult {
    let pre = cx.k("pods/");
    let end = prefix_end(&pre);
    for i in 0..5 {
        cx.put(&format!("pods/p{i}"), &format!("v{i}")).await?;
    }
    let page = |key: Bytes, rev: i64| RangeRequest {
        key,
        range_end: end.clone(),
        limit: 2,
        revision: rev,
        ..Default::default()
    };
    let first = cx.ok(page(pre.clone(), 0)).await?;
    let rv = hrev(&first.header);
    cx.eq(
        "page 1 keys",
        vec![cx.k("pods/p0"), cx.k("pods/p1")],
        first.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )?;
    cx.eq("page 1 (count, more)", (5, true), (first.count, first.more))?;
    // A write between pages: not in the list at rv.
    cx.put("pods/p2", "changed").await?;
    cx.put("pods/p9", "new").await?;
    let mut cont = first.kvs[1].key.to_vec();
    cont.push(0);
    let second = cx.ok(page(cont.into(), rv)).await?;
    cx.eq(
        "page 2 keys",
        vec![cx.k("pods/p2"), cx.k("pods/p3")],
        second.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )?;
    cx.eq(
        "page 2 value at rv",
        Bytes::from_static(b"v2"),
        second.kvs[0].value.clone(),
    )?;
    cx.eq(
        "page 2 (count, more)",
        (3, true),
        (second.count, second.more),
    )?;
    cx.eq(
        "page 2 header.revision is current",
        rv + 2,
        hrev(&second.header),
    )?;
    let mut cont = second.kvs[1].key.to_vec();
    cont.push(0);
    let third = cx.ok(page(cont.into(), rv)).await?;
    cx.eq(
        "page 3 keys",
        vec![cx.k("pods/p4")],
        third.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )?;
    cx.eq(
        "page 3 (count, more)",
        (1, false),
        (third.count, third.more),
    )
}

/// A continue token whose revision was compacted: 410 Gone, from
/// ErrCompacted.
pub async fn paged_list_compacted(cx: Ctx) -> CaseResult {
    let pre = cx.k("pods/");
    for i in 0..3 {
        cx.put(&format!("pods/p{i}"), "v").await?;
    }
    let first = cx
        .ok(RangeRequest {
            key: pre.clone(),
            range_end: prefix_end(&pre),
            limit: 1,
            ..Default::default()
        })
        .await?;
    let rv = hrev(&first.header);
    cx.put("pods/p0", "v2").await?;
    cx.ok(CompactionRequest {
        revision: rv + 1,
        physical: false,
    })
    .await?;
    let mut cont = first.kvs[0].key.to_vec();
    cont.push(0);
    cx.err(
        RangeRequest {
            key: cont.into(),
            range_end: prefix_end(&pre),
            limit: 1,
            revision: rv,
            ..Default::default()
        },
        errors::COMPACTED,
    )
    .await
}

/// Count (`count_only`) and the size estimator (`keys_only`).
pub async fn count_and_estimate(cx: Ctx) -> CaseResult {
    let pre = cx.k("secrets/");
    for i in 0..4 {
        cx.put(&format!("secrets/s{i}"), "0123456789").await?;
    }
    let r = cx
        .ok(RangeRequest {
            count_only: true,
            ..range(pre.clone(), prefix_end(&pre))
        })
        .await?;
    cx.eq("count", (4, 0), (r.count, r.kvs.len()))?;
    let r = cx
        .ok(RangeRequest {
            keys_only: true,
            ..range(pre.clone(), prefix_end(&pre))
        })
        .await?;
    cx.eq("keys_only: kvs", 4, r.kvs.len())?;
    cx.check(
        "keys_only: no values",
        r.kvs.iter().all(|k| k.value.is_empty()),
        &r.kvs,
    )
}

/// Create: `Txn{[MOD(key) = 0], [Put]}`; the header revision is the new
/// object's resourceVersion. A second create fails with no responses.
pub async fn create(cx: Ctx) -> CaseResult {
    let key = cx.k("configmaps/ns/c1");
    let create = || {
        txn(
            vec![cmp(key.clone(), Cr::Equal, Ct::Mod, Tv::Mod(0))],
            vec![op_put(put(key.clone(), "obj"))],
            vec![],
        )
    };
    let t = cx.ok(create()).await?;
    cx.eq("succeeded", true, t.succeeded)?;
    let rv = hrev(&t.header);
    let got = cx.ok(get(key.clone())).await?;
    cx.eq(
        "resourceVersion = mod_revision",
        rv,
        got.kvs[0].mod_revision,
    )?;
    let t = cx.ok(create()).await?;
    cx.eq(
        "second create: (succeeded, responses)",
        (false, 0),
        (t.succeeded, t.responses.len()),
    )?;
    cx.eq("second create: header.revision", rv, hrev(&t.header))
}

/// Update: `Txn{[MOD(key) = rv], [Put], [Range key]}`; a stale rv gets the
/// current object back from the failure branch.
pub async fn guaranteed_update(cx: Ctx) -> CaseResult {
    let key = cx.k("pods/ns/u1");
    let rv1 = cx
        .ok(put(key.clone(), "v1"))
        .await
        .map(|p| hrev(&p.header))?;
    let update = |rv: i64, v: &'static str| {
        txn(
            vec![cmp(key.clone(), Cr::Equal, Ct::Mod, Tv::Mod(rv))],
            vec![op_put(put(key.clone(), v))],
            vec![op_range(get(key.clone()))],
        )
    };
    let t = cx.ok(update(rv1, "v2")).await?;
    cx.eq("update: succeeded", true, t.succeeded)?;
    let rv2 = hrev(&t.header);
    cx.eq("update: new revision", rv1 + 1, rv2)?;
    let t = cx.ok(update(rv1, "v3")).await?;
    cx.eq("stale update: succeeded", false, t.succeeded)?;
    match &t.responses.first().and_then(|r| r.response.clone()) {
        Some(R::ResponseRange(r)) => cx.eq(
            "stale update: current object",
            vec![kv(key.clone(), "v2", rv1, rv2, 2)],
            r.kvs.clone(),
        )?,
        other => {
            return Err(cx.fail(
                "failure branch range",
                "ResponseRange",
                format!("{other:?}"),
            ));
        }
    }
    cx.eq("stale update: header.revision", rv2, hrev(&t.header))
}

/// Delete: `Txn{[MOD(key) = rv], [DeleteRange key], [Range key]}`.
pub async fn conditional_delete(cx: Ctx) -> CaseResult {
    let key = cx.k("pods/ns/d1");
    let rv1 = cx
        .ok(put(key.clone(), "v1"))
        .await
        .map(|p| hrev(&p.header))?;
    let delete = |rv: i64| {
        txn(
            vec![cmp(key.clone(), Cr::Equal, Ct::Mod, Tv::Mod(rv))],
            vec![op_del(del(key.clone()))],
            vec![op_range(get(key.clone()))],
        )
    };
    let t = cx.ok(delete(rv1 - 1)).await?;
    cx.eq("stale delete: succeeded", false, t.succeeded)?;
    match &t.responses.first().and_then(|r| r.response.clone()) {
        Some(R::ResponseRange(r)) => cx.eq("stale delete: object", 1, r.kvs.len())?,
        other => {
            return Err(cx.fail(
                "failure branch range",
                "ResponseRange",
                format!("{other:?}"),
            ));
        }
    }
    let t = cx.ok(delete(rv1)).await?;
    cx.eq("delete: succeeded", true, t.succeeded)?;
    cx.eq("delete: revision", rv1 + 1, hrev(&t.header))?;
    match &t.responses.first().and_then(|r| r.response.clone()) {
        Some(R::ResponseDeleteRange(d)) => cx.eq("deleted", 1, d.deleted)?,
        other => {
            return Err(cx.fail(
                "success branch delete",
                "ResponseDeleteRange",
                format!("{other:?}"),
            ));
        }
    }
    cx.eq("gone", 0, cx.ok(get(key.clone())).await?.count)
}

/// The compactor: `Txn{[VERSION(compact_rev_key) = t], [Put(rev)],
/// [Range]}` then `Compact{rev}`; losing the CAS returns the key.
pub async fn compactor(cx: Ctx) -> CaseResult {
    let key = cx.k("compact_rev_key");
    let cas = |t: i64, rev: i64| {
        txn(
            vec![cmp(key.clone(), Cr::Equal, Ct::Version, Tv::Version(t))],
            vec![op_put(put(key.clone(), rev.to_string()))],
            vec![op_range(get(key.clone()))],
        )
    };
    let rev = cx.put("pods/a", "1").await?;
    let t = cx.ok(cas(0, rev)).await?;
    cx.eq("first CAS: succeeded", true, t.succeeded)?;
    cx.ok(CompactionRequest {
        revision: rev,
        physical: false,
    })
    .await?;
    // Another apiserver lost the race with an old version.
    let t = cx.ok(cas(0, rev)).await?;
    cx.eq("stale CAS: succeeded", false, t.succeeded)?;
    match &t.responses.first().and_then(|r| r.response.clone()) {
        Some(R::ResponseRange(r)) => {
            cx.eq(
                "stale CAS: version",
                Some(1),
                r.kvs.first().map(|k| k.version),
            )?;
            cx.eq(
                "stale CAS: value",
                Some(Bytes::from(rev.to_string())),
                r.kvs.first().map(|k| k.value.clone()),
            )?;
        }
        other => {
            return Err(cx.fail(
                "failure branch range",
                "ResponseRange",
                format!("{other:?}"),
            ));
        }
    }
    let rev2 = cx.put("pods/a", "2").await?;
    let t = cx.ok(cas(1, rev2)).await?;
    cx.eq("second CAS: succeeded", true, t.succeeded)?;
    cx.ok(CompactionRequest {
        revision: rev2,
        physical: false,
    })
    .await?;
    cx.err(
        RangeRequest {
            revision: rev2 - 1,
            ..get(cx.k("pods/a"))
        },
        errors::COMPACTED,
    )
    .await
}

/// The health probe reads `<prefix>/health`; a missing key is healthy.
pub async fn health_probe(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let r = cx.ok(get(cx.k("health"))).await?;
    cx.eq("(count, kvs)", (0, 0), (r.count, r.kvs.len()))?;
    cx.eq("header.revision", r0, hrev(&r.header))
}
