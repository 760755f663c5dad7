//! The k3rs binary: parses flags, sets up logging, runs the chosen command.

mod certs;
mod cli;
mod snapshot;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use cli::{
    CertsCommand, Cli, Command, DatastoreConfig, Endpoint, KineCommand, LogFormat, MetricsBind,
    SnapshotCommand,
};
use tracing_subscriber::EnvFilter;

/// mimalloc: the request path allocates many small buffers per call, and
/// glibc's malloc cost about a tenth of the server's CPU under put load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k3rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = match cli.command {
        Command::Server(args) => {
            let config = args.into_config()?;
            init_tracing(config.log_format, config.debug);
            return runtime()?.block_on(run_server(config));
        }
        Command::Kine(kine) => match kine.command {
            None => kine.datastore.into_config()?,
            Some(KineCommand::Snapshot(command)) => return run_snapshot(command),
        },
        Command::Agent(args) => {
            init_tracing(args.log_format, args.debug);
            let config = args.into_config()?;
            return runtime()?.block_on(run_agent(config));
        }
        Command::Certs(CertsCommand::Generate(args)) => {
            certs::generate(&args.dir, &args.hosts)?;
            eprintln!(
                "wrote ca.crt, server.crt, client.crt and their keys to {}",
                args.dir.display()
            );
            return Ok(());
        }
    };
    init_tracing(config.log_format, config.debug);
    runtime()?.block_on(run_datastore(config, shutdown_signal()))
}

/// `k3rs server`: the embedded datastore and the Kubernetes API on it,
/// stopped together by SIGINT or SIGTERM.
async fn run_server(config: cli::ServerConfig) -> Result<()> {
    private_dirs(&config.private_dirs)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        }
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut datastore = config
        .datastore
        .map(|d| tokio::spawn(run_datastore(d, stopped())));
    if let Some(api) = config.api {
        let endpoint = api.etcd_endpoint.clone();
        // A datastore that cannot start (a refused database, a taken
        // address) ends the server at once, not after the API's wait for it.
        let mut running = tokio::select! {
            running = apiserver::start(api, stopped()) => running?,
            ended = datastore_ended(&mut datastore) => {
                let _ = stop_tx.send(true);
                return ended;
            }
        };
        tracing::info!(
            listen = %running.local_addr,
            datastore = %endpoint,
            kubeconfig = %running.kubeconfig.display(),
            "serving the Kubernetes API; use it with: kubectl --kubeconfig {}",
            running.kubeconfig.display()
        );
        if let Some(mut agent) = config.agent {
            // The server's own agent joins it like any other, over loopback.
            agent.server = format!("https://127.0.0.1:{}", running.local_addr.port());
            agent.token = running.token.clone();
            tokio::spawn(async move {
                if let Err(e) = agent::run(agent).await {
                    tracing::error!(error = %format!("{e:#}"), "the server's agent stopped");
                }
            });
        }
        tokio::select! {
            served = &mut running.task => served?,
            ended = datastore_ended(&mut datastore) => {
                let _ = stop_tx.send(true);
                running.task.await?;
                return ended;
            }
        }
    }
    match datastore {
        Some(d) => d.await?,
        None => Ok(()),
    }
}

/// Resolves when the embedded datastore's task ends (never without one).
async fn datastore_ended(task: &mut Option<tokio::task::JoinHandle<Result<()>>>) -> Result<()> {
    let Some(running) = task.as_mut() else {
        return std::future::pending().await;
    };
    let ended = running.await;
    *task = None;
    ended?
}

