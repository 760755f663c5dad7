//! Services and EndpointSlices as the proxy sees them (kube-proxy's
//! `ServicePort` and endpoint-slice cache): one entry per Service port with
//! its IPv4 addresses and traffic policies, and the endpoints that back it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::Value;

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// A transport protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API's spelling (`TCP`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' and iptables' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of one Service, with everything the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub service: String,
    /// The Service's `metadata.creationTimestamp` (RFC 3339, UTC, whole
    /// seconds, so text order is time order); `None` when absent. Older
    /// Services win clashing map keys.
    pub created: Option<String>,
    /// The port's name, empty for a Service's single unnamed port.
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// 0 when the Service has no NodePort.
    pub node_port: u16,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `Some(timeout seconds)` for `sessionAffinity: ClientIP`.
    pub affinity: Option<u32>,
    /// `externalTrafficPolicy: Local` on an externally reachable Service.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
}

impl ServicePort {
    /// `ns/svc/proto/port`: unique per port, and what chain names carry.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.service,
            self.protocol.as_str(),
            self.port_name
        )
    }

    /// Reachable from outside through a NodePort, LoadBalancer IP or
    /// external IP (kube's `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_ips.is_empty() || !self.external_ips.is_empty()
    }

    /// Some traffic uses the cluster-wide endpoints.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || (self.externally_accessible() && !self.external_policy_local)
    }

    /// Some traffic uses only this node's endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.externally_accessible() && self.external_policy_local)
    }
}

/// One backend address of one Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` is the proxy's node).
    pub local: bool,
}

impl Endpoint {
    /// `ip:port`, what `dnat to` takes.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// The Services' ports, skipping what kube-proxy skips: ExternalName and
/// headless Services (no ClusterIP), Services with no IPv4 ClusterIP, and
/// the Service at `skip_ip` (the cluster DNS, answered on the node itself).
pub fn service_ports(services: &[Value], skip_ip: Option<Ipv4Addr>) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for svc in services {
        let spec = &svc["spec"];
        if spec["type"].as_str() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = cluster_ipv4(spec) else {
            continue;
        };
        if Some(cluster_ip) == skip_ip {
            continue;
        }
        let namespace = svc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let Some(name) = svc.pointer("/metadata/name").and_then(Value::as_str) else {
            continue;
        };
        let created = svc
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .map(str::to_string);
        let external_ips = ipv4s(spec["externalIPs"].as_array().into_iter().flatten());
        let load_balancer_ips = ipv4s(
            svc.pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|i| &i["ip"]),
        );
        let affinity = (spec["sessionAffinity"].as_str() == Some("ClientIP")).then(|| {
            spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(Value::as_u64)
                .filter(|t| *t > 0)
                .map_or(DEFAULT_AFFINITY_SECONDS, |t| t.min(86400) as u32)
        });
        let node_port_type = matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"));
        for p in spec["ports"].as_array().into_iter().flatten() {
            let protocol = match p["protocol"].as_str() {
                None => Protocol::Tcp,
                Some(s) => match Protocol::parse(s) {
                    Some(p) => p,
                    None => continue,
                },
            };
            let Some(port) = p["port"].as_u64().and_then(|v| u16::try_from(v).ok()) else {
                continue;
            };
            let node_port = if node_port_type {
                p["nodePort"]
                    .as_u64()
                    .and_then(|v| u16::try_from(v).ok())
                    .unwrap_or(0)
            } else {
                0
            };
            let mut sp = ServicePort {
                namespace: namespace.to_string(),
                service: name.to_string(),
                created: created.clone(),
                port_name: p["name"].as_str().unwrap_or_default().to_string(),
                protocol,
                cluster_ip,
                port,
                node_port,
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                affinity,
                external_policy_local: false,
                internal_policy_local: spec["internalTrafficPolicy"].as_str() == Some("Local"),
            };
            sp.external_policy_local = sp.externally_accessible()
                && spec["externalTrafficPolicy"].as_str() == Some("Local");
            out.push(sp);
        }
    }
    out
}

/// The IPv4 ClusterIP: the first IPv4 of `clusterIPs`, else `clusterIP`;
/// `None` for headless (`None`) and unallocated Services.
fn cluster_ipv4(spec: &Value) -> Option<Ipv4Addr> {
    let listed = spec["clusterIPs"].as_array().into_iter().flatten();
    listed
        .chain(std::iter::once(&spec["clusterIP"]))
        .filter_map(Value::as_str)
        .find_map(|s| s.parse::<Ipv4Addr>().ok())
}

