//! K3s's ServiceLB, without its pods: a `type: LoadBalancer` Service's
//! `status.loadBalancer.ingress` lists the addresses of the Ready nodes
//! (their ExternalIPs, else their InternalIPs), kept current as nodes come
//! and go; the node proxy answers on those addresses. A Service that stops
//! being a LoadBalancer has the status cleared. A Service with a
//! `loadBalancerClass` belongs to another controller: its status is left
//! alone. As K3s's ServiceLB (whose per-node pods bind each port), a
//! (port, protocol) serves one Service: the oldest claims it, a younger one
//! stays pending with a Warning Event naming the holder.
//!
//! [`ingress`], [`conflicts`] and [`status_for`] decide (pure, tested
//! below); `run` writes the status subresource.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::Caches;
use super::replicaset::{
    DEBOUNCE, Expectation, Expectations, RESYNC, Want, is_terminating, key_of, str_at,
};
use crate::client::{Client, resource_path};

const COMPONENT: &str = "service-lb-controller";
pub const CONFLICT_REASON: &str = "PortConflict";

pub async fn run(client: Client, caches: Caches) {
    caches.nodes.wait_synced().await;
    caches.services.wait_synced().await;
    let mut changes = [caches.nodes.changes(), caches.services.changes()];
    let mut expectations = Expectations::default();
    // Blocked Services warned about (uid → message), so each conflict is
    // told once per process.
    let mut warned: HashMap<String, String> = HashMap::new();
    loop {
        let nodes = caches.nodes.list();
        let ingress = ingress(&nodes);
        let services = caches.services.list();
        let live: HashSet<String> = services
            .iter()
            .map(|s| str_at(s, "/metadata/uid").to_string())
            .collect();
        expectations.retain(&live);
        let blocked = conflicts(&services);
        warned.retain(|uid, message| blocked.get(uid) == Some(message));
        for svc in &services {
            let uid = str_at(svc, "/metadata/uid");
            if let Some(message) = blocked.get(uid)
                && !warned.contains_key(uid)
            {
                tracing::info!(service = %str_at(svc, "/metadata/name"), %message, "load balancer pending");
                let mut svc = svc.clone();
                svc["kind"] = json!("Service");
                svc["apiVersion"] = json!("v1");
                super::record_event(
                    &client,
                    &svc,
                    "Warning",
                    CONFLICT_REASON,
                    message,
                    COMPONENT,
                )
                .await;
                warned.insert(uid.to_string(), message.clone());
            }
            if is_terminating(svc) || !expectations.satisfied(uid) {
                continue;
            }
            let ingress: &[Value] = if blocked.contains_key(uid) {
                &[]
            } else {
                &ingress
            };
            let Some(status) = status_for(svc, ingress) else {
                continue;
            };
            let (ns, name) = key_of(svc);
            let mut body = svc.clone();
            body["status"] = status;
            let path = resource_path("v1", "services", Some(&ns), Some(&name));
            match client.update(&format!("{path}/status"), &body).await {
                Ok(_) => {
                    let want = Want::Changed(str_at(svc, "/metadata/resourceVersion").into());
                    let informer = caches.services.clone();
                    let e = Expectation {
                        informer,
                        namespace: ns,
                        name,
                        want,
                    };
                    expectations.expect(uid, e);
                }
                Err(e) if e.is_conflict() => {
                    tracing::debug!(service = %name, "service status: conflict; retrying")
                }
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "updating a load balancer status failed")
                }
            }
        }
        let recheck = expectations
            .next_deadline()
            .map_or(RESYNC, |d| d.min(RESYNC));
        super::wait_for_change(&mut changes, recheck, DEBOUNCE).await;
    }
}

/// The ingress entries every load balancer gets: each Ready node's
/// ExternalIPs, or their InternalIPs when no node has one (K3s's rule),
/// sorted.
pub fn ingress(nodes: &[Value]) -> Vec<Value> {
    let ready = nodes.iter().filter(|n| {
        n.pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            && !is_terminating(n)
    });
    let addresses = |kind: &str| -> Vec<String> {
        let mut ips: Vec<String> = ready
            .clone()
            .flat_map(|n| {
                n.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .filter(|a| a["type"] == kind)
            .filter_map(|a| a["address"].as_str().map(str::to_string))
            .collect();
        ips.sort();
        ips.dedup();
        ips
    };
    let mut ips = addresses("ExternalIP");
    if ips.is_empty() {
        ips = addresses("InternalIP");
    }
    ips.into_iter()
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect()
}

/// Whether `svc` is a load balancer this controller serves.
fn ours(svc: &Value) -> bool {
    str_at(svc, "/spec/type") == "LoadBalancer" && str_at(svc, "/spec/loadBalancerClass").is_empty()
}

/// The LoadBalancer Services left pending because an older one (by
/// creationTimestamp, then namespace/name) holds one of their (port,
/// protocol) pairs: uid → the message saying which. A blocked Service
/// claims none of its ports.
pub fn conflicts(services: &[Value]) -> HashMap<String, String> {
    let mut candidates: Vec<&Value> = services
        .iter()
        .filter(|s| ours(s) && !is_terminating(s))
        .collect();
    candidates.sort_by_key(|s| {
        (
            str_at(s, "/metadata/creationTimestamp"),
            str_at(s, "/metadata/namespace"),
            str_at(s, "/metadata/name"),
        )
    });
    let pairs = |s: &Value| -> Vec<(i64, String)> {
        s.pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let port = p.get("port").and_then(Value::as_i64)?;
                let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                Some((port, protocol.to_string()))
            })
            .collect()
    };
    let mut claimed: HashMap<(i64, String), String> = HashMap::new();
    let mut blocked = HashMap::new();
    for svc in candidates {
        let mine = pairs(svc);
        let clash = mine
            .iter()
            .find_map(|pair| claimed.get(pair).map(|holder| (pair, holder)));
        if let Some(((port, protocol), holder)) = clash {
            let message = format!(
                "port {port}/{protocol} is already used by LoadBalancer Service {holder}; \
                 this Service gets no load balancer address until the port is free"
            );
            blocked.insert(str_at(svc, "/metadata/uid").to_string(), message);
            continue;
        }
        let (ns, name) = key_of(svc);
        for pair in mine {
            claimed.insert(pair, format!("{ns}/{name}"));
        }
    }
    blocked
}

