//! The etcd v3 gRPC surface (API boundary): one module per service, each a
//! thin layer of checks, a store call, error mapping and the header.
//! No SQL here, and no tonic below here.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
mod monitor;
pub mod observe;
pub mod shutdown;
pub mod status;
pub mod transport;
pub mod watch;

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, UnixListener};
pub use transport::TlsConfig;

use crate::mvcc::Store;
use crate::proto::ResponseHeader;
use crate::proto::cluster_server::ClusterServer;
use crate::proto::kv_server::KvServer;
use crate::proto::lease_server::LeaseServer;
use crate::proto::maintenance_server::MaintenanceServer;
use crate::proto::watch_server::WatchServer;

/// A single member is always its own leader at term 1.
pub const RAFT_TERM: u64 = 1;
/// gRPC decode limit: the largest request plus etcd's 512 KiB of overhead,
/// so a request just over the limit gets etcd's "request is too large".
pub const MAX_RECV_BYTES: usize = kv::MAX_REQUEST_BYTES + 512 * 1024;

/// What the gRPC server says about itself.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The etcd version `Status` reports; Kubernetes gates features on it.
    pub emulated_etcd_version: String,
    /// Member name in `MemberList`.
    pub name: String,
    /// Client URLs in `MemberList`.
    pub advertise_client_urls: Vec<String>,
    /// How often watchers that asked for progress notifications get one
    /// (etcd's default is 10 minutes).
    pub watch_progress_notify_interval: Duration,
    /// TLS on the client listener; `None` serves plain HTTP/2.
    pub tls: Option<TlsConfig>,
    /// Unary calls slower than this are logged (method, peer, time).
    pub slow_request_threshold: Duration,
    /// Most streams (calls in flight, watch streams) per connection;
    /// clients queue beyond it.
    pub max_concurrent_streams: u32,
    /// How long a new connection has to send its first bytes.
    pub handshake_timeout: Duration,
    /// How often the server pings each connection, and how long it waits
    /// for the answer, to close peers that went away without closing
    /// (half-open) or stopped reading.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            emulated_etcd_version: crate::DEFAULT_EMULATED_ETCD_VERSION.into(),
            name: "default".into(),
            advertise_client_urls: Vec::new(),
            watch_progress_notify_interval: DEFAULT_PROGRESS_NOTIFY_INTERVAL,
            tls: None,
            slow_request_threshold: DEFAULT_SLOW_REQUEST_THRESHOLD,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            handshake_timeout: transport::HANDSHAKE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Unary calls slower than this are logged by default.
pub const DEFAULT_SLOW_REQUEST_THRESHOLD: Duration = Duration::from_secs(1);
/// Streams per connection by default: far above what kube-apiserver opens
/// on one connection, and a bound on what one peer can hold.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 4096;
/// Server pings: etcd waits 2 hours; 30 s finds dead peers while they
/// still matter, at the cost of one small frame per connection.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// etcd's keepalive timeout.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// etcd's default periodic progress notification interval.
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// How long shutdown waits for clients to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often expired leases are looked for (etcd's lessor ticks at 500 ms).
const LEASE_EXPIRY_TICK: Duration = Duration::from_millis(500);

/// Fills the identity fields of response headers.
#[derive(Clone)]
pub(crate) struct Header {
    store: Store,
}

impl Header {
    /// Fills a header whose revision the store already set.
    pub(crate) fn fill(&self, header: &mut Option<ResponseHeader>) {
        let h = header.get_or_insert_with(Default::default);
        let id = self.store.identity();
        h.cluster_id = id.cluster_id;
        h.member_id = id.member_id;
        h.raft_term = match self.store.replicator() {
            Some(r) => r.status().term,
            None => RAFT_TERM,
        };
    }

    /// Fills a header at `revision`.
    pub(crate) fn fill_at(&self, header: &mut Option<ResponseHeader>, revision: i64) {
        header.get_or_insert_with(Default::default).revision = revision;
        self.fill(header);
    }
}

/// Serves the etcd API on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish and returns.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with_monitor(listener, None, store, config, shutdown).await
}

/// `serve`, plus `/metrics` and health endpoints on `monitor`.
pub async fn serve_with_monitor(
    listener: TcpListener,
    monitor: Option<TcpListener>,
    store: Store,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let listeners = Listeners {
        tcp: Some(listener),
        unix: None,
    };
    serve_on(listeners, monitor, store, config, shutdown).await
}

/// Where the etcd API is served: TCP, a unix socket, or both.
#[derive(Debug, Default)]
pub struct Listeners {
    /// TCP, with the TLS of `ServerConfig` when it has one.
    pub tcp: Option<TcpListener>,
    /// A unix socket, always plain: the socket file's mode and its
    /// directory's decide who may connect.
    pub unix: Option<UnixListener>,
}

