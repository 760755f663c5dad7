//! The Endpoints controller (kube-controller-manager's `endpoint`): the
//! legacy `v1/Endpoints` of every Service with a selector, from the same
//! pods as its EndpointSlices: ready ones in `addresses`, the others in
//! `notReadyAddresses`, grouped into subsets by the ports they serve on.
//!
//! [`subsets`] decides (pure, tested below); `run` writes. Endpoints of a
//! Service without a selector are written by hand and left alone; those
//! this controller made are deleted with their Service.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::Caches;
use super::endpointslice::{
    derived_labels, find_port, hostname, managed, pod_in_endpoints, pod_ready, selects, target_ref,
};
use super::replicaset::{
    DEBOUNCE, Expectation, Expectations, RESYNC, Want, is_terminating, key_of, str_at,
};
use crate::client::{Client, ClientError, resource_path};

/// Marks Endpoints the EndpointSlice mirroring controller must not copy:
/// their Service has slices of its own (kube sets it on the ones it makes).
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

pub async fn run(client: Client, caches: Caches) {
    caches.pods.wait_synced().await;
    caches.services.wait_synced().await;
    caches.endpoints.wait_synced().await;
    let mut changes = [
        caches.pods.changes(),
        caches.services.changes(),
        caches.endpoints.changes(),
    ];
    let mut expectations = Expectations::default();
    loop {
        reconcile_all(&client, &caches, &mut expectations).await;
        let recheck = expectations
            .next_deadline()
            .map_or(RESYNC, |d| d.min(RESYNC));
        super::wait_for_change(&mut changes, recheck, DEBOUNCE).await;
    }
}

/// A subset's addresses by IP and pod uid: (address, ready).
type Addresses = BTreeMap<String, (Value, bool)>;

/// kube's subsets for `svc` (its `syncService` and `RepackSubsets`): each
/// pod's address under every Service port it resolves, ready or not
/// (publishNotReadyAddresses: all ready, terminating ones included), then
/// the ports that reach the same addresses joined into one subset.
pub fn subsets(svc: &Value, pods: &[Value]) -> Vec<Value> {
    let publish = svc.pointer("/spec/publishNotReadyAddresses") == Some(&json!(true));
    let ports: &[Value] = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let headless = str_at(svc, "/spec/clusterIP") == "None";
    // Port (as JSON) → its addresses by IP and pod uid (host-network pods
    // share an IP): (address, ready).
    let mut by_port: BTreeMap<String, Addresses> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selects(svc, p)) {
        if !pod_in_endpoints(pod, publish) {
            continue;
        }
        let ip = str_at(pod, "/status/podIP");
        let mut address = json!({"ip": ip, "targetRef": target_ref(pod)});
        let node = str_at(pod, "/spec/nodeName");
        if !node.is_empty() {
            address["nodeName"] = json!(node);
        }
        if let Some(h) = hostname(svc, pod) {
            address["hostname"] = json!(h);
        }
        let ready = publish || pod_ready(pod);
        let id = format!("{ip}/{}", str_at(pod, "/metadata/uid"));
        if ports.is_empty() {
            // Only a headless Service may go without ports.
            if headless {
                by_port
                    .entry(String::new())
                    .or_default()
                    .insert(id.clone(), (address.clone(), ready));
            }
            continue;
        }
        for p in ports {
            let Some(number) = find_port(pod, p) else {
                continue;
            };
            let mut port =
                json!({"port": number, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
            if let Some(name) = p["name"].as_str().filter(|n| !n.is_empty()) {
                port["name"] = json!(name);
            }
            if let Some(a) = p.get("appProtocol").filter(|a| !a.is_null()) {
                port["appProtocol"] = a.clone();
            }
            by_port
                .entry(port.to_string())
                .or_default()
                .insert(id.clone(), (address.clone(), ready));
        }
    }
    // Ports reaching the same addresses (and readiness) share a subset.
    let mut grouped: BTreeMap<String, (Vec<Value>, Addresses)> = BTreeMap::new();
    for (port, addresses) in by_port {
        let signature: Vec<(&String, bool)> =
            addresses.iter().map(|(ip, (_, r))| (ip, *r)).collect();
        let signature = format!("{signature:?}");
        let entry = grouped
            .entry(signature)
            .or_insert_with(|| (Vec::new(), addresses.clone()));
        if !port.is_empty() {
            entry
                .0
                .push(serde_json::from_str(&port).unwrap_or(Value::Null));
        }
    }
    let mut out: Vec<Value> = grouped
        .into_values()
        .map(|(ports, addresses)| {
            let (ready, not_ready): (Vec<_>, Vec<_>) =
                addresses.into_values().partition(|(_, r)| *r);
            let mut subset = json!({});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready.into_iter().map(|(a, _)| a).collect::<Vec<_>>());
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] =
                    json!(not_ready.into_iter().map(|(a, _)| a).collect::<Vec<_>>());
            }
            if !ports.is_empty() {
                subset["ports"] = json!(ports);
            }
            subset
        })
        .collect();
    out.sort_by_key(|s| s.to_string());
    out
}

