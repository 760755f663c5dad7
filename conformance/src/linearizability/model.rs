//! The model: etcd's KV and lease semantics over ONE global revision.
//!
//! A state is {revision, compact revision, per key: value, create/mod
//! revision, version, lease; the set of live leases}. [`State::step`] takes
//! an operation with its observed response and says whether that response
//! is what etcd would answer in this state, and what the state becomes.
//! Revisions are checked exactly: a write takes exactly one revision; reads,
//! deletes of nothing, failed CAS, lease grants and compactions take none; a
//! lease revoke deletes all its keys in one revision.

use std::fmt;

/// A key, as an index into the run's key list.
pub type Key = u8;
/// A value. Values written by the workload are unique, `c<client>.<seq>`,
/// and encoded as `client << 20 | seq` (seq ≥ 1); any other value read back
/// gets an id with the top bit set (see [`value_id`]).
pub type Val = u32;

static FOREIGN: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// The value written as `c<client>.<seq>`.
pub fn value_of(client: usize, seq: u32) -> Val {
    assert!(
        client < 2048 && seq > 0 && seq < (1 << 20),
        "value space exhausted"
    );
    ((client as u32) << 20) | seq
}

/// The wire bytes of a value.
pub fn value_bytes(v: Val) -> Vec<u8> {
    if v == 0 {
        Vec::new()
    } else if v & 0x8000_0000 != 0 {
        FOREIGN.lock().unwrap_or_else(|e| e.into_inner())[(v & 0x7fff_ffff) as usize].clone()
    } else {
        format!("c{}.{}", v >> 20, v & 0xfffff).into_bytes()
    }
}

/// The id of a value read back from the server.
pub fn value_id(bytes: &[u8]) -> Val {
    if bytes.is_empty() {
        return 0;
    }
    if let Some(rest) = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.strip_prefix('c'))
        && let Some((c, q)) = rest.split_once('.')
        && let (Ok(c), Ok(q)) = (c.parse::<u32>(), q.parse::<u32>())
        && c < 2048
        && q > 0
        && q < (1 << 20)
        && format!("c{c}.{q}").as_bytes() == bytes
    {
        return (c << 20) | q;
    }
    let mut table = FOREIGN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = table.iter().position(|b| b == bytes) {
        return 0x8000_0000 | i as u32;
    }
    table.push(bytes.to_vec());
    0x8000_0000 | (table.len() - 1) as u32
}

/// A printable value.
pub fn value_name(v: Val) -> String {
    String::from_utf8_lossy(&value_bytes(v)).into_owned()
}

/// A key-value as etcd reports it (and as the model keeps it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kv {
    pub key: Key,
    pub value: Val,
    pub create: i64,
    pub modr: i64,
    pub version: i64,
    pub lease: i64,
}

/// What a CAS compares before its put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `mod_revision == r` (0 = the key does not exist).
    ModRevision(i64),
    /// `value == v` (fails on a missing key).
    Value(Val),
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Range of one key.
    Get { key: Key },
    /// Range over the whole prefix.
    List,
    /// Put with `prev_kv`; `lease` 0 = none.
    Put { key: Key, value: Val, lease: i64 },
    /// DeleteRange of one key with `prev_kv`.
    Delete { key: Key },
    /// Txn: if `cmp` then put `value`, else range `key`.
    Cas { key: Key, cmp: Cmp, value: Val },
    /// LeaseGrant (the server picks the id).
    LeaseGrant,
    /// LeaseRevoke.
    LeaseRevoke { id: i64 },
    /// Compact (not physical).
    Compact { revision: i64 },
}

impl Request {
    /// Reads have no effect, so an unknown-outcome read is dropped.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Request::Get { .. } | Request::List)
    }
}

/// etcd errors that are legal, definite outcomes (the op had no effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdError {
    Compacted,
    FutureRev,
    LeaseNotFound,
}

