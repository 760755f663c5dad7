//! A pod's resolv.conf, by the kubelet's rules (`pkg/kubelet/network/dns`):
//! `dnsPolicy` picks the cluster DNS or the node's resolvers, then
//! `spec.dnsConfig` is merged in and the result cut to the resolver's
//! limits. Pure: the runtime hands the result to the CRI sandbox.

use std::net::Ipv4Addr;

use serde_json::Value;

/// Nameservers a resolver reads (glibc's MAXNS; kube's MaxDNSNameservers).
const MAX_NAMESERVERS: usize = 3;
/// kube's MaxDNSSearchPaths and MaxDNSSearchListChars.
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;
/// A longer search domain makes glibc abort (kube filters them out).
const MAX_SEARCH_LEN: usize = 253;
/// Where systemd-resolved keeps the real upstream resolvers when
/// /etc/resolv.conf points at its loopback stub.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// What the cluster's DNS is.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    pub nameserver: Ipv4Addr,
    /// `cluster.local`.
    pub domain: String,
}

/// A resolv.conf's three lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Parses resolv.conf text as the kubelet does: every `nameserver`, the
/// last `search` line, every `options`.
pub fn parse_resolv_conf(text: &str) -> DnsSettings {
    let mut settings = DnsSettings::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => settings.nameservers.extend(fields.next().map(String::from)),
            Some("search") => {
                settings.searches = fields
                    .filter(|s| *s != ".")
                    .map(|s| s.trim_end_matches('.').to_string())
                    .collect();
            }
            Some("options") => settings.options.extend(fields.map(String::from)),
            _ => {}
        }
    }
    settings
}

/// The node's resolv.conf text: /etc/resolv.conf, or systemd-resolved's
/// upstream list when /etc/resolv.conf only names its loopback stub (a
/// pod cannot reach the node's loopback), as K3s picks it.
pub fn host_resolv_conf() -> String {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers = parse_resolv_conf(&etc).nameservers;
    let loopback_only = !servers.is_empty()
        && servers.iter().all(|s| {
            s.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        });
    if loopback_only && let Ok(upstream) = std::fs::read_to_string(RESOLVED_UPSTREAM) {
        return upstream;
    }
    etc
}

