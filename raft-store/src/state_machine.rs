//! The state machine: the k3rs MVCC store, fed the cluster's committed
//! entries in log order.
//!
//! Each batch of entries openraft hands over is applied in one store
//! commit that also records the applied position (log id and membership),
//! so after a restart the store says exactly which entries it holds and
//! none is lost or applied twice.

use kine::Store;
use kine::mvcc::writer::WriteOp;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError};

use crate::types::{
    Entry, LogId, MemberNode, Reply, StoredMembership, TypeConfig, decode, encode,
};

/// What the store records beside every applied batch.
#[derive(serde::Serialize, serde::Deserialize)]
struct AppliedPosition {
    applied: Option<LogId>,
    membership: StoredMembership,
}

/// The MVCC store as openraft's state machine.
pub struct StateMachine {
    store: Store,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl StateMachine {
    /// Wraps `store`, reading the position its last commit recorded.
    pub fn new(store: Store) -> Result<StateMachine, kine::Error> {
        let (applied, membership) = match store.loaded_replication() {
            Some(blob) => {
                let p: AppliedPosition = decode(&blob)?;
                (p.applied, p.membership)
            }
            None => (None, StoredMembership::default()),
        };
        Ok(StateMachine {
            store,
            applied,
            membership,
        })
    }
}

fn not_built() -> StorageError<u64> {
    StorageIOError::read_snapshot(
        None,
        &kine::Error::Unimplemented(
            "k3rs: raft snapshots are not built yet; members catch up from the full log".into(),
        ),
    )
    .into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = NoSnapshots;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<u64>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut ops = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            let op = match entry.payload {
                EntryPayload::Normal(command) => match command.to_op() {
                    Ok(op) => op,
                    Err(e) => return Err(StorageIOError::apply(entry.log_id, &e).into()),
                },
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    WriteOp::Noop
                }
                EntryPayload::Blank => WriteOp::Noop,
            };
            ops.push(op);
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let mark = encode(&AppliedPosition {
            applied: Some(last),
            membership: self.membership.clone(),
        });
        let results = self
            .store
            .apply_replicated(ops, mark.into())
            .await
            .map_err(|e| StorageIOError::apply(last, &e))?;
        // A write the store could not commit is applied elsewhere and not
        // here: this member must stop rather than diverge.
        if let Some(Err(e)) = results.iter().find(|r| {
            matches!(
                r,
                Err(kine::Error::Storage(_) | kine::Error::CommitUnknown(_) | kine::Error::Stopped)
            )
        }) {
            return Err(StorageIOError::apply(last, e).into());
        }
        self.applied = Some(last);
        Ok(results.iter().map(Reply::new).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        NoSnapshots
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        Err(not_built())
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, MemberNode>,
        _snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        Err(not_built())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(None)
    }
}

/// Snapshots are not built yet (the log is kept whole; see `not_built`).
pub struct NoSnapshots;

impl RaftSnapshotBuilder<TypeConfig> for NoSnapshots {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        Err(not_built())
    }
}
