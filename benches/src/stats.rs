//! Latency statistics and the etcd-style text report.
//!
//! Every request's latency is kept (a benchmark run holds at most a few
//! million), so percentiles are exact: the value at rank ceil(p/100 * n) of
//! the sorted latencies ("nearest rank").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// The percentiles every report prints.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Buckets in the printed latency histogram.
pub const HISTOGRAM_BUCKETS: usize = 10;

/// Latencies of one kind of request, plus the errors seen.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    /// An empty recorder with room for `n` latencies.
    pub fn with_capacity(n: usize) -> Self {
        Recorder {
            latencies: Vec::with_capacity(n),
            errors: BTreeMap::new(),
        }
    }

    /// Records one successful request.
    pub fn record(&mut self, latency: Duration) {
        self.latencies.push(latency);
    }

    /// Records one failed request.
    pub fn error(&mut self, message: impl Into<String>) {
        *self.errors.entry(message.into()).or_default() += 1;
    }

    /// Adds another recorder's samples to this one.
    pub fn merge(&mut self, other: Recorder) {
        self.latencies.extend(other.latencies);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// Successful requests so far.
    pub fn len(&self) -> usize {
        self.latencies.len()
    }

    /// Whether nothing was recorded, success or error.
    pub fn is_empty(&self) -> bool {
        self.latencies.is_empty() && self.errors.is_empty()
    }

    /// Summarises the samples over a run that took `elapsed`.
    pub fn summarize(mut self, elapsed: Duration) -> Summary {
        self.latencies.sort_unstable();
        Summary::from_sorted(&self.latencies, elapsed, self.errors)
    }
}

/// One bar of the histogram: requests with latency in `(previous mark, mark]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// The bucket's upper bound in seconds.
    pub mark: f64,
    /// Requests in the bucket.
    pub count: u64,
}

/// One percentile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentile {
    /// The percentile, 0..=100.
    pub p: f64,
    /// Its latency in seconds.
    pub secs: f64,
}

/// What a run of one kind of request measured. Times are in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Successful requests.
    pub count: u64,
    /// Failed requests.
    pub error_count: u64,
    /// Failures by message.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the run.
    pub total_secs: f64,
    /// Slowest request.
    pub slowest: f64,
    /// Fastest request.
    pub fastest: f64,
    /// Mean latency.
    pub average: f64,
    /// Population standard deviation of the latency.
    pub stddev: f64,
    /// Successful requests per second of wall time.
    pub rps: f64,
    /// Linear buckets from fastest to slowest.
    pub histogram: Vec<Bucket>,
    /// `PERCENTILES`, in order.
    pub percentiles: Vec<Percentile>,
}

impl Summary {
    /// Summarises latencies already sorted ascending.
    pub fn from_sorted(
        sorted: &[Duration],
        elapsed: Duration,
        errors: BTreeMap<String, u64>,
    ) -> Summary {
        debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        let secs: Vec<f64> = sorted.iter().map(Duration::as_secs_f64).collect();
        let n = secs.len();
        let total_secs = elapsed.as_secs_f64();
        let (fastest, slowest) = if n == 0 {
            (0.0, 0.0)
        } else {
            (secs[0], secs[n - 1])
        };
        let average = if n == 0 {
            0.0
        } else {
            secs.iter().sum::<f64>() / n as f64
        };
        Summary {
            count: n as u64,
            error_count: errors.values().sum(),
            errors,
            total_secs,
            slowest,
            fastest,
            average,
            stddev: stddev(&secs, average),
            rps: if total_secs > 0.0 {
                n as f64 / total_secs
            } else {
                0.0
            },
            histogram: histogram(&secs, HISTOGRAM_BUCKETS),
            percentiles: PERCENTILES
                .iter()
                .map(|&p| Percentile {
                    p,
                    secs: percentile(&secs, p),
                })
                .collect(),
        }
    }