/// The DNS settings of `pod`'s sandbox.
pub fn pod_dns(pod: &Value, cluster: &ClusterDns, host_resolv: &str) -> DnsSettings {
    let host_network = pod
        .pointer("/spec/hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let policy = pod
        .pointer("/spec/dnsPolicy")
        .and_then(Value::as_str)
        .unwrap_or("ClusterFirst");
    let host = parse_resolv_conf(host_resolv);
    let mut settings = match policy {
        "None" => DnsSettings::default(),
        "ClusterFirstWithHostNet" => cluster_first(pod, cluster, host),
        // ClusterFirst on the node's network falls back to Default: the
        // node's own resolvers, as its processes have them.
        "ClusterFirst" if !host_network => cluster_first(pod, cluster, host),
        _ => host,
    };
    if let Some(extra) = pod.pointer("/spec/dnsConfig") {
        merge(&mut settings, extra);
    }
    settings.nameservers.truncate(MAX_NAMESERVERS);
    settings.searches = fit_searches(settings.searches);
    settings
}

/// ClusterFirst: the cluster DNS, the pod's namespace's search path then
/// the node's, ndots:5.
fn cluster_first(pod: &Value, cluster: &ClusterDns, host: DnsSettings) -> DnsSettings {
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let domain = &cluster.domain;
    let mut searches = vec![
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.clone(),
    ];
    searches.extend(host.searches);
    DnsSettings {
        nameservers: vec![cluster.nameserver.to_string()],
        searches: dedup(searches),
        options: vec!["ndots:5".into()],
    }
}

/// `spec.dnsConfig` appended (duplicates dropped), its options replacing
/// those of the same name.
fn merge(settings: &mut DnsSettings, extra: &Value) {
    let strings = |key: &str| -> Vec<String> {
        extra[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    settings.nameservers.extend(strings("nameservers"));
    settings.nameservers = dedup(std::mem::take(&mut settings.nameservers));
    settings.searches.extend(strings("searches"));
    settings.searches = dedup(std::mem::take(&mut settings.searches));
    let mut options: Vec<(String, Option<String>)> = settings
        .options
        .iter()
        .map(|o| match o.split_once(':') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (o.clone(), None),
        })
        .collect();
    for option in extra["options"].as_array().into_iter().flatten() {
        let Some(name) = option["name"].as_str() else {
            continue;
        };
        let value = option["value"].as_str().map(String::from);
        match options.iter_mut().find(|(n, _)| n == name) {
            Some(existing) => existing.1 = value,
            None => options.push((name.to_string(), value)),
        }
    }
    settings.options = options
        .into_iter()
        .map(|(name, value)| match value.filter(|v| !v.is_empty()) {
            Some(v) => format!("{name}:{v}"),
            None => name,
        })
        .collect();
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

/// kube's limits: at most 32 domains, none over 253 characters, the
/// line at most 2048 characters (dropping domains from the end).
fn fit_searches(mut searches: Vec<String>) -> Vec<String> {
    searches.truncate(MAX_SEARCHES);
    searches.retain(|s| s.len() <= MAX_SEARCH_LEN);
    while !searches.is_empty() && searches.join(" ").len() > MAX_SEARCH_CHARS {
        searches.pop();
    }
    searches
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "# from DHCP\nnameserver 192.168.1.1\nnameserver 192.168.1.2 ; second\n\
                        search old.example\nsearch corp.example lab.example.\noptions timeout:2\n";

    fn cluster() -> ClusterDns {
        ClusterDns {
            nameserver: Ipv4Addr::new(10, 43, 0, 10),
            domain: "cluster.local".into(),
        }
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec})
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn host_resolv_conf_parses_as_the_kubelet_reads_it() {
        let host = parse_resolv_conf(HOST);
        assert_eq!(host.nameservers, strings(&["192.168.1.1", "192.168.1.2"]));
        assert_eq!(host.searches, strings(&["corp.example", "lab.example"]));
        assert_eq!(host.options, strings(&["timeout:2"]));
    }

    #[test]
    fn cluster_first_is_the_default() {
        let dns = pod_dns(&pod(json!({})), &cluster(), HOST);
        assert_eq!(dns.nameservers, strings(&["10.43.0.10"]));
        assert_eq!(
            dns.searches,
            strings(&[
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "lab.example"
            ])
        );
        assert_eq!(dns.options, strings(&["ndots:5"]));
        let explicit = pod_dns(&pod(json!({"dnsPolicy": "ClusterFirst"})), &cluster(), HOST);
        assert_eq!(explicit, dns);
    }

    #[test]
    fn host_network_pods_use_the_node_unless_they_ask() {
        let host = parse_resolv_conf(HOST);
        let fallback = pod_dns(&pod(json!({"hostNetwork": true})), &cluster(), HOST);
        assert_eq!(
            fallback, host,
            "ClusterFirst on the host network is Default"
        );
        let asked = pod_dns(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &cluster(),
            HOST,
        );
        assert_eq!(asked.nameservers, strings(&["10.43.0.10"]));
        assert_eq!(asked.searches[0], "shop.svc.cluster.local");
        let default = pod_dns(&pod(json!({"dnsPolicy": "Default"})), &cluster(), HOST);
        assert_eq!(default, host);
    }

    #[test]
    fn dns_config_is_merged_and_none_takes_only_it() {
        let extra = json!({"nameservers": ["1.1.1.1", "10.43.0.10"], "searches": ["my.dns.search"],
                           "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]});
        let merged = pod_dns(&pod(json!({"dnsConfig": extra})), &cluster(), HOST);
        assert_eq!(merged.nameservers, strings(&["10.43.0.10", "1.1.1.1"]));
        assert_eq!(merged.searches.last().unwrap(), "my.dns.search");
        assert_eq!(merged.options, strings(&["ndots:2", "edns0"]));
        let none = pod_dns(
            &pod(json!({"dnsPolicy": "None", "dnsConfig": extra})),
            &cluster(),
            HOST,
        );
        assert_eq!(none.nameservers, strings(&["1.1.1.1", "10.43.0.10"]));
        assert_eq!(none.searches, strings(&["my.dns.search"]));
        assert_eq!(none.options, strings(&["ndots:2", "edns0"]));
        let empty = pod_dns(&pod(json!({"dnsPolicy": "None"})), &cluster(), HOST);
        assert_eq!(empty, DnsSettings::default());
    }

    #[test]
    fn limits_cut_as_the_kubelets() {
        let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let host = format!("nameserver 1.1.1.1\nsearch {}\n", many.join(" "));
        let extra = json!({"nameservers": ["2.2.2.2", "3.3.3.3", "4.4.4.4"]});
        let dns = pod_dns(
            &pod(json!({"dnsPolicy": "Default", "dnsConfig": extra})),
            &cluster(),
            &host,
        );
        assert_eq!(dns.nameservers.len(), 3);
        assert_eq!(dns.searches.len(), 32);
        // Long domains are dropped, then the line is cut to 2048 characters.
        let long: Vec<String> = (0..20).map(|i| format!("{i:0>200}.example")).collect();
        let host = format!("search {} {}\n", "x".repeat(300), long.join(" "));
        let dns = pod_dns(&pod(json!({"dnsPolicy": "Default"})), &cluster(), &host);
        assert!(dns.searches.iter().all(|s| s.len() <= 253));
        assert!(dns.searches.join(" ").len() <= 2048);
        assert_eq!(dns.searches.len(), 9);
    }
}
