//! Maintenance and Cluster: Status, alarms, defragment, HashKV and
//! MemberList as clients (Kubernetes, etcdctl, python) read them.

use kine::proto::*;

use crate::case::*;

fn semver(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    if it.next().is_some() { None } else { Some(t) }
}

/// Status: a semver version, a database size, this member as leader, and
/// the current revision.
pub async fn status(cx: Ctx) -> CaseResult {
    let r0 = cx.rev().await?;
    let s = cx.ok(StatusRequest {}).await?;
    cx.check(
        "version is semver",
        semver(&s.version).is_some(),
        &s.version,
    )?;
    cx.check(
        "version is 3.x",
        semver(&s.version).is_some_and(|v| v.0 == 3),
        &s.version,
    )?;
    cx.check("db_size > 0", s.db_size > 0, s.db_size)?;
    cx.check(
        "db_size_in_use <= db_size",
        s.db_size_in_use <= s.db_size,
        (s.db_size_in_use, s.db_size),
    )?;
    let member = s.header.as_ref().map_or(0, |h| h.member_id);
    if cx.members() == 1 {
        cx.eq("leader is this member", member, s.leader)?;
    } else {
        cx.check(
            "leader is another member (the endpoint is a follower)",
            s.leader != 0 && s.leader != member,
            (s.leader, member),
        )?;
    }
    cx.check("raft_term > 0", s.raft_term > 0, s.raft_term)?;
    cx.eq("errors", Vec::<String>::new(), s.errors.clone())?;
    cx.eq("is_learner", false, s.is_learner)?;
    cx.eq("header.revision", r0, hrev(&s.header))?;
    cx.put("a", "1").await?;
    let s2 = cx.ok(StatusRequest {}).await?;
    cx.eq("header.revision after a write", r0 + 1, hrev(&s2.header))?;
    cx.check(
        "raft index advances with writes",
        s2.raft_index > s.raft_index,
        (s.raft_index, s2.raft_index),
    )
}

/// MemberList: every member, this one with its client URL; the header has
/// no revision.
pub async fn member_list(cx: Ctx) -> CaseResult {
    let m = cx
        .ok(MemberListRequest {
            linearizable: false,
        })
        .await?;
    cx.eq("members", cx.members(), m.members.len())?;
    // The Cluster service fills ids and term but not the revision.
    cx.eq("header.revision", 0, hrev(&m.header))?;
    let member = m.header.as_ref().map_or(0, |h| h.member_id);
    let me = m
        .members
        .iter()
        .find(|x| x.id == member)
        .unwrap_or(&m.members[0]);
    cx.eq("id is the header's member_id", member, me.id)?;
    cx.eq("name", "default", me.name.as_str())?;
    cx.eq(
        "client URLs",
        vec![cx.endpoint.clone()],
        me.client_ur_ls.clone(),
    )?;
    cx.eq("peer URLs", 1, me.peer_ur_ls.len())?;
    cx.eq("is_learner", false, me.is_learner)
}

/// Alarm GET on a healthy server lists nothing.
pub async fn alarm_list_empty(cx: Ctx) -> CaseResult {
    let a = cx
        .ok(AlarmRequest {
            action: 0,
            member_id: 0,
            alarm: 0,
        })
        .await?;
    cx.eq("alarms", 0, a.alarms.len())
}

/// Defragment succeeds and changes nothing visible.
pub async fn defragment(cx: Ctx) -> CaseResult {
    let rev = cx.put("a", "1").await?;
    // etcd 3.4 answers without a header; newer versions fill it.
    cx.ok(DefragmentRequest {}).await?;
    cx.eq(
        "a",
        Some(kv(cx.k("a"), "1", rev, rev, 1)),
        cx.get("a").await?,
    )?;
    cx.eq("revision", rev, cx.rev().await?)
}

/// HashKV is stable at a revision and changes when a write lands; a
/// future revision is refused. (hash_revision is 3.5+, not checked.)
pub async fn hash_kv(cx: Ctx) -> CaseResult {
    let rev = cx.put("a", "1").await?;
    let h1 = cx.ok(HashKvRequest { revision: rev }).await?;
    let h2 = cx.ok(HashKvRequest { revision: rev }).await?;
    cx.eq("same hash twice", h1.hash, h2.hash)?;
    cx.put("a", "2").await?;
    let h3 = cx.ok(HashKvRequest { revision: 0 }).await?;
    cx.check(
        "hash changes after a write",
        h3.hash != h1.hash,
        (h1.hash, h3.hash),
    )?;
    cx.err(HashKvRequest { revision: rev + 5 }, errors::FUTURE_REV)
        .await?;
    cx.ok(CompactionRequest {
        revision: rev + 1,
        physical: true,
    })
    .await?;
    cx.err(HashKvRequest { revision: rev }, errors::COMPACTED)
        .await?;
    // Hashing at the compact revision itself: etcd 3.4 refuses it
    // (`rev <= compactRev`), 3.6 allows it (`rev < compactRev`); not pinned.
    cx.put("a", "3").await?;
    let h4 = cx.ok(HashKvRequest { revision: 0 }).await?;
    cx.eq("compact_revision", rev + 1, h4.compact_revision)
}

/// Which responses carry the current revision in their header: Cluster
/// and Alarm answers leave it 0 (as etcd 3.4.23 does).
pub async fn header_revisions(cx: Ctx) -> CaseResult {
    let r0 = cx.put("a", "1").await?;
    let mut got = Vec::new();
    got.push(("Status", hrev(&cx.ok(StatusRequest {}).await?.header)));
    got.push((
        "Alarm",
        hrev(
            &cx.ok(AlarmRequest {
                action: 0,
                member_id: 0,
                alarm: 0,
            })
            .await?
            .header,
        ),
    ));
    got.push((
        "HashKV",
        hrev(&cx.ok(HashKvRequest { revision: 0 }).await?.header),
    ));
    got.push((
        "MemberList",
        hrev(
            &cx.ok(MemberListRequest {
                linearizable: false,
            })
            .await?
            .header,
        ),
    ));
    let g = cx.ok(LeaseGrantRequest { ttl: 60, id: 0 }).await?;
    got.push(("LeaseGrant", hrev(&g.header)));
    got.push((
        "LeaseTimeToLive",
        hrev(
            &cx.ok(LeaseTimeToLiveRequest {
                id: g.id,
                keys: false,
            })
            .await?
            .header,
        ),
    ));
    got.push((
        "LeaseLeases",
        hrev(&cx.ok(LeaseLeasesRequest {}).await?.header),
    ));
    let mut ka = cx.keep_alive(g.id).await?;
    got.push(("LeaseKeepAlive", hrev(&ka.next(&cx).await?.header)));
    got.push((
        "LeaseRevoke",
        hrev(&cx.ok(LeaseRevokeRequest { id: g.id }).await?.header),
    ));
    let want = vec![
        ("Status", r0),
        ("Alarm", 0),
        ("HashKV", r0),
        ("MemberList", 0),
        ("LeaseGrant", r0),
        ("LeaseTimeToLive", r0),
        ("LeaseLeases", r0),
        ("LeaseKeepAlive", r0),
        ("LeaseRevoke", r0),
    ];
    cx.note("Status, Alarm, HashKV, MemberList, LeaseGrant, LeaseTimeToLive, LeaseLeases, LeaseKeepAlive, LeaseRevoke");
    cx.eq("header.revision per RPC", want, got)
}
