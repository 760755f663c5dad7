//! Container probes (readiness, liveness, startup) as the kubelet runs
//! them: `Probe::parse` reads a core/v1 Probe, `Probe::run_once` runs one
//! check, `ProbeState` turns results into a verdict with the success and
//! failure thresholds, and `Prober` paces the checks.
//!
//! Exec probes run through the runtime's `ExecSync` (inside the container,
//! or on the host for the process runtime); network probes dial the pod's
//! IP unless they name a host. HTTP probes speak just enough HTTP/1.1 by hand; HTTPS and gRPC are not
//! supported.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::runtime::ExecSync;

/// The most of an HTTP response read while looking for its status line.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a command; success is exit status 0.
    Exec { command: Vec<String> },
    /// GET a URL; success is a status in 200..=399.
    HttpGet {
        /// None: the pod's IP.
        host: Option<String>,
        port: u16,
        path: String,
        https: bool,
        headers: Vec<(String, String)>,
    },
    /// Open a TCP connection; success is that it connects.
    TcpSocket { host: Option<String>, port: u16 },
}

/// A parsed core/v1 Probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// What probes run against: the container (exec) and the pod's address.
#[derive(Clone)]
pub struct ProbeContext {
    pub exec: Arc<dyn ExecSync>,
    /// Where network probes without a host connect.
    pub host: String,
}

impl Probe {
    /// Reads `probe` of `container` (whose `ports` resolve named ports).
    pub fn parse(probe: &Value, container: &Value) -> Result<Probe, String> {
        let seconds =
            |key: &str, default: u64, min: u64| probe[key].as_u64().unwrap_or(default).max(min);
        let count =
            |key: &str, default: u64| seconds(key, default, 1).min(u64::from(u32::MAX)) as u32;
        let action = if let Some(exec) = probe.get("exec") {
            let command: Vec<String> = exec["command"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if command.is_empty() {
                return Err("exec probe without a command".into());
            }
            Action::Exec { command }
        } else if let Some(http) = probe.get("httpGet") {
            let path = http["path"].as_str().unwrap_or("/");
            Action::HttpGet {
                host: host(http),
                port: port(&http["port"], container)?,
                path: if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                },
                https: http["scheme"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("https")),
                headers: http["httpHeaders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| {
                        Some((
                            h["name"].as_str()?.to_string(),
                            h["value"].as_str()?.to_string(),
                        ))
                    })
                    .collect(),
            }
        } else if let Some(tcp) = probe.get("tcpSocket") {
            Action::TcpSocket {
                host: host(tcp),
                port: port(&tcp["port"], container)?,
            }
        } else {
            return Err("unsupported probe: only exec, httpGet and tcpSocket are".into());
        };
        Ok(Probe {
            action,
            initial_delay: Duration::from_secs(seconds("initialDelaySeconds", 0, 0)),
            period: Duration::from_secs(seconds("periodSeconds", 10, 1)),
            timeout: Duration::from_secs(seconds("timeoutSeconds", 1, 1)),
            success_threshold: count("successThreshold", 1),
            failure_threshold: count("failureThreshold", 3),
        })
    }

    /// Runs the check once, within the probe's timeout. `Err` says why it failed.
    pub async fn run_once(&self, ctx: &ProbeContext) -> Result<(), String> {
        match &self.action {
            Action::Exec { command } => exec(command, ctx, self.timeout).await,
            action => tokio::time::timeout(self.timeout, network(action, &ctx.host))
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.timeout))),
        }
    }
}

fn host(action: &Value) -> Option<String> {
    action["host"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(String::from)
}

/// An IntOrString port: a number, or the name of one of the container's ports.
fn port(port: &Value, container: &Value) -> Result<u16, String> {
    let number = match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => name.parse().ok().or_else(|| {
            container["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"].as_str() == Some(name.as_str()))?["containerPort"]
                .as_u64()
        }),
        _ => None,
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("probe port {port} is not a valid port or a named container port"))
}

async fn exec(command: &[String], ctx: &ProbeContext, timeout: Duration) -> Result<(), String> {
    let out = ctx.exec.exec_sync(command, timeout).await?;
    match out.exit_code {
        0 => Ok(()),
        code if out.output.is_empty() => Err(format!("command {command:?} exited with {code}")),
        // The kubelet reports what the command printed.
        _ => Err(String::from_utf8_lossy(&out.output).trim_end().to_string()),
    }
}

