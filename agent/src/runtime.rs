//! Running containers. `Runtime` is the seam a CRI runtime can plug into
//! later; `ProcessRuntime` runs each container's command as a plain host
//! process (host network, no isolation), because these machines have no
//! container engine.
//!
//! A process container lives in its own process group, so signals reach
//! everything it started, and when its main process exits the rest of the
//! group is killed, as happens when a container's PID namespace ends.
//! Its stdout and stderr go through a pipe to the log file, capped at
//! `MAX_LOG_BYTES` with one rotated file kept.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::watch;

/// A boxed future, so `Runtime` stays usable as `dyn Runtime`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The most a container log file holds (the kubelet's `containerLogMaxSize`).
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// Stack of a container's two threads (log copy, exit wait): they hold
/// almost nothing, and a node runs hundreds of them.
const THREAD_STACK: usize = 128 * 1024;

/// How long an exit waits for the log to drain: a process that left the
/// group may hold the pipe open forever.
const LOG_DRAIN: Duration = Duration::from_secs(1);

/// `PATH` for containers when the agent itself has none (containerd's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts containers.
pub trait Runtime: Send + Sync {
    /// Starts the container `spec` describes; resolves once it runs.
    fn start<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Container>, StartError>>;
}

/// A started container.
pub trait Container: Send + Sync {
    /// The status `containerID`, e.g. `process://1234`.
    fn id(&self) -> &str;
    /// When it started.
    fn started_at(&self) -> SystemTime;
    /// Signals every process of the container; a no-op once it has exited.
    fn signal(&self, signal: Signal);
    /// Resolves when the container has exited; may be called any number of times.
    fn wait(&self) -> BoxFuture<'_, Exit>;
}

/// The signals the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn number(self) -> libc::c_int {
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
}

impl Exit {
    fn from_status(status: std::process::ExitStatus) -> Exit {
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
        }
    }
}

/// Why a container could not start; shown as `reason: StartError`, exit code 128.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    pub message: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

impl StartError {
    /// Shaped like containerd's message for a failed task start, so users
    /// recognise it; the cause at the end is the real one.
    fn oci(cause: impl std::fmt::Display) -> StartError {
        StartError {
            message: format!(
                "failed to create containerd task: failed to create shim task: OCI runtime create failed: \
                 runc create failed: unable to start container process: {cause}: unknown"
            ),
        }
    }
}

/// What a container runs, resolved from its core/v1 spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint (there is no image here).
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// The full environment, in order; nothing else is inherited.
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
    /// Where stdout and stderr go.
    pub log_path: PathBuf,
    /// Where the pid is recorded while it runs, for `cleanup_orphans`.
    pub pid_file: PathBuf,
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
    /// Reads a core/v1 Container of pod `pod_name` living in `pod_dir`.
    /// `$(VAR)` references in env values, command and args are expanded as
    /// the kubelet does; `valueFrom` entries are not supported and skipped.
    /// Its files go in `pod_dir/<name>`, so a name that is no DNS-1123
    /// label is refused.
    pub fn from_json(
        container: &Value,
        pod_name: &str,
        pod_dir: &Path,
    ) -> Result<ContainerSpec, UnsafeName> {
        let name = str_field(container, "name").to_string();
        let files = path_under(pod_dir, &name)?;
        let strings = |key: &str| -> Vec<String> {
            container[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut env = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
            ),
            ("HOSTNAME".to_string(), pod_name.to_string()),
        ];
        if let Ok(home) = std::env::var("HOME") {
            env.push(("HOME".to_string(), home));
        }
        // Expansion sees only the container's own variables, as in the kubelet.
        let mut vars: Vec<(String, String)> = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let key = str_field(var, "name");
            if key.is_empty() {
                continue;
            }
            if var.get("valueFrom").is_some() {
                tracing::warn!(container = %name, var = key, "env valueFrom is not supported; skipping it");
                continue;
            }
            let value = expand(str_field(var, "value"), &vars);
            set_env(&mut vars, key, value.clone());
            set_env(&mut env, key, value);
        }
        let command = strings("command")
            .iter()
            .map(|s| expand(s, &vars))
            .collect();
        let args = strings("args").iter().map(|s| expand(s, &vars)).collect();
        let working_dir = match str_field(container, "workingDir") {
            "" => pod_dir.to_path_buf(),
            dir => PathBuf::from(dir),
        };
        Ok(ContainerSpec {
            image: str_field(container, "image").to_string(),
            command,
            args,
            env,
            working_dir,
            log_path: files.join("0.log"),
            // A label has no dot, so this only appends `.pid`.
            pid_file: files.with_extension("pid"),
            name,
        })
    }

    /// The program and its arguments: `command` + `args`, or `args` alone.
    pub fn argv(&self) -> Result<Vec<String>, StartError> {
        let argv: Vec<String> = self.command.iter().chain(&self.args).cloned().collect();
        if argv.is_empty() {
            return Err(StartError {
                message: "no command specified: containers run as host processes, so there is no \
                          image entrypoint; set command or args"
                    .to_string(),
            });
        }
        Ok(argv)
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

/// Runs containers as host processes.
#[derive(Debug, Default, Clone)]
pub struct ProcessRuntime;

impl Runtime for ProcessRuntime {
    fn start<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Container>, StartError>> {
        let spec = spec.clone();
        Box::pin(async move {
            // fork/exec and the file writes are blocking work.
            match tokio::task::spawn_blocking(move || spawn(&spec)).await {
                Ok(started) => started.map(|c| Box::new(c) as Box<dyn Container>),
                Err(e) => Err(StartError {
                    message: format!("starting the process failed: {e}"),
                }),
            }
        })
    }
}

/// A running host process and its group.
struct ProcessContainer {
    id: String,
    started_at: SystemTime,
    pid: i32,
    /// True once the main process has exited; signals are sent only before
    /// that, while its pid (and group id) cannot have been reused.
    exited: Arc<Mutex<bool>>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Container for ProcessContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn started_at(&self) -> SystemTime {
        self.started_at
    }

    fn signal(&self, signal: Signal) {
        let exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if !*exited {
            // SAFETY: kill has no memory effects; -pid names our process group.
            unsafe { libc::kill(-self.pid, signal.number()) };
        }
    }

    fn wait(&self) -> BoxFuture<'_, Exit> {
        let mut exit = self.exit.clone();
        Box::pin(async move {
            match exit.wait_for(Option::is_some).await {
                Ok(e) => e.clone().expect("waited for Some"),
                // The waiter thread is gone without a word: report it as killed.
                Err(_) => Exit {
                    code: 128 + libc::SIGKILL,
                    signal: Some(libc::SIGKILL),
                    finished_at: SystemTime::now(),
                },
            }
        })
    }
}

