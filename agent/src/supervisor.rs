//! The pods of this node, run the way the kubelet runs them: init
//! containers in order, then the containers side by side, restarted per
//! the restart policy with the kubelet's crash-loop back-off, watched by
//! their probes, and stopped gracefully. Every change of a pod's status is
//! sent as a `PodUpdate` for the agent to write to the API.
//!
//! Each pod runs in its own task (and each of its containers in one more);
//! the `Supervisor` only keeps a handle per pod, keyed by uid. A pod's
//! task first gets its sandbox from the runtime (a new one, or the one a
//! previous agent run left, whose containers are then adopted with their
//! restart counts), and removes it when the pod is done. Each pod has a
//! directory `ROOT/<uid>` holding the container logs
//! (`<container>/<restartCount>.log`) and pid files. Those paths are made
//! only through `runtime::path_under`: a pod whose uid or container names
//! are no DNS-1123 labels (stored past the API server's checks) is refused.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiserver::objects::{now, rfc3339};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::objects::Sources;
use crate::probes::{Probe, ProbeContext, Prober};
use crate::runtime::{
    Container, ContainerSpec, Exit, Runtime, Sandbox, SandboxSpec, Signal, StartError, path_under,
};
use crate::volumes::PodVolumes;

/// Status updates queued for the agent; a full queue holds pod tasks back
/// rather than dropping a status.
const UPDATE_QUEUE: usize = 1024;
/// The kubelet's crash-loop back-off: the first delay, doubled each restart...
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// ...up to this.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// `terminationGracePeriodSeconds` when the pod does not say.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How often configMap, secret and downwardAPI volumes are rewritten
/// from the API (the kubelet's sync period is about a minute).
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

/// A pod's new status, for `pods/NAME/status`.
#[derive(Debug, Clone)]
pub struct PodUpdate {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The full pod `.status`.
    pub status: Value,
    /// Events that no status change shows (type, reason, message).
    pub events: Vec<Event>,
}

/// An Event's type, reason and message.
pub type Event = (&'static str, &'static str, String);

/// Runs the pods bound to this node.
pub struct Supervisor {
    root: PathBuf,
    runtime: Arc<dyn Runtime>,
    /// Where volumes and env read API objects; None: literal env only
    /// and no volumes (tests of the supervisor alone).
    sources: Option<Arc<dyn Sources>>,
    node_ip: String,
    backoff: Backoff,
    updates: mpsc::Sender<PodUpdate>,
    /// By uid. A std mutex: nothing awaits while holding it.
    pods: Mutex<HashMap<String, PodEntry>>,
    /// UIDs of pods refused as written, so each is reported once. Only an
    /// object stored past the API server's validation lands here.
    refused: Mutex<HashSet<String>>,
}

/// The supervisor's handle on one pod's task.
struct PodEntry {
    shared: Arc<PodShared>,
    /// The grace period once the pod is told to stop.
    stop: watch::Sender<Option<Duration>>,
    /// Becomes true when every process of the pod is gone.
    done: watch::Receiver<bool>,
    /// Order of arrival, so the newest of two same-named pods wins lookups.
    seq: u64,
}

impl Supervisor {
    /// root: DATA_DIR/agent/pods; node_ip: the node's InternalIP (hostIP/podIP, host network).
    pub fn new(
        root: PathBuf,
        runtime: Arc<dyn Runtime>,
        node_ip: String,
    ) -> (Supervisor, mpsc::Receiver<PodUpdate>) {
        let (updates, rx) = mpsc::channel(UPDATE_QUEUE);
        let supervisor = Supervisor {
            root,
            runtime,
            sources: None,
            node_ip,
            backoff: Backoff {
                base: BACKOFF_BASE,
                cap: BACKOFF_CAP,
            },
            updates,
            pods: Mutex::default(),
            refused: Mutex::default(),
        };
        (supervisor, rx)
    }

    /// Reads volumes' and env's objects from `sources`.
    pub fn with_sources(mut self, sources: Arc<dyn Sources>) -> Self {
        self.sources = Some(sources);
        self
    }

