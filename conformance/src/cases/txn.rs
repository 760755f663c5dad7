//! Txn: compares of every target and result, branches, op ordering,
//! nesting, limits and the revision a txn takes.

use bytes::Bytes;
use kine::proto::response_op::Response as R;
use kine::proto::*;

use crate::case::*;

fn range_resp(op: &ResponseOp) -> Option<&RangeResponse> {
    match &op.response {
        Some(R::ResponseRange(r)) => Some(r),
        _ => None,
    }
}

/// An empty txn succeeds, does nothing and takes no revision.
pub async fn empty_txn(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let t = cx.ok(txn(vec![], vec![], vec![])).await?;
    cx.eq("succeeded", true, t.succeeded)?;
    cx.eq("responses", 0, t.responses.len())?;
    cx.eq("header.revision", r0, hrev(&t.header))
}

/// A txn that only reads takes no revision, in either branch.
pub async fn read_only_txn_keeps_revision(cx: Ctx) -> CaseResult {
    cx.put("a", "1").await?;
    let r0 = cx.rev().await?;
    for want in [true, false] {
        let c = cmp(
            cx.k("a"),
            if want { Cr::Equal } else { Cr::NotEqual },
            Ct::Value,
            Tv::Value("1".into()),
        );
        let t = cx
            .ok(txn(
                vec![c],
                vec![op_range(get(cx.k("a")))],
                vec![op_range(get(cx.k("a")))],
            ))
            .await?;
        cx.eq("succeeded", want, t.succeeded)?;
        cx.eq("header.revision", r0, hrev(&t.header))?;
        cx.eq(
            "range count",
            Some(1),
            range_resp(&t.responses[0]).map(|r| r.count),
        )?;
    }
    // A delete of nothing inside a txn does not write either.
    let t = cx
        .ok(txn(vec![], vec![op_del(del(cx.k("missing")))], vec![]))
        .await?;
    cx.eq(
        "header.revision after deleting nothing",
        r0,
        hrev(&t.header),
    )?;
    cx.eq("revision", r0, cx.rev().await?)
}

/// All writes of a txn share one revision; responses come in op order.
pub async fn txn_writes_one_revision(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("c", "old").await?;
    let t = cx
        .ok(txn(
            vec![],
            vec![
                op_put(put(cx.k("a"), "1")),
                op_put(PutRequest {
                    prev_kv: true,
                    ..put(cx.k("b"), "2")
                }),
                op_del(DeleteRangeRequest {
                    prev_kv: true,
                    ..del(cx.k("c"))
                }),
            ],
            vec![],
        ))
        .await?;
    cx.eq("succeeded", true, t.succeeded)?;
    cx.eq("header.revision", r0 + 2, hrev(&t.header))?;
    cx.eq("responses", 3, t.responses.len())?;
    match &t.responses[0].response {
        // Inner responses carry only the revision: ids and term stay 0.
        Some(R::ResponsePut(p)) => cx.eq(
            "put response header",
            Some(ResponseHeader {
                revision: r0 + 2,
                ..Default::default()
            }),
            p.header,
        )?,
        other => return Err(cx.fail("response 0 is a put", "ResponsePut", format!("{other:?}"))),
    }
    match &t.responses[1].response {
        Some(R::ResponsePut(p)) => cx.eq("put prev_kv of new key", None, p.prev_kv.clone())?,
        other => return Err(cx.fail("response 1 is a put", "ResponsePut", format!("{other:?}"))),
    }
    match &t.responses[2].response {
        Some(R::ResponseDeleteRange(d)) => {
            cx.eq("deleted", 1, d.deleted)?;
            cx.eq(
                "prev_kvs",
                vec![kv(cx.k("c"), "old", r0 + 1, r0 + 1, 1)],
                d.prev_kvs.clone(),
            )?;
        }
        other => {
            return Err(cx.fail(
                "response 2 is a delete",
                "ResponseDeleteRange",
                format!("{other:?}"),
            ));
        }
    }
    cx.eq(
        "a",
        Some(kv(cx.k("a"), "1", r0 + 2, r0 + 2, 1)),
        cx.get("a").await?,
    )?;
    cx.eq(
        "b",
        Some(kv(cx.k("b"), "2", r0 + 2, r0 + 2, 1)),
        cx.get("b").await?,
    )?;
    cx.eq("c", None, cx.get("c").await?)?;
    cx.eq("revision", r0 + 2, cx.rev().await?)
}

