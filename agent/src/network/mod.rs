//! The pod network of a node running pods on CRI (flannel's host-gw,
//! without flannel): once the node has its podCIDR from the IPAM
//! controller, the CNI configuration for it (`cni`: a `cni0` bridge,
//! host-local addresses, portmap), forwarding and the masquerade of
//! traffic leaving the cluster (`host`), and a route to every other
//! node's podCIDR through its address, kept in sync (`routes`).

pub mod cni;
pub mod host;
pub mod routes;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apiserver::client::{Client, resource_path};
use apiserver::informer::Informer;
use ipnet::Ipv4Net;

use crate::cri::setup::CniDirs;

/// The cluster's network settings an agent needs.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Every pod's address is in it (K3s's 10.42.0.0/16); traffic
    /// leaving it is masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// The cluster DNS, pods' nameserver (10.43.0.10).
    pub cluster_dns: Ipv4Addr,
    /// `cluster.local`.
    pub cluster_domain: String,
    /// Whether the agent sets up the pod network (CNI, routes, NAT) when
    /// it runs pods on its own containerd; off: bring your own CNI.
    pub pod_network: bool,
    /// Whether the agent runs the service proxy (kube-proxy's job); off
    /// with K3s's `--disable-kube-proxy`.
    pub service_proxy: bool,
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 42, 0, 0), 16).expect("a valid prefix"),
            cluster_dns: Ipv4Addr::new(10, 43, 0, 10),
            cluster_domain: "cluster.local".into(),
            pod_network: true,
            service_proxy: true,
        }
    }
}

/// How often the wait for the podCIDR says it is still waiting.
const WAIT_LOG: Duration = Duration::from_secs(15);
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Waits for the node's podCIDR, sets the node up for it and starts
/// keeping the routes to the other nodes (and the NAT table, which a
/// firewall reload removes); pods can start once it returns. `nft` is the
/// binary the service proxy uses too.
pub async fn start(
    client: &Client,
    node: &str,
    node_ip: IpAddr,
    config: &NetworkConfig,
    cni_dirs: &CniDirs,
    nft: Option<PathBuf>,
) -> Result<Ipv4Net> {
    let pod_cidr = wait_for_pod_cidr(client, node).await;
    if !config.cluster_cidr.contains(&pod_cidr) {
        bail!(
            "the node's pod CIDR {pod_cidr} is outside the agent's --cluster-cidr {}: give the agent the server's --cluster-cidr",
            config.cluster_cidr
        );
    }
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(connection);
    host::check_overlap(&handle, pod_cidr, config.cluster_cidr).await?;
    host::enable_forwarding()?;
    let nat = host::Nat::new(nft, config.cluster_cidr)?;
    nat.install()?;
    tracing::info!(table = host::NAT_TABLE, cluster_cidr = %config.cluster_cidr, "masquerading pod traffic that leaves the cluster");
    host::warn_forward_drop(&nat.nft, config.cluster_cidr);
    let portmap = crate::cri::containerd::on_path("iptables");
    if !portmap {
        tracing::warn!(
            "iptables is not on PATH: hostPort does not work (the portmap plugin needs it)"
        );
    }
    let conf = cni::conflist(pod_cidr, &cni_dirs.state_dir.join("ipam"), portmap);
    cni::write(&cni_dirs.conf_dir, &conf)?;
    tracing::info!(
        pod_cidr = %pod_cidr,
        gateway = %cni::gateway(pod_cidr),
        bridge = cni::BRIDGE,
        conf_dir = %cni_dirs.conf_dir.display(),
        "wrote the pod network's CNI configuration"
    );
    let nodes = Informer::start(client.clone(), "/api/v1/nodes", "");
    let my_ip = match node_ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    };
    tokio::spawn(routes::run(handle, nodes, node.to_string(), my_ip, nat));
    Ok(pod_cidr)
}

/// The node's `spec.podCIDR`, once the IPAM controller has set it.
async fn wait_for_pod_cidr(client: &Client, node: &str) -> Ipv4Net {
    let path = resource_path("v1", "nodes", None, Some(node));
    let started = tokio::time::Instant::now();
    let mut next_log = started;
    loop {
        match client.get(&path).await {
            Ok(n) => {
                if let Some(cidr) = apiserver::controllers::node_ipam::node_cidr(&n) {
                    tracing::info!(node, pod_cidr = %cidr, "the node has its pod CIDR");
                    return cidr;
                }
                let set = n.pointer("/spec/podCIDR").and_then(|v| v.as_str());
                if let Some(bad) = set.filter(|s| !s.is_empty()) {
                    tracing::error!(
                        node,
                        pod_cidr = bad,
                        "the node's podCIDR is not an IPv4 CIDR; waiting for it to be fixed"
                    );
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the node failed"),
        }
        if tokio::time::Instant::now() >= next_log {
            tracing::info!(
                node,
                waited_s = started.elapsed().as_secs(),
                "waiting for the node's pod CIDR from the server's node IPAM controller before starting pods"
            );
            next_log += WAIT_LOG;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}