    /// The latency at percentile `p`, if it is one of `PERCENTILES`.
    pub fn at(&self, p: f64) -> Option<f64> {
        self.percentiles
            .iter()
            .find(|x| (x.p - p).abs() < 1e-9)
            .map(|x| x.secs)
    }

    /// Median latency in seconds (0 with no samples).
    pub fn p50(&self) -> f64 {
        self.at(50.0).unwrap_or(0.0)
    }

    /// 99th percentile latency in seconds (0 with no samples).
    pub fn p99(&self) -> f64 {
        self.at(99.0).unwrap_or(0.0)
    }

    /// The report in the layout of etcd's benchmark tool.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nSummary:");
        let _ = writeln!(out, "  Total:\t{:.4} secs.", self.total_secs);
        let _ = writeln!(out, "  Slowest:\t{:.4} secs.", self.slowest);
        let _ = writeln!(out, "  Fastest:\t{:.4} secs.", self.fastest);
        let _ = writeln!(out, "  Average:\t{:.4} secs.", self.average);
        let _ = writeln!(out, "  Stddev:\t{:.4} secs.", self.stddev);
        let _ = writeln!(out, "  Requests/sec:\t{:.4}", self.rps);
        if self.count > 0 {
            let _ = writeln!(out, "\nResponse time histogram:");
            let max = self
                .histogram
                .iter()
                .map(|b| b.count)
                .max()
                .unwrap_or(0)
                .max(1);
            for b in &self.histogram {
                let bar = (b.count * 40).div_ceil(max) as usize;
                let _ = writeln!(out, "  {:.4} [{}]\t|{}", b.mark, b.count, "∎".repeat(bar));
            }
            let _ = writeln!(out, "\nLatency distribution:");
            for p in &self.percentiles {
                let _ = writeln!(out, "  {}% in {:.4} secs.", fmt_pct(p.p), p.secs);
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (msg, n) in &self.errors {
                let _ = writeln!(out, "  [{n}]\t{msg}");
            }
        }
        out
    }
}