/// Later ops see earlier writes of the same txn.
pub async fn later_ops_see_earlier_writes(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("b", "1").await?;
    let t = cx
        .ok(txn(
            vec![],
            vec![
                op_range(range(cx.prefix.clone(), cx.end())),
                op_put(put(cx.k("a"), "new")),
                op_del(del(cx.k("b"))),
                op_range(range(cx.prefix.clone(), cx.end())),
            ],
            vec![],
        ))
        .await?;
    cx.eq(
        "first range",
        Some(vec![kv(cx.k("b"), "1", r0 + 1, r0 + 1, 1)]),
        range_resp(&t.responses[0]).map(|r| r.kvs.clone()),
    )?;
    let last = range_resp(&t.responses[3]);
    cx.eq(
        "last range sees the put and not the delete",
        Some(vec![kv(cx.k("a"), "new", r0 + 2, r0 + 2, 1)]),
        last.map(|r| r.kvs.clone()),
    )?;
    cx.eq("last range count", Some(1), last.map(|r| r.count))?;
    cx.eq(
        "range header.revision inside the txn",
        Some(r0 + 2),
        last.map(|r| hrev(&r.header)),
    )
}

/// Every compare target against every result, on an existing key.
pub async fn compare_targets_and_results(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "m").await?; // create r0+1
    cx.put("a", "m").await?; // mod r0+2, version 2
    // (operand, the key's own value): below, equal and above it.
    let table: Vec<(Tv, Tv, Tv)> = vec![
        (Tv::Version(1), Tv::Version(2), Tv::Version(3)),
        (Tv::Create(r0), Tv::Create(r0 + 1), Tv::Create(r0 + 2)),
        (Tv::Mod(r0 + 1), Tv::Mod(r0 + 2), Tv::Mod(r0 + 3)),
        (
            Tv::Value("l".into()),
            Tv::Value("m".into()),
            Tv::Value("n".into()),
        ),
        (Tv::Lease(-1), Tv::Lease(0), Tv::Lease(1)),
    ];
    for (below, equal, above) in table {
        for (operand, place) in [(below, "below"), (equal, "equal"), (above, "above")] {
            for result in [Cr::Equal, Cr::NotEqual, Cr::Greater, Cr::Less] {
                // The key's value compared with the operand.
                let want = match (result, place) {
                    (Cr::Equal, p) => p == "equal",
                    (Cr::NotEqual, p) => p != "equal",
                    (Cr::Greater, p) => p == "below",
                    (Cr::Less, p) => p == "above",
                };
                let t = cx
                    .ok(txn(
                        vec![cmp(cx.k("a"), result, target_of(&operand), operand.clone())],
                        vec![],
                        vec![],
                    ))
                    .await?;
                cx.eq(
                    &format!("{:?} {result:?} {operand:?}", target_of(&operand)),
                    want,
                    t.succeeded,
                )?;
            }
        }
    }
    Ok(())
}

