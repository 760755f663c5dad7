//! host-gw: a route to every other node's podCIDR through that node's
//! InternalIP, in the main table, tagged with k3rs's own route protocol
//! so that k3rs only ever removes routes it made. Kept in sync from the
//! Nodes informer; a restarted agent rebuilds them from the API, removing
//! the tagged routes no node wants any more.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use apiserver::informer::Informer;
use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use serde_json::Value;

use super::host::{NAT_TABLE, Nat};

/// The `proto` of k3rs's routes (`ip route` shows `proto 75`): a number
/// iproute2's rt_protos leaves unassigned.
pub const ROUTE_PROTOCOL: u8 = 75;

/// podCIDR → the node address it is reached through.
pub type Desired = BTreeMap<Ipv4Net, Ipv4Addr>;

/// The routes this node wants: one per other node that has a podCIDR and
/// an IPv4 InternalIP. A podCIDR two nodes claim goes to the first by
/// name (the IPAM controller never does that; a hand-set one might).
pub fn desired(nodes: &[Value], me: &str, my_ip: Option<Ipv4Addr>) -> Desired {
    let mut sorted: Vec<&Value> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.pointer("/metadata/name").and_then(Value::as_str));
    let mut routes = Desired::new();
    for node in sorted {
        let name = node.pointer("/metadata/name").and_then(Value::as_str);
        if name == Some(me) {
            continue;
        }
        let Some(cidr) = apiserver::controllers::node_ipam::node_cidr(node) else {
            continue;
        };
        let Some(via) = internal_ip(node) else {
            continue;
        };
        if Some(via) == my_ip {
            continue;
        }
        routes.entry(cidr).or_insert(via);
    }
    routes
}

fn internal_ip(node: &Value) -> Option<Ipv4Addr> {
    node.pointer("/status/addresses")?
        .as_array()?
        .iter()
        .filter(|a| a["type"] == "InternalIP")
        .find_map(|a| a["address"].as_str()?.parse().ok())
}

/// What to change to get from `existing` to `wanted`: routes to delete,
/// routes to add or replace.
pub fn diff(existing: &Desired, wanted: &Desired) -> (Vec<Ipv4Net>, Desired) {
    let stale = existing
        .keys()
        .filter(|cidr| !wanted.contains_key(cidr))
        .copied()
        .collect();
    let missing = wanted
        .iter()
        .filter(|(cidr, via)| existing.get(cidr) != Some(via))
        .map(|(c, v)| (*c, *v))
        .collect();
    (stale, missing)
}

/// k3rs's routes in the main table now.
async fn ours(handle: &Handle) -> Result<Desired> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut dump = handle.route().get(filter).execute();
    let mut found = Desired::new();
    while let Some(route) = dump.try_next().await.context("listing routes")? {
        if route.header.protocol != RouteProtocol::from(ROUTE_PROTOCOL)
            || table(&route) != u32::from(RouteHeader::RT_TABLE_MAIN)
        {
            continue;
        }
        let (mut dst, mut via) = (None, None);
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(*a),
                _ => {}
            }
        }
        let prefix = route.header.destination_prefix_length;
        if let (Some(dst), Some(via)) = (dst, via)
            && let Ok(net) = Ipv4Net::new(dst, prefix)
        {
            found.insert(net, via);
        }
    }
    Ok(found)
}

fn table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn message(cidr: Ipv4Net, via: Option<Ipv4Addr>) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr.network(), cidr.prefix_len())
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .kind(RouteType::Unicast);
    if let Some(via) = via {
        builder = builder.gateway(via);
    }
    builder.build()
}

