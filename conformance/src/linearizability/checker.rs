//! The linearizability search: Wing & Gong's algorithm with Lowe's
//! memoisation, as porcupine does it, written from the published idea.
//!
//! Every op becomes a call entry (at its invoke time) and a return entry (at
//! its return time; ∞ when the outcome is unknown) in one doubly linked list
//! sorted by time. The search walks the list from its head: a call whose
//! response the model accepts in the current state is linearized (both its
//! entries are unlinked, "lifted") and the walk restarts from the head; a
//! return entry means its op had to be linearized already, so the search
//! backtracks to the last choice. Each (set of linearized ops, model state)
//! is visited once: the set is hashed incrementally (Zobrist: one random
//! 128-bit word per op, XORed in and out) and combined with a 128-bit hash
//! of the state, so the cache costs 16 bytes per visited configuration.
//!
//! Unknown-outcome ops have their return entry at ∞, after every other
//! entry; when the walk reaches one, every op with a known outcome has been
//! linearized, and the remaining unknown ops are simply "never happened".

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use super::history::{INFINITY, Op};
use super::model::State;

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    call: bool,
    time: u64,
    matching: usize,
    prev: usize,
    next: usize,
}

/// The outcome of a check.
#[derive(Debug)]
pub enum Outcome {
    /// Linearizable: the op indices in a legal order (unknown ops that never
    /// took effect are left out).
    Linearizable { order: Vec<usize> },
    /// Not linearizable, with what the search saw at its deepest point.
    Illegal(Diagnosis),
    /// The search ran out of time.
    TimedOut,
}

/// Where the search got stuck.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// The longest partial linearization found, in order.
    pub prefix: Vec<usize>,
    /// The model state after it.
    pub state: State,
    /// The op whose return came before it could be linearized.
    pub stuck: Option<usize>,
    /// Each op that could have come next, and why the model refused it.
    pub candidates: Vec<(usize, String)>,
}

/// What a check did.
#[derive(Debug)]
pub struct Checked {
    pub outcome: Outcome,
    pub ops: usize,
    pub unknown: usize,
    /// Configurations visited (cache size).
    pub visited: usize,
    pub elapsed: Duration,
}

