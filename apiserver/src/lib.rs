//! k3rs's thin Kubernetes API server: the REST API kubectl and client
//! libraries use, over any etcd v3 endpoint (k3rs's own datastore or real
//! etcd), with kube-apiserver's storage layout.
//!
//! - `resources`: the served resources and their etcd prefixes.
//! - `store`: objects in etcd (JSON, compare-and-swap writes).
//! - `handlers`: routing and the verbs; `list` and `watch`.
//! - `objects`: what the server fills in and validates; `patch`: merge,
//!   JSON and strategic merge patch; `selectors`: label and field selectors.
//! - `discovery`: `/version`, `/api`, `/apis`, OpenAPI v3.
//! - `pki`: certificates, token and admin kubeconfig; `status`: errors;
//!   `protobuf`: request bodies in Kubernetes' protobuf encoding.

pub mod allocate;
pub mod apply;
pub mod client;
pub mod controllers;
pub mod discovery;
pub mod handlers;
pub mod identity;
pub mod informer;
pub mod join;
mod limits;
pub mod list;
pub mod node_proxy;
pub mod objects;
pub mod openapi_v2;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod resources;
pub mod scheduler;
pub mod selectors;
pub mod status;
pub mod store;
pub mod upgrade;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest request body (kube-apiserver's limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;
/// A new connection's TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this, and an idle keep-alive
/// connection's next request too (kube-apiserver's `ReadHeaderTimeout`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(32);
/// A request's body must arrive within this (kube-apiserver's request
/// timeout, `--request-timeout`'s default).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Open connections one client address may hold; past it new ones are
/// closed at once, so one client cannot take every socket.
const MAX_CONNECTIONS_PER_CLIENT: usize = 256;

/// How to run the API server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where HTTPS listens (K3s: 0.0.0.0:6443).
    pub listen: SocketAddr,
    /// `DATA_DIR/server`: certificates, token and kubeconfig live here.
    pub server_dir: PathBuf,
    /// The etcd v3 endpoint objects are stored through, `http://HOST:PORT`.
    pub etcd_endpoint: String,
    /// The scheduler's and controllers' settings; `None`: they do not run.
    pub controllers: Option<controllers::Config>,
    /// The ClusterIP of Service kube-system/kube-dns (K3s: 10.43.0.10).
    pub cluster_dns: std::net::Ipv4Addr,
}

/// What `start` made: where the kubeconfig is, and the server task.
pub struct Running {
    pub kubeconfig: PathBuf,
    /// The cluster token agents join with.
    pub token: String,
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

fn tls_config(pki: &pki::Pki) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    // Clients without a certificate may still connect and use a bearer
    // token; requests with neither are refused per request (401).
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let chain = CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Makes the PKI and kubeconfig, waits for the datastore, creates the
/// bootstrap objects and starts serving until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut hosts = vec![hostname];
    if !config.listen.ip().is_unspecified() {
        hosts.push(config.listen.ip().to_string());
    }
    let pki = pki::ensure(&config.server_dir.join("tls"), &hosts)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the Kubernetes API", config.listen))?;
    let local_addr = listener.local_addr()?;
    let kubeconfig = config.server_dir.join("cred").join("admin.kubeconfig");
    let host = if local_addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        local_addr.ip().to_string()
    };
    pki::write_kubeconfig(
        &kubeconfig,
        &format!("https://{host}:{}", local_addr.port()),
        &pki,
    )?;

    let store = store::Store::connect(&config.etcd_endpoint)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let advertise = SocketAddr::new(advertise_ip(local_addr.ip()), local_addr.port());
        match handlers::bootstrap(&store, advertise, config.cluster_dns).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline && e.code == 503 => {
                tracing::warn!(error = %e.message, "waiting for the datastore");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!("cannot create the bootstrap objects: {}", e.message),
        }
    }
    let api = Arc::new(handlers::Api {
        store,
        tokens: vec![pki.token.clone()],
        ca_pem: pki.ca_pem.clone(),
        tls_dir: config.server_dir.join("tls"),
        node_ca_pem: pki::ensure_node_ca(&config.server_dir.join("tls"))?,
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&pki)?));
    if let Some(c) = config.controllers {
        controllers::start(
            client::Client::in_process(api.clone()),
            api.store.clone(),
            c,
        );
    }
    let task = tokio::spawn(serve(listener, acceptor, api, shutdown));
    Ok(Running {
        token: pki.token.clone(),
        kubeconfig,
        local_addr,
        task,
    })
}

/// The address the `kubernetes` Service's endpoints name: the listening
/// address, or for a wildcard listener the one outbound traffic would
/// leave from (a UDP `connect` sends nothing), as the agent picks its own.
fn advertise_ip(listen: std::net::IpAddr) -> std::net::IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => std::net::IpAddr::from([127, 0, 0, 1]),
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    api: Arc<handlers::Api>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let connections = limits::Connections::new(MAX_CONNECTIONS_PER_CLIENT);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Kubernetes API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = connections.admit(peer.ip()) else {
            tracing::debug!(%peer, "refusing a connection: too many from this client");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, api) = (acceptor.clone(), api.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let conn = handlers::ConnAuth {
                certificate_user: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| identity::from_certificate(c))
                    .map(Arc::new),
            };
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (api, conn) = (api.clone(), conn.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
                        let body = http_body_util::Limited::new(body, MAX_BODY).collect();
                        let Ok(body) = tokio::time::timeout(BODY_READ_TIMEOUT, body).await else {
                            return Ok(axum::response::IntoResponse::into_response(
                                status::ApiError::timeout(),
                            ));
                        };
                        let response = match body {
                            Ok(b) => {
                                handlers::handle(
                                    api,
                                    conn,
                                    parts.method,
                                    parts.uri,
                                    parts.headers,
                                    b.to_bytes(),
                                    upgrade,
                                )
                                .await
                            }
                            Err(_) => axum::response::IntoResponse::into_response(
                                status::ApiError::too_large(format!(
                                    "Request entity too large: limit is {MAX_BODY}"
                                )),
                            ),
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}
