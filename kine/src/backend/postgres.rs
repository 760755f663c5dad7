//! The PostgreSQL backend: the same revision log as SQLite, in an external
//! database.
//!
//! Schema (version 1, in the DSN's database; created on first start):
//! - `k3rs_log(revision, sub, key bytea, create_revision, version, lease,
//!   value bytea)`, primary key `(revision, sub)`: rows in revision order,
//!   a row found by revision and key through the key's prefix. Keys are
//!   `bytea`, compared bytewise whatever the database's collation.
//! - `k3rs_meta(name, value)`: schema version, current and compact
//!   revision, cluster and member id.
//! - `k3rs_leases(id, ttl)`.
//!
//! One server owns the database at a time (a session advisory lock): the
//! writer assigns revisions from its own index, so a second writer would
//! fork the history. Several servers on one database are not built yet.
//!
//! A commit is one statement (insert, lease changes and the revision
//! counter together), so it costs one round trip and is atomic. If the
//! connection breaks during it, `resolve_commit` reads the counter once
//! the database is back to tell whether it landed.

use std::time::Duration;

use bytes::Bytes;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

use super::reader_threads::ReaderThreads;
use super::{CommitBatch, Loaded, LogReader, LogRecord, LogWriter, StoreIdentity, StoredLease};
use crate::error::{Error, Result};

/// The schema this code writes.
const SCHEMA_VERSION: i64 = 1;
/// kine's database when the DSN names none.
const DEFAULT_DATABASE: &str = "kubernetes";
/// The advisory lock key that marks the database's owner: "k3rs" in ASCII.
const OWNER_LOCK: i64 = 0x6b33_7273;
/// Connections for historic values and sizes.
const READER_CONNECTIONS: usize = 2;
/// How long start-up keeps trying a database that is down.
const START_RETRY_FOR: Duration = Duration::from_secs(120);

/// Where and how to reach PostgreSQL.
#[derive(Clone)]
pub struct PostgresConfig {
    /// The DSN, in kine's form: `postgres://user:pass@host:port/db?sslmode=…`.
    pub dsn: String,
}

impl std::fmt::Debug for PostgresConfig {
    // The DSN may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig").finish_non_exhaustive()
    }
}

impl PostgresConfig {
    fn parse(&self) -> Result<Config> {
        let mut config: Config = self.dsn.parse().map_err(|e| {
            Error::Storage(format!("the PostgreSQL endpoint is not a valid DSN: {e}"))
        })?;
        if config.get_dbname().is_none() {
            config.dbname(DEFAULT_DATABASE);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("k3rs");
        Ok(config)
    }

    /// The host and database, for logs and errors (no credentials).
    pub fn describe(&self) -> String {
        match self.parse() {
            Ok(c) => {
                let hosts: Vec<String> = c
                    .get_hosts()
                    .iter()
                    .map(|h| match h {
                        postgres::config::Host::Tcp(name) => name.clone(),
                        postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .collect();
                format!(
                    "postgres://{}/{}",
                    hosts.join(","),
                    c.get_dbname().unwrap_or(DEFAULT_DATABASE)
                )
            }
            Err(_) => "postgres (unparsable DSN)".into(),
        }
    }
}

fn sql_error(what: &str, e: postgres::Error) -> Error {
    match e.as_db_error() {
        // The server answered: the statement failed, and nothing of it stays.
        Some(db) if !e.is_closed() => Error::Storage(format!(
            "{what}: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        _ => Error::CommitUnknown(format!("{what}: {e}")),
    }
}

/// Whether an error means the server is not there (yet), rather than that
/// it refused us.
fn is_unreachable(e: &postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => *code == SqlState::CANNOT_CONNECT_NOW || *code == SqlState::ADMIN_SHUTDOWN,
    }
}

/// Explains a connection error in terms of what to fix.
fn explain(config: &PostgresConfig, e: &postgres::Error) -> Error {
    let what = match e.code() {
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            "wrong user or password"
        }
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            "the user lacks a privilege k3rs needs"
        }
        Some(c) if *c == SqlState::TOO_MANY_CONNECTIONS => "the server has no connection slot left",
        _ => "cannot connect",
    };
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    Error::Storage(format!("{}: {what}: {detail}", config.describe()))
}

/// Connects, creating the database if it does not exist and waiting for
/// a server that is down (with back-off) for up to two minutes.
fn connect(config: &PostgresConfig) -> Result<Client> {
    let parsed = config.parse()?;
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match parsed.connect(NoTls) {
            Ok(client) => return Ok(client),
            Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                create_database(&parsed).map_err(|e| explain(config, &e))?;
            }
            Err(e) if is_unreachable(&e) && started.elapsed() < START_RETRY_FOR => {
                tracing::warn!(database = %config.describe(), error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL is unreachable; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(explain(config, &e)),
        }
    }
}

/// Creates the DSN's database through the `postgres` database, as kine does.
fn create_database(parsed: &Config) -> std::result::Result<(), postgres::Error> {
    let name = parsed.get_dbname().unwrap_or(DEFAULT_DATABASE).to_owned();
    let mut admin = parsed.clone();
    admin.dbname("postgres");
    let mut client = admin.connect(NoTls)?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client.batch_execute(&format!("CREATE DATABASE {quoted}")) {
        Err(e) if e.code() != Some(&SqlState::DUPLICATE_DATABASE) => Err(e),
        _ => {
            tracing::info!(database = %name, "created the database");
            Ok(())
        }
    }
}

/// Opens (creating if needed) the store's tables, returning the writer and
/// the reader.
pub fn open(config: &PostgresConfig) -> Result<(PostgresWriter, PostgresReader)> {
    let mut client = connect(config)?;
    let owned: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&OWNER_LOCK])
        .map_err(|e| sql_error("taking the owner lock", e))?
        .get(0);
    if !owned {
        return Err(Error::Storage(format!(
            "{} is in use by another k3rs server; several servers on one database are not built yet",
            config.describe()
        )));
    }
    migrate(&mut client, config)?;
    let readers = (0..READER_CONNECTIONS)
        .map(|_| connect(config))
        .collect::<Result<_>>()?;
    Ok((
        PostgresWriter {
            client,
            config: config.clone(),
        },
        PostgresReader::start(config, readers)?,
    ))
}

