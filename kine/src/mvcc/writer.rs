//! The commit pipeline: one thread owns revision assignment and the log.
//!
//! It takes every queued request, evaluates each in order against the index
//! (later requests see earlier ones), writes them all in one transaction,
//! waits for the fsync once, then publishes the new revision and answers
//! every request of the batch. While one batch is on its way to the disk
//! the next one fills, so the batch size follows the load with no timer.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::apply::{self, WriteCtx};
use super::lease::Lease;
use super::{Committed, Shared, quota, read};
use crate::backend::{Changes, CommitBatch, LogWriter, StoredLease};
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::proto::{
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse, PutRequest, PutResponse,
    ResponseHeader, TxnRequest, TxnResponse,
};

/// Most requests in one commit: bounds the latency of a batch's first
/// request when thousands are queued.
const MAX_BATCH_REQUESTS: usize = 4096;
/// Most value bytes in one commit, for the same reason.
const MAX_BATCH_BYTES: usize = 32 << 20;
/// Log rows a compaction deletes per transaction between write batches.
const COMPACTION_CHUNK: usize = 1_000;
/// Under write load, the least time between two compaction steps: keeps
/// compaction to a small share of the writer, so put latency holds while a
/// million revisions are compacted. When no write waits, steps run back to back.
const COMPACTION_PAUSE_UNDER_LOAD: std::time::Duration = std::time::Duration::from_millis(20);
/// Keys a compaction walks in the index per step between write batches.
const COMPACTION_KEYS_PER_STEP: usize = 10_000;

/// A write request for the writer.
#[derive(Debug)]
pub enum WriteOp {
    /// Put.
    Put(PutRequest),
    /// DeleteRange.
    DeleteRange(DeleteRangeRequest),
    /// Txn.
    Txn(TxnRequest),
    /// Grant a lease (`id` 0: choose one); `ttl` already clamped.
    LeaseGrant { id: i64, ttl: i64 },
    /// Revoke a lease and delete its keys; with `only_if_expired`, only if
    /// no keep-alive came in since it expired (the expiry loop).
    LeaseRevoke { id: i64, only_if_expired: bool },
    /// Restart a lease's TTL, recorded in a shared database so that every
    /// server's expiry sees it. Answered with the TTL, 0 if it is gone.
    LeaseKeepAlive { id: i64 },
    /// Compact at a revision, in the batch's transaction (replicated
    /// stores, where compaction is an entry like any write). Answered with
    /// the revision the store is at.
    Compact { revision: i64 },
    /// Nothing: a replicated entry that changes no key (it still moves the
    /// applied position). Answered with the revision the store is at.
    Noop,
}

/// The answer to a `WriteOp`, of the same kind.
#[derive(Debug)]
pub enum WriteReply {
    /// For `Put`.
    Put(PutResponse),
    /// For `DeleteRange`.
    DeleteRange(DeleteRangeResponse),
    /// For `Txn`.
    Txn(TxnResponse),
    /// For `LeaseGrant`.
    LeaseGrant(LeaseGrantResponse),
    /// The revision a request left the store at (`LeaseRevoke`).
    Revision(i64),
    /// The TTL a keep-alive restarted, 0 if the lease is gone.
    KeepAlive(i64),
}

/// Work queued for the writer thread.
pub enum Job {
    /// A KV write (or read-only txn), answered after its commit.
    Write(WriteOp, oneshot::Sender<Result<WriteReply>>),
    /// Entries a replicated store's cluster committed, applied in one
    /// commit with `mark` (the applied position after the last of them):
    /// never split, so a commit's mark covers exactly what it wrote.
    Replicated(Vec<(WriteOp, oneshot::Sender<Result<WriteReply>>)>, Bytes),
    /// Compact at a revision; `physical` answers once the rows are gone.
    Compact {
        revision: i64,
        physical: bool,
        reply: oneshot::Sender<Result<i64>>,
    },
    /// Reclaim free space.
    Defragment(oneshot::Sender<Result<()>>),
    /// A shared database: take in what other servers committed; answered
    /// once this server has every revision committed before the job.
    Sync(Option<oneshot::Sender<Result<()>>>),
    /// Replace the whole database with this file and reload (a replicated
    /// member installing a snapshot); answered with the new revision.
    Restore(std::path::PathBuf, oneshot::Sender<Result<i64>>),
    /// Make every commit so far durable.
    Checkpoint(oneshot::Sender<Result<()>>),
    /// Finish what is queued, then stop.
    Shutdown(oneshot::Sender<()>),
}

