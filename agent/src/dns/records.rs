//! The cluster zone's records: an immutable `Snapshot` of Services,
//! EndpointSlices and Namespaces, and `lookup`, a pure function from a
//! question to an answer, with CoreDNS's kubernetes plugin's semantics
//! (`pods insecure`, TTL 5 s, `fallthrough in-addr.arpa ip6.arpa`).
//!
//! Names in the zone (`cluster.local`):
//! - `SVC.NS.svc`: a ClusterIP Service's IPs; a headless Service's ready
//!   endpoints; an ExternalName Service's CNAME.
//! - `_PORT._PROTO.SVC.NS.svc`: the same, limited to that named port
//!   (SRV answers carry the port).
//! - `ENDPOINT.SVC.NS.svc`: one endpoint, by its hostname or its dashed IP.
//! - `A-B-C-D.NS.pod` (or an IPv6 address with dashes): that address.
//! - `NS.svc`, `NS.pod`, `svc`, `pod`, the apex: names that exist without
//!   records of their own (NOERROR, no answer) when the namespace exists.
//! - `ns.dns` (the server's own address) and `dns-version` (TXT "1.1.0").
//!
//! Anything else in the zone is NXDOMAIN with the SOA in authority.
//! Reverse names of Service and endpoint IPs answer PTR; other reverse
//! names are not ours and get forwarded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

/// CoreDNS's default TTL for the kubernetes plugin.
pub const TTL: u32 = 5;

/// The `dns-version` TXT answer: the version of the Kubernetes DNS
/// specification implemented.
const SCHEMA_VERSION: &str = "1.1.0";

/// The label every EndpointSlice of a Service carries.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The zone this server is authoritative for.
#[derive(Debug, Clone)]
pub struct Zone {
    /// `cluster.local.`, lowercase.
    origin: Name,
    /// The server's own addresses, answered for `ns.dns.ZONE`.
    ns_ips: Vec<IpAddr>,
    soa: Record,
}

impl Zone {
    /// A zone named `domain` (`cluster.local`, with or without the final
    /// dot) whose name server answers at `ns_ips`.
    pub fn new(domain: &str, ns_ips: Vec<IpAddr>) -> anyhow::Result<Zone> {
        let mut origin = Name::from_ascii(domain.trim_end_matches('.'))
            .map_err(|e| anyhow::anyhow!("cluster domain {domain:?} is not a DNS name: {e}"))?
            .to_lowercase();
        origin.set_fqdn(true);
        if origin.is_root() {
            anyhow::bail!("the cluster domain must not be the root");
        }
        let join = |prefix: &str| -> anyhow::Result<Name> {
            Ok(Name::from_ascii(prefix)?.append_domain(&origin)?)
        };
        // CoreDNS's SOA: ns.dns.ZONE, hostmaster.ZONE, minimum = TTL.
        let soa = SOA::new(
            join("ns.dns")?,
            join("hostmaster")?,
            1,
            7200,
            1800,
            86400,
            TTL,
        );
        let soa = Record::from_rdata(origin.clone(), TTL, RData::SOA(soa));
        Ok(Zone {
            origin,
            ns_ips,
            soa,
        })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The SOA record, for the authority section of NXDOMAIN and NODATA.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether `name` is answered here rather than forwarded: the zone and
    /// its names, and the reverse names of the snapshot's IPs.
    pub fn is_ours(&self, snapshot: &Snapshot, name: &Name) -> bool {
        self.origin.zone_of(&name.to_lowercase())
            || reverse_ip(name).is_some_and(|ip| snapshot.ptr.contains_key(&ip))
    }

    fn name(&self, labels: &[&str]) -> Option<Name> {
        let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
        name.set_fqdn(false);
        name.append_domain(&self.origin).ok()
    }
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Not in the zone: forward it.
    NotOurs,
    /// NOERROR with these answers and additional records.
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists but has no record of this type: NOERROR, SOA in
    /// authority.
    NoData,
    /// The name does not exist: NXDOMAIN, SOA in authority.
    NxDomain,
    /// An ExternalName Service: this CNAME, whose target is outside the
    /// zone; the server may resolve the target and add its records.
    Cname { cname: Box<Record>, target: Name },
}

/// A Service's port (or an EndpointSlice's).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Port {
    name: String,
    /// Lowercase: `tcp`, `udp`, `sctp`.
    protocol: String,
    port: u16,
}

