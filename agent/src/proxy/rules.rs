//! The nftables ruleset for the Services (pure: no I/O), laid out as
//! kube-proxy's nftables mode does.
//!
//! Base chains hook prerouting and output (`nat`, DNAT), postrouting
//! (`nat`, masquerade) and input, forward and output (`filter`, before DNAT,
//! for rejects). Dispatch is by verdict maps keyed on
//! `daddr . l4proto . dport` (ClusterIPs, external and LoadBalancer IPs) and
//! `l4proto . dport` on the node's addresses (NodePorts):
//!
//! ```text
//! nat-prerouting/nat-output → services → @service-ips / @service-nodeports
//!   → service-HASH-ns/svc/tcp/http   (cluster-wide endpoints)
//!   | local-HASH-…                   (this node's, for a Local policy)
//!   | external-HASH-…                (NodePort/LB/external IP: masquerade or
//!                                     short-circuit, then a policy chain)
//!   → numgen random mod N vmap { 0 : goto endpoint-HASH-…__10.42.1.5/8080, … }
//!   → endpoint-…: hairpin mark, affinity update, dnat
//! filter-{input,forward,output} → endpoints-check → @no-endpoint-services /
//!   @no-endpoint-nodeports → reject-chain (reject) or drop
//! nat-postrouting → masquerading: packets marked 0x4000 are masqueraded
//! ```
//!
//! A sync is one `nft -f` transaction of `add`/`flush` commands: every chain
//! and map is emptied and refilled, so the result never depends on what was
//! there, yet the affinity sets (client → endpoint memory) survive, as they
//! do in kube-proxy. Chains no longer wanted are flushed, then deleted by a
//! later sync (see [`render`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::model::{Categorized, Endpoint, ServicePort, categorize};

/// The one table k3rs owns; nothing else is ever touched.
pub const TABLE: &str = "k3rs-proxy";

/// kube-proxy's masquerade bit (`--masquerade-bit=14`).
pub const MASQ_MARK: &str = "0x00004000";

/// An IPv4 prefix such as the cluster CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 CIDR (want A.B.C.D/N)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{p:?} is not a prefix length 0-32"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The node-specific inputs of the ruleset.
#[derive(Debug, Clone)]
pub struct Params {
    /// The addresses NodePorts answer on; empty: every local address
    /// except loopback (`fib daddr type local`).
    pub node_ips: Vec<Ipv4Addr>,
    /// Pod addresses: service traffic from elsewhere is masqueraded.
    pub cluster_cidr: Ipv4Cidr,
}

/// The per-Service part of the ruleset; [`render`] adds the fixed chains.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Service and endpoint chains by name, with their rules in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Affinity sets by name, with their timeout in seconds.
    pub affinity_sets: BTreeMap<String, u32>,
    /// `ip . proto . port` → verdict.
    pub service_ips: Vec<(String, String)>,
    /// `proto . port` → verdict.
    pub service_nodeports: Vec<(String, String)>,
    pub no_endpoint_services: Vec<(String, String)>,
    pub no_endpoint_nodeports: Vec<(String, String)>,
    pub node_ips: Vec<Ipv4Addr>,
}

/// What an earlier transaction left in the table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Service and endpoint chains, including flushed stale ones.
    pub chains: BTreeSet<String>,
    pub affinity_sets: BTreeSet<String>,
}

/// Builds the rules for `ports` and their endpoints (by
/// [`ServicePort::id`]).
pub fn generate(
    ports: &[ServicePort],
    endpoints: &BTreeMap<String, Vec<Endpoint>>,
    params: &Params,
) -> Ruleset {
    let mut rs = Ruleset {
        node_ips: params.node_ips.clone(),
        ..Ruleset::default()
    };
    for sp in ports {
        let eps = endpoints.get(&sp.id()).map(Vec::as_slice).unwrap_or(&[]);
        service_port(&mut rs, sp, &categorize(sp, eps), params);
    }
    rs
}

