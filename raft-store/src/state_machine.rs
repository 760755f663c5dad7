//! The state machine: the k3rs MVCC store, fed the cluster's committed
//! entries in log order.
//!
//! Each batch of entries openraft hands over is applied in one store
//! commit that also records the applied position (log id and membership),
//! so after a restart the store says exactly which entries it holds and
//! none is lost or applied twice. Snapshots are consistent copies of the
//! store's database file, which record their own log position.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kine::Store;
use kine::mvcc::writer::WriteOp;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError};

use crate::types::{
    Answer, Command, Entry, LogId, MemberNode, Reply, StoredMembership, TypeConfig, decode, encode,
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
    snapshots: Arc<Snapshots>,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
}

impl StateMachine {
    /// Wraps `store`, reading the position its last commit recorded;
    /// snapshots live in `dir`.
    pub fn new(store: Store, dir: &Path) -> Result<StateMachine, kine::Error> {
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
            snapshots: Arc::new(Snapshots::open(dir)?),
            receiving: None,
        })
    }
}

fn io_error(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, &kine::Error::Storage(e.to_string())).into()
}

/// A member's snapshot: `current.db`, a copy of the store's database as of
/// a log position (recorded inside it, so the file describes itself).
pub struct Snapshots {
    dir: PathBuf,
    current: Mutex<Option<SnapshotMeta<u64, MemberNode>>>,
}

impl Snapshots {
    fn open(dir: &Path) -> Result<Snapshots, kine::Error> {
        let dir = dir.join("snapshots");
        kine::backend::files::private_dir(&dir)
            .map_err(|e| kine::Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        // Leftovers of a build or a transfer that a crash interrupted.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name() != "current.db" {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let current_path = dir.join("current.db");
        kine::backend::files::private_file(&current_path).map_err(|e| {
            kine::Error::Storage(format!("cannot read {}: {e}", current_path.display()))
        })?;
        let current = if current_path.exists() {
            Some(meta_of(&current_path)?)
        } else {
            None
        };
        Ok(Snapshots {
            dir,
            current: Mutex::new(current),
        })
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join("current.db")
    }

    fn temp_path(&self, what: &str) -> PathBuf {
        self.dir
            .join(format!("{what}-{:016x}.db", crate::node::new_member_id()))
    }

    fn current(&self) -> Option<SnapshotMeta<u64, MemberNode>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes the database at `tmp` (fsynced first) the current snapshot.
    fn publish(&self, tmp: &Path) -> Result<SnapshotMeta<u64, MemberNode>, kine::Error> {
        let meta = meta_of(tmp)?;
        let storage = |e: std::io::Error| kine::Error::Storage(format!("snapshot file: {e}"));
        std::fs::File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(storage)?;
        std::fs::rename(tmp, self.current_path()).map_err(storage)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(storage)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta.clone());
        Ok(meta)
    }
}

/// The log position and membership a store's database file was copied at.
fn meta_of(path: &Path) -> Result<SnapshotMeta<u64, MemberNode>, kine::Error> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let blob: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'replication'",
            [],
            |r| r.get(0),
        )
        .ok();
    let position = match blob {
        Some(b) => decode::<AppliedPosition>(&b)?,
        None => AppliedPosition {
            applied: None,
            membership: StoredMembership::default(),
        },
    };
    let snapshot_id = match position.applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".into(),
    };
    Ok(SnapshotMeta {
        last_log_id: position.applied,
        last_membership: position.membership,
        snapshot_id,
    })
}

async fn open_snapshot(
    path: &Path,
    meta: SnapshotMeta<u64, MemberNode>,
) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
    let file = tokio::fs::File::open(path).await.map_err(io_error)?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(file),
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

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
        // Per entry: how many of `ops` it has, and whether it was a batch.
        let mut shape = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            let bad = |e: kine::Error| StorageIOError::apply(entry.log_id, &e);
            match entry.payload {
                EntryPayload::Normal(Command::Batch(commands)) => {
                    shape.push((commands.len(), true));
                    for command in commands {
                        ops.push(command.to_op().map_err(bad)?);
                    }
                }
                EntryPayload::Normal(command) => {
                    shape.push((1, false));
                    ops.push(command.to_op().map_err(bad)?);
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    shape.push((1, false));
                    ops.push(WriteOp::Noop);
                }
                EntryPayload::Blank => {
                    shape.push((1, false));
                    ops.push(WriteOp::Noop);
                }
            }
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
        let mut replies = results.iter().map(Reply::new);
        Ok(shape
            .into_iter()
            .map(|(n, batch)| {
                if batch {
                    Reply(Ok(Answer::Batch(replies.by_ref().take(n).collect())))
                } else {
                    replies.next().expect("one answer per op")
                }
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let path = self.snapshots.temp_path("incoming");
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(kine::backend::files::FILE_MODE)
            .open(&path)
            .await
            .map_err(io_error)?;
        if let Some(old) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MemberNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        snapshot.sync_all().await.map_err(io_error)?;
        drop(snapshot);
        let received = self
            .receiving
            .take()
            .ok_or_else(|| io_error("a snapshot arrived without a transfer"))?;
        // Kept as this member's own snapshot too: the store takes the file.
        let kept = self.snapshots.temp_path("installed");
        std::fs::copy(&received, &kept).map_err(io_error)?;
        let revision = self
            .store
            .restore_replicated(received)
            .await
            .map_err(io_error)?;
        self.snapshots.publish(&kept).map_err(io_error)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(
            snapshot = %meta.snapshot_id,
            revision,
            "installed the leader's snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        match self.snapshots.current() {
            Some(meta) => Ok(Some(
                open_snapshot(&self.snapshots.current_path(), meta).await?,
            )),
            None => Ok(None),
        }
    }
}

/// Builds a snapshot: a consistent copy of the store's database.
pub struct Builder {
    store: Store,
    snapshots: Arc<Snapshots>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let copy = self.store.snapshot().await.map_err(io_error)?;
        let tmp = self.snapshots.temp_path("building");
        let target = tmp.clone();
        tokio::task::spawn_blocking(move || {
            let mut copy = copy;
            use std::os::unix::fs::OpenOptionsExt;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(kine::backend::files::FILE_MODE)
                .open(&target)?;
            std::io::copy(&mut copy, &mut out).map(|_| ())
        })
        .await
        .map_err(io_error)?
        .map_err(io_error)?;
        // openraft purges the log up to the snapshot next: everything the
        // store applied must be durable first (its commits skip the fsync).
        self.store.checkpoint().await.map_err(io_error)?;
        let meta = self.snapshots.publish(&tmp).map_err(io_error)?;
        tracing::info!(snapshot = %meta.snapshot_id, "built a snapshot");
        open_snapshot(&self.snapshots.current_path(), meta).await
    }
}
