//! The MySQL and MariaDB backend: the same revision log as SQLite and
//! PostgreSQL, in InnoDB tables.
//!
//! Schema (version 1, in the DSN's database; created on first start):
//! `k3rs_log(revision, sub, key LONGBLOB, create_revision, version, lease,
//! value LONGBLOB)` with primary key `(revision, sub)` (keys are compared as
//! bytes, never through a collation, and never need an index of their
//! own: a row is found by revision first), `k3rs_meta(name, value)` and
//! `k3rs_leases(id, ttl)`.
//!
//! One server owns a database at a time (`GET_LOCK`), as on PostgreSQL.
//! A commit is one transaction: multi-row inserts, lease changes and the
//! revision counter. InnoDB's default `innodb_flush_log_at_trx_commit=1`
//! makes it durable at commit.

use bytes::Bytes;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Value};

use super::reader_threads::ReaderThreads;
use super::{CommitBatch, Loaded, LogReader, LogRecord, LogWriter, StoreIdentity, StoredLease};
use crate::error::{Error, Result};

/// The schema this code writes.
const SCHEMA_VERSION: i64 = 1;
/// kine's database when the DSN names none.
const DEFAULT_DATABASE: &str = "kubernetes";
/// The lock that marks the database's owner, followed by the database's
/// name: MySQL's named locks are server-wide.
const OWNER_LOCK: &str = "k3rs-owner:";
/// Connections for historic values and sizes.
const READER_CONNECTIONS: usize = 2;
/// Rows per INSERT statement: well under MySQL's default 64 MiB packet
/// for values up to 1.5 MiB, and few statements per batch.
const ROWS_PER_INSERT: usize = 256;
/// Value bytes per INSERT statement, for the same limit.
const BYTES_PER_INSERT: usize = 8 << 20;
/// How long start-up keeps trying a database that is down.
const START_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// Where and how to reach MySQL.
#[derive(Clone)]
pub struct MysqlConfig {
    /// kine's form, `mysql://user:pass@tcp(host:3306)/db`, or a plain URL.
    pub dsn: String,
}

impl std::fmt::Debug for MysqlConfig {
    // The DSN may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlConfig").finish_non_exhaustive()
    }
}

impl MysqlConfig {
    /// The DSN as a URL the driver reads: kine's `tcp(host:port)` becomes
    /// `host:port`, and go-sql-driver parameters are dropped.
    fn url(&self) -> String {
        let url = self.dsn.replacen("@tcp(", "@", 1);
        let url = match url.find(")/") {
            Some(i) if self.dsn.contains("@tcp(") => format!("{}{}", &url[..i], &url[i + 1..]),
            _ => url,
        };
        let url = url.split('?').next().unwrap_or_default().to_string();
        // `mysql://user@host` with no database: kine's default.
        let after_host = url.splitn(4, '/').nth(3);
        match after_host {
            Some(db) if !db.is_empty() => url,
            Some(_) => format!("{url}{DEFAULT_DATABASE}"),
            None => format!("{url}/{DEFAULT_DATABASE}"),
        }
    }

    fn opts(&self) -> Result<Opts> {
        Opts::from_url(&self.url())
            .map_err(|e| Error::Storage(format!("the MySQL endpoint is not a valid DSN: {e}")))
    }

    /// The host and database, for logs and errors (no credentials).
    pub fn describe(&self) -> String {
        match self.opts() {
            Ok(o) => format!(
                "mysql://{}:{}/{}",
                o.ip_or_hostname(),
                o.tcp_port(),
                o.db_name().unwrap_or(DEFAULT_DATABASE)
            ),
            Err(_) => "mysql (unparsable DSN)".into(),
        }
    }
}

/// A connection and the runtime it runs on.
pub(crate) struct Client {
    runtime: tokio::runtime::Runtime,
    conn: Option<Conn>,
}