#[derive(Debug, Clone)]
struct Endpoint {
    ip: IpAddr,
    /// The endpoint's hostname, else its dashed IP (CoreDNS's
    /// `endpointHostname`).
    label: String,
    /// The ports of its slice; empty when the slice has none.
    ports: Vec<Port>,
}

#[derive(Debug, Clone)]
enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(String),
}

#[derive(Debug, Clone)]
struct Service {
    kind: Kind,
    ports: Vec<Port>,
    /// Ready endpoints (a missing `ready` counts as ready, as in CoreDNS).
    endpoints: Vec<Endpoint>,
}

/// Everything lookups need, built once per change of the informers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// By `(namespace, name)`.
    services: HashMap<(String, String), Service>,
    namespaces: HashSet<String>,
    /// Reverse names: labels below the zone (`web.default.svc`), by IP.
    ptr: HashMap<IpAddr, BTreeSet<Vec<String>>>,
}

impl Snapshot {
    /// Builds the snapshot from the API objects as JSON; fields that are
    /// missing or malformed make the object (or that part) count as absent.
    pub fn build(services: &[Value], slices: &[Value], namespaces: &[Value]) -> Snapshot {
        let mut snap = Snapshot {
            namespaces: namespaces
                .iter()
                .filter_map(|n| n.pointer("/metadata/name")?.as_str())
                .map(str::to_string)
                .collect(),
            ..Snapshot::default()
        };
        for svc in services {
            let (Some(ns), Some(name)) = (
                svc.pointer("/metadata/namespace").and_then(Value::as_str),
                svc.pointer("/metadata/name").and_then(Value::as_str),
            ) else {
                continue;
            };
            let spec = &svc["spec"];
            let kind = if spec["type"].as_str() == Some("ExternalName") {
                let Some(target) = spec["externalName"].as_str().filter(|t| !t.is_empty()) else {
                    continue;
                };
                Kind::ExternalName(target.trim_end_matches('.').to_ascii_lowercase())
            } else if spec["clusterIP"].as_str() == Some("None") {
                Kind::Headless
            } else {
                let mut ips: Vec<IpAddr> = spec["clusterIPs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|ip| ip.as_str()?.parse().ok())
                    .collect();
                if ips.is_empty() {
                    ips.extend(
                        spec["clusterIP"]
                            .as_str()
                            .and_then(|ip| ip.parse::<IpAddr>().ok()),
                    );
                }
                Kind::ClusterIp(ips)
            };
            if let Kind::ClusterIp(ips) = &kind {
                for ip in ips {
                    snap.ptr.entry(*ip).or_default().insert(vec![
                        name.to_string(),
                        ns.to_string(),
                        "svc".to_string(),
                    ]);
                }
            }
            snap.services.insert(
                (ns.to_string(), name.to_string()),
                Service {
                    kind,
                    ports: ports(&spec["ports"]),
                    endpoints: Vec::new(),
                },
            );
        }
        for slice in slices {
            let (Some(ns), Some(svc_name)) = (
                slice.pointer("/metadata/namespace").and_then(Value::as_str),
                slice
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .and_then(Value::as_str),
            ) else {
                continue;
            };
            if !matches!(slice["addressType"].as_str(), Some("IPv4" | "IPv6")) {
                continue;
            }
            let Some(svc) = snap
                .services
                .get_mut(&(ns.to_string(), svc_name.to_string()))
            else {
                continue;
            };
            let slice_ports = ports(&slice["ports"]);
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                if ep.pointer("/conditions/ready").and_then(Value::as_bool) == Some(false) {
                    continue;
                }
                let hostname = ep["hostname"].as_str().filter(|h| !h.is_empty());
                for ip in ep["addresses"].as_array().into_iter().flatten() {
                    let Some(ip) = ip.as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                        continue;
                    };
                    let label = match hostname {
                        Some(h) => h.to_ascii_lowercase(),
                        None => dashed(ip),
                    };
                    snap.ptr.entry(ip).or_default().insert(vec![
                        label.clone(),
                        svc_name.to_string(),
                        ns.to_string(),
                        "svc".to_string(),
                    ]);
                    svc.endpoints.push(Endpoint {
                        ip,
                        label,
                        ports: slice_ports.clone(),
                    });
                }
            }
        }
        snap
    }

    /// How many Services the snapshot holds.
    pub fn services(&self) -> usize {
        self.services.len()
    }
}

