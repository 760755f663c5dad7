//! watch (watcher creation, then event throughput) and watch-latency (put
//! to event, per watcher).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use kine::proto::kv_client::KvClient;
use kine::proto::watch_request::RequestUnion;
use kine::proto::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::new_result;
use crate::cli::{Global, WatchArgs, WatchLatencyArgs};
use crate::conn;
use crate::keys::{numbered_key, random_bytes, sequenced_value, value_sequence};
use crate::report::{BenchResult, Section};
use crate::runner::{Client, Outcome, run_closed_loop, status_error};
use crate::stats::Recorder;

/// One bidirectional Watch stream.
pub struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    /// Opens a stream on `channel` with a first watcher; returns the stream
    /// and the watcher's id. The create goes out with the call: etcd sends
    /// the response headers only with its first message. A server without
    /// the Watch service gives an `Unsupported` error.
    pub async fn open(channel: &Channel, first: WatchCreateRequest) -> Result<(WatchStream, i64)> {
        let (tx, rx) = mpsc::channel(1024);
        tx.send(create_request(first))
            .await
            .map_err(|_| anyhow!("the watch stream closed"))?;
        let resp = conn::watch(channel)
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|s| status_error("Watch", s))?;
        let mut stream = WatchStream {
            tx,
            rx: resp.into_inner(),
        };
        let id = stream.wait_created().await?;
        Ok((stream, id))
    }

    /// Creates a watcher and waits for its `created` answer; returns its id.
    pub async fn create(&mut self, req: WatchCreateRequest) -> Result<i64> {
        self.tx
            .send(create_request(req))
            .await
            .map_err(|_| anyhow!("the watch stream closed"))?;
        self.wait_created().await
    }

    async fn wait_created(&mut self) -> Result<i64> {
        loop {
            let msg = self
                .next()
                .await?
                .ok_or_else(|| anyhow!("the server closed the watch stream"))?;
            if msg.created {
                if msg.canceled {
                    bail!("the server refused the watch: {}", msg.cancel_reason);
                }
                return Ok(msg.watch_id);
            }
        }
    }

    /// Asks for a progress notification (kube-apiserver does this while a
    /// consistent read waits on its watch cache).
    pub async fn request_progress(&self) -> Result<()> {
        let req = WatchRequest {
            request_union: Some(kine::proto::watch_request::RequestUnion::ProgressRequest(
                Default::default(),
            )),
        };
        self.tx
            .send(req)
            .await
            .map_err(|_| anyhow!("the watch stream closed"))
    }

    /// The next response, `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>> {
        self.rx
            .message()
            .await
            .map_err(|s| status_error("Watch", s))
    }
}

fn create_request(req: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(req)),
    }
}

