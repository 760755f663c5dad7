//! The servers a case runs against: real etcd started from its binary, k3rs
//! started in-process, or any endpoint given by URL.
//!
//! A target owns its server: dropping it stops the server and removes its
//! data directory.

use std::fmt;
use std::io::Read;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::Clients;

/// Where etcd's binary is unless `CONFORMANCE_ETCD` says otherwise.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";
/// How long a started server has to answer `Status`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Port races (another process takes the port between our probe and etcd's
/// bind) are rare; a few attempts cover them.
const START_ATTEMPTS: usize = 3;

/// Which kind of server a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Real etcd (the oracle).
    Etcd,
    /// k3rs in-process, on SQLite.
    K3rs,
    /// k3rs in-process, on a fresh PostgreSQL database.
    K3rsPostgres,
    /// k3rs in-process, on a fresh MySQL/MariaDB database.
    K3rsMysql,
    /// Three k3rs members replicating with raft, in-process; cases talk
    /// to a follower, so every write and linearizable read is forwarded.
    K3rsRaft,
    /// An endpoint somebody else runs; its store cannot be made fresh.
    Endpoint,
}

impl TargetKind {
    /// Whether this is k3rs, on any backend.
    pub fn is_k3rs(self) -> bool {
        matches!(
            self,
            TargetKind::K3rs
                | TargetKind::K3rsPostgres
                | TargetKind::K3rsMysql
                | TargetKind::K3rsRaft
        )
    }

    /// Parses a target name as the runner's flags give it.
    pub fn parse(name: &str) -> Option<TargetKind> {
        match name {
            "etcd" => Some(TargetKind::Etcd),
            "k3rs" => Some(TargetKind::K3rs),
            "k3rs-postgres" => Some(TargetKind::K3rsPostgres),
            "k3rs-mysql" => Some(TargetKind::K3rsMysql),
            "k3rs-raft" => Some(TargetKind::K3rsRaft),
            _ => None,
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Etcd => "etcd",
            TargetKind::K3rs => "k3rs",
            TargetKind::K3rsPostgres => "k3rs-postgres",
            TargetKind::K3rsMysql => "k3rs-mysql",
            TargetKind::K3rsRaft => "k3rs-raft",
            TargetKind::Endpoint => "endpoint",
        })
    }
}

/// A running server the cases can talk to.
pub trait Target: Send {
    /// `http://host:port`.
    fn endpoint(&self) -> &str;
    /// What kind of server this is.
    fn kind(&self) -> TargetKind;
}

/// The etcd binary to run.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("CONFORMANCE_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN))
}

/// Starts a fresh server of `kind`; `Endpoint` targets cannot be started.
pub async fn start(kind: TargetKind) -> Result<Box<dyn Target>, String> {
    match kind {
        TargetKind::Etcd => Ok(Box::new(EtcdTarget::start().await?)),
        TargetKind::K3rs => Ok(Box::new(K3rsTarget::start().await?)),
        TargetKind::K3rsPostgres => Ok(Box::new(K3rsTarget::start_postgres().await?)),
        TargetKind::K3rsMysql => Ok(Box::new(K3rsTarget::start_mysql().await?)),
        TargetKind::K3rsRaft => Ok(Box::new(RaftClusterTarget::start().await?)),
        TargetKind::Endpoint => Err("an endpoint target cannot be started".into()),
    }
}