impl WriteOp {
    /// Roughly the bytes this op adds to a commit.
    fn size(&self) -> usize {
        use prost::Message;
        match self {
            WriteOp::Put(p) => p.encoded_len(),
            WriteOp::DeleteRange(d) => d.encoded_len(),
            WriteOp::Txn(t) => t.encoded_len(),
            WriteOp::LeaseGrant { .. }
            | WriteOp::LeaseRevoke { .. }
            | WriteOp::LeaseKeepAlive { .. }
            | WriteOp::Compact { .. }
            | WriteOp::Noop => 16,
        }
    }
}

/// The writer thread's own state.
pub struct Writer {
    shared: Arc<Shared>,
    log: Box<dyn LogWriter>,
    jobs: mpsc::UnboundedReceiver<Job>,
    /// The newest revision assigned (equal to the published one between batches).
    head: i64,
    /// A compaction still walking the index: its revision and next key.
    compacting: Option<(i64, Bytes)>,
    /// Whether this server deletes the rows its compaction walk finds (on
    /// a shared database, only the server that ran the compaction does).
    compaction_deletes_rows: bool,
    /// Log rows compaction made unreachable, still to delete.
    compacted_rows: VecDeque<(i64, Bytes)>,
    /// When the last compaction step ended.
    last_compaction_step: std::time::Instant,
    /// Physical compactions waiting for `compacted_rows` to drain.
    physical_waiters: Vec<(oneshot::Sender<Result<i64>>, i64)>,
    /// For the quota: the database's size when last measured plus the
    /// cost of every write admitted since (an upper bound: overwrites and
    /// free pages cost less). Measured again only when the bound would
    /// refuse a write; `None` until first needed.
    db_size: Option<u64>,
    /// A batch whose commit outcome the backend could not tell.
    pending: Option<Pending>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        log: Box<dyn LogWriter>,
        jobs: mpsc::UnboundedReceiver<Job>,
        leftover: Vec<(i64, Bytes)>,
    ) -> Self {
        let head = shared.current_revision();
        let mut leftover = leftover;
        leftover.sort_unstable_by_key(|(rev, _)| *rev);
        Writer {
            shared,
            log,
            jobs,
            head,
            compacting: None,
            compaction_deletes_rows: true,
            compacted_rows: leftover.into(),
            last_compaction_step: std::time::Instant::now(),
            physical_waiters: Vec::new(),
            db_size: None,
            pending: None,
        }
    }

    /// Whether a write costing `cost` more (after `pending` already
    /// admitted in this batch) fits the quota. Raises NOSPACE if not.
    fn admit(&mut self, cost: u64, pending: u64) -> Result<()> {
        let shared = self.shared.clone();
        let alarms = &shared.alarms;
        if !alarms.nospace() {
            let quota = alarms.quota();
            if quota == 0 {
                return Ok(());
            }
            let fits = |size: u64| size + pending + cost < quota;
            if self.db_size.is_some_and(fits) {
                return Ok(());
            }
            let size = self.measure_db_size();
            if fits(size) {
                return Ok(());
            }
            let member_id = self.shared.identity.member_id;
            if alarms.activate(crate::proto::AlarmMember {
                member_id,
                alarm: crate::proto::AlarmType::Nospace as i32,
            }) {
                tracing::warn!(
                    db_size = size,
                    quota,
                    "space quota exhausted: NOSPACE alarm raised; compact, defragment, then disarm (etcdctl alarm disarm)"
                );
            }
        }
        METRICS.quota_refusals.inc();
        Err(Error::NoSpace)
    }

    fn measure_db_size(&mut self) -> u64 {
        let size = match self.shared.reader.size() {
            Ok((total, _)) => total.max(0) as u64,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the database size for the quota");
                0
            }
        };
        self.db_size = Some(size);
        size
    }

    /// Runs until shutdown or until every `Store` handle is gone.
    pub fn run(mut self) {
        loop {
            if self.pending.is_some() && !self.resolve_pending() {
                return;
            }
            let first = if !self.compaction_pending() {
                match self.jobs.blocking_recv() {
                    Some(job) => job,
                    None => return,
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.compaction_step();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            };
            let mut writes = Vec::new();
            let mut syncs = Vec::new();
            let mut mark = None;
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Write(op, reply) => {
                        bytes += op.size();
                        writes.push((op, reply));
                    }
                    Job::Replicated(ops, position) => {
                        bytes += ops.iter().map(|(op, _)| op.size()).sum::<usize>();
                        writes.extend(ops);
                        mark = Some(position);
                    }
                    Job::Sync(reply) => syncs.push(reply),
                    other => {
                        self.commit_writes(
                            std::mem::take(&mut writes),
                            std::mem::take(&mut syncs),
                            mark.take(),
                        );
                        if !self.run_control(other) {
                            return;
                        }
                    }
                }
                if writes.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
                    next = self.jobs.try_recv().ok();
                }
            }
            self.commit_writes(writes, syncs, mark);
            if self.compaction_pending()
                && self.last_compaction_step.elapsed() >= COMPACTION_PAUSE_UNDER_LOAD
            {
                self.compaction_step();
            }
        }
    }

    /// Evaluates, commits and answers one batch of writes. On a shared
    /// database it first takes the commit lock and catches up with the
    /// other servers, which also answers `syncs`.
    fn commit_writes(
        &mut self,
        writes: Vec<(WriteOp, oneshot::Sender<Result<WriteReply>>)>,
        syncs: Vec<Option<oneshot::Sender<Result<()>>>>,
        mark: Option<Bytes>,
    ) {
        if self.log.is_shared() && (!writes.is_empty() || !syncs.is_empty()) {
            let caught_up = if writes.is_empty() {
                self.log.catch_up(self.head)
            } else {
                self.log.lock_and_catch_up(self.head)
            };
            let caught_up = caught_up.map(|changes| self.apply_changes(changes));
            for reply in syncs.into_iter().flatten() {
                let _ = reply.send(caught_up.clone());
            }
            if let Err(e) = caught_up {
                tracing::warn!(error = %e, "cannot catch up with the shared database");
                for (_, reply) in writes {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        }
        if writes.is_empty() && mark.is_none() {
            return;
        }
        // Replicated entries must apply alike on every member: the quota,
        // which depends on each member's file, is checked before proposing.
        let replicated = mark.is_some();
        let published = self.head;
        let mut batch = CommitBatch {
            replication: mark,
            ..Default::default()
        };
        let mut revoked: Vec<(i64, Lease)> = Vec::new();
        let mut replies = Vec::with_capacity(writes.len());
        let mut admitted = 0;
        {
            let shared = self.shared.clone();
            let mut index = shared.index.write().unwrap_or_else(|p| p.into_inner());
            let mut leases = shared.leases();
            let compact = shared.compact_revision();
            for (op, reply) in writes {
                match op {
                    WriteOp::Compact { revision } => {
                        let compacted = batch.compact_revision.unwrap_or(compact);
                        let result = if revision <= compacted {
                            Err(Error::Compacted)
                        } else if revision > self.head {
                            Err(Error::FutureRevision)
                        } else {
                            batch.compact_revision = Some(revision);
                            Ok(WriteReply::Revision(self.head))
                        };
                        replies.push((reply, result, !batch.is_empty()));
                        continue;
                    }
                    WriteOp::Noop => {
                        replies.push((
                            reply,
                            Ok(WriteReply::Revision(self.head)),
                            !batch.is_empty(),
                        ));
                        continue;
                    }
                    _ => {}
                }
                let cost = if replicated { 0 } else { quota::cost(&op) };
                if cost > 0 {
                    if let Err(e) = self.admit(cost, admitted) {
                        replies.push((reply, Err(e), false));
                        continue;
                    }
                    admitted += cost;
                }
                let log = &mut self.log;
                let mut log_value =
                    |key: &[u8], rev: i64| log.value_at(key, rev)?.ok_or(Error::Compacted);
                let mut ctx = WriteCtx {
                    index: &mut index,
                    base: self.head,
                    compact,
                    first_record: batch.records.len(),
                    next_sub: 0,
                    records: &mut batch.records,
                    leases: &mut leases,
                    log_value: &mut log_value,
                };
                let result = match op {
                    WriteOp::Put(p) => apply::put_request(&mut ctx, &p).map(WriteReply::Put),
                    WriteOp::DeleteRange(d) => {
                        apply::delete_range(&mut ctx, &d).map(WriteReply::DeleteRange)
                    }
                    WriteOp::Txn(t) => apply::txn(&mut ctx, &t).map(WriteReply::Txn),
                    WriteOp::LeaseGrant { id, ttl } => {
                        grant(&mut ctx, id, ttl, &mut batch.granted_leases)
                            .map(WriteReply::LeaseGrant)
                    }
                    WriteOp::LeaseRevoke {
                        id,
                        only_if_expired,
                    } => {
                        let state = ctx.leases.get(id).cloned();
                        match state {
                            Some(l) if only_if_expired && l.expiry > std::time::Instant::now() => {
                                Ok(WriteReply::Revision(ctx.base))
                            }
                            Some(l) => apply::revoke_lease(&mut ctx, id).map(|rev| {
                                revoked.push((id, l));
                                batch.revoked_leases.push(id);
                                WriteReply::Revision(rev)
                            }),
                            None => Err(Error::LeaseNotFound),
                        }
                    }
                    WriteOp::LeaseKeepAlive { id } => {
                        let ttl = ctx.leases.keep_alive(id).unwrap_or(0);
                        if ttl > 0 {
                            batch.granted_leases.push(StoredLease { id, ttl });
                        }
                        Ok(WriteReply::KeepAlive(ttl))
                    }
                    WriteOp::Compact { .. } | WriteOp::Noop => {
                        unreachable!("answered before the write context")
                    }
                };
                let wrote = ctx.wrote();
                if result.is_err() {
                    ctx.rollback();
                } else if wrote {
                    self.head += 1;
                }
                // An answer given once the batch holds a change depends on
                // its commit: the request's own change (a row, or a lease
                // revoke or keep-alive that writes none), or an earlier
                // request's write that a read in this one saw.
                replies.push((reply, result, !batch.is_empty()));
            }
        }
        batch.current_revision = self.head;
        let granted_ids: Vec<i64> = batch.granted_leases.iter().map(|l| l.id).collect();
        self.net_lease_changes(&mut batch);
        let committed = if batch.is_empty() {
            if let Err(e) = self.log.release() {
                tracing::warn!(error = %e, "ending an empty transaction failed");
            }
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let committed = self.log.commit(&batch);
            METRICS.backend_commit.observe_duration(started.elapsed());
            METRICS.commit_batch_requests.observe(replies.len() as f64);
            if committed.is_err() {
                METRICS.commit_failures.inc();
            }
            if let (Ok(()), Some(size)) = (&committed, self.db_size.as_mut()) {
                *size += admitted;
            }
            committed
        };
        let outcome = Pending {
            batch,
            published,
            revoked,
            granted_ids,
        };
        match &committed {
            Ok(()) => {
                self.publish_committed(&outcome.batch);
                if let Some(revision) = outcome.batch.compact_revision {
                    self.start_compaction(revision);
                }
            }
            Err(Error::CommitUnknown(e)) => {
                // Neither publish nor undo until the database says which.
                tracing::error!(error = %e, "the database connection broke during a commit; writes wait until it is back");
                self.pending = Some(outcome);
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the batch's writes are refused");
                self.undo(outcome);
            }
        }
        for (reply, result, needs_commit) in replies {
            let result = match &committed {
                Err(e) if needs_commit => Err(e.clone()),
                _ => result,
            };
            let _ = reply.send(result);
        }
    }

    /// Takes in what other servers committed to a shared database: their
    /// leases, rows and compactions, published to this server's readers
    /// and watchers in revision order.
    fn apply_changes(&mut self, changes: Changes) {
        let mut revoked = Vec::new();
        {
            let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            let mut leases = self.shared.leases();
            // Grants first, so that rows attach to them; revokes after,
            // once their keys' tombstones have moved the keys off them.
            if changes.leases_complete {
                let live: std::collections::HashSet<i64> = changes
                    .leases
                    .iter()
                    .filter(|l| l.ttl > 0)
                    .map(|l| l.id)
                    .collect();
                revoked.extend(leases.ids().into_iter().filter(|id| !live.contains(id)));
            }
            for lease in &changes.leases {
                if lease.ttl <= 0 {
                    revoked.push(lease.id);
                } else if !leases.renew(lease.id, lease.ttl) {
                    leases.insert(lease.id, Lease::new(lease.ttl));
                }
            }
            for record in &changes.records {
                let (old_lease, _) = index.push(
                    record.key.clone(),
                    super::index::Revision {
                        mod_revision: record.mod_revision,
                        create_revision: record.create_revision,
                        version: record.version,
                        lease: record.lease,
                        sub: record.sub,
                        value: Some(record.value.clone()),
                    },
                );
                leases.reattach(&record.key, old_lease, record.lease);
            }
            for id in &revoked {
                leases.remove(*id);
            }
        }
        let head = changes.current_revision.max(self.head);
        if head > self.head || !changes.records.is_empty() {
            self.head = head;
            self.publish_committed(&CommitBatch {
                records: changes.records,
                current_revision: head,
                ..Default::default()
            });
        }
        if changes.compact_revision > self.shared.compact_revision() {
            {
                let _index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
                self.shared
                    .set_compact_revision_locked(changes.compact_revision);
            }
            // The server that compacted deletes the rows; this one only
            // drops them from its index.
            self.compacting = Some((changes.compact_revision, Bytes::new()));
            self.compaction_deletes_rows = false;
        }
    }

    /// Hands the backend the net lease changes of the batch: a lease
    /// granted and revoked in one batch (or the reverse) ends as whatever
    /// the lease table holds now, whatever order the backend applies them.
    fn net_lease_changes(&self, batch: &mut CommitBatch) {
        if batch.granted_leases.is_empty() && batch.revoked_leases.is_empty() {
            return;
        }
        let mut ids: Vec<i64> = batch.granted_leases.iter().map(|l| l.id).collect();
        ids.extend(&batch.revoked_leases);
        ids.sort_unstable();
        ids.dedup();
        let leases = self.shared.leases();
        batch.granted_leases.clear();
        batch.revoked_leases.clear();
        for id in ids {
            match leases.get(id) {
                Some(l) => batch.granted_leases.push(StoredLease { id, ttl: l.ttl }),
                None => batch.revoked_leases.push(id),
            }
        }
    }

    /// Publishes a committed batch and hands its events to the watchers.
    fn publish_committed(&mut self, batch: &CommitBatch) {
        let mut events = Vec::new();
        {
            let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            let watched = !self
                .shared
                .subscribers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
            if watched {
                events.reserve(batch.records.len());
            }
            for record in &batch.records {
                let published = index.publish(&record.key, record.mod_revision);
                if let (true, Some((this, prev))) = (watched, published) {
                    let prev = prev.map(|p| read::to_kv(&record.key, &p, true));
                    events.push(read::to_event(read::to_kv(&record.key, &this, true), prev));
                }
            }
            self.shared.publish(batch.current_revision);
        }
        if !events.is_empty() {
            self.notify(Committed {
                revision: batch.current_revision,
                events,
                restored: false,
            });
        }
    }

    /// Hands a batch to every subscriber (the watch hub).
    fn notify(&self, committed: Committed) {
        let committed = Arc::new(committed);
        for subscriber in self
            .shared
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            subscriber(committed.clone());
        }
    }

    /// Takes back a batch the backend did not commit.
    fn undo(&mut self, outcome: Pending) {
        let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
        let mut leases = self.shared.leases();
        for (id, lease) in outcome.revoked {
            leases.insert(id, lease);
        }
        for id in &outcome.granted_ids {
            leases.remove(*id);
        }
        apply::undo(
            &mut index,
            &mut leases,
            &outcome.batch.records,
            outcome.published,
        );
        self.head = outcome.published;
    }

    /// After a commit whose outcome is unknown: asks the backend, with
    /// back-off, until it answers; then publishes or undoes the batch.
    /// Jobs that arrive meanwhile are refused, so clients retry.
    fn resolve_pending(&mut self) -> bool {
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            let Some(pending) = self.pending.as_ref() else {
                return true;
            };
            match self.log.resolve_commit(pending.batch.current_revision) {
                Ok(committed) => {
                    let pending = self.pending.take().expect("checked above");
                    if committed {
                        tracing::info!(
                            revision = pending.batch.current_revision,
                            "the database is back; the interrupted commit had landed"
                        );
                        self.publish_committed(&pending.batch);
                    } else {
                        tracing::info!(
                            "the database is back; the interrupted commit had not landed"
                        );
                        self.undo(pending);
                    }
                    return true;
                }
                Err(e) => tracing::warn!(error = %e, "the database is still unreachable; retrying"),
            }
            let deadline = std::time::Instant::now() + delay;
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                match self.jobs.try_recv() {
                    Ok(Job::Shutdown(reply)) => {
                        let _ = reply.send(());
                        return false;
                    }
                    Ok(job) => refuse(job),
                    Err(mpsc::error::TryRecvError::Disconnected) => return false,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(left.min(std::time::Duration::from_millis(10)))
                    }
                }
            }
            delay = (delay * 2).min(std::time::Duration::from_secs(2));
        }
    }

    /// Runs a non-write job; false means stop.
    fn run_control(&mut self, job: Job) -> bool {
        match job {
            Job::Write(..) | Job::Replicated(..) => {
                unreachable!("writes are batched by the caller")
            }
            Job::Compact {
                revision,
                physical,
                reply,
            } => match self.compact_shared_or_not(revision) {
                Ok(()) if physical && self.compaction_pending() => {
                    self.physical_waiters.push((reply, self.head));
                }
                result => {
                    let _ = reply.send(result.map(|()| self.head));
                }
            },
            Job::Defragment(reply) => {
                let _ = reply.send(self.log.defragment());
            }
            Job::Sync(_) => unreachable!("syncs are batched by the caller"),
            Job::Restore(path, reply) => {
                let _ = reply.send(self.restore(&path));
            }
            Job::Checkpoint(reply) => {
                let _ = reply.send(self.log.checkpoint());
            }
            Job::Shutdown(reply) => {
                let _ = reply.send(());
                return false;
            }
        }
        true
    }

    /// Replaces the database and everything in memory with the file at
    /// `path`; watchers resume from the new history.
    fn restore(&mut self, path: &std::path::Path) -> Result<i64> {
        self.shared.reader.close_connections()?;
        let replaced = self.log.replace_database(path);
        self.shared.reader.reopen_connections()?;
        replaced?;
        let state = super::load_state(self.log.as_mut())?;
        let revision = state.loaded.current_revision;
        {
            let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            let mut leases = self.shared.leases();
            *index = state.index;
            *leases = state.leases;
            self.shared
                .set_compact_revision_locked(state.loaded.compact_revision);
            self.shared.publish(revision);
        }
        self.head = revision;
        self.compacting = None;
        self.compacted_rows = state.leftover.into();
        self.db_size = None;
        for (reply, _) in self.physical_waiters.drain(..) {
            let _ = reply.send(Ok(revision));
        }
        self.notify(Committed {
            revision,
            events: Vec::new(),
            restored: true,
        });
        tracing::info!(revision, "store replaced by a snapshot");
        Ok(revision)
    }

    /// Compacts; on a shared database under the commit lock, after
    /// catching up, so that compactions of several servers are ordered.
    fn compact_shared_or_not(&mut self, revision: i64) -> Result<()> {
        if !self.log.is_shared() {
            return self.compact(revision);
        }
        let changes = self.log.lock_and_catch_up(self.head)?;
        self.apply_changes(changes);
        let result = self.compact(revision);
        if result.is_err()
            && let Err(e) = self.log.release()
        {
            tracing::warn!(error = %e, "ending a refused compaction's transaction failed");
        }
        result
    }

    fn compact(&mut self, revision: i64) -> Result<()> {
        if revision <= self.shared.compact_revision() {
            return Err(Error::Compacted);
        }
        if revision > self.head {
            return Err(Error::FutureRevision);
        }
        self.log.set_compact_revision(revision)?;
        self.start_compaction(revision);
        Ok(())
    }

    /// Makes a durable compact revision visible and starts walking the index.
    fn start_compaction(&mut self, revision: i64) {
        {
            let _index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            self.shared.set_compact_revision_locked(revision);
        }
        // A newer compaction subsumes one still walking the index.
        self.compacting = Some((revision, Bytes::new()));
        self.compaction_deletes_rows = true;
        METRICS.compactions.inc();
        tracing::debug!(revision, "compaction started");
    }

    fn compaction_pending(&self) -> bool {
        self.compacting.is_some() || !self.compacted_rows.is_empty()
    }

    /// One bounded step of compaction: walk some keys of the index, or
    /// delete some unreachable rows from the log.
    fn compaction_step(&mut self) {
        self.step_compaction();
        self.last_compaction_step = std::time::Instant::now();
        // Also when the walk found nothing to delete.
        if !self.compaction_pending() {
            for (reply, head) in self.physical_waiters.drain(..) {
                let _ = reply.send(Ok(head));
            }
        }
    }

    fn step_compaction(&mut self) {
        if let Some((revision, from)) = self.compacting.take() {
            let mut removed = Vec::new();
            let next = {
                let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
                index.compact_some(revision, from, COMPACTION_KEYS_PER_STEP, &mut removed)
            };
            if self.compaction_deletes_rows {
                self.compacted_rows.extend(removed);
            }
            self.compacting = next.map(|key| (revision, key));
            if self.compacting.is_none() {
                // Rows found key by key lie all over the file; deleted in
                // revision order, each chunk touches neighbouring pages
                // (a few dozen instead of one page per row).
                self.compacted_rows
                    .make_contiguous()
                    .sort_unstable_by_key(|(rev, _)| *rev);
                tracing::debug!(
                    revision,
                    rows = self.compacted_rows.len(),
                    "compaction walked the index"
                );
            }
            return;
        }
        self.delete_compacted_chunk();
    }

    fn delete_compacted_chunk(&mut self) {
        let n = self.compacted_rows.len().min(COMPACTION_CHUNK);
        let chunk: Vec<_> = self.compacted_rows.drain(..n).collect();
        if let Err(e) = self.log.delete_revisions(&chunk) {
            // Leftover rows are unreachable and compacted again at start-up.
            tracing::warn!(error = %e, "deleting compacted revisions failed; will retry");
            self.compacted_rows.extend(chunk);
            std::thread::sleep(std::time::Duration::from_millis(100));
            return;
        }
        METRICS.compacted_rows.add(chunk.len() as u64);
    }
}

