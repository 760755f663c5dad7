//! The embedded SQLite backend: one file, WAL journal, fsync at commit.
//!
//! Schema (version 1):
//! - `kv_log(id INTEGER PRIMARY KEY, key, create_rev, version, lease, value)`:
//!   the revision log. `id` is `mod_revision << 24 | n`, where `n` counts the
//!   rows of one revision, so rows sit in revision order in the table's own
//!   B-tree and a row is found by revision without a second index.
//! - `meta(name, value)`: current and compact revision, cluster and member id.
//! - `leases(id, ttl)`.
//!
//! Keys and values are BLOBs, compared bytewise; nothing is ever matched
//! with LIKE.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{CommitBatch, Loaded, LogReader, LogRecord, LogWriter, StoreIdentity, StoredLease};
use crate::error::{Error, Result};

/// `PRAGMA application_id` of a k3rs database: "k3rs" in ASCII.
pub(crate) const APPLICATION_ID: i64 = 0x6b33_7273;
/// The schema this code writes; older ones are migrated forward on open.
pub(crate) const SCHEMA_VERSION: i64 = 1;
/// Bits of a row id that number the rows within one revision.
const ROW_BITS: u32 = 24;
/// Reader connections: enough for concurrent historic reads on two cores.
const READER_CONNECTIONS: usize = 4;

/// How much a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the WAL at every commit: an acknowledged write survives power loss.
    #[default]
    Fsync,
    /// Opt-in and named as such: no fsync at commit. Survives a process
    /// crash, not a power loss.
    NoSyncUnsafe,
    /// A replicated member's store: no fsync at commit, but fsynced at
    /// every checkpoint, so a power loss loses only the newest commits,
    /// never consistency; the fsynced raft log applies them again.
    ReplayedFromLog,
}

/// Where and how to open the database.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file.
    pub path: PathBuf,
    /// Commit durability.
    pub durability: Durability,
}

fn row_id(mod_revision: i64, n: usize) -> Result<i64> {
    if n >= 1 << ROW_BITS {
        return Err(Error::Unimplemented(format!(
            "k3rs: one revision may write at most {} keys",
            1u64 << ROW_BITS
        )));
    }
    Ok(mod_revision << ROW_BITS | n as i64)
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Why a database's files must not be opened as they are: SQLite would
/// take them for a new, empty database and the store would start at
/// revision 1 over whatever they held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// The database file has no bytes at all (truncated, or never written).
    Empty(PathBuf),
    /// The file does not start with the SQLite header.
    NoHeader(PathBuf),
    /// A write-ahead log with no database file beside it.
    WalWithoutDatabase {
        /// The database that is missing.
        db: PathBuf,
        /// Its write-ahead log.
        wal: PathBuf,
        /// The log's size.
        bytes: u64,
    },
}

impl Unusable {
    /// What was found, naming the file.
    pub fn found(&self) -> String {
        match self {
            Unusable::Empty(db) => format!("{} is empty (0 bytes)", db.display()),
            Unusable::NoHeader(db) => format!(
                "{} is not a SQLite database (it does not start with the SQLite header)",
                db.display()
            ),
            Unusable::WalWithoutDatabase { db, wal, bytes } => format!(
                "{} ({bytes} bytes of write-ahead log) has no database beside it ({} is missing)",
                wal.display(),
                db.display()
            ),
        }
    }
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (why, what) = match self {
            Unusable::Empty(_) => ("it was truncated or lost its content", "move it away"),
            Unusable::NoHeader(_) => ("it is damaged or another program's file", "move it away"),
            Unusable::WalWithoutDatabase { .. } => (
                "its database was deleted or moved",
                "put the database back, or move the log away",
            ),
        };
        write!(
            f,
            "{}: {why}, and opening it would start an empty store over what it held; to recover, {what} and restore a snapshot (`k3rs kine snapshot restore`); to start an empty store instead and lose what it held, pass --init-empty",
            self.found()
        )
    }
}

