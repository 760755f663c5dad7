//! Durable storage under the MVCC core: an append-only revision log.
//!
//! A backend stores what the writer hands it and gives it back at start-up;
//! it never decides anything. Revisions are assigned by the writer
//! (`mvcc::writer`), never by the database, so there are no gaps to fill.
//! A backend knows nothing about gRPC or the etcd wire types.

#![deny(missing_docs)]

pub mod files;
pub mod mysql;
pub mod pg_tls;
pub mod postgres;
mod reader_threads;
mod shared;
pub mod snapshot;
pub mod sqlite;

pub use sqlite::random_id;

use bytes::Bytes;

use crate::error::Result;

/// One row of the log: the state of `key` written at `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The revision of the write.
    pub mod_revision: i64,
    /// Position among the rows of its revision (write order).
    pub sub: u32,
    /// The key, as bytes.
    pub key: Bytes,
    /// The revision that created the key; 0 marks a delete (tombstone).
    pub create_revision: i64,
    /// Puts since creation; 0 for a tombstone.
    pub version: i64,
    /// Attached lease, 0 for none.
    pub lease: i64,
    /// The value; empty for a tombstone.
    pub value: Bytes,
}

/// A lease as stored: its id and granted TTL in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLease {
    /// The lease id.
    pub id: i64,
    /// The TTL it was granted with, in seconds.
    pub ttl: i64,
}

/// What one group commit writes, atomically.
#[derive(Debug, Default)]
pub struct CommitBatch {
    /// New log rows, in revision order.
    pub records: Vec<LogRecord>,
    /// The store's revision once this batch is applied.
    pub current_revision: i64,
    /// Leases granted in this batch.
    pub granted_leases: Vec<StoredLease>,
    /// Leases revoked or expired in this batch.
    pub revoked_leases: Vec<i64>,
    /// A new compact revision, set in the same transaction (replicated
    /// stores; others set it with `set_compact_revision`).
    pub compact_revision: Option<i64>,
    /// A replicated store's applied position, opaque here, kept in the
    /// same transaction so that a restart neither loses nor repeats an
    /// entry. Only the SQLite backend stores it.
    pub replication: Option<Bytes>,
}

impl CommitBatch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.granted_leases.is_empty()
            && self.revoked_leases.is_empty()
            && self.compact_revision.is_none()
            && self.replication.is_none()
    }
}

/// Identity of this store, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreIdentity {
    /// etcd's cluster id.
    pub cluster_id: u64,
    /// etcd's member id of this server.
    pub member_id: u64,
}

/// Everything a backend holds, as read back at start-up.
#[derive(Debug)]
pub struct Loaded {
    /// The revision of the last committed batch (1 for an empty store).
    pub current_revision: i64,
    /// The compact revision (-1 before the first compaction, as etcd).
    pub compact_revision: i64,
    /// Who this store is.
    pub identity: StoreIdentity,
    /// Leases that were granted and not revoked.
    pub leases: Vec<StoredLease>,
    /// The replicated store's applied position last committed, if any.
    pub replication: Option<Bytes>,
}

/// What other servers committed to a shared database since this one last
/// looked: their rows in revision order, and lease changes.
#[derive(Debug, Default)]
pub struct Changes {
    /// New log rows, in revision order, all above the revision asked from.
    pub records: Vec<LogRecord>,
    /// The database's revision: every row at or below it is in `records`
    /// or was known before.
    pub current_revision: i64,
    /// The database's compact revision.
    pub compact_revision: i64,
    /// Leases granted or kept alive since (`ttl` > 0), or revoked (`ttl` 0).
    pub leases: Vec<StoredLease>,
    /// Whether `leases` lists every live lease (the revocations this server
    /// missed were purged): a lease missing from it is gone.
    pub leases_complete: bool,
}