fn spawn(spec: &ContainerSpec) -> Result<ProcessContainer, StartError> {
    let argv = spec.argv()?;
    if !spec.working_dir.is_dir() {
        return Err(StartError::oci(format!(
            "chdir to cwd ({:?}) set in config.json failed: no such file or directory",
            spec.working_dir
        )));
    }
    let log_dir = spec.log_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(log_dir).map_err(|e| StartError {
        message: format!("creating {}: {e}", log_dir.display()),
    })?;
    // Created up front, so a container's log exists as soon as it runs.
    let log = File::create(&spec.log_path).map_err(|e| StartError {
        message: format!("creating {}: {e}", spec.log_path.display()),
    })?;
    let (reader, writer) = std::io::pipe().map_err(|e| StartError {
        message: format!("creating the log pipe: {e}"),
    })?;
    // A bigger pipe means fewer wake-ups for chatty containers (best effort).
    // SAFETY: fcntl on a valid fd we own.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let stderr = writer.try_clone().map_err(|e| StartError {
        message: format!("creating the log pipe: {e}"),
    })?;

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.working_dir)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        .process_group(0);
    let spawned = cmd.spawn();
    // Drop our copies of the pipe's write end, or the log never sees EOF.
    drop(cmd);
    let child = spawned.map_err(|e| exec_error(&argv[0], &e))?;
    let pid = child.id() as i32;
    let started_at = SystemTime::now();

    if let Some(start) = start_time(pid) {
        let record = format!("{pid} {start}\n");
        if let Err(e) = std::fs::write(&spec.pid_file, record) {
            tracing::warn!(file = %spec.pid_file.display(), error = %e, "writing the pid file failed");
        }
    }
    let log_path = spec.log_path.clone();
    let (logged, drained) = std::sync::mpsc::channel::<()>();
    let logger = std::thread::Builder::new()
        .name(format!("log-{pid}"))
        .stack_size(THREAD_STACK)
        .spawn(move || {
            copy_log(reader, log, &log_path);
            drop(logged);
        });
    let exited = Arc::new(Mutex::new(false));
    let (tx, rx) = watch::channel(None);
    let waiter = {
        let exited = exited.clone();
        let pid_file = spec.pid_file.clone();
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let exit = reap(child, &exited);
                let _ = std::fs::remove_file(&pid_file);
                // So that an exit, once reported, comes with all its output.
                let _ = drained.recv_timeout(LOG_DRAIN);
                let _ = tx.send(Some(exit));
            })
    };
    if let Err(e) = logger.and(waiter) {
        // No thread to wait on it: do not leave it running unsupervised.
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        return Err(StartError {
            message: format!("starting a supervisor thread: {e}"),
        });
    }
    Ok(ProcessContainer {
        id: format!("process://{pid}"),
        started_at,
        pid,
        exited,
        exit: rx,
    })
}

