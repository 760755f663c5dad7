//! The closed-loop driver: `clients` tasks share one request budget, each
//! sending its next request when the last one answered, optionally paced to
//! an overall rate. Also the progress bar and the "not implemented" error.

use std::fmt;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tonic::{Code, Status};

use crate::stats::Recorder;

/// The server answered Unimplemented: the workload cannot run there.
#[derive(Debug, Clone)]
pub struct Unsupported {
    /// What was called, e.g. "Watch".
    pub what: String,
    /// The server's message.
    pub message: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server does not implement {} (gRPC Unimplemented: {})",
            self.what, self.message
        )
    }
}

impl std::error::Error for Unsupported {}

/// Turns a status into an error, as `Unsupported` when it is Unimplemented.
pub fn status_error(what: &str, status: Status) -> anyhow::Error {
    if status.code() == Code::Unimplemented {
        anyhow::Error::new(Unsupported {
            what: what.to_string(),
            message: status.message().to_string(),
        })
    } else {
        anyhow::anyhow!("{what} failed: {}: {}", status.code(), status.message())
    }
}

/// Whether `err` (or its cause) is `Unsupported`.
pub fn is_unsupported(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<Unsupported>().is_some())
}

/// A short, stable label for a failed request.
pub fn status_label(status: &Status) -> String {
    let msg = status.message();
    let msg = if msg.len() > 120 { &msg[..120] } else { msg };
    format!("{:?}: {msg}", status.code())
}

/// A progress bar on stderr. On a terminal it redraws one line; otherwise it
/// prints a line every five seconds.
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts a bar for `total` steps labelled `label`; `enabled = false`
    /// gives a bar that only counts.
    pub fn start(label: &str, total: u64, enabled: bool) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = enabled.then(|| {
            let (done, stop, label) = (done.clone(), stop.clone(), label.to_string());
            std::thread::spawn(move || draw_loop(&label, total, &done, &stop))
        });
        Progress { done, stop, thread }
    }

    /// The shared step counter.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Stops drawing and ends the line.
    pub fn finish(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn draw_loop(label: &str, total: u64, done: &AtomicU64, stop: &AtomicBool) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_plain = Instant::now();
    let draw = |final_line: bool| {
        let n = done.load(Ordering::Relaxed).min(total.max(1));
        let frac = if total == 0 {
            1.0
        } else {
            n as f64 / total as f64
        };
        let width = 40;
        let filled = (frac * width as f64) as usize;
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '-' })
            .collect();
        let line = format!(
            "{label} [{bar}] {n}/{total} {:3.0}% {:.1}s",
            frac * 100.0,
            started.elapsed().as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r{line}\x1b[K");
            if final_line {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    };
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(200));
        if tty {
            draw(false);
        } else if last_plain.elapsed() >= Duration::from_secs(5) {
            last_plain = Instant::now();
            draw(false);
        }
    }
    draw(true);
}

/// What one request did.
pub struct Outcome {
    /// Index into the run's classes (e.g. read or write).
    pub class: usize,
    /// Its result.
    pub result: std::result::Result<(), Status>,
}

impl Outcome {
    /// A request of class 0.
    pub fn of(result: std::result::Result<(), Status>) -> Outcome {
        Outcome { class: 0, result }
    }
}

/// One client of a closed-loop run; owns its connection and state.
pub trait Client: Send + 'static {
    /// Sends request number `i` and waits for its answer.
    fn call(&mut self, i: u64) -> impl Future<Output = Outcome> + Send;
}

/// How a closed-loop run is paced and bounded.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Requests in all.
    pub total: u64,
    /// Requests per second over all clients; 0 for as fast as answered.
    pub rate: f64,
    /// Stop sending after this long, if set.
    pub max_duration: Option<Duration>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The bar's label.
    pub label: String,
}

/// What a closed-loop run measured: one recorder per class, and its time.
pub struct RunOutput {
    /// Per class, in the order of the class names given.
    pub recorders: Vec<Recorder>,
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
}