/// `k3rs agent`: joins a server and runs this node's pods until SIGINT or
/// SIGTERM (the pods' processes stay; the next start cleans them up).
async fn run_agent(config: agent::Config) -> Result<()> {
    // DATA_DIR; the agent makes its own directory below it.
    if let Some(data_dir) = config.dir.parent() {
        private_dirs(&[data_dir.to_path_buf()])?;
    }
    tokio::select! {
        r = agent::run(config) => r,
        _ = shutdown_signal() => Ok(()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run_snapshot(command: SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Save(args) => {
            let client = snapshot::ClientConfig {
                endpoint: args.endpoints,
                cacert: args.cacert,
                cert: args.cert,
                key: args.key,
            };
            runtime()?.block_on(snapshot::save(&client, &args.file))
        }
        SnapshotCommand::Restore(args) => {
            let Endpoint::Sqlite(target) = cli::database_endpoint(
                args.endpoint.as_deref(),
                args.data_dir,
                Default::default(),
                &Default::default(),
            )?
            else {
                anyhow::bail!(
                    "snapshot restore is built for SQLite; restore PostgreSQL or MySQL with their own tools"
                );
            };
            // A server running on the target would not see the restore.
            let _lock = lock_database(&target.path)?;
            snapshot::restore(&args.file, &target.path, args.skip_hash_check)
        }
    }
}

fn init_tracing(format: LogFormat, debug: bool) {
    // openraft narrates every election and membership step at info.
    let default = if debug { "debug" } else { "info,openraft=warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Creates k3rs's own directories 0700, and tightens existing ones to it
/// (the database and the cluster's keys live below them).
fn private_dirs(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        kine::backend::files::private_dir(dir).with_context(|| {
            format!(
                "cannot create {}; pick a writable --data-dir",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Holds an exclusive lock beside the database, so two k3rs processes never
/// share one file. Released when the process exits, however it exits.
fn lock_database(db: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        kine::backend::files::create_private_dir(dir).with_context(|| {
            format!(
                "cannot create {}; pick a writable --data-dir or --endpoint",
                dir.display()
            )
        })?;
    }
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(kine::backend::files::FILE_MODE)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "cannot open {}; is the directory writable?",
                lock_path.display()
            )
        })?;
    kine::backend::files::private_file(&lock_path)
        .with_context(|| format!("cannot read the mode of {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(anyhow!(
            "{} is in use by another k3rs process; stop it or pick another --data-dir or --endpoint",
            db.display()
        )),
        Err(TryLockError::Error(e)) => Err(anyhow!("cannot lock {}: {e}", db.display())),
    }
}

async fn run_datastore(
    config: DatastoreConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let (Endpoint::Sqlite(sqlite), false) = (&config.endpoint, config.init_empty) {
        // Read-only, so before anything changes (a refused start changes
        // nothing); checked again under the lock.
        check_database(&sqlite.path, false)?;
    }
    private_dirs(&config.private_dirs)?;
    let (store, database, _lock) = match &config.endpoint {
        Endpoint::Sqlite(sqlite) => {
            let lock = lock_database(&sqlite.path)?;
            check_database(&sqlite.path, config.init_empty)?;
            let store = kine::open_sqlite(sqlite)
                .with_context(|| format!("cannot open the datastore {}", sqlite.path.display()))?;
            let fsync = sqlite.durability == kine::backend::sqlite::Durability::Fsync;
            let what = format!("sqlite {} (fsync {fsync})", sqlite.path.display());
            (store, what, Some(lock))
        }
        Endpoint::Postgres(pg) => {
            let what = pg.describe();
            let pg = pg.clone();
            let store = tokio::task::spawn_blocking(move || kine::open_postgres(&pg))
                .await?
                .with_context(|| format!("cannot open the datastore {what}"))?;
            (store, what, None)
        }
        Endpoint::Mysql(my) => {
            let what = my.describe();
            let my = my.clone();
            let store = tokio::task::spawn_blocking(move || kine::open_mysql(&my))
                .await?
                .with_context(|| format!("cannot open the datastore {what}"))?;
            (store, what, None)
        }
    };
    store.alarms().set_quota(config.quota_bytes);
    let cluster = match &config.cluster {
        Some(settings) => Some(start_member(settings, &config, store.clone()).await?),
        None => None,
    };
    let tcp = match config.listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow!("cannot listen on {addr}: the address is in use (another etcd, kine or k3rs?); choose another with --listen-address")
            } else {
                anyhow!("cannot listen on {addr}: {e}")
            }
        })?),
        None => None,
    };
    // After the database lock: a socket a running server serves is never
    // taken for a stale one.
    let unix = config.socket.as_deref().map(bind_socket).transpose()?;
    let monitor = bind_monitor(config.metrics).await?;
    let client_cert_auth = config
        .server
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_pem.is_some());
    if let Some(addr) = config.listen.filter(|_| !client_cert_auth) {
        let who = if addr.ip().is_loopback() {
            "every local user"
        } else {
            "anyone who can reach it"
        };
        tracing::warn!(
            listen = %addr,
            "the etcd API on {addr} takes no credentials: {who} can read and write all cluster state through it; require client certificates with --server-cert-file, --server-key-file and --trusted-ca-file"
        );
    }
    tracing::info!(
        listen = %config.listen.map_or("none".to_string(), |a| a.to_string()),
        socket = %config.socket.as_deref().map_or("none".into(), |p| p.display().to_string()),
        tls = config.server.tls.is_some(),
        client_cert_auth,
        metrics = ?monitor.as_ref().and_then(|l| l.local_addr().ok()),
        quota_bytes = config.quota_bytes,
        database = %database,
        revision = store.current_revision(),
        "serving the etcd v3 API"
    );
    if let Some((interval, min_retain)) = config.auto_compact {
        tokio::spawn(kine::auto_compact(store.clone(), interval, min_retain));
    }
    // A member whose raft stopped on a storage failure stops serving too,
    // and exits with the error.
    let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let shutdown = {
        let (cluster, failed) = (cluster.clone(), failed.clone());
        async move {
            match cluster {
                Some(node) => tokio::select! {
                    _ = shutdown => {}
                    e = node.failure() => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                },
                None => shutdown.await,
            }
        }
    };
    let listeners = kine::Listeners { tcp, unix };
    let served = kine::serve_on(listeners, monitor, store.clone(), config.server, shutdown).await;
    if let Some(socket) = &config.socket {
        let _ = std::fs::remove_file(socket);
    }
    served.context("the gRPC server failed")?;
    if let Some(node) = cluster {
        let _ = node.raft().shutdown().await;
    }
    store.shutdown().await;
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        anyhow::bail!("this cluster member stopped: {e}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Refuses database files that would open as an empty store (a zero-length
/// or headerless file, a `-wal` without its database); with --init-empty,
/// sets them aside and starts empty.
fn check_database(db: &Path, init_empty: bool) -> Result<()> {
    use kine::backend::sqlite;
    if !init_empty {
        return sqlite::check_files(db).map_err(|e| anyhow!("{e}"));
    }
    if let Some(found) = sqlite::set_aside(db)? {
        tracing::warn!(
            found = %found.found(),
            "--init-empty: starting an empty store; what the file held is not in it"
        );
    }
    Ok(())
}

/// Binds the datastore's unix socket, owner-only. A socket file left by a
/// killed process is removed; one that a live process answers on is not.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        kine::backend::files::create_private_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "{} is in use by another process (a running k3rs?); stop it or pick another --data-dir or --listen-address",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; move it away or pick another --listen-address",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
        // sun_path holds 108 bytes, the terminating zero included.
        if path.as_os_str().len() > 107 {
            anyhow!(
                "cannot listen on {}: {e}; a socket's path is at most 107 bytes: choose a shorter --data-dir",
                path.display()
            )
        } else {
            anyhow!("cannot listen on {}: {e}", path.display())
        }
    })?;
    // Its directory is 0700 already; the mode keeps the socket the owner's
    // wherever it lives.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

