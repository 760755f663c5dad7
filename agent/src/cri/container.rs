//! One CRI container: its image made present per `imagePullPolicy`, its
//! config written from the core/v1 Container (command, env, mounts,
//! resources, security context), created and started in its sandbox,
//! then watched until it exits.
//!
//! Exits are seen by one `ExitWatcher` per runtime that lists the node's
//! containers every half second (containerd 1.6 has no CRI event stream)
//! and asks `ContainerStatus` for each one that stopped, so a hundred
//! pods cost one call per tick, not a hundred waits.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::watch;

use super::client::{Cri, go_error};
use super::runtime::{NODE, POD_NAME, POD_NAMESPACE, POD_UID, int64, namespace_options};
use super::v1;
use crate::runtime::{
    BoxFuture, Container, ContainerSpec, ExecOutput, ExecSync, Exit, Signal, StartError,
};

pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";

/// How often the node's containers are listed for exits.
const EXIT_POLL: Duration = Duration::from_millis(500);
/// How long a pull may take.
const PULL_CALL: Duration = Duration::from_secs(600);
/// Create and start calls.
const CONTAINER_CALL: Duration = Duration::from_secs(240);
/// The most of a termination message kept (the kubelet's 4096 bytes).
const MAX_MESSAGE: usize = 4096;
/// A failed container's log end used as its message under
/// `FallbackToLogsOnError` (the kubelet's 80 lines, 2048 bytes).
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;

/// StopContainer's grace for SIGTERM when the agent sends it: the agent
/// sends the SIGKILL itself when the pod's grace ends.
const TERM_GRACE: i64 = 24 * 3600;

/// The kubelet's masked and read-only /proc and /sys paths for
/// unprivileged containers (the runtime applies none by itself).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Creates and starts `spec` in sandbox `sandbox_id`.
pub async fn start(
    cri: &Cri,
    sandbox_id: &str,
    sandbox: &v1::PodSandboxConfig,
    pod_dir: &Path,
    spec: &ContainerSpec,
    exits: &Arc<ExitWatcher>,
    runtime_name: &str,
) -> Result<CriContainer, StartError> {
    let image = ensure_image(cri, spec, sandbox).await?;
    // The runtime opens the log file but makes no directory for it.
    let log_dir = pod_dir.join(&spec.name);
    tokio::fs::create_dir_all(&log_dir).await.map_err(|e| {
        StartError::waiting(
            "CreateContainerError",
            format!("creating {}: {e}", log_dir.display()),
        )
    })?;
    let termination = termination_path(spec);
    if termination.is_some() {
        let file = spec.log_path.with_extension("termination-log");
        create_world_writable(&file).map_err(|e| {
            StartError::waiting(
                "CreateContainerError",
                format!("creating {}: {e}", file.display()),
            )
        })?;
    }
    let config = container_config(spec, sandbox, &image, pod_dir);
    let mut runtime = cri.runtime.clone();
    let mut create = tonic::Request::new(v1::CreateContainerRequest {
        pod_sandbox_id: sandbox_id.to_string(),
        config: Some(config),
        sandbox_config: Some(sandbox.clone()),
    });
    create.set_timeout(CONTAINER_CALL);
    let id = runtime
        .create_container(create)
        .await
        .map_err(|s| StartError::waiting("CreateContainerError", go_error(&s)))?
        .into_inner()
        .container_id;
    let mut start = tonic::Request::new(v1::StartContainerRequest {
        container_id: id.clone(),
    });
    start.set_timeout(CONTAINER_CALL);
    let exit = exits.watch(&id);
    if let Err(s) = runtime.start_container(start).await {
        exits.forget(&id);
        return Err(StartError::start(go_error(&s)));
    }
    let started_at = status(cri, &id)
        .await
        .map(|s| nanos_to_time(s.started_at))
        .unwrap_or_else(|_| SystemTime::now());
    Ok(CriContainer {
        cri: cri.clone(),
        id: format!("{runtime_name}://{id}"),
        raw_id: id,
        image_id: image.shown,
        started_at,
        exit,
        pulled: Some(image.how),
        message: termination.map(|_| Message {
            file: spec.log_path.with_extension("termination-log"),
            fallback_log: (spec.field("terminationMessagePolicy") == "FallbackToLogsOnError")
                .then(|| spec.log_path.clone()),
        }),
    })
}

