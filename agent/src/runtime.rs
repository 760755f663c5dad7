//! How pods run, behind a seam: a `Runtime` makes each pod's `Sandbox`
//! (its namespaces and network) and starts `Container`s in it. The CRI
//! runtime (`cri::runtime`) runs them on containerd; the process runtime
//! (`process`) runs each container's command as a host process, for
//! machines without a container engine.
//!
//! `ContainerSpec` is what the supervisor asks a runtime to start: read
//! once from the core/v1 Container, with the run's attempt, log file,
//! environment and mounts filled in per start.

use std::collections::HashSet;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// A boxed future, so `Runtime` stays usable as `dyn Runtime`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The most a container log file holds (the kubelet's `containerLogMaxSize`).
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// Runs pods: a sandbox per pod (its namespaces and network), then its
/// containers inside it.
pub trait Runtime: Send + Sync {
    /// Makes the pod's sandbox, or finds the one a previous agent run
    /// made; resolves once it is ready.
    fn sandbox<'a>(
        &'a self,
        pod: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn Sandbox>, StartError>>;
    /// Removes what a previous run left for pods not in `keep` (uids).
    fn forget_others<'a>(&'a self, keep: &'a HashSet<String>) -> BoxFuture<'a, ()>;
    /// How container logs are written.
    fn log_format(&self) -> LogFormat;
    /// The runtime and its version, as the Node shows them
    /// (`containerd://1.6.20`).
    fn version(&self) -> String;
    /// Where the runtime serves an exec, attach or port-forward stream:
    /// a URL of its streaming server, or why it cannot.
    fn stream_url<'a>(
        &'a self,
        request: &'a StreamRequest,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// A stream `kubectl exec`, `attach` or `port-forward` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec {
        /// The runtime's ID (no `containerd://`).
        container_id: String,
        command: Vec<String>,
        stdio: Stdio,
    },
    Attach {
        container_id: String,
        stdio: Stdio,
    },
    PortForward {
        pod_uid: String,
        ports: Vec<i32>,
    },
}

/// Which standard streams a stream carries, and whether it is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stdio {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// How a runtime writes container logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// The container's bytes as it wrote them.
    Raw,
    /// The CRI format: `TIMESTAMP STREAM P|F TEXT` per line.
    Cri,
}

/// What a sandbox is made from.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The core/v1 Pod.
    pub pod: Value,
    /// The pod's directory on the node (its logs below it).
    pub dir: PathBuf,
}

/// A pod's sandbox.
pub trait Sandbox: Send + Sync {
    /// The pod's IP; None when it uses the node's network.
    fn ip(&self) -> Option<String>;
    /// Starts the container `spec` describes; resolves once it runs.
    fn start<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn Container>, StartError>>;
    /// The newest container named `name` that a previous agent run
    /// started here, running or exited, with its restart count.
    fn adopt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<(Arc<dyn Container>, u32)>>;
    /// Stops and removes the sandbox once its containers are done.
    fn remove(&self) -> BoxFuture<'_, ()>;
}

/// A started container.
pub trait Container: ExecSync {
    /// The status `containerID`, e.g. `containerd://0f3a...`.
    fn id(&self) -> &str;
    /// The status `imageID`.
    fn image_id(&self) -> String;
    /// When it started.
    fn started_at(&self) -> SystemTime;
    /// Signals every process of the container; a no-op once it has exited.
    fn signal(&self, signal: Signal);
    /// Resolves when the container has exited; may be called any number of times.
    fn wait(&self) -> BoxFuture<'_, Exit>;
    /// What starting it took that the pod's events should say, before
    /// `Created` (the kubelet's `Pulled`): (reason, message).
    fn start_events(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Runs a command inside a container and waits for it (exec probes).
pub trait ExecSync: Send + Sync {
    fn exec_sync<'a>(
        &'a self,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, String>>;
}

/// What an exec'd command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    /// stdout then stderr.
    pub output: Vec<u8>,
}

/// The signals the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    pub(crate) fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal for a signal death (as containerd reports it).
    pub code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub finished_at: SystemTime,
    /// The kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
    /// What it left in its termination message file (or, with
    /// `FallbackToLogsOnError`, the end of its log after a failure).
    pub message: Option<String>,
}

