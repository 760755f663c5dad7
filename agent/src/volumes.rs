//! Pod volumes: preparing them on the node before the containers start.
//!
//! Each volume of a pod gets a directory below `POD_DIR/volumes/<plugin>/<name>`,
//! laid out the way the kubelet lays it out, so tools that look there find
//! what they expect. emptyDir and hostPath are plain directories (or a tmpfs
//! mount); configMap, secret, downwardAPI and projected volumes are written
//! with the kubelet's atomic writer, so a running container never sees half
//! of an update: the payload goes into a fresh timestamped directory and a
//! single `..data` symlink is swapped over to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use serde_json::Value;

use crate::runtime::{BoxFuture, Mount};

/// Where the agent reads objects that volumes refer to.
pub trait Objects: Send + Sync {
    /// A namespaced core/v1 object; kind "configmaps" or "secrets". Ok(None) when it does not exist.
    fn get<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, String>>;
}

const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
const HOST_PATH: &str = "kubernetes.io~host-path";
const CONFIG_MAP: &str = "kubernetes.io~configmap";
const SECRET: &str = "kubernetes.io~secret";
const DOWNWARD_API: &str = "kubernetes.io~downward-api";
const PROJECTED: &str = "kubernetes.io~projected";

/// The kubelet's default file mode for configMap, secret, downwardAPI and projected files.
const DEFAULT_MODE: u32 = 0o644;

/// What kind of source a prepared volume has; decides writability and subPath rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    EmptyDir,
    HostPath,
    /// configMap, secret, downwardAPI, projected: generated content, always read-only.
    Generated,
}

#[derive(Debug, Clone)]
struct Prepared {
    kind: Kind,
    path: PathBuf,
}

/// The volumes of one pod, prepared on the node.
#[derive(Debug, Clone)]
pub struct PodVolumes {
    volumes: HashMap<String, Prepared>,
}

/// One file of a generated volume: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileContent {
    data: Vec<u8>,
    mode: u32,
}

/// Relative path inside the volume → content.
type Payload = BTreeMap<String, FileContent>;

/// Set once the "not projected yet" notice for service-account tokens was logged.
static TOKEN_NOTICE: AtomicBool = AtomicBool::new(false);

impl PodVolumes {
    /// Prepares every volume of `pod` (core/v1 Pod JSON) below `dir/volumes/<plugin>/<name>` (plugin dirs named as the kubelet names them: kubernetes.io~empty-dir, kubernetes.io~configmap, kubernetes.io~secret, kubernetes.io~downward-api, kubernetes.io~projected). Err(message) is the kubelet's FailedMount text, e.g. `MountVolume.SetUp failed for volume "cfg" : configmap "missing" not found`.
    pub async fn setup(
        pod: &Value,
        dir: &Path,
        objects: &dyn Objects,
    ) -> Result<PodVolumes, String> {
        let base = dir.join("volumes");
        let mut volumes = HashMap::new();
        for volume in pod_volumes(pod)? {
            let name = volume_name(volume)?;
            if volumes.contains_key(name) {
                return Err(format!("duplicate volume name \"{name}\""));
            }
            let source = volume_source(volume, name)?;
            let fail = |e: String| format!("MountVolume.SetUp failed for volume \"{name}\" : {e}");
            let prepared = match source {
                "emptyDir" => {
                    let path = base.join(EMPTY_DIR).join(name);
                    setup_empty_dir(&path, volume.get("emptyDir").unwrap_or(&Value::Null))
                        .map_err(fail)?;
                    Prepared {
                        kind: Kind::EmptyDir,
                        path,
                    }
                }
                "hostPath" => {
                    let path = setup_host_path(volume.get("hostPath").unwrap_or(&Value::Null))
                        .map_err(fail)?;
                    Prepared {
                        kind: Kind::HostPath,
                        path,
                    }
                }
                _ => {
                    let path = base.join(plugin_dir(source)).join(name);
                    let payload = volume_payload(pod, volume, source, objects)
                        .await
                        .map_err(fail)?;
                    write_atomic(&path, &payload).map_err(fail)?;
                    Prepared {
                        kind: Kind::Generated,
                        path,
                    }
                }
            };
            volumes.insert(name.to_string(), prepared);
        }
        Ok(PodVolumes { volumes })
    }

    /// The bind mounts of `container` (from its volumeMounts): readOnly honoured; configMap/secret/downwardAPI/projected always read-only; subPath = a relative path inside the volume (refuse absolute, `..` components, or a path that resolves outside the volume through symlinks; create it as a directory if missing for emptyDir/hostPath); subPathExpr → Err("subPathExpr is not supported"). A mount naming no volume → Err.
    pub fn mounts(&self, container: &Value) -> Result<Vec<Mount>, String> {
        let list = match container.get("volumeMounts") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(list)) => list,
            Some(_) => return Err("volumeMounts must be a list".to_string()),
        };
        let mut mounts = Vec::with_capacity(list.len());
        for m in list {
            let name = str_field(m, "name");
            let mount_path = str_field(m, "mountPath");
            if mount_path.is_empty() {
                return Err(format!("volume mount of \"{name}\" has no mountPath"));
            }
            let volume = self.volumes.get(name).ok_or_else(|| {
                format!("volume mount \"{mount_path}\" refers to unknown volume \"{name}\"")
            })?;
            if !str_field(m, "subPathExpr").is_empty() {
                return Err("subPathExpr is not supported".to_string());
            }
            let read_only = m.get("readOnly").and_then(Value::as_bool).unwrap_or(false);
            let sub_path = str_field(m, "subPath");
            let host_path = if sub_path.is_empty() {
                volume.path.clone()
            } else {
                resolve_sub_path(volume, name, sub_path)?
            };
            mounts.push(Mount {
                host_path,
                container_path: mount_path.to_string(),
                readonly: read_only || volume.kind == Kind::Generated,
            });
        }
        Ok(mounts)
    }

    /// Rewrites configMap/secret/downwardAPI/projected contents that changed (called periodically); errors logged with tracing::warn, old content kept.
    pub async fn refresh(&self, pod: &Value, objects: &dyn Objects) {
        let Ok(list) = pod_volumes(pod) else {
            return;
        };
        for volume in list {
            let Ok(name) = volume_name(volume) else {
                continue;
            };
            let Some(prepared) = self.volumes.get(name) else {
                continue;
            };
            if prepared.kind != Kind::Generated {
                continue;
            }
            let Ok(source) = volume_source(volume, name) else {
                continue;
            };
            let result = match volume_payload(pod, volume, source, objects).await {
                Ok(payload) => write_atomic(&prepared.path, &payload),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(volume = name, error = %e, "could not refresh volume; keeping its old content");
            }
        }
    }

    /// Unmounts tmpfs mounts below dir/volumes (umount2 MNT_DETACH) and removes dir/volumes; never follows symlinks out of it; never touches hostPath targets.
    pub fn teardown(dir: &Path) {
        let base = dir.join("volumes");
        let meta = match fs::symlink_metadata(&base) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %base.display(), error = %e, "cannot inspect pod volumes");
                return;
            }
        };
        if !meta.is_dir() {
            // A symlink or a stray file: remove the entry itself, never what it points to.
            if let Err(e) = fs::remove_file(&base) {
                tracing::warn!(path = %base.display(), error = %e, "cannot remove pod volumes");
            }
            return;
        }
        let real = match fs::canonicalize(&base) {
            Ok(real) => real,
            Err(e) => {
                tracing::warn!(path = %base.display(), error = %e, "cannot resolve pod volumes");
                return;
            }
        };
        // Every mount below the directory is ours (tmpfs emptyDirs), so all are
        // detached: anything left mounted would be emptied by the removal below.
        let mut points: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|p| p.starts_with(&real))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        let mut failed = false;
        for point in &points {
            if let Err(e) = unmount(point) {
                tracing::warn!(path = %point.display(), error = %e, "cannot unmount volume");
                failed = true;
            }
        }
        if failed {
            tracing::warn!(path = %base.display(), "pod volumes left in place because a mount remains");
            return;
        }
        // remove_dir_all does not follow symlinks; it removes the links themselves.
        if let Err(e) = fs::remove_dir_all(&base) {
            tracing::warn!(path = %base.display(), error = %e, "cannot remove pod volumes");
        }
    }
}

