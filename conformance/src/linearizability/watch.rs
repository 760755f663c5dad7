//! Watch validation from the same run.
//!
//! Watchers record every response they get. The checks:
//! - ordered: revisions never go down within a response, and strictly go
//!   up from one response to the next (so each revision is delivered in
//!   exactly one response: atomic), and a (revision, key) pair appears once
//!   (unique);
//! - reliable and prev_kv: the events equal, revision by revision, the
//!   events the model produces when it replays the linearization the checker
//!   found, from the watch's start revision to the final revision of the run
//!   (so every write the history made is seen, with the right prev_kv);
//! - resumable: a watch opened afterwards from a middle revision yields the
//!   same events as the original watch from that revision on.
//!
//! Before the linearizability check, watch events also resolve unknown
//! writes (etcd robustness's "patch history"): put values are unique, so an
//! unknown put or CAS whose value a watch saw did happen, at that revision
//! and before the watch got it; one no watch saw (when the watches covered
//! the whole run) did not.

use std::collections::{BTreeMap, HashMap};

use super::history::{INFINITY, Op};
use super::model::{Event, Request, Response, State, events_between};

/// One watch response with events.
#[derive(Clone, Debug)]
pub struct WatchResp {
    /// Receive time (same clock as ops).
    pub at: u64,
    /// Which stream (a watcher reconnects after a server restart).
    pub stream: usize,
    pub header_rev: i64,
    pub events: Vec<Event>,
}

/// All a watcher got.
#[derive(Clone, Debug, Default)]
pub struct WatchLog {
    pub name: String,
    pub start_rev: i64,
    pub responses: Vec<WatchResp>,
    /// Cancellations, errors, a missing tail.
    pub problems: Vec<String>,
    /// The last revision it saw.
    pub last_rev: i64,
}

impl WatchLog {
    fn events(&self) -> impl Iterator<Item = &Event> {
        self.responses.iter().flat_map(|r| r.events.iter())
    }
}

/// Ordered, unique, atomic.
pub fn check_structure(log: &WatchLog) -> Vec<String> {
    let mut problems = Vec::new();
    let mut last = 0i64;
    for (i, r) in log.responses.iter().enumerate() {
        let mut seen_keys: Vec<(i64, u8)> = Vec::new();
        for (j, e) in r.events.iter().enumerate() {
            let rev = e.kv.modr;
            if j == 0 && rev <= last {
                problems.push(format!(
                    "{}: response {i} starts at revision {rev}, not after the previous response's {last} (ordered/atomic)",
                    log.name
                ));
            }
            if j > 0 && rev < r.events[j - 1].kv.modr {
                problems.push(format!(
                    "{}: response {i}: revision {rev} after {} (ordered)",
                    log.name,
                    r.events[j - 1].kv.modr
                ));
            }
            if seen_keys.contains(&(rev, e.kv.key)) {
                problems.push(format!(
                    "{}: response {i}: key k{} twice at revision {rev} (unique)",
                    log.name, e.kv.key
                ));
            }
            seen_keys.push((rev, e.kv.key));
            if rev < log.start_rev {
                problems.push(format!(
                    "{}: event at revision {rev} before the start revision {}",
                    log.name, log.start_rev
                ));
            }
        }
        if let Some(e) = r.events.last() {
            last = last.max(e.kv.modr);
        }
    }
    problems
}

/// Resolves unknown puts and CASes with what watches saw; drops those no
/// watch saw when `complete` (the watches saw every revision of the run).
/// Unknown lease revokes are resolved too: two of them cut short by one
/// kill could otherwise be linearized in either order, and the watch check
/// would then blame the server for the checker's guess.
/// Returns (patched, dropped).
pub fn patch_history(ops: &mut Vec<Op>, logs: &[WatchLog], complete: bool) -> (usize, usize) {
    let revokes = patch_revokes(ops, logs);
    // value -> (revision, first time a watcher had it)
    let mut seen: HashMap<u32, (i64, u64)> = HashMap::new();
    for log in logs {
        for r in &log.responses {
            for e in r.events.iter().filter(|e| !e.delete) {
                let entry = seen.entry(e.kv.value).or_insert((e.kv.modr, r.at));
                entry.1 = entry.1.min(r.at);
            }
        }
    }
    let (mut patched, mut dropped) = (0, 0);
    ops.retain_mut(|op| {
        if !op.resp.is_unknown() {
            return true;
        }
        let value = match op.req {
            Request::Put { value, .. } | Request::Cas { value, .. } => value,
            _ => return true,
        };
        match seen.get(&value) {
            Some(&(rev, at)) => {
                op.resp = match op.req {
                    Request::Put { .. } => Response::Put { rev, prev: None },
                    _ => Response::Cas {
                        rev,
                        succeeded: true,
                        kv: None,
                    },
                };
                op.ret = at.max(op.invoke);
                patched += 1;
                true
            }
            None if complete => {
                dropped += 1;
                false
            }
            None => true,
        }
    });
    (patched + revokes, dropped)
}