struct Search<'a> {
    ops: &'a [Op],
    list: Vec<Entry>,
    zobrist: Vec<u128>,
    hashers: (RandomState, RandomState),
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<'a> Search<'a> {
    fn new(ops: &'a [Op]) -> Self {
        // (time, is_return, op): calls before returns at equal times, which
        // is the permissive reading of a tie.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke, false, i));
            events.push((op.ret.max(op.invoke), true, i));
        }
        events.sort_unstable();
        let mut list = Vec::with_capacity(events.len() + 1);
        list.push(Entry {
            op: NIL,
            call: false,
            time: 0,
            matching: NIL,
            prev: NIL,
            next: NIL,
        });
        let mut call_at = vec![NIL; ops.len()];
        for (time, is_return, op) in events {
            let at = list.len();
            list.push(Entry {
                op,
                call: !is_return,
                time,
                matching: NIL,
                prev: at - 1,
                next: NIL,
            });
            list[at - 1].next = at;
            if is_return {
                let c = call_at[op];
                list[c].matching = at;
                list[at].matching = c;
            } else {
                call_at[op] = at;
            }
        }
        let mut seed = 0x5eed_u64 ^ ops.len() as u64;
        let zobrist = (0..ops.len())
            .map(|_| ((splitmix(&mut seed) as u128) << 64) | splitmix(&mut seed) as u128)
            .collect();
        Search {
            ops,
            list,
            zobrist,
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    fn state_hash(&self, s: &State) -> u128 {
        ((self.hashers.0.hash_one(s) as u128) << 64) | self.hashers.1.hash_one(s) as u128
    }

    fn unlink(&mut self, e: usize) {
        let Entry { prev, next, .. } = self.list[e];
        self.list[prev].next = next;
        if next != NIL {
            self.list[next].prev = prev;
        }
    }

    fn relink(&mut self, e: usize) {
        let Entry { prev, next, .. } = self.list[e];
        self.list[prev].next = e;
        if next != NIL {
            self.list[next].prev = e;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let m = self.list[call].matching;
        self.unlink(m);
    }

    fn unlift(&mut self, call: usize) {
        let m = self.list[call].matching;
        self.relink(m);
        self.relink(call);
    }

    /// Runs the search. With `stop_at_depth`, stops as soon as that many ops
    /// are linearized and returns the diagnosis there.
    ///
    /// One refinement over plain WGL: an op that the model accepts in the
    /// current state *without changing it* (a read, a failed CAS, an error,
    /// a delete of nothing) is linearized at once and never branched on.
    /// That is safe: every op that must precede it is already linearized (its
    /// return entry would otherwise stand before the op's call), and moving
    /// a state-preserving op earlier, to a point where it is legal, keeps
    /// any linearization legal. It removes most backtracking over reads.
    /// Ops with an unknown outcome are never forced: one that would change
    /// nothing now (a delete of a key not yet written) may have taken
    /// effect later.
    fn run(
        &mut self,
        init: &State,
        deadline: Instant,
        stop_at_depth: Option<usize>,
    ) -> (Outcome, usize, usize) {
        struct Frame {
            call: usize,
            state: State,
            state_h: u128,
            set_h: u128,
            forced: bool,
        }
        let mut state = init.clone();
        let mut state_h = self.state_hash(&state);
        let mut set_h: u128 = 0;
        let mut seen: HashSet<u128> = HashSet::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut deepest = 0usize;
        let mut steps = 0u64;
        let mut entry = self.list[0].next;
        // At a configuration not yet searched for state-preserving ops.
        let mut fresh = true;
        loop {
            if stop_at_depth == Some(stack.len()) {
                let prefix = stack.iter().map(|f| self.list[f.call].op).collect();
                return (
                    Outcome::Illegal(self.diagnose(prefix, &state)),
                    deepest,
                    seen.len(),
                );
            }
            steps += 1;
            if steps.is_multiple_of(1024) && Instant::now() > deadline {
                return (Outcome::TimedOut, deepest, seen.len());
            }
            let mut backtrack = false;
            if fresh {
                fresh = false;
                let mut e = self.list[0].next;
                let mut forced = None;
                while e != NIL && self.list[e].call {
                    let op = &self.ops[self.list[e].op];
                    // Not an unknown op: "it did nothing here" is one of its
                    // outcomes, and it may yet have done something later.
                    if op.ret != INFINITY
                        && let Ok(None) = state.step(&op.req, &op.resp)
                    {
                        forced = Some(e);
                        break;
                    }
                    e = self.list[e].next;
                }
                if let Some(e) = forced {
                    let new_set_h = set_h ^ self.zobrist[self.list[e].op];
                    if seen.insert(new_set_h ^ state_h.rotate_left(1)) {
                        stack.push(Frame {
                            call: e,
                            state: state.clone(),
                            state_h,
                            set_h,
                            forced: true,
                        });
                        set_h = new_set_h;
                        deepest = deepest.max(stack.len());
                        self.lift(e);
                        fresh = true;
                        continue;
                    }
                    // Seen: this configuration leads nowhere.
                    backtrack = true;
                } else {
                    entry = self.list[0].next;
                }
            }
            if !backtrack {
                if entry == NIL {
                    break;
                }
                let e = self.list[entry];
                if e.call {
                    let op = &self.ops[e.op];
                    if let Ok(Some(next)) = state.step(&op.req, &op.resp) {
                        let new_set_h = set_h ^ self.zobrist[e.op];
                        let new_state_h = self.state_hash(&next);
                        if seen.insert(new_set_h ^ new_state_h.rotate_left(1)) {
                            let before = std::mem::replace(&mut state, next);
                            stack.push(Frame {
                                call: entry,
                                state: before,
                                state_h,
                                set_h,
                                forced: false,
                            });
                            state_h = new_state_h;
                            set_h = new_set_h;
                            deepest = deepest.max(stack.len());
                            self.lift(entry);
                            fresh = true;
                            continue;
                        }
                    }
                    entry = e.next;
                    continue;
                }
                if e.time == INFINITY {
                    break; // only unknown ops remain: they never happened
                }
            }
            // Backtrack to the last real choice.
            loop {
                match stack.pop() {
                    None => {
                        let d = Diagnosis {
                            prefix: Vec::new(),
                            state: init.clone(),
                            stuck: None,
                            candidates: Vec::new(),
                        };
                        return (Outcome::Illegal(d), deepest, seen.len());
                    }
                    Some(f) => {
                        state = f.state;
                        state_h = f.state_h;
                        set_h = f.set_h;
                        self.unlift(f.call);
                        if !f.forced {
                            entry = self.list[f.call].next;
                            break;
                        }
                    }
                }
            }
        }
        let order = stack.iter().map(|f| self.list[f.call].op).collect();
        (Outcome::Linearizable { order }, deepest, seen.len())
    }

    /// At a point of the search: the first op that must be linearized next
    /// (the first return entry) and why each candidate before it failed.
    fn diagnose(&self, prefix: Vec<usize>, state: &State) -> Diagnosis {
        let mut candidates = Vec::new();
        let mut stuck = None;
        let mut entry = self.list[0].next;
        while entry != NIL {
            let e = self.list[entry];
            if !e.call {
                stuck = Some(e.op);
                break;
            }
            let op = &self.ops[e.op];
            let why = match state.step(&op.req, &op.resp) {
                Ok(_) => "legal here, but every continuation after it fails".to_string(),
                Err(why) => why,
            };
            candidates.push((e.op, why));
            entry = e.next;
        }
        Diagnosis {
            prefix,
            state: state.clone(),
            stuck,
            candidates,
        }
    }
}

/// Checks `ops` from `init` within `limit`.
pub fn check(ops: &[Op], init: &State, limit: Duration) -> Checked {
    let started = Instant::now();
    let deadline = started + limit;
    let mut search = Search::new(ops);
    let (mut outcome, deepest, visited) = search.run(init, deadline, None);
    if let Outcome::Illegal(_) = outcome {
        // Replay deterministically to the deepest point for the diagnosis.
        let mut again = Search::new(ops);
        again.hashers = search.hashers.clone();
        let (o, ..) = again.run(init, Instant::now() + limit, Some(deepest));
        if let Outcome::Illegal(d) = o {
            outcome = Outcome::Illegal(d);
        }
    }
    Checked {
        outcome,
        ops: ops.len(),
        unknown: ops.iter().filter(|o| o.ret == INFINITY).count(),
        visited,
        elapsed: started.elapsed(),
    }
}

/// `ops` as seen at time `t`: ops invoked by then, with those still running
/// at `t` turned into unknown-outcome ops (reads among them dropped), and
/// each kept op's index in `ops`.
pub fn cut(ops: &[Op], t: u64) -> (Vec<Op>, Vec<usize>) {
    let mut out = Vec::new();
    let mut index = Vec::new();
    for (i, o) in ops.iter().enumerate().filter(|(_, o)| o.invoke <= t) {
        if o.ret <= t {
            out.push(o.clone());
        } else if o.req.is_read_only() || matches!(o.req, super::model::Request::LeaseGrant) {
            continue;
        } else {
            let mut o = o.clone();
            o.resp = super::model::Response::Unknown("still running at the cut".into());
            o.ret = INFINITY;
            out.push(o);
        }
        index.push(i);
    }
    (out, index)
}

/// A minimal violating prefix: the cut time, the cut history, each of its
/// ops' index in the full history, and the diagnosis (indices into the cut).
pub struct Violation {
    pub at: u64,
    pub ops: Vec<Op>,
    pub index: Vec<usize>,
    pub diagnosis: Diagnosis,
}

/// The earliest time `t` such that the history cut at `t` is already not
/// linearizable (a binary search over return times; each probe is a full
/// check within `limit`). `None` if every probe passed or timed out.
pub fn minimal_violation(
    ops: &[Op],
    init: &State,
    limit: Duration,
    total: Duration,
) -> Option<Violation> {
    let started = Instant::now();
    let mut times: Vec<u64> = ops
        .iter()
        .map(|o| o.ret)
        .filter(|&t| t != INFINITY)
        .collect();
    times.sort_unstable();
    times.dedup();
    let (mut lo, mut hi) = (0usize, times.len()); // answer in [lo, hi)
    let mut best: Option<Violation> = None;
    while lo < hi && started.elapsed() < total {
        let mid = (lo + hi) / 2;
        let (prefix, index) = cut(ops, times[mid]);
        match check(&prefix, init, limit).outcome {
            Outcome::Illegal(diagnosis) => {
                best = Some(Violation {
                    at: times[mid],
                    ops: prefix,
                    index,
                    diagnosis,
                });
                hi = mid;
            }
            Outcome::Linearizable { .. } => lo = mid + 1,
            Outcome::TimedOut => lo = mid + 1,
        }
    }
    best
}