/// On a missing key a VALUE compare always fails; other targets compare
/// against 0.
pub async fn compare_missing_key(cx: Ctx) -> CaseResult {
    let k = cx.k("missing");
    let table: Vec<(Cr, Tv, bool)> = vec![
        (Cr::Equal, Tv::Value(String::new()), false),
        (Cr::NotEqual, Tv::Value("x".into()), false),
        (Cr::Greater, Tv::Value(String::new()), false),
        (Cr::Less, Tv::Value("z".into()), false),
        (Cr::Equal, Tv::Version(0), true),
        (Cr::Equal, Tv::Create(0), true),
        (Cr::Equal, Tv::Mod(0), true),
        (Cr::Equal, Tv::Lease(0), true),
        (Cr::Greater, Tv::Version(0), false),
        (Cr::Less, Tv::Mod(1), true),
        (Cr::NotEqual, Tv::Create(5), true),
    ];
    for (result, operand, want) in table {
        let t = cx
            .ok(txn(
                vec![cmp(k.clone(), result, target_of(&operand), operand.clone())],
                vec![],
                vec![],
            ))
            .await?;
        cx.eq(
            &format!(
                "missing key: {:?} {result:?} {operand:?}",
                target_of(&operand)
            ),
            want,
            t.succeeded,
        )?;
    }
    Ok(())
}

/// A compare with range_end holds only if every key in the range matches;
/// an empty range behaves like a missing key.
pub async fn compare_over_range(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    for n in ["a", "b", "c"] {
        cx.put(n, "same").await?;
    }
    let over = |result: Cr, v: Tv| Compare {
        range_end: cx.k("d"),
        ..cmp(cx.k("a"), result, target_of(&v), v)
    };
    let table: Vec<(Compare, bool)> = vec![
        (over(Cr::Equal, Tv::Version(1)), true),
        (over(Cr::Equal, Tv::Value("same".into())), true),
        (over(Cr::Less, Tv::Create(r0 + 3)), false),
        (over(Cr::Less, Tv::Create(r0 + 4)), true),
        (over(Cr::Greater, Tv::Mod(r0)), true),
        (over(Cr::NotEqual, Tv::Mod(r0 + 2)), false),
    ];
    for (c, want) in table {
        let t = cx.ok(txn(vec![c.clone()], vec![], vec![])).await?;
        cx.eq("range compare", want, t.succeeded)?;
    }
    cx.put("b", "other").await?;
    for (c, want) in [
        (over(Cr::Equal, Tv::Version(1)), false),
        (over(Cr::Equal, Tv::Value("same".into())), false),
    ] {
        let t = cx.ok(txn(vec![c], vec![], vec![])).await?;
        cx.eq("range compare after b changed", want, t.succeeded)?;
    }
    // Only a and c: b is outside [c, d).
    let c = Compare {
        range_end: cx.k("d"),
        ..cmp(cx.k("c"), Cr::Equal, Ct::Version, Tv::Version(1))
    };
    cx.eq(
        "range compare over [c, d)",
        true,
        cx.ok(txn(vec![c], vec![], vec![])).await?.succeeded,
    )?;
    // An empty range: like a missing key.
    let empty = |v: Tv| Compare {
        range_end: cx.k("y"),
        ..cmp(cx.k("x"), Cr::Equal, target_of(&v), v)
    };
    cx.eq(
        "empty range, VERSION = 0",
        true,
        cx.ok(txn(vec![empty(Tv::Version(0))], vec![], vec![]))
            .await?
            .succeeded,
    )?;
    cx.eq(
        "empty range, VALUE = \"\"",
        false,
        cx.ok(txn(vec![empty(Tv::Value(String::new()))], vec![], vec![]))
            .await?
            .succeeded,
    )
}

