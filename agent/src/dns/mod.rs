//! The cluster DNS, embedded in the agent in place of a CoreDNS pod.
//!
//! Every node answers its own pods at the cluster DNS IP (10.43.0.10),
//! which `link` puts on a dummy link of the node's network namespace.
//! `records` answers the cluster zone (`cluster.local`) from a snapshot of
//! Services, EndpointSlices and Namespaces that informers keep current
//! (rebuilt on every change, so no query calls the API); `handler` is that
//! zone as a hickory-server `RequestHandler`; `forward` sends every other
//! name to the node's resolvers; `server` runs the UDP and TCP loops and
//! bounds them.

pub mod clients;
pub mod forward;
pub mod handler;
pub mod link;
pub mod records;
pub mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use apiserver::informer::Informer;
use ipnet::Ipv4Net;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use clients::Clients;
use forward::Forwarder;
use handler::ClusterHandler;
use records::{Snapshot, Zone};
pub use server::Stats;

/// How the cluster DNS runs.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The cluster DNS IP (K3s: 10.43.0.10), which pods get as nameserver.
    pub listen_ip: IpAddr,
    /// 53.
    pub port: u16,
    /// `cluster.local`.
    pub cluster_domain: String,
    /// Where other names go; `None`: the nameservers of /etc/resolv.conf.
    pub upstreams: Option<Vec<SocketAddr>>,
    /// Whether to put `listen_ip` on the dummy link `k3rs-dns` first (it
    /// must be on some link of the node to be bound).
    pub create_link: bool,
    /// The pods' addresses: they (and the node itself) may have other
    /// names forwarded; anyone else is refused.
    pub cluster_cidr: Ipv4Net,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen_ip: IpAddr::from([10, 43, 0, 10]),
            port: 53,
            cluster_domain: "cluster.local".to_string(),
            upstreams: None,
            create_link: true,
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 42, 0, 0), 16).expect("a valid prefix"),
        }
    }
}

/// A running server: its address and counters; dropping it stops it.
pub struct Running {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub stats: Arc<Stats>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits until the server's loops end (they only end when aborted).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Serves the cluster zone of `zone` from `snapshots`, forwarding other
/// names with `forwarder` for `clients`, on sockets already bound.
pub fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: Zone,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    forwarder: Forwarder,
    clients: Arc<Clients>,
) -> Result<Running> {
    let udp_addr = udp.local_addr()?;
    let tcp_addr = tcp.local_addr()?;
    let stats = Arc::new(Stats::default());
    let cx = Arc::new(server::Context {
        handler: ClusterHandler::new(zone, snapshots, forwarder),
        stats: stats.clone(),
        clients,
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(server::serve_udp(Arc::new(udp), cx.clone()));
    tasks.spawn(server::serve_tcp(tcp, cx, server::MAX_TCP_CONNECTIONS));
    Ok(Running {
        udp: udp_addr,
        tcp: tcp_addr,
        stats,
        tasks,
    })
}

/// Binds UDP and TCP on `addr` (port 0: the same free port for both).
pub async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    let udp = UdpSocket::bind(addr)
        .await
        .with_context(|| format!("cannot bind the cluster DNS to udp {addr}"))?;
    let addr = SocketAddr::new(addr.ip(), udp.local_addr()?.port());
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the cluster DNS to tcp {addr}"))?;
    Ok((udp, tcp))
}

/// Runs the cluster DNS until the process ends: the link, the sockets,
/// the informers and the server. Errors when it cannot listen.
pub async fn run(client: apiserver::client::Client, config: DnsConfig) -> Result<()> {
    if config.create_link {
        link::ensure(link::LINK_NAME, config.listen_ip)
            .await
            .with_context(|| {
                format!(
                    "cannot put the cluster DNS IP {} on link {}",
                    config.listen_ip,
                    link::LINK_NAME
                )
            })?;
    }
    let addr = SocketAddr::new(config.listen_ip, config.port);
    let (udp, tcp) = bind(addr).await?;
    let upstreams = match config.upstreams {
        Some(u) => u,
        None => forward::system_upstreams(&[config.listen_ip]).unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "no upstream resolvers");
            Vec::new()
        }),
    };
    tracing::info!(%addr, domain = %config.cluster_domain, ?upstreams, "cluster DNS listening");
    let zone = Zone::new(&config.cluster_domain, vec![config.listen_ip])?;
    let forwarder = Forwarder::new(upstreams, forward::MAX_IN_FLIGHT, forward::TIMEOUT);
    let local = clients::local_addresses().await.unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "cannot list the node's addresses");
        Vec::new()
    });
    let clients = Arc::new(Clients::new(config.cluster_cidr, local));
    let refresh = tokio::spawn(refresh_local(clients.clone()));
    let snapshots = watch_snapshots(client).await;
    serve(udp, tcp, zone, snapshots, forwarder, clients)?
        .wait()
        .await;
    refresh.abort();
    Ok(())
}

/// Keeps `clients`' idea of the node's own addresses current.
async fn refresh_local(clients: Arc<Clients>) {
    loop {
        tokio::time::sleep(clients::REFRESH).await;
        match clients::local_addresses().await {
            Ok(local) => clients.set_local(local),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot list the node's addresses")
            }
        }
    }
}

/// Starts the informers, waits for their first lists (answering before
/// them would give NXDOMAIN for Services that exist, which clients cache),
/// and keeps a snapshot current: rebuilt after every change.
pub async fn watch_snapshots(client: apiserver::client::Client) -> watch::Receiver<Arc<Snapshot>> {
    let services = Informer::start(client.clone(), "/api/v1/services", "");
    let slices = Informer::start(
        client.clone(),
        "/apis/discovery.k8s.io/v1/endpointslices",
        "",
    );
    let namespaces = Informer::start(client, "/api/v1/namespaces", "");
    services.wait_synced().await;
    slices.wait_synced().await;
    namespaces.wait_synced().await;
    let mut changes = [services.changes(), slices.changes(), namespaces.changes()];
    let build = move || {
        Arc::new(Snapshot::build(
            &services.list(),
            &slices.list(),
            &namespaces.list(),
        ))
    };
    let (tx, rx) = watch::channel(build());
    tokio::spawn(async move {
        loop {
            let [a, b, c] = &mut changes;
            let changed = tokio::select! {
                r = a.changed() => r,
                r = b.changed() => r,
                r = c.changed() => r,
            };
            if changed.is_err() {
                return;
            }
            // Coalesce a burst (a rollout touches many slices) into one
            // rebuild.
            tokio::time::sleep(REBUILD_DELAY).await;
            for c in changes.iter_mut() {
                c.mark_unchanged();
            }
            let snapshot = build();
            if tx.send(snapshot).is_err() {
                return;
            }
        }
    });
    rx
}

/// How long a change waits for the ones right behind it before the
/// snapshot is rebuilt: short against the 5 s TTL.
const REBUILD_DELAY: std::time::Duration = std::time::Duration::from_millis(20);