/// The exec error as runc words it.
fn exec_error(program: &str, e: &std::io::Error) -> StartError {
    let cause = if program.contains('/') {
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        format!("exec: {program:?}: stat {program}: {what}")
    } else if e.kind() == std::io::ErrorKind::NotFound {
        format!("exec: {program:?}: executable file not found in $PATH")
    } else {
        format!("exec: {program:?}: {e}")
    };
    StartError::oci(cause)
}

/// Waits for the main process to exit, kills what is left of its group,
/// then reaps it. Waiting without reaping first keeps the pid (and so the
/// group id) reserved while the group is killed.
fn reap(mut child: Child, exited: &Mutex<bool>) -> Exit {
    let pid = child.id() as libc::id_t;
    loop {
        // SAFETY: siginfo is plain data, filled in by waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    {
        let mut exited = exited.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: kill has no memory effects; the group id is still ours.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        *exited = true;
    }
    match child.wait() {
        Ok(status) => Exit::from_status(status),
        Err(e) => {
            tracing::warn!(pid, error = %e, "reaping a container process failed");
            Exit::from_status(std::process::ExitStatus::from_raw(libc::SIGKILL))
        }
    }
}

/// Field 22 of /proc/PID/stat: the start time in clock ticks since boot,
/// which tells a process apart from a later one given the same pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Moves a container's output from the pipe into its log file until every
/// writer is gone. Past `MAX_LOG_BYTES` the file is rotated to `N.log.1`
/// (replacing the last one), so a run keeps at most twice that on disk.
/// splice(2) moves the bytes inside the kernel, keeping the agent's CPU
/// cost low; read/write is the fallback where splice is refused.
fn copy_log(mut pipe: std::io::PipeReader, file: File, path: &Path) {
    let rotated = path.with_extension("log.1");
    let mut file = Some(file);
    let mut written = 0u64;
    let mut use_splice = true;
    // Only the read/write fallback needs a buffer; splice needs none.
    let mut buf = Vec::new();
    loop {
        if written >= MAX_LOG_BYTES {
            let _ = std::fs::rename(path, &rotated);
            file = File::create(path)
                .inspect_err(|e| tracing::warn!(log = %path.display(), error = %e, "rotating the container log failed"))
                .ok();
            written = 0;
        }
        let want = (MAX_LOG_BYTES - written).min(1 << 20) as usize;
        let moved = match &mut file {
            Some(f) if use_splice => {
                // SAFETY: both fds are valid for the call; null offsets use the fds' own.
                let n = unsafe {
                    libc::splice(
                        pipe.as_raw_fd(),
                        std::ptr::null_mut(),
                        f.as_raw_fd(),
                        std::ptr::null_mut(),
                        want,
                        libc::SPLICE_F_MOVE,
                    )
                };
                if n >= 0 {
                    Ok(n as usize)
                } else {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        use_splice = false;
                        continue;
                    }
                    Err(e)
                }
            }
            Some(f) => {
                buf.resize(64 * 1024, 0);
                let take = want.min(buf.len());
                pipe.read(&mut buf[..take])
                    .and_then(|n| f.write_all(&buf[..n]).map(|()| n))
            }
            None => {
                buf.resize(64 * 1024, 0);
                pipe.read(&mut buf)
            }
        };
        match moved {
            Ok(0) => return,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A full disk, say: stop writing but keep draining so the
                // container does not block on a full pipe.
                tracing::warn!(log = %path.display(), error = %e, "writing the container log failed");
                file = None;
            }
        }
    }
}

/// Kills the process groups a previous agent run left behind. The agent
/// does not reattach to running processes: after a crash it cleans up and
/// starts its pods afresh, so this runs once at start, before any pod.
/// Each `ROOT/<pod>/<container>.pid` holds a pid and its start time; a pid
/// now used by another process is left alone. Returns how many groups were
/// signalled.
pub fn cleanup_orphans(root: &Path) -> usize {
    let mut killed = 0;
    let pods = std::fs::read_dir(root).into_iter().flatten().flatten();
    for pod in pods {
        let files = std::fs::read_dir(pod.path())
            .into_iter()
            .flatten()
            .flatten();
        for file in files.map(|f| f.path()) {
            if file.extension().is_none_or(|e| e != "pid") {
                continue;
            }
            if let Some(pid) = orphan_group(&file) {
                // SAFETY: kill has no memory effects.
                if unsafe { libc::kill(-pid, libc::SIGKILL) } == 0 {
                    tracing::info!(pid, file = %file.display(), "killed a process group left by a previous run");
                    killed += 1;
                }
            }
            let _ = std::fs::remove_file(&file);
        }
    }
    killed
}