/// All compares must hold; otherwise the failure branch runs.
pub async fn branches(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    let ok = cmp(cx.k("a"), Cr::Equal, Ct::Value, Tv::Value("1".into()));
    let bad = cmp(cx.k("a"), Cr::Equal, Ct::Version, Tv::Version(5));
    let t = cx
        .ok(txn(
            vec![ok.clone(), bad],
            vec![op_put(put(cx.k("s"), "s"))],
            vec![op_put(put(cx.k("f"), "f")), op_range(get(cx.k("a")))],
        ))
        .await?;
    cx.eq("succeeded", false, t.succeeded)?;
    cx.eq("responses", 2, t.responses.len())?;
    cx.eq(
        "failure range",
        Some(vec![kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1)]),
        range_resp(&t.responses[1]).map(|r| r.kvs.clone()),
    )?;
    cx.eq("s", None, cx.get("s").await?)?;
    cx.eq(
        "f",
        Some(kv(cx.k("f"), "f", r0 + 2, r0 + 2, 1)),
        cx.get("f").await?,
    )?;
    let t = cx
        .ok(txn(
            vec![ok],
            vec![op_put(put(cx.k("s"), "s"))],
            vec![op_put(put(cx.k("f"), "f"))],
        ))
        .await?;
    cx.eq("succeeded", true, t.succeeded)?;
    cx.eq(
        "s",
        Some(kv(cx.k("s"), "s", r0 + 3, r0 + 3, 1)),
        cx.get("s").await?,
    )?;
    cx.eq(
        "f unchanged",
        Some(kv(cx.k("f"), "f", r0 + 2, r0 + 2, 1)),
        cx.get("f").await?,
    )
}

/// Nested txns run their own compares; the whole thing is one revision.
pub async fn nested_txn(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    let inner_yes = txn(
        vec![cmp(cx.k("a"), Cr::Equal, Ct::Value, Tv::Value("1".into()))],
        vec![op_put(put(cx.k("b"), "inner-success"))],
        vec![op_put(put(cx.k("b"), "inner-failure"))],
    );
    let inner_no = txn(
        vec![cmp(cx.k("a"), Cr::Equal, Ct::Value, Tv::Value("2".into()))],
        vec![op_put(put(cx.k("c"), "inner-success"))],
        vec![
            op_put(put(cx.k("c"), "inner-failure")),
            op_range(get(cx.k("b"))),
        ],
    );
    let t = cx
        .ok(txn(
            vec![],
            vec![
                op_txn(inner_yes),
                op_txn(inner_no),
                op_put(put(cx.k("d"), "outer")),
            ],
            vec![],
        ))
        .await?;
    cx.eq("header.revision", r0 + 2, hrev(&t.header))?;
    let nested: Vec<(bool, usize)> = t
        .responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(R::ResponseTxn(t)) => Some((t.succeeded, t.responses.len())),
            _ => None,
        })
        .collect();
    cx.eq(
        "nested txn results (succeeded, responses)",
        vec![(true, 1), (false, 2)],
        nested,
    )?;
    if let Some(R::ResponseTxn(inner)) = &t.responses[1].response {
        cx.eq(
            "nested range sees the earlier nested put",
            Some(vec![kv(cx.k("b"), "inner-success", r0 + 2, r0 + 2, 1)]),
            range_resp(&inner.responses[1]).map(|r| r.kvs.clone()),
        )?;
        if let Some(R::ResponsePut(p)) = &inner.responses[0].response {
            cx.eq("nested put header revision", r0 + 2, hrev(&p.header))?;
        }
    }
    cx.eq("b", "inner-success".to_string(), s(cx.get("b").await?))?;
    cx.eq("c", "inner-failure".to_string(), s(cx.get("c").await?))?;
    cx.eq(
        "d",
        Some(kv(cx.k("d"), "outer", r0 + 2, r0 + 2, 1)),
        cx.get("d").await?,
    )
}

fn s(kv: Option<KeyValue>) -> String {
    kv.map(|k| String::from_utf8_lossy(&k.value).into_owned())
        .unwrap_or_default()
}