/// The status `svc` should have, `None` when it has it: `ingress` for a
/// LoadBalancer of no other class, nothing for other types; a Service of
/// another class is left to its controller.
pub fn status_for(svc: &Value, ingress: &[Value]) -> Option<Value> {
    if !str_at(svc, "/spec/loadBalancerClass").is_empty() {
        return None;
    }
    let current = svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let want: Vec<Value> = if ours(svc) {
        ingress.to_vec()
    } else {
        Vec::new()
    };
    if current == want {
        return None;
    }
    let mut status = svc
        .get("status")
        .filter(|s| s.is_object())
        .cloned()
        .unwrap_or(json!({}));
    status["loadBalancer"] = if want.is_empty() {
        json!({})
    } else {
        json!({"ingress": want})
    };
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                          "conditions": [{"type": "Ready", "status": if ready { "True" } else { "Unknown" }}]}})
    }

    #[test]
    fn load_balancers_get_the_ready_nodes_addresses() {
        let nodes = [
            node("b", "10.0.0.2", true),
            node("a", "10.0.0.1", true),
            node("c", "10.0.0.3", false),
        ];
        let ing = ingress(&nodes);
        assert_eq!(
            ing,
            [
                json!({"ip": "10.0.0.1", "ipMode": "VIP"}),
                json!({"ip": "10.0.0.2", "ipMode": "VIP"})
            ]
        );
        let mut external = node("d", "10.0.0.4", true);
        external["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "ExternalIP", "address": "203.0.113.7"}));
        assert_eq!(
            ingress(&[node("a", "10.0.0.1", true), external]),
            [json!({"ip": "203.0.113.7", "ipMode": "VIP"})]
        );

        let lb = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}});
        let status = status_for(&lb, &ing).unwrap();
        assert_eq!(
            status["loadBalancer"]["ingress"].as_array().unwrap().len(),
            2
        );
        let mut done = lb.clone();
        done["status"] = status;
        assert!(status_for(&done, &ing).is_none());
        // A node going away shrinks the list.
        assert_eq!(
            status_for(&done, &ing[..1]).unwrap()["loadBalancer"]["ingress"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Turned into a ClusterIP Service: cleared.
        let mut plain = done.clone();
        plain["spec"]["type"] = json!("ClusterIP");
        assert_eq!(
            status_for(&plain, &ing).unwrap(),
            json!({"loadBalancer": {}})
        );
        // Another class's status is its controller's: left as it is.
        let classed = json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "x.io/lb"},
                             "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}});
        assert!(status_for(&classed, &ing).is_none());
        assert!(status_for(&classed, &[]).is_none());
    }

    fn lb(name: &str, created: &str, ports: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": name, "creationTimestamp": created},
               "spec": {"type": "LoadBalancer", "ports": ports}})
    }

    #[test]
    fn the_oldest_load_balancer_holds_a_port() {
        let services = [
            lb(
                "young",
                "2026-01-02T00:00:00Z",
                json!([{"port": 80, "protocol": "TCP"}]),
            ),
            lb(
                "old",
                "2026-01-01T00:00:00Z",
                json!([{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]),
            ),
            // Same time: namespace/name decides.
            lb(
                "b-twin",
                "2026-01-01T00:00:00Z",
                json!([{"port": 443, "protocol": "TCP"}]),
            ),
            lb(
                "a-twin",
                "2026-01-01T00:00:00Z",
                json!([{"port": 443, "protocol": "TCP"}]),
            ),
            // Another protocol on the same port is no conflict.
            lb(
                "tcp-dns",
                "2026-01-03T00:00:00Z",
                json!([{"port": 53, "protocol": "TCP"}]),
            ),
            // Neither another class nor a ClusterIP Service claims ports.
            json!({"metadata": {"name": "classed", "namespace": "default", "uid": "classed", "creationTimestamp": "2025-01-01T00:00:00Z"},
                   "spec": {"type": "LoadBalancer", "loadBalancerClass": "x.io/lb", "ports": [{"port": 8080, "protocol": "TCP"}]}}),
            json!({"metadata": {"name": "plain", "namespace": "default", "uid": "plain", "creationTimestamp": "2025-01-01T00:00:00Z"},
                   "spec": {"type": "ClusterIP", "ports": [{"port": 8080, "protocol": "TCP"}]}}),
            lb(
                "web",
                "2026-01-04T00:00:00Z",
                json!([{"port": 8080, "protocol": "TCP"}]),
            ),
        ];
        let blocked = conflicts(&services);
        let mut uids: Vec<&str> = blocked.keys().map(String::as_str).collect();
        uids.sort();
        assert_eq!(uids, ["b-twin", "young"]);
        assert_eq!(
            blocked["young"],
            "port 80/TCP is already used by LoadBalancer Service default/old; \
             this Service gets no load balancer address until the port is free"
        );
        assert!(blocked["b-twin"].contains("default/a-twin"));
        // A blocked Service stays pending (no ingress) and claims nothing:
        // with the holder gone it gets the port.
        let status = status_for(&services[0], &[]);
        assert!(status.is_none() || status == Some(json!({"loadBalancer": {}})));
        assert!(conflicts(&services[..1]).is_empty());
    }
}