async fn network(action: &Action, pod_ip: &str) -> Result<(), String> {
    match action {
        Action::TcpSocket { host, port } => {
            let host = host.as_deref().unwrap_or(pod_ip);
            TcpStream::connect((host, *port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        }
        Action::HttpGet { https: true, .. } => {
            Err("HTTPS probes are not supported by k3rs; use scheme HTTP, tcpSocket or exec".into())
        }
        Action::HttpGet {
            host,
            port,
            path,
            headers,
            ..
        } => {
            let host = host.as_deref().unwrap_or(pod_ip);
            let code = http_get(host, *port, path, headers).await?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Action::Exec { .. } => unreachable!("exec probes are run by exec()"),
    }
}

/// Sends one GET and returns the response's status code.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let url = format!("http://{host}:{port}{path}");
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get {url:?}: dial tcp {host}:{port}: {e}"))?;
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        request.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    if !has("user-agent") {
        request.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if !has("accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get {url:?}: {e}"))?;

    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let line_end = loop {
        if let Some(at) = head.windows(2).position(|w| w == b"\r\n") {
            break at;
        }
        if head.len() > MAX_STATUS_LINE {
            return Err(format!("Get {url:?}: malformed HTTP response"));
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        if n == 0 {
            return Err(format!("Get {url:?}: connection closed before a response"));
        }
        head.extend_from_slice(&buf[..n]);
    };
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[..line_end])
        .ok()
        .filter(|line| line.starts_with("HTTP/"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("Get {url:?}: malformed HTTP response"))
}

/// A probe's verdict: it becomes success only after `success_threshold`
/// consecutive successes, and failure after `failure_threshold` failures.
#[derive(Debug, Clone)]
pub struct ProbeState {
    /// None until the first threshold is reached (the kubelet's "unknown").
    verdict: Option<bool>,
    /// Consecutive results agreeing with `last`.
    run: u32,
    last: Option<bool>,
    success_threshold: u32,
    failure_threshold: u32,
}

impl ProbeState {
    /// Starts at `initial`: the kubelet starts readiness probes at failure,
    /// liveness probes at success and startup probes unknown.
    pub fn new(probe: &Probe, initial: Option<bool>) -> ProbeState {
        ProbeState {
            verdict: initial,
            run: 0,
            last: None,
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
        }
    }

    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Records one result; true if the verdict changed.
    pub fn record(&mut self, success: bool) -> bool {
        self.run = if self.last == Some(success) {
            self.run.saturating_add(1)
        } else {
            1
        };
        self.last = Some(success);
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run >= threshold && self.verdict != Some(success) {
            self.verdict = Some(success);
            return true;
        }
        false
    }
}

/// Runs a probe on its schedule: first after `initialDelaySeconds` from the
/// container's start, then every `periodSeconds`.
#[derive(Debug)]
pub struct Prober {
    probe: Probe,
    state: ProbeState,
    next: Instant,
    last_error: Option<String>,
}

impl Prober {
    /// `started` is when the container started; `initial` as for `ProbeState::new`.
    pub fn new(probe: Probe, started: Instant, initial: Option<bool>) -> Prober {
        let state = ProbeState::new(&probe, initial);
        let next = started + probe.initial_delay;
        Prober {
            probe,
            state,
            next,
            last_error: None,
        }
    }

    /// Why the last check failed, if it did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Waits until the next check is due and runs it; returns the new
    /// verdict if it changed.
    pub async fn step(&mut self, ctx: &ProbeContext) -> Option<bool> {
        tokio::time::sleep_until(self.next).await;
        let began = Instant::now();
        let result = self.probe.run_once(ctx).await;
        self.next = began + self.probe.period;
        self.last_error = result.as_ref().err().cloned();
        self.state.record(result.is_ok()).then_some(result.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(probe: Value) -> Probe {
        Probe::parse(
            &probe,
            &json!({"ports": [{"name": "web", "containerPort": 8080}]}),
        )
        .unwrap()
    }

    fn ctx() -> ProbeContext {
        let host = crate::process::HostExec {
            env: vec![
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                ("X".into(), "7".into()),
            ],
            dir: std::env::temp_dir(),
        };
        ProbeContext {
            exec: Arc::new(host),
            host: "127.0.0.1".into(),
        }
    }

    #[test]
    fn parses_defaults_and_named_ports() {
        let p = parse(json!({"httpGet": {"port": "web", "path": "healthz"}}));
        assert_eq!(
            p.action,
            Action::HttpGet {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                https: false,
                headers: vec![]
            }
        );
        assert_eq!(
            (
                p.initial_delay,
                p.period,
                p.timeout,
                p.success_threshold,
                p.failure_threshold
            ),
            (
                Duration::ZERO,
                Duration::from_secs(10),
                Duration::from_secs(1),
                1,
                3
            )
        );
        let p =
            parse(json!({"tcpSocket": {"port": 53}, "periodSeconds": 2, "failureThreshold": 5}));
        assert_eq!((p.period, p.failure_threshold), (Duration::from_secs(2), 5));
        assert!(Probe::parse(&json!({"tcpSocket": {"port": "nope"}}), &json!({})).is_err());
        assert!(Probe::parse(&json!({"grpc": {"port": 1}}), &json!({})).is_err());
    }

    #[test]
    fn state_needs_consecutive_results() {
        let probe =
            parse(json!({"tcpSocket": {"port": 1}, "successThreshold": 2, "failureThreshold": 3}));
        let mut s = ProbeState::new(&probe, Some(false));
        assert!(!s.record(true));
        assert!(!s.record(false));
        assert!(!s.record(true));
        assert!(s.record(true));
        assert_eq!(s.verdict(), Some(true));
        assert!(!s.record(false));
        assert!(!s.record(false));
        assert!(!s.record(true));
        assert!(!s.record(false));
        assert!(!s.record(false));
        assert!(s.record(false));
        assert_eq!(s.verdict(), Some(false));
        assert!(!s.record(false));
        // A startup probe starts unknown: its first verdict is a change either way.
        let mut startup = ProbeState::new(&probe, None);
        assert!(!startup.record(false) && !startup.record(false));
        assert!(startup.record(false));
    }

    #[tokio::test]
    async fn exec_probe_uses_exit_status_env_and_timeout() {
        let run = |cmd: &str| parse(json!({"exec": {"command": ["sh", "-c", cmd]}}));
        assert!(run("test \"$X\" = 7").run_once(&ctx()).await.is_ok());
        let err = run("exit 1").run_once(&ctx()).await.unwrap_err();
        assert!(err.contains("exited with 1"), "{err}");
        let began = std::time::Instant::now();
        let err = run("sleep 30").run_once(&ctx()).await.unwrap_err();
        assert!(
            err.contains("timed out") && began.elapsed() < Duration::from_secs(3),
            "{err}"
        );
        let missing = parse(json!({"exec": {"command": ["nosuchcmd"]}}));
        assert!(missing.run_once(&ctx()).await.is_err());
    }

    #[tokio::test]
    async fn tcp_probe_connects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = parse(json!({"tcpSocket": {"port": port}}));
        assert!(probe.run_once(&ctx()).await.is_ok());
        drop(listener);
        assert!(probe.run_once(&ctx()).await.is_err());
    }

    /// Answers each connection with `status`, after checking the request line.
    async fn http_server(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let ok = buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n");
                let code = if ok { status } else { 400 };
                let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probe_checks_the_status_code() {
        for (status, ok) in [(200, true), (302, true), (404, false), (500, false)] {
            let port = http_server(status).await;
            let probe = parse(json!({"httpGet": {"port": port, "path": "/healthz"}}));
            assert_eq!(probe.run_once(&ctx()).await.is_ok(), ok, "status {status}");
        }
        let https = parse(json!({"httpGet": {"port": 1, "scheme": "HTTPS"}}));
        assert!(https.run_once(&ctx()).await.unwrap_err().contains("HTTPS"));
    }

    #[tokio::test]
    async fn prober_reports_changes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = Probe {
            period: Duration::from_millis(10),
            ..parse(json!({"tcpSocket": {"port": port}}))
        };
        let mut prober = Prober::new(probe, Instant::now(), Some(false));
        assert_eq!(prober.step(&ctx()).await, Some(true));
        assert_eq!(prober.step(&ctx()).await, None);
        drop(listener);
        for _ in 0..2 {
            assert_eq!(prober.step(&ctx()).await, None);
        }
        assert_eq!(prober.step(&ctx()).await, Some(false));
        assert!(prober.last_error().is_some());
    }
}
