//! Leases: ids with a TTL, and the keys attached to each.
//!
//! Grants and revokes go through the writer like any write, so they are
//! durable and ordered with the puts that attach keys. Expiry deadlines are
//! in memory only: after a restart every lease gets its full TTL again
//! (etcd's rule without checkpointing).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// etcd's minimum TTL: ceil(1.5 × the default 1 s election timeout).
pub const MIN_TTL_SECONDS: i64 = 2;
/// etcd's maximum TTL.
pub const MAX_TTL_SECONDS: i64 = 9_000_000_000;

/// One live lease.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Granted TTL, in seconds.
    pub ttl: i64,
    /// When it expires unless kept alive.
    pub expiry: Instant,
    /// Keys whose newest revision carries this lease.
    pub keys: BTreeSet<Bytes>,
}

impl Lease {
    /// A lease of `ttl` seconds, starting now.
    pub fn new(ttl: i64) -> Self {
        Lease {
            ttl,
            expiry: deadline(ttl),
            keys: BTreeSet::new(),
        }
    }

    /// Seconds left, as etcd reports them (truncated; 0 once expired).
    pub fn remaining_seconds(&self) -> i64 {
        self.expiry
            .saturating_duration_since(Instant::now())
            .as_secs() as i64
    }
}

fn deadline(ttl: i64) -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(ttl.max(0) as u64))
        .unwrap_or(now + Duration::from_secs(1 << 40))
}

/// Every live lease. Lock order: the index before this table.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<i64, Lease>,
}

impl LeaseTable {
    /// Number of live leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is live.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Whether `id` is a live lease.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// The lease `id`.
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Adds a lease.
    pub fn insert(&mut self, id: i64, lease: Lease) {
        self.leases.insert(id, lease);
    }

    /// Removes a lease, returning it.
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Restarts a lease's TTL; its TTL, or `None` if it is gone or expired.
    pub fn keep_alive(&mut self, id: i64) -> Option<i64> {
        let lease = self.leases.get_mut(&id)?;
        if lease.expiry <= Instant::now() {
            return None;
        }
        lease.expiry = deadline(lease.ttl);
        Some(lease.ttl)
    }

    /// Restarts a lease's TTL as another server's keep-alive did (also
    /// when it expired here meanwhile); false if there is no such lease.
    pub fn renew(&mut self, id: i64, ttl: i64) -> bool {
        let Some(lease) = self.leases.get_mut(&id) else {
            return false;
        };
        lease.ttl = ttl;
        lease.expiry = deadline(ttl);
        true
    }

    /// Restarts every lease's TTL: a new leader's rule, since deadlines
    /// were the old leader's alone.
    pub fn renew_all(&mut self) {
        for lease in self.leases.values_mut() {
            lease.expiry = deadline(lease.ttl);
        }
    }

    /// Moves `key` from lease `from` to lease `to` (0: none).
    pub fn reattach(&mut self, key: &Bytes, from: i64, to: i64) {
        if from == to {
            return;
        }
        if let Some(l) = self.leases.get_mut(&from) {
            l.keys.remove(key);
        }
        if let Some(l) = self.leases.get_mut(&to) {
            l.keys.insert(key.clone());
        }
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.leases
            .iter()
            .filter(|(_, l)| l.expiry <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// All lease ids.
    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// A free id for a grant that asked for none: positive, never 0.
    pub fn fresh_id(&self) -> i64 {
        loop {
            let id = (crate::backend::random_id() >> 1) as i64;
            if id != 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }
}
