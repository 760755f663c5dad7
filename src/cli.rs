//! Command line and environment: the only place that reads argv or env.
//! Raw flags are validated into plain config values here.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kine::backend::sqlite::{Durability, SqliteConfig};

/// k3rs: a lightweight Kubernetes datastore and control plane.
#[derive(Debug, Parser)]
#[command(name = "k3rs", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server: today the datastore (the etcd v3 API); the control plane joins it later.
    Server(DatastoreArgs),
    /// Run the datastore alone: a drop-in for kine or etcd under K3s or kube-apiserver.
    Kine(DatastoreArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Flags of the datastore; names follow kine's where kine has one.
#[derive(Debug, Args)]
pub struct DatastoreArgs {
    /// Address the etcd v3 gRPC API listens on.
    #[arg(long, env = "KINE_LISTEN_ADDRESS", default_value = "127.0.0.1:2379")]
    pub listen_address: String,

    /// Storage DSN, in kine's form: sqlite://PATH (postgres:// and mysql:// are not built yet).
    /// Default: SQLite at DATA_DIR/server/db/state.db.
    #[arg(long, env = "KINE_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Directory for k3rs's state. Default: /var/lib/k3rs as root, ~/.k3rs otherwise.
    #[arg(long, env = "K3RS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// etcd version reported by Status; kube-apiserver enables watch-progress features from 3.5.13.
    #[arg(long, env = "KINE_EMULATED_ETCD_VERSION", default_value = kine::DEFAULT_EMULATED_ETCD_VERSION)]
    pub emulated_etcd_version: String,

    /// Interval of periodic watch progress notifications (e.g. 5s, 10m).
    #[arg(long, env = "KINE_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub watch_progress_notify_interval: std::time::Duration,

    /// Compact the history on this interval (e.g. 5m); 0 leaves compaction to
    /// the clients (kube-apiserver compacts every 5 minutes).
    #[arg(long, env = "KINE_COMPACT_INTERVAL", default_value = "0")]
    pub compact_interval: String,

    /// Revisions kept by --compact-interval compaction.
    #[arg(long, env = "KINE_COMPACT_MIN_RETAIN", default_value_t = 1000)]
    pub compact_min_retain: i64,

    /// UNSAFE: do not fsync at commit. Acknowledged writes survive a crash of
    /// k3rs but can be lost on power loss or a kernel crash.
    #[arg(long, env = "K3RS_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,

    /// Member name reported by MemberList. Default: the host name.
    #[arg(long, env = "K3RS_NAME")]
    pub name: Option<String>,

    /// Log format.
    #[arg(long, env = "KINE_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// Log at debug level (RUST_LOG overrides).
    #[arg(long, env = "KINE_DEBUG")]
    pub debug: bool,
}

/// A storage endpoint, parsed once.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Embedded SQLite.
    Sqlite(SqliteConfig),
}

/// Validated datastore settings.
#[derive(Debug)]
pub struct DatastoreConfig {
    pub listen: SocketAddr,
    pub endpoint: Endpoint,
    pub server: kine::ServerConfig,
    pub log_format: LogFormat,
    pub debug: bool,
    /// Own compaction: interval and revisions kept; `None` is off.
    pub auto_compact: Option<(std::time::Duration, i64)>,
}

/// Parses argv and the environment.
pub fn parse() -> Cli {
    Cli::parse()
}

/// Like `parse_duration`, with 0 meaning "off".
fn parse_optional_duration(s: &str) -> Result<Option<std::time::Duration>, String> {
    if s.trim_start_matches('0')
        .chars()
        .all(|c| !c.is_ascii_digit())
    {
        return Ok(None);
    }
    parse_duration(s).map(Some)
}

/// Parses durations like `500ms`, `5s`, `10m`, `1h`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s or 10m"))?;
    let ms = match unit {
        "ms" => n,
        "s" | "" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("{s:?} has an unknown unit; use ms, s, m or h")),
    };
    if ms == 0 {
        return Err("the interval must be above zero".into());
    }
    Ok(std::time::Duration::from_millis(ms))
}

fn default_data_dir() -> PathBuf {
    // Root gets a system path, as K3s does; anyone else their home.
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    match (is_root, std::env::var_os("HOME")) {
        (Ok(false), Some(home)) => PathBuf::from(home).join(".k3rs"),
        _ => PathBuf::from("/var/lib/k3rs"),
    }
}

