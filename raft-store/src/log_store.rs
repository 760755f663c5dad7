//! The raft log: durable in its own SQLite file (`raft.db`), served from
//! memory.
//!
//! Entries since the last purge are kept in memory, so replication and
//! elections never read the disk. One thread owns the file: it takes every
//! append queued while the previous one was being fsynced and writes them
//! in one transaction, with one fsync, and only then reports them flushed
//! to openraft (which counts an entry only once it is flushed). The vote is
//! written the same way but answered before `save_vote` returns.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageError, StorageIOError, Vote};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::types::{Entry, LogId, TypeConfig, decode, encode};

/// The durable log and its in-memory copy; clones share both.
#[derive(Clone)]
pub struct LogStore {
    state: Arc<Mutex<MemLog>>,
    disk: mpsc::Sender<DiskOp>,
}

#[derive(Default)]
struct MemLog {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    /// `(cluster id, member id)` once this member has been part of a cluster.
    identity: Option<(u64, u64)>,
    /// Set once the log thread failed: every later call fails with it.
    failed: Option<String>,
}

enum DiskOp {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    /// Delete entries at and after this index.
    Truncate(u64),
    /// Delete entries up to and including this log id.
    Purge(LogId),
    Meta(
        &'static str,
        Vec<u8>,
        Option<oneshot::Sender<Result<(), String>>>,
    ),
}

impl LogStore {
    /// Opens (or creates) the log at `path` and loads it into memory.
    pub fn open(path: &Path, fsync: bool) -> Result<LogStore, kine::Error> {
        use kine::backend::sqlite;
        // An empty log would make this member forget its vote and entries.
        sqlite::check_files(path).map_err(|e| {
            kine::Error::Storage(format!(
                "{}: this member's raft log is lost; remove this member's data directory and join it again",
                e.found()
            ))
        })?;
        if !path.exists() {
            sqlite::create_database(path)?;
        }
        sqlite::tighten_files(path)?;
        let conn = Connection::open(path)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {};
             CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
            if fsync { "FULL" } else { "NORMAL" }
        ))?;
        let mut mem = MemLog {
            vote: read_meta(&conn, "vote")?,
            committed: read_meta::<Option<LogId>>(&conn, "committed")?.flatten(),
            last_purged: read_meta(&conn, "purged")?,
            identity: read_meta(&conn, "identity")?,
            ..Default::default()
        };
        {
            let mut stmt = conn.prepare("SELECT idx, entry FROM log ORDER BY idx")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let index: u64 = row.get::<_, i64>(0)? as u64;
                let entry: Entry = decode(&row.get::<_, Vec<u8>>(1)?).map_err(|e| {
                    kine::Error::Storage(format!(
                        "{}: the raft log is corrupt at index {index} ({e}); \
                         remove this member's data directory and join it again",
                        path.display()
                    ))
                })?;
                mem.entries.insert(index, entry);
            }
        }
        let state = Arc::new(Mutex::new(mem));
        let (tx, rx) = mpsc::channel();
        let failed = state.clone();
        std::thread::Builder::new()
            .name("k3rs-raft-log".into())
            .spawn(move || {
                if let Err(e) = run_disk(conn, rx) {
                    tracing::error!(error = %e, "the raft log cannot be written; this member stops");
                    lock(&failed).failed = Some(e);
                }
            })
            .map_err(|e| kine::Error::Storage(format!("cannot start the raft log thread: {e}")))?;
        Ok(LogStore { state, disk: tx })
    }

    fn mem(&self) -> Result<std::sync::MutexGuard<'_, MemLog>, StorageError<u64>> {
        let mem = lock(&self.state);
        if let Some(e) = &mem.failed {
            return Err(StorageIOError::write_logs(&kine::Error::Storage(e.clone())).into());
        }
        Ok(mem)
    }

    fn send(&self, op: DiskOp) -> Result<(), StorageError<u64>> {
        self.disk.send(op).map_err(|_| {
            StorageIOError::write_logs(&kine::Error::Storage("the raft log thread stopped".into()))
                .into()
        })
    }

    async fn write_meta(
        &self,
        name: &'static str,
        value: Vec<u8>,
    ) -> Result<(), StorageError<u64>> {
        let (tx, rx) = oneshot::channel();
        self.send(DiskOp::Meta(name, value, Some(tx)))?;
        let io =
            |e: String| StorageError::from(StorageIOError::write_vote(&kine::Error::Storage(e)));
        rx.await
            .map_err(|_| io("the raft log thread stopped".into()))?
            .map_err(io)
    }
}