fn migrate(client: &mut Client, config: &PostgresConfig) -> Result<()> {
    let sql = |e| sql_error("creating the schema", e);
    let mut tx = client.transaction().map_err(sql)?;
    // Serialises two first starts racing to create the schema.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&(OWNER_LOCK + 1)])
        .map_err(sql)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS k3rs_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    )
    .map_err(sql)?;
    let version: Option<i64> = tx
        .query_opt(
            "SELECT value FROM k3rs_meta WHERE name = 'schema_version'",
            &[],
        )
        .map_err(sql)?
        .map(|r| r.get(0));
    match version {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(Error::Storage(format!(
                "{} has k3rs schema version {v}, newer than this k3rs understands ({SCHEMA_VERSION}); upgrade k3rs",
                config.describe()
            )));
        }
        Some(_) => {}
        None => {
            tx.batch_execute(
                "CREATE TABLE k3rs_log (
                     revision BIGINT NOT NULL,
                     sub INTEGER NOT NULL,
                     key BYTEA NOT NULL,
                     create_revision BIGINT NOT NULL,
                     version BIGINT NOT NULL,
                     lease BIGINT NOT NULL,
                     value BYTEA NOT NULL,
                     PRIMARY KEY (revision, sub));
                 CREATE TABLE k3rs_leases (id BIGINT PRIMARY KEY, ttl BIGINT NOT NULL);",
            )
            .map_err(sql)?;
            let identity = [
                ("schema_version", SCHEMA_VERSION),
                ("current_revision", 1),
                ("compact_revision", -1),
                ("cluster_id", super::random_id() as i64),
                ("member_id", super::random_id() as i64),
            ];
            for (name, value) in identity {
                tx.execute(
                    "INSERT INTO k3rs_meta (name, value) VALUES ($1, $2)",
                    &[&name, &value],
                )
                .map_err(sql)?;
            }
            tracing::info!(database = %config.describe(), "created the k3rs schema");
        }
    }
    tx.commit().map_err(sql)
}

/// The write connection, owned by the writer thread.
pub struct PostgresWriter {
    client: Client,
    config: PostgresConfig,
}

