//! The process runtime: each container's command runs as a plain host
//! process (host network, no isolation, no image), for machines without a
//! container engine.
//!
//! A process container lives in its own process group, so signals reach
//! everything it started, and when its main process exits the rest of the
//! group is killed, as happens when a container's PID namespace ends.
//! Its stdout and stderr go through a pipe to the log file, capped at
//! `MAX_LOG_BYTES` with one rotated file kept. Exec (probes) runs on the
//! host too, with the container's environment and directory.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::runtime::{
    BoxFuture, Container, ContainerSpec, ExecOutput, ExecSync, Exit, LogFormat, MAX_LOG_BYTES,
    Runtime, Sandbox, SandboxSpec, Signal, StartError, StreamRequest,
};

/// Stack of a container's two threads (log copy, exit wait): they hold
/// almost nothing, and a node runs hundreds of them.
const THREAD_STACK: usize = 128 * 1024;

/// How long an exit waits for the log to drain: a process that left the
/// group may hold the pipe open forever.
const LOG_DRAIN: Duration = Duration::from_secs(1);

/// `PATH` for containers when the agent itself has none (containerd's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs containers as host processes.
#[derive(Debug, Default, Clone)]
pub struct ProcessRuntime;

impl Runtime for ProcessRuntime {
    fn sandbox<'a>(
        &'a self,
        pod: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn Sandbox>, StartError>> {
        let sandbox = ProcessSandbox {
            dir: pod.dir.clone(),
            hostname: pod.pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        Box::pin(async move { Ok(Arc::new(sandbox) as Arc<dyn Sandbox>) })
    }

    /// Leftover processes are killed at start by `cleanup_orphans`.
    fn forget_others<'a>(&'a self, _keep: &'a HashSet<String>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn log_format(&self) -> LogFormat {
        LogFormat::Raw
    }

    fn version(&self) -> String {
        format!("process://{}", env!("CARGO_PKG_VERSION"))
    }

    fn stream_url<'a>(
        &'a self,
        _request: &'a StreamRequest,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async {
            Err(
                "exec, attach and port-forward need the containerd runtime: this agent runs \
                 containers as host processes (--container-runtime process)"
                    .to_string(),
            )
        })
    }
}

/// A pod of host processes: the node's namespaces, the pod's directory.
struct ProcessSandbox {
    dir: PathBuf,
    hostname: String,
}

impl Sandbox for ProcessSandbox {
    fn ip(&self) -> Option<String> {
        None
    }

    fn start<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn Container>, StartError>> {
        let host = HostExec::new(spec, &self.dir, &self.hostname);
        let spec = spec.clone();
        Box::pin(async move {
            // fork/exec and the file writes are blocking work.
            match tokio::task::spawn_blocking(move || spawn(&spec, host)).await {
                Ok(started) => started.map(|c| Arc::new(c) as Arc<dyn Container>),
                Err(e) => Err(StartError::start(format!(
                    "starting the process failed: {e}"
                ))),
            }
        })
    }

    /// Host processes do not outlive the agent (`cleanup_orphans`).
    fn adopt<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Option<(Arc<dyn Container>, u32)>> {
        Box::pin(async { None })
    }

    fn remove(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// How a container's commands run on the host: its environment (the
/// runtime's defaults under its own variables) and directory.
#[derive(Debug, Clone, Default)]
pub struct HostExec {
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
}

impl HostExec {
    fn new(spec: &ContainerSpec, pod_dir: &Path, hostname: &str) -> HostExec {
        let mut env = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
            ),
            ("HOSTNAME".to_string(), hostname.to_string()),
        ];
        if let Ok(home) = std::env::var("HOME") {
            env.push(("HOME".to_string(), home));
        }
        for (key, value) in &spec.env {
            match env.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.clone(),
                None => env.push((key.clone(), value.clone())),
            }
        }
        let dir = match spec.working_dir.as_str() {
            "" => pod_dir.to_path_buf(),
            dir => PathBuf::from(dir),
        };
        HostExec { env, dir }
    }
}

impl ExecSync for HostExec {
    fn exec_sync<'a>(
        &'a self,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, String>> {
        Box::pin(host_exec(command, self, timeout))
    }
}

/// Runs `command` on the host and collects its output, killing its group
/// at `timeout`.
async fn host_exec(
    command: &[String],
    how: &HostExec,
    timeout: Duration,
) -> Result<ExecOutput, String> {
    let Some(program) = command.first() else {
        return Err("exec without a command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(&command[1..])
        .env_clear()
        .envs(how.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&how.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("exec {program:?}: {e}"))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let mut output = out.stdout;
            output.extend_from_slice(&out.stderr);
            Ok(ExecOutput {
                exit_code: out
                    .status
                    .code()
                    .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(libc::SIGKILL)),
                output,
            })
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            // Dropping the child killed the leader; the rest of its group too.
            if let Some(pid) = pid {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            Err(format!("command {command:?} timed out after {timeout:?}"))
        }
    }
}

