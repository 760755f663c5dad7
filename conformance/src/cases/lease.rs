//! Leases: grant, revoke, keep-alive, time-to-live, listing, expiry and
//! keys attached to leases.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kine::proto::*;

use crate::case::*;

/// etcd's minimum TTL with the default election timeout.
const MIN_TTL: i64 = 2;

/// An explicit lease id unlikely to collide between cases on one store.
fn lease_id(cx: &Ctx, salt: i64) -> i64 {
    let h = cx.prefix.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    });
    ((h >> 16) as i64 & 0x0000_7fff_ffff_0000) + salt
}

/// Grant returns the id and TTL, and takes no revision; TTLs below the
/// minimum are raised to it.
pub async fn grant(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let g = cx.ok(LeaseGrantRequest { ttl: 60, id: 0 }).await?;
    cx.check("server-chosen id is positive", g.id > 0, g.id)?;
    cx.eq(
        "(ttl, error)",
        (60, String::new()),
        (g.ttl, g.error.clone()),
    )?;
    cx.eq("header.revision", r0, hrev(&g.header))?;
    for ttl in [1, 0, -5] {
        let g = cx.ok(LeaseGrantRequest { ttl, id: 0 }).await?;
        cx.eq(&format!("ttl {ttl} raised to the minimum"), MIN_TTL, g.ttl)?;
        cx.ok(LeaseRevokeRequest { id: g.id }).await?;
    }
    cx.eq("revision", r0, cx.rev().await?)
}

/// A client-chosen id is used; granting it twice is refused; TTLs over the
/// maximum are refused.
pub async fn grant_explicit_id(cx: Ctx) -> CaseResult {
    let id = lease_id(&cx, 1);
    let g = cx.ok(LeaseGrantRequest { ttl: 30, id }).await?;
    cx.eq("(id, ttl)", (id, 30), (g.id, g.ttl))?;
    cx.err(LeaseGrantRequest { ttl: 30, id }, errors::LEASE_EXISTS)
        .await?;
    cx.err(
        LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        },
        errors::LEASE_TTL_TOO_LARGE,
    )
    .await?;
    cx.ok(LeaseRevokeRequest { id }).await?;
    Ok(())
}

/// Keys attached to a lease; revoke deletes them all in one revision; a
/// second revoke is LeaseNotFound.
pub async fn revoke_deletes_keys(cx: Ctx) -> CaseResult {
    let g = cx.ok(LeaseGrantRequest { ttl: 60, id: 0 }).await?;
    let r0 = cx.rev().await?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("a"), "1")
    })
    .await?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("b"), "1")
    })
    .await?;
    cx.put("c", "no lease").await?;
    let a = cx.get("a").await?;
    cx.eq("a's lease", Some(g.id), a.map(|k| k.lease))?;
    let rv = cx.ok(LeaseRevokeRequest { id: g.id }).await?;
    cx.eq("revoke header.revision", r0 + 4, hrev(&rv.header))?;
    let r = cx.ok(range(cx.prefix.clone(), cx.end())).await?;
    cx.eq(
        "left",
        vec![cx.k("c")],
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
    )?;
    cx.eq("revision", r0 + 4, hrev(&r.header))?;
    cx.err(LeaseRevokeRequest { id: g.id }, errors::LEASE_NOT_FOUND)
        .await
}

/// Revoking a lease with no keys takes no revision.
pub async fn revoke_without_keys(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let g = cx.ok(LeaseGrantRequest { ttl: 60, id: 0 }).await?;
    let rv = cx.ok(LeaseRevokeRequest { id: g.id }).await?;
    cx.eq("revoke header.revision", r0, hrev(&rv.header))?;
    cx.eq("revision", r0, cx.rev().await?)
}

