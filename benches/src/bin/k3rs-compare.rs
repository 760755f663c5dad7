//! `k3rs-compare`: runs the same workloads against a real etcd and against
//! k3rs, one fresh server per workload, and writes a side-by-side report:
//! `target/bench-report/report.md`, `report.json` and `chart.png`.
//!
//! Build k3rs first: `cargo build --release -p k3rs -p k3rs-benches`, then
//! `target/release/k3rs-compare [--quick] [--workloads put-1,list-10k]`.
//!
//! The load generator runs inside this process and shares the machine's
//! cores with the server under test: compare the two servers' figures with
//! each other, not with published numbers.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use k3rs_benches::chart::{self, Bar};
use k3rs_benches::procstat;
use k3rs_benches::runner::is_unsupported;
use k3rs_benches::{BenchResult, Cli};
use serde::Serialize;

/// Runs etcd and k3rs through the same workloads and writes a comparison.
#[derive(Debug, Parser)]
#[command(name = "k3rs-compare", version, about)]
struct Args {
    /// Small totals: a run of a couple of minutes.
    #[arg(long)]
    quick: bool,
    /// Workloads to run, comma-separated (default: all; see --list).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// List the workloads and exit.
    #[arg(long)]
    list: bool,
    /// Servers to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "etcd,k3rs")]
    servers: Vec<Kind>,
    /// The etcd binary (3.4.23 is what the reference figures used).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// The k3rs binary. Default: target/release/k3rs of this workspace.
    #[arg(long)]
    k3rs_bin: Option<PathBuf>,
    /// Where to write the report. Default: target/bench-report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Etcd,
    K3rs,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::K3rs => "k3rs",
        }
    }
}

/// What a workload's headline figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Metric {
    /// Requests per second; higher is better.
    Throughput,
    /// Median latency; lower is better.
    Latency,
}

struct Spec {
    name: &'static str,
    title: &'static str,
    conns: usize,
    clients: usize,
    /// Subcommand and flags, without the total.
    args: Vec<String>,
    /// The flag that sets the request count.
    total_flag: &'static str,
    total: u64,
    /// Run once with a total of 0 first (it preloads keys), outside the
    /// CPU and memory measurement.
    setup: bool,
    metric: Metric,
    unit: &'static str,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn specs(quick: bool) -> Vec<Spec> {
    let t = |full: u64, q: u64| if quick { q } else { full };
    let spec = |name, title, conns, clients, args: &str, total, setup| Spec {
        name,
        title,
        conns,
        clients,
        args: words(args),
        total_flag: "--total",
        total,
        setup,
        metric: Metric::Throughput,
        unit: "req/s",
    };
    let put = "put --key-size 256 --val-size 1024 --key-space-size 1000000";
    vec![
        spec(
            "put-1",
            "put 256 B keys, 1 KiB values, 1 client",
            1,
            1,
            put,
            t(10_000, 2_000),
            false,
        ),
        spec(
            "put-100",
            "put 256 B / 1 KiB, 100 clients on 10 conns",
            10,
            100,
            put,
            t(50_000, 10_000),
            false,
        ),
        spec(
            "put-500",
            "put 256 B / 1 KiB, 500 clients on 50 conns",
            50,
            500,
            put,
            t(50_000, 10_000),
            false,
        ),
        spec(
            "txn-put",
            "txn of 4 puts (64 B / 256 B), 100 clients",
            10,
            100,
            "txn-put --txn-ops 4 --key-size 64 --val-size 256 --key-space-size 100000",
            t(20_000, 5_000),
            false,
        ),
        spec(
            "range-1key",
            "linearizable one-key range, 100 clients",
            10,
            100,
            "range /bench/one --preload 1 --preload-val-size 1024",
            t(50_000, 10_000),
            true,
        ),
        Spec {
            unit: "lists/s",
            ..spec(
                "list-10k",
                "paged list of 10k keys (1 KiB), limit 500, 10 clients",
                10,
                10,
                "list /bench/list/ --preload 10000 --val-size 1024 --limit 500",
                t(200, 40),
                true,
            )
        },
        Spec {
            unit: "counts/s",
            ..spec(
                "count-100k",
                "count_only over 100k keys, 10 clients",
                10,
                10,
                "count /bench/count/ --preload 100000 --val-size 128",
                t(1_000, 200),
                true,
            )
        },
        Spec {
            total_flag: "--put-total",
            metric: Metric::Latency,
            unit: "ms p50",
            ..spec(
                "watch-latency",
                "put-to-event latency, 100 watchers on 10 streams, 100 puts/s",
                10,
                1,
                "watch-latency --streams 10 --watchers-per-stream 10 --put-rate 100",
                t(1_000, 300),
                false,
            )
        },
        spec(
            "lease-keepalive",
            "lease keepalive round trips, 100 clients",
            10,
            100,
            "lease-keepalive",
            t(50_000, 10_000),
            false,
        ),
        Spec {
            unit: "ops/s",
            ..spec(
                "kubernetes",
                "kube-apiserver mix (CAS create/update/delete, get, paged list), 1–8 KiB, 100 clients",
                10,
                100,
                "kubernetes --preload 2000",
                t(20_000, 5_000),
                false,
            )
        },
    ]
}