/// Where the container's termination message goes; None when its spec
/// asks for none.
fn termination_path(spec: &ContainerSpec) -> Option<String> {
    match spec
        .container
        .get("terminationMessagePath")
        .and_then(Value::as_str)
    {
        Some("") => None,
        Some(path) => Some(path.to_string()),
        None => Some("/dev/termination-log".to_string()),
    }
}

/// An empty file any user of the container may write (its user need
/// not be root), as the kubelet makes it.
fn create_world_writable(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(file, b"")?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666))
}

/// Where an exited container's message is read from.
struct Message {
    file: std::path::PathBuf,
    /// The log to fall back to after a failure, if the spec says so.
    fallback_log: Option<std::path::PathBuf>,
}

impl Message {
    /// What the container left, read once it has exited.
    fn read(&self, exit_code: i32) -> Option<String> {
        let written = std::fs::read(&self.file).unwrap_or_default();
        let written = &written[..written.len().min(MAX_MESSAGE)];
        if !written.is_empty() {
            return Some(String::from_utf8_lossy(written).into_owned());
        }
        let log = self.fallback_log.as_ref().filter(|_| exit_code != 0)?;
        let data = std::fs::read(log).ok()?;
        let mut decoder = crate::cri_log::Decoder::default();
        let mut lines = decoder.push(&data);
        lines.extend(decoder.finish());
        let tail = &lines[lines.len().saturating_sub(FALLBACK_LINES)..];
        let text: Vec<u8> = tail.iter().flat_map(|l| l.text.iter().copied()).collect();
        let text = &text[text.len().saturating_sub(FALLBACK_BYTES)..];
        (!text.is_empty()).then(|| String::from_utf8_lossy(text).into_owned())
    }
}

/// The image a container runs: its ID for the runtime and what the status
/// shows as `imageID`.
struct ImageRef {
    id: String,
    shown: String,
    /// How it came to be present, as the kubelet's `Pulled` event says.
    how: String,
}

/// Makes the image present as `imagePullPolicy` says (default: `Always`
/// for `:latest` or no tag, else `IfNotPresent`).
async fn ensure_image(
    cri: &Cri,
    spec: &ContainerSpec,
    sandbox: &v1::PodSandboxConfig,
) -> Result<ImageRef, StartError> {
    let image = spec.image.as_str();
    if image.is_empty() {
        return Err(StartError::waiting("InvalidImageName", "image is empty"));
    }
    let policy = match spec.field("imagePullPolicy") {
        "" if latest(image) => "Always",
        "" => "IfNotPresent",
        p => p,
    };
    let present = image_status(cri, image).await?;
    match (policy, present) {
        ("Never", None) => Err(StartError::waiting(
            "ErrImageNeverPull",
            format!("Container image {image:?} is not present with pull policy of Never"),
        )),
        ("Always", _) | (_, None) => {
            let mut images = cri.images.clone();
            let mut pull = tonic::Request::new(v1::PullImageRequest {
                image: Some(v1::ImageSpec {
                    image: image.to_string(),
                    annotations: HashMap::new(),
                }),
                auth: spec.pull_auth.as_ref().map(|a| v1::AuthConfig {
                    username: a.username.clone(),
                    password: a.password.clone(),
                    auth: a.auth.clone(),
                    server_address: a.server.clone(),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox.clone()),
            });
            pull.set_timeout(PULL_CALL);
            tracing::info!(image, "pulling image");
            let began = std::time::Instant::now();
            images
                .pull_image(pull)
                .await
                .map_err(|s| StartError::waiting("ErrImagePull", go_error(&s)))?;
            let took = began.elapsed().as_secs_f64();
            let pulled = image_status(cri, image).await?.map(|found| ImageRef {
                how: format!("Successfully pulled image {image:?} in {took:.3}s"),
                ..found
            });
            pulled.ok_or_else(|| {
                StartError::waiting(
                    "ErrImagePull",
                    format!("image {image:?} is not present after its pull"),
                )
            })
        }
        (_, Some(found)) => Ok(found),
    }
}

/// Whether the reference names no tag (or `latest`) and no digest.
fn latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

async fn image_status(cri: &Cri, image: &str) -> Result<Option<ImageRef>, StartError> {
    let mut images = cri.images.clone();
    let reply = images
        .image_status(v1::ImageStatusRequest {
            image: Some(v1::ImageSpec {
                image: image.to_string(),
                annotations: HashMap::new(),
            }),
            verbose: false,
        })
        .await
        .map_err(|s| StartError::waiting("ErrImagePull", go_error(&s)))?;
    Ok(reply.into_inner().image.map(|found| ImageRef {
        how: format!("Container image {image:?} already present on machine"),
        shown: found
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| found.id.clone()),
        id: found.id,
    }))
}