/// 128 ops per list is the limit; 129 in any list is refused.
pub async fn too_many_ops(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let puts = |n: usize, tag: &str| {
        (0..n)
            .map(|i| op_put(put(cx.k(&format!("{tag}{i:03}")), "v")))
            .collect::<Vec<_>>()
    };
    let cmps = |n: usize| {
        (0..n)
            .map(|i| {
                cmp(
                    cx.k(&format!("c{i}")),
                    Cr::Equal,
                    Ct::Version,
                    Tv::Version(0),
                )
            })
            .collect::<Vec<_>>()
    };
    cx.err(txn(vec![], puts(129, "s"), vec![]), errors::TOO_MANY_OPS)
        .await?;
    cx.err(txn(vec![], vec![], puts(129, "f")), errors::TOO_MANY_OPS)
        .await?;
    cx.err(txn(cmps(129), vec![], vec![]), errors::TOO_MANY_OPS)
        .await?;
    cx.eq("revision after refusals", r0, cx.rev().await?)?;
    let t = cx
        .ok(txn(cmps(128), puts(128, "s"), puts(128, "f")))
        .await?;
    cx.eq("128 of each: succeeded", true, t.succeeded)?;
    cx.eq("128 of each: responses", 128, t.responses.len())?;
    cx.eq("128 puts: one revision", r0 + 1, hrev(&t.header))?;
    let r = cx
        .ok(RangeRequest {
            count_only: true,
            ..range(cx.prefix.clone(), cx.end())
        })
        .await?;
    cx.eq("keys written", 128, r.count)
}

/// Two writes to one key in the same branch are refused; ranges over
/// deleted intervals count; separate branches and two deletes are fine.
pub async fn duplicate_keys(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let p = |n: &str| op_put(put(cx.k(n), "v"));
    let d = |n: &str| op_del(del(cx.k(n)));
    cx.err(
        txn(vec![], vec![p("a"), p("a")], vec![]),
        errors::DUPLICATE_KEY,
    )
    .await?;
    cx.err(
        txn(vec![], vec![], vec![p("a"), p("a")]),
        errors::DUPLICATE_KEY,
    )
    .await?;
    cx.err(
        txn(vec![], vec![p("a"), d("a")], vec![]),
        errors::DUPLICATE_KEY,
    )
    .await?;
    cx.err(
        txn(vec![], vec![d("a"), p("a")], vec![]),
        errors::DUPLICATE_KEY,
    )
    .await?;
    cx.err(
        txn(
            vec![],
            vec![op_del(del_range(cx.k("a"), cx.k("c"))), p("b")],
            vec![],
        ),
        errors::DUPLICATE_KEY,
    )
    .await?;
    cx.err(
        txn(
            vec![],
            vec![p("a"), op_txn(txn(vec![], vec![p("a")], vec![]))],
            vec![],
        ),
        errors::DUPLICATE_KEY,
    )
    .await?;
    cx.eq("revision after refusals", r0, cx.rev().await?)?;
    // Fine: one put per branch, a put beside a range, and deletes that overlap.
    let t = cx
        .ok(txn(
            vec![],
            vec![p("a"), op_range(get(cx.k("a")))],
            vec![p("a")],
        ))
        .await?;
    cx.eq("put + range", true, t.succeeded)?;
    let t = cx.ok(txn(vec![], vec![d("a"), d("a")], vec![])).await?;
    cx.eq("delete twice", true, t.succeeded)?;
    let t = cx
        .ok(txn(
            vec![],
            vec![op_del(del_range(cx.k("a"), cx.k("c"))), d("b")],
            vec![],
        ))
        .await?;
    cx.eq("overlapping deletes", true, t.succeeded)?;
    // Nested txns in different branches of the inner txn may write one key.
    let inner = txn(vec![], vec![p("x")], vec![p("x")]);
    let t = cx.ok(txn(vec![], vec![op_txn(inner)], vec![])).await?;
    cx.eq("nested branches", true, t.succeeded)
}

