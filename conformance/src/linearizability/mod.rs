//! The linearizability checker: random concurrent traffic against a server,
//! recorded as a history and checked against a model of etcd with one
//! global revision; watches from the same run checked against the model.
//!
//! - `model`: the state (revision, compact revision, keys, leases) and the
//!   step function that accepts or refuses an observed response.
//! - `checker`: Wing–Gong–Lowe search with a (linearized set, state) cache,
//!   a time limit (then the answer is "unknown"), and the minimal violating
//!   prefix of a failing history.
//! - `workload`: the recorder: clients, a compactor, watchers and kill -9
//!   faults for a k3rs process.
//! - `watch`: ordered/unique/atomic/reliable/prev_kv/resumable checks.
//! - `server`: k3rs as a process (`K3RS_BIN`, or `target/debug/k3rs`).
//! - `history`: ops and their text form.
//!
//! [`verify`] runs every check on a recorded run; a failure is written as a
//! readable text file under `target/linearizability/` (see [`report_dir`]).

pub mod checker;
pub mod history;
pub mod model;
pub mod server;
pub mod watch;
pub mod workload;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

pub use checker::{Checked, Diagnosis, Outcome, check};
pub use history::{INFINITY, Op};
pub use model::{Cmp, EtcdError, Kv, Request, Response, State};
pub use server::{K3rsProcess, k3rs_binary};
pub use workload::{Config, Recorded, record, record_cluster};

use history::{op_line, time_text};

/// What [`verify`] found.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    /// Ops checked (after dropping unknown reads and resolving unknown
    /// writes from watch events).
    pub ops: usize,
    /// Ops recorded.
    pub recorded: usize,
    /// Unknown-outcome ops left in the checked history.
    pub unknown: usize,
    pub patched: usize,
    pub dropped: usize,
    pub final_rev: i64,
    pub kills: usize,
    pub watch_events: usize,
    /// Ops by kind and outcome, e.g. `put 4000 (lease-not-found 12)`.
    pub mix: String,
    /// "linearizable", "NOT linearizable" or "unknown (...)".
    pub verdict: String,
    pub linearizable: bool,
    pub problems: Vec<String>,
    pub check_time: Duration,
    pub visited: usize,
    /// The saved failure report.
    pub path: Option<PathBuf>,
}

impl Report {
    /// Linearizable and no watch problem.
    pub fn passed(&self) -> bool {
        self.linearizable && self.problems.is_empty()
    }

    /// One paragraph for the test log.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} ops checked ({} recorded, {} unknown left, {} resolved and {} dropped by watch events), final revision {}, {} kill -9, {} watch events; {} in {:.2?} ({} configurations)",
            self.name,
            self.ops,
            self.recorded,
            self.unknown,
            self.patched,
            self.dropped,
            self.final_rev,
            self.kills,
            self.watch_events,
            self.verdict,
            self.check_time,
            self.visited
        );
        let _ = write!(s, "\n  mix: {}", self.mix);
        for p in self.problems.iter().take(20) {
            let _ = write!(s, "\n  problem: {p}");
        }
        if let Some(p) = &self.path {
            let _ = write!(s, "\n  history saved to {}", p.display());
        }
        s
    }
}

/// `target/linearizability/` (`$CARGO_TARGET_DIR` if set).
pub fn report_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
        .join("linearizability")
}

