//! Volumes on the node's disk: emptyDir (a directory, or a tmpfs for
//! `medium: Memory`), hostPath with its type checks, and the `subPath`
//! of a mount, resolved without leaving its volume.

use std::fs;

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::*;

// emptyDir

pub(super) fn setup_empty_dir(path: &Path, spec: &Value) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o777)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    match str_field(spec, "medium") {
        "" | "Memory" => {}
        other => return Err(format!("unsupported emptyDir medium \"{other}\"")),
    }
    if str_field(spec, "medium") == "Memory" && !is_mount_point(path) {
        let size = match spec.get("sizeLimit") {
            None | Some(Value::Null) => None,
            Some(limit) => Some(quantity_of(limit)?.value()?),
        };
        mount_tmpfs(path, size.filter(|s| *s > 0))?;
    }
    // Set after creation (and mounting) so the umask does not narrow it.
    fs::set_permissions(path, fs::Permissions::from_mode(0o777))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

pub(super) fn mount_tmpfs(path: &Path, size: Option<i128>) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut options = "mode=0777".to_string();
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("invalid path {}", path.display()))?;
    let data = CString::new(options).map_err(|_| "invalid tmpfs options".to_string())?;
    let fstype = c"tmpfs";
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "mount of tmpfs at {} failed: {err}",
            path.display()
        ));
    }
    Ok(())
}

pub(super) fn unmount(path: &Path) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("invalid path {}", path.display()))?;
    // SAFETY: target is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// Mount points of this mount namespace, from /proc/self/mountinfo (duplicates kept, one per mount).
pub(super) fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` (octal).
pub(super) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let n = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(n as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn is_mount_point(path: &Path) -> bool {
    let Ok(real) = fs::canonicalize(path) else {
        return false;
    };
    mount_points().contains(&real)
}

// hostPath

pub(super) fn setup_host_path(spec: &Value) -> Result<PathBuf, String> {
    let raw = str_field(spec, "path");
    if raw.is_empty() {
        return Err("hostPath has no path".to_string());
    }
    let path = PathBuf::from(raw);
    if !path.is_absolute() {
        return Err(format!("hostPath path \"{raw}\" is not absolute"));
    }
    let kind = str_field(spec, "type");
    let not = |what: &str| format!("hostPath type check failed: {raw} is not {what}");
    let meta = fs::metadata(&path).ok();
    match kind {
        "" => {}
        "DirectoryOrCreate" | "Directory" => {
            if meta.is_none() && kind == "DirectoryOrCreate" {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&path)
                    .map_err(|e| format!("cannot create directory {raw}: {e}"))?;
            } else if !meta.is_some_and(|m| m.is_dir()) {
                return Err(not("a directory"));
            }
        }
        "FileOrCreate" | "File" => {
            if meta.is_none() && kind == "FileOrCreate" {
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(&path)
                    .map_err(|e| format!("cannot create file {raw}: {e}"))?;
            } else if meta.is_none_or(|m| m.is_dir()) {
                return Err(not("a file"));
            }
        }
        "Socket" => {
            if !meta.is_some_and(|m| m.file_type().is_socket()) {
                return Err(not("a socket file"));
            }
        }
        "CharDevice" => {
            if !meta.is_some_and(|m| m.file_type().is_char_device()) {
                return Err(not("a character device"));
            }
        }
        "BlockDevice" => {
            if !meta.is_some_and(|m| m.file_type().is_block_device()) {
                return Err(not("a block device"));
            }
        }
        other => return Err(format!("{other} is an invalid volume type")),
    }
    Ok(path)
}

// subPath

/// Resolves `sub` inside the volume without letting it escape through `..` or symlinks.
pub(super) fn resolve_sub_path(
    volume: &Prepared,
    name: &str,
    sub: &str,
) -> Result<PathBuf, String> {
    let rel = Path::new(sub);
    if rel.is_absolute() {
        return Err(format!("subPath \"{sub}\" must be a relative path"));
    }
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            _ => return Err(format!("subPath \"{sub}\" must not contain '..'")),
        }
    }
    let base = fs::canonicalize(&volume.path)
        .map_err(|e| format!("cannot resolve volume \"{name}\": {e}"))?;
    let escapes = || format!("subPath \"{sub}\" resolves outside volume \"{name}\"");
    let mut current = base.clone();
    for part in parts {
        let next = current.join(part);
        match fs::symlink_metadata(&next) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if volume.kind == Kind::Generated {
                    return Err(format!(
                        "subPath \"{sub}\" does not exist in volume \"{name}\""
                    ));
                }
                match fs::DirBuilder::new().mode(0o755).create(&next) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(format!("cannot create subPath \"{sub}\": {e}"));
                    }
                }
            }
            Err(e) => return Err(format!("cannot inspect subPath \"{sub}\": {e}")),
        }
        // Resolve each step, so a symlink can never lead the next mkdir outside.
        let real = fs::canonicalize(&next)
            .map_err(|e| format!("cannot resolve subPath \"{sub}\": {e}"))?;
        if !real.starts_with(&base) {
            return Err(escapes());
        }
        current = real;
    }
    Ok(current)
}
