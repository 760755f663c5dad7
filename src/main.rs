//! The k3rs binary: parses flags, sets up logging, runs the chosen command.

mod cli;

use std::fs::{File, TryLockError};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use cli::{Cli, Command, DatastoreConfig, Endpoint, LogFormat};
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
        Command::Server(args) | Command::Kine(args) => args.into_config()?,
    };
    init_tracing(config.log_format, config.debug);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_datastore(config))
}

fn init_tracing(format: LogFormat, debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Holds an exclusive lock beside the database, so two k3rs processes never
/// share one file. Released when the process exits, however it exits.
fn lock_database(db: &Path) -> Result<File> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {}; pick a writable --data-dir or --endpoint",
                dir.display()
            )
        })?;
    }
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "cannot open {}; is the directory writable?",
                Path::new(&lock_path).display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(anyhow!(
            "{} is in use by another k3rs process; stop it or pick another --data-dir or --endpoint",
            db.display()
        )),
        Err(TryLockError::Error(e)) => Err(anyhow!("cannot lock {}: {e}", db.display())),
    }
}

async fn run_datastore(config: DatastoreConfig) -> Result<()> {
    let Endpoint::Sqlite(sqlite) = &config.endpoint;
    let _lock = lock_database(&sqlite.path)?;
    let store = kine::open_sqlite(sqlite)
        .with_context(|| format!("cannot open the datastore {}", sqlite.path.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!("cannot listen on {}: the address is in use (another etcd, kine or k3rs?); choose another with --listen-address", config.listen)
        } else {
            anyhow!("cannot listen on {}: {e}", config.listen)
        }
    })?;
    tracing::info!(
        listen = %config.listen,
        database = %sqlite.path.display(),
        fsync = sqlite.durability == kine::backend::sqlite::Durability::Fsync,
        revision = store.current_revision(),
        "serving the etcd v3 API"
    );
    if let Some((interval, min_retain)) = config.auto_compact {
        tokio::spawn(kine::auto_compact(store.clone(), interval, min_retain));
    }
    kine::serve(listener, store.clone(), config.server, shutdown_signal())
        .await
        .context("the gRPC server failed")?;
    store.shutdown().await;
    tracing::info!("stopped");
    Ok(())
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