    /// Replaces the crash-loop back-off (10 s doubling to 300 s), for tests.
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff = Backoff {
            base,
            cap: cap.max(base),
        };
        self
    }

    /// Called on every event for a pod bound to this node (not being
    /// deleted): starts it if its uid is new, else does nothing (pod specs
    /// are immutable apart from things we ignore). A pod already Succeeded
    /// or Failed is never run again. Non-blocking.
    pub fn sync(&self, pod: &Value) {
        let uid = text(pod, "/metadata/uid");
        if uid.is_empty()
            || matches!(text(pod, "/status/phase"), "Succeeded" | "Failed")
            || lock(&self.refused).contains(uid)
        {
            return;
        }
        let mut pods = lock(&self.pods);
        if pods.contains_key(uid) {
            return;
        }
        let Ok(tokio) = tokio::runtime::Handle::try_current() else {
            tracing::error!("Supervisor::sync called outside a tokio runtime");
            return;
        };
        let parsed = path_under(&self.root, uid)
            .map_err(|e| format!("uid {e}"))
            .and_then(|dir| Ok((PodSpec::parse(pod, &dir)?, dir)));
        let (spec, dir) = match parsed {
            Ok((spec, dir)) => (Arc::new(spec), dir),
            Err(why) => return self.refuse(pod, &why),
        };
        let shared = Arc::new(PodShared {
            namespace: text(pod, "/metadata/namespace").to_string(),
            name: text(pod, "/metadata/name").to_string(),
            uid: uid.to_string(),
            state: Mutex::new(PodState::new(pod, &spec, &self.node_ip)),
            last_sent: tokio::sync::Mutex::new(None),
            events: Mutex::default(),
            updates: self.updates.clone(),
        });
        let (stop, stop_rx) = watch::channel(None);
        let (done_tx, done) = watch::channel(false);
        let run = PodRun {
            pod: Arc::new(pod.clone()),
            shared: shared.clone(),
            runtime: self.runtime.clone(),
            sources: self.sources.clone(),
            volumes: None,
            spec,
            dir,
            backoff: self.backoff,
            stop: stop_rx,
        };
        tracing::info!(pod = %shared.name, namespace = %shared.namespace, uid, "starting pod");
        tokio.spawn(async move {
            run.run_pod().await;
            let _ = done_tx.send(true);
        });
        let seq = pods.values().map(|p| p.seq + 1).max().unwrap_or(0);
        pods.insert(
            uid.to_string(),
            PodEntry {
                shared,
                stop,
                done,
                seq,
            },
        );
    }

    /// A pod the agent cannot run as written fails at once, as the kubelet
    /// fails a pod it rejects at admission.
    fn refuse(&self, pod: &Value, why: &str) {
        let uid = text(pod, "/metadata/uid");
        if !lock(&self.refused).insert(uid.to_string()) {
            return;
        }
        let (namespace, name) = (
            text(pod, "/metadata/namespace"),
            text(pod, "/metadata/name"),
        );
        tracing::warn!(pod = name, namespace, uid, why, "refusing to run pod");
        let update = PodUpdate {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            status: json!({"phase": "Failed", "reason": "InvalidName", "message": format!("Pod was rejected: {why}")}),
            events: Vec::new(),
        };
        // A full queue: the next sync tries again.
        if self.updates.try_send(update).is_err() {
            lock(&self.refused).remove(uid);
        }
    }

    /// Graceful stop (pod deletion): SIGTERM to every container, wait up to
    /// `grace`, SIGKILL; resolves once all its processes are gone, after a
    /// final PodUpdate (containers terminated, phase Succeeded or Failed as
    /// the kubelet leaves a deleted pod). Unknown uid: returns at once.
    pub async fn terminate(&self, uid: &str, grace: Duration) {
        let Some((shared, mut done)) = self.stop_pod(uid, grace) else {
            return;
        };
        let _ = done.wait_for(|d| *d).await;
        // A pod that had already finished gets its terminal status too.
        shared.report().await;
    }

    /// The pod is gone from the API: kill anything left (SIGKILL), forget
    /// it, remove its directory.
    pub async fn remove(&self, uid: &str) {
        let Some((_, mut done)) = self.stop_pod(uid, Duration::ZERO) else {
            return;
        };
        let _ = done.wait_for(|d| *d).await;
        lock(&self.pods).remove(uid);
        if let Ok(dir) = path_under(&self.root, uid) {
            remove_pod_dir(dir).await;
        }
    }

    /// Tells a pod to stop within `grace` (or sooner if already told so).
    fn stop_pod(
        &self,
        uid: &str,
        grace: Duration,
    ) -> Option<(Arc<PodShared>, watch::Receiver<bool>)> {
        let pods = lock(&self.pods);
        let entry = pods.get(uid)?;
        lock(&entry.shared.state).terminating = true;
        entry
            .stop
            .send_modify(|g| *g = Some(g.map_or(grace, |old| old.min(grace))));
        Some((entry.shared.clone(), entry.done.clone()))
    }

    /// The runtime and its version, for the Node's status.
    pub fn runtime_version(&self) -> String {
        self.runtime.version()
    }

    /// How the runtime writes container logs.
    pub fn log_format(&self) -> crate::runtime::LogFormat {
        self.runtime.log_format()
    }

    /// UIDs currently supervised.
    pub fn uids(&self) -> Vec<String> {
        lock(&self.pods).keys().cloned().collect()
    }

    /// Removes what a previous agent run left in the runtime for pods not
    /// in `keep` (uids), once the node's pods are known.
    pub async fn forget_others(&self, keep: &HashSet<String>) {
        self.runtime.forget_others(keep).await;
        let dirs = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten();
        for dir in dirs {
            let uid = dir.file_name().to_string_lossy().into_owned();
            if !keep.contains(&uid) && !lock(&self.pods).contains_key(&uid) {
                remove_pod_dir(dir.path()).await;
            }
        }
    }

    /// Log file of a container: the current run, or with previous=true the
    /// run before it. None if unknown or never written. Past 10 MiB the
    /// older part of a run is in the same path with `.1` appended.
    pub fn log_path(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Option<PathBuf> {
        let pods = lock(&self.pods);
        let (uid, entry) = pods
            .iter()
            .filter(|(_, e)| e.shared.namespace == namespace && e.shared.name == pod)
            .max_by_key(|(_, e)| e.seq)?;
        let restarts = {
            let state = lock(&entry.shared.state);
            state
                .init
                .iter()
                .chain(&state.containers)
                .find(|c| c.name == container)?
                .restarts
        };
        let run = if previous {
            restarts.checked_sub(1)?
        } else {
            restarts
        };
        let path = path_under(&path_under(&self.root, uid).ok()?, container).ok()?;
        let path = path.join(format!("{run}.log"));
        path.exists().then_some(path)
    }

    /// The newest supervised pod named `namespace/pod`.
    fn find(&self, namespace: &str, pod: &str) -> Option<(String, Arc<PodShared>)> {
        let pods = lock(&self.pods);
        pods.iter()
            .filter(|(_, e)| e.shared.namespace == namespace && e.shared.name == pod)
            .max_by_key(|(_, e)| e.seq)
            .map(|(uid, e)| (uid.clone(), e.shared.clone()))
    }

    /// The uid of pod `namespace/pod`, if this node runs it.
    pub fn pod_uid(&self, namespace: &str, pod: &str) -> Option<String> {
        self.find(namespace, pod).map(|(uid, _)| uid)
    }

    /// The runtime's ID (without its `containerd://`) of container
    /// `container` of pod `namespace/pod`, while it runs.
    pub fn running_container(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        let (_, shared) = self.find(namespace, pod)?;
        let state = lock(&shared.state);
        let status = state
            .init
            .iter()
            .chain(&state.containers)
            .find(|c| c.name == container)?;
        if !matches!(status.state, State::Running { .. }) {
            return None;
        }
        let id = status.id.as_deref()?;
        Some(id.split_once("://").map_or(id, |(_, raw)| raw).to_string())
    }

    /// Where the runtime serves the stream `request` asks for.
    pub async fn stream_url(
        &self,
        request: &crate::runtime::StreamRequest,
    ) -> Result<String, String> {
        self.runtime.stream_url(request).await
    }

    /// Containers of a pod by name (not its init containers), for
    /// `kubectl logs` without -c.
    pub fn containers(&self, namespace: &str, pod: &str) -> Option<Vec<String>> {
        let pods = lock(&self.pods);
        let entry = pods
            .values()
            .filter(|e| e.shared.namespace == namespace && e.shared.name == pod)
            .max_by_key(|e| e.seq)?;
        let state = lock(&entry.shared.state);
        Some(state.containers.iter().map(|c| c.name.clone()).collect())
    }
}

/// Removes a pod's directory, its volumes unmounted first so nothing
/// mounted below it is emptied.
async fn remove_pod_dir(dir: PathBuf) {
    let teardown = dir.clone();
    let _ = tokio::task::spawn_blocking(move || PodVolumes::teardown(&teardown)).await;
    if dir.join("volumes").exists() {
        tracing::warn!(dir = %dir.display(), "a pod's volumes are still mounted; keeping its directory");
        return;
    }
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "removing a pod directory failed");
    }
}

/// Locks, ignoring poisoning: the guarded data stays consistent because
/// no code panics halfway through an edit.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A time for the status; None for one a runtime does not know (the
/// epoch or before), which kube leaves out rather than show 1970.
fn timestamp(t: SystemTime) -> Option<String> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .filter(|d| !d.is_zero())
        .map(|d| rfc3339(d.as_secs() as i64))
}

/// The crash-loop back-off settings.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    base: Duration,
    cap: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// What the supervisor needs from the pod spec, read once.
struct PodSpec {
    policy: RestartPolicy,
    /// terminationGracePeriodSeconds, used when a liveness probe fails.
    grace: Duration,
    init: Vec<ContainerDef>,
    containers: Vec<ContainerDef>,
}

struct ContainerDef {
    spec: ContainerSpec,
    startup: Option<Probe>,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
}