/// The write side of a backend, owned by the single writer thread.
pub trait LogWriter: Send + 'static {
    /// Streams every retained log row to `f` in revision order, then returns
    /// the store's metadata.
    fn load(&mut self, f: &mut dyn FnMut(LogRecord)) -> Result<Loaded>;

    /// Writes `batch` in one transaction. On `Ok` the batch is durable
    /// (fsynced unless the backend was opened in a named faster mode);
    /// on `Err(CommitUnknown)` the connection broke and the outcome is
    /// unknown until `resolve_commit` answers; on any other `Err` nothing
    /// of it was written.
    fn commit(&mut self, batch: &CommitBatch) -> Result<()>;

    /// After `CommitUnknown`: reconnects and tells whether the batch that
    /// ends at `revision` was committed. `Err` while the database stays
    /// unreachable.
    fn resolve_commit(&mut self, revision: i64) -> Result<bool> {
        let _ = revision;
        Err(crate::Error::Unimplemented(
            "k3rs: this backend has no unknown commit outcomes".into(),
        ))
    }

    /// Replaces the whole database with the one at `from` (a replicated
    /// store installing a snapshot); `from` is moved, not copied. Reader
    /// connections must be closed before and reopened after.
    fn replace_database(&mut self, from: &std::path::Path) -> Result<()> {
        let _ = from;
        Err(crate::Error::Unimplemented(
            "k3rs: this backend cannot install a snapshot".into(),
        ))
    }

    /// Makes every commit so far durable, whatever the commit durability
    /// (before a replicated store lets its log be purged).
    fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }

    /// Records a new compact revision, durably.
    fn set_compact_revision(&mut self, revision: i64) -> Result<()>;

    /// Deletes the given `(mod_revision, key)` rows: revisions compaction
    /// made unreachable. Called in bounded chunks so writers never stall.
    fn delete_revisions(&mut self, rows: &[(i64, Bytes)]) -> Result<()>;

    /// The value of `key` at exactly `mod_revision`, if that row exists.
    fn value_at(&mut self, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>>;

    /// Returns free space to the file system.
    fn defragment(&mut self) -> Result<()>;

    /// Whether other servers write to the same database. If so, every
    /// write batch starts with `lock_and_catch_up`, and reads that must be
    /// linearizable first `catch_up`.
    fn is_shared(&self) -> bool {
        false
    }

    /// Shared databases: opens the batch's transaction, taking the lock
    /// that orders every server's commits, and returns what others
    /// committed above `head`. The lock is held until `commit`,
    /// `set_compact_revision` or `release`.
    fn lock_and_catch_up(&mut self, head: i64) -> Result<Changes> {
        let _ = head;
        Err(crate::Error::Unimplemented(
            "k3rs: this backend is not shared by several servers".into(),
        ))
    }

    /// Shared databases: what others committed above `head`, without
    /// taking the lock.
    fn catch_up(&mut self, head: i64) -> Result<Changes> {
        let _ = head;
        Err(crate::Error::Unimplemented(
            "k3rs: this backend is not shared by several servers".into(),
        ))
    }

    /// Shared databases: ends the transaction `lock_and_catch_up` opened,
    /// writing nothing (the batch turned out empty).
    fn release(&mut self) -> Result<()> {
        Ok(())
    }

    /// Shared databases: starts a thread that wakes the writer whenever
    /// another server may have committed, until the store is gone.
    fn listen(&mut self, waker: Waker) -> Result<()> {
        let _ = waker;
        Ok(())
    }
}

/// How a backend's listener thread reaches the store's writer.
pub struct Waker(Box<dyn Fn(bool) -> bool + Send>);

impl Waker {
    /// `f(true)` asks the writer to catch up, `f(false)` only asks whether
    /// the store still exists; both answer false once it is gone.
    pub fn new(f: impl Fn(bool) -> bool + Send + 'static) -> Self {
        Waker(Box::new(f))
    }

    /// Asks the writer to catch up; false once the store is gone.
    pub fn wake(&self) -> bool {
        (self.0)(true)
    }

    /// Whether the store still exists.
    pub fn alive(&self) -> bool {
        (self.0)(false)
    }
}

/// The read side of a backend: shared by every reader, safe to call from
/// any thread (it may block on I/O).
pub trait LogReader: Send + Sync + 'static {
    /// The value of `key` at exactly `mod_revision`, if that row exists.
    fn value_at(&self, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>>;

    /// `(total, in_use)` bytes of the database.
    fn size(&self) -> Result<(i64, i64)>;

    /// A consistent copy of the whole database, as a file open for reading
    /// that is deleted when closed (see `snapshot`).
    fn snapshot(&self) -> Result<std::fs::File>;

    /// Closes the connections (the database file is about to be replaced).
    fn close_connections(&self) -> Result<()> {
        Ok(())
    }

    /// Opens them again on the (new) database file.
    fn reopen_connections(&self) -> Result<()> {
        Ok(())
    }
}