/// `PATH` with `suffix` appended to its file name (`state.db-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Checks the files of the database at `db` before anything opens them:
/// an empty or headerless database file, or a non-empty `-wal` without its
/// database, is refused. No database and no log is a new store.
pub fn check_files(db: &Path) -> std::result::Result<(), Unusable> {
    match std::fs::metadata(db) {
        Ok(meta) if meta.is_file() && meta.len() == 0 => Err(Unusable::Empty(db.to_owned())),
        Ok(meta) if meta.is_file() => {
            let mut header = [0u8; 16];
            let mut read = 0;
            if let Ok(mut file) = File::open(db) {
                while read < header.len() {
                    match file.read(&mut header[read..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            } else {
                // Unreadable: SQLite names the problem when it opens it.
                return Ok(());
            }
            if read == header.len() && &header == SQLITE_HEADER {
                Ok(())
            } else {
                Err(Unusable::NoHeader(db.to_owned()))
            }
        }
        Ok(_) => Ok(()),
        Err(_) => {
            let wal = with_suffix(db, "-wal");
            match std::fs::metadata(&wal) {
                Ok(meta) if meta.len() > 0 => Err(Unusable::WalWithoutDatabase {
                    db: db.to_owned(),
                    wal,
                    bytes: meta.len(),
                }),
                _ => Ok(()),
            }
        }
    }
}

/// `--init-empty`: moves the files `check_files` refuses out of the way,
/// so the store starts empty. Files holding bytes are renamed beside
/// themselves (`state.db.set-aside-SECONDS`), never deleted; an empty
/// database and the `-shm` index (rebuilt from the log) are removed.
/// Returns what was found, `None` when the files were usable.
pub fn set_aside(db: &Path) -> Result<Option<Unusable>> {
    let Err(found) = check_files(db) else {
        return Ok(None);
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error::Storage(format!("cannot {what} {}: {e}", path.display()))
    };
    let move_aside = |path: &Path| -> Result<()> {
        let to = with_suffix(path, &format!(".set-aside-{stamp}"));
        std::fs::rename(path, &to).map_err(|e| io("move", path, e))?;
        tracing::warn!(from = %path.display(), to = %to.display(), "--init-empty: set the file aside");
        Ok(())
    };
    let wal = with_suffix(db, "-wal");
    match &found {
        Unusable::Empty(_) => std::fs::remove_file(db).map_err(|e| io("remove", db, e))?,
        Unusable::NoHeader(_) => move_aside(db)?,
        Unusable::WalWithoutDatabase { .. } => {}
    }
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        move_aside(&wal)?;
    } else {
        let _ = std::fs::remove_file(&wal);
    }
    let _ = std::fs::remove_file(with_suffix(db, "-shm"));
    Ok(Some(found))
}

/// Refuses a file that is not a SQLite database, before SQLite gets a
/// chance to treat it as a new one.
fn check_file_is_sqlite(path: &Path) -> Result<()> {
    check_files(path).map_err(|e| Error::Storage(e.to_string()))
}

/// Creates an empty SQLite database at `path`, owner-only: SQLite would
/// create it with the umask's mode, and its `-wal` and `-shm` take the
/// database's mode. Its header is written under a temporary name and
/// renamed into place, so a crash never leaves the empty file
/// `check_files` refuses.
pub fn create_database(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".new-{:016x}.tmp", random_id()));
    let tmp = path.with_file_name(name);
    let storage = |e: &dyn std::fmt::Display| {
        Error::Storage(format!("cannot create {}: {e}", path.display()))
    };
    let created = (|| -> Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(super::files::FILE_MODE)
            .open(&tmp)
            .map_err(|e| storage(&e))?;
        let conn = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Any header write makes SQLite write page 1.
        conn.execute_batch("PRAGMA user_version = 0;")?;
        drop(conn);
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| storage(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| storage(&e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| storage(&e))?;
        }
        Ok(())
    })();
    if created.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    created
}

/// Sets the database and its `-wal` and `-shm` to 0600 where others could
/// read them (files of an older k3rs, or made under a loose umask).
pub fn tighten_files(path: &Path) -> Result<()> {
    for p in [
        path.to_owned(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
    ] {
        super::files::private_file(&p)
            .map_err(|e| Error::Storage(format!("cannot set the mode of {}: {e}", p.display())))?;
    }
    Ok(())
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Storage(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

/// Opens (creating if needed) the database, returning its writer and reader.
///
/// Refuses the files `check_files` refuses. A new database and its `-wal`
/// and `-shm` are 0600; existing ones are set to 0600.
pub fn open(config: &SqliteConfig) -> Result<(SqliteWriter, SqliteReader)> {
    check_file_is_sqlite(&config.path)?;
    if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        super::files::create_private_dir(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
    }
    if !config.path.exists() {
        create_database(&config.path)?;
    }
    tighten_files(&config.path)?;
    let conn = open_connection(
        &config.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let foreign = || {
        Error::Storage(format!(
            "{} is a SQLite database of another program; refusing to change it",
            config.path.display()
        ))
    };
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| {
            Error::Storage(format!(
                "{} is not a readable SQLite database: {e}",
                config.path.display()
            ))
        })?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables != 0) {
        return Err(foreign());
    }
    configure_writer(&conn, config.durability)?;
    let mut writer = SqliteWriter {
        conn,
        path: config.path.clone(),
        durability: config.durability,
    };
    writer.migrate()?;
    let reader = SqliteReader::open(&config.path)?;
    // SQLite gives a new -wal and -shm the database's mode; checked anyway.
    tighten_files(&config.path)?;
    Ok((writer, reader))
}

fn configure_writer(conn: &Connection, durability: Durability) -> Result<()> {
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::NoSyncUnsafe => "OFF",
        Durability::ReplayedFromLog => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA cache_size = -16384;
         PRAGMA temp_store = MEMORY;"
    ))?;
    Ok(())
}

