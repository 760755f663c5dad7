//! The PostgreSQL backend: the same revision log as SQLite, in an external
//! database.
//!
//! Schema (version 1, in the DSN's database; created on first start):
//! - `k3rs_log(revision, sub, key bytea, create_revision, version, lease,
//!   value bytea)`, primary key `(revision, sub)`: rows in revision order,
//!   a row found by revision and key through the key's prefix. Keys are
//!   `bytea`, compared bytewise whatever the database's collation.
//! - `k3rs_meta(name, value)`: schema version, current and compact
//!   revision, cluster id, lease epoch.
//! - `k3rs_leases(id, ttl, changed)`: `changed` is the lease epoch of the
//!   last grant, keep-alive or revoke; a revoked lease stays as a
//!   tombstone (`ttl` 0) until compaction purges old ones.
//! - `k3rs_members(member_id, commits)`: each server's count of commits,
//!   which tells it after a broken connection whether its last one landed.
//!
//! Several servers share one database. Every write batch locks the meta
//! rows (`SELECT … FOR UPDATE`), takes in the rows and lease changes other
//! servers committed since it last looked, evaluates its requests against
//! that state and commits, all in one transaction: revisions stay gapless
//! and commit order is revision order. A commit `NOTIFY`s the others, who
//! catch up at once; linearizable reads catch up first.
//!
//! The rows, lease changes and counters of a commit go in one statement,
//! then `NOTIFY` and `COMMIT` in one more round trip.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

use super::pg_tls::{self, DatabaseTls, SslMode};
use super::reader_threads::ReaderThreads;
use super::shared::{LeaseCatchUp, Session};
use super::{
    Changes, CommitBatch, Loaded, LogReader, LogRecord, LogWriter, StoreIdentity, StoredLease,
    Waker,
};
use crate::error::{Error, Result};

/// The schema this code writes.
const SCHEMA_VERSION: i64 = 1;
/// kine's database when the DSN names none.
const DEFAULT_DATABASE: &str = "kubernetes";
/// The advisory lock that serialises schema creation: "k3rs" in ASCII.
const SCHEMA_LOCK: i64 = 0x6b33_7274;
/// The channel commits are announced on.
const CHANNEL: &str = "k3rs_commits";
/// The meta rows a batch locks and catch-up reads, in this order.
const META_ROWS: &str = "SELECT name, value FROM k3rs_meta
     WHERE name IN ('compact_revision', 'current_revision', 'lease_epoch', 'lease_purged')
     ORDER BY name";
/// Connections for historic values and sizes.
const READER_CONNECTIONS: usize = 2;
/// How long start-up keeps trying a database that is down.
const START_RETRY_FOR: Duration = Duration::from_secs(120);

/// Where and how to reach PostgreSQL.
#[derive(Clone)]
pub struct PostgresConfig {
    /// The DSN, in kine's form (`postgres://user:pass@host:port/db`),
    /// without the TLS parameters, which are in `mode` and `tls`.
    dsn: String,
    mode: SslMode,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for PostgresConfig {
    // The DSN may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig").finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// Checks a DSN (kine's form, with libpq's `sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`) and the TLS files given by flags.
    pub fn new(dsn: &str, tls: &DatabaseTls) -> Result<Self> {
        let (dsn, dsn_tls) = pg_tls::split_dsn(dsn);
        let (mode, files) = pg_tls::resolve(&dsn_tls, tls)?;
        let config = PostgresConfig {
            dsn,
            mode,
            tls: pg_tls::client_config(mode, &files)?.map(Arc::new),
        };
        config.parse()?;
        Ok(config)
    }

    /// The TLS mode in force.
    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// Opens a connection, with TLS as configured.
    fn open(&self, config: &Config) -> std::result::Result<Client, postgres::Error> {
        match &self.tls {
            None => config.connect(NoTls),
            Some(tls) => config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                tls.as_ref().clone(),
            )),
        }
    }

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
        // A database that vanished without closing the connection (a host
        // down, a cable cut) fails the call within ~30 s instead of never.
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(30));
        config.ssl_mode(self.mode.negotiation());
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
        // Except when it answered by ending the session (operator
        // intervention, class 57, or a connection exception, class 08): a
        // backend terminated right after its commit became durable reports
        // that instead of the commit, so the outcome is unknown.
        Some(db) if !e.is_closed() && !matches!(&db.code().code()[..2], "57" | "08") => {
            Error::Storage(format!(
                "{what}: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            ))
        }
        _ => Error::CommitUnknown(format!("{what}: {e}")),
    }
}