/// Opens `streams` streams and creates `per_stream` watchers on each
/// (`make(global watcher number)`), timing each creation.
async fn create_watchers(
    channels: &[Channel],
    streams: usize,
    per_stream: usize,
    make: Arc<dyn Fn(usize) -> WatchCreateRequest + Send + Sync>,
    progress: bool,
) -> Result<(Vec<WatchStream>, Recorder, Duration)> {
    let bar =
        crate::runner::Progress::start("watch creation", (streams * per_stream) as u64, progress);
    let done = bar.counter();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let (channel, make, done) = (
            channels[s % channels.len()].clone(),
            make.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::with_capacity(per_stream);
            let t = Instant::now();
            let (mut stream, _) = WatchStream::open(&channel, make(s * per_stream)).await?;
            rec.record(t.elapsed());
            done.fetch_add(1, Ordering::Relaxed);
            for w in 1..per_stream {
                let t = Instant::now();
                stream.create(make(s * per_stream + w)).await?;
                rec.record(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>((stream, rec))
        }));
    }
    let mut out = Vec::new();
    let mut rec = Recorder::default();
    let mut first_err = None;
    for t in tasks {
        match t.await.context("a watch task failed")? {
            Ok((stream, r)) => {
                out.push(stream);
                rec.merge(r);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok((out, rec, elapsed))
}

/// Reads a stream until it ends, handing each response's events to `f`.
fn spawn_reader(
    mut stream: WatchStream,
    mut f: impl FnMut(&WatchResponse) + Send + 'static,
) -> tokio::task::JoinHandle<(WatchStream, Result<()>)> {
    tokio::spawn(async move {
        loop {
            match stream.next().await {
                Ok(Some(msg)) => f(&msg),
                Ok(None) => return (stream, Ok(())),
                Err(e) => return (stream, Err(e)),
            }
        }
    })
}

/// Waits until `received` reaches `expected`, or `drain` passes without
/// progress once `puts_done` is set.
async fn wait_for_events(received: &AtomicU64, expected: u64, puts_done: Instant, drain: Duration) {
    let mut last = received.load(Ordering::Relaxed);
    let mut last_progress = puts_done;
    while received.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= drain {
            return;
        }
    }
}

struct KeyPutClient {
    kv: KvClient<Channel>,
    key_of: Arc<dyn Fn(u64) -> Bytes + Send + Sync>,
    value_of: Arc<dyn Fn(u64) -> Bytes + Send + Sync>,
    /// When each put was sent, in ns after `base`, by put number.
    starts: Option<(Instant, Arc<Vec<AtomicU64>>)>,
}

impl Client for KeyPutClient {
    async fn call(&mut self, i: u64) -> Outcome {
        if let Some((base, starts)) = &self.starts {
            starts[i as usize].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        let req = PutRequest {
            key: (self.key_of)(i),
            value: (self.value_of)(i),
            ..Default::default()
        };
        Outcome::of(self.kv.put(req).await.map(drop))
    }
}

/// `watch`.
pub async fn watch(g: &Global, a: &WatchArgs) -> Result<BenchResult> {
    if a.streams == 0 || a.watch_per_stream == 0 || a.key_space_size == 0 {
        bail!("--streams, --watch-per-stream and --key-space-size must be at least 1");
    }
    let channels = conn::connect(&g.endpoints, g.conns).await?;
    let (key_size, kss) = (a.key_size, a.key_space_size);
    let make = Arc::new(move |w: usize| WatchCreateRequest {
        key: numbered_key(w as u64 % kss, key_size).into(),
        ..Default::default()
    });
    let (streams, creation, creation_elapsed) = create_watchers(
        &channels,
        a.streams,
        a.watch_per_stream,
        make,
        !g.no_progress,
    )
    .await?;

    // Watchers per key, hence the events each put must produce.
    let watchers = (a.streams * a.watch_per_stream) as u64;
    let per_key = |k: u64| watchers / kss + u64::from(k < watchers % kss);
    let expected: u64 = (0..a.put_total).map(|i| per_key(i % kss)).sum();

    let received = Arc::new(AtomicU64::new(0));
    let last_event = Arc::new(Mutex::new(None::<Instant>));
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let (received, last_event) = (received.clone(), last_event.clone());
            spawn_reader(s, move |msg| {
                if !msg.events.is_empty() {
                    received.fetch_add(msg.events.len() as u64, Ordering::Relaxed);
                    *last_event.lock().unwrap() = Some(Instant::now());
                }
            })
        })
        .collect();

    let value = random_bytes(a.val_size, 5);
    let clients = (0..g.clients)
        .map(|c| KeyPutClient {
            kv: conn::kv(&channels[c % channels.len()]),
            key_of: Arc::new(move |i| numbered_key(i % kss, key_size).into()),
            value_of: Arc::new({
                let value = value.clone();
                move |_| value.clone()
            }),
            starts: None,
        })
        .collect();
    let put_start = Instant::now();
    let out = run_closed_loop(
        clients,
        1,
        &g.run_opts("watch puts", a.put_total, a.put_rate),
    )
    .await?;
    wait_for_events(
        &received,
        expected,
        Instant::now(),
        Duration::from_secs(a.drain_secs),
    )
    .await;
    for r in readers {
        r.abort();
    }
    let got = received.load(Ordering::Relaxed);
    let last = last_event.lock().unwrap().unwrap_or(put_start);
    let event_secs = last.duration_since(put_start).as_secs_f64().max(1e-9);
    let sections = vec![
        Section {
            name: "watch creation".into(),
            summary: creation.summarize(creation_elapsed),
        },
        Section {
            name: "put".into(),
            summary: out
                .recorders
                .into_iter()
                .next()
                .unwrap()
                .summarize(out.elapsed),
        },
    ];
    let extra = BTreeMap::from([
        ("watchers".to_string(), watchers as f64),
        ("events_expected".to_string(), expected as f64),
        ("events_received".to_string(), got as f64),
        ("events_per_sec".to_string(), got as f64 / event_secs),
    ]);
    Ok(new_result(g, "watch", sections, extra))
}