fn fmt_pct(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

/// Nearest-rank percentile of ascending `sorted` (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Population standard deviation around `mean` (0 when empty).
pub fn stddev(xs: &[f64], mean: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
    var.sqrt()
}

/// `buckets` linear buckets from the fastest to the slowest of ascending
/// `sorted`; bucket i holds the values in (mark[i-1], mark[i]], the first
/// also the fastest value itself. Empty input gives no buckets; equal
/// values give one bucket.
pub fn histogram(sorted: &[f64], buckets: usize) -> Vec<Bucket> {
    let (Some(&lo), Some(&hi)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    if buckets == 0 {
        return Vec::new();
    }
    if hi <= lo {
        return vec![Bucket {
            mark: hi,
            count: sorted.len() as u64,
        }];
    }
    let width = (hi - lo) / buckets as f64;
    let mut out: Vec<Bucket> = (1..=buckets)
        .map(|i| Bucket {
            mark: if i == buckets {
                hi
            } else {
                lo + width * i as f64
            },
            count: 0,
        })
        .collect();
    let mut b = 0;
    for &x in sorted {
        while b + 1 < buckets && x > out[b].mark {
            b += 1;
        }
        out[b].count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), 50.0);
        assert_eq!(percentile(&xs, 10.0), 10.0);
        assert_eq!(percentile(&xs, 99.0), 99.0);
        assert_eq!(percentile(&xs, 99.9), 100.0);
        assert_eq!(percentile(&xs, 100.0), 100.0);
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.9), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let four = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&four, 25.0), 1.0);
        assert_eq!(percentile(&four, 50.0), 2.0);
        assert_eq!(percentile(&four, 75.0), 3.0);
        assert_eq!(percentile(&four, 90.0), 4.0);
    }

    #[test]
    fn standard_deviation() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!((stddev(&xs, 5.0) - 2.0).abs() < 1e-12);
        assert_eq!(stddev(&[3.0], 3.0), 0.0);
        assert_eq!(stddev(&[], 0.0), 0.0);
    }

    #[test]
    fn histogram_counts_every_sample_once() {
        let xs: Vec<f64> = (0..=100).map(f64::from).collect();
        let h = histogram(&xs, 10);
        assert_eq!(h.len(), 10);
        assert_eq!(h.iter().map(|b| b.count).sum::<u64>(), 101);
        assert_eq!(h[0].mark, 10.0);
        assert_eq!(h[9].mark, 100.0);
        // (0,10] plus the fastest value itself: 0..=10.
        assert_eq!(h[0].count, 11);
        assert!(h[1..].iter().all(|b| b.count == 10));
    }

    #[test]
    fn histogram_edge_cases() {
        assert!(histogram(&[], 10).is_empty());
        assert_eq!(
            histogram(&[5.0, 5.0, 5.0], 10),
            vec![Bucket {
                mark: 5.0,
                count: 3
            }]
        );
        let h = histogram(&[1.0, 2.0], 4);
        assert_eq!(
            h.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![1, 0, 0, 1]
        );
        // A skewed distribution: most in the first bucket.
        let mut xs = vec![1.0; 99];
        xs.push(101.0);
        let h = histogram(&xs, 10);
        assert_eq!(h[0].count, 99);
        assert_eq!(h[9].count, 1);
    }

    #[test]
    fn summary_figures() {
        let mut r = Recorder::default();
        for d in ms(&[40, 10, 30, 20]) {
            r.record(d);
        }
        r.error("boom");
        r.error("boom");
        let s = r.summarize(Duration::from_secs(2));
        assert_eq!(s.count, 4);
        assert_eq!(s.error_count, 2);
        assert!((s.fastest - 0.010).abs() < 1e-9);
        assert!((s.slowest - 0.040).abs() < 1e-9);
        assert!((s.average - 0.025).abs() < 1e-9);
        assert!((s.stddev - 125e-6f64.sqrt()).abs() < 1e-9);
        assert!((s.rps - 2.0).abs() < 1e-9);
        assert!((s.p50() - 0.020).abs() < 1e-9);
        assert!((s.p99() - 0.040).abs() < 1e-9);
        assert_eq!(s.percentiles.len(), PERCENTILES.len());
        let text = s.render();
        for needle in [
            "Summary:",
            "Total:\t2.0000 secs.",
            "Slowest:\t0.0400 secs.",
            "Fastest:\t0.0100 secs.",
            "Average:\t0.0250 secs.",
            "Requests/sec:\t2.0000",
            "Response time histogram:",
            "Latency distribution:",
            "10% in 0.0100 secs.",
            "99.9% in 0.0400 secs.",
            "Error distribution:",
            "[2]\tboom",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn empty_summary_renders() {
        let s = Recorder::default().summarize(Duration::ZERO);
        assert_eq!(s.count, 0);
        assert_eq!(s.rps, 0.0);
        assert!(s.histogram.is_empty());
        assert!(s.render().contains("Requests/sec:\t0.0000"));
    }

    #[test]
    fn merge_adds_samples_and_errors() {
        let mut a = Recorder::default();
        a.record(Duration::from_millis(1));
        a.error("x");
        let mut b = Recorder::default();
        b.record(Duration::from_millis(2));
        b.error("x");
        b.error("y");
        a.merge(b);
        let s = a.summarize(Duration::from_secs(1));
        assert_eq!(s.count, 2);
        assert_eq!(s.errors.get("x"), Some(&2));
        assert_eq!(s.errors.get("y"), Some(&1));
    }

    #[test]
    fn summary_serializes() {
        let mut r = Recorder::default();
        r.record(Duration::from_millis(5));
        let v = serde_json::to_value(r.summarize(Duration::from_secs(1))).unwrap();
        assert_eq!(v["count"], 1);
        assert_eq!(v["percentiles"].as_array().unwrap().len(), 8);
        assert_eq!(v["histogram"][0]["count"], 1);
    }
}