/// Whether an error means the server is not there (yet), rather than that
/// it refused us.
fn is_unreachable(e: &postgres::Error) -> bool {
    match e.code() {
        // A certificate that fails verification will not pass on a retry.
        None => !is_tls_failure(e),
        Some(code) => *code == SqlState::CANNOT_CONNECT_NOW || *code == SqlState::ADMIN_SHUTDOWN,
    }
}

fn is_tls_failure(e: &postgres::Error) -> bool {
    e.to_string().contains("TLS")
}

/// An error with every cause it wraps ("error performing TLS handshake:
/// invalid peer certificate: ...").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
        None if is_tls_failure(e) => "TLS to the database failed (check sslmode and the CA)",
        _ => "cannot connect",
    };
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| with_causes(e));
    Error::Storage(format!("{}: {what}: {detail}", config.describe()))
}

/// Connects, creating the database if it does not exist and waiting for
/// a server that is down (with back-off) for up to two minutes.
fn connect(config: &PostgresConfig) -> Result<Client> {
    let parsed = config.parse()?;
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match config.open(&parsed) {
            Ok(client) => return Ok(client),
            Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                create_database(config, &parsed).map_err(|e| explain(config, &e))?;
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
fn create_database(
    config: &PostgresConfig,
    parsed: &Config,
) -> std::result::Result<(), postgres::Error> {
    let name = parsed.get_dbname().unwrap_or(DEFAULT_DATABASE).to_owned();
    let mut admin = parsed.clone();
    admin.dbname("postgres");
    let mut client = config.open(&admin)?;
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
    migrate(&mut client, config)?;
    let session = Session::new();
    client
        .execute(
            "INSERT INTO k3rs_members (member_id, commits) VALUES ($1, 0)",
            &[&session.member_id],
        )
        .map_err(|e| sql_error("registering this server", e))?;
    fence(&mut client, session.member_id)?;
    let readers = (0..READER_CONNECTIONS)
        .map(|_| connect(config))
        .collect::<Result<_>>()?;
    Ok((
        PostgresWriter {
            client,
            config: config.clone(),
            session,
        },
        PostgresReader::start(config, readers)?,
    ))
}

fn migrate(client: &mut Client, config: &PostgresConfig) -> Result<()> {
    let sql = |e| sql_error("creating the schema", e);
    let mut tx = client.transaction().map_err(sql)?;
    // Serialises two first starts racing to create the schema.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
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
                 CREATE TABLE k3rs_leases (id BIGINT PRIMARY KEY, ttl BIGINT NOT NULL,
                     changed BIGINT NOT NULL);
                 CREATE INDEX k3rs_leases_changed ON k3rs_leases (changed);
                 CREATE TABLE k3rs_members (member_id BIGINT PRIMARY KEY,
                     commits BIGINT NOT NULL,
                     started TIMESTAMPTZ NOT NULL DEFAULT now());",
            )
            .map_err(sql)?;
            let identity = [
                ("schema_version", SCHEMA_VERSION),
                ("current_revision", 1),
                ("compact_revision", -1),
                ("cluster_id", super::random_id() as i64),
                ("lease_epoch", 0),
                ("lease_purged", 0),
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
    session: Session,
}

/// Takes this server's session lock on a new write connection. While an
/// earlier write connection of this server lives on in the database (its
/// break not noticed there yet), its commit could still land, so a new one
/// must not decide that it did not: it waits until the old one is gone.
fn fence(client: &mut Client, member_id: i64) -> Result<()> {
    let taken: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&member_id])
        .map_err(|e| sql_error("taking this server's lock", e))?
        .get(0);
    if taken {
        Ok(())
    } else {
        Err(Error::CommitUnknown(
            "this server's previous database connection is not gone yet".into(),
        ))
    }
}

/// The meta rows a batch locks: `(compact, current, lease epoch, purged)`.
fn parse_meta(messages: &[postgres::SimpleQueryMessage]) -> Result<[i64; 4]> {
    let values: Vec<i64> = messages
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(1).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    values.try_into().map_err(|v: Vec<i64>| {
        Error::Storage(format!(
            "the k3rs_meta table lacks rows k3rs needs (found {} of 4); is the schema damaged?",
            v.len()
        ))
    })
}

fn read_record(row: &postgres::Row) -> LogRecord {
    LogRecord {
        mod_revision: row.get(0),
        sub: row.get::<_, i32>(1) as u32,
        key: Bytes::from(row.get::<_, Vec<u8>>(2)),
        create_revision: row.get(3),
        version: row.get(4),
        lease: row.get(5),
        value: Bytes::from(row.get::<_, Vec<u8>>(6)),
    }
}