fn parse_endpoint(dsn: &str, durability: Durability) -> Result<Endpoint> {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        bail!("--endpoint {dsn:?} has no scheme; use sqlite://PATH");
    };
    match scheme {
        "sqlite" => {
            let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                bail!(
                    "--endpoint {dsn:?} names no file; use sqlite://PATH, e.g. sqlite://./db/state.db"
                );
            }
            if !params.is_empty() {
                tracing::warn!(
                    params,
                    "go-sqlite3 parameters in --endpoint are ignored; k3rs sets its own pragmas"
                );
            }
            Ok(Endpoint::Sqlite(SqliteConfig {
                path: PathBuf::from(path),
                durability,
            }))
        }
        "postgres" | "postgresql" | "mysql" => {
            bail!("--endpoint {scheme}:// is not supported yet; use sqlite://PATH")
        }
        other => bail!("--endpoint scheme {other:?} is unknown; use sqlite://PATH"),
    }
}

impl DatastoreArgs {
    /// Validates the flags into a config.
    pub fn into_config(self) -> Result<DatastoreConfig> {
        let listen: SocketAddr = self.listen_address.parse().with_context(|| {
            format!(
                "--listen-address {:?} is not HOST:PORT (e.g. 127.0.0.1:2379)",
                self.listen_address
            )
        })?;
        let compact_interval = parse_optional_duration(&self.compact_interval)
            .map_err(|e| anyhow::anyhow!("--compact-interval: {e}"))?;
        let durability = if self.unsafe_no_fsync {
            Durability::NoSyncUnsafe
        } else {
            Durability::Fsync
        };
        let endpoint = match &self.endpoint {
            Some(dsn) if !dsn.is_empty() => parse_endpoint(dsn, durability)?,
            _ => {
                let dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
                Endpoint::Sqlite(SqliteConfig {
                    path: dir.join("server/db/state.db"),
                    durability,
                })
            }
        };
        let name = self.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "default".into())
        });
        let host = if listen.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            listen.ip().to_string()
        };
        let client_url = if listen.is_ipv6() {
            format!("http://[{host}]:{}", listen.port())
        } else {
            format!("http://{host}:{}", listen.port())
        };
        Ok(DatastoreConfig {
            listen,
            endpoint,
            server: kine::ServerConfig {
                emulated_etcd_version: self.emulated_etcd_version,
                name,
                advertise_client_urls: vec![client_url],
                watch_progress_notify_interval: self.watch_progress_notify_interval,
            },
            log_format: self.log_format,
            debug: self.debug,
            auto_compact: compact_interval.map(|i| (i, self.compact_min_retain.max(0))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<DatastoreConfig> {
        let cli = Cli::try_parse_from(args)?;
        let (Command::Kine(a) | Command::Server(a)) = cli.command;
        a.into_config()
    }

    #[test]
    fn defaults_and_flags_parse() {
        let c = parse_args(&["k3rs", "server"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2379");
        assert!(c.auto_compact.is_none());
        let c = parse_args(&[
            "k3rs",
            "kine",
            "--compact-interval",
            "5m",
            "--watch-progress-notify-interval",
            "100ms",
        ])
        .unwrap();
        assert_eq!(
            c.auto_compact,
            Some((std::time::Duration::from_secs(300), 1000))
        );
        assert_eq!(
            c.server.watch_progress_notify_interval,
            std::time::Duration::from_millis(100)
        );
        assert!(parse_args(&["k3rs", "kine", "--compact-interval", "5 parsecs"]).is_err());
        assert!(parse_args(&["k3rs", "kine", "--listen-address", "nowhere"]).is_err());
    }

    #[test]
    fn endpoints() {
        assert!(
            matches!(parse_endpoint("sqlite://./db/state.db", Durability::Fsync), Ok(Endpoint::Sqlite(c)) if c.path == PathBuf::from("./db/state.db"))
        );
        assert!(
            matches!(parse_endpoint("sqlite:///abs/x.db?_journal=WAL", Durability::Fsync), Ok(Endpoint::Sqlite(c)) if c.path == PathBuf::from("/abs/x.db"))
        );
        assert!(parse_endpoint("state.db", Durability::Fsync).is_err());
        assert!(parse_endpoint("sqlite://", Durability::Fsync).is_err());
        assert!(parse_endpoint("nats://x", Durability::Fsync).is_err());
    }
}