impl Spec {
    fn argv(&self, endpoint: &str, total: u64, progress: bool, max_secs: u64) -> Vec<String> {
        let mut v = words(&format!(
            "k3rs-bench --endpoints {endpoint} --conns {} --clients {} --max-secs {max_secs}",
            self.conns, self.clients
        ));
        if !progress {
            v.push("--no-progress".into());
        }
        v.extend(self.args.iter().cloned());
        v.push(self.total_flag.into());
        v.push(total.to_string());
        v
    }

    fn command_line(&self) -> String {
        let mut v = self.argv("ENDPOINT", self.total, true, 0);
        v.retain(|a| a != "--max-secs" && a != "0");
        v.join(" ")
    }
}

// ---- servers ----

/// PIDs of the servers running, for the Ctrl-C handler.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free loopback port")?
        .local_addr()?
        .port())
}

struct Server {
    kind: Kind,
    child: Child,
    endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(kind: Kind, args: &Args, k3rs_bin: &Path) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("k3rs-compare-{}-", kind.name()))
            .tempdir()?;
        let port = free_port()?;
        let endpoint = format!("127.0.0.1:{port}");
        let log = dir.path().join("server.log");
        let mut cmd = match kind {
            Kind::Etcd => {
                let peer = format!("http://127.0.0.1:{}", free_port()?);
                let client = format!("http://{endpoint}");
                let mut c = Command::new(&args.etcd_bin);
                c.arg("--name")
                    .arg("bench")
                    .arg("--data-dir")
                    .arg(dir.path().join("etcd"))
                    .arg("--listen-client-urls")
                    .arg(&client)
                    .arg("--advertise-client-urls")
                    .arg(&client)
                    .arg("--listen-peer-urls")
                    .arg(&peer)
                    .arg("--initial-advertise-peer-urls")
                    .arg(&peer)
                    .arg("--initial-cluster")
                    .arg(format!("bench={peer}"))
                    // Room for the write-heavy runs; durability stays the default.
                    .arg("--quota-backend-bytes")
                    .arg((8u64 << 30).to_string());
                c
            }
            Kind::K3rs => {
                let mut c = Command::new(k3rs_bin);
                c.arg("kine")
                    .arg("--listen-address")
                    .arg(&endpoint)
                    .arg("--endpoint")
                    .arg(format!(
                        "sqlite://{}",
                        dir.path().join("state.db").display()
                    ));
                c
            }
        };
        let out = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let bin = if kind == Kind::Etcd {
            args.etcd_bin.clone()
        } else {
            k3rs_bin.to_path_buf()
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        RUNNING.lock().unwrap().push(child.id());
        Ok(Server {
            kind,
            child,
            endpoint,
            log,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until a Range answers.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before serving:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            if let Ok(ch) =
                k3rs_benches::conn::connect(std::slice::from_ref(&self.endpoint), 1).await
            {
                let req = kine::proto::RangeRequest {
                    key: "/health".into(),
                    ..Default::default()
                };
                if k3rs_benches::conn::kv(&ch[0]).range(req).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer within 30 s:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        RUNNING.lock().unwrap().retain(|&p| p != self.child.id());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Samples a process's resident memory until stopped; keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(procstat::rss_bytes(pid).unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                if let Some(rss) = procstat::rss_bytes(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

// ---- results ----

#[derive(Debug, Clone, Serialize)]
struct Run {
    server: Kind,
    /// What went wrong, if the workload did not complete.
    error: Option<String>,
    /// The server lacks a service the workload needs.
    unsupported: bool,
    /// The headline figure in the workload's unit.
    main: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Failed requests during the measured run.
    errors: u64,
    /// Server CPU (user + system) during the measured run, seconds.
    cpu_secs: Option<f64>,
    /// Resident memory once ready, before any load, MB.
    idle_rss_mb: Option<f64>,
    /// Peak resident memory during the setup and the run, MB.
    peak_rss_mb: Option<f64>,
    result: Option<BenchResult>,
}

#[derive(Debug, Clone, Serialize)]
struct WorkloadReport {
    name: String,
    title: String,
    metric: Metric,
    unit: String,
    command: String,
    runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    quick: bool,
    cpus: usize,
    cpu_model: String,
    etcd_version: String,
    k3rs_commit: String,
    workloads: Vec<WorkloadReport>,
}

const MB: f64 = 1024.0 * 1024.0;

async fn run_one(
    spec: &Spec,
    kind: Kind,
    args: &Args,
    k3rs_bin: &Path,
    quick: bool,
) -> Result<Run> {
    let mut server = Server::start(kind, args, k3rs_bin)?;
    server.wait_ready().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.pid();
    let idle = procstat::rss_bytes(pid);
    let progress = !args.no_progress;
    let max_secs = if quick { 60 } else { 150 };
    let sampler = RssSampler::start(pid);
    if spec.setup {
        let cli = Cli::try_parse_from(spec.argv(&server.endpoint, 0, progress, max_secs))?;
        k3rs_benches::run(&cli).await.context("setup (preload)")?;
    }
    let cpu0 = procstat::cpu_time(pid);
    let cli = Cli::try_parse_from(spec.argv(&server.endpoint, spec.total, progress, max_secs))?;
    let outcome = k3rs_benches::run(&cli).await;
    let cpu1 = procstat::cpu_time(pid);
    let peak = sampler.finish();
    let exited = server.child.try_wait()?.is_some();
    server.stop();
    let mut run = Run {
        server: kind,
        error: None,
        unsupported: false,
        main: None,
        p50_ms: None,
        p99_ms: None,
        errors: 0,
        cpu_secs: cpu0
            .zip(cpu1)
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64()),
        idle_rss_mb: idle.map(|b| b as f64 / MB),
        peak_rss_mb: Some(peak as f64 / MB),
        result: None,
    };
    match outcome {
        Ok(result) => {
            let h = result
                .headline()
                .cloned()
                .ok_or_else(|| anyhow!("no result"))?;
            run.main = Some(match spec.metric {
                Metric::Throughput => h.rps,
                Metric::Latency => h.p50() * 1000.0,
            });
            run.p50_ms = Some(h.p50() * 1000.0);
            run.p99_ms = Some(h.p99() * 1000.0);
            run.errors = result.sections.iter().map(|s| s.summary.error_count).sum();
            if h.count == 0 {
                run.error = Some("no request succeeded".into());
            }
            run.result = Some(result);
        }
        Err(e) => {
            run.unsupported = is_unsupported(&e);
            run.error = Some(format!("{e:#}"));
        }
    }
    if exited {
        run.error
            .get_or_insert_with(|| "the server exited during the run".into());
    }
    Ok(run)
}

fn fmt_num(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(fmt_num).unwrap_or_else(|| "–".into())
}

fn cell(run: Option<&Run>) -> String {
    match run {
        None => "not run".into(),
        Some(r) if r.unsupported => "unimplemented".into(),
        Some(r) if r.main.is_none() => "failed".into(),
        Some(r) => {
            let mut s = opt(r.main);
            if r.errors > 0 {
                let _ = write!(s, " ({} errors)", r.errors);
            }
            s
        }
    }
}

fn find(w: &WorkloadReport, kind: Kind) -> Option<&Run> {
    w.runs.iter().find(|r| r.server == kind)
}

fn ratio(w: &WorkloadReport) -> Option<f64> {
    let (e, k) = (find(w, Kind::Etcd)?.main?, find(w, Kind::K3rs)?.main?);
    (e > 0.0).then(|| k / e)
}

fn markdown(report: &Report, chart_note: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# k3rs vs etcd: side-by-side benchmark\n");
    let _ = writeln!(
        md,
        "{} run on {}; {} CPUs ({}); etcd {}; k3rs at {}. Each workload runs against a fresh server \
         (etcd with default durability, k3rs on SQLite with fsync), one server at a time. The load \
         generator shares the cores with the server, so compare the two columns with each other, not \
         with published figures.\n",
        if report.quick { "Quick" } else { "Full" },
        report.date,
        report.cpus,
        report.cpu_model,
        report.etcd_version,
        report.k3rs_commit
    );
    let _ = writeln!(
        md,
        "Ratio is k3rs/etcd of the figure: above 1 is better for k3rs on throughput rows, below 1 \
         on latency rows. CPU is the server's user+system time during the measured run; peak RSS \
         covers preload and run.\n"
    );
    let _ = writeln!(
        md,
        "| workload | figure | etcd | k3rs | k3rs/etcd | etcd p50 / p99 ms | k3rs p50 / p99 ms | CPU s etcd / k3rs | peak RSS MB etcd / k3rs |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for w in &report.workloads {
        let (e, k) = (find(w, Kind::Etcd), find(w, Kind::K3rs));
        let lat = |r: Option<&Run>| match r {
            Some(r) if r.main.is_some() => format!("{} / {}", opt(r.p50_ms), opt(r.p99_ms)),
            _ => "–".into(),
        };
        let pair =
            |f: fn(&Run) -> Option<f64>| format!("{} / {}", opt(e.and_then(f)), opt(k.and_then(f)));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            w.name,
            w.unit,
            cell(e),
            cell(k),
            ratio(w)
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "–".into()),
            lat(e),
            lat(k),
            pair(|r| r.cpu_secs),
            pair(|r| r.peak_rss_mb),
        );
    }
    let _ = writeln!(md, "\n## Memory\n");
    let _ = writeln!(md, "| | etcd | k3rs |\n|---|---:|---:|");
    let agg = |kind: Kind, f: fn(&Run) -> Option<f64>, pick: fn(f64, f64) -> f64| {
        report
            .workloads
            .iter()
            .filter_map(|w| find(w, kind).and_then(f))
            .reduce(pick)
    };
    let _ = writeln!(
        md,
        "| idle RSS after start, MB (lowest seen) | {} | {} |",
        opt(agg(Kind::Etcd, |r| r.idle_rss_mb, f64::min)),
        opt(agg(Kind::K3rs, |r| r.idle_rss_mb, f64::min))
    );
    let _ = writeln!(
        md,
        "| peak RSS under load, MB (highest seen) | {} | {} |",
        opt(agg(Kind::Etcd, |r| r.peak_rss_mb, f64::max)),
        opt(agg(Kind::K3rs, |r| r.peak_rss_mb, f64::max))
    );
    let failures: Vec<String> = report
        .workloads
        .iter()
        .flat_map(|w| w.runs.iter().map(move |r| (w, r)))
        .filter_map(|(w, r)| {
            r.error
                .as_ref()
                .map(|e| format!("- {} on {}: {e}", w.name, r.server.name()))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "\n## Failures\n\n{}", failures.join("\n"));
    }
    let _ = writeln!(md, "\n## Workloads\n");
    for w in &report.workloads {
        let _ = writeln!(md, "- **{}**: {}. `{}`", w.name, w.title, w.command);
    }
    let _ = writeln!(md, "\n{chart_note}");
    md
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn command_output(cmd: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c.output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

async fn compare(args: Args) -> Result<()> {
    let all = specs(args.quick);
    if args.list {
        for s in &all {
            println!("{:<16} {}", s.name, s.title);
        }
        return Ok(());
    }
    let selected: Vec<&Spec> = if args.workloads.is_empty() {
        all.iter().collect()
    } else {
        let mut v = Vec::new();
        for name in &args.workloads {
            match all.iter().find(|s| s.name == name) {
                Some(s) => v.push(s),
                None => bail!(
                    "unknown workload {name:?}; known: {}",
                    all.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        v
    };
    let k3rs_bin = args
        .k3rs_bin
        .clone()
        .unwrap_or_else(|| target_dir().join("release/k3rs"));
    if args.servers.contains(&Kind::K3rs) && !k3rs_bin.exists() {
        bail!(
            "the k3rs binary is not at {}; build it first: cargo build --release -p k3rs (or pass --k3rs-bin)",
            k3rs_bin.display()
        );
    }
    if args.servers.contains(&Kind::Etcd) && !args.etcd_bin.exists() {
        bail!(
            "etcd is not at {}; install etcd 3.4 or pass --etcd-bin",
            args.etcd_bin.display()
        );
    }
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-report"));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;

    let etcd_version = command_output(
        args.etcd_bin.to_str().unwrap_or("etcd"),
        &["--version"],
        None,
    )
    .and_then(|s| s.lines().next().map(|l| l.replace("etcd Version: ", "")))
    .unwrap_or_else(|| "unknown".into());
    let mut report = Report {
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], None).unwrap_or_default(),
        quick: args.quick,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model: cpu_model(),
        etcd_version,
        k3rs_commit: command_output(
            "git",
            &["rev-parse", "--short", "HEAD"],
            Some(&workspace_root()),
        )
        .map(|c| {
            let dirty = command_output(
                "git",
                &["status", "--porcelain", "--untracked-files=no"],
                Some(&workspace_root()),
            );
            if dirty.is_some() {
                format!("{c} (with local changes)")
            } else {
                c
            }
        })
        .unwrap_or_else(|| "unknown".into()),
        workloads: Vec::new(),
    };

    let started = Instant::now();
    let steps = selected.len() * args.servers.len();
    let mut step = 0;
    for spec in &selected {
        let mut w = WorkloadReport {
            name: spec.name.into(),
            title: spec.title.into(),
            metric: spec.metric,
            unit: spec.unit.into(),
            command: spec.command_line(),
            runs: Vec::new(),
        };
        for &kind in &args.servers {
            step += 1;
            eprintln!(
                "[{step}/{steps}, {:.0}s] {} on {}: {}",
                started.elapsed().as_secs_f64(),
                spec.name,
                kind.name(),
                spec.title
            );
            let run = match run_one(spec, kind, &args, &k3rs_bin, args.quick).await {
                Ok(r) => r,
                Err(e) => Run {
                    server: kind,
                    error: Some(format!("{e:#}")),
                    unsupported: is_unsupported(&e),
                    main: None,
                    p50_ms: None,
                    p99_ms: None,
                    errors: 0,
                    cpu_secs: None,
                    idle_rss_mb: None,
                    peak_rss_mb: None,
                    result: None,
                },
            };
            match (&run.main, &run.error) {
                (Some(m), None) => eprintln!(
                    "    {} {}; p50 {} ms, p99 {} ms; server CPU {} s, peak RSS {} MB{}",
                    fmt_num(*m),
                    spec.unit,
                    opt(run.p50_ms),
                    opt(run.p99_ms),
                    opt(run.cpu_secs),
                    opt(run.peak_rss_mb),
                    if run.errors > 0 {
                        format!(", {} failed requests", run.errors)
                    } else {
                        String::new()
                    }
                ),
                (_, Some(e)) => eprintln!(
                    "    {}: {e}",
                    if run.unsupported {
                        "unimplemented"
                    } else {
                        "FAILED"
                    }
                ),
                _ => {}
            }
            w.runs.push(run);
        }
        report.workloads.push(w);
        // Write as we go, so an interrupted run still leaves a report.
        write_outputs(&report, &out_dir, false)?;
    }
    let md = write_outputs(&report, &out_dir, true)?;
    println!("{md}");
    eprintln!(
        "wrote {} in {:.0}s",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_outputs(report: &Report, out_dir: &Path, with_chart: bool) -> Result<String> {
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let mut chart_note = String::new();
    if with_chart {
        let bars: Vec<Bar> = report
            .workloads
            .iter()
            .map(|w| {
                let main = ratio(w).map(|r| {
                    if w.metric == Metric::Latency && r > 0.0 {
                        1.0 / r
                    } else {
                        r
                    }
                });
                let p99 = match (
                    find(w, Kind::Etcd).and_then(|r| r.main.and(r.p99_ms)),
                    find(w, Kind::K3rs).and_then(|r| r.main.and(r.p99_ms)),
                ) {
                    (Some(e), Some(k)) if k > 0.0 => Some(e / k),
                    _ => None,
                };
                Bar {
                    label: w.name.clone(),
                    main_ratio: main,
                    p99_ratio: p99,
                }
            })
            .collect();
        let (width, height) = (1000, 560);
        match chart::render(&bars, "k3rs relative to etcd (1.0 = etcd; higher is better for k3rs)", width, height)
            .and_then(|(rgb, text)| chart::write_png(&out_dir.join("chart.png"), &rgb, width, height).map(|_| text))
        {
            Ok(true) => chart_note = "![k3rs relative to etcd](chart.png)".into(),
            Ok(false) => {
                chart_note = "![k3rs relative to etcd](chart.png) (no TrueType font was found, so the chart has no labels: \
                              bars follow the table's order; blue = main figure, orange = p99)"
                    .into()
            }
            Err(e) => chart_note = format!("(the chart could not be drawn: {e:#})"),
        }
    }
    let md = markdown(report, &chart_note);
    std::fs::write(out_dir.join("report.md"), &md)?;
    Ok(md)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("k3rs-compare: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        // Dropping `compare` on a signal stops the running server.
        tokio::select! {
            r = compare(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
            _ = term => Err(anyhow!("terminated")),
        }
    });
    // Never leave a server behind, whatever happened.
    for pid in RUNNING.lock().unwrap().drain(..) {
        signal(pid, "KILL");
    }
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k3rs-compare: {e:#}");
            ExitCode::FAILURE
        }
    }
}