fn plugin_dir(source: &str) -> &'static str {
    match source {
        "emptyDir" => EMPTY_DIR,
        "hostPath" => HOST_PATH,
        "configMap" => CONFIG_MAP,
        "secret" => SECRET,
        "downwardAPI" => DOWNWARD_API,
        _ => PROJECTED,
    }
}

fn pod_volumes(pod: &Value) -> Result<&[Value], String> {
    match pod.get("spec").and_then(|s| s.get("volumes")) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(list)) => Ok(list),
        Some(_) => Err("spec.volumes must be a list".to_string()),
    }
}

/// A volume name becomes a directory name, so it must be one plain path component.
fn volume_name(volume: &Value) -> Result<&str, String> {
    let name = str_field(volume, "name");
    if name.is_empty() {
        return Err("a volume has no name".to_string());
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("invalid volume name \"{name}\""));
    }
    Ok(name)
}

/// The field naming the volume's source; a volume without one is an emptyDir (the API default).
fn volume_source<'v>(volume: &'v Value, name: &str) -> Result<&'v str, String> {
    const KNOWN: [&str; 6] = [
        "emptyDir",
        "hostPath",
        "configMap",
        "secret",
        "downwardAPI",
        "projected",
    ];
    let Some(fields) = volume.as_object() else {
        return Err(format!("volume \"{name}\" is not an object"));
    };
    let mut other = None;
    for (key, value) in fields {
        if key == "name" || value.is_null() {
            continue;
        }
        if let Some(known) = KNOWN.iter().find(|k| **k == key.as_str()) {
            return Ok(known);
        }
        other.get_or_insert(key.as_str());
    }
    match other {
        Some(field) => Err(format!(
            "volume \"{name}\": unsupported volume type {field}"
        )),
        None => Ok("emptyDir"),
    }
}

fn str_field<'v>(value: &'v Value, key: &str) -> &'v str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn bool_field(value: &Value, key: &str) -> bool {
    value.get(key).and_then(Value::as_bool).unwrap_or(false)
}

// ---------------------------------------------------------------------------
// emptyDir

