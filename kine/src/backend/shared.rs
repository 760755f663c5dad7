//! What a server keeps about itself on a database several servers share
//! (PostgreSQL, MySQL): its row in `k3rs_members`, its count of commits,
//! the lease epoch it has taken in, and whether it holds the commit lock.

use super::CommitBatch;
use crate::error::{Error, Result};

/// Revoked leases' tombstones kept, in lease epochs: a server further
/// behind than this reloads every lease.
pub(crate) const LEASE_TOMBSTONES_KEPT: i64 = 1_000;

/// The lease rows a catch-up reads.
pub(crate) enum LeaseCatchUp {
    /// No lease changed.
    Nothing,
    /// Rows changed after the epoch this server has (up to the database's).
    ChangedSince(i64),
    /// Every live lease: the revocations this server missed were purged.
    Everything,
}

pub(crate) struct Session {
    /// This server's row in `k3rs_members`.
    pub member_id: i64,
    /// Commits this server attempted; the database counts the ones that landed.
    pub commits: i64,
    /// The lease epoch this server has taken in.
    pub lease_epoch: i64,
    /// The lease epoch of a commit whose outcome is unknown.
    unsettled_epoch: Option<i64>,
    /// Whether a `lock_and_catch_up` transaction is open.
    pub in_transaction: bool,
}

impl Session {
    pub fn new() -> Self {
        Session {
            member_id: (super::random_id() >> 1) as i64,
            commits: 0,
            lease_epoch: 0,
            unsettled_epoch: None,
            in_transaction: false,
        }
    }

    /// Which lease rows to read, given the database's lease epoch and
    /// purge horizon.
    pub fn lease_catch_up(&self, db_epoch: i64, db_purged: i64) -> LeaseCatchUp {
        if db_epoch <= self.lease_epoch {
            LeaseCatchUp::Nothing
        } else if self.lease_epoch < db_purged {
            LeaseCatchUp::Everything
        } else {
            LeaseCatchUp::ChangedSince(self.lease_epoch)
        }
    }

    /// After reading the lease rows up to `db_epoch`.
    pub fn caught_up(&mut self, db_epoch: i64) {
        self.lease_epoch = self.lease_epoch.max(db_epoch);
    }

    /// Before a commit (under the lock, after catching up, so the
    /// database's epoch is ours): the lease epoch it writes and the commit
    /// count it records.
    pub fn begin_commit(&mut self, batch: &CommitBatch) -> Result<(i64, i64)> {
        if !self.in_transaction {
            return Err(Error::Storage(
                "k3rs: a commit to a shared database without its lock (a bug)".into(),
            ));
        }
        let lease_changes = !batch.granted_leases.is_empty() || !batch.revoked_leases.is_empty();
        let epoch = self.lease_epoch + lease_changes as i64;
        self.commits += 1;
        self.unsettled_epoch = Some(epoch);
        Ok((epoch, self.commits))
    }

    /// After the commit's answer (the transaction is over either way).
    pub fn end_commit(&mut self, epoch: i64, result: &Result<()>) {
        self.in_transaction = false;
        match result {
            Ok(()) => {
                self.lease_epoch = epoch;
                self.unsettled_epoch = None;
            }
            // Unknown: `settle` decides once the database answers.
            Err(Error::CommitUnknown(_)) => {}
            Err(_) => self.unsettled_epoch = None,
        }
    }

    /// After a broken commit: `landed` is the database's count of this
    /// server's commits; true if the last one is among them.
    pub fn settle(&mut self, landed: i64) -> bool {
        let landed = landed == self.commits;
        if let (true, Some(epoch)) = (landed, self.unsettled_epoch.take()) {
            self.lease_epoch = epoch;
        }
        landed
    }

    /// Tombstones at or below this epoch may be purged.
    pub fn purge_below(&self) -> i64 {
        self.lease_epoch - LEASE_TOMBSTONES_KEPT
    }
}