impl PodSpec {
    /// Reads the spec of the pod living in `dir`; refused (with why) when
    /// a container's name is no DNS-1123 label or names two containers,
    /// as each container's files are named after it.
    fn parse(pod: &Value, dir: &Path) -> Result<PodSpec, String> {
        let name = text(pod, "/metadata/name");
        let mut names = HashSet::new();
        let mut defs = |key: &str| -> Result<Vec<ContainerDef>, String> {
            let list = pod
                .pointer(&format!("/spec/{key}"))
                .and_then(Value::as_array);
            list.into_iter()
                .flatten()
                .map(|c| {
                    let spec = ContainerSpec::from_json(c, dir)
                        .map_err(|e| format!("container name {e}"))?;
                    if !names.insert(spec.name.clone()) {
                        return Err(format!("container name {:?} is used twice", spec.name));
                    }
                    let probe = |kind: &str| {
                        let p = c.get(kind).filter(|p| p.is_object())?;
                        Probe::parse(p, c)
                            .inspect_err(|e| {
                                tracing::warn!(pod = name, container = %spec.name, probe = kind, error = %e, "ignoring probe")
                            })
                            .ok()
                    };
                    Ok(ContainerDef {
                        startup: probe("startupProbe"),
                        readiness: probe("readinessProbe"),
                        liveness: probe("livenessProbe"),
                        spec,
                    })
                })
                .collect()
        };
        let init = defs("initContainers")?;
        let containers = defs("containers")?;
        let policy = match text(pod, "/spec/restartPolicy") {
            "OnFailure" => RestartPolicy::OnFailure,
            "Never" => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        };
        let grace = pod
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_GRACE, Duration::from_secs);
        Ok(PodSpec {
            policy,
            grace,
            init,
            containers,
        })
    }

    fn def(&self, slot: Slot) -> &ContainerDef {
        if slot.init {
            &self.init[slot.index]
        } else {
            &self.containers[slot.index]
        }
    }

    /// Whether a container that exited with `code` runs again. Init
    /// containers rerun only on failure, and not under Never.
    fn restarts(&self, init: bool, code: i32) -> bool {
        match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Always => !init || code != 0,
        }
    }
}

/// Which container of the pod.
#[derive(Debug, Clone, Copy)]
struct Slot {
    init: bool,
    index: usize,
}

/// A pod's status as its tasks keep it, shared with the supervisor.
struct PodShared {
    namespace: String,
    name: String,
    uid: String,
    /// A std mutex: never held across an await.
    state: Mutex<PodState>,
    /// The last status sent. An async mutex held across the send, so
    /// updates leave in the order the status changed.
    last_sent: tokio::sync::Mutex<Option<Value>>,
    /// Events waiting to go with the next update.
    events: Mutex<Vec<Event>>,
    updates: mpsc::Sender<PodUpdate>,
}

impl PodShared {
    fn edit<R>(&self, f: impl FnOnce(&mut PodState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Sends the status if it changed since the last one sent, or events
    /// wait to be sent.
    async fn report(&self) {
        let mut last = self.last_sent.lock().await;
        let status = lock(&self.state).status();
        let events = std::mem::take(&mut *lock(&self.events));
        if last.as_ref() == Some(&status) && events.is_empty() {
            return;
        }
        *last = Some(status.clone());
        let update = PodUpdate {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            status,
            events,
        };
        // Closed only when the agent is shutting down.
        let _ = self.updates.send(update).await;
    }

    /// Records an Event for the pod, sent with the next update.
    async fn event(&self, kind: &'static str, reason: &'static str, message: String) {
        lock(&self.events).push((kind, reason, message));
        self.report().await;
    }

    async fn update<R>(&self, f: impl FnOnce(&mut PodState) -> R) -> R {
        let r = self.edit(f);
        self.report().await;
        r
    }

    async fn update_container<R>(
        &self,
        slot: Slot,
        f: impl FnOnce(&mut ContainerStatus) -> R,
    ) -> R {
        self.update(|s| f(s.container(slot))).await
    }
}

/// One container's status.
#[derive(Debug, Clone)]
struct ContainerStatus {
    name: String,
    image: String,
    /// Of the latest run; None until one started.
    id: Option<String>,
    /// The image the latest run started from.
    image_id: String,
    state: State,
    last: Option<Terminated>,
    restarts: u32,
    ready: bool,
    started: bool,
}

#[derive(Debug, Clone)]
enum State {
    Waiting {
        reason: &'static str,
        message: Option<String>,
    },
    Running {
        started_at: Option<String>,
    },
    Terminated(Terminated),
}

#[derive(Debug, Clone)]
struct Terminated {
    exit_code: i32,
    signal: Option<i32>,
    reason: &'static str,
    message: Option<String>,
    /// None for a container that never started (kube leaves it out).
    started_at: Option<String>,
    finished_at: Option<String>,
    id: Option<String>,
}

impl Terminated {
    fn from_exit(exit: &Exit, started_at: SystemTime, id: &str) -> Terminated {
        Terminated {
            exit_code: exit.code,
            signal: exit.signal,
            reason: if exit.oom_killed {
                "OOMKilled"
            } else if exit.code == 0 {
                "Completed"
            } else {
                "Error"
            },
            message: exit.message.clone(),
            started_at: timestamp(started_at),
            finished_at: timestamp(exit.finished_at),
            id: Some(id.to_string()),
        }
    }

    fn json(&self) -> Value {
        let mut t = json!({
            "exitCode": self.exit_code,
            "reason": self.reason,
        });
        if let Some(started) = &self.started_at {
            t["startedAt"] = json!(started);
        }
        if let Some(finished) = &self.finished_at {
            t["finishedAt"] = json!(finished);
        }
        if let Some(signal) = self.signal {
            t["signal"] = json!(signal);
        }
        if let Some(message) = &self.message {
            t["message"] = json!(message);
        }
        if let Some(id) = &self.id {
            t["containerID"] = json!(id);
        }
        t
    }
}

impl ContainerStatus {
    fn waiting(spec: &ContainerSpec, reason: &'static str) -> ContainerStatus {
        ContainerStatus {
            name: spec.name.clone(),
            image: spec.image.clone(),
            id: None,
            image_id: String::new(),
            state: State::Waiting {
                reason,
                message: None,
            },
            last: None,
            restarts: 0,
            ready: false,
            started: false,
        }
    }

    fn json(&self) -> Value {
        let state = match &self.state {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => match started_at {
                Some(t) => json!({"running": {"startedAt": t}}),
                None => json!({"running": {}}),
            },
            State::Terminated(t) => json!({"terminated": t.json()}),
        };
        let last = self
            .last
            .as_ref()
            .map_or(json!({}), |t| json!({"terminated": t.json()}));
        let mut c = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restarts,
            "state": state,
            "lastState": last,
        });
        if let Some(id) = &self.id {
            c["containerID"] = json!(id);
        }
        c
    }

    /// Terminated, or waiting to restart after a termination.
    fn last_exit(&self) -> Option<i32> {
        match (&self.state, &self.last) {
            (State::Terminated(t), _) => Some(t.exit_code),
            (State::Waiting { .. }, Some(t)) => Some(t.exit_code),
            _ => None,
        }
    }
}

