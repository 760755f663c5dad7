//! The kubelet's atomic writer: a payload goes into a fresh timestamped
//! directory, then one `..data` link is swapped over to it, so a
//! container never sees half an update.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

/// Writes `payload` into `dir` with the kubelet's layout; returns whether anything was written.
///
/// `..data` is the only thing that ever changes for a reader: it flips from the old
/// timestamped directory to the new one in one rename.
pub(super) fn write_atomic(dir: &Path, payload: &Payload) -> Result<bool, String> {
    for path in payload.keys() {
        clean_payload_path(path)?;
    }
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io("cannot create", dir, e))?;
    let data_link = dir.join("..data");
    let old = fs::read_link(&data_link)
        .ok()
        .and_then(|t| t.to_str().map(str::to_string))
        .filter(|t| t.starts_with("..") && !t.contains('/') && t != "..data");
    let top: BTreeSet<&str> = payload.keys().filter_map(|p| p.split('/').next()).collect();
    if let Some(old) = &old
        && payload_unchanged(&dir.join(old), payload)
        && links_current(dir, &top)
    {
        return Ok(false);
    }

    let (name, ts_dir) = new_timestamp_dir(dir)?;
    let result = write_payload(&ts_dir, payload);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&ts_dir);
        return Err(e);
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&name, &tmp_link).map_err(|e| io("cannot link", &tmp_link, e))?;
    fs::rename(&tmp_link, &data_link).map_err(|e| io("cannot swap", &data_link, e))?;

    for name in &top {
        let link = dir.join(name);
        let target = format!("..data/{name}");
        match fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if fs::read_link(&link).ok().as_deref() != Some(Path::new(&target)) {
                    fs::remove_file(&link).map_err(|e| io("cannot replace", &link, e))?;
                    std::os::unix::fs::symlink(&target, &link)
                        .map_err(|e| io("cannot link", &link, e))?;
                }
            }
            Ok(_) => {
                return Err(format!(
                    "cannot link {}: something else is in the way",
                    link.display()
                ));
            }
            Err(_) => {
                std::os::unix::fs::symlink(&target, &link)
                    .map_err(|e| io("cannot link", &link, e))?;
            }
        }
    }
    remove_stale_links(dir, &top);
    if let Some(old) = old.filter(|o| *o != name) {
        let old_dir = dir.join(old);
        if let Err(e) = fs::remove_dir_all(&old_dir) {
            tracing::warn!(path = %old_dir.display(), error = %e, "cannot remove old volume data");
        }
    }
    Ok(true)
}

/// Creates `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN` (UTC) inside `dir`.
pub(super) fn new_timestamp_dir(dir: &Path) -> Result<(String, PathBuf), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?;
    let (secs, mut nanos) = (now.as_secs(), now.subsec_nanos());
    for _ in 0..1000 {
        let name = format!("..{}.{nanos:09}", utc_stamp(secs));
        let path = dir.join(&name);
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
                return Ok((name, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                nanos = (nanos + 1) % 1_000_000_000;
            }
            Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
        }
    }
    Err(format!(
        "cannot create a data directory in {}",
        dir.display()
    ))
}

/// `YYYY_MM_DD_HH_MM_SS` for seconds since the epoch, in UTC.
pub(super) fn utc_stamp(secs: u64) -> String {
    // RFC 3339's `YYYY-MM-DDTHH:MM:SSZ`, with the kubelet's separators.
    apiserver::objects::rfc3339(secs as i64)
        .trim_end_matches('Z')
        .replace(['-', 'T', ':'], "_")
}

pub(super) fn write_payload(root: &Path, payload: &Payload) -> Result<(), String> {
    for (rel, file) in payload {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&path)
            .map_err(|e| format!("cannot write {rel}: {e}"))?;
        f.write_all(&file.data)
            .map_err(|e| format!("cannot write {rel}: {e}"))?;
        // Explicitly, since the umask narrowed the mode given at creation.
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
            .map_err(|e| format!("cannot chmod {rel}: {e}"))?;
    }
    Ok(())
}

/// Whether `data_dir` holds exactly `payload` (same files, bytes and modes).
pub(super) fn payload_unchanged(data_dir: &Path, payload: &Payload) -> bool {
    let mut found = 0usize;
    if !count_files(data_dir, &mut found) || found != payload.len() {
        return false;
    }
    payload.iter().all(|(rel, file)| {
        let path = data_dir.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o777 == file.mode => {
                fs::read(&path).is_ok_and(|bytes| bytes == file.data)
            }
            _ => false,
        }
    })
}

/// Counts regular files below `dir`; false if anything else (or an error) is found.
pub(super) fn count_files(dir: &Path, found: &mut usize) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        let Ok(kind) = entry.file_type() else {
            return false;
        };
        if kind.is_dir() {
            if !count_files(&entry.path(), found) {
                return false;
            }
        } else if kind.is_file() {
            *found += 1;
        } else {
            return false;
        }
    }
    true
}

/// Whether the user-visible links are exactly the payload's top-level names.
pub(super) fn links_current(dir: &Path, top: &BTreeSet<&str>) -> bool {
    let all_present = top.iter().all(|name| {
        fs::read_link(dir.join(name)).is_ok_and(|t| t == Path::new(&format!("..data/{name}")))
    });
    all_present && stale_links(dir, top).is_empty()
}

/// User links (into `..data`) whose names are no longer in the payload.
pub(super) fn stale_links(dir: &Path, top: &BTreeSet<&str>) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                return false;
            };
            !name.starts_with("..")
                && !top.contains(name)
                && e.file_type().is_ok_and(|t| t.is_symlink())
                && fs::read_link(e.path()).is_ok_and(|t| t.starts_with("..data"))
        })
        .map(|e| e.path())
        .collect()
}

pub(super) fn remove_stale_links(dir: &Path, top: &BTreeSet<&str>) {
    for link in stale_links(dir, top) {
        if let Err(e) = fs::remove_file(&link) {
            tracing::warn!(path = %link.display(), error = %e, "cannot remove stale volume link");
        }
    }
}