fn ports(list: &Value) -> Vec<Port> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: p["name"].as_str().unwrap_or_default().to_ascii_lowercase(),
                protocol: p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase(),
                port: u16::try_from(p["port"].as_u64()?).ok()?,
            })
        })
        .collect()
}

/// `10.42.0.5` → `10-42-0-5`; `fd00::1` → `fd00--1`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address a pod name spells, CoreDNS's way: three dashes and no
/// double dash is IPv4, anything else IPv6.
fn undashed(label: &str) -> Option<IpAddr> {
    let text = if label.matches('-').count() == 3 && !label.contains("--") {
        label.replace('-', ".")
    } else {
        label.replace('-', ":")
    };
    text.parse().ok()
}

/// The IP of a full reverse name (`5.0.42.10.in-addr.arpa.`); `None` for
/// partial or non-reverse names.
pub fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    let full = if net.addr().is_ipv4() { 32 } else { 128 };
    (net.prefix_len() == full).then(|| net.addr())
}

/// One matched record source: an address (or CNAME target) and, for SRV,
/// a port and the name the SRV points at.
struct Hit {
    host: Host,
    port: Option<u16>,
    /// Labels below the zone of the SRV target.
    target: Vec<String>,
}

enum Host {
    Ip(IpAddr),
    Cname(String),
}

/// The question `name`/`qtype` answered from `snapshot`.
pub fn lookup(zone: &Zone, snapshot: &Snapshot, name: &Name, qtype: RecordType) -> Lookup {
    let lower = name.to_lowercase();
    if !zone.origin.zone_of(&lower) {
        return reverse(zone, snapshot, name, qtype);
    }
    let below = usize::from(lower.num_labels() - zone.origin.num_labels());
    let Some(segs) = lower
        .iter()
        .take(below)
        .map(|l| std::str::from_utf8(l).ok().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        return Lookup::NxDomain;
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let records = |rdata: Vec<RData>| Lookup::Answer {
        answers: rdata
            .into_iter()
            .map(|r| Record::from_rdata(name.clone(), TTL, r))
            .collect(),
        additionals: Vec::new(),
    };
    match segs.as_slice() {
        [] => match qtype {
            RecordType::SOA => Lookup::Answer {
                answers: vec![zone.soa.clone()],
                additionals: Vec::new(),
            },
            RecordType::NS => {
                let Some(ns) = zone.name(&["ns", "dns"]) else {
                    return Lookup::NoData;
                };
                Lookup::Answer {
                    answers: vec![Record::from_rdata(
                        name.clone(),
                        TTL,
                        RData::NS(NS(ns.clone())),
                    )],
                    additionals: zone
                        .ns_ips
                        .iter()
                        .map(|ip| Record::from_rdata(ns.clone(), TTL, address(*ip)))
                        .collect(),
                }
            }
            _ => Lookup::NoData,
        },
        ["ns", "dns"] => {
            let ips: Vec<RData> = zone
                .ns_ips
                .iter()
                .filter(|ip| address_type(**ip) == qtype)
                .map(|ip| address(*ip))
                .collect();
            if ips.is_empty() {
                Lookup::NoData
            } else {
                records(ips)
            }
        }
        ["dns-version"] => match qtype {
            RecordType::TXT => records(vec![RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()]))]),
            _ => Lookup::NoData,
        },
        ["svc"] | ["pod"] => Lookup::NoData,
        [ns, "svc" | "pod"] => {
            if snapshot.namespaces.contains(*ns) {
                Lookup::NoData
            } else {
                Lookup::NxDomain
            }
        }
        [pod, ns, "pod"] => match undashed(pod) {
            Some(ip) if snapshot.namespaces.contains(*ns) => {
                if address_type(ip) == qtype {
                    records(vec![address(ip)])
                } else {
                    Lookup::NoData
                }
            }
            _ => Lookup::NxDomain,
        },
        [rest @ .., svc, ns, "svc"] if rest.len() <= 2 => {
            let (endpoint, port, protocol) = match rest {
                [] => (None, None, None),
                [ep] => (Some(*ep), None, None),
                [port, proto] => (None, Some(strip(port)), Some(strip(proto))),
                _ => unreachable!("guarded by the match"),
            };
            if !snapshot.namespaces.contains(*ns) {
                return Lookup::NxDomain;
            }
            let Some(service) = snapshot.services.get(&(ns.to_string(), svc.to_string())) else {
                return Lookup::NxDomain;
            };
            let hits = hits(service, svc, ns, endpoint, port, protocol);
            answer(zone, name, qtype, hits)
        }
        _ => Lookup::NxDomain,
    }
}