/// An observed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Get {
        rev: i64,
        kv: Option<Kv>,
    },
    List {
        rev: i64,
        kvs: Vec<Kv>,
    },
    /// `prev`: `None` = not checked (a put patched in from a watch event).
    Put {
        rev: i64,
        prev: Option<Option<Kv>>,
    },
    Delete {
        rev: i64,
        deleted: i64,
        prev: Vec<Kv>,
    },
    /// `kv`: the failure branch's range result.
    Cas {
        rev: i64,
        succeeded: bool,
        kv: Option<Kv>,
    },
    LeaseGrant {
        rev: i64,
        id: i64,
    },
    LeaseRevoke {
        rev: i64,
    },
    Compact {
        rev: i64,
    },
    Error(EtcdError),
    /// The outcome is unknown (timeout, connection lost, server killed):
    /// the op may have taken effect at any point after its invocation, or never.
    Unknown(String),
}

impl Response {
    pub fn is_unknown(&self) -> bool {
        matches!(self, Response::Unknown(_))
    }
}

/// The model state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub revision: i64,
    pub compact_revision: i64,
    /// Indexed by [`Key`].
    pub keys: Vec<Option<Kv>>,
    /// Live lease ids, sorted. A lease's keys are the keys whose `lease` is it.
    pub leases: Vec<i64>,
}

impl State {
    /// An empty store: revision 1, nothing compacted.
    pub fn new(nkeys: usize) -> State {
        State {
            revision: 1,
            compact_revision: 0,
            keys: vec![None; nkeys],
            leases: Vec::new(),
        }
    }

    fn get(&self, key: Key) -> Option<Kv> {
        self.keys.get(key as usize).copied().flatten()
    }

    fn has_lease(&self, id: i64) -> bool {
        self.leases.binary_search(&id).is_ok()
    }