/// Everything the pod's status is computed from.
struct PodState {
    policy: RestartPolicy,
    init: Vec<ContainerStatus>,
    containers: Vec<ContainerStatus>,
    initialized: bool,
    /// Told to stop (deletion): nothing restarts, and the pod ends terminal.
    terminating: bool,
    /// Every container is done for good (the pod task ended).
    finished: bool,
    start_time: String,
    node_ip: String,
    /// The sandbox's IP (the node's for host network); None until the
    /// sandbox is ready, when kube shows none.
    pod_ip: Option<String>,
    /// Condition type → (status, lastTransitionTime).
    transitions: HashMap<&'static str, (bool, String)>,
    scheduled: Value,
    qos_class: Option<Value>,
}

impl PodState {
    fn new(pod: &Value, spec: &PodSpec, node_ip: &str) -> PodState {
        let start_time = now();
        let first = if spec.init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let scheduled = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
            .cloned()
            .unwrap_or_else(|| {
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": start_time})
            });
        PodState {
            policy: spec.policy,
            init: spec
                .init
                .iter()
                .map(|c| ContainerStatus::waiting(&c.spec, "PodInitializing"))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| ContainerStatus::waiting(&c.spec, first))
                .collect(),
            initialized: spec.init.is_empty(),
            terminating: false,
            finished: false,
            start_time,
            node_ip: node_ip.to_string(),
            pod_ip: None,
            transitions: HashMap::new(),
            scheduled,
            qos_class: pod.pointer("/status/qosClass").cloned(),
        }
    }

    fn container(&mut self, slot: Slot) -> &mut ContainerStatus {
        if slot.init {
            &mut self.init[slot.index]
        } else {
            &mut self.containers[slot.index]
        }
    }

    /// The kubelet's getPhase.
    fn phase(&self) -> &'static str {
        let (mut pending_init, mut failed_init) = (false, false);
        for c in &self.init {
            match (&c.state, c.last_exit()) {
                (State::Running { .. }, _) | (_, None) => pending_init = true,
                (_, Some(code)) => failed_init |= code != 0,
            }
        }
        if failed_init && self.policy == RestartPolicy::Never {
            return "Failed";
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for c in &self.containers {
            match (&c.state, c.last_exit()) {
                (State::Running { .. }, _) => running += 1,
                (State::Terminated(t), _) => {
                    stopped += 1;
                    succeeded += usize::from(t.exit_code == 0);
                }
                (State::Waiting { .. }, Some(_)) => stopped += 1,
                (State::Waiting { .. }, None) => waiting += 1,
            }
        }
        if pending_init || waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped == 0 {
            "Pending"
        } else if self.terminating && self.finished {
            // A deleted pod ends terminal whatever its restart policy.
            if stopped == succeeded {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if self.policy == RestartPolicy::Always {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if self.policy == RestartPolicy::Never {
            "Failed"
        } else {
            "Running"
        }
    }

    /// The full `.status`, updating condition transition times.
    fn status(&mut self) -> Value {
        let phase = self.phase();
        let completed = matches!(phase, "Succeeded" | "Failed");
        let names = |cs: &[ContainerStatus], keep: &dyn Fn(&ContainerStatus) -> bool| {
            cs.iter()
                .filter(|c| keep(c))
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let unready = names(&self.containers, &|c| !c.ready);
        let uninitialized = names(
            &self.init,
            &|c| !matches!(&c.state, State::Terminated(t) if t.exit_code == 0),
        );
        let ready = self.containers.iter().all(|c| c.ready) && !completed;
        let ready_why = if completed {
            Some(("PodCompleted", None))
        } else if !ready {
            Some((
                "ContainersNotReady",
                Some(format!("containers with unready status: [{unready}]")),
            ))
        } else {
            None
        };
        let init_why = (!self.initialized).then(|| {
            (
                "ContainersNotInitialized",
                Some(format!(
                    "containers with incomplete status: [{uninitialized}]"
                )),
            )
        });
        let mut conditions = vec![
            self.condition(
                "PodReadyToStartContainers",
                !(self.terminating && self.finished),
                None,
            ),
            self.condition("Initialized", self.initialized, init_why),
            self.condition("Ready", ready, ready_why.clone()),
            self.condition("ContainersReady", ready, ready_why),
        ];
        conditions.push(self.scheduled.clone());
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.node_ip,
            "hostIPs": [{"ip": self.node_ip}],
            "startTime": self.start_time,
            "containerStatuses": self.containers.iter().map(ContainerStatus::json).collect::<Vec<_>>(),
        });
        if let Some(ip) = &self.pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if !self.init.is_empty() {
            status["initContainerStatuses"] = self.init.iter().map(ContainerStatus::json).collect();
        }
        if let Some(qos) = &self.qos_class {
            status["qosClass"] = qos.clone();
        }
        status
    }

    fn condition(
        &mut self,
        kind: &'static str,
        ok: bool,
        why: Option<(&'static str, Option<String>)>,
    ) -> Value {
        let entry = self.transitions.entry(kind).or_insert_with(|| (ok, now()));
        if entry.0 != ok {
            *entry = (ok, now());
        }
        let mut c = json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        });
        if let Some((reason, message)) = why {
            c["reason"] = json!(reason);
            if let Some(m) = message {
                c["message"] = json!(m);
            }
        }
        c
    }
}

/// What one pod's tasks share.
#[derive(Clone)]
struct PodRun {
    /// The core/v1 Pod as first seen.
    pod: Arc<Value>,
    shared: Arc<PodShared>,
    runtime: Arc<dyn Runtime>,
    sources: Option<Arc<dyn Sources>>,
    /// Set up once the sandbox is.
    volumes: Option<Arc<PodVolumes>>,
    spec: Arc<PodSpec>,
    dir: PathBuf,
    backoff: Backoff,
    /// Some(grace) once the pod is to stop.
    stop: watch::Receiver<Option<Duration>>,
}

/// How one run of a container ended.
struct RunEnd {
    terminated: Terminated,
    /// Ended because the pod was told to stop.
    stopped: bool,
}

