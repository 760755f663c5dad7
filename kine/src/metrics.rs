//! Process-wide counters and histograms, rendered in the Prometheus text
//! format (version 0.0.4).
//!
//! Names follow etcd's where the meaning is the same, so existing etcd
//! dashboards and alerts work; k3rs's own carry a `k3rs_` prefix. Values
//! that are cheap to read at scrape time (sizes, revisions, watcher counts)
//! are not kept here: `server::monitor` reads them from the store.
//! Everything is atomics: nothing on the request path takes a lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

/// Seconds buckets for request latencies (Prometheus' defaults, with two
/// finer ones below 5 ms: most k3rs requests finish there).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Seconds buckets for disk commits: etcd's (1 ms doubling to 8 s), plus
/// two below 1 ms for fast disks.
pub const DISK_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];
/// Requests per commit batch.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Most buckets a histogram can have.
const MAX_BUCKETS: usize = 16;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds (cumulative only when rendered).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; MAX_BUCKETS + 1],
    /// The sum, in millionths of the unit, so it fits an atomic integer.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending, at most 16).
    pub const fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(MAX_BUCKETS);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[MAX_BUCKETS].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), cumulative);
    }
}

/// What a gRPC method is: etcd's interceptor labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// Streams both ways (Watch, LeaseKeepAlive).
    BidiStream,
    /// One request, a stream of responses (Snapshot).
    ServerStream,
}

impl CallKind {
    fn label(self) -> &'static str {
        match self {
            CallKind::Unary => "unary",
            CallKind::BidiStream => "bidi_stream",
            CallKind::ServerStream => "server_stream",
        }
    }
}

/// A known gRPC method: `("etcdserverpb.KV", "Range", Unary)`.
pub type Method = (&'static str, &'static str, CallKind);

/// Every method k3rs serves; metrics are kept for these alone, so a
/// client sending made-up paths cannot grow them.
pub const METHODS: [Method; 24] = [
    ("etcdserverpb.KV", "Range", CallKind::Unary),
    ("etcdserverpb.KV", "Put", CallKind::Unary),
    ("etcdserverpb.KV", "DeleteRange", CallKind::Unary),
    ("etcdserverpb.KV", "Txn", CallKind::Unary),
    ("etcdserverpb.KV", "Compact", CallKind::Unary),
    ("etcdserverpb.Watch", "Watch", CallKind::BidiStream),
    ("etcdserverpb.Lease", "LeaseGrant", CallKind::Unary),
    ("etcdserverpb.Lease", "LeaseRevoke", CallKind::Unary),
    ("etcdserverpb.Lease", "LeaseKeepAlive", CallKind::BidiStream),
    ("etcdserverpb.Lease", "LeaseTimeToLive", CallKind::Unary),
    ("etcdserverpb.Lease", "LeaseLeases", CallKind::Unary),
    ("etcdserverpb.Maintenance", "Alarm", CallKind::Unary),
    ("etcdserverpb.Maintenance", "Status", CallKind::Unary),
    ("etcdserverpb.Maintenance", "Defragment", CallKind::Unary),
    ("etcdserverpb.Maintenance", "Hash", CallKind::Unary),
    ("etcdserverpb.Maintenance", "HashKV", CallKind::Unary),
    (
        "etcdserverpb.Maintenance",
        "Snapshot",
        CallKind::ServerStream,
    ),
    ("etcdserverpb.Maintenance", "MoveLeader", CallKind::Unary),
    ("etcdserverpb.Maintenance", "Downgrade", CallKind::Unary),
    ("etcdserverpb.Cluster", "MemberAdd", CallKind::Unary),
    ("etcdserverpb.Cluster", "MemberRemove", CallKind::Unary),
    ("etcdserverpb.Cluster", "MemberUpdate", CallKind::Unary),
    ("etcdserverpb.Cluster", "MemberList", CallKind::Unary),
    ("etcdserverpb.Cluster", "MemberPromote", CallKind::Unary),
];

/// gRPC status code names by code, as go-grpc-prometheus labels them.
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// One method's counters: lock-free, as every call touches them.
#[derive(Debug)]
struct MethodStats {
    started: Counter,
    /// Finished calls by gRPC status code.
    handled: [Counter; CODES.len()],
    latency: Histogram,
}