/// The single write connection.
pub struct SqliteWriter {
    durability: Durability,
    conn: Connection,
    path: PathBuf,
}

impl SqliteWriter {
    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Storage(format!(
                "{} has schema version {version}, newer than this k3rs understands ({SCHEMA_VERSION}); upgrade k3rs",
                self.path.display()
            )));
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let identity = StoreIdentity {
            cluster_id: random_id(),
            member_id: random_id(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(&format!(
            "CREATE TABLE kv_log (
                 id INTEGER PRIMARY KEY,
                 key BLOB NOT NULL,
                 create_rev INTEGER NOT NULL,
                 version INTEGER NOT NULL,
                 lease INTEGER NOT NULL,
                 value BLOB NOT NULL);
             CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {SCHEMA_VERSION};"
        ))?;
        {
            let mut put = tx.prepare("INSERT INTO meta (name, value) VALUES (?1, ?2)")?;
            put.execute(params!["current_revision", 1i64])?;
            put.execute(params!["compact_revision", -1i64])?;
            // Ids are u64 on the wire; SQLite stores i64: keep the bits.
            put.execute(params!["cluster_id", identity.cluster_id as i64])?;
            put.execute(params!["member_id", identity.member_id as i64])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A replicated store's applied position (a blob in `meta`), if any.
    fn replication_mark(&self) -> Result<Option<Bytes>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'replication'",
                [],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .map(Bytes::from))
    }

    fn meta(&self, name: &str) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })?)
    }
}

/// A random non-zero 64-bit id, from the standard library's per-process
/// random hash keys and the clock (no extra dependency for eight bytes).
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish().max(1)
}

