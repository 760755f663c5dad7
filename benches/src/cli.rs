//! `k3rs-bench`'s flags, shaped like etcd's benchmark tool: global flags
//! (given before or after the subcommand), one subcommand per workload.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::report::BenchResult;
use crate::runner::RunOpts;
use crate::workloads;

/// An etcd v3 load generator: the workloads of etcd's benchmark tool, plus
/// Kubernetes-shaped ones.
#[derive(Debug, Clone, Parser)]
#[command(name = "k3rs-bench", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every workload takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// gRPC endpoints, comma-separated (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Total gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Total concurrent clients (spread over the connections).
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Print the result as JSON on stdout instead of the text report.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar on stderr.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Stop sending new requests after this many seconds (0: no limit).
    #[arg(long, global = true, default_value_t = 0)]
    pub max_secs: u64,
}

impl Global {
    /// Run options for `total` requests at `rate`.
    pub fn run_opts(&self, label: &str, total: u64, rate: f64) -> RunOpts {
        RunOpts {
            total,
            rate,
            max_duration: (self.max_secs > 0).then(|| Duration::from_secs(self.max_secs)),
            progress: !self.no_progress,
            label: label.to_string(),
        }
    }
}

/// Read consistency of a Range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

/// The workloads.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Puts: random (or sequential) keys from a key space.
    Put(PutArgs),
    /// Ranges over KEY, or [KEY, END).
    Range(RangeArgs),
    /// Txns of --txn-ops puts each.
    TxnPut(TxnPutArgs),
    /// Read-only and write txns mixed by --rw-ratio.
    TxnMixed(TxnMixedArgs),
    /// Creates watchers, then puts to the watched keys and counts events.
    Watch(WatchArgs),
    /// Latency from a put to each watcher's event.
    WatchLatency(WatchLatencyArgs),
    /// LeaseKeepAlive round trips, one lease and stream per client.
    LeaseKeepalive(LeaseKeepaliveArgs),
    /// kube-apiserver-shaped creates, CAS updates and deletes, gets and paged lists.
    Kubernetes(KubernetesArgs),
    /// Kubernetes-style paged lists of a prefix (limit per page, fixed revision).
    List(ListArgs),
    /// count_only Ranges over a prefix.
    Count(CountArgs),
}

