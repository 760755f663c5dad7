//! Load on the Kubernetes REST API, the same for any server (k3rs on its
//! embedded datastore, k3rs on real etcd): create, get, paged list and
//! watch latency of pods, through the same client k3rs's agent uses.
//! One JSON line per workload (ops/s, p50, p99 in ms).
//!
//!   k3rs-kube-bench --server https://127.0.0.1:6443 --ca server-ca.crt \
//!       --token-file token --pods 1000 --clients 20

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apiserver::client::{Client, resource_path};
use clap::Parser;
use k3rs_benches::stats::Recorder;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// The API server, https://HOST:PORT.
    #[arg(long)]
    server: String,
    /// The server's CA (PEM).
    #[arg(long)]
    ca: std::path::PathBuf,
    /// A file holding the bearer token.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Pods created (then read, listed and deleted).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Concurrent requests.
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Page size of the paged list.
    #[arg(long, default_value_t = 500)]
    page: usize,
    /// Full paged lists timed.
    #[arg(long, default_value_t = 5)]
    lists: usize,
    /// Writes timed from request to watch event.
    #[arg(long, default_value_t = 300)]
    watch_writes: usize,
    /// Namespace used (created if missing).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Leave the pods in place at the end.
    #[arg(long)]
    keep: bool,
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": "bench"}},
           "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}})
}

fn report(workload: &str, recorder: Recorder, elapsed: Duration) {
    let s = recorder.summarize(elapsed);
    println!(
        "{}",
        json!({"workload": workload, "count": s.count, "errors": s.error_count, "rps": s.rps,
               "p50_ms": s.p50() * 1000.0, "p99_ms": s.p99() * 1000.0})
    );
}

/// Runs `op(i)` for i in 0..n with `clients` at a time.
async fn fan_out<F, Fut>(n: usize, clients: usize, op: F) -> (Recorder, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, op) = (next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = Recorder::with_capacity(n / clients + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return r;
                }
                let t = Instant::now();
                match op(i).await {
                    Ok(()) => r.record(t.elapsed()),
                    Err(e) => r.error(e),
                }
            }
        }));
    }
    let mut all = Recorder::with_capacity(n);
    for t in tasks {
        all.merge(t.await.expect("a client task"));
    }
    (all, start.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ca = std::fs::read_to_string(&args.ca).context("reading --ca")?;
    let token = std::fs::read_to_string(&args.token_file).context("reading --token-file")?;
    let client = Client::https(&args.server, &ca, token.trim())?;
    let ns = args.namespace.clone();
    let _ = client
        .create(
            &resource_path("v1", "namespaces", None, None),
            &json!({"metadata": {"name": ns}}),
        )
        .await;
    let pods = resource_path("v1", "pods", Some(&ns), None);

    let c = client.clone();
    let path = pods.clone();
    let (r, t) = fan_out(args.pods, args.clients, move |i| {
        let (c, path) = (c.clone(), path.clone());
        async move {
            c.create(&path, &pod(&format!("p{i}")))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    report(&format!("create {} pods", args.pods), r, t);

    let c = client.clone();
    let path = pods.clone();
    let n = args.pods;
    let (r, t) = fan_out(args.pods, args.clients, move |i| {
        let (c, path) = (c.clone(), path.clone());
        async move {
            let name = format!("p{}", (i * 7919) % n);
            c.get(&format!("{path}/{name}"))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    report("get", r, t);

    let mut r = Recorder::with_capacity(args.lists);
    let start = Instant::now();
    for _ in 0..args.lists {
        let t = Instant::now();
        let mut cont = String::new();
        let mut items = 0;
        loop {
            let page = client
                .get(&format!("{pods}?limit={}&continue={cont}", args.page))
                .await?;
            items += page["items"].as_array().map_or(0, Vec::len);
            match page.pointer("/metadata/continue").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => cont = c.to_string(),
                _ => break,
            }
        }
        anyhow::ensure!(
            items >= args.pods,
            "the list had {items} pods, not {}",
            args.pods
        );
        r.record(t.elapsed());
    }
    report(
        &format!("list {} pods (pages of {})", args.pods, args.page),
        r,
        start.elapsed(),
    );

    // Watch latency: one watcher on the namespace; each write's time from
    // sending the request to the event arriving.
    let rv = client.get(&format!("{pods}?limit=1")).await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let mut events = client
        .watch(&format!(
            "{pods}?watch=true&resourceVersion={rv}&labelSelector=app%3Dwatch"
        ))
        .await?;
    let sent: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let receiver = {
        let sent = sent.clone();
        let total = args.watch_writes;
        tokio::spawn(async move {
            let mut r = Recorder::with_capacity(total);
            while r.len() < total {
                let Some(Ok(event)) = events.recv().await else {
                    break;
                };
                let name = event.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if let Some(t) = sent.lock().unwrap().remove(&name) {
                    r.record(t.elapsed());
                }
            }
            r
        })
    };
    let start = Instant::now();
    for i in 0..args.watch_writes {
        let name = format!("w{i}");
        let mut p = pod(&name);
        p["metadata"]["labels"]["app"] = json!("watch");
        sent.lock().unwrap().insert(name, Instant::now());
        client.create(&pods, &p).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(30), receiver).await??;
    report("watch latency (create → event)", r, start.elapsed());

    if !args.keep {
        client.delete(&pods, &json!({})).await.ok();
    }
    Ok(())
}