impl LogWriter for SqliteWriter {
    fn load(&mut self, f: &mut dyn FnMut(LogRecord)) -> Result<Loaded> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, key, create_rev, version, lease, value FROM kv_log ORDER BY id")?;
        let mut rows = stmt.query([])?;
        let mut max_revision = 1;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let record = LogRecord {
                mod_revision: id >> ROW_BITS,
                sub: (id & ((1 << ROW_BITS) - 1)) as u32,
                key: Bytes::from(row.get::<_, Vec<u8>>(1)?),
                create_revision: row.get(2)?,
                version: row.get(3)?,
                lease: row.get(4)?,
                value: Bytes::from(row.get::<_, Vec<u8>>(5)?),
            };
            max_revision = record.mod_revision;
            f(record);
        }
        drop(rows);
        drop(stmt);
        let leases = self
            .conn
            .prepare("SELECT id, ttl FROM leases ORDER BY id")?
            .query_map([], |r| {
                Ok(StoredLease {
                    id: r.get(0)?,
                    ttl: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Loaded {
            current_revision: self.meta("current_revision")?.max(max_revision),
            compact_revision: self.meta("compact_revision")?,
            identity: StoreIdentity {
                cluster_id: self.meta("cluster_id")? as u64,
                member_id: self.meta("member_id")? as u64,
            },
            leases,
            replication: self.replication_mark()?,
        })
    }

    fn commit(&mut self, batch: &CommitBatch) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO kv_log (id, key, create_rev, version, lease, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for r in &batch.records {
                insert.execute(params![
                    row_id(r.mod_revision, r.sub as usize)?,
                    r.key.as_ref(),
                    r.create_revision,
                    r.version,
                    r.lease,
                    r.value.as_ref()
                ])?;
            }
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'current_revision'")?
                .execute([batch.current_revision])?;
            if let Some(revision) = batch.compact_revision {
                tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'compact_revision'")?
                    .execute([revision])?;
            }
            if let Some(mark) = &batch.replication {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('replication', ?1)",
                )?
                .execute([mark.as_ref()])?;
            }
            if !batch.granted_leases.is_empty() {
                let mut grant =
                    tx.prepare_cached("INSERT OR REPLACE INTO leases (id, ttl) VALUES (?1, ?2)")?;
                for l in &batch.granted_leases {
                    grant.execute([l.id, l.ttl])?;
                }
            }
            if !batch.revoked_leases.is_empty() {
                let mut revoke = tx.prepare_cached("DELETE FROM leases WHERE id = ?1")?;
                for id in &batch.revoked_leases {
                    revoke.execute([id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn replace_database(&mut self, from: &Path) -> Result<()> {
        check_file_is_sqlite(from)?;
        // Closed first, so no connection holds the old file or its WAL.
        drop(std::mem::replace(
            &mut self.conn,
            Connection::open_in_memory()?,
        ));
        for stale in [
            with_suffix(&self.path, "-wal"),
            with_suffix(&self.path, "-shm"),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        std::fs::rename(from, &self.path).map_err(|e| {
            Error::Storage(format!(
                "cannot move {} to {}: {e}",
                from.display(),
                self.path.display()
            ))
        })?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::Storage(format!("cannot sync {}: {e}", dir.display())))?;
        }
        // The received file has whatever mode it was written with.
        tighten_files(&self.path)?;
        self.conn = open_connection(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure_writer(&self.conn, self.durability)?;
        self.migrate()
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))?;
        Ok(())
    }

    fn set_compact_revision(&mut self, revision: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'compact_revision'",
            [revision],
        )?;
        Ok(())
    }

    fn delete_revisions(&mut self, rows: &[(i64, Bytes)]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM kv_log WHERE id >= ?1 AND id < ?2 AND key = ?3")?;
            for (revision, key) in rows {
                delete.execute(params![
                    revision << ROW_BITS,
                    (revision + 1) << ROW_BITS,
                    key.as_ref()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn value_at(&mut self, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>> {
        value_at(&self.conn, key, mod_revision)
    }

    fn defragment(&mut self) -> Result<()> {
        self.conn.execute_batch(
            "PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
        )?;
        Ok(())
    }
}

fn value_at(conn: &Connection, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>> {
    let mut stmt = conn.prepare_cached(
        "SELECT value FROM kv_log WHERE id >= ?1 AND id < ?2 AND key = ?3 LIMIT 1",
    )?;
    let value: Option<Vec<u8>> = stmt
        .query_row(
            params![
                mod_revision << ROW_BITS,
                (mod_revision + 1) << ROW_BITS,
                key
            ],
            |r| r.get(0),
        )
        .optional()?;
    Ok(value.map(Bytes::from))
}

/// Read-only connections for historic values and sizes.
pub struct SqliteReader {
    pool: Vec<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteReader {
    fn open(path: &Path) -> Result<Self> {
        let pool = (0..READER_CONNECTIONS)
            .map(|_| {
                open_connection(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map(Mutex::new)
            })
            .collect::<Result<_>>()?;
        Ok(SqliteReader {
            pool,
            path: path.to_owned(),
        })
    }

    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        // Take a free connection if there is one; otherwise wait on one
        // chosen by thread, so waiting threads spread over the pool.
        for slot in &self.pool {
            if let Ok(conn) = slot.try_lock() {
                return f(&conn);
            }
        }
        let slot = &self.pool[thread_slot() % self.pool.len()];
        let conn = slot.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }
}

fn thread_slot() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
}

impl LogReader for SqliteReader {
    fn value_at(&self, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>> {
        self.with_conn(|conn| value_at(conn, key, mod_revision))
    }

    fn size(&self) -> Result<(i64, i64)> {
        self.with_conn(|conn| {
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            Ok((pages * page_size, (pages - free) * page_size))
        })
    }

    fn snapshot(&self) -> Result<File> {
        self.with_conn(|conn| super::snapshot::copy_database(conn, &self.path))
    }

    fn close_connections(&self) -> Result<()> {
        for slot in &self.pool {
            let mut conn = slot.lock().unwrap_or_else(|p| p.into_inner());
            *conn = Connection::open_in_memory()?;
        }
        Ok(())
    }

    fn reopen_connections(&self) -> Result<()> {
        for slot in &self.pool {
            let fresh = open_connection(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &tempfile::TempDir) -> SqliteConfig {
        SqliteConfig {
            path: dir.path().join("state.db"),
            durability: Durability::Fsync,
        }
    }

    fn record(rev: i64, key: &'static [u8], value: &'static [u8]) -> LogRecord {
        LogRecord {
            mod_revision: rev,
            sub: 0,
            key: Bytes::from_static(key),
            create_revision: rev,
            version: 1,
            lease: 0,
            value: Bytes::from_static(value),
        }
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r) = open(&config(&dir)).unwrap();
        let batch = CommitBatch {
            records: vec![
                record(2, b"a\0\xff", b"1"),
                record(3, b"b", b"2"),
                LogRecord {
                    sub: 1,
                    ..record(3, b"c", b"3")
                },
            ],
            current_revision: 3,
            ..Default::default()
        };
        w.commit(&batch).unwrap();
        assert_eq!(r.value_at(b"c", 3).unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(r.value_at(b"c", 2).unwrap(), None);
        drop((w, r));
        let (mut w, _r) = open(&config(&dir)).unwrap();
        let mut seen = Vec::new();
        let loaded = w.load(&mut |rec| seen.push(rec)).unwrap();
        assert_eq!(seen, batch.records);
        assert_eq!(loaded.current_revision, 3);
        assert_eq!(loaded.compact_revision, -1);
    }

    #[test]
    fn files_are_owner_only() {
        use super::super::files::mode_of;
        let dir = tempfile::tempdir().unwrap();
        let c = config(&dir);
        let wal = with_suffix(&c.path, "-wal");
        let shm = with_suffix(&c.path, "-shm");
        let (mut w, r) = open(&c).unwrap();
        w.commit(&CommitBatch {
            records: vec![record(2, b"a", b"1")],
            current_revision: 2,
            ..Default::default()
        })
        .unwrap();
        for p in [&c.path, &wal, &shm] {
            assert_eq!(mode_of(p).unwrap(), 0o600, "{}", p.display());
        }
        drop((w, r));

        // An older k3rs's files are tightened; SQLite keeps a file's mode.
        use std::os::unix::fs::PermissionsExt;
        let (w, r) = open(&c).unwrap();
        for p in [&c.path, &wal, &shm] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        drop((w, r));
        let (_w, _r) = open(&c).unwrap();
        for p in [&c.path, &wal, &shm] {
            assert_eq!(mode_of(p).unwrap(), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn refuses_files_that_would_open_empty() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&dir);
        let wal = with_suffix(&c.path, "-wal");
        // A new directory is a new store.
        assert_eq!(check_files(&c.path), Ok(()));

        std::fs::write(&c.path, b"").unwrap();
        let err = open(&c).err().unwrap().to_string();
        assert!(err.contains("state.db is empty (0 bytes)"), "{err}");
        assert!(err.contains("k3rs kine snapshot restore"), "{err}");
        assert!(err.contains("--init-empty"), "{err}");
        assert_eq!(std::fs::metadata(&c.path).unwrap().len(), 0, "left alone");
        assert_eq!(
            set_aside(&c.path).unwrap(),
            Some(Unusable::Empty(c.path.clone()))
        );
        assert!(!c.path.exists());
        assert_eq!(set_aside(&c.path).unwrap(), None);

        std::fs::write(&c.path, [0u8; 4096]).unwrap();
        assert_eq!(
            check_files(&c.path),
            Err(Unusable::NoHeader(c.path.clone()))
        );
        std::fs::write(&c.path, b"SQLite").unwrap();
        assert_eq!(
            check_files(&c.path),
            Err(Unusable::NoHeader(c.path.clone()))
        );

        std::fs::remove_file(&c.path).unwrap();
        std::fs::write(&wal, b"").unwrap();
        assert_eq!(check_files(&c.path), Ok(()), "an empty log holds nothing");
        std::fs::write(&wal, [7u8; 100]).unwrap();
        let found = check_files(&c.path).unwrap_err();
        assert_eq!(
            found,
            Unusable::WalWithoutDatabase {
                db: c.path.clone(),
                wal: wal.clone(),
                bytes: 100
            }
        );
        assert!(
            found.to_string().contains("state.db-wal (100 bytes"),
            "{found}"
        );
        assert!(open(&c).is_err());
        // Set aside, not deleted: the bytes are kept beside.
        assert!(set_aside(&c.path).unwrap().is_some());
        assert!(!wal.exists());
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("state.db-wal.set-aside-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let (_w, _r) = open(&c).unwrap();
    }

    #[test]
    fn refuses_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, b"not a database at all, really").unwrap();
        let err = open(&SqliteConfig {
            path: path.clone(),
            durability: Durability::Fsync,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"not a database at all, really"
        );

        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = open(&SqliteConfig {
            path: other,
            durability: Durability::Fsync,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("another program"), "{err}");
    }
}