impl Client {
    fn connect(opts: Opts) -> std::result::Result<Client, mysql_async::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| mysql_async::Error::Other(Box::new(e)))?;
        let conn = runtime.block_on(Conn::new(opts))?;
        Ok(Client {
            runtime,
            conn: Some(conn),
        })
    }

    /// Runs `f` on the connection; a connection error drops it, so the
    /// next call reconnects.
    fn run<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnOnce(&mut Conn) -> std::result::Result<T, mysql_async::Error>,
    ) -> Result<T> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::CommitUnknown("not connected".into()));
        };
        let result = self.runtime.block_on(f(conn));
        result.map_err(|e| {
            if !matches!(e, mysql_async::Error::Server(_)) {
                self.conn = None;
            }
            sql_error(what, e)
        })
    }
}

fn sql_error(what: &str, e: mysql_async::Error) -> Error {
    match e {
        // The server answered: the statement failed, nothing of it stays.
        mysql_async::Error::Server(s) => {
            Error::Storage(format!("{what}: {} (error {})", s.message, s.code))
        }
        other => Error::CommitUnknown(format!("{what}: {other}")),
    }
}

/// Explains a connection error in terms of what to fix.
fn explain(config: &MysqlConfig, e: &mysql_async::Error) -> Error {
    let what = match e {
        mysql_async::Error::Server(s) if s.code == 1045 => "wrong user or password",
        mysql_async::Error::Server(s) if s.code == 1044 || s.code == 1142 => {
            "the user lacks a privilege k3rs needs"
        }
        mysql_async::Error::Server(s) if s.code == 1040 => "the server has no connection slot left",
        _ => "cannot connect",
    };
    Error::Storage(format!("{}: {what}: {e}", config.describe()))
}