/// Gives an unknown revoke of lease L the revision R when a watch saw, at
/// R, only deletes of keys attached to L, and no op with a known outcome
/// claims R (so a client's delete of such a key is not mistaken for it).
fn patch_revokes(ops: &mut [Op], logs: &[WatchLog]) -> usize {
    let claimed: std::collections::HashSet<i64> = ops
        .iter()
        .filter_map(|op| match op.resp {
            Response::Put { rev, .. }
            | Response::LeaseRevoke { rev }
            | Response::Cas {
                rev,
                succeeded: true,
                ..
            } => Some(rev),
            Response::Delete { rev, deleted, .. } if deleted > 0 => Some(rev),
            _ => None,
        })
        .collect();
    // lease -> (revision, first time a watcher had it)
    let mut revoked: HashMap<i64, (i64, u64)> = HashMap::new();
    for log in logs {
        for r in &log.responses {
            let mut by_rev: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
            for e in &r.events {
                by_rev.entry(e.kv.modr).or_default().push(e);
            }
            for (rev, events) in by_rev {
                let lease = events[0].prev.as_ref().map(|p| p.lease).unwrap_or(0);
                let all_revoked = lease != 0
                    && events
                        .iter()
                        .all(|e| e.delete && e.prev.as_ref().is_some_and(|p| p.lease == lease));
                if all_revoked && !claimed.contains(&rev) {
                    let entry = revoked.entry(lease).or_insert((rev, r.at));
                    entry.1 = entry.1.min(r.at);
                }
            }
        }
    }
    let mut patched = 0;
    for op in ops.iter_mut().filter(|op| op.resp.is_unknown()) {
        if let Request::LeaseRevoke { id } = op.req
            && let Some(&(rev, at)) = revoked.get(&id)
        {
            op.resp = Response::LeaseRevoke { rev };
            op.ret = at.max(op.invoke);
            patched += 1;
        }
    }
    patched
}

/// Replays a linearization: the events of each revision.
pub fn model_events(ops: &[Op], order: &[usize], init: &State) -> BTreeMap<i64, Vec<Event>> {
    let mut out = BTreeMap::new();
    let mut state = init.clone();
    for &i in order {
        let op = &ops[i];
        if let Ok(Some(next)) = state.step(&op.req, &op.resp) {
            if next.revision == state.revision + 1 {
                out.insert(next.revision, events_between(&state, &next));
            }
            state = next;
        }
    }
    out
}

fn sorted(mut v: Vec<Event>) -> Vec<Event> {
    v.sort_by_key(|e| e.kv.key);
    v
}

/// The watch's events equal the model's, revision by revision, from its
/// start revision through `final_rev`.
pub fn check_against_model(
    log: &WatchLog,
    model: &BTreeMap<i64, Vec<Event>>,
    final_rev: i64,
    show: impl Fn(&Event) -> String,
) -> Vec<String> {
    let mut got: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for e in log.events() {
        got.entry(e.kv.modr).or_default().push(*e);
    }
    let mut problems = Vec::new();
    for rev in log.start_rev.max(2)..=final_rev {
        let want = model.get(&rev).cloned().map(sorted).unwrap_or_default();
        let have = got.remove(&rev).map(sorted).unwrap_or_default();
        if want != have {
            let w: Vec<String> = want.iter().map(&show).collect();
            let h: Vec<String> = have.iter().map(&show).collect();
            let what = if have.is_empty() {
                "missing (reliable)"
            } else {
                "differs (prev_kv/reliable)"
            };
            problems.push(format!(
                "{}: revision {rev} {what}: watch [{}], model [{}]",
                log.name,
                h.join("; "),
                w.join("; ")
            ));
            if problems.len() >= 10 {
                problems.push(format!("{}: ... (stopping after 10 differences)", log.name));
                return problems;
            }
        }
    }
    for (rev, evs) in got.range(final_rev + 1..) {
        problems.push(format!(
            "{}: {} event(s) at revision {rev}, after the final revision {final_rev}",
            log.name,
            evs.len()
        ));
    }
    problems
}

/// A watch resumed at `from` yields the same events as `original` from there.
pub fn check_resumed(
    original: &WatchLog,
    resumed: &WatchLog,
    from: i64,
    until: i64,
) -> Vec<String> {
    let a: Vec<Event> = original
        .events()
        .filter(|e| e.kv.modr >= from && e.kv.modr <= until)
        .copied()
        .collect();
    let b: Vec<Event> = resumed
        .events()
        .filter(|e| e.kv.modr <= until)
        .copied()
        .collect();
    if a == b {
        return Vec::new();
    }
    let at = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    vec![format!(
        "{} (from revision {from}) differs from {} after {at} equal events: {:?} vs {:?} (resumable)",
        resumed.name,
        original.name,
        b.get(at),
        a.get(at)
    )]
}

/// The earliest time a watch could have seen revision `rev` (for reports).
pub fn first_seen(logs: &[WatchLog], rev: i64) -> u64 {
    logs.iter()
        .flat_map(|l| l.responses.iter())
        .filter(|r| r.events.iter().any(|e| e.kv.modr == rev))
        .map(|r| r.at)
        .min()
        .unwrap_or(INFINITY)
}
