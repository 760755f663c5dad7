//! K3s's ServiceLB, without its pods: a `type: LoadBalancer` Service's
//! `status.loadBalancer.ingress` lists the addresses of the Ready nodes
//! (their ExternalIPs, else their InternalIPs), kept current as nodes come
//! and go; the node proxy answers on those addresses. A Service that stops
//! being a LoadBalancer has the status cleared.
//!
//! [`ingress`] and [`status_for`] decide (pure, tested below); `run` writes
//! the status subresource.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::Caches;
use super::replicaset::{
    DEBOUNCE, Expectation, Expectations, RESYNC, Want, is_terminating, key_of, str_at,
};
use crate::client::{Client, resource_path};

pub async fn run(client: Client, caches: Caches) {
    caches.nodes.wait_synced().await;
    caches.services.wait_synced().await;
    let mut changes = [caches.nodes.changes(), caches.services.changes()];
    let mut expectations = Expectations::default();
    loop {
        let nodes = caches.nodes.list();
        let ingress = ingress(&nodes);
        let services = caches.services.list();
        let live: HashSet<String> = services
            .iter()
            .map(|s| str_at(s, "/metadata/uid").to_string())
            .collect();
        expectations.retain(&live);
        for svc in &services {
            let uid = str_at(svc, "/metadata/uid");
            if is_terminating(svc) || !expectations.satisfied(uid) {
                continue;
            }
            let Some(status) = status_for(svc, &ingress) else {
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

/// The status `svc` should have, `None` when it has it: the node addresses
/// for a LoadBalancer of no other class, nothing for other types.
pub fn status_for(svc: &Value, ingress: &[Value]) -> Option<Value> {
    let current = svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours = str_at(svc, "/spec/type") == "LoadBalancer"
        && str_at(svc, "/spec/loadBalancerClass").is_empty();
    let want: Vec<Value> = if ours { ingress.to_vec() } else { Vec::new() };
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
        let classed = json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "x.io/lb"}});
        assert!(status_for(&classed, &ing).is_none());
    }
}