/// Range ops inside a txn honour limit, count_only, keys_only and revision,
/// and a future revision fails the whole txn.
pub async fn txn_range_options(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    for n in ["a", "b", "c"] {
        cx.put(n, "v").await?;
    }
    let all = || range(cx.prefix.clone(), cx.end());
    let t = cx
        .ok(txn(
            vec![],
            vec![
                op_range(RangeRequest { limit: 1, ..all() }),
                op_range(RangeRequest {
                    count_only: true,
                    ..all()
                }),
                op_range(RangeRequest {
                    keys_only: true,
                    ..get(cx.k("a"))
                }),
                op_range(RangeRequest {
                    revision: r0 + 1,
                    ..all()
                }),
            ],
            vec![],
        ))
        .await?;
    let rs: Vec<&RangeResponse> = t.responses.iter().filter_map(range_resp).collect();
    cx.eq("ranges", 4, rs.len())?;
    cx.eq(
        "limit 1: (kvs, more, count)",
        (1, true, 3),
        (rs[0].kvs.len(), rs[0].more, rs[0].count),
    )?;
    cx.eq(
        "count_only: (kvs, count)",
        (0, 3),
        (rs[1].kvs.len(), rs[1].count),
    )?;
    cx.eq(
        "keys_only",
        vec![kv(cx.k("a"), "", r0 + 1, r0 + 1, 1)],
        rs[2].kvs.clone(),
    )?;
    cx.eq(
        "at r0+1",
        vec![kv(cx.k("a"), "v", r0 + 1, r0 + 1, 1)],
        rs[3].kvs.clone(),
    )?;
    cx.eq("range header.revision", r0 + 3, hrev(&rs[3].header))?;
    cx.err(
        txn(
            vec![],
            vec![op_range(RangeRequest {
                revision: r0 + 10,
                ..all()
            })],
            vec![],
        ),
        errors::FUTURE_REV,
    )
    .await?;
    // The branch not taken is not checked against the store.
    let t = cx
        .ok(txn(
            vec![cmp(cx.k("a"), Cr::Equal, Ct::Version, Tv::Version(1))],
            vec![],
            vec![op_range(RangeRequest {
                revision: r0 + 10,
                ..all()
            })],
        ))
        .await?;
    cx.eq("untaken branch with a future revision", true, t.succeeded)
}

/// Put with prev_kv and ignore_value inside a txn behave as outside.
pub async fn txn_put_flags(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.put("a", "1").await?;
    let t = cx
        .ok(txn(
            vec![],
            vec![op_put(PutRequest {
                prev_kv: true,
                ignore_value: true,
                ..put(cx.k("a"), Bytes::new())
            })],
            vec![],
        ))
        .await?;
    match &t.responses[0].response {
        Some(R::ResponsePut(p)) => cx.eq(
            "prev_kv",
            Some(kv(cx.k("a"), "1", r0 + 1, r0 + 1, 1)),
            p.prev_kv.clone(),
        )?,
        other => return Err(cx.fail("a put response", "ResponsePut", format!("{other:?}"))),
    }
    cx.eq(
        "a",
        Some(kv(cx.k("a"), "1", r0 + 1, r0 + 2, 2)),
        cx.get("a").await?,
    )?;
    cx.err(
        txn(
            vec![],
            vec![op_put(PutRequest {
                ignore_value: true,
                ..put(cx.k("missing"), Bytes::new())
            })],
            vec![],
        ),
        errors::KEY_NOT_FOUND,
    )
    .await?;
    cx.eq("revision after refusal", r0 + 2, cx.rev().await?)
}

/// A compare with an empty key is refused like an op with one.
pub async fn compare_empty_key(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    cx.err(
        txn(
            vec![cmp(Bytes::new(), Cr::Equal, Ct::Version, Tv::Version(0))],
            vec![op_put(put(cx.k("a"), "1"))],
            vec![],
        ),
        errors::EMPTY_KEY,
    )
    .await?;
    cx.eq("revision", r0, cx.rev().await?)
}