/// A batch evaluated against the index, not yet published.
struct Pending {
    batch: CommitBatch,
    /// The revision before the batch.
    published: i64,
    /// Leases the batch revoked, as they were.
    revoked: Vec<(i64, Lease)>,
    /// Leases the batch granted.
    granted_ids: Vec<i64>,
}

/// Answers a job the writer cannot run while the database is unreachable.
fn refuse(job: Job) {
    let unavailable = || Error::CommitUnknown("the database is unreachable; retry".into());
    match job {
        Job::Write(_, reply) => {
            let _ = reply.send(Err(unavailable()));
        }
        Job::Replicated(ops, _) => {
            for (_, reply) in ops {
                let _ = reply.send(Err(unavailable()));
            }
        }
        Job::Compact { reply, .. } => {
            let _ = reply.send(Err(unavailable()));
        }
        Job::Defragment(reply) => {
            let _ = reply.send(Err(unavailable()));
        }
        Job::Sync(reply) => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(unavailable()));
            }
        }
        Job::Restore(_, reply) => {
            let _ = reply.send(Err(unavailable()));
        }
        Job::Checkpoint(reply) => {
            let _ = reply.send(Err(unavailable()));
        }
        Job::Shutdown(reply) => {
            let _ = reply.send(());
        }
    }
}

/// Grants a lease inside a batch.
fn grant(
    ctx: &mut WriteCtx,
    id: i64,
    ttl: i64,
    granted: &mut Vec<StoredLease>,
) -> Result<LeaseGrantResponse> {
    let id = if id == 0 { ctx.leases.fresh_id() } else { id };
    if ctx.leases.contains(id) {
        return Err(Error::LeaseExists);
    }
    ctx.leases.insert(id, Lease::new(ttl));
    granted.push(StoredLease { id, ttl });
    Ok(LeaseGrantResponse {
        header: Some(ResponseHeader {
            revision: ctx.base,
            ..Default::default()
        }),
        id,
        ttl,
        error: String::new(),
    })
}