fn setup_empty_dir(path: &Path, spec: &Value) -> Result<(), String> {
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

fn mount_tmpfs(path: &Path, size: Option<i128>) -> Result<(), String> {
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

fn unmount(path: &Path) -> Result<(), String> {
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
fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` (octal).
fn unescape_mountinfo(field: &str) -> String {
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

fn is_mount_point(path: &Path) -> bool {
    let Ok(real) = fs::canonicalize(path) else {
        return false;
    };
    mount_points().contains(&real)
}

// ---------------------------------------------------------------------------
// hostPath

fn setup_host_path(spec: &Value) -> Result<PathBuf, String> {
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

// ---------------------------------------------------------------------------
// subPath

/// Resolves `sub` inside the volume without letting it escape through `..` or symlinks.
fn resolve_sub_path(volume: &Prepared, name: &str, sub: &str) -> Result<PathBuf, String> {
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

// ---------------------------------------------------------------------------
// configMap, secret, downwardAPI, projected payloads

async fn volume_payload(
    pod: &Value,
    volume: &Value,
    source: &str,
    objects: &dyn Objects,
) -> Result<Payload, String> {
    let spec = volume.get(source).unwrap_or(&Value::Null);
    let namespace = pod_namespace(pod);
    match source {
        "configMap" => {
            let mode = mode_field(spec, "defaultMode")?.unwrap_or(DEFAULT_MODE);
            let mut payload = Payload::new();
            config_map_payload(objects, namespace, spec, mode, &mut payload).await?;
            Ok(payload)
        }
        "secret" => {
            let mode = mode_field(spec, "defaultMode")?.unwrap_or(DEFAULT_MODE);
            let mut payload = Payload::new();
            secret_payload(objects, namespace, spec, "secretName", mode, &mut payload).await?;
            Ok(payload)
        }
        "downwardAPI" => {
            let mode = mode_field(spec, "defaultMode")?.unwrap_or(DEFAULT_MODE);
            let mut payload = Payload::new();
            downward_payload(pod, spec, mode, &mut payload)?;
            Ok(payload)
        }
        "projected" => projected_payload(pod, spec, objects).await,
        other => Err(format!("unsupported volume type {other}")),
    }
}

fn pod_namespace(pod: &Value) -> &str {
    match pod
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) if !ns.is_empty() => ns,
        _ => "default",
    }
}

/// A file mode field: an integer 0..=0777 (JSON carries it in decimal).
fn mode_field(value: &Value, key: &str) -> Result<Option<u32>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(m) if m <= 0o777 => Ok(Some(m as u32)),
            _ => Err(format!(
                "invalid {key} {v}: must be between 0 and 0777 (511)"
            )),
        },
    }
}

async fn config_map_payload(
    objects: &dyn Objects,
    namespace: &str,
    spec: &Value,
    default_mode: u32,
    payload: &mut Payload,
) -> Result<(), String> {
    let name = str_field(spec, "name");
    let optional = bool_field(spec, "optional");
    if name.is_empty() {
        return Err("configMap volume has no name".to_string());
    }
    let object = objects
        .get("configmaps", namespace, name)
        .await
        .map_err(|e| format!("couldn't get configmap {namespace}/{name}: {e}"))?;
    let Some(object) = object else {
        if optional {
            return Ok(());
        }
        return Err(format!("configmap \"{name}\" not found"));
    };
    let mut data = BTreeMap::new();
    if let Some(map) = object.get("data").and_then(Value::as_object) {
        for (key, value) in map {
            let text = value
                .as_str()
                .ok_or_else(|| format!("configmap \"{name}\" key {key} is not a string"))?;
            data.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    if let Some(map) = object.get("binaryData").and_then(Value::as_object) {
        for (key, value) in map {
            data.insert(key.clone(), decode_base64(value, "configmap", name, key)?);
        }
    }
    keyed_payload(
        &data,
        spec,
        default_mode,
        optional,
        "configmap references non-existent config key",
        payload,
    )
}

async fn secret_payload(
    objects: &dyn Objects,
    namespace: &str,
    spec: &Value,
    name_field: &str,
    default_mode: u32,
    payload: &mut Payload,
) -> Result<(), String> {
    let name = str_field(spec, name_field);
    let optional = bool_field(spec, "optional");
    if name.is_empty() {
        return Err("secret volume has no secretName".to_string());
    }
    let object = objects
        .get("secrets", namespace, name)
        .await
        .map_err(|e| format!("couldn't get secret {namespace}/{name}: {e}"))?;
    let Some(object) = object else {
        if optional {
            return Ok(());
        }
        return Err(format!("secret \"{name}\" not found"));
    };
    let mut data = BTreeMap::new();
    // stringData is write-only on a real API server; honour it if it was stored as sent.
    if let Some(map) = object.get("stringData").and_then(Value::as_object) {
        for (key, value) in map {
            let text = value
                .as_str()
                .ok_or_else(|| format!("secret \"{name}\" key {key} is not a string"))?;
            data.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    if let Some(map) = object.get("data").and_then(Value::as_object) {
        for (key, value) in map {
            data.insert(key.clone(), decode_base64(value, "secret", name, key)?);
        }
    }
    keyed_payload(
        &data,
        spec,
        default_mode,
        optional,
        "secret references non-existent secret key",
        payload,
    )
}

fn decode_base64(value: &Value, kind: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("{kind} \"{name}\" key {key} is not a string"))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{kind} \"{name}\" key {key} is not valid base64: {e}"))
}

/// configMap and secret share the kubelet's rules: all keys, or just `items`, with modes.
fn keyed_payload(
    data: &BTreeMap<String, Vec<u8>>,
    spec: &Value,
    default_mode: u32,
    optional: bool,
    missing_key: &str,
    payload: &mut Payload,
) -> Result<(), String> {
    let items = match spec.get("items") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(Value::Array(items)) => Some(items),
        Some(_) => return Err("items must be a list".to_string()),
    };
    let Some(items) = items else {
        for (key, bytes) in data {
            let path = clean_payload_path(key)?;
            payload.insert(
                path,
                FileContent {
                    data: bytes.clone(),
                    mode: default_mode,
                },
            );
        }
        return Ok(());
    };
    for item in items {
        let key = str_field(item, "key");
        let Some(bytes) = data.get(key) else {
            if optional {
                continue;
            }
            return Err(format!("{missing_key}: {key}"));
        };
        let path = clean_payload_path(str_field(item, "path"))?;
        let mode = mode_field(item, "mode")?.unwrap_or(default_mode);
        payload.insert(
            path,
            FileContent {
                data: bytes.clone(),
                mode,
            },
        );
    }
    Ok(())
}

fn downward_payload(
    pod: &Value,
    spec: &Value,
    default_mode: u32,
    payload: &mut Payload,
) -> Result<(), String> {
    let items = match spec.get("items") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("downwardAPI items must be a list".to_string()),
    };
    for item in items {
        let path = clean_payload_path(str_field(item, "path"))?;
        let mode = mode_field(item, "mode")?.unwrap_or(default_mode);
        let field = item.get("fieldRef").filter(|v| !v.is_null());
        let resource = item.get("resourceFieldRef").filter(|v| !v.is_null());
        let text = match (field, resource) {
            (Some(f), None) => field_value(pod, str_field(f, "fieldPath"))?,
            (None, Some(r)) => {
                let container = str_field(r, "containerName");
                if container.is_empty() {
                    return Err(format!(
                        "downwardAPI item \"{path}\": resourceFieldRef needs containerName"
                    ));
                }
                resource_value(pod, container, str_field(r, "resource"), r.get("divisor"))?
            }
            _ => {
                return Err(format!(
                    "downwardAPI item \"{path}\" needs exactly one of fieldRef and resourceFieldRef"
                ));
            }
        };
        payload.insert(
            path,
            FileContent {
                data: text.into_bytes(),
                mode,
            },
        );
    }
    Ok(())
}

async fn projected_payload(
    pod: &Value,
    spec: &Value,
    objects: &dyn Objects,
) -> Result<Payload, String> {
    let default_mode = mode_field(spec, "defaultMode")?.unwrap_or(DEFAULT_MODE);
    let namespace = pod_namespace(pod);
    let sources = match spec.get("sources") {
        None | Some(Value::Null) => return Ok(Payload::new()),
        Some(Value::Array(sources)) => sources,
        Some(_) => return Err("projected sources must be a list".to_string()),
    };
    let mut payload = Payload::new();
    for source in sources {
        let Some(fields) = source.as_object() else {
            return Err("a projected source is not an object".to_string());
        };
        for (key, value) in fields {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "configMap" => {
                    config_map_payload(objects, namespace, value, default_mode, &mut payload)
                        .await?
                }
                "secret" => {
                    secret_payload(
                        objects,
                        namespace,
                        value,
                        "name",
                        default_mode,
                        &mut payload,
                    )
                    .await?
                }
                "downwardAPI" => downward_payload(pod, value, default_mode, &mut payload)?,
                "serviceAccountToken" => {
                    if !TOKEN_NOTICE.swap(true, Ordering::Relaxed) {
                        tracing::info!("service-account tokens are not projected yet");
                    }
                }
                "clusterTrustBundle" => {
                    return Err("clusterTrustBundle projections are not supported".to_string());
                }
                other => return Err(format!("unsupported projected source {other}")),
            }
        }
    }
    Ok(payload)
}

/// A payload path: relative, no `..` component, not starting with `..` (reserved for the writer).
fn clean_payload_path(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("a volume file has an empty path".to_string());
    }
    if raw.starts_with('/') {
        return Err(format!("invalid path \"{raw}\": must be relative"));
    }
    if raw.contains('\0') {
        return Err(format!("invalid path \"{raw}\""));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("invalid path \"{raw}\": must not contain '..'")),
            p => parts.push(p),
        }
    }
    match parts.first() {
        None => Err(format!("invalid path \"{raw}\"")),
        Some(first) if first.starts_with("..") => {
            Err(format!("invalid path \"{raw}\": must not start with '..'"))
        }
        Some(_) => Ok(parts.join("/")),
    }
}

// ---------------------------------------------------------------------------
// downward API values

/// The value of a pod field for the downward API (files and env vars).
pub fn field_value(pod: &Value, path: &str) -> Result<String, String> {
    let meta = pod.get("metadata").unwrap_or(&Value::Null);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(text(meta.get("labels").and_then(|l| l.get(key))));
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(text(meta.get("annotations").and_then(|l| l.get(key))));
    }
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let status = pod.get("status").unwrap_or(&Value::Null);
    match path {
        "metadata.name" => Ok(text(meta.get("name"))),
        "metadata.namespace" => Ok(pod_namespace(pod).to_string()),
        "metadata.uid" => Ok(text(meta.get("uid"))),
        "metadata.labels" => format_map(meta.get("labels")),
        "metadata.annotations" => format_map(meta.get("annotations")),
        "spec.nodeName" => Ok(text(spec.get("nodeName"))),
        "spec.serviceAccountName" => Ok(text(spec.get("serviceAccountName"))),
        "status.hostIP" => Ok(text(status.get("hostIP"))),
        "status.podIP" => Ok(text(status.get("podIP"))),
        "status.hostIPs" => Ok(ip_list(status.get("hostIPs"))),
        "status.podIPs" => Ok(ip_list(status.get("podIPs"))),
        "" => Err("fieldRef has no fieldPath".to_string()),
        other => Err(format!("unsupported fieldPath: {other}")),
    }
}

/// `prefix['key']` → `key`.
fn subscript<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

fn ip_list(list: Option<&Value>) -> String {
    list.and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("ip").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Labels/annotations as the kubelet writes them: sorted `key="value"` lines, no trailing newline.
fn format_map(map: Option<&Value>) -> Result<String, String> {
    let Some(map) = map.and_then(Value::as_object) else {
        return Ok(String::new());
    };
    let mut sorted: Vec<(&String, &Value)> = map.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut lines = Vec::with_capacity(sorted.len());
    for (key, value) in sorted {
        let value = value
            .as_str()
            .ok_or_else(|| format!("value of {key} is not a string"))?;
        lines.push(format!("{key}={}", go_quote(value)));
    }
    Ok(lines.join("\n"))
}

/// Go's `%q` for a string: double-quoted, with Go escapes for what is not printable.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if !go_printable(c) => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Close to Go's unicode.IsPrint: controls, non-ASCII spaces and format characters are not.
fn go_printable(c: char) -> bool {
    let n = c as u32;
    !(c.is_control()
        || matches!(n, 0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f)
        || matches!(n, 0x205f..=0x206f | 0x3000 | 0xfeff | 0xfff9..=0xfffb)
        || matches!(n, 0xe000..=0xf8ff | 0xf0000..=0x10ffff))
}

/// The value of a container resource for the downward API (files and env vars), in units of `divisor`.
pub fn resource_value(
    pod: &Value,
    container_name: &str,
    resource: &str,
    divisor: Option<&Value>,
) -> Result<String, String> {
    let container = find_container(pod, container_name)
        .ok_or_else(|| format!("container \"{container_name}\" not found in pod"))?;
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource: {resource}"))?;
    if !matches!(section, "limits" | "requests")
        || !matches!(name, "cpu" | "memory" | "ephemeral-storage")
    {
        return Err(format!("unsupported container resource: {resource}"));
    }
    let resources = container.get("resources").unwrap_or(&Value::Null);
    let lookup = |section: &str| -> Result<Option<Quantity>, String> {
        match resources.get(section).and_then(|s| s.get(name)) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => quantity_of(v).map(Some),
        }
    };
    let quantity = if section == "limits" {
        match lookup("limits")? {
            Some(q) => q,
            None => node_capacity(name)?,
        }
    } else {
        // Requests default to limits; without either they are zero.
        match lookup("requests")? {
            Some(q) => q,
            None => lookup("limits")?.unwrap_or(Quantity { num: 0, den: 1 }),
        }
    };
    let divisor = match divisor {
        None | Some(Value::Null) => Quantity { num: 1, den: 1 },
        Some(d) => quantity_of(d)?,
    };
    let value = if name == "cpu" {
        let d = divisor.milli()?;
        if d <= 0 {
            return Err(format!("invalid divisor for {resource}"));
        }
        ceil_div(quantity.milli()?, d)
    } else {
        let d = divisor.value()?;
        if d <= 0 {
            return Err(format!("invalid divisor for {resource}"));
        }
        ceil_div(quantity.value()?, d)
    };
    Ok(value.to_string())
}

fn find_container<'p>(pod: &'p Value, name: &str) -> Option<&'p Value> {
    let spec = pod.get("spec")?;
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .find(|c| str_field(c, "name") == name)
}

/// What an unlimited container may use: the node's capacity.
fn node_capacity(resource: &str) -> Result<Quantity, String> {
    match resource {
        "cpu" => {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            Ok(Quantity {
                num: cpus as i128,
                den: 1,
            })
        }
        "memory" => {
            let text = fs::read_to_string("/proc/meminfo")
                .map_err(|e| format!("cannot read node memory: {e}"))?;
            let kib = text
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<i128>().ok())
                .ok_or_else(|| "cannot read node memory: no MemTotal".to_string())?;
            Ok(Quantity {
                num: kib * 1024,
                den: 1,
            })
        }
        _ => {
            // ephemeral-storage: the size of the root filesystem.
            // SAFETY: statvfs is plain old data, for which all-zero bytes are valid.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: the path is a valid C string and `st` a valid out-pointer.
            let rc = unsafe { libc::statvfs(c"/".as_ptr(), &mut st) };
            if rc != 0 {
                return Err(format!(
                    "cannot read node storage: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(Quantity {
                num: st.f_blocks as i128 * st.f_frsize as i128,
                den: 1,
            })
        }
    }
}

// ---------------------------------------------------------------------------
// quantities

/// A resource quantity kept as an exact fraction, so rounding matches the API's (always up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantity {
    num: i128,
    den: i128,
}

impl Quantity {
    fn value(&self) -> Result<i128, String> {
        Ok(ceil_div(self.num, self.den))
    }

    fn milli(&self) -> Result<i128, String> {
        let num = self
            .num
            .checked_mul(1000)
            .ok_or_else(|| "quantity too large".to_string())?;
        Ok(ceil_div(num, self.den))
    }
}

fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

fn quantity_of(value: &Value) -> Result<Quantity, String> {
    match value {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        other => Err(format!("invalid quantity {other}")),
    }
}

/// Parses a Kubernetes quantity: `64Mi`, `1Gi`, `500M`, `250m`, `1e3`, `1.5`, `42`.
fn parse_quantity(raw: &str) -> Result<Quantity, String> {
    let bad = || format!("invalid quantity \"{raw}\"");
    let s = raw.trim();
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
        return Err(bad());
    }
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(bad());
    }
    let mut num: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad())?
    };
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut pow2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => pow2 = 10,
        "Mi" => pow2 = 20,
        "Gi" => pow2 = 30,
        "Ti" => pow2 = 40,
        "Pi" => pow2 = 50,
        "Ei" => pow2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| bad())?;
            if !(-40..=40).contains(&e) {
                return Err(bad());
            }
            exp10 += e;
        }
        _ => return Err(bad()),
    }
    let mut den: i128 = 1;
    let too_big = || format!("quantity \"{raw}\" is too large");
    num = num.checked_mul(1i128 << pow2).ok_or_else(too_big)?;
    if num == 0 {
        return Ok(Quantity { num: 0, den: 1 });
    }
    let scale = 10i128
        .checked_pow(exp10.unsigned_abs())
        .ok_or_else(too_big)?;
    if exp10 >= 0 {
        num = num.checked_mul(scale).ok_or_else(too_big)?;
    } else {
        den = scale;
    }
    let g = gcd(num, den);
    num /= g;
    den /= g;
    if negative {
        num = -num;
    }
    Ok(Quantity { num, den })
}

// ---------------------------------------------------------------------------
// atomic writer

/// Writes `payload` into `dir` with the kubelet's layout; returns whether anything was written.
///
/// `..data` is the only thing that ever changes for a reader: it flips from the old
/// timestamped directory to the new one in one rename.
fn write_atomic(dir: &Path, payload: &Payload) -> Result<bool, String> {
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
fn new_timestamp_dir(dir: &Path) -> Result<(String, PathBuf), String> {
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
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn write_payload(root: &Path, payload: &Payload) -> Result<(), String> {
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
fn payload_unchanged(data_dir: &Path, payload: &Payload) -> bool {
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
fn count_files(dir: &Path, found: &mut usize) -> bool {
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
fn links_current(dir: &Path, top: &BTreeSet<&str>) -> bool {
    let all_present = top.iter().all(|name| {
        fs::read_link(dir.join(name)).is_ok_and(|t| t == Path::new(&format!("..data/{name}")))
    });
    all_present && stale_links(dir, top).is_empty()
}

/// User links (into `..data`) whose names are no longer in the payload.
fn stale_links(dir: &Path, top: &BTreeSet<&str>) -> Vec<PathBuf> {
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

fn remove_stale_links(dir: &Path, top: &BTreeSet<&str>) {
    for link in stale_links(dir, top) {
        if let Err(e) = fs::remove_file(&link) {
            tracing::warn!(path = %link.display(), error = %e, "cannot remove stale volume link");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake(Mutex<HashMap<(String, String), Value>>);

    impl Fake {
        fn put(&self, kind: &str, name: &str, value: Value) {
            self.0
                .lock()
                .unwrap()
                .insert((kind.to_string(), name.to_string()), value);
        }
        fn remove(&self, kind: &str, name: &str) {
            self.0
                .lock()
                .unwrap()
                .remove(&(kind.to_string(), name.to_string()));
        }
    }

    impl Objects for Fake {
        fn get<'a>(
            &'a self,
            kind: &'a str,
            namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Value>, String>> {
            assert_eq!(namespace, "ns");
            let found = self
                .0
                .lock()
                .unwrap()
                .get(&(kind.to_string(), name.to_string()))
                .cloned();
            Box::pin(async move { Ok(found) })
        }
    }

    fn pod(volumes: Value) -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u-1",
                "labels": {"b": "two \"q\"", "a": "one\n"},
                "annotations": {"x": "y"}},
            "spec": {"nodeName": "node1", "serviceAccountName": "sa",
                "volumes": volumes,
                "containers": [{"name": "c", "resources": {
                    "limits": {"cpu": "500m", "memory": "64Mi"},
                    "requests": {"cpu": "250m"}}}]},
            "status": {"hostIP": "10.0.0.1", "podIP": "10.42.0.5"}
        })
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn empty_dir_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let p = pod(json!([{"name": "scratch", "emptyDir": {}}, {"name": "bare"}]));
        let fake = Fake::default();
        let fut = PodVolumes::setup(&p, tmp.path(), &fake);
        send(&fut);
        let vols = fut.await.unwrap();
        let dir = tmp.path().join("volumes/kubernetes.io~empty-dir/scratch");
        assert_eq!(mode_of(&dir), 0o777);
        assert!(
            tmp.path()
                .join("volumes/kubernetes.io~empty-dir/bare")
                .is_dir()
        );
        fs::write(dir.join("keep"), "x").unwrap();
        PodVolumes::setup(&p, tmp.path(), &fake).await.unwrap();
        assert_eq!(fs::read_to_string(dir.join("keep")).unwrap(), "x");
        let c = json!({"volumeMounts": [{"name": "scratch", "mountPath": "/s"},
            {"name": "scratch", "mountPath": "/r", "readOnly": true}]});
        let mounts = vols.mounts(&c).unwrap();
        assert_eq!(
            mounts[0],
            Mount {
                host_path: dir.clone(),
                container_path: "/s".into(),
                readonly: false
            }
        );
        assert!(mounts[1].readonly);
        let bad = json!({"volumeMounts": [{"name": "nope", "mountPath": "/n"}]});
        assert!(vols.mounts(&bad).unwrap_err().contains("unknown volume"));
        PodVolumes::teardown(tmp.path());
        assert!(!tmp.path().join("volumes").exists());
    }

    #[tokio::test]
    async fn memory_empty_dir_mounts_tmpfs() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let p = pod(json!([{"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]));
        let fake = Fake::default();
        let setup = PodVolumes::setup(&p, tmp.path(), &fake).await;
        let dir = tmp.path().join("volumes/kubernetes.io~empty-dir/mem");
        let mounted = is_mount_point(&dir);
        let count = || {
            let real = fs::canonicalize(&dir).unwrap();
            mount_points().iter().filter(|m| **m == real).count()
        };
        let first = count();
        let again = PodVolumes::setup(&p, tmp.path(), &fake).await;
        let second = count();
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        PodVolumes::teardown(tmp.path());
        let after = is_mount_point(&dir);
        let _ = unmount(&dir);
        setup.unwrap();
        again.unwrap();
        assert!(mounted);
        assert_eq!((first, second), (1, 1));
        let real = fs::canonicalize(tmp.path()).unwrap();
        let line = info
            .lines()
            .find(|l| l.contains(real.to_str().unwrap()))
            .unwrap();
        assert!(
            line.contains("tmpfs") && line.contains("size=1024k"),
            "{line}"
        );
        assert!(!after);
        assert!(!tmp.path().join("volumes").exists());
    }

    #[tokio::test]
    async fn host_path_types() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let fake = Fake::default();
        fs::write(root.join("file"), "f").unwrap();
        let setup = |path: PathBuf, kind: &str| {
            let p = pod(json!([{"name": "h", "hostPath": {"path": path, "type": kind}}]));
            let fake = &fake;
            async move { PodVolumes::setup(&p, &root.join("pod"), fake).await }
        };
        let made = root.join("a/b");
        let vols = setup(made.clone(), "DirectoryOrCreate").await.unwrap();
        assert!(made.is_dir());
        assert_eq!(mode_of(&made), 0o755);
        setup(made.clone(), "Directory").await.unwrap();
        let err = setup(root.join("file"), "Directory").await.unwrap_err();
        assert_eq!(
            err,
            format!(
                "MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: {} is not a directory",
                root.join("file").display()
            )
        );
        setup(root.join("new"), "FileOrCreate").await.unwrap();
        assert!(root.join("new").is_file());
        assert_eq!(mode_of(&root.join("new")), 0o644);
        assert!(setup(root.join("no/such"), "FileOrCreate").await.is_err());
        setup(root.join("file"), "File").await.unwrap();
        assert!(
            setup(made.clone(), "File")
                .await
                .unwrap_err()
                .contains("is not a file")
        );
        setup(PathBuf::from("/dev/null"), "CharDevice")
            .await
            .unwrap();
        assert!(
            setup(root.join("file"), "Socket")
                .await
                .unwrap_err()
                .contains("socket")
        );
        assert!(setup(root.join("file"), "BlockDevice").await.is_err());
        setup(root.join("missing"), "").await.unwrap();
        assert!(setup(root.join("file"), "Bogus").await.is_err());
        let mounts = vols
            .mounts(&json!({"volumeMounts": [{"name": "h", "mountPath": "/h", "subPath": "x/y"}]}))
            .unwrap();
        assert_eq!(
            mounts[0].host_path,
            fs::canonicalize(&made).unwrap().join("x/y")
        );
        assert!(made.join("x/y").is_dir());
        // Teardown never touches the host path.
        PodVolumes::teardown(&root.join("pod"));
        assert!(made.join("x/y").is_dir());
        assert!(root.join("file").is_file());
    }

    #[tokio::test]
    async fn config_map_items_modes_and_optional() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        fake.put(
            "configmaps",
            "cfg",
            json!({"data": {"a.conf": "A", "b": "B"}, "binaryData": {"bin": "AAEC"}}),
        );
        let p = pod(json!([
            {"name": "all", "configMap": {"name": "cfg", "defaultMode": 0o600}},
            {"name": "some", "configMap": {"name": "cfg",
                "items": [{"key": "b", "path": "sub/dir/b.txt", "mode": 0o400}]}},
            {"name": "opt", "configMap": {"name": "gone", "optional": true}},
        ]));
        let vols = PodVolumes::setup(&p, tmp.path(), &fake).await.unwrap();
        let base = tmp.path().join("volumes/kubernetes.io~configmap");
        assert_eq!(fs::read_to_string(base.join("all/a.conf")).unwrap(), "A");
        assert_eq!(fs::read(base.join("all/bin")).unwrap(), vec![0, 1, 2]);
        assert_eq!(mode_of(&base.join("all/b")), 0o600);
        assert_eq!(
            fs::read_to_string(base.join("some/sub/dir/b.txt")).unwrap(),
            "B"
        );
        assert_eq!(mode_of(&base.join("some/sub/dir/b.txt")), 0o400);
        assert!(!base.join("some/a.conf").exists());
        assert_eq!(
            fs::read_link(base.join("some/sub")).unwrap(),
            Path::new("..data/sub")
        );
        assert!(base.join("opt/..data").is_dir());
        let m = vols
            .mounts(&json!({"volumeMounts": [{"name": "all", "mountPath": "/c"}]}))
            .unwrap();
        assert!(m[0].readonly);

        let missing = pod(json!([{"name": "cfg", "configMap": {"name": "missing"}}]));
        assert_eq!(
            PodVolumes::setup(&missing, tmp.path(), &fake)
                .await
                .unwrap_err(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"missing\" not found"
        );
        let bad_key = pod(json!([{"name": "k", "configMap": {"name": "cfg",
            "items": [{"key": "nope", "path": "n"}]}}]));
        assert!(
            PodVolumes::setup(&bad_key, tmp.path(), &fake)
                .await
                .unwrap_err()
                .ends_with("configmap references non-existent config key: nope")
        );
        let opt_key = pod(
            json!([{"name": "k", "configMap": {"name": "cfg", "optional": true,
            "items": [{"key": "nope", "path": "n"}, {"key": "b", "path": "b"}]}}]),
        );
        PodVolumes::setup(&opt_key, tmp.path(), &fake)
            .await
            .unwrap();
        let escape = pod(json!([{"name": "e", "configMap": {"name": "cfg",
            "items": [{"key": "b", "path": "../b"}]}}]));
        assert!(PodVolumes::setup(&escape, tmp.path(), &fake).await.is_err());
    }

    #[tokio::test]
    async fn secret_is_base64_decoded() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        fake.put(
            "secrets",
            "s",
            json!({"data": {"password": "aHVudGVyMg=="}}),
        );
        let p = pod(json!([{"name": "s", "secret": {"secretName": "s"}}]));
        PodVolumes::setup(&p, tmp.path(), &fake).await.unwrap();
        let file = tmp.path().join("volumes/kubernetes.io~secret/s/password");
        assert_eq!(fs::read_to_string(&file).unwrap(), "hunter2");
        assert_eq!(mode_of(&file), 0o644);
        let missing = pod(json!([{"name": "s", "secret": {"secretName": "x"}}]));
        assert!(
            PodVolumes::setup(&missing, tmp.path(), &fake)
                .await
                .unwrap_err()
                .ends_with("secret \"x\" not found")
        );
        let key = pod(json!([{"name": "s", "secret": {"secretName": "s",
            "items": [{"key": "k", "path": "k"}]}}]));
        assert!(
            PodVolumes::setup(&key, tmp.path(), &fake)
                .await
                .unwrap_err()
                .ends_with("secret references non-existent secret key: k")
        );
    }

    #[tokio::test]
    async fn atomic_writer_swaps_data() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        fake.put("configmaps", "cfg", json!({"data": {"a": "1", "b": "2"}}));
        let p = pod(json!([{"name": "cfg", "configMap": {"name": "cfg"}}]));
        let vols = PodVolumes::setup(&p, tmp.path(), &fake).await.unwrap();
        let dir = tmp.path().join("volumes/kubernetes.io~configmap/cfg");
        let first = fs::read_link(dir.join("..data")).unwrap();
        let first_name = first.to_str().unwrap().to_string();
        assert!(first_name.starts_with(".."));
        let (stamp, nanos) = first_name[2..].split_once('.').unwrap();
        assert_eq!(stamp.len(), 19);
        assert_eq!(stamp.split('_').count(), 6);
        assert_eq!(nanos.len(), 9);
        assert_eq!(mode_of(&dir.join(&first)), 0o755);
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));

        // Unchanged: nothing rewritten.
        vols.refresh(&p, &fake).await;
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), first);

        fake.put("configmaps", "cfg", json!({"data": {"a": "3"}}));
        vols.refresh(&p, &fake).await;
        let second = fs::read_link(dir.join("..data")).unwrap();
        assert_ne!(second, first);
        assert!(!dir.join(&first).exists());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(fs::symlink_metadata(dir.join("b")).is_err());
        assert!(!dir.join("..data_tmp").exists());

        // An error keeps the old content.
        fake.remove("configmaps", "cfg");
        vols.refresh(&p, &fake).await;
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), second);
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "3");

        // Mode changes alone are a change.
        let mut payload = Payload::new();
        payload.insert(
            "a".into(),
            FileContent {
                data: b"3".to_vec(),
                mode: 0o600,
            },
        );
        assert!(write_atomic(&dir, &payload).unwrap());
        assert!(!write_atomic(&dir, &payload).unwrap());
        assert_eq!(mode_of(&dir.join("a")), 0o600);
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(utc_stamp(0), "1970_01_01_00_00_00");
        assert_eq!(utc_stamp(951_782_400 + 3661), "2000_02_29_01_01_01");
        assert_eq!(utc_stamp(1_704_067_199), "2023_12_31_23_59_59");
    }

    #[tokio::test]
    async fn downward_api_files() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let p = pod(json!([{"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "one", "fieldRef": {"fieldPath": "metadata.labels['b']"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu",
                "divisor": "1m"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c",
                "resource": "limits.memory", "divisor": "1Mi"}},
        ]}}]));
        PodVolumes::setup(&p, tmp.path(), &fake).await.unwrap();
        let dir = tmp.path().join("volumes/kubernetes.io~downward-api/info");
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("labels"), "a=\"one\\n\"\nb=\"two \\\"q\\\"\"");
        assert_eq!(read("name"), "web");
        assert_eq!(read("one"), "two \"q\"");
        assert_eq!(read("cpu"), "500");
        assert_eq!(read("mem"), "64");
    }

    #[test]
    fn field_and_resource_values() {
        let p = pod(json!([]));
        assert_eq!(field_value(&p, "metadata.namespace").unwrap(), "ns");
        assert_eq!(field_value(&p, "metadata.uid").unwrap(), "u-1");
        assert_eq!(field_value(&p, "metadata.annotations").unwrap(), "x=\"y\"");
        assert_eq!(field_value(&p, "metadata.annotations['x']").unwrap(), "y");
        assert_eq!(field_value(&p, "spec.nodeName").unwrap(), "node1");
        assert_eq!(field_value(&p, "spec.serviceAccountName").unwrap(), "sa");
        assert_eq!(field_value(&p, "status.hostIP").unwrap(), "10.0.0.1");
        assert_eq!(field_value(&p, "status.podIP").unwrap(), "10.42.0.5");
        assert!(field_value(&p, "spec.bogus").is_err());
        assert_eq!(resource_value(&p, "c", "limits.cpu", None).unwrap(), "1");
        assert_eq!(
            resource_value(&p, "c", "requests.cpu", Some(&json!("1m"))).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&p, "c", "limits.memory", None).unwrap(),
            "67108864"
        );
        assert_eq!(
            resource_value(&p, "c", "requests.memory", Some(&json!("1Mi"))).unwrap(),
            "64"
        );
        let unlimited = json!({"spec": {"containers": [{"name": "u"}]}});
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            resource_value(&unlimited, "u", "limits.cpu", None).unwrap(),
            cpus.to_string()
        );
        let mem: i128 = resource_value(&unlimited, "u", "limits.memory", None)
            .unwrap()
            .parse()
            .unwrap();
        assert!(mem > 0);
        assert_eq!(
            resource_value(&unlimited, "u", "requests.cpu", None).unwrap(),
            "0"
        );
        assert!(resource_value(&p, "nope", "limits.cpu", None).is_err());
        assert!(resource_value(&p, "c", "limits.gpu", None).is_err());
        assert!(resource_value(&p, "c", "limits.cpu", Some(&json!("0"))).is_err());
        assert!(go_quote("\u{1}é\u{a0}").contains("\\x01é\\u00a0"));
    }

    #[test]
    fn quantities() {
        let v = |s: &str| parse_quantity(s).unwrap().value().unwrap();
        assert_eq!(v("64Mi"), 64 << 20);
        assert_eq!(v("1Gi"), 1 << 30);
        assert_eq!(v("500M"), 500_000_000);
        assert_eq!(v("1e3"), 1000);
        assert_eq!(v("1E3"), 1000);
        assert_eq!(v("2E"), 2_000_000_000_000_000_000);
        assert_eq!(v("123"), 123);
        assert_eq!(v("1.5k"), 1500);
        assert_eq!(v("0.1"), 1);
        assert_eq!(parse_quantity("100m").unwrap().milli().unwrap(), 100);
        assert_eq!(parse_quantity("0.1").unwrap().milli().unwrap(), 100);
        for bad in ["", "abc", "1.2.3", "5Xi", "1e", "1e999", "."] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn projected_sources() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        fake.put(
            "configmaps",
            "kube-root-ca.crt",
            json!({"data": {"ca.crt": "CA"}}),
        );
        fake.put("secrets", "s", json!({"data": {"k": "dg=="}}));
        let p = pod(
            json!([{"name": "kube-api-access", "projected": {"defaultMode": 0o640,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt",
                    "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"secret": {"name": "s"}},
                {"secret": {"name": "absent", "optional": true}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]}}]),
        );
        let vols = PodVolumes::setup(&p, tmp.path(), &fake).await.unwrap();
        let dir = tmp
            .path()
            .join("volumes/kubernetes.io~projected/kube-api-access");
        assert_eq!(fs::read_to_string(dir.join("ca.crt")).unwrap(), "CA");
        assert_eq!(fs::read_to_string(dir.join("k")).unwrap(), "v");
        assert_eq!(fs::read_to_string(dir.join("namespace")).unwrap(), "ns");
        assert_eq!(mode_of(&dir.join("ca.crt")), 0o640);
        assert!(!dir.join("token").exists());
        let m = vols
            .mounts(&json!({"volumeMounts": [{"name": "kube-api-access",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": false}]}))
            .unwrap();
        assert!(m[0].readonly);
        let ctb = pod(json!([{"name": "t", "projected": {"sources": [
            {"clusterTrustBundle": {"name": "x", "path": "b"}}]}}]));
        assert!(
            PodVolumes::setup(&ctb, tmp.path(), &fake)
                .await
                .unwrap_err()
                .ends_with("clusterTrustBundle projections are not supported")
        );
    }

    #[tokio::test]
    async fn unsupported_types() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let p = pod(json!([{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]));
        assert_eq!(
            PodVolumes::setup(&p, tmp.path(), &fake).await.unwrap_err(),
            "volume \"data\": unsupported volume type persistentVolumeClaim"
        );
    }

    #[tokio::test]
    async fn sub_paths_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        fake.put("configmaps", "cfg", json!({"data": {"a": "1"}}));
        let p = pod(json!([{"name": "e", "emptyDir": {}},
            {"name": "c", "configMap": {"name": "cfg"}}]));
        let vols = PodVolumes::setup(&p, tmp.path(), &fake).await.unwrap();
        let mount = |name: &str, sub: &str| {
            vols.mounts(&json!({"volumeMounts": [{"name": name, "mountPath": "/m",
                "subPath": sub}]}))
        };
        assert!(mount("e", "../x").unwrap_err().contains(".."));
        assert!(mount("e", "a/../../x").is_err());
        assert!(mount("e", "/etc").is_err());
        let dir = tmp.path().join("volumes/kubernetes.io~empty-dir/e");
        std::os::unix::fs::symlink(tmp.path(), dir.join("out")).unwrap();
        assert!(mount("e", "out").unwrap_err().contains("outside"));
        assert!(mount("e", "out/new").unwrap_err().contains("outside"));
        assert!(!tmp.path().join("new").exists());
        let m = mount("e", "data/logs").unwrap();
        assert!(dir.join("data/logs").is_dir());
        assert!(!m[0].readonly);
        let c = mount("c", "a").unwrap();
        assert_eq!(fs::read_to_string(&c[0].host_path).unwrap(), "1");
        assert!(c[0].readonly);
        assert!(mount("c", "zzz").is_err());
        let expr = vols.mounts(&json!({"volumeMounts": [{"name": "e", "mountPath": "/m",
            "subPathExpr": "$(POD)"}]}));
        assert_eq!(expr.unwrap_err(), "subPathExpr is not supported");
    }

    #[tokio::test]
    async fn teardown_stays_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "p").unwrap();
        let fake = Fake::default();
        let pod_dir = tmp.path().join("pod");
        let p = pod(json!([{"name": "e", "emptyDir": {}},
            {"name": "h", "hostPath": {"path": outside}}]));
        PodVolumes::setup(&p, &pod_dir, &fake).await.unwrap();
        let e = pod_dir.join("volumes/kubernetes.io~empty-dir/e");
        std::os::unix::fs::symlink(&outside, e.join("link")).unwrap();
        PodVolumes::teardown(&pod_dir);
        assert!(!pod_dir.join("volumes").exists());
        assert_eq!(fs::read_to_string(outside.join("precious")).unwrap(), "p");
        // A missing directory is fine; a symlinked one is unlinked, not followed.
        PodVolumes::teardown(&pod_dir);
        std::os::unix::fs::symlink(&outside, pod_dir.join("volumes")).unwrap();
        PodVolumes::teardown(&pod_dir);
        assert!(fs::symlink_metadata(pod_dir.join("volumes")).is_err());
        assert!(outside.join("precious").exists());
    }
}