/// Put with an unknown lease is LeaseNotFound; ignore_lease keeps the
/// lease; a plain put detaches it.
pub async fn put_with_lease(cx: Ctx) -> CaseResult {
    cx.err(
        PutRequest {
            lease: lease_id(&cx, 99),
            ..put(cx.k("a"), "1")
        },
        errors::LEASE_NOT_FOUND,
    )
    .await?;
    let g = cx.ok(LeaseGrantRequest { ttl: 60, id: 0 }).await?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("a"), "1")
    })
    .await?;
    cx.ok(PutRequest {
        ignore_lease: true,
        ..put(cx.k("a"), "2")
    })
    .await?;
    cx.eq(
        "lease kept",
        Some((g.id, Bytes::from_static(b"2"))),
        cx.get("a").await?.map(|k| (k.lease, k.value)),
    )?;
    // Compare on LEASE.
    let t = cx
        .ok(txn(
            vec![cmp(cx.k("a"), Cr::Equal, Ct::Lease, Tv::Lease(g.id))],
            vec![],
            vec![],
        ))
        .await?;
    cx.eq("compare lease", true, t.succeeded)?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("gone"), "1")
    })
    .await?;
    cx.ok(del(cx.k("gone"))).await?;
    let ttl = cx
        .ok(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await?;
    cx.eq("lease keys after a delete", vec![cx.k("a")], ttl.keys)?;
    cx.put("a", "3").await?;
    cx.eq(
        "lease detached",
        Some(0),
        cx.get("a").await?.map(|k| k.lease),
    )?;
    let ttl = cx
        .ok(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await?;
    cx.eq("lease keys after detach", Vec::<Bytes>::new(), ttl.keys)?;
    cx.ok(LeaseRevokeRequest { id: g.id }).await?;
    cx.eq(
        "a survives the revoke",
        Some(Bytes::from_static(b"3")),
        cx.get("a").await?.map(|k| k.value),
    )
}

/// TimeToLive: remaining TTL, granted TTL and keys; an unknown lease gets
/// TTL -1 and no error.
pub async fn time_to_live(cx: Ctx) -> CaseResult {
    let g = cx.ok(LeaseGrantRequest { ttl: 100, id: 0 }).await?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("b"), "1")
    })
    .await?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("a"), "1")
    })
    .await?;
    let t = cx
        .ok(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await?;
    cx.eq("(id, granted_ttl)", (g.id, 100), (t.id, t.granted_ttl))?;
    cx.check("0 < ttl <= 100", t.ttl > 0 && t.ttl <= 100, t.ttl)?;
    let mut keys = t.keys.clone();
    keys.sort();
    cx.eq("keys", vec![cx.k("a"), cx.k("b")], keys)?;
    let t = cx
        .ok(LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await?;
    cx.eq("keys when not asked", 0, t.keys.len())?;
    let unknown = lease_id(&cx, 42);
    let t = cx
        .ok(LeaseTimeToLiveRequest {
            id: unknown,
            keys: true,
        })
        .await?;
    cx.eq("unknown lease (id, ttl)", (unknown, -1), (t.id, t.ttl))?;
    cx.ok(LeaseRevokeRequest { id: g.id }).await?;
    Ok(())
}

/// Leases lists granted leases until they are revoked.
pub async fn leases(cx: Ctx) -> CaseResult {
    let a = cx.ok(LeaseGrantRequest { ttl: 60, id: 0 }).await?.id;
    let b = cx.ok(LeaseGrantRequest { ttl: 60, id: 0 }).await?.id;
    let l = cx.ok(LeaseLeasesRequest {}).await?;
    let ids: Vec<i64> = l.leases.iter().map(|s| s.id).collect();
    cx.check("both listed", ids.contains(&a) && ids.contains(&b), &ids)?;
    cx.ok(LeaseRevokeRequest { id: a }).await?;
    let ids: Vec<i64> = cx
        .ok(LeaseLeasesRequest {})
        .await?
        .leases
        .iter()
        .map(|s| s.id)
        .collect();
    cx.check(
        "revoked lease gone, other listed",
        !ids.contains(&a) && ids.contains(&b),
        &ids,
    )?;
    cx.ok(LeaseRevokeRequest { id: b }).await?;
    Ok(())
}

/// KeepAlive renews to the granted TTL; an unknown lease gets TTL 0.
pub async fn keep_alive(cx: Ctx) -> CaseResult {
    let g = cx.ok(LeaseGrantRequest { ttl: 30, id: 0 }).await?;
    let mut ka = cx.keep_alive(g.id).await?;
    let r = ka.next(&cx).await?;
    cx.eq("(id, ttl)", (g.id, 30), (r.id, r.ttl))?;
    ka.send(&cx, g.id).await?;
    let r = ka.next(&cx).await?;
    cx.eq("again (id, ttl)", (g.id, 30), (r.id, r.ttl))?;
    let unknown = lease_id(&cx, 7);
    ka.send(&cx, unknown).await?;
    let r = ka.next(&cx).await?;
    cx.eq("unknown (id, ttl)", (unknown, 0), (r.id, r.ttl))?;
    cx.ok(LeaseRevokeRequest { id: g.id }).await?;
    Ok(())
}

/// Waits until `name` is gone, up to `limit`.
async fn wait_gone(cx: &Ctx, name: &str, limit: Duration) -> CaseResult {
    let start = Instant::now();
    loop {
        if cx.get(name).await?.is_none() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(cx.fail(
                format!("{name} expires within {limit:?}"),
                "gone",
                "still there",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An expired lease deletes all its keys in one revision, seen by a watch
/// as one response; the lease is then unknown.
pub async fn expiry_deletes_keys_in_one_revision(cx: Ctx) -> CaseResult {
    let g = cx
        .ok(LeaseGrantRequest {
            ttl: MIN_TTL,
            id: 0,
        })
        .await?;
    let r0 = cx.rev().await?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("a"), "1")
    })
    .await?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("b"), "1")
    })
    .await?;
    let mut w = cx
        .watch(watch_create(WatchCreateRequest {
            key: cx.prefix.clone(),
            range_end: cx.end(),
            start_revision: r0 + 3,
            ..Default::default()
        }))
        .await?;
    let created = w.next(&cx).await?;
    cx.eq("created", true, created.created)?;
    let start = Instant::now();
    wait_gone(&cx, "a", Duration::from_secs(10)).await?;
    let waited = start.elapsed();
    cx.check(
        "expiry takes at least about the TTL",
        waited >= Duration::from_millis(1000),
        waited,
    )?;
    cx.eq("b gone too", None, cx.get("b").await?)?;
    cx.eq("one revision for the expiry", r0 + 3, cx.rev().await?)?;
    let r = w.next(&cx).await?;
    cx.eq(
        "one response with both deletes",
        vec![
            ev_del(cx.k("a"), r0 + 3, None),
            ev_del(cx.k("b"), r0 + 3, None),
        ],
        r.events,
    )?;
    let t = cx
        .ok(LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await?;
    cx.eq("expired lease ttl", -1, t.ttl)?;
    cx.err(LeaseRevokeRequest { id: g.id }, errors::LEASE_NOT_FOUND)
        .await
}

