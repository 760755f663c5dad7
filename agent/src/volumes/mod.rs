//! Pod volumes: preparing them on the node before the containers start.
//!
//! Each volume of a pod gets a directory below `POD_DIR/volumes/<plugin>/<name>`,
//! laid out the way the kubelet lays it out, so tools that look there find
//! what they expect. emptyDir and hostPath are plain directories (or a tmpfs
//! mount); configMap, secret, downwardAPI and projected volumes are written
//! with the kubelet's atomic writer, so a running container never sees half
//! of an update: the payload goes into a fresh timestamped directory and a
//! single `..data` symlink is swapped over to it.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use crate::runtime::{BoxFuture, Mount};

mod disk;
mod downward;
mod payload;
mod writer;

use disk::*;
use downward::*;
pub use downward::{field_value, resource_value};
use payload::*;
use writer::*;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    /// configMaps and secrets of namespace `ns`, in memory.
    #[derive(Default)]
    pub(crate) struct Fake(Mutex<HashMap<(String, String), Value>>);

    impl Fake {
        pub(crate) fn put(&self, kind: &str, name: &str, value: Value) {
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
        assert!(apiserver::objects::go_quote("\u{1}é\u{a0}").contains("\\x01é\\u00a0"));
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