impl Exit {
    pub(crate) fn from_status(status: std::process::ExitStatus) -> Exit {
        let (code, signal) = match (status.code(), status.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            // Neither exited nor signalled cannot happen for a reaped child.
            (None, None) => (128 + libc::SIGKILL, Some(libc::SIGKILL)),
        };
        Exit {
            code,
            signal,
            finished_at: SystemTime::now(),
            oom_killed: false,
            message: None,
        }
    }
}

/// Why a container could not start. `reason` is the kubelet's: a
/// `StartError` (the runtime ran it and it failed) counts as a run that
/// ended with exit code 128; the others (`ErrImagePull`,
/// `ErrImageNeverPull`, `CreateContainerConfigError`,
/// `CreateContainerError`) leave the container waiting, retried with
/// back-off and no restart counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

impl StartError {
    /// The runtime tried to start it and failed (exit code 128).
    pub fn start(message: impl Into<String>) -> StartError {
        StartError {
            reason: "StartError",
            message: message.into(),
        }
    }

    /// Waiting with `reason`, to be retried.
    pub fn waiting(reason: &'static str, message: impl Into<String>) -> StartError {
        StartError {
            reason,
            message: message.into(),
        }
    }

    /// Whether the container counts as having run (and exited 128).
    pub fn ran(&self) -> bool {
        self.reason == "StartError"
    }

    /// Shaped like containerd's message for a failed task start, so users
    /// recognise it; the cause at the end is the real one.
    pub(crate) fn oci(cause: impl std::fmt::Display) -> StartError {
        StartError::start(format!(
            "failed to create containerd task: failed to create shim task: OCI runtime create failed: \
             runc create failed: unable to start container process: {cause}: unknown"
        ))
    }
}

/// What a container runs, resolved from its core/v1 spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// The core/v1 Container as written (resources, security context,
    /// ports, image pull policy...).
    pub container: Value,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Replaces the image's cmd when not empty.
    pub args: Vec<String>,
    /// The container's own variables, in order; each runtime adds its
    /// defaults (`PATH`, `HOSTNAME`...) under them.
    pub env: Vec<(String, String)>,
    /// `workingDir`; empty: the image's (the pod's directory for a host process).
    pub working_dir: String,
    /// Which run of the container this is (its restart count).
    pub attempt: u32,
    /// Where stdout and stderr go: `POD_DIR/NAME/ATTEMPT.log`.
    pub log_path: PathBuf,
    /// Where the pid is recorded while it runs, for `cleanup_orphans`.
    pub pid_file: PathBuf,
    /// Volumes bound into the container.
    pub mounts: Vec<Mount>,
    /// Credentials for pulling its image, from the pod's imagePullSecrets.
    pub pull_auth: Option<crate::pull_secrets::PullAuth>,
}

/// A host directory or file bound into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub readonly: bool,
}

/// A name the agent will not make a path of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeName(pub String);

impl std::fmt::Display for UnsafeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not a DNS-1123 label, so the agent makes no file of it",
            self.0
        )
    }
}

impl std::error::Error for UnsafeName {}

/// `dir/name`: the one way the agent makes a path of a name from the API
/// (a pod's uid, a container's name). Only a DNS-1123 label passes, which
/// is what the API server allows for container names and makes uids of;
/// anything else (`..`, `a/b`, an absolute path), from an object written
/// past the API server's validation, is refused, so no path leaves `dir`.
pub fn path_under(dir: &Path, name: &str) -> Result<PathBuf, UnsafeName> {
    if apiserver::objects::is_dns1123_label(name) {
        Ok(dir.join(name))
    } else {
        Err(UnsafeName(name.to_string()))
    }
}