/// The CRI config of `spec`.
fn container_config(
    spec: &ContainerSpec,
    sandbox: &v1::PodSandboxConfig,
    image: &ImageRef,
    pod_dir: &Path,
) -> v1::ContainerConfig {
    let meta = sandbox.metadata.clone().unwrap_or_default();
    let labels = HashMap::from([
        (CONTAINER_NAME.to_string(), spec.name.clone()),
        (POD_NAME.to_string(), meta.name.clone()),
        (POD_NAMESPACE.to_string(), meta.namespace.clone()),
        (POD_UID.to_string(), meta.uid.clone()),
        (
            NODE.to_string(),
            sandbox.labels.get(NODE).cloned().unwrap_or_default(),
        ),
    ]);
    let annotations = HashMap::from([(RESTART_COUNT.to_string(), spec.attempt.to_string())]);
    let mut mounts: Vec<v1::Mount> = spec
        .mounts
        .iter()
        .map(|m| v1::Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.to_string_lossy().into_owned(),
            readonly: m.readonly,
            selinux_relabel: false,
            propagation: v1::MountPropagation::PropagationPrivate as i32,
        })
        .collect();
    let hosts = pod_dir.join("etc-hosts");
    if hosts.exists() && !spec.mounts.iter().any(|m| m.container_path == "/etc/hosts") {
        mounts.push(v1::Mount {
            container_path: "/etc/hosts".into(),
            host_path: hosts.to_string_lossy().into_owned(),
            readonly: false,
            selinux_relabel: false,
            propagation: v1::MountPropagation::PropagationPrivate as i32,
        });
    }
    if let Some(path) = termination_path(spec) {
        mounts.push(v1::Mount {
            container_path: path,
            host_path: spec
                .log_path
                .with_extension("termination-log")
                .to_string_lossy()
                .into_owned(),
            readonly: false,
            selinux_relabel: false,
            propagation: v1::MountPropagation::PropagationPrivate as i32,
        });
    }
    let c = &spec.container;
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: spec.name.clone(),
            attempt: spec.attempt,
        }),
        image: Some(v1::ImageSpec {
            image: image.id.clone(),
            annotations: HashMap::new(),
        }),
        command: spec.command.clone(),
        args: spec.args.clone(),
        working_dir: spec.working_dir.clone(),
        envs: spec
            .env
            .iter()
            .map(|(key, value)| v1::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", spec.name, spec.attempt),
        stdin: c["stdin"].as_bool().unwrap_or(false),
        stdin_once: c["stdinOnce"].as_bool().unwrap_or(false),
        tty: c["tty"].as_bool().unwrap_or(false),
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(resources(c)),
            security_context: Some(security_context(c, sandbox)),
        }),
    }
}

/// CPU shares from the request, CFS quota from the limit, the memory
/// limit: what the kubelet derives from `resources`.
fn resources(c: &Value) -> v1::LinuxContainerResources {
    use apiserver::scheduler::quantity::amount;
    let cpu = |kind: &str| {
        c.pointer(&format!("/resources/{kind}/cpu"))
            .and_then(|q| amount("cpu", q))
    };
    let memory = c
        .pointer("/resources/limits/memory")
        .and_then(|q| amount("memory", q));
    let (request, limit) = (cpu("requests").or(cpu("limits")), cpu("limits"));
    const PERIOD: i64 = 100_000;
    v1::LinuxContainerResources {
        // The kubelet's minimum of 2 shares when nothing is requested.
        cpu_shares: request.map_or(2, |m| (m * 1024 / 1000).max(2)),
        cpu_period: if limit.is_some() { PERIOD } else { 0 },
        cpu_quota: limit.map_or(0, |m| (m * PERIOD / 1000).max(1000)),
        memory_limit_in_bytes: memory.unwrap_or(0),
        oom_score_adj: oom_score_adj(c),
        ..Default::default()
    }
}