/// The Endpoints `svc` should have; `current` is what exists (its
/// metadata kept). `None` when `current` already says it.
pub fn desired(svc: &Value, pods: &[Value], current: Option<&Value>) -> Option<Value> {
    let subsets = subsets(svc, pods);
    let mut labels = derived_labels(svc);
    labels.insert(SKIP_MIRROR_LABEL.into(), json!("true"));
    let labels = Value::Object(labels);
    let Some(current) = current else {
        return Some(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": svc["metadata"]["name"], "namespace": svc["metadata"]["namespace"], "labels": labels},
            "subsets": subsets,
        }));
    };
    let current_subsets = current
        .get("subsets")
        .filter(|s| !s.is_null())
        .cloned()
        .unwrap_or(json!([]));
    if current_subsets == json!(subsets) && current["metadata"]["labels"] == labels {
        return None;
    }
    let mut next = current.clone();
    next["subsets"] = json!(subsets);
    next["metadata"]["labels"] = labels;
    Some(next)
}

async fn reconcile_all(client: &Client, caches: &Caches, expectations: &mut Expectations) {
    let pods = super::by_namespace(caches.pods.list());
    let services = caches.services.list();
    let live: HashSet<String> = services
        .iter()
        .map(|s| str_at(s, "/metadata/uid").to_string())
        .collect();
    expectations.retain(&live);
    for svc in services.iter().filter(|s| managed(s) && !is_terminating(s)) {
        let uid = str_at(svc, "/metadata/uid").to_string();
        if !expectations.satisfied(&uid) {
            continue;
        }
        let (ns, name) = key_of(svc);
        let current = caches.endpoints.get(Some(&ns), &name);
        let ns_pods = pods.get(&ns).map(Vec::as_slice).unwrap_or_default();
        let Some(next) = desired(svc, ns_pods, current.as_ref()) else {
            continue;
        };
        let collection = resource_path("v1", "endpoints", Some(&ns), None);
        let written = match &current {
            None => client.create(&collection, &next).await,
            Some(_) => client.update(&format!("{collection}/{name}"), &next).await,
        };
        match written {
            Ok(_) => {
                let want = match &current {
                    None => Want::Present,
                    Some(c) => Want::Changed(str_at(c, "/metadata/resourceVersion").into()),
                };
                let informer = caches.endpoints.clone();
                let e = Expectation {
                    informer,
                    namespace: ns,
                    name,
                    want,
                };
                expectations.expect(&uid, e);
            }
            Err(e) => log_error("writing endpoints", &name, &e),
        }
    }
    // Endpoints this controller made whose Service is gone (kube deletes
    // them when the Service is; they have no owner for the collector).
    let names: HashSet<(String, String)> = services.iter().map(key_of).collect();
    for ep in caches.endpoints.list() {
        let ours = ep
            .pointer("/metadata/labels")
            .is_some_and(|l| l[SKIP_MIRROR_LABEL] == "true");
        let (ns, name) = key_of(&ep);
        if !ours || names.contains(&(ns.clone(), name.clone())) {
            continue;
        }
        let path = resource_path("v1", "endpoints", Some(&ns), Some(&name));
        let options = json!({"preconditions": {"uid": ep["metadata"]["uid"]}});
        match client.delete(&path, &options).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => log_error("deleting endpoints", &name, &e),
        }
    }
}