/// Checks a recorded run: watch structure, linearizability (within
/// `limit`), watches against the model, the resumed watch. A failure is
/// saved under [`report_dir`].
pub fn verify(name: &str, rec: &Recorded, limit: Duration) -> Report {
    let mut problems = Vec::new();
    let mut structure_ok = true;
    for w in rec.watches.iter().chain(rec.resumed.iter()) {
        let p = watch::check_structure(w);
        structure_ok &= p.is_empty();
        problems.extend(p);
        problems.extend(w.problems.iter().cloned());
    }
    let complete = structure_ok
        && rec
            .watches
            .iter()
            .any(|w| w.start_rev <= 2 && w.last_rev >= rec.final_rev && w.problems.is_empty());

    let mut ops: Vec<Op> = rec
        .ops
        .iter()
        .filter(|o| {
            !(o.resp.is_unknown() && (o.req.is_read_only() || o.req == Request::LeaseGrant))
        })
        .cloned()
        .collect();
    let (patched, dropped) = watch::patch_history(&mut ops, &rec.watches, complete);
    let checked = check(&ops, &rec.init, limit);
    let mut diagnosis_text = String::new();
    let (verdict, linearizable) = match &checked.outcome {
        Outcome::Linearizable { order } => {
            let events = watch::model_events(&ops, order, &rec.init);
            let show = |e: &model::Event| {
                let what = if e.delete { "DELETE" } else { "PUT" };
                match e.prev {
                    Some(p) => format!("{what} {} prev {}", e.kv, p),
                    None => format!("{what} {}", e.kv),
                }
            };
            for w in &rec.watches {
                problems.extend(watch::check_against_model(w, &events, rec.final_rev, show));
            }
            if let Some(r) = &rec.resumed {
                problems.extend(watch::check_against_model(r, &events, rec.final_rev, show));
                if let Some(w) = rec.watches.first() {
                    problems.extend(watch::check_resumed(w, r, r.start_rev, rec.final_rev));
                }
            }
            ("linearizable".to_string(), true)
        }
        Outcome::Illegal(d) => {
            diagnosis_text.push_str("== where the search got stuck (full history) ==\n");
            diagnosis_text.push_str(&describe_diagnosis(d, &ops, &rec.keys, None, &rec.init));
            match checker::minimal_violation(&ops, &rec.init, limit, limit * 2) {
                Some(v) => {
                    let _ = writeln!(
                        diagnosis_text,
                        "\n== minimal violating prefix: the history cut at {} s ({} ops; ops still running then count as unknown) ==",
                        time_text(v.at).trim(),
                        v.ops.len()
                    );
                    diagnosis_text.push_str(&describe_diagnosis(
                        &v.diagnosis,
                        &v.ops,
                        &rec.keys,
                        Some(&v.index),
                        &rec.init,
                    ));
                    let _ = writeln!(
                        diagnosis_text,
                        "\nthe last 40 ops of the prefix, by invocation (op numbers as in the full timeline):"
                    );
                    let mut order: Vec<usize> = (0..v.ops.len()).collect();
                    order.sort_by_key(|&i| v.ops[i].invoke);
                    for &i in order.iter().rev().take(40).rev() {
                        let _ = writeln!(
                            diagnosis_text,
                            "  {}",
                            op_line(v.index[i], &ops[v.index[i]], &rec.keys)
                        );
                    }
                }
                None => {
                    diagnosis_text.push_str("\n(no minimal prefix found within the time limit)\n")
                }
            }
            problems.insert(0, "the history is NOT linearizable".into());
            ("NOT linearizable".to_string(), false)
        }
        Outcome::TimedOut => {
            problems.insert(
                0,
                format!("the checker gave up after {limit:?}: linearizability unknown"),
            );
            (format!("unknown (search exceeded {limit:?})"), false)
        }
    };
    let mut report = Report {
        name: name.to_string(),
        ops: ops.len(),
        recorded: rec.ops.len(),
        unknown: checked.unknown,
        patched,
        dropped,
        final_rev: rec.final_rev,
        kills: rec.kills,
        mix: mix(&rec.ops),
        watch_events: rec
            .watches
            .iter()
            .map(|w| w.responses.iter().map(|r| r.events.len()).sum::<usize>())
            .sum(),
        verdict,
        linearizable,
        problems,
        check_time: checked.elapsed,
        visited: checked.visited,
        path: None,
    };
    if !report.passed() {
        report.path = save(&report, &diagnosis_text, &ops, rec);
    }
    report
}

/// The revision a response reports, if any.
fn response_rev(resp: &Response) -> Option<i64> {
    match resp {
        Response::Get { rev, .. }
        | Response::List { rev, .. }
        | Response::Put { rev, .. }
        | Response::Delete { rev, .. }
        | Response::Cas { rev, .. }
        | Response::LeaseGrant { rev, .. }
        | Response::LeaseRevoke { rev } => Some(*rev),
        _ => None,
    }
}