/// The group id recorded in a pid file, if it is still that group.
fn orphan_group(file: &Path) -> Option<i32> {
    let record = std::fs::read_to_string(file).ok()?;
    let mut parts = record.split_whitespace();
    let pid: i32 = parts.next()?.parse().ok()?;
    let recorded: u64 = parts.next()?.parse().ok()?;
    if pid <= 1 {
        return None;
    }
    match start_time(pid) {
        Some(now) if now == recorded => Some(pid),
        // The pid belongs to a different process now.
        Some(_) => None,
        // The leader is gone. Linux does not hand out a pid while a group
        // still uses it as its id, so any group with this id is ours.
        None => Some(pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(dir: &Path, command: &[&str]) -> ContainerSpec {
        let c = json!({"name": "c", "image": "busybox", "command": command});
        ContainerSpec::from_json(&c, "pod", dir).unwrap()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$(", &env), "x-$(B)-$(A)-$-$(");
    }

    #[test]
    fn spec_reads_env_and_argv() {
        let c = json!({
            "name": "c", "image": "img", "args": ["echo", "$(GREETING)"],
            "env": [{"name": "GREETING", "value": "hi"}, {"name": "S", "valueFrom": {}}],
        });
        let s = ContainerSpec::from_json(&c, "p", Path::new("/pods/u")).unwrap();
        assert_eq!(s.argv().unwrap(), ["echo", "hi"]);
        assert!(s.env.contains(&("HOSTNAME".into(), "p".into())));
        assert!(!s.env.iter().any(|(k, _)| k == "S"));
        assert_eq!(s.log_path, Path::new("/pods/u/c/0.log"));
        assert_eq!(s.pid_file, Path::new("/pods/u/c.pid"));
        let empty = ContainerSpec::from_json(&json!({"name": "c"}), "p", Path::new("/")).unwrap();
        assert!(empty.argv().is_err());
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
            assert!(ContainerSpec::from_json(&c, "p", dir).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn runs_and_logs_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), &["sh", "-c", "echo out; echo err >&2; exit 3"]);
        let c = ProcessRuntime.start(&s).await.unwrap();
        let exit = c.wait().await;
        assert_eq!((exit.code, exit.signal), (3, None));
        assert_eq!(std::fs::read_to_string(&s.log_path).unwrap(), "out\nerr\n");
        assert!(!s.pid_file.exists());
    }

    #[tokio::test]
    async fn missing_command_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ProcessRuntime
            .start(&spec(dir.path(), &["nosuchcmd"]))
            .await
            .err()
            .unwrap();
        assert!(
            err.message
                .contains(r#"exec: "nosuchcmd": executable file not found in $PATH"#),
            "{err}"
        );
    }

    #[tokio::test]
    async fn term_signal_reaches_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessRuntime
            .start(&spec(dir.path(), &["sleep", "1000"]))
            .await
            .unwrap();
        c.signal(Signal::Term);
        let exit = tokio::time::timeout(Duration::from_secs(5), c.wait())
            .await
            .unwrap();
        assert_eq!((exit.code, exit.signal), (143, Some(libc::SIGTERM)));
        c.signal(Signal::Kill); // after exit: a harmless no-op
    }

    #[tokio::test]
    async fn log_is_capped_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        // 25 MiB of output.
        let s = spec(dir.path(), &["sh", "-c", "head -c 26214400 /dev/zero"]);
        let c = ProcessRuntime.start(&s).await.unwrap();
        assert_eq!(c.wait().await.code, 0);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size(&s.log_path), 5 * 1024 * 1024);
        assert_eq!(size(&s.log_path.with_extension("log.1")), MAX_LOG_BYTES);
    }

    #[test]
    fn cleanup_orphans_kills_a_leftover_group() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("uid");
        std::fs::create_dir(&pod).unwrap();
        let mut child = Command::new("sh")
            .args(["-c", "sleep 1000 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap();
        std::fs::write(pod.join("c.pid"), format!("{pid} {start}\n")).unwrap();
        // A stale record whose pid now belongs to someone else is left alone.
        std::fs::write(pod.join("old.pid"), format!("{} 1\n", std::process::id())).unwrap();
        assert_eq!(cleanup_orphans(dir.path()), 1);
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(!pod.join("c.pid").exists());
    }
}
