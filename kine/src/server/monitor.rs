//! The monitoring listener (plain HTTP/1): `/metrics` in the Prometheus
//! text format, `/healthz`, `/livez` and `/readyz` as Kubernetes
//! components answer them, and etcd's `/health` JSON.
//!
//! Health asks the writer for a round trip, so a wedged writer or disk
//! shows as unhealthy; a raised alarm makes `/health` false as on etcd.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::{METRICS, gauge, header as metric_header};
use crate::mvcc::Store;
use crate::watch::Hub;

/// How long a health check waits for the writer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers read.
#[derive(Clone)]
pub(super) struct Monitor {
    pub(super) store: Store,
    pub(super) hub: Hub,
    /// False once shutdown began: `/readyz` then fails so load balancers
    /// stop sending new clients.
    pub(super) ready: Arc<AtomicBool>,
    pub(super) started: std::time::SystemTime,
}

/// The routes, apart from serving, so tests can call them directly.
pub(super) fn router(monitor: Monitor) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/health", get(etcd_health))
        .with_state(monitor)
}

/// Serves the monitoring routes on `listener` until `shutdown` resolves.
pub(super) async fn serve(
    listener: TcpListener,
    monitor: Monitor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router(monitor))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "the metrics listener failed");
    }
}

/// Whether the writer answers: an empty txn makes a round trip through it.
async fn writer_answers(store: &Store) -> Result<(), String> {
    match tokio::time::timeout(HEALTH_TIMEOUT, store.txn(Default::default())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the writer did not answer within {HEALTH_TIMEOUT:?}"
        )),
    }
}

async fn healthz(State(m): State<Monitor>) -> Response {
    match writer_answers(&m.store).await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {e}")).into_response(),
    }
}

async fn readyz(State(m): State<Monitor>) -> Response {
    if !m.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    healthz(State(m)).await
}

/// etcd's `/health`: `{"health":"true","reason":""}`.
async fn etcd_health(State(m): State<Monitor>) -> Response {
    let alarms = m.store.alarms().list(0);
    let reason = if let Some(a) = alarms.first() {
        let name = crate::proto::AlarmType::try_from(a.alarm)
            .map(|t| t.as_str_name())
            .unwrap_or("UNKNOWN");
        Some(format!("ALARM {name}"))
    } else {
        writer_answers(&m.store).await.err()
    };
    let (status, health, reason) = match reason {
        None => (StatusCode::OK, "true", String::new()),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, "false", r),
    };
    let reason = reason.replace('\\', "\\\\").replace('"', "\\\"");
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"health\":\"{health}\",\"reason\":\"{reason}\"}}"),
    )
        .into_response()
}

async fn metrics(State(m): State<Monitor>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    METRICS.render(&mut out);
    let store = m.store.clone();
    // Sizes come from the database: off the async threads.
    let size = tokio::task::spawn_blocking(move || store.db_size())
        .await
        .ok()
        .and_then(|r| r.ok());
    if let Some((total, in_use)) = size {
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Database size, free pages included.",
            total as f64,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Database size without free pages.",
            in_use as f64,
        );
    }
    let quota = m.store.alarms().quota();
    gauge(
        &mut out,
        "etcd_server_quota_backend_bytes",
        "The space quota (0: none).",
        quota as f64,
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_current_revision",
        "The current revision.",
        m.store.current_revision() as f64,
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_compact_revision",
        "The compact revision.",
        m.store.compact_revision() as f64,
    );
    let (keys, revisions) = m.store.index_counts();
    gauge(
        &mut out,
        "etcd_debugging_mvcc_keys_total",
        "Keys in the index, deleted ones not yet compacted included.",
        keys as f64,
    );
    gauge(
        &mut out,
        "k3rs_mvcc_revisions",
        "Revisions of keys held in the index.",
        revisions as f64,
    );
    gauge(
        &mut out,
        "k3rs_leases",
        "Live leases.",
        m.store.lease_count() as f64,
    );
    let (streams, watchers, unsynced) = m.hub.counts();
    gauge(
        &mut out,
        "etcd_debugging_mvcc_watch_stream_total",
        "Open watch streams.",
        streams as f64,
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_watcher_total",
        "Watchers.",
        watchers as f64,
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_slow_watcher_total",
        "Watchers catching up from history.",
        unsynced as f64,
    );
    metric_header(
        &mut out,
        "etcd_server_alarms",
        "gauge",
        "Raised alarms, by type.",
    );
    for alarm in m.store.alarms().list(0) {
        let name = crate::proto::AlarmType::try_from(alarm.alarm)
            .map(|t| t.as_str_name())
            .unwrap_or("UNKNOWN");
        let _ = writeln!(out, "etcd_server_alarms{{alarm_type=\"{name}\"}} 1");
    }
    gauge(
        &mut out,
        "etcd_server_has_leader",
        "Whether a leader exists.",
        1.0,
    );
    process_metrics(&mut out, m.started);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// The standard `process_*` metrics, from /proc.
fn process_metrics(out: &mut String, started: std::time::SystemTime) {
    if let Some(start) = started
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
    {
        gauge(
            out,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            start,
        );
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let resident_pages: f64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0.0);
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory in bytes.",
            resident_pages * 4096.0,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            out,
            "process_open_fds",
            "Open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            metric_header(
                out,
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time, in seconds.",
            );
            let _ = writeln!(out, "process_cpu_seconds_total {}", (user + system) / 100.0);
        }
    }
}