/// kube-proxy's `syncProxyRules` body for one Service port.
fn service_port(rs: &mut Ruleset, sp: &ServicePort, c: &Categorized, params: &Params) {
    let id = sp.id();
    let proto = sp.protocol.as_str();
    let cluster_chain = format!("service-{}", hashed(&id));
    let local_chain = format!("local-{}", hashed(&id));
    let external_chain = format!("external-{}", hashed(&id));
    let uses_cluster_chain = !c.cluster.is_empty() && sp.uses_cluster_endpoints();
    let uses_local_chain = !c.local.is_empty() && sp.uses_local_endpoints();

    let (internal_chain, has_internal) = if sp.internal_policy_local {
        (&local_chain, c.has_any && !c.local.is_empty())
    } else {
        (&cluster_chain, c.has_any)
    };
    let (external_policy_chain, has_external) = if sp.external_policy_local {
        (&local_chain, c.has_any && !c.local.is_empty())
    } else {
        (&cluster_chain, c.has_any)
    };
    let uses_external_chain = c.has_any && sp.externally_accessible();
    // No endpoints anywhere: reject. Endpoints elsewhere only, under a
    // Local policy: drop (the client may retry on a node that has some).
    let (internal_filter, external_filter) = if c.has_any {
        ("drop", "drop")
    } else {
        ("goto reject-chain", "goto reject-chain")
    };

    let key = |ip: Ipv4Addr, port: u16| format!("{ip} . {proto} . {port}");
    if has_internal {
        rs.service_ips.push((
            key(sp.cluster_ip, sp.port),
            format!("goto {internal_chain}"),
        ));
    } else {
        rs.no_endpoint_services
            .push((key(sp.cluster_ip, sp.port), internal_filter.into()));
    }
    for ip in sp.external_ips.iter().chain(&sp.load_balancer_ips) {
        if c.has_any {
            rs.service_ips
                .push((key(*ip, sp.port), format!("goto {external_chain}")));
        }
        if !has_external {
            rs.no_endpoint_services
                .push((key(*ip, sp.port), external_filter.into()));
        }
    }
    if sp.node_port != 0 {
        let k = format!("{proto} . {}", sp.node_port);
        if c.has_any {
            rs.service_nodeports
                .push((k.clone(), format!("goto {external_chain}")));
        }
        if !has_external {
            rs.no_endpoint_nodeports.push((k, external_filter.into()));
        }
    }

    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    let mut internal_rules = Vec::new();
    if has_internal {
        // Off-cluster clients (the node itself, or a host routing the
        // service range here) are masqueraded so replies come back here.
        internal_rules.push(format!(
            "ip daddr {} {proto} dport {} ip saddr != {} jump mark-for-masquerade",
            sp.cluster_ip, sp.port, params.cluster_cidr
        ));
    }
    if uses_external_chain {
        let mut rules = Vec::new();
        if !sp.external_policy_local {
            // The endpoint may be on another node: masquerade.
            rules.push("jump mark-for-masquerade".to_string());
        } else if uses_cluster_chain {
            // Pods and the node itself are not subject to the Local policy
            // (as if they went out to a load balancer and back); the node's
            // own address is local, so its traffic is masqueraded.
            rules.push(format!(
                "ip saddr {} goto {cluster_chain}",
                params.cluster_cidr
            ));
            rules.push("fib saddr type local jump mark-for-masquerade".into());
            rules.push(format!("fib saddr type local goto {cluster_chain}"));
        }
        if has_external {
            rules.push(format!("goto {external_policy_chain}"));
        }
        chains.push((external_chain.clone(), rules));
    }
    if let Some(timeout) = sp.affinity {
        for ep in &c.reachable {
            rs.affinity_sets
                .insert(affinity_set(&id, ep, timeout), timeout);
        }
    }
    if uses_cluster_chain {
        let mut rules = if *internal_chain == cluster_chain {
            std::mem::take(&mut internal_rules)
        } else {
            Vec::new()
        };
        rules.extend(dispatch(sp, &id, &c.cluster));
        chains.push((cluster_chain.clone(), rules));
    }
    if uses_local_chain {
        let mut rules = if *internal_chain == local_chain {
            std::mem::take(&mut internal_rules)
        } else {
            Vec::new()
        };
        rules.extend(dispatch(sp, &id, &c.local));
        chains.push((local_chain.clone(), rules));
    }
    for ep in &c.reachable {
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some(timeout) = sp.affinity {
            rules.push(format!(
                "update @{} {{ ip saddr }}",
                affinity_set(&id, ep, timeout)
            ));
        }
        rules.push(format!("meta l4proto {proto} dnat to {}", ep.addr()));
        chains.push((endpoint_chain(&id, ep), rules));
    }
    rs.chains.extend(chains);
}