fn free_port() -> Result<u16, String> {
    let l = StdListener::bind("127.0.0.1:0").map_err(|e| format!("bind a probe port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Waits until `endpoint` answers `Status`, or `alive` says the server died.
async fn wait_ready(endpoint: &str, mut alive: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(clients) = Clients::connect(endpoint).await {
            let mut m = clients.maintenance.clone();
            if m.status(kine::proto::StatusRequest {}).await.is_ok() {
                return Ok(());
            }
        }
        if !alive() {
            return Err(format!("server at {endpoint} exited before answering"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "server at {endpoint} did not answer within {READY_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Real etcd on free loopback ports with a temporary data directory.
///
/// etcd runs under a small `sh` watchdog that holds our end of a pipe on its
/// stdin: when this process goes away for any reason (drop, panic, SIGKILL
/// from a test runner's timeout) the pipe closes and the watchdog kills
/// etcd and removes its directory, so no etcd outlives its test.
pub struct EtcdTarget {
    endpoint: String,
    shell: Child,
    stdin: Option<ChildStdin>,
    dir: TempDir,
}

/// Kills etcd when stdin closes; exits when etcd exits.
/// (A background job's stdin is /dev/null unless redirected, hence fd 3.)
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" >"$ETCD_LOG" 2>&1 </dev/null 3<&- & pid=$!
(read _ignored <&3; kill -9 $pid 2>/dev/null; sleep 0.2; rm -rf "$ETCD_DIR") &
exec 3<&-
wait $pid"#;

impl EtcdTarget {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start().await {
                Ok(t) => return Ok(t),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn try_start() -> Result<Self, String> {
        let bin = etcd_binary();
        if !bin.exists() {
            return Err(format!("etcd binary {} not found", bin.display()));
        }
        let dir = tempfile::Builder::new()
            .prefix("conformance-etcd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(&bin)
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=error")
            .env("ETCD_LOG", &log)
            .env("ETCD_DIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn etcd: {e}"))?;
        let stdin = shell.stdin.take();
        let mut target = EtcdTarget {
            endpoint: client,
            shell,
            stdin,
            dir,
        };
        let ready = {
            let shell = &mut target.shell;
            wait_ready(&target.endpoint, || matches!(shell.try_wait(), Ok(None))).await
        };
        match ready {
            Ok(()) => Ok(target),
            Err(e) => {
                let mut text = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
                Err(format!("{e}; etcd log:\n{text}"))
            }
        }
    }
}

impl Target for EtcdTarget {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn kind(&self) -> TargetKind {
        TargetKind::Etcd
    }
}

impl Drop for EtcdTarget {
    fn drop(&mut self) {
        // Closing stdin makes the watchdog kill etcd; then reap the shell
        // before the data directory goes.
        drop(self.stdin.take());
        let _ = self.shell.wait();
        let _ = &self.dir;
    }
}

/// k3rs served in-process on `127.0.0.1:0` over SQLite in a temporary
/// directory. Must be started inside a multi-threaded tokio runtime, since
/// cases may block a thread on a child process while the server runs.
pub struct K3rsTarget {
    endpoint: String,
    kind: TargetKind,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _dir: Option<TempDir>,
    database: Option<TestDatabase>,
}

impl K3rsTarget {
    /// Opens a store on SQLite, starts serving and waits until it answers.
    pub async fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("conformance-k3rs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let store = kine::open_sqlite(&kine::backend::sqlite::SqliteConfig {
            path: dir.path().join("state.db"),
            durability: Default::default(),
        })
        .map_err(|e| format!("open k3rs store: {e}"))?;
        let mut t = Self::serve(store, TargetKind::K3rs).await?;
        t._dir = Some(dir);
        Ok(t)
    }

    /// Opens a store on a fresh PostgreSQL database (dropped with the
    /// target), starts serving and waits until it answers.
    pub async fn start_postgres() -> Result<Self, String> {
        let database = TestDatabase::create().await?;
        let config =
            kine::backend::postgres::PostgresConfig::new(&database.dsn, &Default::default())
                .map_err(|e| e.to_string())?;
        let store = tokio::task::spawn_blocking(move || kine::open_postgres(&config))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("open k3rs store on PostgreSQL: {e}"))?;
        let mut t = Self::serve(store, TargetKind::K3rsPostgres).await?;
        t.database = Some(database);
        Ok(t)
    }

    /// Opens a store on a fresh MySQL/MariaDB database (dropped with the
    /// target), starts serving and waits until it answers.
    pub async fn start_mysql() -> Result<Self, String> {
        let database = TestDatabase::create_mysql().await?;
        let config = kine::backend::mysql::MysqlConfig {
            dsn: database.dsn.clone(),
        };
        let store = tokio::task::spawn_blocking(move || kine::open_mysql(&config))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("open k3rs store on MySQL: {e}"))?;
        let mut t = Self::serve(store, TargetKind::K3rsMysql).await?;
        t.database = Some(database);
        Ok(t)
    }

    async fn serve(store: kine::Store, kind: TargetKind) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        Self::serve_on(listener, store, kind).await
    }

    async fn serve_on(
        listener: tokio::net::TcpListener,
        store: kine::Store,
        kind: TargetKind,
    ) -> Result<Self, String> {
        let endpoint = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let config = kine::ServerConfig {
            emulated_etcd_version: kine::DEFAULT_EMULATED_ETCD_VERSION.to_string(),
            name: "default".into(),
            advertise_client_urls: vec![endpoint.clone()],
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = kine::serve(listener, store, config, shutdown).await {
                eprintln!("k3rs server stopped with an error: {e}");
            }
        });
        let t = K3rsTarget {
            endpoint,
            kind,
            shutdown: Some(tx),
            task: Some(task),
            _dir: None,
            database: None,
        };
        wait_ready(&t.endpoint, || true).await?;
        Ok(t)
    }
}

/// The PostgreSQL server tests use: `K3RS_TEST_POSTGRES`, or the local one.
pub fn postgres_admin_dsn() -> String {
    std::env::var("K3RS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The MySQL/MariaDB server tests use: `K3RS_TEST_MYSQL`, or the local one.
pub fn mysql_admin_dsn() -> String {
    std::env::var("K3RS_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A database of its own for one test, dropped (with any connection still
/// open to it) when the test is done.
pub struct TestDatabase {
    /// The DSN of the new database.
    pub dsn: String,
    name: String,
    mysql: bool,
}

fn test_database_name() -> String {
    format!(
        "k3rs_test_{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

impl TestDatabase {
    /// Creates `k3rs_test_<random>` on the test MySQL server.
    pub async fn create_mysql() -> Result<Self, String> {
        let name = test_database_name();
        let admin = mysql_admin_dsn();
        let sql = format!("CREATE DATABASE {name}");
        let dsn = admin.clone();
        tokio::task::spawn_blocking(move || mysql_admin_sql(&dsn, &sql))
            .await
            .map_err(|e| e.to_string())??;
        let (base, _) = admin
            .rsplit_once('/')
            .ok_or("K3RS_TEST_MYSQL has no database")?;
        Ok(TestDatabase {
            dsn: format!("{base}/{name}"),
            name,
            mysql: true,
        })
    }

    /// Creates `k3rs_test_<random>` on the test PostgreSQL server.
    pub async fn create() -> Result<Self, String> {
        let name = test_database_name();
        let admin = postgres_admin_dsn();
        let sql = format!("CREATE DATABASE {name}");
        // The sync client must not run on an async thread.
        run_admin(admin.clone(), sql).await?;
        let (base, _) = admin
            .rsplit_once('/')
            .ok_or("K3RS_TEST_POSTGRES has no database")?;
        Ok(TestDatabase {
            dsn: format!("{base}/{name}"),
            name,
            mysql: false,
        })
    }
}

impl TestDatabase {
    /// Ends every connection to this database, as a restart of the
    /// database server would (blocking; call it off async threads or
    /// accept a short stall).
    pub fn drop_connections(&self) {
        let name = self.name.clone();
        let _ = if self.mysql {
            let admin = mysql_admin_dsn();
            std::thread::spawn(move || {
                let sql = format!(
                    "SELECT GROUP_CONCAT(id) FROM information_schema.processlist WHERE db = '{name}'"
                );
                mysql_kill_all(&admin, &sql)
            })
            .join()
        } else {
            let admin = postgres_admin_dsn();
            std::thread::spawn(move || {
                admin_sql(
                    &admin,
                    &format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                    ),
                )
            })
            .join()
        };
    }
}

/// Kills every MySQL connection whose ids `list_sql` returns (one row, ids
/// separated by commas).
fn mysql_kill_all(dsn: &str, list_sql: &str) -> Result<(), String> {
    use mysql_async::prelude::Queryable;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let opts = mysql_async::Opts::from_url(dsn).map_err(|e| e.to_string())?;
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| format!("connect to the test MySQL ({dsn}): {e}"))?;
        let ids: Option<Option<String>> = conn
            .query_first(list_sql)
            .await
            .map_err(|e| e.to_string())?;
        for id in ids
            .flatten()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
        {
            let _ = conn.query_drop(format!("KILL CONNECTION {id}")).await;
        }
        let _ = conn.disconnect().await;
        Ok(())
    })
}

fn mysql_admin_sql(dsn: &str, sql: &str) -> Result<(), String> {
    use mysql_async::prelude::Queryable;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let opts = mysql_async::Opts::from_url(dsn).map_err(|e| e.to_string())?;
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| format!("connect to the test MySQL ({dsn}): {e}"))?;
        conn.query_drop(sql)
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
        let _ = conn.disconnect().await;
        Ok(())
    })
}

async fn run_admin(dsn: String, sql: String) -> Result<(), String> {
    tokio::task::spawn_blocking(move || admin_sql(&dsn, &sql))
        .await
        .map_err(|e| e.to_string())?
}

fn admin_sql(dsn: &str, sql: &str) -> Result<(), String> {
    let mut client = postgres::Client::connect(dsn, postgres::NoTls)
        .map_err(|e| format!("connect to the test PostgreSQL ({dsn}): {e}"))?;
    client.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // A thread of its own: drop may run on an async thread.
        if self.mysql {
            let (dsn, sql) = (
                mysql_admin_dsn(),
                format!("DROP DATABASE IF EXISTS {}", self.name),
            );
            let _ = std::thread::spawn(move || mysql_admin_sql(&dsn, &sql)).join();
        } else {
            let (dsn, sql) = (
                postgres_admin_dsn(),
                format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            );
            let _ = std::thread::spawn(move || admin_sql(&dsn, &sql)).join();
        }
    }
}

