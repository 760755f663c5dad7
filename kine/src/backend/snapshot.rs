//! Snapshots of the SQLite backend, in etcd's framing.
//!
//! A snapshot is a consistent copy of the database file (SQLite's
//! `VACUUM INTO`, which reads one transaction's view while writers go on),
//! streamed as etcd streams its own: the file's bytes, then their SHA-256.
//! `etcdctl snapshot save` stores that stream as it comes; restore checks
//! the hash, checks that the file is a k3rs database, gives the restored
//! store a new identity (as `etcdctl snapshot restore` makes a new
//! cluster) and moves it into place atomically.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::sqlite::{APPLICATION_ID, SCHEMA_VERSION};
use crate::error::{Error, Result};

/// Bytes of the SHA-256 that ends a snapshot stream.
pub const HASH_LEN: usize = 32;

/// Whether a snapshot file of `len` bytes ends with a hash. Database
/// files are whole pages (multiples of 512 bytes), so a hash leaves a
/// remainder of exactly 32; etcd uses the same rule.
pub fn has_hash_trailer(len: u64) -> bool {
    len % 512 == HASH_LEN as u64
}

/// A running SHA-256.
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest.
    pub fn finish(self) -> [u8; HASH_LEN] {
        let mut out = [0; HASH_LEN];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// Writes a consistent copy of the database at `db` into a new file
/// beside it and returns it open, already unlinked: it goes away when
/// the caller closes it, whatever happens.
pub fn copy_database(conn: &Connection, db: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temp_path_beside(db, "snapshot");
    let _ = std::fs::remove_file(&tmp);
    // VACUUM INTO fills an empty file: made first, owner-only, as SQLite
    // would make a new one with the umask's mode.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(super::files::FILE_MODE)
        .open(&tmp);
    let copied = conn
        .execute("VACUUM INTO ?1", [tmp.to_string_lossy().as_ref()])
        .map_err(|e| Error::Storage(format!("cannot copy the database for a snapshot: {e}")));
    let opened = copied.and_then(|_| {
        File::open(&tmp).map_err(|e| Error::Storage(format!("cannot read the snapshot: {e}")))
    });
    let _ = std::fs::remove_file(&tmp);
    opened
}

fn temp_path_beside(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{what}-{:016x}.tmp", super::random_id()));
    path.with_file_name(name)
}

/// What a restore produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The revision the restored store starts at.
    pub revision: i64,
    /// Its compact revision.
    pub compact_revision: i64,
    /// Its new cluster id.
    pub cluster_id: u64,
}

/// Restores `snapshot` as a new database at `target`, which must not
/// exist. Without `skip_hash_check`, the snapshot must end with the
/// SHA-256 of its content (as `etcdctl snapshot save` writes it).
pub fn restore(snapshot: &Path, target: &Path, skip_hash_check: bool) -> Result<Restored> {
    let fail =
        |what: String| Error::Storage(format!("cannot restore {}: {what}", snapshot.display()));
    if target.exists() {
        return Err(Error::Storage(format!(
            "{} already exists; restore into a new data directory, or move the old database away",
            target.display()
        )));
    }
    let mut wal = target.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    if wal.exists() {
        // SQLite would apply an old log's pages to the restored file.
        return Err(Error::Storage(format!(
            "{} is left from an older database; move it away before restoring",
            wal.display()
        )));
    }
    let mut file = File::open(snapshot).map_err(|e| fail(e.to_string()))?;
    let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let content_len = if has_hash_trailer(len) {
        len - HASH_LEN as u64
    } else if skip_hash_check {
        len
    } else {
        return Err(fail(
            "it has no SHA-256 trailer (not written by a snapshot save); pass --skip-hash-check to restore a plain database copy".into(),
        ));
    };
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        super::files::create_private_dir(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    let tmp = temp_path_beside(target, "restore");
    let result = copy_checked(&mut file, content_len, len > content_len, &tmp)
        .and_then(|()| adopt(&tmp))
        .map_err(fail);
    let restored = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, target).map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(restored)
}

/// Copies the first `content_len` bytes to `to`, checking the trailing
/// hash when there is one, and fsyncs the copy.
fn copy_checked(
    from: &mut File,
    content_len: u64,
    hashed: bool,
    to: &Path,
) -> std::result::Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Owner-only from the start: it becomes the store's database.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::files::FILE_MODE)
        .open(to)
        .map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let mut sha = Sha256::default();
    let mut left = content_len;
    let mut buf = vec![0; 256 * 1024];
    while left > 0 {
        let want = buf.len().min(left as usize);
        from.read_exact(&mut buf[..want])
            .map_err(|e| format!("reading: {e}"))?;
        sha.update(&buf[..want]);
        out.write_all(&buf[..want])
            .map_err(|e| format!("writing {}: {e}", to.display()))?;
        left -= want as u64;
    }
    if hashed {
        let mut expected = [0; HASH_LEN];
        from.seek(SeekFrom::Start(content_len))
            .and_then(|_| from.read_exact(&mut expected))
            .map_err(|e| format!("reading the hash: {e}"))?;
        if sha.finish() != expected {
            return Err(
                "the SHA-256 does not match its content: the file is damaged or incomplete".into(),
            );
        }
    }
    out.sync_all().map_err(|e| format!("fsync: {e}"))
}

/// Checks that `db` is a sound k3rs database and gives it a new identity.
fn adopt(db: &Path) -> std::result::Result<Restored, String> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("not a SQLite database: {e}"))?;
    let sql = |e: rusqlite::Error| format!("not a readable k3rs database: {e}");
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(sql)?;
    if app_id != APPLICATION_ID {
        return Err("not a k3rs database (an etcd bbolt snapshot cannot be restored into k3rs; copy the keys with etcdctl or the k3rs-bench tools instead)".into());
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "it has schema version {version}, newer than this k3rs understands ({SCHEMA_VERSION}); upgrade k3rs"
        ));
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sql)?;
    if check != "ok" {
        return Err(format!("the database is damaged: {check}"));
    }
    let cluster_id = super::random_id();
    let meta = |name: &str| -> std::result::Result<i64, String> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .map_err(sql)
    };
    let restored = Restored {
        revision: meta("current_revision")?,
        compact_revision: meta("compact_revision")?,
        cluster_id,
    };
    conn.execute_batch(&format!(
        "UPDATE meta SET value = {} WHERE name = 'cluster_id';
         UPDATE meta SET value = {} WHERE name = 'member_id';",
        cluster_id as i64,
        super::random_id() as i64
    ))
    .map_err(sql)?;
    conn.close().map_err(|(_, e)| sql(e))?;
    File::open(db)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("fsync: {e}"))?;
    Ok(restored)
}