/// A policy chain's body: a client remembered by an endpoint's affinity set
/// goes back to it; anyone else gets a random endpoint.
fn dispatch(sp: &ServicePort, id: &str, eps: &[Endpoint]) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(timeout) = sp.affinity {
        for ep in eps {
            rules.push(format!(
                "ip saddr @{} goto {}",
                affinity_set(id, ep, timeout),
                endpoint_chain(id, ep)
            ));
        }
    }
    let mut vmap = String::new();
    for (i, ep) in eps.iter().enumerate() {
        if i > 0 {
            vmap.push_str(", ");
        }
        let _ = write!(vmap, "{i} : goto {}", endpoint_chain(id, ep));
    }
    rules.push(format!("numgen random mod {} vmap {{ {vmap} }}", eps.len()));
    rules
}

fn endpoint_chain(id: &str, ep: &Endpoint) -> String {
    format!(
        "endpoint-{}",
        hashed(&format!("{id}__{}/{}", ep.ip, ep.port))
    )
}

/// The timeout is part of the hashed name: nft cannot change a set's
/// timeout in place, so a new timeout makes a new set.
fn affinity_set(id: &str, ep: &Endpoint, timeout: u32) -> String {
    let name = format!("{id}__{}/{}", ep.ip, ep.port);
    let hash = short_hash(&format!("{name}@{timeout}"));
    truncate(format!("affinity-{hash}-{name}"))
}

/// `HASH-name`: the hash keeps truncated names unique and makes similar
/// names tell apart at a glance (kube-proxy's `hashAndTruncate`).
fn hashed(name: &str) -> String {
    truncate(format!("{}-{name}", short_hash(name)))
}

/// nft object names are at most 255 bytes (NFT_NAME_MAXLEN 256, with NUL).
fn truncate(mut name: String) -> String {
    const MAX: usize = 255;
    if name.len() > MAX {
        // Names are ASCII (DNS labels, digits, dots, slashes).
        name.truncate(MAX - 3);
        name.push_str("...");
    }
    name
}