/// Runs `clients` in a closed loop until `opts.total` requests are done.
/// Stops early, with an `Unsupported` error, when the server answers
/// Unimplemented.
pub async fn run_closed_loop<C: Client>(
    clients: Vec<C>,
    classes: usize,
    opts: &RunOpts,
) -> Result<RunOutput> {
    let next = Arc::new(AtomicU64::new(0));
    let abort: Arc<std::sync::Mutex<Option<Status>>> = Arc::default();
    let aborted = Arc::new(AtomicBool::new(false));
    let progress = Progress::start(&opts.label, opts.total, opts.progress);
    let done = progress.counter();
    let started = Instant::now();
    let t0 = tokio::time::Instant::now();
    let per = (opts.total as usize / clients.len().max(1)).saturating_add(16);
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        let (next, abort, aborted, done) =
            (next.clone(), abort.clone(), aborted.clone(), done.clone());
        let (total, rate, max) = (opts.total, opts.rate, opts.max_duration);
        tasks.push(tokio::spawn(async move {
            let mut recs: Vec<Recorder> =
                (0..classes).map(|_| Recorder::with_capacity(per)).collect();
            loop {
                if aborted.load(Ordering::Relaxed) || max.is_some_and(|m| started.elapsed() >= m) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if rate > 0.0 {
                    tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
                }
                let start = Instant::now();
                let out = client.call(i).await;
                let latency = start.elapsed();
                let class = out.class.min(classes - 1);
                match out.result {
                    Ok(()) => recs[class].record(latency),
                    Err(status) if status.code() == Code::Unimplemented => {
                        aborted.store(true, Ordering::Relaxed);
                        abort.lock().unwrap().get_or_insert(status);
                        break;
                    }
                    Err(status) => recs[class].error(status_label(&status)),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            recs
        }));
    }
    let mut recorders: Vec<Recorder> = (0..classes).map(|_| Recorder::default()).collect();
    for t in tasks {
        let recs = t
            .await
            .map_err(|e| anyhow::anyhow!("a client task failed: {e}"))?;
        for (into, from) in recorders.iter_mut().zip(recs) {
            into.merge(from);
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    if let Some(status) = abort.lock().unwrap().take() {
        return Err(status_error(&opts.label, status));
    }
    Ok(RunOutput { recorders, elapsed })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        fail_at: Option<u64>,
        code: Code,
    }

    impl Client for Fake {
        async fn call(&mut self, i: u64) -> Outcome {
            let result = match self.fail_at {
                Some(n) if i >= n => Err(Status::new(self.code, "nope")),
                _ => Ok(()),
            };
            Outcome {
                class: (i % 2) as usize,
                result,
            }
        }
    }

    fn opts(total: u64) -> RunOpts {
        RunOpts {
            total,
            rate: 0.0,
            max_duration: None,
            progress: false,
            label: "Fake".into(),
        }
    }

    #[tokio::test]
    async fn counts_every_request_once_per_class() {
        let clients = (0..3)
            .map(|_| Fake {
                fail_at: None,
                code: Code::Ok,
            })
            .collect();
        let out = run_closed_loop(clients, 2, &opts(101)).await.unwrap();
        assert_eq!(out.recorders[0].len(), 51);
        assert_eq!(out.recorders[1].len(), 50);
    }

    #[tokio::test]
    async fn other_errors_are_counted_not_fatal() {
        let clients = vec![Fake {
            fail_at: Some(5),
            code: Code::Unavailable,
        }];
        let out = run_closed_loop(clients, 1, &opts(10)).await.unwrap();
        let s = out
            .recorders
            .into_iter()
            .next()
            .unwrap()
            .summarize(out.elapsed);
        assert_eq!((s.count, s.error_count), (5, 5));
        assert_eq!(s.errors.keys().next().unwrap(), "Unavailable: nope");
    }

    #[tokio::test]
    async fn unimplemented_stops_the_run_with_unsupported() {
        let clients = (0..2)
            .map(|_| Fake {
                fail_at: Some(3),
                code: Code::Unimplemented,
            })
            .collect();
        let err = run_closed_loop(clients, 2, &opts(1_000_000))
            .await
            .err()
            .unwrap();
        assert!(is_unsupported(&err));
        assert!(err.to_string().contains("does not implement Fake"), "{err}");
    }

    #[tokio::test]
    async fn rate_and_deadline_bound_the_run() {
        let mut o = opts(1_000_000);
        o.rate = 1000.0;
        o.max_duration = Some(Duration::from_millis(50));
        let out = run_closed_loop(
            vec![Fake {
                fail_at: None,
                code: Code::Ok,
            }],
            1,
            &o,
        )
        .await
        .unwrap();
        assert!(out.recorders[0].len() < 1000);
    }
}