impl PostgresWriter {
    /// Reconnects if the connection broke.
    fn ensure_connected(&mut self) -> Result<()> {
        if !self.client.is_closed() {
            return Ok(());
        }
        self.session.in_transaction = false;
        let parsed = self.config.parse()?;
        let mut client = self
            .config
            .open(&parsed)
            .map_err(|e| Error::CommitUnknown(format!("reconnecting: {e}")))?;
        fence(&mut client, self.session.member_id)?;
        tracing::info!(database = %self.config.describe(), "reconnected to PostgreSQL");
        self.client = client;
        Ok(())
    }

    /// Ends an open transaction after a failure; the connection may be gone.
    fn abandon(&mut self) {
        if self.session.in_transaction {
            self.session.in_transaction = false;
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }

    /// Rows and lease changes above `head`, up to what `meta` says the
    /// database holds.
    fn read_changes(&mut self, head: i64, meta: [i64; 4]) -> Result<Changes> {
        let [
            compact_revision,
            current_revision,
            lease_epoch,
            lease_purged,
        ] = meta;
        let sql = |e| sql_error("catching up with the other servers", e);
        let records = if current_revision > head {
            self.client
                .query(
                    "SELECT revision, sub, key, create_revision, version, lease, value
                     FROM k3rs_log WHERE revision > $1 AND revision <= $2 ORDER BY revision, sub",
                    &[&head, &current_revision],
                )
                .map_err(sql)?
                .iter()
                .map(read_record)
                .collect()
        } else {
            Vec::new()
        };
        let catch_up = self.session.lease_catch_up(lease_epoch, lease_purged);
        let rows = match catch_up {
            LeaseCatchUp::Nothing => Vec::new(),
            LeaseCatchUp::Everything => self
                .client
                .query(
                    "SELECT id, ttl FROM k3rs_leases WHERE ttl > 0 AND changed <= $1",
                    &[&lease_epoch],
                )
                .map_err(sql)?,
            LeaseCatchUp::ChangedSince(since) => self
                .client
                .query(
                    "SELECT id, ttl FROM k3rs_leases WHERE changed > $1 AND changed <= $2",
                    &[&since, &lease_epoch],
                )
                .map_err(sql)?,
        };
        self.session.caught_up(lease_epoch);
        Ok(Changes {
            records,
            current_revision,
            compact_revision,
            leases: rows
                .iter()
                .map(|r| StoredLease {
                    id: r.get(0),
                    ttl: r.get(1),
                })
                .collect(),
            leases_complete: matches!(catch_up, LeaseCatchUp::Everything),
        })
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
                let record = read_record(&row);
                max_revision = record.mod_revision;
                f(record);
            }
        }
        let leases = tx
            .query(
                "SELECT id, ttl FROM k3rs_leases WHERE ttl > 0 ORDER BY id",
                &[],
            )
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
        self.session.lease_epoch = get("lease_epoch");
        Ok(Loaded {
            current_revision: get("current_revision").max(max_revision),
            compact_revision: get("compact_revision"),
            identity: StoreIdentity {
                cluster_id: get("cluster_id") as u64,
                member_id: self.session.member_id as u64,
            },
            leases,
            replication: None,
        })
    }

    fn commit(&mut self, batch: &CommitBatch) -> Result<()> {
        self.ensure_connected()?;
        let (epoch, commits) = self.session.begin_commit(batch)?;
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
        let written = self
            .client
            .execute(
                "WITH log AS (
                     INSERT INTO k3rs_log (revision, sub, key, create_revision, version, lease, value)
                     SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::bytea[], $4::bigint[],
                                          $5::bigint[], $6::bigint[], $7::bytea[])),
                 granted AS (
                     INSERT INTO k3rs_leases (id, ttl, changed)
                     SELECT g.id, g.ttl, $12 FROM UNNEST($8::bigint[], $9::bigint[]) AS g(id, ttl)
                     ON CONFLICT (id) DO UPDATE SET ttl = EXCLUDED.ttl, changed = EXCLUDED.changed),
                 revoked AS (UPDATE k3rs_leases SET ttl = 0, changed = $12 WHERE id = ANY($10::bigint[])),
                 member AS (UPDATE k3rs_members SET commits = $13 WHERE member_id = $14),
                 epoch AS (UPDATE k3rs_meta SET value = $12 WHERE name = 'lease_epoch')
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
                    &epoch,
                    &commits,
                    &self.session.member_id,
                ],
            )
            .map_err(|e| sql_error("commit", e))
            .and_then(|_| {
                self.client
                    .batch_execute(&format!("NOTIFY {CHANNEL}, '{}'; COMMIT", self.session.member_id))
                    .map_err(|e| sql_error("commit", e))
            });
        if written.is_err() {
            self.abandon();
        }
        self.session.end_commit(epoch, &written);
        written
    }

    fn resolve_commit(&mut self, _revision: i64) -> Result<bool> {
        self.ensure_connected()?;
        let landed: i64 = self
            .client
            // A locking read: the broken connection's transaction may still
            // be finishing on the server (it holds this row); a plain read
            // would see the count before it.
            .query_one(
                "SELECT commits FROM k3rs_members WHERE member_id = $1 FOR UPDATE",
                &[&self.session.member_id],
            )
            .map_err(|e| sql_error("reading this server's commits", e))?
            .get(0);
        Ok(self.session.settle(landed))
    }

    fn set_compact_revision(&mut self, revision: i64) -> Result<()> {
        self.ensure_connected()?;
        let purge_below = self.session.purge_below();
        let statement = format!(
            "UPDATE k3rs_meta SET value = {revision} WHERE name = 'compact_revision';
             DELETE FROM k3rs_leases WHERE ttl = 0 AND changed <= {purge_below};
             UPDATE k3rs_meta SET value = GREATEST(value, {purge_below}) WHERE name = 'lease_purged';
             {end}",
            end = if self.session.in_transaction {
                format!("NOTIFY {CHANNEL}, '{}'; COMMIT;", self.session.member_id)
            } else {
                String::new()
            }
        );
        let done = self
            .client
            .batch_execute(&statement)
            .map_err(|e| sql_error("recording the compact revision", e));
        if done.is_err() {
            self.abandon();
        }
        self.session.in_transaction = false;
        done
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

    fn is_shared(&self) -> bool {
        true
    }

    fn lock_and_catch_up(&mut self, head: i64) -> Result<Changes> {
        self.ensure_connected()?;
        self.abandon();
        self.session.in_transaction = true;
        let locked = self
            .client
            .simple_query(&format!("BEGIN; {META_ROWS} FOR UPDATE"))
            .map_err(|e| sql_error("taking the commit lock", e))
            .and_then(|rows| parse_meta(&rows))
            .and_then(|meta| self.read_changes(head, meta));
        if locked.is_err() {
            self.abandon();
        }
        locked
    }

    fn catch_up(&mut self, head: i64) -> Result<Changes> {
        self.ensure_connected()?;
        let rows = self
            .client
            .simple_query(META_ROWS)
            .map_err(|e| sql_error("reading the revision", e))?;
        let meta = parse_meta(&rows)?;
        self.read_changes(head, meta)
    }

    fn release(&mut self) -> Result<()> {
        if !self.session.in_transaction {
            return Ok(());
        }
        self.session.in_transaction = false;
        self.client
            .batch_execute("ROLLBACK")
            .map_err(|e| sql_error("ending a transaction", e))
    }

    fn listen(&mut self, waker: Waker) -> Result<()> {
        let config = self.config.clone();
        let me = self.session.member_id.to_string();
        std::thread::Builder::new()
            .name("k3rs-pg-listen".into())
            .spawn(move || listen(&config, &me, waker))
            .map(drop)
            .map_err(|e| Error::Storage(format!("cannot start the listener thread: {e}")))
    }
}