impl Command {
    /// The subcommand's name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Put(_) => "put",
            Command::Range(_) => "range",
            Command::TxnPut(_) => "txn-put",
            Command::TxnMixed(_) => "txn-mixed",
            Command::Watch(_) => "watch",
            Command::WatchLatency(_) => "watch-latency",
            Command::LeaseKeepalive(_) => "lease-keepalive",
            Command::Kubernetes(_) => "kubernetes",
            Command::List(_) => "list",
            Command::Count(_) => "count",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Puts in all.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Puts per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Distinct keys to write.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Write keys in order instead of at random.
    #[arg(long)]
    pub sequential_keys: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// The key, or the start of the range.
    pub key: String,
    /// End of the range (exclusive); "\0" style ranges take the literal "\\0".
    pub end: Option<String>,
    /// Range over every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Most keys per response (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Ask for the count only.
    #[arg(long)]
    pub count_only: bool,
    /// Ask for keys without values.
    #[arg(long)]
    pub keys_only: bool,
    /// Ranges in all.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Ranges per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// First write this many keys: KEY itself when 1, else KEY + a number.
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// Value size of preloaded keys.
    #[arg(long, default_value_t = 256)]
    pub preload_val_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct TxnPutArgs {
    /// Puts per txn (distinct keys).
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Distinct keys to write (at least --txn-ops).
    #[arg(long, default_value_t = 1000)]
    pub key_space_size: u64,
    /// Txns in all.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Txns per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct TxnMixedArgs {
    /// Reads per write.
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
    /// Most keys a read returns.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Distinct keys written, and read as one range.
    #[arg(long, default_value_t = 1000)]
    pub key_space_size: u64,
    /// Requests in all.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Requests per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Watch streams (spread over the connections).
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers on each stream.
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Puts to the watched keys once the watchers exist.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Puts per second (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub put_rate: f64,
    /// Distinct watched keys.
    #[arg(long, default_value_t = 100)]
    pub key_space_size: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Seconds to wait for the last events after the last put.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct WatchLatencyArgs {
    /// Watch streams (spread over the connections).
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers on each stream, all on one key.
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// Ask for the previous value with each event.
    #[arg(long)]
    pub prevkv: bool,
    /// Puts per second.
    #[arg(long, default_value_t = 100.0)]
    pub put_rate: f64,
    /// Puts in all.
    #[arg(long, default_value_t = 1000)]
    pub put_total: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size in bytes (at least 8).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Seconds to wait for the last events after the last put.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct LeaseKeepaliveArgs {
    /// Keepalive round trips in all.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// TTL of each client's lease, in seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
}

#[derive(Debug, Clone, Args)]
pub struct KubernetesArgs {
    /// Percent of Event creates under a lease.
    #[arg(long, default_value_t = 5)]
    pub events: u32,
    /// Watchers of the whole prefix (prev_kv, progress requests every 100 ms).
    #[arg(long, default_value_t = 10)]
    pub watchers: usize,
    /// Key prefix of the objects.
    #[arg(long, default_value = "/registry/bench/")]
    pub prefix: String,
    /// Objects created before the timed run.
    #[arg(long, default_value_t = 1000)]
    pub preload: u64,
    /// Namespaces the objects spread over.
    #[arg(long, default_value_t = 10)]
    pub namespaces: u64,
    /// Operations in all.
    #[arg(long, default_value_t = 10000)]
    pub total: u64,
    /// Operations per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Percent of creates.
    #[arg(long, default_value_t = 10)]
    pub creates: u32,
    /// Percent of updates (CAS on mod_revision).
    #[arg(long, default_value_t = 55)]
    pub updates: u32,
    /// Percent of deletes (CAS on mod_revision).
    #[arg(long, default_value_t = 10)]
    pub deletes: u32,
    /// Percent of gets (linearizable single-key Range).
    #[arg(long, default_value_t = 15)]
    pub gets: u32,
    /// Percent of paged lists of a namespace (the rest of 100 also goes here).
    #[arg(long, default_value_t = 5)]
    pub lists: u32,
    /// Lists cover every namespace instead of one.
    #[arg(long)]
    pub cluster_wide_lists: bool,
    /// Page size of lists.
    #[arg(long, default_value_t = 500)]
    pub page_limit: i64,
    /// Smallest object size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub min_val_size: usize,
    /// Largest object size in bytes.
    #[arg(long, default_value_t = 8192)]
    pub max_val_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// The prefix to list.
    #[arg(default_value = "/bench/list/")]
    pub prefix: String,
    /// Keys per page.
    #[arg(long, default_value_t = 500)]
    pub limit: i64,
    /// Whole lists in all.
    #[arg(long, default_value_t = 100)]
    pub total: u64,
    /// Lists per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// First make sure the prefix holds at least this many keys.
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// Value size of preloaded keys.
    #[arg(long, default_value_t = 1024)]
    pub val_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct CountArgs {
    /// The prefix to count.
    #[arg(default_value = "/bench/count/")]
    pub prefix: String,
    /// Counts in all.
    #[arg(long, default_value_t = 1000)]
    pub total: u64,
    /// Counts per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// First make sure the prefix holds at least this many keys.
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// Value size of preloaded keys.
    #[arg(long, default_value_t = 128)]
    pub val_size: usize,
}

/// Runs the workload `cli` names and returns its result.
pub async fn run(cli: &Cli) -> Result<BenchResult> {
    let g = &cli.global;
    if g.clients == 0 || g.conns == 0 {
        bail!("--clients and --conns must be at least 1");
    }
    match &cli.command {
        Command::Put(a) => workloads::kv::put(g, a).await,
        Command::Range(a) => workloads::kv::range(g, a).await,
        Command::TxnPut(a) => workloads::kv::txn_put(g, a).await,
        Command::TxnMixed(a) => workloads::kv::txn_mixed(g, a).await,
        Command::Watch(a) => workloads::watch::watch(g, a).await,
        Command::WatchLatency(a) => workloads::watch::watch_latency(g, a).await,
        Command::LeaseKeepalive(a) => workloads::lease::keepalive(g, a).await,
        Command::Kubernetes(a) => workloads::kubernetes::run(g, a).await,
        Command::List(a) => workloads::list::list(g, a).await,
        Command::Count(a) => workloads::list::count(g, a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let a = Cli::try_parse_from([
            "k3rs-bench",
            "--conns",
            "10",
            "put",
            "--clients",
            "100",
            "--key-size",
            "256",
        ])
        .unwrap();
        assert_eq!(a.global.conns, 10);
        assert_eq!(a.global.clients, 100);
        let Command::Put(p) = &a.command else {
            panic!()
        };
        assert_eq!(p.key_size, 256);
        assert_eq!(p.val_size, 8);
        assert_eq!(p.total, 10000);
        assert_eq!(a.global.endpoints, vec!["127.0.0.1:2379".to_string()]);
    }

    #[test]
    fn range_takes_key_and_end() {
        let a = Cli::try_parse_from([
            "k3rs-bench",
            "range",
            "a",
            "b",
            "--consistency",
            "s",
            "--json",
        ])
        .unwrap();
        let Command::Range(r) = &a.command else {
            panic!()
        };
        assert_eq!((r.key.as_str(), r.end.as_deref()), ("a", Some("b")));
        assert_eq!(r.consistency, Consistency::S);
        assert!(a.global.json);
    }

    #[test]
    fn every_subcommand_parses_with_defaults() {
        for sub in [
            vec!["put"],
            vec!["range", "k"],
            vec!["txn-put"],
            vec!["txn-mixed"],
            vec!["watch"],
            vec!["watch-latency"],
            vec!["lease-keepalive"],
            vec!["kubernetes"],
            vec!["list"],
            vec!["count"],
        ] {
            let name = sub[0];
            let cli = Cli::try_parse_from(std::iter::once("k3rs-bench").chain(sub)).unwrap();
            assert_eq!(cli.command.name(), name);
        }
    }
}
