//! The node's side of the pod network: forwarding on, bridged traffic
//! through the IP hooks (so Service rules see pod-to-pod traffic on one
//! bridge), the check that the podCIDR is free on this node, and the
//! masquerade of pod traffic leaving the cluster.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
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
/// node's address; pod to pod, on any node, keeps its source. The forward
/// chain accepts the cluster's traffic for this table only: a drop in
/// another table (Docker's FORWARD policy) still drops it, which
/// `forward_drops` looks for.
pub fn nat_rules(cluster: Ipv4Net) -> String {
    format!(
        "table ip {NAT_TABLE}\n\
         delete table ip {NAT_TABLE}\n\
         table ip {NAT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster} ip daddr != {cluster} ip daddr != 224.0.0.0/4 masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {cluster} accept\n\
         \t\tip daddr {cluster} accept\n\
         \t}}\n\
         }}\n"
    )
}

/// k3rs's NAT table, applied with one resolved `nft`.
#[derive(Debug, Clone)]
pub struct Nat {
    pub nft: PathBuf,
    pub cluster: Ipv4Net,
}

impl Nat {
    /// The table for `cluster`, with the `nft` found on PATH.
    pub fn new(nft: Option<PathBuf>, cluster: Ipv4Net) -> Result<Nat> {
        let Some(nft) = nft else {
            bail!(
                "nft is not on PATH: install nftables (apt-get install nftables) for the pod network"
            );
        };
        Ok(Nat { nft, cluster })
    }

    /// Replaces the table in one `nft` transaction.
    pub fn install(&self) -> Result<()> {
        crate::proxy::nft::run_script(&self.nft, &nat_rules(self.cluster))
            .context("nft refused the masquerade rules")?;
        Ok(())
    }

    /// Whether the table is there (a firewall reload flushes the whole
    /// ruleset, ours with it).
    pub fn present(&self) -> bool {
        Command::new(&self.nft)
            .args(["list", "table", "ip", NAT_TABLE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Installs the table again if it is gone; returns whether it did.
    pub fn repair(&self) -> Result<bool> {
        if self.present() {
            return Ok(false);
        }
        self.install()?;
        Ok(true)
    }
}

/// The first forward base chain with policy drop in `ruleset` (`nft list
/// ruleset`), outside k3rs's tables, as "table FAMILY NAME chain NAME".
pub fn nft_forward_drop(ruleset: &str) -> Option<String> {
    let (mut table, mut chain) = (String::new(), "");
    for line in ruleset.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, ..] => table = format!("{family} {name}"),
            ["chain", name, ..] => chain = name,
            _ => {}
        }
        if line.starts_with("type filter hook forward")
            && line.contains("policy drop")
            && !table.ends_with(&format!(" {NAT_TABLE}"))
        {
            return Some(format!("table {table} chain {chain}"));
        }
    }
    None
}

/// Whether `iptables -S FORWARD` says the FORWARD policy is DROP.
pub fn iptables_forward_drop(listing: &str) -> bool {
    listing.lines().next().map(str::trim) == Some("-P FORWARD DROP")
}

/// Warns when the host's firewall drops forwarded traffic (Docker sets
/// FORWARD's policy to DROP): br_netfilter sends even traffic between pods
/// of one bridge through it, and no accept of ours overrides that drop.
pub fn warn_forward_drop(nft: &std::path::Path, cluster: Ipv4Net) {
    let run = |program: &std::path::Path, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let mut found = run(nft, &["list", "ruleset"])
        .as_deref()
        .and_then(nft_forward_drop);
    if found.is_none()
        && let Some(iptables) = crate::cri::containerd::find_on_path("iptables")
        && run(&iptables, &["-S", "FORWARD"]).is_some_and(|l| iptables_forward_drop(&l))
    {
        found = Some("iptables chain FORWARD".to_string());
    }
    if let Some(chain) = found {
        tracing::warn!(
            firewall = %chain,
            cluster_cidr = %cluster,
            "the host's firewall drops forwarded traffic (policy drop), pods' traffic with it; \
             accept the cluster's traffic there as flannel does: \
             iptables -I FORWARD -s {cluster} -j ACCEPT && iptables -I FORWARD -d {cluster} -j ACCEPT"
        );
    }
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
        assert!(
            rules.contains("\t\tip saddr 10.42.0.0/16 accept\n\t\tip daddr 10.42.0.0/16 accept\n")
        );
    }

    #[test]
    fn a_forward_drop_policy_outside_k3rs_is_found() {
        let docker = "table ip k3rs-nat {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n\
            table ip filter {\n\tchain DOCKER {\n\t}\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter jump DOCKER-USER\n\t}\n}\n";
        assert_eq!(
            nft_forward_drop(docker).as_deref(),
            Some("table ip filter chain FORWARD")
        );
        let open = "table inet fw {\n\tchain fwd {\n\t\ttype filter hook forward priority filter; policy accept;\n\t}\n}\n";
        assert_eq!(nft_forward_drop(open), None);
        assert!(iptables_forward_drop(
            "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"
        ));
        assert!(!iptables_forward_drop("-P FORWARD ACCEPT\n"));
    }
}