impl ContainerSpec {
    /// Reads a core/v1 Container of a pod living in `pod_dir`. Its env is
    /// the literal `value`s (`valueFrom` needs the API: `with_env` sets
    /// the full one), with `$(VAR)` references in values, command and args
    /// expanded as the kubelet does. Its files go in `pod_dir/<name>`, so a
    /// name that is no DNS-1123 label is refused.
    pub fn from_json(container: &Value, pod_dir: &Path) -> Result<ContainerSpec, UnsafeName> {
        let name = str_field(container, "name").to_string();
        let files = path_under(pod_dir, &name)?;
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let key = str_field(var, "name");
            if key.is_empty() || var.get("valueFrom").is_some() {
                continue;
            }
            let value = expand(str_field(var, "value"), &env);
            set_env(&mut env, key, value);
        }
        let spec = ContainerSpec {
            image: str_field(container, "image").to_string(),
            container: container.clone(),
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: str_field(container, "workingDir").to_string(),
            attempt: 0,
            log_path: files.join("0.log"),
            // A label has no dot, so this only appends `.pid`.
            pid_file: files.with_extension("pid"),
            mounts: Vec::new(),
            pull_auth: None,
            name,
        };
        Ok(spec.with_env(env))
    }

    /// This spec with `env` as the container's variables, and command and
    /// args expanded against them.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> ContainerSpec {
        let expanded = |key: &str| -> Vec<String> {
            self.container[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|s| expand(s, &env))
                .collect()
        };
        self.command = expanded("command");
        self.args = expanded("args");
        self.env = env;
        self
    }

    /// This spec for run `attempt`: its log is `NAME/ATTEMPT.log`.
    pub fn for_attempt(mut self, attempt: u32) -> ContainerSpec {
        self.log_path = self.log_path.with_file_name(format!("{attempt}.log"));
        self.attempt = attempt;
        self
    }

    /// A string field of the container as written.
    pub fn field(&self, key: &str) -> &str {
        str_field(&self.container, key)
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn set_env(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, unknown
/// ones are left as written, and `$$` escapes a `$`.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[at..at + close + 3]),
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$(", &env), "x-$(B)-$(A)-$-$(");
    }

    #[test]
    fn spec_reads_env_and_expands_args() {
        let c = json!({
            "name": "c", "image": "img", "args": ["echo", "$(GREETING)"],
            "env": [{"name": "GREETING", "value": "hi"}, {"name": "S", "valueFrom": {}}],
        });
        let s = ContainerSpec::from_json(&c, Path::new("/pods/u")).unwrap();
        assert_eq!(s.args, ["echo", "hi"]);
        assert!(s.command.is_empty());
        assert_eq!(s.env, [("GREETING".to_string(), "hi".to_string())]);
        assert_eq!(s.log_path, Path::new("/pods/u/c/0.log"));
        assert_eq!(s.pid_file, Path::new("/pods/u/c.pid"));
        let s = s
            .with_env(vec![("GREETING".into(), "yo".into())])
            .for_attempt(3);
        assert_eq!(s.args, ["echo", "yo"]);
        assert_eq!(
            (s.attempt, s.log_path.as_path()),
            (3, Path::new("/pods/u/c/3.log"))
        );
    }

    #[test]
    fn only_dns_labels_become_paths() {
        let dir = Path::new("/pods/u");
        assert_eq!(
            path_under(dir, "web-1").unwrap(),
            Path::new("/pods/u/web-1")
        );
        for bad in [
            "../../../../../../tmp/probe/trav",
            "..",
            ".",
            "",
            "a/b",
            "/etc",
            "UPPER_case",
            "a.pid",
            "-a",
            "a\0",
        ] {
            assert_eq!(
                path_under(dir, bad),
                Err(UnsafeName(bad.to_string())),
                "{bad}"
            );
            let c = json!({"name": bad, "image": "busybox", "command": ["true"]});
            assert!(ContainerSpec::from_json(&c, dir).is_err(), "{bad}");
        }
    }
}