impl LogStore {
    /// `(cluster id, member id)` as saved when this member first joined or
    /// started the cluster.
    pub fn identity(&self) -> Option<(u64, u64)> {
        lock(&self.state).identity
    }

    /// Saves the identity, durably.
    pub async fn save_identity(&self, identity: (u64, u64)) -> Result<(), kine::Error> {
        lock(&self.state).identity = Some(identity);
        self.write_meta("identity", encode(&identity))
            .await
            .map_err(|e| kine::Error::Storage(e.to_string()))
    }
}

fn lock(m: &Mutex<MemLog>) -> std::sync::MutexGuard<'_, MemLog> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_meta<T: for<'a> serde::Deserialize<'a>>(
    conn: &Connection,
    name: &str,
) -> Result<Option<T>, kine::Error> {
    let blob: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    blob.map(|b| decode(&b)).transpose()
}

/// The log thread: group commits until the channel closes.
fn run_disk(mut conn: Connection, rx: mpsc::Receiver<DiskOp>) -> Result<(), String> {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(more) = rx.try_recv() {
            ops.push(more);
            if ops.len() >= 1024 {
                break;
            }
        }
        let written = write_ops(&mut conn, &ops);
        let failure = written.as_ref().err().map(|e| e.to_string());
        for op in ops {
            match op {
                DiskOp::Append(_, flushed) => flushed.log_io_completed(match &failure {
                    None => Ok(()),
                    Some(e) => Err(std::io::Error::other(e.clone())),
                }),
                DiskOp::Meta(_, _, Some(reply)) => {
                    let _ = reply.send(match &failure {
                        None => Ok(()),
                        Some(e) => Err(e.clone()),
                    });
                }
                _ => {}
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(())
}

fn write_ops(conn: &mut Connection, ops: &[DiskOp]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in ops {
        match op {
            DiskOp::Append(entries, _) => {
                let mut insert =
                    tx.prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")?;
                for (index, entry) in entries {
                    insert.execute(params![*index as i64, entry])?;
                }
            }
            DiskOp::Truncate(from) => {
                tx.execute("DELETE FROM log WHERE idx >= ?1", [*from as i64])?;
            }
            DiskOp::Purge(upto) => {
                tx.execute("DELETE FROM log WHERE idx <= ?1", [upto.index as i64])?;
                tx.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('purged', ?1)",
                    [encode(upto)],
                )?;
            }
            DiskOp::Meta(name, value, _) => {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
                    params![name, value],
                )?;
            }
        }
    }
    tx.commit()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let mem = self.mem()?;
        Ok(mem.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let mem = self.mem()?;
        let last = mem
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(mem.last_purged);
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.mem()?.vote = Some(*vote);
        self.write_meta("vote", encode(vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.mem()?.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        self.mem()?.committed = committed;
        // Not waited for: a lost committed index is found again from the leader.
        self.send(DiskOp::Meta("committed", encode(&committed), None))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.mem()?.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        {
            let mut mem = self.mem()?;
            for entry in entries {
                encoded.push((entry.log_id.index, encode(&entry)));
                mem.entries.insert(entry.log_id.index, entry);
            }
        }
        self.send(DiskOp::Append(encoded, callback))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        {
            let mut mem = self.mem()?;
            mem.entries.split_off(&log_id.index);
        }
        self.send(DiskOp::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        {
            let mut mem = self.mem()?;
            let keep = mem.entries.split_off(&(log_id.index + 1));
            mem.entries = keep;
            mem.last_purged = Some(log_id);
        }
        self.send(DiskOp::Purge(log_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_owner_only_and_an_empty_one_is_refused() {
        use kine::backend::files::mode_of;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.db");
        let log = LogStore::open(&path, true).unwrap();
        assert_eq!(log.identity(), None);
        drop(log);
        // The disk thread closes the database after the handle is gone;
        // its last checkpoint writes the file, then removes the -wal.
        let wal = dir.path().join("raft.db-wal");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while wal.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(mode_of(&path).unwrap(), 0o600);

        // A truncated log would make the member forget its vote.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let err = LogStore::open(&path, true).err().unwrap().to_string();
        assert!(
            err.contains("raft.db is empty (0 bytes)") && err.contains("join it again"),
            "{err}"
        );
    }
}
