//! The MVCC store: etcd's revision model over an in-memory index and a
//! durable log.
//!
//! Readers take the index's read lock, read at the published revision and
//! never wait for the disk. Every write goes through the one writer thread
//! (`writer`), which assigns revisions, commits to the backend and only then
//! publishes. See ARCHITECTURE.md for the invariants.

pub mod apply;
pub mod index;
pub mod lease;
pub mod quota;
pub mod read;
pub mod replication;
pub mod writer;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{LogReader, LogWriter, StoreIdentity};
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::proto::{
    DeleteRangeRequest, DeleteRangeResponse, Event, LeaseGrantResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use index::{Index, KeyRange, Revision};
use lease::{Lease, LeaseTable};
use read::ReadView;
use replication::Replicator;
use writer::{Job, WriteOp, WriteReply, Writer};

/// State shared by readers and the writer.
pub(crate) struct Shared {
    /// Lock order: `index` before `leases`. Held for memory work only,
    /// never across I/O that waits for the disk.
    index: RwLock<Index>,
    /// The published revision: every write at or below it is durable.
    /// Written only under the `index` write lock.
    current: AtomicI64,
    /// Written only under the `index` write lock, so a reader holding the
    /// read lock sees a compact revision that matches the index.
    compact: AtomicI64,
    identity: StoreIdentity,
    reader: Box<dyn LogReader>,
    /// Lock order: after `index`. The writer holds both while it evaluates.
    leases: Mutex<LeaseTable>,
    /// Called with every committed batch, in revision order, by the writer.
    subscribers: RwLock<Vec<Subscriber>>,
    /// Raised alarms and the space quota.
    alarms: quota::Alarms,
    /// Set once when a replicated store takes over the write path.
    replicator: OnceLock<Arc<dyn Replicator>>,
    /// The replicated applied position the store was opened at.
    loaded_replication: Option<Bytes>,
    /// The database size and when it was measured (replicated quota).
    measured_size: Mutex<Option<(std::time::Instant, u64)>>,
}

/// The index and lease table rebuilt from a log, with what it said.
pub(crate) struct LoadedState {
    pub(crate) index: Index,
    pub(crate) leases: LeaseTable,
    pub(crate) loaded: crate::backend::Loaded,
    /// Rows a compaction had not yet deleted when the process stopped.
    pub(crate) leftover: Vec<(i64, Bytes)>,
}

/// Reads the whole log into a fresh index and lease table.
pub(crate) fn load_state(log: &mut dyn LogWriter) -> Result<LoadedState> {
    let started = std::time::Instant::now();
    let mut index = Index::default();
    let loaded = log.load(&mut |record| {
        let key = record.key.clone();
        index.push(
            record.key,
            Revision {
                mod_revision: record.mod_revision,
                create_revision: record.create_revision,
                version: record.version,
                lease: record.lease,
                sub: record.sub,
                value: Some(record.value),
            },
        );
        index.release_old_values(&key);
    })?;
    let leftover = if loaded.compact_revision > 0 {
        index.compact(loaded.compact_revision)
    } else {
        Vec::new()
    };
    tracing::info!(
        revision = loaded.current_revision,
        compact_revision = loaded.compact_revision,
        keys = index.key_count(),
        revisions = index.revision_count(),
        leftover_compacted = leftover.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store loaded"
    );
    // Every lease gets its full TTL again after a restart (etcd's rule).
    let mut leases = LeaseTable::default();
    for stored in &loaded.leases {
        leases.insert(stored.id, Lease::new(stored.ttl));
    }
    let all = KeyRange::new(Bytes::from_static(b"\0"), Bytes::from_static(b"\0"));
    index.visit(&all, |key, h| {
        if let Some(latest) = h.latest().filter(|l| !l.is_tombstone() && l.lease != 0) {
            leases.reattach(key, 0, latest.lease);
        }
        true
    });
    Ok(LoadedState {
        index,
        leases,
        loaded,
        leftover,
    })
}

/// A callback fed every committed batch.
pub type Subscriber = Box<dyn Fn(Arc<Committed>) + Send + Sync>;

/// What one group commit changed, for watchers.
#[derive(Debug)]
pub struct Committed {
    /// The newest revision of the batch.
    pub revision: i64,
    /// Its events in revision order, then write order; each with `prev_kv`.
    pub events: Vec<Event>,
    /// The whole store was replaced (a replicated member installed a
    /// snapshot): watchers resume from the new history, or are canceled
    /// where it was compacted.
    pub restored: bool,
}

impl Shared {
    fn current_revision(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    fn compact_revision(&self) -> i64 {
        self.compact.load(Ordering::Acquire)
    }

    /// Caller holds the index write lock.
    fn set_compact_revision_locked(&self, revision: i64) {
        self.compact.store(revision, Ordering::Release);
    }

    /// Caller holds the index write lock.
    fn publish(&self, revision: i64) {
        self.current.store(revision, Ordering::Release);
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_value(&self, key: &[u8], rev: i64) -> Result<Bytes> {
        self.reader.value_at(key, rev)?.ok_or(Error::Compacted)
    }
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Whether other servers write to the same database.
    shared_db: bool,
}

impl Store {
    /// Loads the log into memory and starts the writer thread.
    pub fn open(mut log: Box<dyn LogWriter>, reader: Box<dyn LogReader>) -> Result<Store> {
        let LoadedState {
            index,
            leases,
            loaded,
            leftover,
        } = load_state(log.as_mut())?;
        let shared = Arc::new(Shared {
            index: RwLock::new(index),
            current: AtomicI64::new(loaded.current_revision),
            compact: AtomicI64::new(loaded.compact_revision),
            identity: loaded.identity,
            reader,
            leases: Mutex::new(leases),
            subscribers: RwLock::new(Vec::new()),
            alarms: quota::Alarms::default(),
            replicator: OnceLock::new(),
            loaded_replication: loaded.replication,
            measured_size: Mutex::new(None),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let shared_db = log.is_shared();
        if shared_db {
            // Woken when another server commits; stops once the store is gone.
            let jobs = tx.downgrade();
            log.listen(crate::backend::Waker::new(move |send| {
                jobs.upgrade()
                    .is_some_and(|jobs| !send || jobs.send(Job::Sync(None)).is_ok())
            }))?;
        }
        let writer = Writer::new(shared.clone(), log, rx, leftover);
        std::thread::Builder::new()
            .name("k3rs-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            shared,
            jobs: tx,
            shared_db,
        })
    }

    /// The published revision.
    pub fn current_revision(&self) -> i64 {
        self.shared.current_revision()
    }

    /// The compact revision (-1 before any compaction).
    pub fn compact_revision(&self) -> i64 {
        self.shared.compact_revision()
    }

    /// Cluster and member ids (the cluster's, when replicated).
    pub fn identity(&self) -> StoreIdentity {
        match self.replicator() {
            Some(r) => r.identity(),
            None => self.shared.identity,
        }
    }

    /// Hands the write path to a replicated store: from now on every write
    /// is proposed to its cluster and applied by `apply_replicated`.
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) -> Result<()> {
        self.shared
            .replicator
            .set(replicator)
            .map_err(|_| Error::Storage("the store already has a replicator".into()))
    }

    /// The replicated store driving this one, if any.
    pub fn replicator(&self) -> Option<&Arc<dyn Replicator>> {
        self.shared.replicator.get()
    }

    /// The replicated applied position this store was opened at.
    pub fn loaded_replication(&self) -> Option<Bytes> {
        self.shared.loaded_replication.clone()
    }

    /// Applies entries a replicated store's cluster committed, in order,
    /// in one commit that also records `mark`; one answer per op.
    pub async fn apply_replicated(
        &self,
        ops: Vec<WriteOp>,
        mark: Bytes,
    ) -> Result<Vec<Result<WriteReply>>> {
        let mut receivers = Vec::with_capacity(ops.len());
        let mut jobs = Vec::with_capacity(ops.len());
        for op in ops {
            let (tx, rx) = oneshot::channel();
            jobs.push((op, tx));
            receivers.push(rx);
        }
        self.jobs
            .send(Job::Replicated(jobs, mark))
            .map_err(|_| Error::Stopped)?;
        let mut replies = Vec::with_capacity(receivers.len());
        for rx in receivers {
            replies.push(rx.await.map_err(|_| Error::Stopped)?);
        }
        Ok(replies)
    }

    /// The space quota for a replicated write, checked where it is
    /// proposed: applying must not depend on a member's own file size.
    fn admit_replicated(&self, op: &WriteOp) -> Result<()> {
        let cost = quota::cost(op);
        let alarms = &self.shared.alarms;
        if cost == 0 {
            return Ok(());
        }
        if !alarms.nospace() {
            let quota = alarms.quota();
            if quota == 0 || self.recent_db_size()? + cost < quota {
                return Ok(());
            }
            alarms.activate(crate::proto::AlarmMember {
                member_id: self.identity().member_id,
                alarm: crate::proto::AlarmType::Nospace as i32,
            });
        }
        METRICS.quota_refusals.inc();
        Err(Error::NoSpace)
    }

    /// The database size, measured at most once every 100 ms: the quota
    /// check on the replicated write path must not query the file per write.
    fn recent_db_size(&self) -> Result<u64> {
        const FRESH: std::time::Duration = std::time::Duration::from_millis(100);
        let mut cached = self
            .shared
            .measured_size
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((at, size)) = *cached
            && at.elapsed() < FRESH
        {
            return Ok(size);
        }
        let size = self.db_size()?.0.max(0) as u64;
        *cached = Some((std::time::Instant::now(), size));
        Ok(size)
    }

    /// Replaces the whole store with the database at `path` (a replicated
    /// member installing the leader's snapshot); returns its revision.
    pub async fn restore_replicated(&self, path: std::path::PathBuf) -> Result<i64> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Restore(path, reply))
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Makes every commit so far durable (before a replicated store's log
    /// is purged up to what the store holds).
    pub async fn checkpoint(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Checkpoint(reply))
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Restarts every lease's TTL (a member that just became leader).
    pub fn renew_all_leases(&self) {
        self.shared.leases().renew_all();
    }

    /// A fresh lease id, for a grant that asked for none (chosen before
    /// proposing, so every member grants the same id).
    pub fn fresh_lease_id(&self) -> i64 {
        self.shared.leases().fresh_id()
    }

    /// `(total, in_use)` bytes of the database.
    pub fn db_size(&self) -> Result<(i64, i64)> {
        self.shared.reader.size()
    }

    /// Raised alarms and the space quota (0: none; see `quota`).
    pub fn alarms(&self) -> &quota::Alarms {
        &self.shared.alarms
    }

    /// `(keys, revisions)` held in the index, for metrics.
    pub fn index_counts(&self) -> (usize, usize) {
        let index = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        (index.key_count(), index.revision_count())
    }

    /// Live leases, for metrics.
    pub fn lease_count(&self) -> usize {
        self.shared.leases().len()
    }

    /// Range, at the published revision or an older one. Never waits for the
    /// writer; reads the log only for values of superseded revisions.
    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        read::check_range(req)?;
        if let (Some(r), false) = (self.replicator(), req.serializable) {
            r.read_barrier().await?;
        }
        if self.shared_db && !req.serializable {
            // Linearizable: first take in every revision another server
            // committed before this request.
            self.sync().await?;
        }
        let shared = &self.shared;
        let partial = {
            let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
            let view = ReadView {
                current: shared.current_revision(),
                compact: shared.compact_revision(),
            };
            read::range(&index, req, view, &mut |k, r| shared.log_value(k, r))?
        };
        if partial.missing.is_empty() {
            return Ok(partial.response);
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            read::fill_missing(partial, &mut |k, r| shared.log_value(k, r))
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
    }

    /// On a shared database: returns once this server holds every revision
    /// committed (by any server) before the call.
    pub async fn sync(&self) -> Result<()> {
        if !self.shared_db {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Sync(Some(tx)))
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    async fn write(&self, op: WriteOp) -> Result<WriteReply> {
        if let Some(r) = self.replicator() {
            self.admit_replicated(&op)?;
            return r.propose(op).await;
        }
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Write(op, tx))
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Put (checked with `apply::check_put` first).
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        apply::check_put(&req)?;
        match self.write(WriteOp::Put(req)).await? {
            WriteReply::Put(r) => Ok(r),
            _ => unreachable!("the writer answers a put with a put"),
        }
    }

    /// DeleteRange.
    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        match self.write(WriteOp::DeleteRange(req)).await? {
            WriteReply::DeleteRange(r) => Ok(r),
            _ => unreachable!("the writer answers a delete with a delete"),
        }
    }

    /// Txn. Goes through the writer even when read-only, so its compares
    /// and reads see one consistent state.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        apply::check_txn(&req)?;
        match self.write(WriteOp::Txn(req)).await? {
            WriteReply::Txn(r) => Ok(r),
            _ => unreachable!("the writer answers a txn with a txn"),
        }
    }

    /// Compact; returns the current revision. With `physical`, answers once
    /// the compacted rows are gone from the log.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<i64> {
        if self.replicator().is_some() {
            // Compaction is an entry like any write; its physical part
            // runs on each member after it applies.
            return match self.write(WriteOp::Compact { revision }).await? {
                WriteReply::Revision(r) => Ok(r),
                _ => unreachable!("the writer answers a compaction with a revision"),
            };
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Compact {
                revision,
                physical,
                reply,
            })
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Returns free space to the file system.
    pub async fn defragment(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Defragment(reply))
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// A consistent copy of the whole database (see `backend::snapshot`),
    /// open for reading and deleted when closed.
    pub async fn snapshot(&self) -> Result<std::fs::File> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.reader.snapshot())
            .await
            .map_err(|e| Error::Storage(e.to_string()))?
    }

    /// Registers a callback for every committed batch (the watch hub).
    pub fn subscribe(&self, subscriber: Subscriber) {
        self.shared
            .subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(subscriber);
    }

    /// The events of `range` at revisions `from..=to`, in order, each with
    /// its `prev_kv` (left out where compacted). `Compacted` if `from` is
    /// below the compact revision.
    pub async fn history(&self, range: KeyRange, from: i64, to: i64) -> Result<Vec<Event>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut found: Vec<(Bytes, Revision, Option<Revision>)> = Vec::new();
            {
                let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
                if from < shared.compact_revision() {
                    return Err(Error::Compacted);
                }
                index.visit(&range, |key, h| {
                    let revs = h.revisions();
                    let start = revs.partition_point(|r| r.mod_revision < from);
                    for (i, r) in revs.iter().enumerate().skip(start) {
                        if r.mod_revision > to {
                            break;
                        }
                        let prev = i
                            .checked_sub(1)
                            .map(|p| &revs[p])
                            .filter(|p| !p.is_tombstone());
                        found.push((key.clone(), r.clone(), prev.cloned()));
                    }
                    true
                });
            }
            found.sort_by_key(|(_, r, _)| (r.mod_revision, r.sub));
            found
                .into_iter()
                .map(|(key, r, prev)| {
                    let mut kv = read::to_kv(&key, &r, true);
                    if r.value.is_none() {
                        kv.value = shared.log_value(&key, r.mod_revision)?;
                    }
                    let prev_kv = match prev {
                        Some(p) if p.value.is_some() => Some(read::to_kv(&key, &p, true)),
                        // Compacted away meanwhile: etcd leaves prev_kv out.
                        Some(p) => shared.reader.value_at(&key, p.mod_revision)?.map(|v| {
                            let mut kv = read::to_kv(&key, &p, false);
                            kv.value = v;
                            kv
                        }),
                        None => None,
                    };
                    Ok(read::to_event(kv, prev_kv))
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
    }

    /// LeaseGrant: `id` 0 lets the server choose; TTLs below the minimum
    /// are raised to it.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<LeaseGrantResponse> {
        if ttl > lease::MAX_TTL_SECONDS {
            return Err(Error::LeaseTtlTooLarge);
        }
        let id = match (id, self.replicator()) {
            (0, Some(_)) => self.fresh_lease_id(),
            _ => id,
        };
        match self
            .write(WriteOp::LeaseGrant {
                id,
                ttl: ttl.max(lease::MIN_TTL_SECONDS),
            })
            .await?
        {
            WriteReply::LeaseGrant(r) => {
                METRICS.leases_granted.inc();
                Ok(r)
            }
            _ => unreachable!("the writer answers a grant with a grant"),
        }
    }

    /// LeaseRevoke: deletes the attached keys in one revision; returns it.
    pub async fn lease_revoke(&self, id: i64) -> Result<i64> {
        match self
            .write(WriteOp::LeaseRevoke {
                id,
                only_if_expired: false,
            })
            .await?
        {
            WriteReply::Revision(r) => {
                METRICS.leases_revoked.inc();
                Ok(r)
            }
            _ => unreachable!("the writer answers a revoke with a revision"),
        }
    }

    /// Revokes every lease whose deadline has passed (unless kept alive
    /// meanwhile); one revision per lease that had keys.
    pub async fn expire_leases(&self) {
        // Replicated: deadlines are the leader's, and the revoke it proposes
        // must apply alike everywhere, so it cannot depend on the clock.
        let replicated = self.replicator();
        if replicated.is_some_and(|r| !r.is_leader()) {
            return;
        }
        let expired = self.shared.leases().expired(std::time::Instant::now());
        for id in expired {
            match self
                .write(WriteOp::LeaseRevoke {
                    id,
                    only_if_expired: replicated.is_none(),
                })
                .await
            {
                Ok(_) => METRICS.leases_expired.inc(),
                Err(Error::LeaseNotFound) => {}
                Err(e) => {
                    tracing::warn!(lease = id, error = %e, "lease expiry failed; will retry")
                }
            }
        }
    }

    /// Restarts a lease's TTL: its TTL, or 0 if it does not exist (etcd).
    /// On a shared database the keep-alive is recorded there, so that the
    /// other servers' expiry sees it.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        let ttl = if let Some(r) = self.replicator() {
            r.keep_alive(id).await?
        } else if self.shared_db {
            match self.write(WriteOp::LeaseKeepAlive { id }).await? {
                WriteReply::KeepAlive(ttl) => ttl,
                _ => unreachable!("the writer answers a keep-alive with a TTL"),
            }
        } else {
            self.shared.leases().keep_alive(id).unwrap_or(0)
        };
        if ttl > 0 {
            METRICS.leases_renewed.inc();
        }
        Ok(ttl)
    }

    /// A keep-alive on this member's own lease table (a replicated
    /// store's leader): the TTL, or 0 if the lease is gone.
    pub fn local_keep_alive(&self, id: i64) -> i64 {
        self.shared.leases().keep_alive(id).unwrap_or(0)
    }

    /// `(remaining, granted, keys)` of a lease; `None` if it does not
    /// exist. Replicated: the leader's answer.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        with_keys: bool,
    ) -> Result<Option<(i64, i64, Vec<Bytes>)>> {
        match self.replicator() {
            Some(r) => r.time_to_live(id, with_keys).await,
            None => Ok(self.local_lease_time_to_live(id, with_keys)),
        }
    }

    /// `(remaining, granted, keys)` of a lease in this member's own table.
    pub fn local_lease_time_to_live(
        &self,
        id: i64,
        with_keys: bool,
    ) -> Option<(i64, i64, Vec<Bytes>)> {
        let leases = self.shared.leases();
        let l = leases.get(id)?;
        let keys = if with_keys {
            l.keys.iter().cloned().collect()
        } else {
            Vec::new()
        };
        Some((l.remaining_seconds(), l.ttl, keys))
    }

    /// Every live lease id.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.shared.leases().ids()
    }

    /// Finishes queued writes and stops the writer.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.jobs.send(Job::Shutdown(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// etcd's HashKV: a CRC-32C over every retained revision at or below
    /// `revision` (0: the current one), with keys and values. Equal stores
    /// hash equal; it is not comparable with etcd's own hash, which covers
    /// bbolt's encoding.
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let (rows, compact, at) = {
                let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
                let current = shared.current_revision();
                let compact = shared.compact_revision();
                let at = if revision <= 0 { current } else { revision };
                if at > current {
                    return Err(Error::FutureRevision);
                }
                if at < compact {
                    return Err(Error::Compacted);
                }
                let mut rows = Vec::new();
                let all =
                    index::KeyRange::new(Bytes::from_static(b"\0"), Bytes::from_static(b"\0"));
                index.visit(&all, |key, h| {
                    for r in h.revisions().iter().take_while(|r| r.mod_revision <= at) {
                        rows.push((key.clone(), r.clone()));
                    }
                    true
                });
                (rows, compact, at)
            };
            let mut crc = crate::crc32c::Crc32c::new();
            for (key, r) in rows {
                let value = match r.value.clone() {
                    Some(v) => v,
                    None => shared.log_value(&key, r.mod_revision)?,
                };
                crc.update(&r.mod_revision.to_be_bytes());
                crc.update(&key);
                crc.update(&[r.is_tombstone() as u8]);
                crc.update(&value);
            }
            Ok((crc.finish(), compact, at))
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
    }
}
