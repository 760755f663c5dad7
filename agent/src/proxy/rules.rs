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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// Services (`ns/name`) that lost a map key to another Service port,
    /// with what they lost: their elements for it are left out.
    pub conflicts: BTreeMap<String, BTreeSet<String>>,
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
///
/// nft rejects a whole transaction whose element list names one key twice,
/// so every `ip . proto . port` (and `proto . port`) key gets exactly one
/// owner (see [`claim_order`]); the others' elements for it are left out
/// and reported in [`Ruleset::conflicts`].
pub fn generate(
    ports: &[ServicePort],
    endpoints: &BTreeMap<String, Vec<Endpoint>>,
    params: &Params,
) -> Ruleset {
    let mut node_ips = params.node_ips.clone();
    node_ips.sort();
    node_ips.dedup();
    let mut rs = Ruleset {
        node_ips,
        ..Ruleset::default()
    };
    let age = claim_order(ports);
    let mut elements: Vec<(usize, Element)> = Vec::new();
    for (i, sp) in ports.iter().enumerate() {
        let eps = endpoints.get(&sp.id()).map(Vec::as_slice).unwrap_or(&[]);
        let mut own = Vec::new();
        service_port(&mut rs, &mut own, sp, &categorize(sp, eps), params);
        elements.extend(own.into_iter().map(|e| (i, e)));
    }
    // The strongest claim per key: ClusterIPs before external and
    // LoadBalancer IPs, then the older Service.
    let claim = |i: usize, e: &Element| (e.external, age[i]);
    let mut owner: HashMap<(bool, &str), (bool, usize, usize)> = HashMap::new();
    for (i, e) in &elements {
        let (ext, rank) = claim(*i, e);
        owner
            .entry((e.map.is_nodeport(), e.key.as_str()))
            .and_modify(|o| {
                if (ext, rank) < (o.0, o.1) {
                    *o = (ext, rank, *i);
                }
            })
            .or_insert((ext, rank, *i));
    }
    let mut seen: HashSet<(Map, &str)> = HashSet::new();
    for (i, e) in &elements {
        let (ext, rank, winner) = owner[&(e.map.is_nodeport(), e.key.as_str())];
        if claim(*i, e) != (ext, rank) {
            // A Service's external IP equal to its own ClusterIP is no
            // clash worth a warning: the ClusterIP's element serves it.
            if winner != *i {
                let (sp, w) = (&ports[*i], &ports[winner]);
                rs.conflicts
                    .entry(format!("{}/{}", sp.namespace, sp.service))
                    .or_default()
                    .insert(format!(
                        "{} taken by {}/{} port {}",
                        e.key, w.namespace, w.service, w.port
                    ));
            }
            continue;
        }
        // One owner may name a key twice (an IP both external and
        // LoadBalancer): the verdicts are the same, keep the first.
        if !seen.insert((e.map, e.key.as_str())) {
            continue;
        }
        let list = match e.map {
            Map::ServiceIps => &mut rs.service_ips,
            Map::ServiceNodeports => &mut rs.service_nodeports,
            Map::NoEndpointServices => &mut rs.no_endpoint_services,
            Map::NoEndpointNodeports => &mut rs.no_endpoint_nodeports,
        };
        list.push((e.key.clone(), e.verdict.clone()));
    }
    rs
}

/// Each port's rank among clashing claims, lower winning: older Services
/// first (by `creationTimestamp`, absent last), then by namespace and
/// name, then the port's place in the Service (kube-proxy keeps no such
/// order; this one makes the winner stable across syncs and nodes).
fn claim_order(ports: &[ServicePort]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ports.len()).collect();
    // Stable: a Service's ports keep their order.
    order.sort_by(|a, b| {
        let key = |sp: &ServicePort| {
            (
                sp.created.is_none(),
                sp.created.clone(),
                sp.namespace.clone(),
                sp.service.clone(),
            )
        };
        key(&ports[*a]).cmp(&key(&ports[*b]))
    });
    let mut rank = vec![0; ports.len()];
    for (r, i) in order.into_iter().enumerate() {
        rank[i] = r;
    }
    rank
}

/// The verdict maps. The two Service-address maps share one key space
/// (`ip . proto . port`), as do the two NodePort maps: a key's owner is
/// chosen once per space, so the filter chain's reject never shadows
/// another Service's working element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Map {
    ServiceIps,
    NoEndpointServices,
    ServiceNodeports,
    NoEndpointNodeports,
}

impl Map {
    fn is_nodeport(self) -> bool {
        matches!(self, Map::ServiceNodeports | Map::NoEndpointNodeports)
    }
}

/// One map element a Service port asks for.
#[derive(Debug)]
struct Element {
    map: Map,
    key: String,
    verdict: String,
    /// From an external or LoadBalancer IP: a ClusterIP's claim is stronger.
    external: bool,
}

