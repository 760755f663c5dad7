//! The node's side of the pod network: forwarding on, bridged traffic
//! through the IP hooks (so Service rules see pod-to-pod traffic on one
//! bridge), the check that the podCIDR is free on this node, and the
//! masquerade of pod traffic leaving the cluster.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::Handle;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};

use super::cni::BRIDGE;
use super::routes::ROUTE_PROTOCOL;

/// k3rs's NAT table: its own, apart from the Service proxy's.
pub const NAT_TABLE: &str = "k3rs-nat";

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Turns on forwarding and, where the kernel has it, bridged traffic
/// through the IP hooks, in this network namespace.
pub fn enable_forwarding() -> Result<()> {
    set_sysctl(IP_FORWARD)?;
    if !Path::new(BRIDGE_NF).exists() && crate::cri::containerd::on_path("modprobe") {
        let loaded = Command::new("modprobe")
            .arg("br_netfilter")
            .stderr(Stdio::null())
            .status();
        tracing::info!(
            ok = loaded.is_ok_and(|s| s.success()),
            "loading br_netfilter"
        );
    }
    if Path::new(BRIDGE_NF).exists() {
        set_sysctl(BRIDGE_NF)?;
    } else {
        tracing::warn!(
            "br_netfilter is not available: Service addresses may not work between pods of one node"
        );
    }
    Ok(())
}

fn set_sysctl(path: &str) -> Result<()> {
    let now = std::fs::read_to_string(path).unwrap_or_default();
    if now.trim() == "1" {
        return Ok(());
    }
    std::fs::write(path, "1").with_context(|| format!("cannot set {path} to 1"))?;
    tracing::info!(
        sysctl = path.trim_start_matches("/proc/sys/"),
        "set to 1 for the pod network"
    );
    Ok(())
}

/// A network this node already reaches, and what says so.
#[derive(Debug, Clone)]
pub struct HostNetwork {
    pub net: Ipv4Net,
    pub what: String,
}

/// The first of `networks` overlapping `pod_cidr`.
pub fn overlap(pod_cidr: Ipv4Net, networks: &[HostNetwork]) -> Option<&HostNetwork> {
    networks.iter().find(|n| {
        n.net.prefix_len() > 0
            && (n.net.contains(&pod_cidr.network()) || pod_cidr.contains(&n.net.network()))
    })
}

/// Every IPv4 address and main-table route of this namespace, except
/// those of the pods' bridge, k3rs's own routes and the default route.
pub async fn networks(handle: &Handle) -> Result<Vec<HostNetwork>> {
    let mut names = std::collections::HashMap::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.context("listing links")? {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        names.insert(link.header.index, name.unwrap_or_default());
    }
    let link_name = |index: u32| names.get(&index).cloned().unwrap_or_default();
    let mut found = Vec::new();
    let mut addresses = handle.address().get().execute();
    while let Some(address) = addresses.try_next().await.context("listing addresses")? {
        let link = link_name(address.header.index);
        if link == BRIDGE {
            continue;
        }
        let ip = address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        if let Some(ip) = ip
            && let Ok(net) = Ipv4Net::new(ip, address.header.prefix_len)
        {
            found.push(HostNetwork {
                net: net.trunc(),
                what: format!("address {ip}/{} on {link}", address.header.prefix_len),
            });
        }
    }
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(route) = routes.try_next().await.context("listing routes")? {
        if route.header.protocol == RouteProtocol::from(ROUTE_PROTOCOL)
            || route.header.table != rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
        {
            continue;
        }
        let (mut dst, mut oif) = (None, None);
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let link = oif.map(link_name).unwrap_or_default();
        if link == BRIDGE {
            continue;
        }
        if let Some(dst) = dst
            && let Ok(net) = Ipv4Net::new(dst, route.header.destination_prefix_length)
        {
            found.push(HostNetwork {
                net,
                what: format!("route {net} on {link}"),
            });
        }
    }
    Ok(found)
}

/// Refuses a podCIDR this node already reaches another way: its pods
/// would shadow (or be shadowed by) that network.
pub async fn check_overlap(handle: &Handle, pod_cidr: Ipv4Net, cluster: Ipv4Net) -> Result<()> {
    let networks = networks(handle).await?;
    if let Some(n) = overlap(pod_cidr, &networks) {
        bail!(
            "the node's pod CIDR {pod_cidr} overlaps this host's network ({}): pods could not be told from it; \
             start the server with a --cluster-cidr clear of the hosts' networks",
            n.what
        );
    }
    if let Some(n) = overlap(cluster, &networks) {
        tracing::warn!(cluster_cidr = %cluster, host = %n.what,
            "the cluster CIDR overlaps a network of this host: pods of other nodes in it may be unreachable");
    }
    Ok(())
}

/// The masquerade rules: pod traffic leaving the cluster CIDR takes the
/// node's address; pod to pod, on any node, keeps its source.
pub fn nat_rules(cluster: Ipv4Net) -> String {
    format!(
        "table ip {NAT_TABLE}\n\
         delete table ip {NAT_TABLE}\n\
         table ip {NAT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster} ip daddr != {cluster} ip daddr != 224.0.0.0/4 masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Replaces k3rs's NAT table in one `nft` transaction.
pub fn install_nat(cluster: Ipv4Net) -> Result<()> {
    if !crate::cri::containerd::on_path("nft") {
        bail!(
            "nft is not on PATH: install nftables (apt-get install nftables) for the pod network"
        );
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(nat_rules(cluster).as_bytes())
        .context("writing to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft refused the masquerade rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tracing::info!(table = NAT_TABLE, cluster_cidr = %cluster, "masquerading pod traffic that leaves the cluster");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(net: &str) -> HostNetwork {
        HostNetwork {
            net: net.parse().unwrap(),
            what: net.into(),
        }
    }

    #[test]
    fn overlaps_are_found_either_way_but_not_the_default_route() {
        let pods: Ipv4Net = "10.42.1.0/24".parse().unwrap();
        let nets = [
            host("0.0.0.0/0"),
            host("192.168.1.0/24"),
            host("10.42.0.0/16"),
        ];
        assert_eq!(overlap(pods, &nets).unwrap().what, "10.42.0.0/16");
        assert_eq!(
            overlap(pods, &[host("10.42.1.7/32")]).unwrap().what,
            "10.42.1.7/32"
        );
        assert!(overlap(pods, &[host("0.0.0.0/0"), host("10.42.2.0/24")]).is_none());
    }

    #[test]
    fn only_traffic_leaving_the_cluster_is_masqueraded() {
        let rules = nat_rules("10.42.0.0/16".parse().unwrap());
        assert!(rules.starts_with("table ip k3rs-nat\ndelete table ip k3rs-nat\n"));
        assert!(rules.contains(
            "ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 ip daddr != 224.0.0.0/4 masquerade"
        ));
        assert!(rules.contains("type nat hook postrouting priority srcnat;"));
    }
}