fn ipv4s<'a>(values: impl Iterator<Item = &'a Value>) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = values
        .filter_map(Value::as_str)
        .filter_map(|s| s.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The endpoints of every Service port, keyed by [`ServicePort::id`]:
/// every IPv4 EndpointSlice labelled `kubernetes.io/service-name`, its first
/// address per endpoint (as kube-proxy), the slice port whose name and
/// protocol match. Sorted and de-duplicated by address.
pub fn endpoints(slices: &[Value], node_name: &str) -> BTreeMap<String, Vec<Endpoint>> {
    let mut by_port: BTreeMap<String, BTreeSet<Endpoint>> = BTreeMap::new();
    for slice in slices {
        if slice["addressType"].as_str() != Some("IPv4") {
            continue;
        }
        let Some(service) = slice
            .pointer("/metadata/labels/kubernetes.io~1service-name")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let namespace = slice
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        for p in slice["ports"].as_array().into_iter().flatten() {
            let Some(port) = p["port"].as_u64().and_then(|v| u16::try_from(v).ok()) else {
                continue;
            };
            let Some(protocol) = Protocol::parse(p["protocol"].as_str().unwrap_or("TCP")) else {
                continue;
            };
            let id = format!(
                "{namespace}/{service}/{}/{}",
                protocol.as_str(),
                p["name"].as_str().unwrap_or_default()
            );
            let set = by_port.entry(id).or_default();
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                let Some(ip) = ep["addresses"]
                    .get(0)
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                let c = &ep["conditions"];
                // kube: a missing ready or serving condition means true,
                // a missing terminating condition false.
                let ready = c["ready"].as_bool().unwrap_or(true);
                set.insert(Endpoint {
                    ip,
                    port,
                    ready,
                    serving: c["serving"].as_bool().unwrap_or(ready),
                    terminating: c["terminating"].as_bool().unwrap_or(false),
                    local: ep["nodeName"].as_str() == Some(node_name),
                });
            }
        }
    }
    by_port
        .into_iter()
        .map(|(id, set)| {
            // Two slices may list one address with different conditions:
            // keep one entry per address, the ready one if any.
            let mut list: Vec<Endpoint> = Vec::with_capacity(set.len());
            for ep in set {
                match list.last_mut() {
                    Some(last) if last.ip == ep.ip && last.port == ep.port => {
                        if ep.ready && !last.ready {
                            *last = ep;
                        }
                    }
                    _ => list.push(ep),
                }
            }
            (id, list)
        })
        .collect()
}

/// Which endpoints serve a port (kube's `CategorizeEndpoints`, without
/// topology hints): ready ones, else serving-and-terminating ones, chosen
/// separately for the cluster-wide and the node-local lists.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    pub cluster: Vec<Endpoint>,
    pub local: Vec<Endpoint>,
    /// Union of both: the endpoints that get a chain on this node.
    pub reachable: Vec<Endpoint>,
    /// The Service has usable endpoints somewhere in the cluster.
    pub has_any: bool,
}

pub fn categorize(sp: &ServicePort, eps: &[Endpoint]) -> Categorized {
    let mut c = Categorized::default();
    let usable = |pick: &dyn Fn(&Endpoint) -> bool| -> Vec<Endpoint> {
        let ready: Vec<Endpoint> = eps.iter().filter(|e| pick(e) && e.ready).cloned().collect();
        if !ready.is_empty() {
            return ready;
        }
        eps.iter()
            .filter(|e| pick(e) && e.serving && e.terminating)
            .cloned()
            .collect()
    };
    if sp.uses_cluster_endpoints() {
        c.cluster = usable(&|_| true);
        c.has_any = !c.cluster.is_empty();
    }
    if sp.uses_local_endpoints() {
        c.has_any |= eps.iter().any(|e| e.ready || (e.serving && e.terminating));
        c.local = usable(&|e| e.local);
    }
    let mut all: Vec<Endpoint> = c.cluster.iter().chain(&c.local).cloned().collect();
    all.sort();
    all.dedup();
    c.reachable = all;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 80,
            ready,
            serving,
            terminating,
            local,
        }
    }

    #[test]
    fn skips_headless_external_name_and_dns() {
        let svcs = vec![
            json!({"metadata": {"name": "h", "namespace": "d"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            json!({"metadata": {"name": "e", "namespace": "d"}, "spec": {"type": "ExternalName", "externalName": "x.org", "ports": [{"port": 80}]}}),
            json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"}, "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}}),
        ];
        let ports = service_ports(&svcs, Some("10.43.0.10".parse().unwrap()));
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].id(), "d/web/tcp/");
    }

    #[test]
    fn slices_conditions_default_and_merge() {
        let slices = vec![
            json!({"metadata": {"name": "a", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [{"addresses": ["10.42.0.2"], "nodeName": "n1"},
                                 {"addresses": ["10.42.1.2"], "conditions": {"ready": false, "serving": true, "terminating": true}}]}),
            json!({"metadata": {"name": "b", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv6", "ports": [{"name": "http", "port": 8080}],
                   "endpoints": [{"addresses": ["fd00::1"]}]}),
        ];
        let eps = endpoints(&slices, "n1");
        let list = &eps["d/web/tcp/http"];
        assert_eq!(list.len(), 2);
        assert!(list[0].ready && list[0].serving && !list[0].terminating && list[0].local);
        assert!(!list[1].ready && list[1].terminating && !list[1].local);
    }

    #[test]
    fn falls_back_to_serving_terminating() {
        let svc = &service_ports(
            &[
                json!({"metadata": {"name": "w", "namespace": "d"}, "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}}),
            ],
            None,
        )[0];
        let eps = vec![
            ep("10.42.0.2", false, true, true, false),
            ep("10.42.0.3", false, false, true, false),
        ];
        let c = categorize(svc, &eps);
        assert_eq!(c.cluster, vec![eps[0].clone()]);
        assert!(c.has_any);
        let eps = vec![ep("10.42.0.3", false, false, false, false)];
        assert!(!categorize(svc, &eps).has_any);
    }
}