impl PostgresWriter {
    fn meta(&mut self, name: &str) -> Result<i64> {
        Ok(self
            .client
            .query_one("SELECT value FROM k3rs_meta WHERE name = $1", &[&name])
            .map_err(|e| sql_error("reading metadata", e))?
            .get(0))
    }

    /// Reconnects if the connection broke, taking the owner lock again.
    fn ensure_connected(&mut self) -> Result<()> {
        if !self.client.is_closed() {
            return Ok(());
        }
        let mut client = self
            .config
            .parse()?
            .connect(NoTls)
            .map_err(|e| Error::CommitUnknown(format!("reconnecting: {e}")))?;
        let owned: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&OWNER_LOCK])
            .map_err(|e| sql_error("taking the owner lock", e))?
            .get(0);
        if !owned {
            return Err(Error::CommitUnknown(
                "another session still holds the owner lock (the old connection is not gone yet)"
                    .into(),
            ));
        }
        tracing::info!(database = %self.config.describe(), "reconnected to PostgreSQL");
        self.client = client;
        Ok(())
    }
}

impl LogWriter for PostgresWriter {
    fn load(&mut self, f: &mut dyn FnMut(LogRecord)) -> Result<Loaded> {
        let sql = |e| sql_error("loading the log", e);
        let mut tx = self.client.transaction().map_err(sql)?;
        tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .map_err(sql)?;
        let mut max_revision = 1;
        {
            let mut rows = tx
                .query_raw(
                    "SELECT revision, sub, key, create_revision, version, lease, value
                     FROM k3rs_log ORDER BY revision, sub",
                    std::iter::empty::<i64>(),
                )
                .map_err(sql)?;
            use postgres::fallible_iterator::FallibleIterator;
            while let Some(row) = rows.next().map_err(sql)? {
                let record = LogRecord {
                    mod_revision: row.get(0),
                    sub: row.get::<_, i32>(1) as u32,
                    key: Bytes::from(row.get::<_, Vec<u8>>(2)),
                    create_revision: row.get(3),
                    version: row.get(4),
                    lease: row.get(5),
                    value: Bytes::from(row.get::<_, Vec<u8>>(6)),
                };
                max_revision = record.mod_revision;
                f(record);
            }
        }
        let leases = tx
            .query("SELECT id, ttl FROM k3rs_leases ORDER BY id", &[])
            .map_err(sql)?
            .iter()
            .map(|r| StoredLease {
                id: r.get(0),
                ttl: r.get(1),
            })
            .collect();
        let meta: std::collections::HashMap<String, i64> = tx
            .query("SELECT name, value FROM k3rs_meta", &[])
            .map_err(sql)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        tx.commit().map_err(sql)?;
        let get = |name: &str| meta.get(name).copied().unwrap_or_default();
        Ok(Loaded {
            current_revision: get("current_revision").max(max_revision),
            compact_revision: get("compact_revision"),
            identity: StoreIdentity {
                cluster_id: get("cluster_id") as u64,
                member_id: get("member_id") as u64,
            },
            leases,
        })
    }