/// kube-proxy's `syncProxyRules` body for one Service port.
fn service_port(
    rs: &mut Ruleset,
    elements: &mut Vec<Element>,
    sp: &ServicePort,
    c: &Categorized,
    params: &Params,
) {
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

    let key = |ip: Ipv4Addr| format!("{ip} . {proto} . {}", sp.port);
    let mut add = |map, key: String, verdict: String, external| {
        elements.push(Element {
            map,
            key,
            verdict,
            external,
        })
    };
    if has_internal {
        add(
            Map::ServiceIps,
            key(sp.cluster_ip),
            format!("goto {internal_chain}"),
            false,
        );
    } else {
        add(
            Map::NoEndpointServices,
            key(sp.cluster_ip),
            internal_filter.into(),
            false,
        );
    }
    for ip in sp.external_ips.iter().chain(&sp.load_balancer_ips) {
        if c.has_any {
            add(
                Map::ServiceIps,
                key(*ip),
                format!("goto {external_chain}"),
                true,
            );
        }
        if !has_external {
            add(
                Map::NoEndpointServices,
                key(*ip),
                external_filter.into(),
                true,
            );
        }
    }
    if sp.node_port != 0 {
        let k = format!("{proto} . {}", sp.node_port);
        if c.has_any {
            add(
                Map::ServiceNodeports,
                k.clone(),
                format!("goto {external_chain}"),
                false,
            );
        }
        if !has_external {
            add(Map::NoEndpointNodeports, k, external_filter.into(), false);
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
    truncate(format!("affinity-{hash}-{}", clean(&name)))
}

/// `HASH-name`: the hash keeps truncated names unique and makes similar
/// names tell apart at a glance (kube-proxy's `hashAndTruncate`). The hash
/// is of the raw name, so names that [`clean`] makes alike stay apart.
fn hashed(name: &str) -> String {
    truncate(format!("{}-{}", short_hash(name), clean(name)))
}

/// What of an API-given name may reach nft text: characters other than
/// `[a-z0-9-./_]` become `_`, since a quote, brace, `;` or newline would be
/// nft syntax (the API server's validation should already keep them out).
fn clean(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' | '/' | '_' => c,
            _ => '_',
        })
        .collect()
}