/// The kubelet's OOM score by QoS: guaranteed (limits equal requests)
/// last to be killed, best-effort (nothing set) first.
fn oom_score_adj(c: &Value) -> i64 {
    let empty = |kind: &str| {
        c.pointer(&format!("/resources/{kind}"))
            .and_then(Value::as_object)
            .is_none_or(|m| m.is_empty())
    };
    if empty("requests") && empty("limits") {
        return 1000;
    }
    let limits = c.pointer("/resources/limits");
    let requests = c.pointer("/resources/requests");
    let guaranteed = limits.and_then(|l| l.get("cpu")).is_some()
        && limits.and_then(|l| l.get("memory")).is_some()
        && requests.is_none_or(|r| {
            ["cpu", "memory"].iter().all(|k| {
                r.get(*k)
                    .is_none_or(|v| Some(v) == limits.and_then(|l| l.get(*k)))
            })
        });
    if guaranteed { -997 } else { 999 }
}

/// The container's security context, the pod's as its default.
fn security_context(
    c: &Value,
    sandbox: &v1::PodSandboxConfig,
) -> v1::LinuxContainerSecurityContext {
    let pod_security = sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let privileged = c
        .pointer("/securityContext/privileged")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let names = |pointer: &str| -> Vec<String> {
        c.pointer(pointer)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    let escalation = c
        .pointer("/securityContext/allowPrivilegeEscalation")
        .and_then(Value::as_bool);
    let seccomp = match c
        .pointer("/securityContext/seccompProfile/type")
        .and_then(Value::as_str)
    {
        Some("RuntimeDefault") => Some(v1::SecurityProfile {
            profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        Some("Localhost") => Some(v1::SecurityProfile {
            profile_type: v1::security_profile::ProfileType::Localhost as i32,
            localhost_ref: c
                .pointer("/securityContext/seccompProfile/localhostProfile")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }),
        _ => None,
    };
    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        let own = |p: &[&str]| p.iter().map(|s| s.to_string()).collect();
        (own(MASKED_PATHS), own(READONLY_PATHS))
    };
    v1::LinuxContainerSecurityContext {
        capabilities: Some(v1::Capability {
            add_capabilities: names("/securityContext/capabilities/add"),
            drop_capabilities: names("/securityContext/capabilities/drop"),
        }),
        privileged,
        namespace_options: pod_security
            .namespace_options
            .or_else(|| Some(namespace_options(&Value::Null))),
        run_as_user: int64(c, "/securityContext/runAsUser").or(pod_security.run_as_user),
        run_as_username: String::new(),
        readonly_rootfs: c
            .pointer("/securityContext/readOnlyRootFilesystem")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        supplemental_groups: pod_security.supplemental_groups,
        no_new_privs: !privileged && escalation == Some(false),
        run_as_group: int64(c, "/securityContext/runAsGroup").or(pod_security.run_as_group),
        masked_paths: masked,
        readonly_paths: readonly,
        seccomp,
    }
}

async fn status(cri: &Cri, id: &str) -> Result<v1::ContainerStatus, tonic::Status> {
    let mut runtime = cri.runtime.clone();
    runtime
        .container_status(v1::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .ok_or_else(|| tonic::Status::not_found(format!("container {id:?} has no status")))
}

fn nanos_to_time(nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64)
}

/// A CRI container this agent started or adopted.
pub struct CriContainer {
    cri: Cri,
    /// `containerd://ID`.
    id: String,
    raw_id: String,
    image_id: String,
    started_at: SystemTime,
    exit: watch::Receiver<Option<Exit>>,
    /// The `Pulled` event's message; None for an adopted container.
    pulled: Option<String>,
    /// Its termination message file.
    message: Option<Message>,
}

impl CriContainer {
    /// The newest container named `name` in sandbox `sandbox_id`, with its
    /// restart count; one that never started is removed instead.
    pub async fn adopt(
        cri: &Cri,
        sandbox_id: &str,
        name: &str,
        exits: &Arc<ExitWatcher>,
        runtime_name: &str,
    ) -> Option<(CriContainer, u32)> {
        let mut runtime = cri.runtime.clone();
        let filter = v1::ContainerFilter {
            pod_sandbox_id: sandbox_id.to_string(),
            label_selector: HashMap::from([(CONTAINER_NAME.to_string(), name.to_string())]),
            ..Default::default()
        };
        let listed = runtime
            .list_containers(v1::ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .inspect_err(
                |e| tracing::warn!(error = %go_error(e), "listing containers to adopt failed"),
            )
            .ok()?
            .into_inner()
            .containers;
        let newest = listed
            .into_iter()
            .max_by_key(|c| (attempt(c), c.created_at))?;
        if newest.state == v1::ContainerState::ContainerCreated as i32 {
            let _ = runtime
                .remove_container(v1::RemoveContainerRequest {
                    container_id: newest.id.clone(),
                })
                .await;
            return None;
        }
        let status = status(cri, &newest.id).await.ok()?;
        let exit = exits.watch(&newest.id);
        let container = CriContainer {
            cri: cri.clone(),
            id: format!("{runtime_name}://{}", newest.id),
            raw_id: newest.id.clone(),
            image_id: if status.image_ref.is_empty() {
                newest.image_ref.clone()
            } else {
                status.image_ref.clone()
            },
            started_at: nanos_to_time(status.started_at),
            exit,
            pulled: None,
            message: (!status.log_path.is_empty()).then(|| Message {
                file: std::path::Path::new(&status.log_path).with_extension("termination-log"),
                fallback_log: None,
            }),
        };
        Some((container, attempt(&newest)))
    }

    async fn stop(cri: Cri, id: String, timeout: i64) {
        let mut runtime = cri.runtime.clone();
        let mut request = tonic::Request::new(v1::StopContainerRequest {
            container_id: id.clone(),
            timeout,
        });
        request.set_timeout(Duration::from_secs(timeout.max(0) as u64 + 30));
        if let Err(e) = runtime.stop_container(request).await
            && e.code() != tonic::Code::DeadlineExceeded
        {
            tracing::warn!(container = %id, error = %go_error(&e), "stopping a container failed");
        }
    }
}

/// The restart count a container was created with.
fn attempt(c: &v1::Container) -> u32 {
    c.annotations
        .get(RESTART_COUNT)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| c.metadata.as_ref().map_or(0, |m| m.attempt))
}

impl ExecSync for CriContainer {
    fn exec_sync<'a>(
        &'a self,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, String>> {
        Box::pin(async move {
            let mut runtime = self.cri.runtime.clone();
            let mut request = tonic::Request::new(v1::ExecSyncRequest {
                container_id: self.raw_id.clone(),
                cmd: command.to_vec(),
                timeout: timeout.as_secs().max(1) as i64,
            });
            request.set_timeout(timeout + Duration::from_secs(5));
            match runtime.exec_sync(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let mut output = reply.stdout;
                    output.extend_from_slice(&reply.stderr);
                    Ok(ExecOutput {
                        exit_code: reply.exit_code,
                        output,
                    })
                }
                Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
                    Err(format!("command {command:?} timed out after {timeout:?}"))
                }
                Err(e) => Err(go_error(&e)),
            }
        })
    }
}