fn strip(label: &str) -> &str {
    label.strip_prefix('_').unwrap_or(label)
}

fn port_matches(port: &Port, name: Option<&str>, protocol: Option<&str>) -> bool {
    name.is_none_or(|n| n == port.name) && protocol.is_none_or(|p| p == port.protocol)
}

/// The records a Service has for a question's endpoint and port parts
/// (CoreDNS's `findServices`). `None` when nothing matches: NXDOMAIN.
fn hits(
    service: &Service,
    svc: &str,
    ns: &str,
    endpoint: Option<&str>,
    port: Option<&str>,
    protocol: Option<&str>,
) -> Option<Vec<Hit>> {
    let service_labels = || vec![svc.to_string(), ns.to_string(), "svc".to_string()];
    let mut hits = Vec::new();
    match &service.kind {
        Kind::ExternalName(target) => {
            // No endpoints, and no port pseudo-names, for an ExternalName.
            if endpoint.is_some() || port.is_some() {
                return None;
            }
            hits.push(Hit {
                host: Host::Cname(target.clone()),
                port: None,
                target: service_labels(),
            });
        }
        Kind::ClusterIp(ips) if endpoint.is_none() => {
            let mut matched = false;
            for p in service
                .ports
                .iter()
                .filter(|p| port_matches(p, port, protocol))
            {
                matched = true;
                for ip in ips {
                    hits.push(Hit {
                        host: Host::Ip(*ip),
                        port: Some(p.port),
                        target: service_labels(),
                    });
                }
            }
            // A Service whose ports matched exists even without an IP yet.
            if !matched {
                return None;
            }
        }
        _ => {
            for ep in &service.endpoints {
                if endpoint.is_some_and(|e| e != ep.label) {
                    continue;
                }
                let mut labels = service_labels();
                labels.insert(0, ep.label.clone());
                if ep.ports.is_empty() {
                    // A slice without ports still has addresses (CoreDNS's
                    // port -1 sentinel): no SRV, and no port to match.
                    if port.is_none() && protocol.is_none() {
                        hits.push(Hit {
                            host: Host::Ip(ep.ip),
                            port: None,
                            target: labels,
                        });
                    }
                    continue;
                }
                for p in ep.ports.iter().filter(|p| port_matches(p, port, protocol)) {
                    hits.push(Hit {
                        host: Host::Ip(ep.ip),
                        port: Some(p.port),
                        target: labels.clone(),
                    });
                }
            }
            if hits.is_empty() {
                return None;
            }
        }
    }
    Some(hits)
}

fn address(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn address_type(ip: IpAddr) -> RecordType {
    if ip.is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    }
}