impl MethodStats {
    const fn new() -> Self {
        MethodStats {
            started: Counter::new(),
            handled: [const { Counter::new() }; CODES.len()],
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

/// Every metric the process keeps.
#[derive(Debug)]
pub struct Metrics {
    /// Per method, in `METHODS` order.
    grpc: [MethodStats; METHODS.len()],
    /// Time of one backend commit, fsync included.
    pub backend_commit: Histogram,
    /// Write requests per commit.
    pub commit_batch_requests: Histogram,
    /// Commits that failed (nothing of them was applied).
    pub commit_failures: Counter,
    /// Watch events sent to clients.
    pub watch_events_sent: Counter,
    /// Leases granted, revoked, renewed (keep-alives) and expired.
    pub leases_granted: Counter,
    /// Leases revoked by a client.
    pub leases_revoked: Counter,
    /// Keep-alive answers.
    pub leases_renewed: Counter,
    /// Leases revoked because their TTL ran out.
    pub leases_expired: Counter,
    /// Compactions started.
    pub compactions: Counter,
    /// Log rows deleted by compaction.
    pub compacted_rows: Counter,
    /// Requests slower than the slow-request threshold.
    pub slow_requests: Counter,
    /// Writes refused because the space quota is exhausted.
    pub quota_refusals: Counter,
    /// Connections closed for not starting HTTP/2 in time.
    pub handshake_timeouts: Counter,
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            grpc: [const { MethodStats::new() }; METHODS.len()],
            backend_commit: Histogram::new(DISK_BUCKETS),
            commit_batch_requests: Histogram::new(BATCH_BUCKETS),
            commit_failures: Counter::new(),
            watch_events_sent: Counter::new(),
            leases_granted: Counter::new(),
            leases_revoked: Counter::new(),
            leases_renewed: Counter::new(),
            leases_expired: Counter::new(),
            compactions: Counter::new(),
            compacted_rows: Counter::new(),
            slow_requests: Counter::new(),
            quota_refusals: Counter::new(),
            handshake_timeouts: Counter::new(),
        }
    }

    /// A call of `METHODS[method]` started.
    pub fn grpc_started(&self, method: usize) {
        self.grpc[method].started.inc();
    }

    /// A call of `METHODS[method]` finished with gRPC status `code` after
    /// `elapsed`; the latency is kept for unary calls only, as etcd does.
    pub fn grpc_handled(&self, method: usize, code: usize, elapsed: Duration) {
        let stats = &self.grpc[method];
        stats.handled[code.min(CODES.len() - 1)].inc();
        if METHODS[method].2 == CallKind::Unary {
            stats.latency.observe_duration(elapsed);
        }
    }

    /// Renders the process-wide metrics into `out`.
    pub fn render(&self, out: &mut String) {
        {
            // Only methods that were called, as go-grpc-prometheus.
            let grpc = || {
                METHODS
                    .iter()
                    .zip(&self.grpc)
                    .filter(|(_, s)| s.started.get() > 0)
            };
            header(out, "grpc_server_started_total", "counter", "RPCs started.");
            for ((service, method, kind), s) in grpc() {
                let _ = writeln!(
                    out,
                    "grpc_server_started_total{{grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"}} {}",
                    kind.label(),
                    s.started.get()
                );
            }
            header(
                out,
                "grpc_server_handled_total",
                "counter",
                "RPCs finished, by gRPC status code.",
            );
            for ((service, method, kind), s) in grpc() {
                for (code, n) in CODES.iter().zip(&s.handled) {
                    let n = n.get();
                    if n == 0 {
                        continue;
                    }
                    let _ = writeln!(
                        out,
                        "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"}} {n}",
                        kind.label()
                    );
                }
            }
            header(
                out,
                "grpc_server_handling_seconds",
                "histogram",
                "Latency of unary RPCs.",
            );
            for ((service, method, kind), s) in grpc() {
                if *kind == CallKind::Unary {
                    let labels = format!(
                        "grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"unary\""
                    );
                    s.latency
                        .render(out, "grpc_server_handling_seconds", &labels);
                }
            }
        }
        histogram(
            out,
            "etcd_disk_backend_commit_duration_seconds",
            "Time of a backend commit, fsync included.",
            &self.backend_commit,
        );
        histogram(
            out,
            "k3rs_commit_batch_requests",
            "Write requests per group commit.",
            &self.commit_batch_requests,
        );
        let counters: [(&str, &str, &Counter); 11] = [
            (
                "k3rs_commit_failures_total",
                "Group commits the backend refused.",
                &self.commit_failures,
            ),
            (
                "etcd_debugging_mvcc_events_total",
                "Watch events sent to clients.",
                &self.watch_events_sent,
            ),
            (
                "etcd_debugging_lease_granted_total",
                "Leases granted.",
                &self.leases_granted,
            ),
            (
                "etcd_debugging_lease_revoked_total",
                "Leases revoked by clients.",
                &self.leases_revoked,
            ),
            (
                "etcd_debugging_lease_renewed_total",
                "Lease keep-alives answered.",
                &self.leases_renewed,
            ),
            (
                "k3rs_leases_expired_total",
                "Leases revoked because their TTL ran out.",
                &self.leases_expired,
            ),
            (
                "k3rs_compactions_total",
                "Compactions started.",
                &self.compactions,
            ),
            (
                "k3rs_compacted_rows_deleted_total",
                "Log rows deleted by compaction.",
                &self.compacted_rows,
            ),
            (
                "k3rs_slow_requests_total",
                "Requests slower than the slow-request threshold.",
                &self.slow_requests,
            ),
            (
                "k3rs_quota_refusals_total",
                "Writes refused because the space quota is exhausted.",
                &self.quota_refusals,
            ),
            (
                "k3rs_handshake_timeouts_total",
                "Connections closed for not starting HTTP/2 in time.",
                &self.handshake_timeouts,
            ),
        ];
        for (name, help, c) in counters {
            counter(out, name, help, c.get());
        }
    }
}

/// Writes `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one unlabelled gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Writes one unlabelled counter.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    h.render(out, name, "");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(7.0);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"0.1\"} 1\nx_bucket{a=\"b\",le=\"1\"} 2\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 3\nx_sum{a=\"b\"} 7.55\nx_count{a=\"b\"} 3\n"
        );
    }
}