impl Container for CriContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn image_id(&self) -> String {
        self.image_id.clone()
    }

    fn started_at(&self) -> SystemTime {
        self.started_at
    }

    fn signal(&self, signal: Signal) {
        if self.exit.borrow().is_some() {
            return;
        }
        let timeout = match signal {
            Signal::Term => TERM_GRACE,
            Signal::Kill => 0,
        };
        tokio::spawn(CriContainer::stop(
            self.cri.clone(),
            self.raw_id.clone(),
            timeout,
        ));
    }

    fn wait(&self) -> BoxFuture<'_, Exit> {
        let mut exit = self.exit.clone();
        Box::pin(async move {
            let mut exit = match exit.wait_for(Option::is_some).await {
                Ok(e) => e.clone().expect("waited for Some"),
                Err(_) => lost(),
            };
            exit.message = self.message.as_ref().and_then(|m| m.read(exit.code));
            exit
        })
    }

    fn start_events(&self) -> Vec<(&'static str, String)> {
        self.pulled.iter().map(|m| ("Pulled", m.clone())).collect()
    }
}

/// A container the runtime no longer knows: reported as killed.
fn lost() -> Exit {
    Exit {
        code: 128 + libc::SIGKILL,
        signal: None,
        finished_at: SystemTime::now(),
        oom_killed: false,
        message: None,
    }
}

/// Sees the exits of the node's containers.
pub struct ExitWatcher {
    cri: Cri,
    node: String,
    watched: Mutex<HashMap<String, watch::Sender<Option<Exit>>>>,
}

impl ExitWatcher {
    /// The watcher of `node`'s containers, polling in its own task.
    pub fn start(cri: Cri, node: &str) -> Arc<ExitWatcher> {
        let watcher = Arc::new(ExitWatcher {
            cri,
            node: node.to_string(),
            watched: Mutex::default(),
        });
        tokio::spawn(ExitWatcher::run(Arc::downgrade(&watcher)));
        watcher
    }