impl Target for K3rsTarget {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn kind(&self) -> TargetKind {
        self.kind
    }
}

impl Drop for K3rsTarget {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Streams (watches) may keep graceful shutdown waiting; the cases
        // are done with the server, so stop it outright.
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // The store's connections close with it; the database goes after
        // (WITH (FORCE) ends any connection still open).
        drop(self.database.take());
    }
}

/// Three k3rs members replicating with raft, each serving the etcd API,
/// all in this process on loopback ports.
pub struct RaftClusterTarget {
    /// A follower's endpoint (the one cases use).
    endpoint: String,
    members: Vec<K3rsTarget>,
    nodes: Vec<std::sync::Arc<raft_store::RaftNode>>,
    /// Each member's outgoing links, for injected faults.
    faults: Vec<raft_store::network::Faults>,
    peer_urls: Vec<String>,
}

impl RaftClusterTarget {
    /// Starts a cluster of three at etcd's default timing and waits until
    /// every member answers.
    pub async fn start() -> Result<Self, String> {
        Self::start_with(100, 1000).await
    }

    /// Every member's etcd endpoint, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// The member that leads now, if any.
    pub fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.leads())
    }

    /// Every member that believes it leads (a leader cut off from the
    /// majority keeps believing it, but can commit nothing).
    pub fn leaders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].leads())
            .collect()
    }

    /// Cuts every link between member `i` and the others, both ways.
    pub fn isolate(&self, i: usize) {
        for (j, faults) in self.faults.iter().enumerate() {
            if j == i {
                for (k, url) in self.peer_urls.iter().enumerate() {
                    if k != i {
                        faults.set(url, raft_store::network::Fault::Drop);
                    }
                }
            } else {
                faults.set(&self.peer_urls[i], raft_store::network::Fault::Drop);
            }
        }
    }

    /// Delays every message from member `from` to member `to`.
    pub fn delay(&self, from: usize, to: usize, by: Duration) {
        self.faults[from].set(&self.peer_urls[to], raft_store::network::Fault::Delay(by));
    }

    /// Removes every injected fault.
    pub fn heal(&self) {
        self.faults.iter().for_each(|f| f.heal());
    }

    /// Starts a cluster of three with this heartbeat and election timeout
    /// (milliseconds) and waits until every member answers.
    pub async fn start_with(heartbeat_ms: u64, election_timeout_ms: u64) -> Result<Self, String> {
        let mut members = Vec::new();
        let mut nodes = Vec::new();
        let mut faults = Vec::new();
        let mut peer_urls = Vec::new();
        let mut first_peer = None;
        for i in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("conformance-k3rs-raft-")
                .tempdir()
                .map_err(|e| e.to_string())?;
            let store = kine::open_sqlite(&kine::backend::sqlite::SqliteConfig {
                path: dir.path().join("state.db"),
                durability: kine::backend::sqlite::Durability::ReplayedFromLog,
            })
            .map_err(|e| format!("open k3rs store: {e}"))?;
            let peer_port = free_port()?;
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("bind: {e}"))?;
            let client_url = format!(
                "http://{}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            let config = raft_store::RaftConfig {
                dir: dir.path().to_path_buf(),
                // etcd's default name, as the single-server targets report.
                name: "default".into(),
                peer_listen: ([127, 0, 0, 1], peer_port).into(),
                advertise_peer_url: peer_url.clone(),
                client_urls: vec![client_url],
                token: "conformance".into(),
                bootstrap: match &first_peer {
                    None => raft_store::Bootstrap::ClusterInit,
                    Some(url) => raft_store::Bootstrap::Join(String::clone(url)),
                },
                fsync: false,
                heartbeat_ms,
                election_timeout_ms,
                snapshot_count: 10_000,
                faults: raft_store::network::Faults::default(),
                peer_tls: None,
            };
            faults.push(config.faults.clone());
            peer_urls.push(peer_url.clone());
            let node = raft_store::start(config, store.clone())
                .await
                .map_err(|e| format!("start member {i}: {e}"))?;
            if first_peer.is_none() {
                // The first member must lead before others can join.
                node.raft()
                    .wait(Some(READY_TIMEOUT))
                    .current_leader(node.id(), "leads")
                    .await
                    .map_err(|e| format!("member 0 did not become leader: {e}"))?;
                first_peer = Some(peer_url);
            }
            let mut member = K3rsTarget::serve_on(listener, store, TargetKind::K3rsRaft).await?;
            member._dir = Some(dir);
            members.push(member);
            nodes.push(node);
        }
        let follower = nodes.iter().position(|n| !n.leads()).unwrap_or(0);
        Ok(RaftClusterTarget {
            endpoint: members[follower].endpoint.clone(),
            members,
            nodes,
            faults,
            peer_urls,
        })
    }
}

impl Target for RaftClusterTarget {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn kind(&self) -> TargetKind {
        TargetKind::K3rsRaft
    }
}

impl Drop for RaftClusterTarget {
    fn drop(&mut self) {
        for node in &self.nodes {
            let raft = node.raft().clone();
            tokio::spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
        self.members.clear();
    }
}

/// A server somebody else runs, reached by URL.
pub struct EndpointTarget {
    endpoint: String,
}

impl EndpointTarget {
    /// Checks that `url` answers.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let endpoint = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        wait_ready(&endpoint, || true).await?;
        Ok(EndpointTarget { endpoint })
    }
}

impl Target for EndpointTarget {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }
    fn kind(&self) -> TargetKind {
        TargetKind::Endpoint
    }
}
