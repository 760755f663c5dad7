//! The MySQL and MariaDB backend: the same revision log as SQLite and
//! PostgreSQL, in InnoDB tables.
//!
//! Schema (version 1, in the DSN's database; created on first start):
//! `k3rs_log(revision, sub, key LONGBLOB, create_revision, version, lease,
//! value LONGBLOB)` with primary key `(revision, sub)` (keys are compared as
//! bytes, never through a collation, and never need an index of their
//! own: a row is found by revision first), `k3rs_meta(name, value)`,
//! `k3rs_leases(id, ttl, changed)` and `k3rs_members(member_id, commits)`,
//! as on PostgreSQL (see `postgres` for what each holds).
//!
//! Several servers share one database, as on PostgreSQL: a batch locks the
//! meta rows (`SELECT … FOR UPDATE`), catches up with what the others
//! committed, and commits in one transaction. MySQL has no notifications,
//! so each server polls the counters (every 2 ms while they move, every
//! 50 ms at rest). InnoDB's default `innodb_flush_log_at_trx_commit=1`
//! makes a commit durable.

use bytes::Bytes;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Value};

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
/// The named lock that serialises schema creation, followed by the
/// database's name: MySQL's named locks are server-wide.
const SCHEMA_LOCK: &str = "k3rs-schema:";

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
        let opts = Opts::from_url(&self.url())
            .map_err(|e| Error::Storage(format!("the MySQL endpoint is not a valid DSN: {e}")))?;
        // A database that vanished without closing the connection fails
        // the call instead of holding it for ever.
        Ok(OptsBuilder::from_opts(opts)
            .tcp_keepalive(Some(10_000u32))
            .into())
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
        // The server answered: the statement failed, nothing of it stays;
        // unless it answered that the session was killed or the server is
        // going away (1927, 1053, 1317), which can follow a durable commit.
        mysql_async::Error::Server(s) if !matches!(s.code, 1927 | 1053 | 1317) => {
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
    migrate(&mut client, config)?;
    let session = Session::new();
    let member_id = session.member_id;
    client.run("registering this server", async |c| {
        c.exec_drop(
            "INSERT INTO k3rs_members (member_id, commits) VALUES (?, 0)",
            (member_id,),
        )
        .await
    })?;
    fence(&mut client, member_id)?;
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
            session,
        },
        MysqlReader { threads },
    ))
}

fn migrate(client: &mut Client, config: &MysqlConfig) -> Result<()> {
    // Two first starts racing to create the schema take turns.
    let locked: Option<Option<i64>> = client.run("creating the schema", async |c| {
        c.query_first(format!(
            "SELECT GET_LOCK(LEFT(CONCAT('{SCHEMA_LOCK}', DATABASE()), 64), 30)"
        ))
        .await
    })?;
    if locked.flatten() != Some(1) {
        return Err(Error::Storage(format!(
            "{}: another k3rs server held the schema lock for 30 s",
            config.describe()
        )));
    }
    let migrated = create_schema(client, config);
    let _ = client.run("creating the schema", async |c| {
        c.query_drop(format!(
            "DO RELEASE_LOCK(LEFT(CONCAT('{SCHEMA_LOCK}', DATABASE()), 64))"
        ))
        .await
    });
    migrated
}

fn create_schema(client: &mut Client, config: &MysqlConfig) -> Result<()> {
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
            let cluster = super::random_id() as i64;
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
                         ttl BIGINT NOT NULL, changed BIGINT NOT NULL,
                         KEY k3rs_leases_changed (changed)) ENGINE=InnoDB",
                )
                .await?;
                c.query_drop(
                    "CREATE TABLE IF NOT EXISTS k3rs_members (member_id BIGINT NOT NULL PRIMARY KEY,
                         commits BIGINT NOT NULL,
                         started TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB",
                )
                .await?;
                c.exec_drop(
                    "INSERT INTO k3rs_meta (name, value) VALUES
                         ('current_revision', 1), ('compact_revision', -1),
                         ('cluster_id', ?), ('lease_epoch', 0), ('lease_purged', 0),
                         ('schema_version', ?)",
                    (cluster, SCHEMA_VERSION),
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
    session: Session,
}