/// Starts this server as a member of a replicated cluster.
async fn start_member(
    settings: &cli::ClusterSettings,
    config: &DatastoreConfig,
    store: kine::Store,
) -> Result<std::sync::Arc<raft_store::RaftNode>> {
    let token = match &settings.token {
        Some(t) => t.clone(),
        None => cluster_token(&settings.dir)?,
    };
    let raft = raft_store::RaftConfig {
        dir: settings.dir.clone(),
        name: config.server.name.clone(),
        peer_listen: settings.peer_listen,
        advertise_peer_url: settings.advertise_peer_url.clone(),
        client_urls: config.server.advertise_client_urls.clone(),
        token,
        bootstrap: settings.bootstrap.clone(),
        fsync: settings.fsync,
        heartbeat_ms: settings.heartbeat_ms,
        election_timeout_ms: settings.election_timeout_ms,
        snapshot_count: settings.snapshot_count,
        faults: Default::default(),
        peer_tls: settings.peer_tls.clone(),
    };
    let node = raft_store::start(raft, store)
        .await
        .context("cannot start this cluster member")?;
    tracing::info!(
        peer_listen = %settings.peer_listen,
        peer_url = %settings.advertise_peer_url,
        member = %format!("{:x}", node.id()),
        log_fsync = settings.fsync,
        peer_tls = settings.peer_tls.is_some(),
        "replicating with raft"
    );
    Ok(node)
}

/// The first server's generated cluster token, created once (0600).
fn cluster_token(dir: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_string());
    }
    let mut secret = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .context("cannot read random bytes for the cluster token")?;
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, token.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated the cluster token; other servers join with --token set to its contents");
    Ok(token)
}

/// Binds the monitoring listener: a taken default port is a warning, a
/// taken chosen one an error.
async fn bind_monitor(bind: MetricsBind) -> Result<Option<tokio::net::TcpListener>> {
    let (addr, required) = match bind {
        MetricsBind::Off => return Ok(None),
        MetricsBind::Default(addr) => (addr, false),
        MetricsBind::Required(addr) => (addr, true),
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if !required => {
            tracing::warn!(address = %addr, error = %e, "metrics not served: the default address is taken; choose one with --metrics-bind-address");
            Ok(None)
        }
        Err(e) => Err(anyhow!(
            "cannot serve metrics on {addr}: {e}; choose another --metrics-bind-address"
        )),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only ctrl-c stops k3rs");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