/// `serve_with_monitor` on every listener of `listeners`, one store and
/// one set of services behind them.
pub async fn serve_on(
    listeners: Listeners,
    monitor: Option<TcpListener>,
    store: Store,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let header = Header {
        store: store.clone(),
    };
    let (stop_streams, stopping) = shutdown::channel();
    let grace_over = stopping.clone().wait();
    let hub = crate::watch::Hub::start(store.clone(), config.watch_progress_notify_interval);
    let watch = watch::WatchService {
        hub,
        header: header.clone(),
        shutdown: stopping.clone(),
    };
    let lease = lease::LeaseService {
        store: store.clone(),
        header: header.clone(),
        shutdown: stopping.clone(),
    };
    let expiry = tokio::spawn({
        let store = store.clone();
        async move {
            let mut tick = tokio::time::interval(LEASE_EXPIRY_TICK);
            loop {
                tick.tick().await;
                store.expire_leases().await;
            }
        }
    });
    let kv = kv::KvService {
        store: store.clone(),
        header: header.clone(),
    };
    let maintenance = maintenance::MaintenanceService {
        store: store.clone(),
        header: header.clone(),
        version: config.emulated_etcd_version.clone(),
    };
    let cluster = cluster::ClusterService {
        store: store.clone(),
        header,
        name: config.name.clone(),
        client_urls: config.advertise_client_urls.clone(),
        peer_urls: vec!["http://localhost:2380".into()],
    };
    let ready = Arc::new(AtomicBool::new(true));
    let monitor = monitor.map(|listener| {
        let m = monitor::Monitor {
            store: store.clone(),
            hub: watch.hub.clone(),
            ready: ready.clone(),
            started: std::time::SystemTime::now(),
        };
        tokio::spawn(monitor::serve(listener, m, std::future::pending()))
    });
    let kv = KvServer::new(kv)
        .max_decoding_message_size(MAX_RECV_BYTES)
        .max_encoding_message_size(usize::MAX);
    let maintenance = MaintenanceServer::new(maintenance).max_decoding_message_size(MAX_RECV_BYTES);
    let cluster = ClusterServer::new(cluster).max_decoding_message_size(MAX_RECV_BYTES);
    let watch = WatchServer::new(watch).max_decoding_message_size(MAX_RECV_BYTES);
    let lease = LeaseServer::new(lease).max_decoding_message_size(MAX_RECV_BYTES);
    // One router per listener (TLS is a property of the builder), over
    // the same services.
    let router = |builder: tonic::transport::Server| {
        builder
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .layer(observe::ObserveLayer::new(config.slow_request_threshold))
            .add_service(kv.clone())
            .add_service(maintenance.clone())
            .add_service(cluster.clone())
            .add_service(watch.clone())
            .add_service(lease.clone())
    };
    let tcp = match listeners.tcp {
        Some(listener) => {
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = &config.tls {
                builder = builder.tls_config(tls.server_config(config.handshake_timeout))?;
            }
            // Builder-level TCP options do not apply to an incoming stream we
            // hand over: set them on the listener's own stream (no Nagle delay).
            let served = router(builder).serve_with_incoming_shutdown(
                transport::incoming(listener, config.handshake_timeout),
                stopping.clone().wait(),
            );
            Some(served)
        }
        None => None,
    };
    let unix = listeners.unix.map(|listener| {
        router(tonic::transport::Server::builder()).serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stopping.clone().wait(),
        )
    });
    let servers = async move {
        let tcp = async move {
            match tcp {
                Some(served) => served.await,
                None => Ok(()),
            }
        };
        let unix = async move {
            match unix {
                Some(served) => served.await,
                None => Ok(()),
            }
        };
        tokio::try_join!(tcp, unix).map(|_| ())
    };
    let begin_shutdown = async move {
        shutdown.await;
        ready.store(false, Ordering::Release);
        stop_streams.fire();
    };
    let served = async move {
        tokio::pin!(servers);
        tokio::select! {
            served = &mut servers => served,
            _ = begin_shutdown => servers.await,
        }
    };
    // A client that keeps its half of a stream open would hold graceful
    // shutdown forever: give in-flight work a grace period, then stop.
    let served = tokio::select! {
        served = served => served,
        _ = async { grace_over.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("clients still connected after the shutdown grace period; stopping anyway");
            Ok(())
        }
    };
    expiry.abort();
    if let Some(monitor) = monitor {
        monitor.abort();
    }
    served
}