/// Brings k3rs's routes to `wanted`; a route that cannot be added (its
/// node not on a directly connected network: host-gw needs one L2
/// network) is logged and retried at the next sync. Only k3rs's own
/// routes are replaced: a prefix someone else routes is left alone, with
/// one warning (kept in `taken`) until it is free.
pub async fn sync(handle: &Handle, wanted: &Desired, taken: &mut BTreeSet<Ipv4Net>) -> Result<()> {
    let existing = ours(handle).await?;
    let (stale, missing) = diff(&existing, wanted);
    for cidr in stale {
        let via = existing.get(&cidr).copied();
        match handle.route().del(message(cidr, via)).execute().await {
            Ok(()) => tracing::info!(pod_cidr = %cidr, "removed the route of a node that is gone"),
            Err(e) => tracing::warn!(pod_cidr = %cidr, error = %e, "removing a route failed"),
        }
    }
    taken.retain(|cidr| wanted.contains_key(cidr));
    for (cidr, via) in missing {
        let add = handle.route().add(message(cidr, Some(via)));
        // An exclusive add unless the route there is ours.
        let add = if existing.contains_key(&cidr) {
            add.replace()
        } else {
            add
        };
        match add.execute().await {
            Ok(()) => {
                taken.remove(&cidr);
                tracing::info!(pod_cidr = %cidr, via = %via, "routing a node's pods");
            }
            Err(e) if errno(&e) == Some(EEXIST) => {
                if taken.insert(cidr) {
                    tracing::warn!(
                        pod_cidr = %cidr, via = %via,
                        "another route for this node's pod CIDR exists (not k3rs's): leaving it; \
                         pods of that node are unreachable from here until it is removed"
                    );
                }
            }
            Err(e) => tracing::warn!(
                pod_cidr = %cidr, via = %via, error = %e,
                "adding the route to a node's pods failed: host-gw needs every node on one network"
            ),
        }
    }
    Ok(())
}

const EEXIST: i32 = 17;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Keeps the routes in sync with the Nodes, and k3rs's NAT table in
/// place, until the process ends.
pub async fn run(handle: Handle, nodes: Informer, me: String, my_ip: Option<Ipv4Addr>, nat: Nat) {
    nodes.wait_synced().await;
    let mut changes = nodes.changes();
    let mut taken = BTreeSet::new();
    loop {
        let wanted = desired(&nodes.list(), &me, my_ip);
        if let Err(e) = sync(&handle, &wanted, &mut taken).await {
            tracing::warn!(error = %format!("{e:#}"), "syncing the routes to other nodes failed");
        }
        let nat = nat.clone();
        match tokio::task::spawn_blocking(move || nat.repair()).await {
            Ok(Ok(true)) => tracing::warn!(
                table = NAT_TABLE,
                "k3rs's NAT table was gone (a firewall reload?): installed it again"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "reinstalling k3rs's NAT table failed; pods cannot leave the cluster")
            }
            Err(e) => tracing::error!(error = %e, "checking k3rs's NAT table failed"),
        }
        // A periodic pass also repairs routes someone else removed.
        match tokio::time::timeout(RESYNC, changes.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            // The informer is gone: no changes will come, only the
            // periodic pass (without the sleep, a hot loop).
            Ok(Err(_)) => tokio::time::sleep(RESYNC).await,
        }
    }
}

/// How often routes are checked even without a node change.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: &str) -> Value {
        let mut n = json!({"metadata": {"name": name}, "spec": {},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        n
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn every_other_node_with_a_subnet_and_an_address_is_routed() {
        let nodes = vec![
            node("n1", Some("10.42.0.0/24"), "10.0.0.1"),
            node("n2", Some("10.42.1.0/24"), "10.0.0.2"),
            node("n3", None, "10.0.0.3"),
            node("n4", Some("10.42.4.0/24"), "fd00::4"),
            node("n5", Some("10.42.5.0/24"), "10.0.0.1"),
            node("n0", Some("10.42.1.0/24"), "10.0.0.9"),
        ];
        let routes = desired(&nodes, "n1", Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            // n0 sorts first and wins the doubly claimed subnet; n5 claims
            // this node's own address.
            vec![(net("10.42.1.0/24"), "10.0.0.9".parse().unwrap())]
        );
    }

    #[test]
    fn the_diff_removes_stale_and_replaces_moved_routes() {
        let existing = Desired::from([
            (net("10.42.1.0/24"), "10.0.0.2".parse().unwrap()),
            (net("10.42.2.0/24"), "10.0.0.3".parse().unwrap()),
            (net("10.42.3.0/24"), "10.0.0.4".parse().unwrap()),
        ]);
        let wanted = Desired::from([
            (net("10.42.1.0/24"), "10.0.0.2".parse().unwrap()),
            (net("10.42.2.0/24"), "10.0.0.7".parse().unwrap()),
            (net("10.42.5.0/24"), "10.0.0.5".parse().unwrap()),
        ]);
        let (stale, missing) = diff(&existing, &wanted);
        assert_eq!(stale, vec![net("10.42.3.0/24")]);
        assert_eq!(
            missing.into_iter().collect::<Vec<_>>(),
            vec![
                (net("10.42.2.0/24"), "10.0.0.7".parse().unwrap()),
                (net("10.42.5.0/24"), "10.0.0.5".parse().unwrap())
            ]
        );
    }
}