/// The first 40 bits of SHA-256 in base32: eight characters A-Z2-7.
fn short_hash(name: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let bits = digest.as_ref()[..5]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    (0..8)
        .map(|i| ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// The base chains: name, type, hook, priority. Filter chains run before
/// DNAT so they see the Service address; reject is only valid in filter
/// chains on input, forward and output.
const BASE_CHAINS: &[(&str, &str, &str, i32)] = &[
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Regular chains every ruleset has.
const FIXED_CHAINS: &[&str] = &[
    "endpoints-check",
    "services",
    "masquerading",
    "mark-for-masquerade",
    "reject-chain",
];

/// The `nft -f` text of one sync.
///
/// `installed: None` means the table's contents are unknown (first sync,
/// or the last one failed): the transaction then starts by deleting the
/// table (after creating it, so the delete cannot fail). Otherwise
/// installed chains no longer in `rs` are flushed, and those in
/// `delete_chains` (flushed by an earlier sync, so nothing jumps to them)
/// deleted: older kernels refuse to delete a chain in the transaction that
/// removes the last map element naming it. Stale affinity sets are deleted
/// at once (only rules, flushed first, refer to them).
///
/// Chains in `unchanged` (the caller knows they hold exactly these rules
/// already) are left alone: a sync after one endpoint changed rewrites
/// only its Service's chains and the maps.
pub fn render(
    rs: &Ruleset,
    installed: Option<&Installed>,
    delete_chains: &BTreeSet<String>,
) -> String {
    render_partial(rs, installed, delete_chains, &BTreeSet::new())
}

/// [`render`], leaving the chains in `unchanged` as they are.
pub fn render_partial(
    rs: &Ruleset,
    installed: Option<&Installed>,
    delete_chains: &BTreeSet<String>,
    unchanged: &BTreeSet<&str>,
) -> String {
    let unchanged = if installed.is_some() {
        unchanged
    } else {
        &BTreeSet::new()
    };
    let t = format!("ip {TABLE}");
    let mut out = String::with_capacity(256 + rs.chains.len() * 200);
    let mut line = |s: std::fmt::Arguments| {
        let _ = out.write_fmt(s);
        out.push('\n');
    };
    line(format_args!("add table {t}"));
    if installed.is_none() {
        line(format_args!("delete table {t}"));
        line(format_args!("add table {t}"));
    }
    for (name, kind, hook, prio) in BASE_CHAINS {
        line(format_args!(
            "add chain {t} {name} {{ type {kind} hook {hook} priority {prio}; policy accept; }}"
        ));
        line(format_args!("flush chain {t} {name}"));
    }
    let written = || {
        rs.chains
            .iter()
            .filter(|(name, _)| !unchanged.contains(name.as_str()))
    };
    for name in FIXED_CHAINS
        .iter()
        .copied()
        .chain(written().map(|(n, _)| n.as_str()))
    {
        line(format_args!("add chain {t} {name}"));
        line(format_args!("flush chain {t} {name}"));
    }
    let stale: Vec<&String> = installed
        .map(|i| {
            i.chains
                .iter()
                .filter(|c| !rs.chains.contains_key(*c))
                .collect()
        })
        .unwrap_or_default();
    for name in &stale {
        line(format_args!("flush chain {t} {name}"));
    }
    let maps = [
        (
            "service-ips",
            "ipv4_addr . inet_proto . inet_service",
            &rs.service_ips,
        ),
        (
            "service-nodeports",
            "inet_proto . inet_service",
            &rs.service_nodeports,
        ),
        (
            "no-endpoint-services",
            "ipv4_addr . inet_proto . inet_service",
            &rs.no_endpoint_services,
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service",
            &rs.no_endpoint_nodeports,
        ),
    ];
    for (name, key, _) in &maps {
        line(format_args!(
            "add map {t} {name} {{ type {key} : verdict; }}"
        ));
        line(format_args!("flush map {t} {name}"));
    }
    line(format_args!(
        "add set {t} nodeport-ips {{ type ipv4_addr; }}"
    ));
    line(format_args!("flush set {t} nodeport-ips"));
    for name in installed
        .into_iter()
        .flat_map(|i| &i.affinity_sets)
        .filter(|s| !rs.affinity_sets.contains_key(*s))
    {
        line(format_args!("delete set {t} {name}"));
    }
    for name in stale.iter().filter(|c| delete_chains.contains(**c)) {
        line(format_args!("delete chain {t} {name}"));
    }
    for (name, timeout) in &rs.affinity_sets {
        line(format_args!(
            "add set {t} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
        ));
    }

    // The fixed rules.
    for hook in ["input", "forward", "output"] {
        line(format_args!(
            "add rule {t} filter-{hook} ct state new jump endpoints-check"
        ));
    }
    line(format_args!("add rule {t} nat-prerouting jump services"));
    line(format_args!("add rule {t} nat-output jump services"));
    line(format_args!(
        "add rule {t} nat-postrouting jump masquerading"
    ));
    line(format_args!(
        "add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}"
    ));
    line(format_args!(
        "add rule {t} masquerading mark and {MASQ_MARK} == 0 return"
    ));
    line(format_args!(
        "add rule {t} masquerading mark set mark xor {MASQ_MARK}"
    ));
    line(format_args!(
        "add rule {t} masquerading masquerade fully-random"
    ));
    line(format_args!("add rule {t} reject-chain reject"));
    let node_addr = if rs.node_ips.is_empty() {
        "fib daddr type local ip daddr != 127.0.0.0/8".to_string()
    } else {
        "ip daddr @nodeport-ips".to_string()
    };
    line(format_args!(
        "add rule {t} endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    ));
    line(format_args!(
        "add rule {t} endpoints-check {node_addr} meta l4proto . th dport vmap @no-endpoint-nodeports"
    ));
    line(format_args!(
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
    ));
    line(format_args!(
        "add rule {t} services {node_addr} meta l4proto . th dport vmap @service-nodeports"
    ));

    // The Services.
    for (name, rules) in written() {
        for rule in rules {
            line(format_args!("add rule {t} {name} {rule}"));
        }
    }
    if !rs.node_ips.is_empty() {
        let ips: Vec<String> = rs.node_ips.iter().map(Ipv4Addr::to_string).collect();
        line(format_args!(
            "add element {t} nodeport-ips {{ {} }}",
            ips.join(", ")
        ));
    }
    for (name, _, elements) in &maps {
        // One command per map: nft parses one long element list much
        // faster than thousands of commands.
        if elements.is_empty() {
            continue;
        }
        let body: Vec<String> = elements.iter().map(|(k, v)| format!("{k} : {v}")).collect();
        line(format_args!(
            "add element {t} {name} {{ {} }}",
            body.join(", ")
        ));
    }
    out
}

/// The table after a successful [`render`] of `rs`.
pub fn installed_after(
    rs: &Ruleset,
    before: Option<&Installed>,
    deleted: &BTreeSet<String>,
) -> Installed {
    let mut chains: BTreeSet<String> = rs.chains.keys().cloned().collect();
    if let Some(b) = before {
        chains.extend(b.chains.iter().filter(|c| !deleted.contains(*c)).cloned());
    }
    Installed {
        chains,
        affinity_sets: rs.affinity_sets.keys().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{endpoints, service_ports};
    use serde_json::{Value, json};

    fn params() -> Params {
        Params {
            node_ips: vec!["192.168.5.10".parse().unwrap()],
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        }
    }

    fn ruleset(services: &[Value], slices: &[Value]) -> Ruleset {
        let ports = service_ports(services, Some("10.43.0.10".parse().unwrap()));
        generate(&ports, &endpoints(slices, "n1"), &params())
    }

    /// The `nft -f` text of a first sync.
    fn text(services: &[Value], slices: &[Value]) -> String {
        render(&ruleset(services, slices), None, &BTreeSet::new())
    }

    fn svc(name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "d"}, "spec": spec})
    }

    /// A slice of `(ip, node, ready)` endpoints for `ports`.
    fn slice(service: &str, ports: Value, eps: &[(&str, &str, bool)]) -> Value {
        let eps: Vec<Value> = eps
            .iter()
            .map(|(ip, node, ready)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}))
            .collect();
        json!({"metadata": {"name": format!("{service}-x"), "namespace": "d",
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4", "ports": ports, "endpoints": eps})
    }

    fn has(text: &str, needle: &str) {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    fn hasnt(text: &str, needle: &str) {
        assert!(!text.contains(needle), "{needle:?} in:\n{text}");
    }

    fn web() -> Value {
        svc(
            "web",
            json!({"clusterIP": "10.43.0.5", "ports": [{"port": 80, "targetPort": 8080}]}),
        )
    }

    #[test]
    fn plain_service() {
        let t = text(
            &[web()],
            &[slice(
                "web",
                json!([{"port": 8080}]),
                &[("10.42.0.2", "n1", true), ("10.42.1.2", "n2", true)],
            )],
        );
        let chain = format!("service-{}", hashed("d/web/tcp/"));
        has(
            &t,
            &format!(
                "add element ip k3rs-proxy service-ips {{ 10.43.0.5 . tcp . 80 : goto {chain} }}"
            ),
        );
        has(
            &t,
            &format!(
                "add rule ip k3rs-proxy {chain} ip daddr 10.43.0.5 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade"
            ),
        );
        let ep1 = endpoint_chain(
            "d/web/tcp/",
            &Endpoint {
                ip: "10.42.0.2".parse().unwrap(),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                local: true,
            },
        );
        assert!(ep1.ends_with("-d/web/tcp/__10.42.0.2/8080"), "{ep1}");
        has(
            &t,
            &format!(
                "add rule ip k3rs-proxy {chain} numgen random mod 2 vmap {{ 0 : goto {ep1}, 1 : goto endpoint-"
            ),
        );
        has(
            &t,
            &format!("add rule ip k3rs-proxy {ep1} ip saddr 10.42.0.2 jump mark-for-masquerade"),
        );
        has(
            &t,
            &format!("add rule ip k3rs-proxy {ep1} meta l4proto tcp dnat to 10.42.0.2:8080"),
        );
        // A ClusterIP-only Service has no NodePort or external chain.
        hasnt(&t, "external-");
        hasnt(&t, "add element ip k3rs-proxy service-nodeports");
        // The fixed layout.
        has(
            &t,
            "add chain ip k3rs-proxy nat-prerouting { type nat hook prerouting priority -100; policy accept; }",
        );
        has(
            &t,
            "add rule ip k3rs-proxy filter-forward ct state new jump endpoints-check",
        );
        has(
            &t,
            "add rule ip k3rs-proxy masquerading masquerade fully-random",
        );
        has(
            &t,
            "add element ip k3rs-proxy nodeport-ips { 192.168.5.10 }",
        );
        // A first sync starts from an empty table.
        assert!(t.starts_with(
            "add table ip k3rs-proxy\ndelete table ip k3rs-proxy\nadd table ip k3rs-proxy\n"
        ));
    }

    #[test]
    fn two_ports_and_a_named_udp_port() {
        let s = svc(
            "dns",
            json!({"clusterIP": "10.43.0.6", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "metrics", "port": 9153}]}),
        );
        let sl = slice(
            "dns",
            json!([
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
            {"name": "metrics", "port": 9153, "protocol": "TCP"}]),
            &[("10.42.0.7", "n2", true)],
        );
        let t = text(&[s], &[sl]);
        has(&t, "10.43.0.6 . udp . 53 : goto service-");
        has(&t, "10.43.0.6 . tcp . 53 : goto service-");
        has(&t, "10.43.0.6 . tcp . 9153 : goto service-");
        has(&t, "meta l4proto udp dnat to 10.42.0.7:5353");
        has(&t, "meta l4proto tcp dnat to 10.42.0.7:5353");
        has(&t, "meta l4proto tcp dnat to 10.42.0.7:9153");
        has(
            &t,
            "ip daddr 10.43.0.6 udp dport 53 ip saddr != 10.42.0.0/16",
        );
        let rs = ruleset(
            &[svc(
                "dns",
                json!({"clusterIP": "10.43.0.6", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
            )],
            &[],
        );
        assert!(rs.chains.is_empty());
    }

    #[test]
    fn no_ready_endpoints_reject() {
        let s = svc(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.43.0.5", "externalIPs": ["192.0.2.9"],
            "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let t = text(
            &[s],
            &[slice(
                "web",
                json!([{"port": 8080}]),
                &[("10.42.0.2", "n1", false)],
            )],
        );
        has(
            &t,
            "add element ip k3rs-proxy no-endpoint-services { 10.43.0.5 . tcp . 80 : goto reject-chain, 192.0.2.9 . tcp . 80 : goto reject-chain }",
        );
        has(
            &t,
            "add element ip k3rs-proxy no-endpoint-nodeports { tcp . 30080 : goto reject-chain }",
        );
        has(&t, "add rule ip k3rs-proxy reject-chain reject");
        has(
            &t,
            "add rule ip k3rs-proxy endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        );
        has(
            &t,
            "add rule ip k3rs-proxy endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        );
        hasnt(&t, "add element ip k3rs-proxy service-ips");
        hasnt(&t, "dnat to");
    }

    #[test]
    fn node_port_cluster_policy_masquerades() {
        let s = svc(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.43.0.5", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let t = text(
            &[s],
            &[slice(
                "web",
                json!([{"port": 8080}]),
                &[("10.42.1.2", "n2", true)],
            )],
        );
        let ext = format!("external-{}", hashed("d/web/tcp/"));
        has(
            &t,
            &format!("add element ip k3rs-proxy service-nodeports {{ tcp . 30080 : goto {ext} }}"),
        );
        has(
            &t,
            &format!(
                "add rule ip k3rs-proxy {ext} jump mark-for-masquerade\nadd rule ip k3rs-proxy {ext} goto service-"
            ),
        );
        // No node addresses given: NodePorts answer on every local one.
        let rs = ruleset(
            &[svc(
                "web",
                json!({"type": "NodePort", "clusterIP": "10.43.0.5", "ports": [{"port": 80, "nodePort": 30080}]}),
            )],
            &[],
        );
        let rs = Ruleset {
            node_ips: vec![],
            ..rs
        };
        let t = render(&rs, None, &BTreeSet::new());
        has(
            &t,
            "add rule ip k3rs-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
        );
        hasnt(&t, "add element ip k3rs-proxy nodeport-ips");
    }

    #[test]
    fn external_traffic_policy_local() {
        let spec = json!({"type": "LoadBalancer", "clusterIP": "10.43.0.5", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80, "nodePort": 30080}]});
        let mut s = svc("web", spec);
        s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.168.5.10"}]}});
        let both = slice(
            "web",
            json!([{"port": 8080}]),
            &[("10.42.0.2", "n1", true), ("10.42.1.2", "n2", true)],
        );
        let t = text(std::slice::from_ref(&s), &[both]);
        let id = "d/web/tcp/";
        let (cluster, local, ext) = (
            format!("service-{}", hashed(id)),
            format!("local-{}", hashed(id)),
            format!("external-{}", hashed(id)),
        );
        has(&t, &format!("192.168.5.10 . tcp . 80 : goto {ext}"));
        has(&t, &format!("10.43.0.5 . tcp . 80 : goto {cluster}"));
        has(
            &t,
            &format!(
                "add rule ip k3rs-proxy {ext} ip saddr 10.42.0.0/16 goto {cluster}\n\
             add rule ip k3rs-proxy {ext} fib saddr type local jump mark-for-masquerade\n\
             add rule ip k3rs-proxy {ext} fib saddr type local goto {cluster}\n\
             add rule ip k3rs-proxy {ext} goto {local}\n"
            ),
        );
        // Outside clients keep their address: the local chain has no
        // masquerade, and only this node's endpoint.
        has(
            &t,
            &format!(
                "add rule ip k3rs-proxy {local} numgen random mod 1 vmap {{ 0 : goto endpoint-"
            ),
        );
        assert!(
            t.lines()
                .filter(|l| l.starts_with(&format!("add rule ip k3rs-proxy {local} ")))
                .count()
                == 1,
            "{t}"
        );
        has(
            &t,
            &format!("add rule ip k3rs-proxy {cluster} numgen random mod 2 vmap"),
        );

        // No endpoint here: outside traffic is dropped, pods still reach
        // the remote one through the short-circuit.
        let remote = slice("web", json!([{"port": 8080}]), &[("10.42.1.2", "n2", true)]);
        let t = text(&[s], &[remote]);
        has(
            &t,
            "add element ip k3rs-proxy no-endpoint-nodeports { tcp . 30080 : drop }",
        );
        has(
            &t,
            "add element ip k3rs-proxy no-endpoint-services { 192.168.5.10 . tcp . 80 : drop }",
        );
        has(&t, &format!("tcp . 30080 : goto {ext}"));
        hasnt(&t, &format!("add rule ip k3rs-proxy {ext} goto {local}"));
        hasnt(&t, &format!("add chain ip k3rs-proxy {local}"));
    }

    #[test]
    fn session_affinity() {
        let s = svc(
            "web",
            json!({"clusterIP": "10.43.0.5", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}, "ports": [{"port": 80}]}),
        );
        let rs = ruleset(
            &[s],
            &[slice(
                "web",
                json!([{"port": 8080}]),
                &[("10.42.0.2", "n1", true), ("10.42.1.2", "n2", true)],
            )],
        );
        assert_eq!(rs.affinity_sets.len(), 2);
        assert!(rs.affinity_sets.values().all(|t| *t == 600));
        let t = render(&rs, None, &BTreeSet::new());
        let set = rs.affinity_sets.keys().next().unwrap();
        has(
            &t,
            &format!(
                "add set ip k3rs-proxy {set} {{ type ipv4_addr; flags dynamic,timeout; timeout 600s; }}"
            ),
        );
        has(&t, &format!("update @{set} {{ ip saddr }}"));
        let cluster = format!("service-{}", hashed("d/web/tcp/"));
        // The remembered endpoint is checked before the random choice.
        let rules: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with(&format!("add rule ip k3rs-proxy {cluster} ")))
            .collect();
        assert_eq!(rules.len(), 4, "{rules:?}");
        assert!(
            rules[1..3]
                .iter()
                .all(|r| r.contains("ip saddr @affinity-")),
            "{rules:?}"
        );
        assert!(
            rules[1..3]
                .iter()
                .any(|r| r.contains(&format!("ip saddr @{set} goto endpoint-"))),
            "{rules:?}"
        );
        assert!(rules[3].contains("numgen random mod 2"), "{rules:?}");
        // The default timeout.
        let s = svc(
            "web",
            json!({"clusterIP": "10.43.0.5", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}),
        );
        let rs = ruleset(
            &[s],
            &[slice(
                "web",
                json!([{"port": 8080}]),
                &[("10.42.0.2", "n1", true)],
            )],
        );
        assert_eq!(
            rs.affinity_sets.values().copied().collect::<Vec<_>>(),
            vec![10800]
        );
    }

    #[test]
    fn skipped_services() {
        let services = [
            svc(
                "kube-dns",
                json!({"clusterIP": "10.43.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
            ),
            svc(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            svc(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}),
            ),
        ];
        let slices = [
            slice(
                "kube-dns",
                json!([{"name": "dns", "port": 53, "protocol": "UDP"}]),
                &[("10.42.0.3", "n1", true)],
            ),
            slice(
                "headless",
                json!([{"port": 80}]),
                &[("10.42.0.4", "n1", true)],
            ),
        ];
        let rs = ruleset(&services, &slices);
        assert!(
            rs.chains.is_empty() && rs.service_ips.is_empty() && rs.no_endpoint_services.is_empty(),
            "{rs:?}"
        );
        let t = render(&rs, None, &BTreeSet::new());
        hasnt(&t, "10.43.0.10");
        hasnt(&t, "10.42.0.4");
    }

    #[test]
    fn later_syncs_keep_affinity_and_retire_stale_chains() {
        let slices = [slice(
            "web",
            json!([{"port": 8080}]),
            &[("10.42.0.2", "n1", true)],
        )];
        let aff = svc(
            "web",
            json!({"clusterIP": "10.43.0.5", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}),
        );
        let before = ruleset(std::slice::from_ref(&aff), &slices);
        let installed = installed_after(&before, None, &BTreeSet::new());
        // The same rules again: no table delete, the affinity set is added
        // (a no-op when it exists) rather than recreated.
        let t = render(&before, Some(&installed), &BTreeSet::new());
        hasnt(&t, "delete");
        assert!(t.starts_with("add table ip k3rs-proxy\nadd chain"), "{t}");
        // The Service goes: its chains are flushed, its set deleted; the
        // chains are deleted by a later sync only.
        let after = ruleset(&[], &slices);
        let t = render(&after, Some(&installed), &BTreeSet::new());
        for c in &installed.chains {
            has(&t, &format!("flush chain ip k3rs-proxy {c}\n"));
            hasnt(&t, &format!("delete chain ip k3rs-proxy {c}\n"));
        }
        for s in &installed.affinity_sets {
            has(&t, &format!("delete set ip k3rs-proxy {s}\n"));
        }
        let next = installed_after(&after, Some(&installed), &BTreeSet::new());
        assert_eq!(next.chains, installed.chains);
        assert!(next.affinity_sets.is_empty());
        let t = render(&after, Some(&next), &next.chains);
        for c in &installed.chains {
            has(&t, &format!("delete chain ip k3rs-proxy {c}\n"));
        }
        assert_eq!(
            installed_after(&after, Some(&next), &next.chains),
            Installed::default()
        );
    }

    #[test]
    fn names_fit_and_hash() {
        assert_eq!(short_hash("x").len(), 8);
        assert_ne!(short_hash("a"), short_hash("b"));
        let long = "n".repeat(300);
        assert!(hashed(&long).len() <= 255);
        assert!(hashed(&long).ends_with("..."));
        assert_eq!(
            "10.42.0.0/16".parse::<Ipv4Cidr>().unwrap().to_string(),
            "10.42.0.0/16"
        );
        assert!("10.42.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.42.0.0".parse::<Ipv4Cidr>().is_err());
    }
}