    /// A receiver that gets the exit of container `id` (a runtime ID).
    pub fn watch(&self, id: &str) -> watch::Receiver<Option<Exit>> {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    pub fn forget(&self, id: &str) {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Polls until the runtime is dropped.
    async fn run(watcher: std::sync::Weak<ExitWatcher>) {
        let mut tick = tokio::time::interval(EXIT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(this) = watcher.upgrade() else {
                return;
            };
            this.poll().await;
        }
    }

    /// One look at the node's containers: the exits of watched ones that
    /// stopped running are sent.
    async fn poll(&self) {
        let ids: Vec<String> = {
            let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            watched.retain(|_, tx| tx.receiver_count() > 0);
            watched.keys().cloned().collect()
        };
        if ids.is_empty() {
            return;
        }
        let running = match self.running().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %go_error(&e), "listing containers failed; the runtime may be restarting");
                return;
            }
        };
        for id in ids.iter().filter(|id| !running.contains_key(*id)) {
            let exit = self.exit_of(id).await;
            let Some(exit) = exit else { continue };
            let tx = self
                .watched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            if let Some(tx) = tx {
                let _ = tx.send(Some(exit));
            }
        }
    }

    /// The node's containers by ID with their states.
    async fn running(&self) -> Result<HashMap<String, i32>, tonic::Status> {
        let mut runtime = self.cri.runtime.clone();
        let filter = v1::ContainerFilter {
            state: Some(v1::ContainerStateValue {
                state: v1::ContainerState::ContainerRunning as i32,
            }),
            label_selector: HashMap::from([(NODE.to_string(), self.node.clone())]),
            ..Default::default()
        };
        let reply = runtime
            .list_containers(v1::ListContainersRequest {
                filter: Some(filter),
            })
            .await?;
        Ok(reply
            .into_inner()
            .containers
            .into_iter()
            .map(|c| (c.id, c.state))
            .collect())
    }

    /// How a container that is not running ended; None while it is still
    /// being created or the runtime cannot say yet.
    async fn exit_of(&self, id: &str) -> Option<Exit> {
        match status(&self.cri, id).await {
            Ok(s) if s.state == v1::ContainerState::ContainerExited as i32 => Some(exit_from(&s)),
            Ok(s) if s.state == v1::ContainerState::ContainerRunning as i32 => None,
            Ok(s) if s.state == v1::ContainerState::ContainerCreated as i32 => None,
            Ok(_) => Some(lost()),
            Err(e) if e.code() == tonic::Code::NotFound => Some(lost()),
            Err(_) => None,
        }
    }
}

fn exit_from(s: &v1::ContainerStatus) -> Exit {
    let code = s.exit_code;
    Exit {
        code,
        signal: None,
        finished_at: if s.finished_at > 0 {
            nanos_to_time(s.finished_at)
        } else {
            SystemTime::now()
        },
        oom_killed: s.reason == "OOMKilled",
        message: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pull_policy_defaults_by_tag() {
        assert!(latest("nginx"));
        assert!(latest("docker.io/library/nginx:latest"));
        assert!(latest("localhost:5000/web"));
        assert!(!latest("localhost:5000/web:1"));
        assert!(!latest("nginx@sha256:abc"));
    }

    #[test]
    fn resources_become_cgroup_settings() {
        let c = json!({"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}});
        let r = resources(&c);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period),
            (256, 50_000, 100_000)
        );
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        assert_eq!(r.oom_score_adj, 999);
        let none = resources(&json!({}));
        assert_eq!(
            (none.cpu_shares, none.cpu_quota, none.oom_score_adj),
            (2, 0, 1000)
        );
        let guaranteed = json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}});
        assert_eq!(resources(&guaranteed).oom_score_adj, -997);
    }

    #[test]
    fn security_context_falls_back_to_the_pods() {
        let sandbox = v1::PodSandboxConfig {
            linux: Some(v1::LinuxPodSandboxConfig {
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    run_as_user: Some(v1::Int64Value { value: 1000 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = json!({"securityContext": {"runAsGroup": 3000, "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false, "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}}});
        let s = security_context(&c, &sandbox);
        assert_eq!(s.run_as_user.map(|u| u.value), Some(1000));
        assert_eq!(s.run_as_group.map(|g| g.value), Some(3000));
        assert!(s.readonly_rootfs && s.no_new_privs && !s.privileged);
        assert_eq!(s.capabilities.unwrap().drop_capabilities, ["ALL"]);
        assert!(s.masked_paths.contains(&"/proc/kcore".to_string()));
        let privileged =
            security_context(&json!({"securityContext": {"privileged": true}}), &sandbox);
        assert!(privileged.privileged && privileged.masked_paths.is_empty());
    }
}