/// nft object names are at most 255 bytes (NFT_NAME_MAXLEN 256, with NUL).
fn truncate(mut name: String) -> String {
    const MAX: usize = 255;
    if name.len() > MAX {
        // ASCII only (hashes and [`clean`] names), so any index is a char
        // boundary.
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

    /// Every element of every `add element` line, by map: nft rejects the
    /// transaction if any map or set names one key twice.
    fn assert_unique_keys(text: &str) {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("add element ip k3rs-proxy ") else {
                continue;
            };
            let (map, body) = rest.split_once(" { ").expect("an element list");
            let body = body.strip_suffix(" }").expect("an element list");
            let mut keys = BTreeSet::new();
            for el in body.split(", ") {
                let key = el.split(" : ").next().unwrap();
                assert!(keys.insert(key), "{key} twice in {map}:\n{text}");
            }
        }
    }

    fn svc_at(name: &str, created: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "d", "creationTimestamp": created}, "spec": spec})
    }

    fn lb(name: &str, created: &str, cluster_ip: &str, node_port: u16) -> Value {
        let mut s = svc_at(
            name,
            created,
            json!({"type": "LoadBalancer", "clusterIP": cluster_ip,
                   "ports": [{"port": 80, "nodePort": node_port}]}),
        );
        // ServiceLB gives every LoadBalancer Service the nodes' addresses.
        s["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": "192.168.5.10"}, {"ip": "192.168.5.11"}]}});
        s
    }

    fn backed(service: &str) -> Value {
        slice(
            service,
            json!([{"port": 8080}]),
            &[("10.42.0.2", "n1", true)],
        )
    }

    #[test]
    fn two_load_balancers_on_one_port_keep_the_older() {
        // The newer is listed first: the order of the cache does not matter.
        let services = [
            lb("new", "2024-05-02T00:00:00Z", "10.43.0.6", 30081),
            lb("old", "2024-05-01T00:00:00Z", "10.43.0.5", 30080),
        ];
        let rs = ruleset(&services, &[backed("new"), backed("old")]);
        let t = render(&rs, None, &BTreeSet::new());
        assert_unique_keys(&t);
        let old_ext = format!("external-{}", hashed("d/old/tcp/"));
        has(&t, &format!("192.168.5.10 . tcp . 80 : goto {old_ext}"));
        has(&t, &format!("192.168.5.11 . tcp . 80 : goto {old_ext}"));
        // The newer keeps its ClusterIP and NodePort.
        has(&t, "10.43.0.6 . tcp . 80 : goto service-");
        has(&t, "tcp . 30081 : goto external-");
        assert_eq!(
            rs.conflicts.keys().collect::<Vec<_>>(),
            vec!["d/new"],
            "{rs:?}"
        );
        assert_eq!(rs.conflicts["d/new"].len(), 2, "{rs:?}");

        // Without endpoints the newer one's reject must not shadow the
        // older one's working element either.
        let rs = ruleset(&services, &[backed("old")]);
        let t = render(&rs, None, &BTreeSet::new());
        assert_unique_keys(&t);
        hasnt(&t, "192.168.5.10 . tcp . 80 : goto reject-chain");
        has(&t, "10.43.0.6 . tcp . 80 : goto reject-chain");

        // Equal timestamps: namespace, then name decide.
        let services = [
            lb("b", "2024-05-01T00:00:00Z", "10.43.0.6", 30081),
            lb("a", "2024-05-01T00:00:00Z", "10.43.0.5", 30080),
        ];
        let rs = ruleset(&services, &[backed("a"), backed("b")]);
        assert_unique_keys(&render(&rs, None, &BTreeSet::new()));
        assert!(rs.conflicts.contains_key("d/b") && rs.conflicts.len() == 1);
    }

    #[test]
    fn a_cluster_ip_beats_an_older_external_ip() {
        let services = [
            svc_at(
                "ext",
                "2020-01-01T00:00:00Z",
                json!({"clusterIP": "10.43.0.6", "externalIPs": ["10.43.0.5"], "ports": [{"port": 80}]}),
            ),
            svc_at(
                "web",
                "2024-01-01T00:00:00Z",
                json!({"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}),
            ),
        ];
        for slices in [vec![backed("ext"), backed("web")], vec![backed("ext")]] {
            let rs = ruleset(&services, &slices);
            let t = render(&rs, None, &BTreeSet::new());
            assert_unique_keys(&t);
            hasnt(&t, "10.43.0.5 . tcp . 80 : goto external-");
            assert!(rs.conflicts.contains_key("d/ext"), "{rs:?}");
        }
        // A Service whose external IP is its own ClusterIP clashes with
        // nobody: no warning, one element.
        let own = svc(
            "own",
            json!({"clusterIP": "10.43.0.7", "externalIPs": ["10.43.0.7"], "ports": [{"port": 80}]}),
        );
        let rs = ruleset(&[own], &[backed("own")]);
        assert_unique_keys(&render(&rs, None, &BTreeSet::new()));
        assert!(rs.conflicts.is_empty(), "{rs:?}");
    }

    #[test]
    fn one_service_two_ports_on_one_port() {
        let s = svc(
            "dup",
            json!({"type": "NodePort", "clusterIP": "10.43.0.5", "externalIPs": ["192.0.2.9"],
                   "ports": [{"name": "a", "port": 80, "nodePort": 30080},
                             {"name": "b", "port": 80, "nodePort": 30080}]}),
        );
        let sl = slice(
            "dup",
            json!([{"name": "a", "port": 8080}, {"name": "b", "port": 8081}]),
            &[("10.42.0.2", "n1", true)],
        );
        let rs = ruleset(&[s], &[sl]);
        let t = render(&rs, None, &BTreeSet::new());
        assert_unique_keys(&t);
        // The first port wins.
        has(
            &t,
            &format!(
                "10.43.0.5 . tcp . 80 : goto service-{}",
                hashed("d/dup/tcp/a")
            ),
        );
        assert!(rs.conflicts.contains_key("d/dup"), "{rs:?}");
        // An IP both external and LoadBalancer is one element.
        let mut s = svc(
            "both",
            json!({"type": "LoadBalancer", "clusterIP": "10.43.0.6", "externalIPs": ["192.168.5.10"],
                   "ports": [{"port": 80, "nodePort": 30081}]}),
        );
        s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.168.5.10"}]}});
        let rs = ruleset(&[s], &[]);
        assert_unique_keys(&render(&rs, None, &BTreeSet::new()));
        assert!(rs.conflicts.is_empty(), "{rs:?}");
    }

    #[test]
    fn api_names_cannot_inject_nft_syntax() {
        let evil = "x\"; }\nflush ruleset\n{ 'a' ;";
        let mut s = svc(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.43.0.5", "sessionAffinity": "ClientIP",
                   "ports": [{"name": evil, "port": 80, "nodePort": 30080}]}),
        );
        s["metadata"]["namespace"] = json!("N S{;}");
        let mut sl = slice(
            "web",
            json!([{"name": evil, "port": 8080}]),
            &[("10.42.0.2", "n1", true)],
        );
        sl["metadata"]["namespace"] = json!("N S{;}");
        let rs = ruleset(&[s], &[sl]);
        assert!(!rs.chains.is_empty() && !rs.affinity_sets.is_empty());
        let ok = |n: &str| {
            n.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b.is_ascii_uppercase() // the hash's base32
                    || b"-./_".contains(&b)
            })
        };
        for name in rs.chains.keys().chain(rs.affinity_sets.keys()) {
            assert!(ok(name), "{name:?}");
        }
        let t = render(&rs, None, &BTreeSet::new());
        hasnt(&t, "flush ruleset");
        hasnt(&t, "\"");
        hasnt(&t, "'");
        for line in t.lines() {
            assert!(
                ["add ", "flush ", "delete "]
                    .iter()
                    .any(|p| line.starts_with(p)),
                "{line:?}"
            );
        }
        // Non-ASCII is replaced, not cut mid-character.
        let long = format!("{}é", "n".repeat(250));
        assert!(hashed(&long).is_ascii());
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