    fn expect_rev(&self, what: &str, got: i64, want: i64) -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what} revision {got}, model says {want}"))
        }
    }

    /// The state after a put of `value` to `key` at the next revision.
    fn put(&self, key: Key, value: Val, lease: i64) -> State {
        let mut s = self.clone();
        s.revision += 1;
        let (create, version) = match self.get(key) {
            Some(kv) => (kv.create, kv.version + 1),
            None => (s.revision, 1),
        };
        s.keys[key as usize] = Some(Kv {
            key,
            value,
            create,
            modr: s.revision,
            version,
            lease,
        });
        s
    }

    /// The state after revoking `id` (one revision iff it had keys).
    fn revoke(&self, id: i64) -> State {
        let mut s = self.clone();
        s.leases.retain(|l| *l != id);
        let mut any = false;
        for slot in s.keys.iter_mut() {
            if slot.is_some_and(|kv| kv.lease == id) {
                *slot = None;
                any = true;
            }
        }
        if any {
            s.revision += 1;
        }
        s
    }

    /// The effect of `req` if it ran now and succeeded as far as the state
    /// allows (for ops whose outcome is unknown). `None` = no change.
    pub fn apply_unknown(&self, req: &Request) -> Option<State> {
        match *req {
            Request::Get { .. } | Request::List | Request::LeaseGrant => None,
            Request::Put { key, value, lease } => {
                if lease != 0 && !self.has_lease(lease) {
                    None
                } else {
                    Some(self.put(key, value, lease))
                }
            }
            Request::Delete { key } => self.get(key).map(|_| {
                let mut s = self.clone();
                s.revision += 1;
                s.keys[key as usize] = None;
                s
            }),
            Request::Cas { key, cmp, value } => {
                self.cas_holds(key, cmp).then(|| self.put(key, value, 0))
            }
            Request::LeaseRevoke { id } => self.has_lease(id).then(|| self.revoke(id)),
            Request::Compact { revision } => {
                (revision > self.compact_revision && revision <= self.revision).then(|| {
                    let mut s = self.clone();
                    s.compact_revision = revision;
                    s
                })
            }
        }
    }

    fn cas_holds(&self, key: Key, cmp: Cmp) -> bool {
        let cur = self.get(key);
        match cmp {
            Cmp::ModRevision(m) => cur.map_or(0, |kv| kv.modr) == m,
            Cmp::Value(v) => cur.is_some_and(|kv| kv.value == v),
        }
    }

    /// Is `resp` what etcd answers to `req` in this state? `Ok(None)`: yes,
    /// and the state is unchanged; `Ok(Some(s))`: yes, and it becomes `s`;
    /// `Err(why)`: no.
    pub fn step(&self, req: &Request, resp: &Response) -> Result<Option<State>, String> {
        use Request as Q;
        use Response as R;
        match (req, resp) {
            (_, R::Unknown(_)) => Ok(self.apply_unknown(req)),
            (Q::Get { key }, R::Get { rev, kv }) => {
                self.expect_rev("header", *rev, self.revision)?;
                let want = self.get(*key);
                if *kv != want {
                    return Err(format!("read {}, model has {}", OptKv(kv), OptKv(&want)));
                }
                Ok(None)
            }
            (Q::List, R::List { rev, kvs }) => {
                self.expect_rev("header", *rev, self.revision)?;
                let want: Vec<Kv> = self.keys.iter().flatten().copied().collect();
                if *kvs != want {
                    return Err(format!(
                        "listed {}, model has {}",
                        KvList(kvs),
                        KvList(&want)
                    ));
                }
                Ok(None)
            }
            (Q::Put { lease, .. }, R::Error(EtcdError::LeaseNotFound)) => {
                if *lease != 0 && !self.has_lease(*lease) {
                    Ok(None)
                } else {
                    Err(format!("lease not found, but lease {lease:x} is live"))
                }
            }
            (Q::Put { key, value, lease }, R::Put { rev, prev }) => {
                if *lease != 0 && !self.has_lease(*lease) {
                    return Err(format!(
                        "put succeeded with lease {lease:x}, which is not live"
                    ));
                }
                self.expect_rev("put", *rev, self.revision + 1)?;
                if let Some(prev) = prev {
                    let want = self.get(*key);
                    if *prev != want {
                        return Err(format!(
                            "prev_kv {}, model has {}",
                            OptKv(prev),
                            OptKv(&want)
                        ));
                    }
                }
                Ok(Some(self.put(*key, *value, *lease)))
            }
            (Q::Delete { key }, R::Delete { rev, deleted, prev }) => match self.get(*key) {
                Some(kv) => {
                    if *deleted != 1 || prev.as_slice() != [kv] {
                        return Err(format!(
                            "deleted {deleted} {}, model has {}",
                            KvList(prev),
                            OptKv(&Some(kv))
                        ));
                    }
                    self.expect_rev("delete", *rev, self.revision + 1)?;
                    let mut s = self.clone();
                    s.revision += 1;
                    s.keys[*key as usize] = None;
                    Ok(Some(s))
                }
                None => {
                    if *deleted != 0 || !prev.is_empty() {
                        return Err(format!(
                            "deleted {deleted} {}, model has no such key",
                            KvList(prev)
                        ));
                    }
                    self.expect_rev("delete of nothing", *rev, self.revision)?;
                    Ok(None)
                }
            },
            (Q::Cas { key, cmp, value }, R::Cas { rev, succeeded, kv }) => {
                let holds = self.cas_holds(*key, *cmp);
                if holds != *succeeded {
                    return Err(format!(
                        "txn succeeded={succeeded}, model says {holds} (key has {})",
                        OptKv(&self.get(*key))
                    ));
                }
                if holds {
                    self.expect_rev("txn", *rev, self.revision + 1)?;
                    Ok(Some(self.put(*key, *value, 0)))
                } else {
                    self.expect_rev("read-only txn", *rev, self.revision)?;
                    let want = self.get(*key);
                    if *kv != want {
                        return Err(format!(
                            "txn else-branch read {}, model has {}",
                            OptKv(kv),
                            OptKv(&want)
                        ));
                    }
                    Ok(None)
                }
            }
            (Q::LeaseGrant, R::LeaseGrant { rev, id }) => {
                self.expect_rev("lease grant", *rev, self.revision)?;
                if self.has_lease(*id) {
                    return Err(format!("granted lease {id:x}, which is already live"));
                }
                let mut s = self.clone();
                let at = s.leases.binary_search(id).unwrap_err();
                s.leases.insert(at, *id);
                Ok(Some(s))
            }
            (Q::LeaseRevoke { id }, R::LeaseRevoke { rev }) => {
                if !self.has_lease(*id) {
                    return Err(format!("revoked lease {id:x}, which is not live"));
                }
                let s = self.revoke(*id);
                self.expect_rev("lease revoke", *rev, s.revision)?;
                Ok(Some(s))
            }
            (Q::LeaseRevoke { id }, R::Error(EtcdError::LeaseNotFound)) => {
                if self.has_lease(*id) {
                    Err(format!("lease {id:x} not found, but it is live"))
                } else {
                    Ok(None)
                }
            }
            (Q::Compact { revision }, R::Compact { rev }) => {
                if *revision <= self.compact_revision {
                    return Err(format!(
                        "compact {revision} succeeded, model has compacted {}",
                        self.compact_revision
                    ));
                }
                if *revision > self.revision {
                    return Err(format!(
                        "compact {revision} succeeded, model is at {}",
                        self.revision
                    ));
                }
                // etcd (v3_server.go) fills the compaction header after the
                // apply, so it may already show later revisions.
                if *rev < self.revision {
                    return Err(format!(
                        "compact header revision {rev} < model's {}",
                        self.revision
                    ));
                }
                let mut s = self.clone();
                s.compact_revision = *revision;
                Ok(Some(s))
            }
            (Q::Compact { revision }, R::Error(EtcdError::Compacted)) => {
                if *revision <= self.compact_revision {
                    Ok(None)
                } else {
                    Err(format!(
                        "compact {revision}: ErrCompacted, model has compacted only {}",
                        self.compact_revision
                    ))
                }
            }
            (Q::Compact { revision }, R::Error(EtcdError::FutureRev)) => {
                if *revision > self.revision && *revision > self.compact_revision {
                    Ok(None)
                } else {
                    Err(format!(
                        "compact {revision}: ErrFutureRev, model is at {}",
                        self.revision
                    ))
                }
            }
            _ => Err(format!("response {resp:?} does not fit request {req:?}")),
        }
    }
}