/// Takes this server's named lock on a new write connection. While an
/// earlier write connection of this server lives on in the database (its
/// break not noticed there yet), its commit could still land, so a new one
/// must not decide that it did not: it waits until the old one is gone.
fn fence(client: &mut Client, member_id: i64) -> Result<()> {
    let taken: Option<Option<i64>> = client.run("taking this server's lock", async |c| {
        c.query_first(format!("SELECT GET_LOCK('k3rs-member:{member_id}', 0)"))
            .await
    })?;
    if taken.flatten() == Some(1) {
        Ok(())
    } else {
        Err(Error::CommitUnknown(
            "this server's previous database connection is not gone yet".into(),
        ))
    }
}

/// The meta rows a batch locks, in name order.
const META_ROWS: &str = "SELECT name, value FROM k3rs_meta
     WHERE name IN ('compact_revision', 'current_revision', 'lease_epoch', 'lease_purged')
     ORDER BY name";

fn parse_meta(rows: Vec<(String, i64)>) -> Result<[i64; 4]> {
    let values: Vec<i64> = rows.into_iter().map(|(_, v)| v).collect();
    values.try_into().map_err(|v: Vec<i64>| {
        Error::Storage(format!(
            "the k3rs_meta table lacks rows k3rs needs (found {} of 4); is the schema damaged?",
            v.len()
        ))
    })
}

type Row7 = (i64, i64, Vec<u8>, i64, i64, i64, Vec<u8>);

fn to_record(row: Row7) -> LogRecord {
    let (mod_revision, sub, key, create_revision, version, lease, value) = row;
    LogRecord {
        mod_revision,
        sub: sub as u32,
        key: Bytes::from(key),
        create_revision,
        version,
        lease,
        value: Bytes::from(value),
    }
}

impl MysqlWriter {
    /// Reconnects if the connection broke.
    fn ensure_connected(&mut self) -> Result<()> {
        if self.client.conn.is_some() {
            return Ok(());
        }
        self.session.in_transaction = false;
        let mut client = Client::connect(self.config.opts()?)
            .map_err(|e| Error::CommitUnknown(format!("reconnecting: {e}")))?;
        fence(&mut client, self.session.member_id)?;
        tracing::info!(database = %self.config.describe(), "reconnected to MySQL");
        self.client = client;
        Ok(())
    }