/// `watch-latency`.
pub async fn watch_latency(g: &Global, a: &WatchLatencyArgs) -> Result<BenchResult> {
    if a.streams == 0 || a.watchers_per_stream == 0 || a.val_size < 8 {
        bail!("--streams and --watchers-per-stream must be at least 1, --val-size at least 8");
    }
    let channels = conn::connect(&g.endpoints, g.conns).await?;
    let key: Bytes = {
        let mut k = b"/watch-latency/".to_vec();
        k.resize(a.key_size.max(k.len()), b'k');
        k.into()
    };
    let prev_kv = a.prevkv;
    let k = key.clone();
    let make = Arc::new(move |_| WatchCreateRequest {
        key: k.clone(),
        prev_kv,
        ..Default::default()
    });
    let (streams, creation, creation_elapsed) = create_watchers(
        &channels,
        a.streams,
        a.watchers_per_stream,
        make,
        !g.no_progress,
    )
    .await?;

    let watchers = (a.streams * a.watchers_per_stream) as u64;
    let expected = watchers * a.put_total;
    let base = Instant::now();
    let starts: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.put_total).map(|_| AtomicU64::new(0)).collect());
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Recorder::with_capacity(expected as usize)));
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let (received, latencies, starts) =
                (received.clone(), latencies.clone(), starts.clone());
            spawn_reader(s, move |msg| {
                if msg.events.is_empty() {
                    return;
                }
                let now = base.elapsed().as_nanos() as u64;
                let mut rec = latencies.lock().unwrap();
                for ev in &msg.events {
                    let seq = ev.kv.as_ref().and_then(|kv| value_sequence(&kv.value));
                    match seq.and_then(|s| starts.get(s as usize)) {
                        Some(start) => rec.record(Duration::from_nanos(
                            now.saturating_sub(start.load(Ordering::Relaxed)),
                        )),
                        None => rec.error("an event whose value carries no put number"),
                    }
                }
                received.fetch_add(msg.events.len() as u64, Ordering::Relaxed);
            })
        })
        .collect();

    let val_size = a.val_size;
    let clients = (0..g.clients)
        .map(|c| KeyPutClient {
            kv: conn::kv(&channels[c % channels.len()]),
            key_of: Arc::new({
                let key = key.clone();
                move |_| key.clone()
            }),
            value_of: Arc::new(move |i| sequenced_value(i, val_size)),
            starts: Some((base, starts.clone())),
        })
        .collect();
    let put_start = Instant::now();
    let out = run_closed_loop(
        clients,
        1,
        &g.run_opts("watch-latency puts", a.put_total, a.put_rate),
    )
    .await?;
    wait_for_events(
        &received,
        expected,
        Instant::now(),
        Duration::from_secs(a.drain_secs),
    )
    .await;
    let events_elapsed = put_start.elapsed();
    for r in readers {
        r.abort();
    }
    let got = received.load(Ordering::Relaxed);
    let rec = std::mem::take(&mut *latencies.lock().unwrap());
    let sections = vec![
        Section {
            name: "event latency".into(),
            summary: rec.summarize(events_elapsed),
        },
        Section {
            name: "put".into(),
            summary: out
                .recorders
                .into_iter()
                .next()
                .unwrap()
                .summarize(out.elapsed),
        },
        Section {
            name: "watch creation".into(),
            summary: creation.summarize(creation_elapsed),
        },
    ];
    let extra = BTreeMap::from([
        ("watchers".to_string(), watchers as f64),
        ("events_expected".to_string(), expected as f64),
        ("events_received".to_string(), got as f64),
    ]);
    Ok(new_result(g, "watch-latency", sections, extra))
}