/// Connects, creating the database if it does not exist and waiting for a
/// server that is down (with back-off) for up to two minutes.
fn connect(config: &MysqlConfig) -> Result<Client> {
    let opts = config.opts()?;
    let started = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match Client::connect(opts.clone()) {
            Ok(client) => return Ok(client),
            Err(mysql_async::Error::Server(s)) if s.code == 1049 => {
                create_database(&opts).map_err(|e| explain(config, &e))?;
            }
            Err(e @ mysql_async::Error::Server(_)) => return Err(explain(config, &e)),
            Err(e) if started.elapsed() < START_RETRY_FOR => {
                tracing::warn!(database = %config.describe(), error = %e, retry_in_ms = delay.as_millis() as u64, "MySQL is unreachable; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(explain(config, &e)),
        }
    }
}

/// Creates the DSN's database, as kine does.
fn create_database(opts: &Opts) -> std::result::Result<(), mysql_async::Error> {
    let name = opts
        .db_name()
        .unwrap_or(DEFAULT_DATABASE)
        .replace('`', "``");
    let admin: Opts = OptsBuilder::from_opts(opts.clone())
        .db_name(None::<String>)
        .into();
    let mut client = Client::connect(admin)?;
    let conn = client.conn.as_mut().expect("just connected");
    client
        .runtime
        .block_on(conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{name}`")))?;
    tracing::info!(database = %name, "created the database");
    Ok(())
}

/// Opens (creating if needed) the store's tables, returning the writer and
/// the reader.
pub fn open(config: &MysqlConfig) -> Result<(MysqlWriter, MysqlReader)> {
    let mut client = connect(config)?;
    take_owner_lock(&mut client, config)?;
    migrate(&mut client, config)?;
    let readers = (0..READER_CONNECTIONS)
        .map(|_| connect(config))
        .collect::<Result<_>>()?;
    let reconnect = config.clone();
    let threads = ReaderThreads::start(
        "k3rs-mysql-read",
        readers,
        |c: &Client| c.conn.is_some(),
        move || reconnect.opts().ok().and_then(|o| Client::connect(o).ok()),
    )?;
    Ok((
        MysqlWriter {
            client,
            config: config.clone(),
        },
        MysqlReader { threads },
    ))
}

fn take_owner_lock(client: &mut Client, config: &MysqlConfig) -> Result<()> {
    let owned: Option<Option<i64>> = client.run("taking the owner lock", async |c| {
        // NULL (no database selected) counts as not owned.
        c.query_first(format!(
            "SELECT GET_LOCK(LEFT(CONCAT('{OWNER_LOCK}', DATABASE()), 64), 0)"
        ))
        .await
    })?;
    if owned.flatten() != Some(1) {
        return Err(Error::Storage(format!(
            "{} is in use by another k3rs server; several servers on one database are not built yet",
            config.describe()
        )));
    }
    Ok(())
}

fn migrate(client: &mut Client, config: &MysqlConfig) -> Result<()> {
    let version: Option<i64> = client.run("creating the schema", async |c| {
        c.query_drop(
            "CREATE TABLE IF NOT EXISTS k3rs_meta (name VARCHAR(64) NOT NULL PRIMARY KEY,
                 value BIGINT NOT NULL) ENGINE=InnoDB",
        )
        .await?;
        c.query_first("SELECT value FROM k3rs_meta WHERE name = 'schema_version'")
            .await
    })?;
    match version {
        Some(v) if v > SCHEMA_VERSION => Err(Error::Storage(format!(
            "{} has k3rs schema version {v}, newer than this k3rs understands ({SCHEMA_VERSION}); upgrade k3rs",
            config.describe()
        ))),
        Some(_) => Ok(()),
        None => {
            let (cluster, member) = (super::random_id() as i64, super::random_id() as i64);
            client.run("creating the schema", async |c| {
                c.query_drop(
                    "CREATE TABLE IF NOT EXISTS k3rs_log (
                         revision BIGINT NOT NULL,
                         sub INT NOT NULL,
                         `key` LONGBLOB NOT NULL,
                         create_revision BIGINT NOT NULL,
                         version BIGINT NOT NULL,
                         lease BIGINT NOT NULL,
                         value LONGBLOB NOT NULL,
                         PRIMARY KEY (revision, sub)) ENGINE=InnoDB",
                )
                .await?;
                c.query_drop(
                    "CREATE TABLE IF NOT EXISTS k3rs_leases (id BIGINT NOT NULL PRIMARY KEY,
                         ttl BIGINT NOT NULL) ENGINE=InnoDB",
                )
                .await?;
                c.exec_drop(
                    "INSERT INTO k3rs_meta (name, value) VALUES
                         ('current_revision', 1), ('compact_revision', -1),
                         ('cluster_id', ?), ('member_id', ?), ('schema_version', ?)",
                    (cluster, member, SCHEMA_VERSION),
                )
                .await
            })?;
            tracing::info!(database = %config.describe(), "created the k3rs schema");
            Ok(())
        }
    }
}

/// The write connection, owned by the writer thread.
pub struct MysqlWriter {
    client: Client,
    config: MysqlConfig,
}

impl MysqlWriter {
    /// Reconnects if the connection broke, taking the owner lock again.
    fn ensure_connected(&mut self) -> Result<()> {
        if self.client.conn.is_some() {
            return Ok(());
        }
        let mut client = Client::connect(self.config.opts()?)
            .map_err(|e| Error::CommitUnknown(format!("reconnecting: {e}")))?;
        take_owner_lock(&mut client, &self.config).map_err(|_| {
            Error::CommitUnknown(
                "another session still holds the owner lock (the old connection is not gone yet)"
                    .into(),
            )
        })?;
        tracing::info!(database = %self.config.describe(), "reconnected to MySQL");
        self.client = client;
        Ok(())
    }
}

/// Multi-row INSERT statements for `records`, each within the size bounds.
fn insert_statements(records: &[LogRecord]) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < records.len()
            && end - start < ROWS_PER_INSERT
            && (end == start || bytes + records[end].value.len() < BYTES_PER_INSERT)
        {
            bytes += records[end].value.len() + records[end].key.len();
            end += 1;
        }
        let rows = &records[start..end];
        let mut sql = String::from(
            "INSERT INTO k3rs_log (revision, sub, `key`, create_revision, version, lease, value) VALUES ",
        );
        let mut params = Vec::with_capacity(rows.len() * 7);
        for (i, r) in rows.iter().enumerate() {
            sql.push_str(if i == 0 {
                "(?,?,?,?,?,?,?)"
            } else {
                ",(?,?,?,?,?,?,?)"
            });
            params.extend([
                Value::Int(r.mod_revision),
                Value::Int(r.sub as i64),
                Value::Bytes(r.key.to_vec()),
                Value::Int(r.create_revision),
                Value::Int(r.version),
                Value::Int(r.lease),
                Value::Bytes(r.value.to_vec()),
            ]);
        }
        out.push((sql, params));
        start = end;
    }
    out
}

impl LogWriter for MysqlWriter {
    fn load(&mut self, f: &mut dyn FnMut(LogRecord)) -> Result<Loaded> {
        let mut max_revision = 1;
        let (leases, meta) = self.client.run("loading the log", async |c| {
            c.query_drop("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await?;
            let mut tx = c.start_transaction(Default::default()).await?;
            let mut rows = tx
                .query_iter(
                    "SELECT revision, sub, `key`, create_revision, version, lease, value
                     FROM k3rs_log ORDER BY revision, sub",
                )
                .await?;
            rows.for_each(|row| {
                let (mod_revision, sub, key, create_revision, version, lease, value): (
                    i64,
                    i64,
                    Vec<u8>,
                    i64,
                    i64,
                    i64,
                    Vec<u8>,
                ) = mysql_async::from_row(row);
                max_revision = mod_revision;
                f(LogRecord {
                    mod_revision,
                    sub: sub as u32,
                    key: Bytes::from(key),
                    create_revision,
                    version,
                    lease,
                    value: Bytes::from(value),
                });
            })
            .await?;
            let leases: Vec<(i64, i64)> = tx
                .query("SELECT id, ttl FROM k3rs_leases ORDER BY id")
                .await?;
            let meta: Vec<(String, i64)> = tx.query("SELECT name, value FROM k3rs_meta").await?;
            tx.commit().await?;
            Ok((leases, meta))
        })?;
        let meta: std::collections::HashMap<String, i64> = meta.into_iter().collect();
        let get = |name: &str| meta.get(name).copied().unwrap_or_default();
        Ok(Loaded {
            current_revision: get("current_revision").max(max_revision),
            compact_revision: get("compact_revision"),
            identity: StoreIdentity {
                cluster_id: get("cluster_id") as u64,
                member_id: get("member_id") as u64,
            },
            leases: leases
                .into_iter()
                .map(|(id, ttl)| StoredLease { id, ttl })
                .collect(),
        })
    }

    fn commit(&mut self, batch: &CommitBatch) -> Result<()> {
        self.ensure_connected()?;
        let inserts = insert_statements(&batch.records);
        self.client.run("commit", async |c| {
            let mut tx = c.start_transaction(Default::default()).await?;
            for (sql, params) in inserts {
                tx.exec_drop(sql, Params::Positional(params)).await?;
            }
            for l in &batch.granted_leases {
                tx.exec_drop(
                    "INSERT INTO k3rs_leases (id, ttl) VALUES (?, ?)
                     ON DUPLICATE KEY UPDATE ttl = VALUES(ttl)",
                    (l.id, l.ttl),
                )
                .await?;
            }
            for id in &batch.revoked_leases {
                tx.exec_drop("DELETE FROM k3rs_leases WHERE id = ?", (*id,))
                    .await?;
            }
            tx.exec_drop(
                "UPDATE k3rs_meta SET value = ? WHERE name = 'current_revision'",
                (batch.current_revision,),
            )
            .await?;
            tx.commit().await
        })
    }

    fn resolve_commit(&mut self, revision: i64) -> Result<bool> {
        self.ensure_connected()?;
        let current: Option<i64> = self.client.run("reading the revision", async |c| {
            c.query_first("SELECT value FROM k3rs_meta WHERE name = 'current_revision'")
                .await
        })?;
        Ok(current.unwrap_or_default() >= revision)
    }

    fn set_compact_revision(&mut self, revision: i64) -> Result<()> {
        self.ensure_connected()?;
        self.client
            .run("recording the compact revision", async |c| {
                c.exec_drop(
                    "UPDATE k3rs_meta SET value = ? WHERE name = 'compact_revision'",
                    (revision,),
                )
                .await
            })
    }

    fn delete_revisions(&mut self, rows: &[(i64, Bytes)]) -> Result<()> {
        self.ensure_connected()?;
        let params: Vec<(i64, Vec<u8>)> = rows.iter().map(|(r, k)| (*r, k.to_vec())).collect();
        self.client.run("deleting compacted revisions", async |c| {
            let mut tx = c.start_transaction(Default::default()).await?;
            tx.exec_batch(
                "DELETE FROM k3rs_log WHERE revision = ? AND `key` = ?",
                params,
            )
            .await?;
            tx.commit().await
        })
    }

    fn value_at(&mut self, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>> {
        self.ensure_connected()?;
        let key = key.to_vec();
        value_at(&mut self.client, key, mod_revision)
    }

    fn defragment(&mut self) -> Result<()> {
        self.ensure_connected()?;
        // Rebuilds the tables, returning free space to the file system (with
        // innodb_file_per_table, the default), as etcd's defragment does.
        self.client.run("defragment", async |c| {
            c.query_drop("OPTIMIZE TABLE k3rs_log").await?;
            c.query_drop("OPTIMIZE TABLE k3rs_leases").await
        })
    }
}

fn value_at(client: &mut Client, key: Vec<u8>, mod_revision: i64) -> Result<Option<Bytes>> {
    let value: Option<Vec<u8>> = client.run("reading a historic value", async |c| {
        c.exec_first(
            "SELECT value FROM k3rs_log WHERE revision = ? AND `key` = ? LIMIT 1",
            (mod_revision, key),
        )
        .await
    })?;
    Ok(value.map(Bytes::from))
}

/// Connections for historic values and sizes (see `reader_threads`).
pub struct MysqlReader {
    threads: ReaderThreads<Client>,
}

impl LogReader for MysqlReader {
    fn value_at(&self, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>> {
        let key = key.to_vec();
        self.threads.run(move |c| value_at(c, key, mod_revision))
    }

    fn size(&self) -> Result<(i64, i64)> {
        self.threads.run(|c| {
            let sizes: Option<(i64, i64)> = c.run("reading the database size", async |c| {
                c.query_first(
                    "SELECT CAST(COALESCE(SUM(data_length + index_length + data_free), 0) AS SIGNED),
                            CAST(COALESCE(SUM(data_length + index_length), 0) AS SIGNED)
                     FROM information_schema.tables
                     WHERE table_schema = DATABASE()
                       AND table_name IN ('k3rs_log', 'k3rs_leases', 'k3rs_meta')",
                )
                .await
            })?;
            Ok(sizes.unwrap_or_default())
        })
    }

    fn snapshot(&self) -> Result<std::fs::File> {
        Err(Error::Unimplemented(
            "k3rs: snapshots of a MySQL datastore are not built; use mysqldump or mariadb-dump"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(dsn: &str) -> String {
        MysqlConfig { dsn: dsn.into() }.url()
    }

    #[test]
    fn kine_dsns_become_urls() {
        assert_eq!(
            url("mysql://root:pw@tcp(db:3306)/k3s"),
            "mysql://root:pw@db:3306/k3s"
        );
        assert_eq!(
            url("mysql://root@tcp(db:3306)/"),
            "mysql://root@db:3306/kubernetes"
        );
        assert_eq!(
            url("mysql://root@db:3306"),
            "mysql://root@db:3306/kubernetes"
        );
        assert_eq!(
            url("mysql://u@tcp(db:3306)/k?tls=false&parseTime=true"),
            "mysql://u@db:3306/k"
        );
    }
}