    /// Ends an open transaction after a failure; the connection may be gone.
    fn abandon(&mut self) {
        if self.session.in_transaction {
            self.session.in_transaction = false;
            let _ = self
                .client
                .run("rolling back", async |c| c.query_drop("ROLLBACK").await);
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
        let catch_up = self.session.lease_catch_up(lease_epoch, lease_purged);
        let (records, leases) =
            self.client
                .run("catching up with the other servers", async |c| {
                    let records: Vec<Row7> = if current_revision > head {
                        c.exec(
                            "SELECT revision, sub, `key`, create_revision, version, lease, value
                     FROM k3rs_log WHERE revision > ? AND revision <= ? ORDER BY revision, sub",
                            (head, current_revision),
                        )
                        .await?
                    } else {
                        Vec::new()
                    };
                    let leases: Vec<(i64, i64)> = match catch_up {
                LeaseCatchUp::Nothing => Vec::new(),
                LeaseCatchUp::Everything => {
                    c.exec(
                        "SELECT id, ttl FROM k3rs_leases WHERE ttl > 0 AND changed <= ?",
                        (lease_epoch,),
                    )
                    .await?
                }
                LeaseCatchUp::ChangedSince(since) => {
                    c.exec(
                        "SELECT id, ttl FROM k3rs_leases WHERE changed > ? AND changed <= ?",
                        (since, lease_epoch),
                    )
                    .await?
                }
            };
                    Ok((records, leases))
                })?;
        self.session.caught_up(lease_epoch);
        Ok(Changes {
            records: records.into_iter().map(to_record).collect(),
            current_revision,
            compact_revision,
            leases: leases
                .into_iter()
                .map(|(id, ttl)| StoredLease { id, ttl })
                .collect(),
            leases_complete: matches!(catch_up, LeaseCatchUp::Everything),
        })
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

/// The statements that record a batch's lease changes at `epoch`.
fn lease_statements(batch: &CommitBatch, epoch: i64) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for chunk in batch.granted_leases.chunks(ROWS_PER_INSERT) {
        let rows = vec!["(?,?,?)"; chunk.len()].join(",");
        let params = chunk
            .iter()
            .flat_map(|l| [Value::Int(l.id), Value::Int(l.ttl), Value::Int(epoch)])
            .collect();
        out.push((
            format!(
                "INSERT INTO k3rs_leases (id, ttl, changed) VALUES {rows}
                 ON DUPLICATE KEY UPDATE ttl = VALUES(ttl), changed = VALUES(changed)"
            ),
            params,
        ));
    }
    for chunk in batch.revoked_leases.chunks(ROWS_PER_INSERT) {
        let ids = vec!["?"; chunk.len()].join(",");
        let mut params = vec![Value::Int(epoch)];
        params.extend(chunk.iter().map(|id| Value::Int(*id)));
        out.push((
            format!("UPDATE k3rs_leases SET ttl = 0, changed = ? WHERE id IN ({ids})"),
            params,
        ));
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
                let record = to_record(mysql_async::from_row(row));
                max_revision = record.mod_revision;
                f(record);
            })
            .await?;
            let leases: Vec<(i64, i64)> = tx
                .query("SELECT id, ttl FROM k3rs_leases WHERE ttl > 0 ORDER BY id")
                .await?;
            let meta: Vec<(String, i64)> = tx.query("SELECT name, value FROM k3rs_meta").await?;
            tx.commit().await?;
            Ok((leases, meta))
        })?;
        let meta: std::collections::HashMap<String, i64> = meta.into_iter().collect();
        let get = |name: &str| meta.get(name).copied().unwrap_or_default();
        self.session.lease_epoch = get("lease_epoch");
        Ok(Loaded {
            current_revision: get("current_revision").max(max_revision),
            compact_revision: get("compact_revision"),
            identity: StoreIdentity {
                cluster_id: get("cluster_id") as u64,
                member_id: self.session.member_id as u64,
            },
            leases: leases
                .into_iter()
                .map(|(id, ttl)| StoredLease { id, ttl })
                .collect(),
            replication: None,
        })
    }

    fn commit(&mut self, batch: &CommitBatch) -> Result<()> {
        self.ensure_connected()?;
        let (epoch, commits) = self.session.begin_commit(batch)?;
        let mut statements = insert_statements(&batch.records);
        statements.extend(lease_statements(batch, epoch));
        let member = self.session.member_id;
        let written = self.client.run("commit", async |c| {
            for (sql, params) in statements {
                c.exec_drop(sql, Params::Positional(params)).await?;
            }
            c.exec_drop(
                "UPDATE k3rs_members SET commits = ? WHERE member_id = ?",
                (commits, member),
            )
            .await?;
            c.exec_drop(
                "UPDATE k3rs_meta SET value = CASE name WHEN 'current_revision' THEN ? ELSE ? END
                 WHERE name IN ('current_revision', 'lease_epoch')",
                (batch.current_revision, epoch),
            )
            .await?;
            c.query_drop("COMMIT").await
        });
        if written.is_err() {
            self.abandon();
        }
        self.session.end_commit(epoch, &written);
        written
    }

    fn resolve_commit(&mut self, _revision: i64) -> Result<bool> {
        self.ensure_connected()?;
        let member = self.session.member_id;
        let landed: Option<i64> = self
            .client
            .run("reading this server's commits", async |c| {
                // A locking read: the broken connection's transaction may
                // still be finishing its commit on the server (it holds
                // this row); a plain read would see the count before it.
                c.exec_first(
                    "SELECT commits FROM k3rs_members WHERE member_id = ? FOR UPDATE",
                    (member,),
                )
                .await
            })?;
        Ok(self.session.settle(landed.unwrap_or(-1)))
    }

    fn set_compact_revision(&mut self, revision: i64) -> Result<()> {
        self.ensure_connected()?;
        let purge_below = self.session.purge_below();
        let in_transaction = self.session.in_transaction;
        let done = self
            .client
            .run("recording the compact revision", async |c| {
                c.exec_drop(
                    "UPDATE k3rs_meta SET value = ? WHERE name = 'compact_revision'",
                    (revision,),
                )
                .await?;
                c.exec_drop(
                    "DELETE FROM k3rs_leases WHERE ttl = 0 AND changed <= ?",
                    (purge_below,),
                )
                .await?;
                c.exec_drop(
                    "UPDATE k3rs_meta SET value = GREATEST(value, ?) WHERE name = 'lease_purged'",
                    (purge_below,),
                )
                .await?;
                if in_transaction {
                    c.query_drop("COMMIT").await?;
                }
                Ok(())
            });
        if done.is_err() {
            self.abandon();
        }
        self.session.in_transaction = false;
        done
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

    fn is_shared(&self) -> bool {
        true
    }

    fn lock_and_catch_up(&mut self, head: i64) -> Result<Changes> {
        self.ensure_connected()?;
        self.abandon();
        self.session.in_transaction = true;
        let locked = self
            .client
            .run("taking the commit lock", async |c| {
                c.query_drop("START TRANSACTION").await?;
                c.query(format!("{META_ROWS} FOR UPDATE")).await
            })
            .and_then(parse_meta)
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
            .run("reading the revision", async |c| c.query(META_ROWS).await)?;
        let meta = parse_meta(rows)?;
        self.read_changes(head, meta)
    }

    fn release(&mut self) -> Result<()> {
        if !self.session.in_transaction {
            return Ok(());
        }
        self.session.in_transaction = false;
        self.client.run("ending a transaction", async |c| {
            c.query_drop("ROLLBACK").await
        })
    }

    fn listen(&mut self, waker: Waker) -> Result<()> {
        let config = self.config.clone();
        std::thread::Builder::new()
            .name("k3rs-mysql-poll".into())
            .spawn(move || poll(&config, waker))
            .map(drop)
            .map_err(|e| Error::Storage(format!("cannot start the poller thread: {e}")))
    }
}