/// Keep-alives hold a short lease past its TTL.
pub async fn keep_alive_prevents_expiry(cx: Ctx) -> CaseResult {
    let g = cx
        .ok(LeaseGrantRequest {
            ttl: MIN_TTL,
            id: 0,
        })
        .await?;
    cx.ok(PutRequest {
        lease: g.id,
        ..put(cx.k("a"), "1")
    })
    .await?;
    let mut ka = cx.keep_alive(g.id).await?;
    ka.next(&cx).await?;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ka.send(&cx, g.id).await?;
        ka.next(&cx).await?;
    }
    cx.check(
        "a still there after 3 s",
        cx.get("a").await?.is_some(),
        "gone",
    )?;
    cx.ok(LeaseRevokeRequest { id: g.id }).await?;
    cx.eq("a gone after revoke", None, cx.get("a").await?)
}

/// Kubernetes' lease: `LeaseGrant{ttl + min(5%, 60)}` and a create txn
/// putting the object with the lease.
pub async fn kubernetes_event_lease(cx: Ctx) -> CaseResult {
    let g = cx
        .ok(LeaseGrantRequest {
            ttl: 3600 + 60,
            id: 0,
        })
        .await?;
    cx.eq("ttl", 3660, g.ttl)?;
    let key = cx.k("events/ns/e1");
    let t = cx
        .ok(txn(
            vec![cmp(key.clone(), Cr::Equal, Ct::Mod, Tv::Mod(0))],
            vec![op_put(PutRequest {
                lease: g.id,
                ..put(key.clone(), "event")
            })],
            vec![],
        ))
        .await?;
    cx.eq("succeeded", true, t.succeeded)?;
    cx.eq(
        "lease on the object",
        Some(g.id),
        cx.ok(get(key)).await?.kvs.first().map(|k| k.lease),
    )?;
    cx.ok(LeaseRevokeRequest { id: g.id }).await?;
    Ok(())
}