/// An event as a watch reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub delete: bool,
    pub kv: Kv,
    pub prev: Option<Kv>,
}

/// The events that turn `before` into `after` (one revision apart), by key.
/// A DELETE event's kv is {key, mod_revision = the deletion revision}.
pub fn events_between(before: &State, after: &State) -> Vec<Event> {
    let mut out = Vec::new();
    for (k, (b, a)) in before.keys.iter().zip(&after.keys).enumerate() {
        if b == a {
            continue;
        }
        match a {
            Some(kv) => out.push(Event {
                delete: false,
                kv: *kv,
                prev: *b,
            }),
            None => out.push(Event {
                delete: true,
                kv: Kv {
                    key: k as Key,
                    value: 0,
                    create: 0,
                    modr: after.revision,
                    version: 0,
                    lease: 0,
                },
                prev: *b,
            }),
        }
    }
    out
}

struct OptKv<'a>(&'a Option<Kv>);
impl fmt::Display for OptKv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(kv) => write!(f, "{kv}"),
            None => f.write_str("nothing"),
        }
    }
}

struct KvList<'a>(&'a [Kv]);
impl fmt::Display for KvList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, kv) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{kv}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Display for Kv {
    /// `k3=c2.17{cr5 mod9 ver2}` (+ ` L<lease hex>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "k{}={}{{cr{} mod{} ver{}",
            self.key,
            value_name(self.value),
            self.create,
            self.modr,
            self.version
        )?;
        if self.lease != 0 {
            write!(f, " L{:x}", self.lease)?;
        }
        f.write_str("}")
    }
}