/// Wakes the writer on every commit another server announces (each names
/// its server: `me` is this one), and once a second in case an
/// announcement was lost with a connection.
fn listen(config: &PostgresConfig, me: &str, waker: Waker) {
    loop {
        let client = config.parse().ok().and_then(|c| config.open(&c).ok());
        let Some(mut client) = client else {
            std::thread::sleep(Duration::from_millis(500));
            if !waker.alive() {
                return;
            }
            continue;
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::debug!(error = %e, "LISTEN failed; retrying");
            continue;
        }
        // Commits missed while reconnecting.
        let mut woken = true;
        loop {
            if woken && !waker.wake() {
                return;
            }
            use postgres::fallible_iterator::FallibleIterator;
            let mut notifications = client.notifications();
            woken = match notifications.timeout_iter(Duration::from_secs(1)).next() {
                Ok(Some(n)) => n.payload() != me,
                Ok(None) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "the commit listener lost its connection");
                    break;
                }
            };
            // Several notifications are one wake-up.
            while let Ok(Some(n)) = notifications.iter().next() {
                woken |= n.payload() != me;
            }
        }
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
            move || config.open(&config.parse().ok()?).ok(),
        )?;
        Ok(PostgresReader { threads })
    }

    fn with_client<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Client) -> Result<T> + Send + 'static,
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