fn log_error(what: &str, name: &str, e: &ClientError) {
    if e.is_conflict() {
        tracing::debug!(name, error = %e, "{what}: conflict; retrying");
    } else {
        tracing::warn!(name, error = %e, "{what} failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
               "status": {"phase": "Running", "podIP": ip,
                          "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn web(extra: Value) -> Value {
        let mut svc = json!({"metadata": {"name": "web", "namespace": "default", "uid": "svc"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.43.0.9",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                               {"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": 9100}]}});
        svc["spec"]
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        svc
    }

    #[test]
    fn ready_and_not_ready_addresses_grouped_by_ports() {
        let pods = [
            pod("a", "10.42.0.1", true, 8080),
            pod("b", "10.42.0.2", false, 8080),
            pod("c", "10.42.0.3", true, 9090),
        ];
        let got = subsets(&web(json!({})), &pods);
        // a and b share ports (8080, 9100), c's named port differs; 9100
        // reaches all three.
        let ips = |s: &Value, f: &str| -> Vec<String> {
            s[f].as_array()
                .into_iter()
                .flatten()
                .map(|a| a["ip"].as_str().unwrap().to_string())
                .collect()
        };
        let ports = |s: &Value| -> Vec<i64> {
            s["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
                .collect()
        };
        let mut summary: Vec<(Vec<i64>, Vec<String>, Vec<String>)> = got
            .iter()
            .map(|s| (ports(s), ips(s, "addresses"), ips(s, "notReadyAddresses")))
            .collect();
        summary.sort();
        assert_eq!(
            summary,
            [
                (
                    vec![8080],
                    vec!["10.42.0.1".into()],
                    vec!["10.42.0.2".into()]
                ),
                (vec![9090], vec!["10.42.0.3".into()], vec![]),
                (
                    vec![9100],
                    vec!["10.42.0.1".into(), "10.42.0.3".into()],
                    vec!["10.42.0.2".into()]
                ),
            ]
        );
        let a = &got.iter().find(|s| ports(s) == [8080]).unwrap()["addresses"][0];
        assert_eq!(a["nodeName"], "n1");
        assert_eq!(a["targetRef"]["kind"], "Pod");
    }

    #[test]
    fn terminating_pods_only_with_publish_not_ready() {
        let mut going = pod("a", "10.42.0.1", true, 8080);
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(
            subsets(&web(json!({})), std::slice::from_ref(&going)),
            Vec::<Value>::new()
        );
        let published = subsets(
            &web(json!({"publishNotReadyAddresses": true})),
            &[going, pod("b", "10.42.0.2", false, 8080)],
        );
        assert_eq!(published.len(), 1);
        assert_eq!(published[0]["addresses"].as_array().unwrap().len(), 2);
        assert!(published[0].get("notReadyAddresses").is_none());
    }

    #[test]
    fn headless_without_ports_and_unchanged_endpoints() {
        let headless = web(json!({"clusterIP": "None", "ports": []}));
        let got = subsets(&headless, &[pod("a", "10.42.0.1", true, 8080)]);
        assert_eq!(got.len(), 1);
        assert!(got[0].get("ports").is_none());
        let not_headless = web(json!({"ports": []}));
        assert!(subsets(&not_headless, &[pod("a", "10.42.0.1", true, 8080)]).is_empty());
        let pods = [pod("a", "10.42.0.1", true, 8080)];
        let made = desired(&web(json!({})), &pods, None).unwrap();
        assert_eq!(made["metadata"]["labels"][SKIP_MIRROR_LABEL], "true");
        assert!(desired(&web(json!({})), &pods, Some(&made)).is_none());
        assert!(desired(&web(json!({})), &[], Some(&made)).is_some());
    }
}