impl PodRun {
    /// The pod's task: its sandbox, init containers in order, then all
    /// containers; the sandbox is removed once they are done for good.
    async fn run_pod(mut self) {
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            // Its containers will fail to start, which shows in the status.
            tracing::error!(dir = %self.dir.display(), error = %e, "creating the pod directory failed");
        }
        self.shared.report().await;
        if let Some(sandbox) = self.sandbox().await {
            if self.sources.is_none() || self.set_up_volumes().await {
                let refresh = self
                    .volumes
                    .clone()
                    .map(|v| tokio::spawn(self.clone().refresh(v)));
                self.run_containers(&sandbox).await;
                if let Some(task) = refresh {
                    task.abort();
                }
            }
            self.shared.update(|s| s.finished = true).await;
            sandbox.remove().await;
        } else {
            self.shared.update(|s| s.finished = true).await;
        }
        tracing::info!(pod = %self.shared.name, namespace = %self.shared.namespace, "pod finished");
    }

    /// The pod's sandbox, retried with back-off until it is made; None if
    /// the pod is stopped first.
    async fn sandbox(&self) -> Option<Arc<dyn Sandbox>> {
        let spec = SandboxSpec {
            pod: (*self.pod).clone(),
            dir: self.dir.clone(),
        };
        let mut delay = self.backoff.base;
        let mut stop = self.stop.clone();
        loop {
            if stop.borrow().is_some() {
                return None;
            }
            match self.runtime.sandbox(&spec).await {
                Ok(sandbox) => {
                    let ip = sandbox
                        .ip()
                        .unwrap_or_else(|| lock(&self.shared.state).node_ip.clone());
                    self.shared.update(|s| s.pod_ip = Some(ip)).await;
                    return Some(sandbox);
                }
                Err(e) => {
                    tracing::warn!(pod = %self.shared.name, namespace = %self.shared.namespace, error = %e, "creating the pod sandbox failed");
                    let message = format!("Failed to create pod sandbox: {}", e.message);
                    self.shared
                        .event("Warning", "FailedCreatePodSandBox", message)
                        .await;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopped(&mut stop) => return None,
            }
            delay = (delay * 2).min(self.backoff.cap);
        }
    }

    /// The pod as its containers see it: with its IPs in the status.
    fn pod_view(&self) -> Value {
        let mut pod = (*self.pod).clone();
        let state = lock(&self.shared.state);
        if let Some(ip) = &state.pod_ip {
            pod["status"]["podIP"] = json!(ip);
            pod["status"]["podIPs"] = json!([{"ip": ip}]);
        }
        pod["status"]["hostIP"] = json!(state.node_ip);
        pod["status"]["hostIPs"] = json!([{"ip": state.node_ip}]);
        pod
    }

    /// Sets up the pod's volumes, retried with back-off (each failure an
    /// event, as the kubelet's FailedMount); false if the pod is stopped
    /// first.
    async fn set_up_volumes(&mut self) -> bool {
        let Some(sources) = self.sources.clone() else {
            return true;
        };
        let mut delay = self.backoff.base;
        let mut stop = self.stop.clone();
        loop {
            match PodVolumes::setup(&self.pod_view(), &self.dir, sources.as_ref()).await {
                Ok(volumes) => {
                    self.volumes = Some(Arc::new(volumes));
                    return true;
                }
                Err(message) => {
                    tracing::warn!(pod = %self.shared.name, namespace = %self.shared.namespace, error = %message, "setting up the pod's volumes failed");
                    self.shared.event("Warning", "FailedMount", message).await;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopped(&mut stop) => return false,
            }
            delay = (delay * 2).min(self.backoff.cap);
        }
    }

    /// Keeps configMap, secret and downwardAPI volumes in step with the API.
    async fn refresh(self, volumes: Arc<PodVolumes>) {
        let Some(sources) = self.sources.clone() else {
            return;
        };
        loop {
            tokio::time::sleep(VOLUME_REFRESH).await;
            volumes.refresh(&self.pod_view(), sources.as_ref()).await;
        }
    }

    /// The spec of run `attempt` of a container: its env from the API
    /// objects it names, its volume mounts.
    async fn prepare(&self, def: &ContainerDef, attempt: u32) -> Result<ContainerSpec, StartError> {
        let spec = def.spec.clone().for_attempt(attempt);
        let Some(sources) = &self.sources else {
            return Ok(spec);
        };
        let config_error = |m: String| StartError::waiting("CreateContainerConfigError", m);
        let pod = self.pod_view();
        let services = sources
            .services(&self.shared.namespace)
            .await
            .map_err(config_error)?;
        let env = crate::env::container_env(&pod, &spec.container, sources.as_ref(), &services)
            .await
            .map_err(config_error)?;
        let mut spec = spec.with_env(env);
        if let Some(volumes) = &self.volumes {
            spec.mounts = volumes.mounts(&spec.container).map_err(config_error)?;
        }
        spec.pull_auth = crate::pull_secrets::for_image(&pod, &spec.image, sources.as_ref()).await;
        Ok(spec)
    }

    /// Init containers in order, then all containers side by side.
    async fn run_containers(&self, sandbox: &Arc<dyn Sandbox>) {
        let mut initialized = true;
        for index in 0..self.spec.init.len() {
            let slot = Slot { init: true, index };
            if self.clone().run_container(slot, sandbox.clone()).await != Some(0) {
                initialized = false;
                break;
            }
        }
        if initialized && self.stop.borrow().is_none() {
            self.shared
                .update(|s| {
                    s.initialized = true;
                    for c in &mut s.containers {
                        c.state = State::Waiting {
                            reason: "ContainerCreating",
                            message: None,
                        };
                    }
                })
                .await;
            let mut tasks = tokio::task::JoinSet::new();
            for index in 0..self.spec.containers.len() {
                let slot = Slot { init: false, index };
                tasks.spawn(self.clone().run_container(slot, sandbox.clone()));
            }
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Runs a container, restarting it per the policy, until it is done
    /// for good. Returns its last exit code; None if it never ran.
    async fn run_container(mut self, slot: Slot, sandbox: Arc<dyn Sandbox>) -> Option<i32> {
        // An owned handle, so `def` does not borrow `self`.
        let pod_spec = self.spec.clone();
        let def = pod_spec.def(slot);
        let mut backoff: Option<(Duration, Instant)> = None;
        let mut waiting_delay = self.backoff.base;
        let mut exit_code = None;
        let mut adopted = self.adopt(slot, &*sandbox).await;
        loop {
            if self.stop.borrow().is_some() {
                return exit_code;
            }
            let run = self.shared.edit(|s| s.container(slot).restarts);
            let spec = if adopted.is_some() {
                Ok(def.spec.clone().for_attempt(run))
            } else {
                self.prepare(def, run).await
            };
            if let Some(old) = run.checked_sub(2) {
                // Only the current and the previous run's logs are kept.
                let old = def.spec.clone().for_attempt(old).log_path;
                let _ = tokio::fs::remove_file(old.with_extension("log.1")).await;
                let _ = tokio::fs::remove_file(old).await;
            }
            let was_adopted = adopted.is_some();
            let started = match (adopted.take(), &spec) {
                (Some(container), _) => Ok(container),
                (None, Ok(spec)) => sandbox.start(spec).await,
                (None, Err(e)) => Err(e.clone()),
            };
            let spec = spec.unwrap_or_else(|_| def.spec.clone().for_attempt(run));
            let end = match started {
                Ok(container) => {
                    if !was_adopted {
                        for (reason, message) in container.start_events() {
                            lock(&self.shared.events).push(("Normal", reason, message));
                        }
                        let message = format!("Created container {}", spec.name);
                        self.shared.event("Normal", "Created", message).await;
                    }
                    self.run_started(slot, container).await
                }
                Err(e) if !e.ran() => {
                    tracing::warn!(pod = %self.shared.name, container = %spec.name, reason = e.reason, error = %e, "container cannot be created yet");
                    if !self.wait_to_retry(slot, &spec, e, waiting_delay).await {
                        return exit_code;
                    }
                    waiting_delay = (waiting_delay * 2).min(self.backoff.cap);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(pod = %self.shared.name, container = %spec.name, error = %e, "container failed to start");
                    RunEnd {
                        terminated: Terminated {
                            exit_code: 128,
                            signal: None,
                            reason: "StartError",
                            message: Some(e.message),
                            // It never started: kube has no start time to show.
                            started_at: None,
                            finished_at: Some(now()),
                            id: None,
                        },
                        stopped: false,
                    }
                }
            };
            let terminated = end.terminated;
            exit_code = Some(terminated.exit_code);
            let restart = !end.stopped && self.spec.restarts(slot.init, terminated.exit_code);
            self.shared
                .update_container(slot, |c| {
                    c.state = State::Terminated(terminated.clone());
                    c.ready = slot.init && terminated.exit_code == 0;
                    c.started = false;
                })
                .await;
            if !restart {
                return exit_code;
            }
            let now = Instant::now();
            match backoff {
                // The kubelet restarts at once after the first crash, or one
                // after a long run, and backs off from the second on.
                Some((delay, since)) if now.duration_since(since) <= self.backoff.cap * 2 => {
                    let message = format!(
                        "back-off {} restarting failed container={} pod={}_{}({})",
                        go_duration(delay),
                        spec.name,
                        self.shared.name,
                        self.shared.namespace,
                        self.shared.uid
                    );
                    let older = self
                        .shared
                        .update_container(slot, |c| {
                            c.state = State::Waiting {
                                reason: "CrashLoopBackOff",
                                message: Some(message),
                            };
                            c.last.replace(terminated.clone())
                        })
                        .await;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut self.stop) => {
                            self.shared
                                .update_container(slot, |c| {
                                    c.state = State::Terminated(terminated);
                                    c.last = older;
                                })
                                .await;
                            return exit_code;
                        }
                    }
                    backoff = Some(((delay * 2).min(self.backoff.cap), Instant::now()));
                }
                _ => backoff = Some((self.backoff.base, now)),
            }
            self.shared.edit(|s| {
                let c = s.container(slot);
                c.last = Some(terminated);
                c.restarts += 1;
            });
        }
    }

    /// The container a previous agent run started in this sandbox, taken
    /// over with its restart count.
    async fn adopt(&self, slot: Slot, sandbox: &dyn Sandbox) -> Option<Arc<dyn Container>> {
        let name = &self.spec.def(slot).spec.name;
        let (container, restarts) = sandbox.adopt(name).await?;
        tracing::info!(pod = %self.shared.name, namespace = %self.shared.namespace, container = %name, id = container.id(), restarts, "adopted a running container");
        self.shared.edit(|s| s.container(slot).restarts = restarts);
        Some(container)
    }

    /// Shows why a container cannot be created (a pull that failed, a
    /// missing configMap...) and waits `delay` before the next try. False
    /// if the pod was stopped meanwhile.
    async fn wait_to_retry(
        &mut self,
        slot: Slot,
        spec: &ContainerSpec,
        error: StartError,
        delay: Duration,
    ) -> bool {
        self.shared
            .update_container(slot, |c| {
                c.state = State::Waiting {
                    reason: error.reason,
                    message: Some(error.message.clone()),
                }
            })
            .await;
        let mut delay = delay;
        if error.reason == "ErrImagePull" {
            // The kubelet shows the failure, then its back-off.
            let shown = Duration::from_secs(1).min(delay);
            tokio::select! {
                () = tokio::time::sleep(shown) => {}
                _ = stopped(&mut self.stop) => return false,
            }
            delay -= shown;
            let message = format!("Back-off pulling image {:?}", spec.image);
            self.shared
                .update_container(slot, |c| {
                    c.state = State::Waiting {
                        reason: "ImagePullBackOff",
                        message: Some(message),
                    }
                })
                .await;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            _ = stopped(&mut self.stop) => false,
        }
    }

    /// Watches a started container until it exits, a probe kills it, or
    /// the pod stops.
    async fn run_started(&mut self, slot: Slot, container: Arc<dyn Container>) -> RunEnd {
        // An owned handle, so `def` does not borrow `self`.
        let pod_spec = self.spec.clone();
        let def = pod_spec.def(slot);
        let started = Instant::now();
        let id = container.id().to_string();
        let image_id = container.image_id();
        let started_at = container.started_at();
        let no_startup = slot.init || def.startup.is_none();
        self.shared
            .update_container(slot, |c| {
                c.id = Some(id.clone());
                c.image_id = image_id;
                c.state = State::Running {
                    started_at: timestamp(started_at),
                };
                c.started = !slot.init && no_startup;
                c.ready = no_startup && !slot.init && def.readiness.is_none();
            })
            .await;
        let stop = &mut self.stop;
        let (exit, stopped) = tokio::select! {
            exit = container.wait() => (exit, false),
            why = watch_probes(&self.shared, slot, def, started, probe_context(&container, &self.shared)), if !slot.init => {
                tracing::info!(pod = %self.shared.name, container = %def.spec.name, why, "killing container");
                (kill(&*container, self.spec.grace, stop).await, false)
            }
            grace = stopped(stop) => (kill(&*container, grace, stop).await, true),
        };
        RunEnd {
            terminated: Terminated::from_exit(&exit, started_at, &id),
            stopped,
        }
    }
}

/// Runs a container's probes, keeping its started and ready flags; resolves
/// (with the reason) only when a startup or liveness probe fails.
async fn watch_probes(
    shared: &PodShared,
    slot: Slot,
    def: &ContainerDef,
    started: Instant,
    ctx: ProbeContext,
) -> String {
    if let Some(probe) = &def.startup {
        let mut prober = Prober::new(probe.clone(), started, None);
        loop {
            match prober.step(&ctx).await {
                Some(true) => break,
                Some(false) => return failed("Startup", &prober),
                None => {}
            }
        }
        let ready = def.readiness.is_none();
        shared
            .update_container(slot, |c| {
                c.started = true;
                c.ready = ready;
            })
            .await;
    }
    let liveness = async {
        let Some(probe) = &def.liveness else {
            return std::future::pending().await;
        };
        let mut prober = Prober::new(probe.clone(), started, Some(true));
        loop {
            if prober.step(&ctx).await == Some(false) {
                return failed("Liveness", &prober);
            }
        }
    };
    let readiness = async {
        let Some(probe) = &def.readiness else {
            return std::future::pending().await;
        };
        let mut prober = Prober::new(probe.clone(), started, Some(false));
        loop {
            if let Some(ready) = prober.step(&ctx).await {
                shared.update_container(slot, |c| c.ready = ready).await;
            }
        }
    };
    tokio::select! {
        why = liveness => why,
        why = readiness => why,
    }
}

/// Probes exec in the container and dial the pod's IP (loopback for host
/// processes, which share the node's network).
fn probe_context(container: &Arc<dyn Container>, shared: &PodShared) -> ProbeContext {
    let state = lock(&shared.state);
    let host = match &state.pod_ip {
        Some(ip) if *ip != state.node_ip => ip.clone(),
        _ => "127.0.0.1".to_string(),
    };
    drop(state);
    ProbeContext {
        exec: container.clone(),
        host,
    }
}

fn failed(kind: &str, prober: &Prober) -> String {
    format!(
        "{kind} probe failed: {}",
        prober.last_error().unwrap_or_default()
    )
}

/// Resolves with the grace period once the pod is told to stop.
async fn stopped(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    // Copied out at once: the borrow guard must not live across an await.
    let grace = stop
        .wait_for(Option::is_some)
        .await
        .map(|g| g.unwrap_or_default());
    match grace {
        Ok(grace) => grace,
        // The supervisor is gone: nobody can stop the pod any more.
        Err(_) => std::future::pending().await,
    }
}

/// SIGTERM, then SIGKILL after `grace`; a stop request meanwhile can only
/// shorten the wait.
async fn kill(
    container: &dyn Container,
    grace: Duration,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> Exit {
    let mut deadline = Instant::now() + grace;
    let mut listening = true;
    if !grace.is_zero() {
        container.signal(Signal::Term);
    }
    loop {
        tokio::select! {
            exit = container.wait() => return exit,
            () = tokio::time::sleep_until(deadline) => break,
            changed = stop.changed(), if listening => match changed {
                Ok(()) => {
                    if let Some(grace) = *stop.borrow_and_update() {
                        deadline = deadline.min(Instant::now() + grace);
                    }
                }
                Err(_) => listening = false,
            },
        }
    }
    container.signal(Signal::Kill);
    container.wait().await
}

/// A duration as Go prints it ("10s", "2m40s", "5m0s", "100ms"), as the
/// kubelet's back-off message shows it.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let frac = ms % 1000;
    let mut s = (secs % 60).to_string();
    if frac > 0 {
        s = format!("{s}.{}", format!("{frac:03}").trim_end_matches('0'));
    }
    match (secs / 3600, secs % 3600 / 60) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessRuntime;

    const WAIT: Duration = Duration::from_secs(10);

    struct Harness {
        supervisor: Supervisor,
        updates: mpsc::Receiver<PodUpdate>,
        dir: tempfile::TempDir,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (supervisor, updates) = Supervisor::new(
            dir.path().to_path_buf(),
            Arc::new(ProcessRuntime),
            "10.0.0.7".into(),
        );
        let supervisor =
            supervisor.with_backoff(Duration::from_millis(100), Duration::from_millis(400));
        Harness {
            supervisor,
            updates,
            dir,
        }
    }

    /// A pod named `uid` in namespace `ns`, with `spec` as its spec.
    fn pod(uid: &str, spec: Value) -> Value {
        json!({"metadata": {"name": uid, "namespace": "ns", "uid": uid}, "spec": spec})
    }

    fn one(command: &[&str], policy: &str) -> Value {
        json!({"restartPolicy": policy, "containers": [{"name": "c", "image": "busybox", "command": command}]})
    }

    impl Harness {
        /// The first status sent that satisfies `check`.
        async fn until(&mut self, check: impl Fn(&Value) -> bool) -> Value {
            let wait = async {
                loop {
                    let update = self.updates.recv().await.expect("updates flow");
                    if check(&update.status) {
                        return update.status;
                    }
                }
            };
            tokio::time::timeout(WAIT, wait)
                .await
                .expect("the expected status arrives in time")
        }
    }

    fn phase(s: &Value) -> &str {
        text(s, "/phase")
    }

    fn state<'a>(s: &'a Value, key: &str) -> &'a Value {
        &s["containerStatuses"][0]["state"][key]
    }

    #[tokio::test]
    async fn completed_pod_succeeds_and_keeps_its_log() {
        let mut h = harness();
        h.supervisor.sync(&pod(
            "a",
            one(&["sh", "-c", "echo hello from $HOSTNAME"], "Never"),
        ));
        let first = h.until(|_| true).await;
        assert_eq!(phase(&first), "Pending");
        assert_eq!(state(&first, "waiting")["reason"], "ContainerCreating");
        let done = h.until(|s| phase(s) == "Succeeded").await;
        let t = state(&done, "terminated");
        assert_eq!(
            (t["exitCode"].as_i64(), t["reason"].as_str()),
            (Some(0), Some("Completed"))
        );
        assert_eq!(done["podIP"], "10.0.0.7");
        let ready = done["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("PodCompleted"))
        );
        let log = h.supervisor.log_path("ns", "a", "c", false).unwrap();
        assert_eq!(std::fs::read_to_string(log).unwrap(), "hello from a\n");
        assert_eq!(h.supervisor.log_path("ns", "a", "c", true), None);
        assert_eq!(
            h.supervisor.containers("ns", "a"),
            Some(vec!["c".to_string()])
        );
        h.supervisor.remove("a").await;
        assert!(h.supervisor.uids().is_empty());
    }

    #[tokio::test]
    async fn failing_container_crash_loops() {
        let mut h = harness();
        h.supervisor
            .sync(&pod("b", one(&["sh", "-c", "exit 1"], "Always")));
        let s = h
            .until(|s| state(s, "waiting")["reason"] == "CrashLoopBackOff")
            .await;
        assert_eq!(phase(&s), "Running");
        assert_eq!(
            state(&s, "waiting")["message"],
            "back-off 100ms restarting failed container=c pod=b_ns(b)"
        );
        let last = &s["containerStatuses"][0]["lastState"]["terminated"];
        assert_eq!(
            (last["exitCode"].as_i64(), last["reason"].as_str()),
            (Some(1), Some("Error"))
        );
        h.until(|s| s["containerStatuses"][0]["restartCount"].as_u64() >= Some(3))
            .await;
        h.supervisor.remove("b").await;
    }

    #[tokio::test]
    async fn missing_command_is_a_start_error() {
        let mut h = harness();
        h.supervisor.sync(&pod("c", one(&["nosuchcmd"], "Never")));
        let s = h.until(|s| phase(s) == "Failed").await;
        let t = state(&s, "terminated");
        assert_eq!(
            (t["exitCode"].as_i64(), t["reason"].as_str()),
            (Some(128), Some("StartError"))
        );
        assert!(
            t["message"]
                .as_str()
                .unwrap()
                .contains("executable file not found in $PATH")
        );
        // It never started: no 1970 start time, as kube leaves it out.
        assert_eq!(t.get("startedAt"), None, "{t}");
        assert!(
            t["finishedAt"]
                .as_str()
                .is_some_and(|f| !f.starts_with("1970"))
        );
        h.supervisor.remove("c").await;
    }

    #[tokio::test]
    async fn a_start_error_in_last_state_has_no_start_time() {
        let mut h = harness();
        h.supervisor.sync(&pod("c2", one(&["nosuchcmd"], "Always")));
        let s = h
            .until(|s| state(s, "waiting")["reason"] == "CrashLoopBackOff")
            .await;
        let last = &s["containerStatuses"][0]["lastState"]["terminated"];
        assert_eq!(last["reason"], "StartError");
        assert_eq!(last.get("startedAt"), None, "{last}");
        assert!(last["finishedAt"].is_string());
        h.supervisor.remove("c2").await;
    }

    #[tokio::test]
    async fn names_that_are_no_labels_are_refused() {
        let mut h = harness();
        let outside = h.dir.path().join("outside");
        let traversal = format!("../{}", "outside");
        let bad = |uid: &str, names: &[&str]| {
            let containers: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "image": "busybox", "command": ["sh", "-c", "echo hi"]}))
                .collect();
            pod(
                uid,
                json!({"restartPolicy": "Never", "containers": containers}),
            )
        };
        h.supervisor.sync(&bad("t1", &[&traversal]));
        let s = h.until(|_| true).await;
        assert_eq!(
            (phase(&s), s["reason"].as_str()),
            ("Failed", Some("InvalidName"))
        );
        assert!(
            s["message"].as_str().unwrap().starts_with(
                "Pod was rejected: container name \"../outside\" is not a DNS-1123 label"
            ),
            "{s}"
        );
        // Two containers of one name would share their files.
        h.supervisor.sync(&bad("t2", &["c", "c"]));
        let s = h.until(|_| true).await;
        assert_eq!(
            s["message"],
            "Pod was rejected: container name \"c\" is used twice"
        );
        // A uid that would leave the pods directory.
        let mut escaping = bad("t3", &["c"]);
        escaping["metadata"]["uid"] = json!("../../etc");
        h.supervisor.sync(&escaping);
        let s = h.until(|_| true).await;
        assert!(
            s["message"].as_str().unwrap().contains("uid \"../../etc\""),
            "{s}"
        );
        // Refused once: a later sync sends nothing, runs nothing.
        h.supervisor.sync(&bad("t1", &[&traversal]));
        assert!(h.updates.try_recv().is_err());
        assert!(h.supervisor.uids().is_empty());
        assert!(!outside.exists());
        assert_eq!(std::fs::read_dir(h.dir.path()).unwrap().count(), 0);
        assert_eq!(h.supervisor.log_path("ns", "t1", &traversal, false), None);
    }

    #[tokio::test]
    async fn terminate_sends_sigterm() {
        let mut h = harness();
        h.supervisor
            .sync(&pod("d", one(&["sleep", "1000"], "Always")));
        h.until(|s| phase(s) == "Running").await;
        let began = std::time::Instant::now();
        h.supervisor.terminate("d", Duration::from_secs(5)).await;
        assert!(began.elapsed() < Duration::from_secs(2));
        let s = h.until(|s| phase(s) == "Failed").await;
        assert_eq!(state(&s, "terminated")["exitCode"], 143);
        assert_eq!(h.supervisor.uids(), ["d"]);
        h.supervisor.remove("d").await;
        assert!(h.supervisor.uids().is_empty());
    }

    #[tokio::test]
    async fn terminate_kills_after_the_grace() {
        let mut h = harness();
        h.supervisor.sync(&pod(
            "e",
            one(
                &["sh", "-c", "trap '' TERM; echo trapped; sleep 1000"],
                "Always",
            ),
        ));
        h.until(|s| phase(s) == "Running").await;
        // Let the shell set its trap.
        let log = h.dir.path().join("e/c/0.log");
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let began = std::time::Instant::now();
        h.supervisor
            .terminate("e", Duration::from_millis(300))
            .await;
        assert!(began.elapsed() >= Duration::from_millis(300));
        let s = h.until(|s| phase(s) == "Failed").await;
        assert_eq!(state(&s, "terminated")["exitCode"], 137);
        h.supervisor.remove("e").await;
    }

    #[tokio::test]
    async fn readiness_probe_flips_ready() {
        let mut h = harness();
        let spec = json!({"containers": [{
            "name": "c", "image": "busybox",
            "command": ["sh", "-c", "sleep 0.2; touch ready; sleep 1000"],
            "readinessProbe": {"exec": {"command": ["test", "-f", "ready"]}, "periodSeconds": 1},
        }]});
        h.supervisor.sync(&pod("f", spec));
        let running = h.until(|s| phase(s) == "Running").await;
        assert_eq!(running["containerStatuses"][0]["ready"], false);
        let ready = h
            .until(|s| s["containerStatuses"][0]["ready"] == true)
            .await;
        let cond = ready["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(cond["status"], "True");
        h.supervisor.remove("f").await;
    }

    #[tokio::test]
    async fn liveness_failure_restarts() {
        let mut h = harness();
        let spec = json!({"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "busybox", "command": ["sleep", "1000"],
            "livenessProbe": {"exec": {"command": ["false"]}, "failureThreshold": 1},
        }]});
        h.supervisor.sync(&pod("g", spec));
        let s = h
            .until(|s| s["containerStatuses"][0]["restartCount"] == 1)
            .await;
        assert_eq!(
            s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
            143
        );
        h.supervisor.remove("g").await;
    }

    #[tokio::test]
    async fn previous_log_after_a_restart() {
        let mut h = harness();
        h.supervisor = h
            .supervisor
            .with_backoff(Duration::from_secs(5), Duration::from_secs(5));
        let count = "n=$(cat n 2>/dev/null || echo 0); echo run$n; echo $((n+1)) > n; exit 1";
        h.supervisor
            .sync(&pod("h", one(&["sh", "-c", count], "OnFailure")));
        h.until(|s| state(s, "waiting")["reason"] == "CrashLoopBackOff")
            .await;
        let read = |previous| {
            std::fs::read_to_string(h.supervisor.log_path("ns", "h", "c", previous).unwrap())
                .unwrap()
        };
        assert_eq!(
            (read(false).as_str(), read(true).as_str()),
            ("run1\n", "run0\n")
        );
        h.supervisor.remove("h").await;
        assert!(!h.dir.path().join("h").exists());
    }

    #[tokio::test]
    async fn init_containers_run_first() {
        let mut h = harness();
        let spec = json!({"restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "busybox", "command": ["sh", "-c", "echo hi > f"]}],
            "containers": [{"name": "c", "image": "busybox", "command": ["cat", "f"]}]});
        h.supervisor.sync(&pod("i", spec));
        let first = h.until(|_| true).await;
        assert_eq!(state(&first, "waiting")["reason"], "PodInitializing");
        let done = h.until(|s| phase(s) == "Succeeded").await;
        let init = &done["initContainerStatuses"][0];
        assert_eq!(
            (
                init["state"]["terminated"]["reason"].as_str(),
                init["ready"].as_bool()
            ),
            (Some("Completed"), Some(true))
        );
        let log = h.supervisor.log_path("ns", "i", "c", false).unwrap();
        assert_eq!(std::fs::read_to_string(log).unwrap(), "hi\n");
        h.supervisor.remove("i").await;
    }

    #[test]
    fn durations_print_like_go() {
        let s = Duration::from_secs;
        assert_eq!(go_duration(s(10)), "10s");
        assert_eq!(go_duration(s(160)), "2m40s");
        assert_eq!(go_duration(s(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(100)), "100ms");
    }
}