/// The answer for a qtype from a Service's records.
fn answer(zone: &Zone, name: &Name, qtype: RecordType, hits: Option<Vec<Hit>>) -> Lookup {
    let Some(hits) = hits else {
        return Lookup::NxDomain;
    };
    if let Some(Hit {
        host: Host::Cname(target),
        ..
    }) = hits.first()
    {
        let Ok(mut target) = Name::from_ascii(target) else {
            return Lookup::NoData;
        };
        target.set_fqdn(true);
        let cname = Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target.clone())));
        return Lookup::Cname {
            cname: Box::new(cname),
            target,
        };
    }
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    match qtype {
        RecordType::A | RecordType::AAAA => {
            let mut seen = HashSet::new();
            for hit in &hits {
                if let Host::Ip(ip) = hit.host
                    && address_type(ip) == qtype
                    && seen.insert(ip)
                {
                    answers.push(Record::from_rdata(name.clone(), TTL, address(ip)));
                }
            }
        }
        RecordType::SRV => {
            // Every record has priority 0; CoreDNS gives each 100/n weight.
            let weight = u16::try_from(100 / hits.len().max(1)).unwrap_or(1).max(1);
            let mut seen_srv = HashSet::new();
            let mut seen_addr = HashSet::new();
            for hit in &hits {
                let (Host::Ip(ip), Some(port)) = (&hit.host, hit.port) else {
                    continue;
                };
                let labels: Vec<&str> = hit.target.iter().map(String::as_str).collect();
                let Some(target) = zone.name(&labels) else {
                    continue;
                };
                if seen_srv.insert((target.clone(), port)) {
                    answers.push(Record::from_rdata(
                        name.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, weight, port, target.clone())),
                    ));
                }
                if seen_addr.insert((target.clone(), *ip)) {
                    additionals.push(Record::from_rdata(target, TTL, address(*ip)));
                }
            }
        }
        _ => {}
    }
    if answers.is_empty() {
        Lookup::NoData
    } else {
        Lookup::Answer {
            answers,
            additionals,
        }
    }
}