/// MySQL has no notifications: polls the counters, every 2 ms while they
/// move and backing off to every 50 ms while they rest, and wakes the
/// writer when they changed. Stops once the store is gone.
fn poll(config: &MysqlConfig, waker: Waker) {
    const FASTEST: std::time::Duration = std::time::Duration::from_millis(2);
    const SLOWEST: std::time::Duration = std::time::Duration::from_millis(50);
    let mut client = None;
    let mut last: Option<Vec<(String, i64)>> = None;
    let mut interval = FASTEST;
    loop {
        std::thread::sleep(interval);
        if !waker.alive() {
            return;
        }
        if client.is_none() {
            client = config.opts().ok().and_then(|o| Client::connect(o).ok());
        }
        let Some(c) = client.as_mut() else {
            interval = SLOWEST;
            continue;
        };
        match c.run("polling the revision", async |c| c.query(META_ROWS).await) {
            Ok(now) if last.as_ref() == Some(&now) => {
                interval = (interval * 2).min(SLOWEST);
            }
            Ok(now) => {
                last = Some(now);
                interval = FASTEST;
                if !waker.wake() {
                    return;
                }
            }
            Err(_) => {
                client = None;
                last = None;
            }
        }
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
        self.threads
            .run(move |c| value_at(c, key.clone(), mod_revision))
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