/// Delete and sorted range ops inside a txn, with prev_kv.
pub async fn txn_delete_and_sorted_range(cx: Ctx) -> CaseResult {
    use kine::proto::range_request::{SortOrder, SortTarget};
    let r0 = cx.rev().await?;
    for n in ["a", "b", "c"] {
        cx.put(n, n).await?;
    }
    let t = cx
        .ok(txn(
            vec![],
            vec![
                op_range(RangeRequest {
                    sort_order: SortOrder::Descend as i32,
                    sort_target: SortTarget::Create as i32,
                    limit: 2,
                    ..range(cx.prefix.clone(), cx.end())
                }),
                op_del(DeleteRangeRequest {
                    prev_kv: true,
                    ..del_range(cx.k("a"), cx.k("c"))
                }),
            ],
            vec![],
        ))
        .await?;
    let first = range_resp(&t.responses[0]);
    cx.eq(
        "sorted range keys",
        Some(vec![cx.k("c"), cx.k("b")]),
        first.map(|r| r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>()),
    )?;
    cx.eq(
        "sorted range (more, count)",
        Some((true, 3)),
        first.map(|r| (r.more, r.count)),
    )?;
    match &t.responses[1].response {
        Some(R::ResponseDeleteRange(d)) => cx.eq(
            "delete prev_kvs",
            vec![
                kv(cx.k("a"), "a", r0 + 1, r0 + 1, 1),
                kv(cx.k("b"), "b", r0 + 2, r0 + 2, 1),
            ],
            d.prev_kvs.clone(),
        )?,
        other => {
            return Err(cx.fail(
                "a delete response",
                "ResponseDeleteRange",
                format!("{other:?}"),
            ));
        }
    }
    cx.eq("revision", r0 + 4, hrev(&t.header))
}

/// Concurrent compare-and-swaps on one key: exactly one wins, the others
/// see the winner's write in their failure branch.
pub async fn concurrent_cas_one_winner(cx: Ctx) -> CaseResult {
    const N: usize = 20;
    let m0 = cx.put("k", "start").await?;
    cx.note(format!(
        "{N} concurrent Txn{{[MOD(k) = {m0}], [Put k], [Range k]}}"
    ));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let mut client = cx.c.kv.clone();
        let key = cx.k("k");
        set.spawn(async move {
            let t = txn(
                vec![cmp(key.clone(), Cr::Equal, Ct::Mod, Tv::Mod(m0))],
                vec![op_put(put(key.clone(), format!("w{i}")))],
                vec![op_range(get(key))],
            );
            client.txn(t).await.map(|r| r.into_inner())
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(res) = set.join_next().await {
        let t = res
            .map_err(|e| cx.fail("task", "ok", e.to_string()))?
            .map_err(|s| cx.fail("txn succeeds", "ok", format!("{s:?}")))?;
        if t.succeeded {
            winners.push(t)
        } else {
            losers.push(t)
        }
    }
    cx.eq("winners", 1, winners.len())?;
    let wrev = hrev(&winners[0].header);
    cx.eq("winner's revision", m0 + 1, wrev)?;
    for l in &losers {
        let seen = range_resp(&l.responses[0])
            .and_then(|r| r.kvs.first())
            .map(|k| k.mod_revision);
        cx.eq("loser sees the winner's write", Some(wrev), seen)?;
    }
    cx.eq("revision", m0 + 1, cx.rev().await?)
}

/// A txn's ranges are checked against the revision before the txn: not at
/// the txn's own new revision; and a negative revision below the compact
/// revision is "compacted" (a plain Range reads the current one instead).
pub async fn txn_range_revisions_are_checked_first(cx: Ctx) -> CaseResult {
    cx.put("a", "1").await?;
    let r0 = cx.rev().await?;
    let at = |revision: i64| {
        op_range(RangeRequest {
            revision,
            ..range(cx.k("a"), "")
        })
    };
    cx.err(
        txn(
            vec![],
            vec![op_put(put(cx.k("a"), "2")), at(r0 + 1)],
            vec![],
        ),
        errors::FUTURE_REV,
    )
    .await?;
    cx.eq("a refused txn writes nothing", r0, cx.rev().await?)?;
    cx.ok(CompactionRequest {
        revision: r0,
        physical: true,
    })
    .await?;
    cx.err(txn(vec![], vec![at(-1)], vec![]), errors::COMPACTED)
        .await?;
    let plain = cx
        .ok(RangeRequest {
            revision: -1,
            ..range(cx.k("a"), "")
        })
        .await?;
    cx.eq("a plain range at -1 reads current", 1, plain.kvs.len())
}