/// PTR for a Service or endpoint IP; every other reverse name is not ours.
fn reverse(zone: &Zone, snapshot: &Snapshot, name: &Name, qtype: RecordType) -> Lookup {
    let Some(names) = reverse_ip(name).and_then(|ip| snapshot.ptr.get(&ip)) else {
        return Lookup::NotOurs;
    };
    if qtype != RecordType::PTR {
        return Lookup::NoData;
    }
    let answers = names
        .iter()
        .filter_map(|labels| {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            zone.name(&labels)
        })
        .map(|target| Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(target))))
        .collect();
    Lookup::Answer {
        answers,
        additionals: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zone() -> Zone {
        Zone::new("cluster.local", vec!["10.43.0.10".parse().unwrap()]).unwrap()
    }

    fn snapshot() -> Snapshot {
        let services = vec![
            json!({"metadata": {"namespace": "default", "name": "web"},
                   "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                            "ports": [{"name": "http", "protocol": "TCP", "port": 80},
                                      {"name": "dns", "protocol": "UDP", "port": 53}]}}),
            json!({"metadata": {"namespace": "default", "name": "v6"},
                   "spec": {"clusterIP": "fd00::20", "clusterIPs": ["fd00::20"],
                            "ports": [{"port": 80}]}}),
            json!({"metadata": {"namespace": "default", "name": "db"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"namespace": "default", "name": "empty"},
                   "spec": {"clusterIP": "None"}}),
            json!({"metadata": {"namespace": "default", "name": "ext"},
                   "spec": {"type": "ExternalName", "externalName": "Example.COM."}}),
        ];
        let slices = vec![
            json!({"metadata": {"namespace": "default", "name": "db-1",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "protocol": "TCP", "port": 5432}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.1.6"], "conditions": {}},
                {"addresses": ["10.42.1.7"], "conditions": {"ready": false}},
            ]}),
            json!({"metadata": {"namespace": "default", "name": "web-1",
                                "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                   "endpoints": [{"addresses": ["10.42.2.9"], "conditions": {"ready": true}}]}),
        ];
        let namespaces = vec![
            json!({"metadata": {"name": "default"}}),
            json!({"metadata": {"name": "quiet"}}),
        ];
        Snapshot::build(&services, &slices, &namespaces)
    }

    fn ask(name: &str, qtype: RecordType) -> Lookup {
        lookup(
            &zone(),
            &snapshot(),
            &Name::from_ascii(name).unwrap(),
            qtype,
        )
    }

    /// The answer section as `TYPE DATA` strings, for compact asserts.
    fn answers(name: &str, qtype: RecordType) -> Vec<String> {
        match ask(name, qtype) {
            Lookup::Answer { answers, .. } => answers
                .iter()
                .map(|r| format!("{} {}", r.record_type(), r.data))
                .collect(),
            other => panic!("{name} {qtype}: {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service() {
        assert_eq!(
            answers("web.default.svc.cluster.local.", RecordType::A),
            ["A 10.43.0.20"]
        );
        // No IPv6 ClusterIP: NODATA, not NXDOMAIN.
        assert_eq!(
            ask("web.default.svc.cluster.local.", RecordType::AAAA),
            Lookup::NoData
        );
        assert_eq!(
            ask("web.default.svc.cluster.local.", RecordType::TXT),
            Lookup::NoData
        );
        assert_eq!(
            answers("v6.default.svc.cluster.local.", RecordType::AAAA),
            ["AAAA fd00::20"]
        );
        assert_eq!(
            ask("v6.default.svc.cluster.local.", RecordType::A),
            Lookup::NoData
        );
    }

    #[test]
    fn names_are_case_insensitive_and_answers_echo_the_question() {
        let Lookup::Answer {
            answers: records, ..
        } = ask("WEB.Default.SVC.cluster.LOCAL.", RecordType::A)
        else {
            panic!("no answer");
        };
        assert_eq!(records[0].name.to_ascii(), "WEB.Default.SVC.cluster.LOCAL.");
        // Without the final dot, too.
        assert_eq!(
            answers("web.default.svc.cluster.local", RecordType::A),
            ["A 10.43.0.20"]
        );
        let z = Zone::new("Cluster.Local.", vec![]).unwrap();
        assert_eq!(z.origin().to_ascii(), "cluster.local.");
    }

    #[test]
    fn srv_for_named_ports() {
        assert_eq!(
            answers("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            ["SRV 0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            answers("_dns._udp.web.default.svc.cluster.local.", RecordType::SRV),
            ["SRV 0 100 53 web.default.svc.cluster.local."]
        );
        // The port pseudo-name answers A too.
        assert_eq!(
            answers("_http._tcp.web.default.svc.cluster.local.", RecordType::A),
            ["A 10.43.0.20"]
        );
        // Every port, with the plain name.
        assert_eq!(
            answers("web.default.svc.cluster.local.", RecordType::SRV),
            [
                "SRV 0 50 80 web.default.svc.cluster.local.",
                "SRV 0 50 53 web.default.svc.cluster.local."
            ]
        );
        // A port or protocol the Service does not have.
        assert_eq!(
            ask("_http._udp.web.default.svc.cluster.local.", RecordType::SRV),
            Lookup::NxDomain
        );
        assert_eq!(
            ask("_ftp._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            Lookup::NxDomain
        );
        let Lookup::Answer { additionals, .. } =
            ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV)
        else {
            panic!("no answer");
        };
        assert_eq!(additionals.len(), 1);
        assert_eq!(
            additionals[0].name.to_ascii(),
            "web.default.svc.cluster.local."
        );
    }

    #[test]
    fn headless_service_lists_ready_endpoints() {
        assert_eq!(
            answers("db.default.svc.cluster.local.", RecordType::A),
            ["A 10.42.0.5", "A 10.42.1.6"]
        );
        assert_eq!(
            answers("db-0.db.default.svc.cluster.local.", RecordType::A),
            ["A 10.42.0.5"]
        );
        // An endpoint without a hostname is named by its dashed IP.
        assert_eq!(
            answers("10-42-1-6.db.default.svc.cluster.local.", RecordType::A),
            ["A 10.42.1.6"]
        );
        // Not ready: absent.
        assert_eq!(
            ask("10-42-1-7.db.default.svc.cluster.local.", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            answers("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV),
            [
                "SRV 0 50 5432 db-0.db.default.svc.cluster.local.",
                "SRV 0 50 5432 10-42-1-6.db.default.svc.cluster.local."
            ]
        );
        // A headless Service without ready endpoints has no records: CoreDNS
        // answers NXDOMAIN.
        assert_eq!(
            ask("empty.default.svc.cluster.local.", RecordType::A),
            Lookup::NxDomain
        );
        // Endpoint names work under ClusterIP Services too.
        assert_eq!(
            answers("10-42-2-9.web.default.svc.cluster.local.", RecordType::A),
            ["A 10.42.2.9"]
        );
    }

    #[test]
    fn external_name_is_a_cname() {
        let Lookup::Cname { cname, target } = ask("ext.default.svc.cluster.local.", RecordType::A)
        else {
            panic!("no cname");
        };
        assert_eq!(target.to_ascii(), "example.com.");
        assert_eq!(cname.record_type(), RecordType::CNAME);
        assert_eq!(
            ask("_http._tcp.ext.default.svc.cluster.local.", RecordType::SRV),
            Lookup::NxDomain
        );
    }

    #[test]
    fn pods_insecure() {
        assert_eq!(
            answers("10-42-0-99.default.pod.cluster.local.", RecordType::A),
            ["A 10.42.0.99"]
        );
        assert_eq!(
            answers("fd00--7.default.pod.cluster.local.", RecordType::AAAA),
            ["AAAA fd00::7"]
        );
        assert_eq!(
            ask("10-42-0-99.default.pod.cluster.local.", RecordType::AAAA),
            Lookup::NoData
        );
        assert_eq!(
            ask("not-an-ip.default.pod.cluster.local.", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            ask("10-42-0-99.nowhere.pod.cluster.local.", RecordType::A),
            Lookup::NxDomain
        );
    }

    #[test]
    fn names_without_records() {
        assert_eq!(
            ask("quiet.svc.cluster.local.", RecordType::A),
            Lookup::NoData
        );
        assert_eq!(
            ask("nowhere.svc.cluster.local.", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(ask("svc.cluster.local.", RecordType::A), Lookup::NoData);
        assert_eq!(ask("cluster.local.", RecordType::A), Lookup::NoData);
        assert_eq!(
            ask("missing.default.svc.cluster.local.", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            ask("web.quiet.svc.cluster.local.", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(ask("foo.cluster.local.", RecordType::A), Lookup::NxDomain);
        assert_eq!(
            ask("a.b.c.web.default.svc.cluster.local.", RecordType::A),
            Lookup::NxDomain
        );
    }

    #[test]
    fn zone_apex_and_server_names() {
        assert_eq!(answers("cluster.local.", RecordType::SOA).len(), 1);
        assert_eq!(
            answers("cluster.local.", RecordType::NS),
            ["NS ns.dns.cluster.local."]
        );
        assert_eq!(
            answers("ns.dns.cluster.local.", RecordType::A),
            ["A 10.43.0.10"]
        );
        assert_eq!(
            answers("dns-version.cluster.local.", RecordType::TXT),
            ["TXT 1.1.0"]
        );
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            answers("20.0.43.10.in-addr.arpa.", RecordType::PTR),
            ["PTR web.default.svc.cluster.local."]
        );
        assert_eq!(
            answers("5.0.42.10.in-addr.arpa.", RecordType::PTR),
            ["PTR db-0.db.default.svc.cluster.local."]
        );
        // Unknown addresses and partial names are someone else's.
        assert_eq!(
            ask("1.1.168.192.in-addr.arpa.", RecordType::PTR),
            Lookup::NotOurs
        );
        assert_eq!(ask("43.10.in-addr.arpa.", RecordType::PTR), Lookup::NotOurs);
        assert_eq!(ask("example.com.", RecordType::A), Lookup::NotOurs);
        let z = zone();
        let s = snapshot();
        assert!(z.is_ours(&s, &Name::from_ascii("20.0.43.10.in-addr.arpa.").unwrap()));
        assert!(z.is_ours(&s, &Name::from_ascii("x.CLUSTER.local").unwrap()));
        assert!(!z.is_ours(&s, &Name::from_ascii("example.com").unwrap()));
    }

    #[test]
    fn malformed_objects_are_skipped() {
        let snap = Snapshot::build(
            &[
                json!({"metadata": {"name": "no-namespace"}}),
                json!("not an object"),
            ],
            &[json!({"metadata": {"namespace": "default"}}), json!(null)],
            &[json!({})],
        );
        assert_eq!(snap.services(), 0);
    }
}