fn describe_diagnosis(
    d: &Diagnosis,
    ops: &[Op],
    keys: &[String],
    index: Option<&[usize]>,
    init: &State,
) -> String {
    let line = |i: usize| match index {
        // `ops` is the cut history here; print the cut op under its full-history number.
        Some(m) => op_line(m[i], &ops[i], keys),
        None => op_line(i, &ops[i], keys),
    };
    let mut s = String::new();
    let _ = writeln!(s, "longest linearizable prefix: {} ops", d.prefix.len());
    let _ = writeln!(
        s,
        "model state after it: revision {}, compacted {}, leases [{}]",
        d.state.revision,
        d.state.compact_revision,
        d.state
            .leases
            .iter()
            .map(|l| format!("{l:x}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for kv in d.state.keys.iter().flatten() {
        let _ = writeln!(s, "    {kv}");
    }
    let _ = writeln!(s, "its last ops, in linearization order:");
    for &i in d.prefix.iter().rev().take(15).rev() {
        let _ = writeln!(s, "  {}", line(i));
    }
    match d.stuck {
        Some(i) => {
            let _ = writeln!(
                s,
                "stuck: this op returned before the model could place it:\n  {}",
                line(i)
            );
            // What the model says about it at the revision it reports (the
            // linearization before it is the one the search found).
            if let Some(rev) = response_rev(&ops[i].resp) {
                let mut state = init.clone();
                let mut after = None;
                for &j in std::iter::once(&usize::MAX).chain(d.prefix.iter()) {
                    if j != usize::MAX
                        && let Ok(Some(next)) = state.step(&ops[j].req, &ops[j].resp)
                    {
                        state = next;
                    }
                    let target = if matches!(ops[i].req, Request::Get { .. } | Request::List) {
                        rev
                    } else {
                        rev - 1
                    };
                    if state.revision == target {
                        let verdict = match state.step(&ops[i].req, &ops[i].resp) {
                            Ok(_) => "accepts it".to_string(),
                            Err(why) => format!("refuses it: {why}"),
                        };
                        let place = if j == usize::MAX {
                            "at the start".to_string()
                        } else {
                            format!("after {}", line(j))
                        };
                        after = Some(format!(
                            "at revision {target}, {place}\n      the model {verdict}"
                        ));
                    }
                }
                if let Some(a) = after {
                    let _ = writeln!(s, "  {a}");
                }
            }
        }
        None => {
            let _ = writeln!(s, "stuck at the very start");
        }
    }
    let _ = writeln!(
        s,
        "ops that could have come next, and why the model refused each:"
    );
    for (i, why) in &d.candidates {
        let _ = writeln!(s, "  {}\n      -> {why}", line(*i));
    }
    s
}

/// Counts of ops by kind, with their notable outcomes.
fn mix(ops: &[Op]) -> String {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for o in ops {
        let kind = match o.req {
            Request::Get { .. } => "get",
            Request::List => "list",
            Request::Put { lease: 0, .. } => "put",
            Request::Put { .. } => "put-with-lease",
            Request::Delete { .. } => "delete",
            Request::Cas { .. } => "cas",
            Request::LeaseGrant => "lease-grant",
            Request::LeaseRevoke { .. } => "lease-revoke",
            Request::Compact { .. } => "compact",
        };
        let outcome = match &o.resp {
            Response::Cas {
                succeeded: true, ..
            } => "succeeded",
            Response::Cas {
                succeeded: false, ..
            } => "failed",
            Response::Delete { deleted: 0, .. } => "nothing",
            Response::Error(EtcdError::Compacted) => "ErrCompacted",
            Response::Error(EtcdError::FutureRev) => "ErrFutureRev",
            Response::Error(EtcdError::LeaseNotFound) => "ErrLeaseNotFound",
            Response::Unknown(_) => "unknown",
            _ => "ok",
        };
        *counts.entry(kind).or_default().entry(outcome).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, by)| {
            let total: usize = by.values().sum();
            let detail: Vec<String> = by
                .iter()
                .filter(|(o, _)| **o != "ok")
                .map(|(o, n)| format!("{o} {n}"))
                .collect();
            if detail.is_empty() {
                format!("{k} {total}")
            } else {
                format!("{k} {total} ({})", detail.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn save(report: &Report, diagnosis: &str, ops: &[Op], rec: &Recorded) -> Option<PathBuf> {
    let dir = report_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = dir.join(format!(
        "{}-{stamp}.txt",
        report
            .name
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
    ));
    let mut text = String::new();
    let _ = writeln!(text, "{}\n", report.summary());
    let _ = writeln!(text, "keys: {}", rec.keys.join(" "));
    let _ = writeln!(
        text,
        "notation: [invoke .. return] seconds from the start, ∞ = outcome unknown; #n op number; cN client (c{} is the compactor, c{} the final read); kv = key=value (cr create rev, mod rev, ver version, lease id hex)\n",
        rec.ops
            .iter()
            .map(|o| o.client)
            .max()
            .unwrap_or(1)
            .saturating_sub(1),
        rec.ops.iter().map(|o| o.client).max().unwrap_or(0)
    );
    text.push_str(diagnosis);
    for w in rec.watches.iter().chain(rec.resumed.iter()) {
        let _ = writeln!(
            text,
            "\n== {} (from revision {}, last seen {}) ==",
            w.name, w.start_rev, w.last_rev
        );
        for r in &w.responses {
            let evs: Vec<String> = r
                .events
                .iter()
                .map(|e| {
                    format!(
                        "{} {}{}",
                        if e.delete { "DELETE" } else { "PUT" },
                        e.kv,
                        e.prev.map(|p| format!(" prev {p}")).unwrap_or_default()
                    )
                })
                .collect();
            let _ = writeln!(
                text,
                "[{}] stream {} header {}: {}",
                time_text(r.at),
                r.stream,
                r.header_rev,
                evs.join("; ")
            );
        }
    }
    text.push('\n');
    text.push_str(&history::timeline(ops, &rec.keys));
    std::fs::write(&path, text).ok()?;
    Some(path)
}