    fn commit(&mut self, batch: &CommitBatch) -> Result<()> {
        self.ensure_connected()?;
        let records = &batch.records;
        let revisions: Vec<i64> = records.iter().map(|r| r.mod_revision).collect();
        let subs: Vec<i32> = records.iter().map(|r| r.sub as i32).collect();
        let keys: Vec<&[u8]> = records.iter().map(|r| r.key.as_ref()).collect();
        let creates: Vec<i64> = records.iter().map(|r| r.create_revision).collect();
        let versions: Vec<i64> = records.iter().map(|r| r.version).collect();
        let leases: Vec<i64> = records.iter().map(|r| r.lease).collect();
        let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_ref()).collect();
        let granted_ids: Vec<i64> = batch.granted_leases.iter().map(|l| l.id).collect();
        let granted_ttls: Vec<i64> = batch.granted_leases.iter().map(|l| l.ttl).collect();
        // One statement: atomic, and one round trip. The lease sets are
        // disjoint (the writer nets them out), so the CTEs cannot collide.
        self.client
            .execute(
                "WITH log AS (
                     INSERT INTO k3rs_log (revision, sub, key, create_revision, version, lease, value)
                     SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::bytea[], $4::bigint[],
                                          $5::bigint[], $6::bigint[], $7::bytea[])),
                 granted AS (
                     INSERT INTO k3rs_leases (id, ttl) SELECT * FROM UNNEST($8::bigint[], $9::bigint[])
                     ON CONFLICT (id) DO UPDATE SET ttl = EXCLUDED.ttl),
                 revoked AS (DELETE FROM k3rs_leases WHERE id = ANY($10::bigint[]))
                 UPDATE k3rs_meta SET value = $11 WHERE name = 'current_revision'",
                &[
                    &revisions,
                    &subs,
                    &keys,
                    &creates,
                    &versions,
                    &leases,
                    &values,
                    &granted_ids,
                    &granted_ttls,
                    &batch.revoked_leases,
                    &batch.current_revision,
                ],
            )
            .map(drop)
            .map_err(|e| sql_error("commit", e))
    }

    fn resolve_commit(&mut self, revision: i64) -> Result<bool> {
        self.ensure_connected()?;
        Ok(self.meta("current_revision")? >= revision)
    }

    fn set_compact_revision(&mut self, revision: i64) -> Result<()> {
        self.ensure_connected()?;
        self.client
            .execute(
                "UPDATE k3rs_meta SET value = $1 WHERE name = 'compact_revision'",
                &[&revision],
            )
            .map(drop)
            .map_err(|e| sql_error("recording the compact revision", e))
    }

    fn delete_revisions(&mut self, rows: &[(i64, Bytes)]) -> Result<()> {
        self.ensure_connected()?;
        let revisions: Vec<i64> = rows.iter().map(|(r, _)| *r).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|(_, k)| k.as_ref()).collect();
        self.client
            .execute(
                "DELETE FROM k3rs_log l USING UNNEST($1::bigint[], $2::bytea[]) AS d(revision, key)
                 WHERE l.revision = d.revision AND l.key = d.key",
                &[&revisions, &keys],
            )
            .map(drop)
            .map_err(|e| sql_error("deleting compacted revisions", e))
    }

    fn value_at(&mut self, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>> {
        self.ensure_connected()?;
        value_at(&mut self.client, key, mod_revision)
    }

    fn defragment(&mut self) -> Result<()> {
        self.ensure_connected()?;
        // A full rewrite returns the space to the file system, as etcd's
        // defragment does; it blocks the table while it runs, as etcd's does.
        self.client
            .batch_execute("VACUUM FULL k3rs_log")
            .and_then(|()| self.client.batch_execute("VACUUM FULL k3rs_leases"))
            .map_err(|e| sql_error("defragment", e))
    }
}

fn value_at(client: &mut Client, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>> {
    Ok(client
        .query_opt(
            "SELECT value FROM k3rs_log WHERE revision = $1 AND key = $2 LIMIT 1",
            &[&mod_revision, &key],
        )
        .map_err(|e| sql_error("reading a historic value", e))?
        .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
}

/// Connections for historic values and sizes (see `reader_threads`).
pub struct PostgresReader {
    threads: ReaderThreads<Client>,
}

impl PostgresReader {
    fn start(config: &PostgresConfig, clients: Vec<Client>) -> Result<Self> {
        let config = config.clone();
        let threads = ReaderThreads::start(
            "k3rs-pg-read",
            clients,
            |c: &Client| !c.is_closed(),
            move || config.parse().ok()?.connect(NoTls).ok(),
        )?;
        Ok(PostgresReader { threads })
    }

    fn with_client<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.threads.run(f)
    }
}

impl LogReader for PostgresReader {
    fn value_at(&self, key: &[u8], mod_revision: i64) -> Result<Option<Bytes>> {
        let key = key.to_vec();
        self.with_client(move |c| value_at(c, &key, mod_revision))
    }

    fn size(&self) -> Result<(i64, i64)> {
        self.with_client(|c| {
            let row = c
                .query_one(
                    "SELECT pg_total_relation_size('k3rs_log') + pg_total_relation_size('k3rs_leases')
                            + pg_total_relation_size('k3rs_meta')",
                    &[],
                )
                .map_err(|e| sql_error("reading the database size", e))?;
            let total: i64 = row.get(0);
            Ok((total, total))
        })
    }

    fn snapshot(&self) -> Result<std::fs::File> {
        Err(Error::Unimplemented(
            "k3rs: snapshots of a PostgreSQL datastore are not built; use pg_dump".into(),
        ))
    }
}