/// A running host process and its group.
struct ProcessContainer {
    id: String,
    image: String,
    host: HostExec,
    started_at: SystemTime,
    pid: i32,
    /// True once the main process has exited; signals are sent only before
    /// that, while its pid (and group id) cannot have been reused.
    exited: Arc<Mutex<bool>>,
    exit: watch::Receiver<Option<Exit>>,
}

impl ExecSync for ProcessContainer {
    fn exec_sync<'a>(
        &'a self,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, String>> {
        self.host.exec_sync(command, timeout)
    }
}

impl Container for ProcessContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn image_id(&self) -> String {
        format!("process://{}", self.image)
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
                    oom_killed: false,
                    message: None,
                },
            }
        })
    }
}

fn spawn(spec: &ContainerSpec, host: HostExec) -> Result<ProcessContainer, StartError> {
    let argv: Vec<String> = spec.command.iter().chain(&spec.args).cloned().collect();
    if argv.is_empty() {
        return Err(StartError::start(
            "no command specified: the process runtime runs host processes, so there is no \
             image entrypoint; set command or args, or run the agent with containerd",
        ));
    }
    if !host.dir.is_dir() {
        return Err(StartError::oci(format!(
            "chdir to cwd ({:?}) set in config.json failed: no such file or directory",
            host.dir
        )));
    }
    let log_dir = spec.log_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(log_dir)
        .map_err(|e| StartError::start(format!("creating {}: {e}", log_dir.display())))?;
    // Created up front, so a container's log exists as soon as it runs.
    let log = File::create(&spec.log_path)
        .map_err(|e| StartError::start(format!("creating {}: {e}", spec.log_path.display())))?;
    let (reader, writer) =
        std::io::pipe().map_err(|e| StartError::start(format!("creating the log pipe: {e}")))?;
    // A bigger pipe means fewer wake-ups for chatty containers (best effort).
    // SAFETY: fcntl on a valid fd we own.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let stderr = writer
        .try_clone()
        .map_err(|e| StartError::start(format!("creating the log pipe: {e}")))?;

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(host.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&host.dir)
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
        return Err(StartError::start(format!(
            "starting a supervisor thread: {e}"
        )));
    }
    Ok(ProcessContainer {
        id: format!("process://{pid}"),
        image: spec.image.clone(),
        host,
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
        ContainerSpec::from_json(&c, dir).unwrap()
    }

    /// Starts `spec` in a process sandbox for a pod living in `dir`.
    async fn start(dir: &Path, spec: &ContainerSpec) -> Result<Arc<dyn Container>, StartError> {
        let pod = SandboxSpec {
            pod: json!({"metadata": {"name": "pod"}}),
            dir: dir.to_path_buf(),
        };
        let sandbox = ProcessRuntime.sandbox(&pod).await.unwrap();
        sandbox.start(spec).await
    }

    #[tokio::test]
    async fn exec_uses_the_containers_env_and_collects_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), &["true"]);
        s.env = vec![("X".into(), "7".into())];
        let host = HostExec::new(&s, dir.path(), "pod");
        let sh = |cmd: &str| vec!["sh".to_string(), "-c".into(), cmd.into()];
        let out = host
            .exec_sync(
                &sh("echo $X $HOSTNAME; pwd; exit 4"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, 4);
        let expected = format!("7 pod\n{}\n", dir.path().display());
        assert_eq!(String::from_utf8_lossy(&out.output), expected);
        let began = std::time::Instant::now();
        let err = host
            .exec_sync(&sh("sleep 30"), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            err.contains("timed out") && began.elapsed() < Duration::from_secs(3),
            "{err}"
        );
    }

    #[tokio::test]
    async fn runs_and_logs_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), &["sh", "-c", "echo out; echo err >&2; exit 3"]);
        let c = start(dir.path(), &s).await.unwrap();
        let exit = c.wait().await;
        assert_eq!((exit.code, exit.signal), (3, None));
        assert_eq!(std::fs::read_to_string(&s.log_path).unwrap(), "out\nerr\n");
        assert!(!s.pid_file.exists());
    }

    #[tokio::test]
    async fn missing_command_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = start(dir.path(), &spec(dir.path(), &["nosuchcmd"]))
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
        let c = start(dir.path(), &spec(dir.path(), &["sleep", "1000"]))
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
        let c = start(dir.path(), &s).await.unwrap();
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
