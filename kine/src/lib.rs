//! kine: the etcd v3 API over an embedded store, k3rs's datastore.
//!
//! Module map:
//! - `proto`: the etcd wire types, generated from `proto/`.
//! - `server`: the gRPC services (the API boundary); thin.
//! - `mvcc`: etcd's revision model: the in-memory index, the read path, the
//!   applier and the single writer that commits in groups.
//! - `backend`: durable storage under `mvcc` (SQLite today).
//! - `error`: etcd's errors, mapped to gRPC once in `server::status`.

pub mod backend;
mod crc32c;
pub mod error;
pub mod metrics;
pub mod mvcc;
pub mod proto;
pub mod server;
pub mod watch;

pub use error::{Error, Result};
pub use mvcc::Store;
pub use server::{Listeners, ServerConfig, TlsConfig, serve, serve_on, serve_with_monitor};

use backend::sqlite::SqliteConfig;

/// The etcd version reported by default: at least 3.5.13, so kube-apiserver
/// turns on its watch-progress features.
pub const DEFAULT_EMULATED_ETCD_VERSION: &str = "3.6.11";

/// Opens a store on SQLite.
pub fn open_sqlite(config: &SqliteConfig) -> Result<Store> {
    let (writer, reader) = backend::sqlite::open(config)?;
    Store::open(Box::new(writer), Box::new(reader))
}

/// Opens a store on PostgreSQL.
pub fn open_postgres(config: &backend::postgres::PostgresConfig) -> Result<Store> {
    let (writer, reader) = backend::postgres::open(config)?;
    Store::open(Box::new(writer), Box::new(reader))
}

/// Opens a store on MySQL or MariaDB.
pub fn open_mysql(config: &backend::mysql::MysqlConfig) -> Result<Store> {
    let (writer, reader) = backend::mysql::open(config)?;
    Store::open(Box::new(writer), Box::new(reader))
}

/// kine's own compaction loop, for users without kube-apiserver (which
/// compacts through the API): every `interval`, compact to the current
/// revision minus `min_retain`. Runs until the store stops.
pub async fn auto_compact(store: Store, interval: std::time::Duration, min_retain: i64) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let target = store.current_revision() - min_retain;
        if target <= store.compact_revision() || target < 1 {
            continue;
        }
        match store.compact(target, false).await {
            Ok(_) => tracing::info!(revision = target, "compacted"),
            Err(Error::Compacted) => {}
            Err(Error::Stopped) => return,
            Err(e) => {
                tracing::warn!(error = %e, revision = target, "compaction failed; retrying next interval")
            }
        }
    }
}
