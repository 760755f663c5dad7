//! Owner-only files and directories: the database holds every Secret of a
//! cluster, so its directory is 0700 and its files 0600, as etcd keeps
//! `member/` and `db`.
//!
//! Modes are set explicitly rather than left to the umask; an existing
//! directory or file that others may read is tightened at start, with a
//! log line, as etcd does for its data directory.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The mode of k3rs's directories.
pub const DIR_MODE: u32 = 0o700;
/// The mode of k3rs's database, lock and key files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each 0700. Existing directories
/// keep their mode (see `private_dir`).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates `dir` 0700 or, when it exists with access for group or others,
/// sets it to 0700. For directories that belong to k3rs (the data
/// directory and its own subdirectories), not for one a user named.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    create_private_dir(dir)?;
    tighten(dir, DIR_MODE)
}

/// Sets an existing file to 0600 when group or others have access to it;
/// a missing file is left missing.
pub fn private_file(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(_) => tighten(path, FILE_MODE),
    }
}

fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let was = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if was & 0o077 == 0 {
        return Ok(());
    }
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        // Not ours to change (another owner, a filesystem without modes):
        // say so and go on, as the file was before.
        tracing::warn!(
            path = %path.display(),
            mode = %format!("{was:04o}"),
            error = %e,
            "other local users can read k3rs's data through this path, and its mode cannot be tightened"
        );
        return Ok(());
    }
    tracing::warn!(
        path = %path.display(),
        was = %format!("{was:04o}"),
        now = %format!("{mode:04o}"),
        "tightened the mode: other local users could read k3rs's data through it"
    );
    Ok(())
}

/// The mode bits of `path` (for tests and checks).
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_and_tightens_loose_modes() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        private_dir(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode_of(&dir.path().join(d)).unwrap(), 0o700, "{d}");
        }

        let loose = dir.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&loose).unwrap();
        assert_eq!(mode_of(&loose).unwrap(), 0o700);

        // A directory only the owner can use stays as it is.
        let tight = dir.path().join("tight");
        std::fs::create_dir(&tight).unwrap();
        std::fs::set_permissions(&tight, std::fs::Permissions::from_mode(0o500)).unwrap();
        private_dir(&tight).unwrap();
        assert_eq!(mode_of(&tight).unwrap(), 0o500);

        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode_of(&file).unwrap(), 0o600);
        private_file(&dir.path().join("missing")).unwrap();
        assert!(!dir.path().join("missing").exists());
    }
}
