//! The EndpointSlice controller (kube-controller-manager's
//! `endpointslice`): for every Service with a selector, EndpointSlices
//! listing the pods it selects, with kube's ready, serving and terminating
//! conditions, ports resolved per pod, at most 100 endpoints a slice.
//!
//! [`endpoint_of`] and [`desired_groups`] say what a Service's pods make;
//! [`reconcile`] compares that with the slices that exist (pure, tested
//! below); `run` writes the difference. Services without a selector are
//! left alone: their slices are written by hand.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::Caches;
use super::replicaset::{
    DEBOUNCE, Expectation, Expectations, RESYNC, Want, is_terminating, key_of, str_at,
};
use crate::client::{Client, ClientError, resource_path};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice, and this controller's value.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Set on the slices and Endpoints of a Service without a cluster IP.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// kube-controller-manager's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

pub async fn run(client: Client, caches: Caches) {
    caches.pods.wait_synced().await;
    caches.services.wait_synced().await;
    caches.endpointslices.wait_synced().await;
    let mut changes = [
        caches.pods.changes(),
        caches.services.changes(),
        caches.endpointslices.changes(),
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

// ---------------------------------------------------------------------------
// What a Service's pods make (shared with the Endpoints controller).

/// Whether `svc` has a selector and selects `pod` (same namespace, every
/// selector label equal: a Service's selector is a plain map).
pub(crate) fn selects(svc: &Value, pod: &Value) -> bool {
    let Some(selector) = svc.pointer("/spec/selector").and_then(Value::as_object) else {
        return false;
    };
    if selector.is_empty()
        || str_at(svc, "/metadata/namespace") != str_at(pod, "/metadata/namespace")
    {
        return false;
    }
    let labels = &pod["metadata"]["labels"];
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether the controllers manage `svc`'s endpoints: it has a selector and
/// is not an ExternalName.
pub(crate) fn managed(svc: &Value) -> bool {
    let has_selector = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty());
    has_selector && str_at(svc, "/spec/type") != "ExternalName"
}

/// The pod's Ready condition is True.
pub(crate) fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// kube's `ShouldPodBeInEndpoints`: the pod has an IP and has not
/// finished; a terminating one only when `include_terminating`.
pub(crate) fn pod_in_endpoints(pod: &Value, include_terminating: bool) -> bool {
    !str_at(pod, "/status/podIP").is_empty()
        && (include_terminating || !is_terminating(pod))
        && !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// kube's `FindPort`: the container port a Service port's `targetPort`
/// names in this pod (matching its protocol), or its number; `None` when
/// the pod has no port of that name.
pub(crate) fn find_port(pod: &Value, svc_port: &Value) -> Option<i64> {
    let protocol = svc_port["protocol"].as_str().unwrap_or("TCP");
    match &svc_port["targetPort"] {
        Value::String(name) if name.parse::<i64>().is_err() => {
            let containers = pod.pointer("/spec/containers").and_then(Value::as_array);
            containers
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|p| {
                    p["name"].as_str() == Some(name.as_str())
                        && p["protocol"].as_str().unwrap_or("TCP") == protocol
                })
                .and_then(|p| p["containerPort"].as_i64())
        }
        Value::String(n) => n.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => svc_port["port"].as_i64(),
    }
}

/// kube's `ShouldSetHostname`: the pod names a hostname and this Service
/// as its subdomain.
pub(crate) fn hostname(svc: &Value, pod: &Value) -> Option<String> {
    let name = str_at(pod, "/spec/hostname");
    (!name.is_empty()
        && str_at(pod, "/spec/subdomain") == str_at(svc, "/metadata/name")
        && str_at(pod, "/metadata/namespace") == str_at(svc, "/metadata/namespace"))
    .then(|| name.to_string())
}

/// The reference to a pod endpoints carry.
pub(crate) fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": pod["metadata"]["namespace"],
           "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]})
}

/// The labels of what is derived from `svc`: its own, plus the headless
/// mark for a Service without a cluster IP.
pub(crate) fn derived_labels(svc: &Value) -> serde_json::Map<String, Value> {
    let mut labels = svc
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if str_at(svc, "/spec/clusterIP") == "None" {
        labels.insert(HEADLESS_LABEL.into(), json!(""));
    }
    labels
}

/// One pod's endpoint for `svc` and the ports it serves them on (kube's
/// `podToEndpoint` and `getEndpointPorts`); `None` for a pod that is not
/// an endpoint (no IPv4 address, finished).
pub fn endpoint_of(svc: &Value, pod: &Value) -> Option<(Vec<Value>, Value)> {
    if !pod_in_endpoints(pod, true) {
        return None;
    }
    let ip = str_at(pod, "/status/podIP");
    ip.parse::<std::net::Ipv4Addr>().ok()?;
    let publish = svc.pointer("/spec/publishNotReadyAddresses") == Some(&json!(true));
    let terminating = is_terminating(pod);
    let ready = publish || (pod_ready(pod) && !terminating);
    let serving = publish || pod_ready(pod);
    let mut endpoint = json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "targetRef": target_ref(pod),
    });
    let node = str_at(pod, "/spec/nodeName");
    if !node.is_empty() {
        endpoint["nodeName"] = json!(node);
    }
    if let Some(h) = hostname(svc, pod) {
        endpoint["hostname"] = json!(h);
    }
    let mut ports = Vec::new();
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(number) = find_port(pod, p) else {
            continue;
        };
        let mut port = json!({"name": p["name"].as_str().unwrap_or(""), "port": number,
                              "protocol": p["protocol"].as_str().unwrap_or("TCP")});
        if let Some(a) = p.get("appProtocol").filter(|a| !a.is_null()) {
            port["appProtocol"] = a.clone();
        }
        ports.push(port);
    }
    ports.sort_by_key(ports_key_of);
    Some((ports, endpoint))
}

fn ports_key_of(port: &Value) -> String {
    format!(
        "{}/{}",
        port["name"].as_str().unwrap_or(""),
        port["protocol"]
    )
}

/// A slice's ports as a comparable key (their order does not matter).
fn ports_key(ports: &[Value]) -> String {
    let mut ports: Vec<&Value> = ports.iter().collect();
    ports.sort_by_key(|p| ports_key_of(p));
    serde_json::to_string(&ports).unwrap_or_default()
}

/// The endpoints of `svc`'s pods grouped by the ports they serve on:
/// pods whose named ports resolve to different numbers land apart.
pub fn desired_groups(svc: &Value, pods: &[Value]) -> BTreeMap<String, (Vec<Value>, Vec<Value>)> {
    let mut selected: Vec<&Value> = pods.iter().filter(|p| selects(svc, p)).collect();
    selected.sort_by_key(|p| str_at(p, "/metadata/name"));
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in selected {
        if let Some((ports, endpoint)) = endpoint_of(svc, pod) {
            let entry = groups
                .entry(ports_key(&ports))
                .or_insert_with(|| (ports, Vec::new()));
            entry.1.push(endpoint);
        }
    }
    groups
}

// ---------------------------------------------------------------------------
// The difference with what exists.

/// The writes that make a Service's slices what its pods say.
#[derive(Debug, Default)]
pub struct Changes {
    pub create: Vec<Value>,
    /// Existing slices with their new content (metadata kept).
    pub update: Vec<Value>,
    pub delete: Vec<Value>,
}

/// The slice this controller makes for `svc` (named by the server from
/// `generateName`).
fn new_slice(svc: &Value, ports: &[Value], endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "generateName": format!("{}-", str_at(svc, "/metadata/name")),
            "namespace": svc["metadata"]["namespace"],
            "labels": slice_labels(svc),
            "ownerReferences": [owner_ref(svc)],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

fn slice_labels(svc: &Value) -> Value {
    let mut labels = derived_labels(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), svc["metadata"]["name"].clone());
    labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    Value::Object(labels)
}

fn owner_ref(svc: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "name": svc["metadata"]["name"],
           "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

/// `existing` with `svc`'s labels and owner and the given content; `None`
/// when that changes nothing.
fn updated(svc: &Value, existing: &Value, ports: &[Value], endpoints: Vec<Value>) -> Option<Value> {
    let mut next = existing.clone();
    next["metadata"]["labels"] = slice_labels(svc);
    next["metadata"]["ownerReferences"] = json!([owner_ref(svc)]);
    next["endpoints"] = json!(endpoints);
    next["ports"] = json!(ports);
    let same = |field: &str| {
        let empty = json!([]);
        existing
            .get(field)
            .filter(|v| !v.is_null())
            .unwrap_or(&empty)
            == &next[field]
    };
    let unchanged = same("endpoints")
        && same("ports")
        && existing["metadata"]["labels"] == next["metadata"]["labels"]
        && existing["metadata"]["ownerReferences"] == next["metadata"]["ownerReferences"];
    (!unchanged).then_some(next)
}

/// The first address of an endpoint, which identifies it across rounds.
fn address(endpoint: &Value) -> &str {
    endpoint
        .pointer("/addresses/0")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Decides the writes for `svc` given the pods of the cluster and the
/// slices this controller manages for it. An endpoint stays in the slice
/// that holds it while that slice keeps its ports; new ones fill slices
/// with room before a new slice is made. A Service without endpoints
/// keeps one empty placeholder slice, as kube's reconciler does.
pub fn reconcile(svc: &Value, pods: &[Value], existing: &[Value]) -> Changes {
    let mut changes = Changes::default();
    let mut groups = desired_groups(svc, pods);
    if groups.is_empty() {
        groups.insert(ports_key(&[]), (Vec::new(), Vec::new()));
    }
    let mut existing: Vec<&Value> = existing.iter().collect();
    existing.sort_by_key(|s| str_at(s, "/metadata/name"));
    let mut used: HashSet<&str> = HashSet::new();
    for (key, (ports, endpoints)) in groups {
        // The existing slices of these ports, each with its new endpoints.
        let mut slices: Vec<(Option<&Value>, Vec<Value>)> = existing
            .iter()
            .filter(|s| str_at(s, "/addressType") == "IPv4")
            .filter(|s| ports_key(s["ports"].as_array().map_or(&[][..], Vec::as_slice)) == key)
            .map(|s| (Some(*s), Vec::new()))
            .collect();
        let held = |slice: &Value, ep: &Value| {
            slice["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| address(e) == address(ep))
        };
        let mut homeless = Vec::new();
        for ep in endpoints {
            let home = slices.iter_mut().find(|(s, eps)| {
                s.is_some_and(|s| held(s, &ep)) && eps.len() < MAX_ENDPOINTS_PER_SLICE
            });
            match home {
                Some((_, eps)) => eps.push(ep),
                None => homeless.push(ep),
            }
        }
        for ep in homeless {
            match slices
                .iter_mut()
                .find(|(_, eps)| eps.len() < MAX_ENDPOINTS_PER_SLICE)
            {
                Some((_, eps)) => eps.push(ep),
                None => slices.push((None, vec![ep])),
            }
        }
        let placeholder = ports.is_empty() && slices.iter().all(|(_, eps)| eps.is_empty());
        let mut kept_placeholder = false;
        for (slice, mut eps) in slices {
            eps.sort_by_key(|e| str_at(e, "/targetRef/name").to_string());
            match slice {
                // The first empty slice of a placeholder round stays.
                Some(s) if eps.is_empty() && (kept_placeholder || !placeholder) => {
                    changes.delete.push(s.clone())
                }
                Some(s) => {
                    kept_placeholder |= placeholder;
                    used.insert(str_at(s, "/metadata/name"));
                    changes.update.extend(updated(svc, s, &ports, eps));
                }
                None => changes.create.push(new_slice(svc, &ports, eps)),
            }
        }
        if placeholder && !kept_placeholder {
            changes.create.push(new_slice(svc, &[], Vec::new()));
        }
    }
    // Slices of ports no endpoint serves on any more.
    for s in existing {
        let name = str_at(s, "/metadata/name");
        if !used.contains(name)
            && !changes
                .delete
                .iter()
                .any(|d| str_at(d, "/metadata/name") == name)
        {
            changes.delete.push(s.clone());
        }
    }
    changes
}

// ---------------------------------------------------------------------------
// Carrying the changes out.

async fn reconcile_all(client: &Client, caches: &Caches, expectations: &mut Expectations) {
    let pods = super::by_namespace(caches.pods.list());
    let slices = super::by_namespace(caches.endpointslices.list());
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
        let existing: Vec<Value> = slices
            .get(&ns)
            .into_iter()
            .flatten()
            .filter(|s| {
                s.pointer("/metadata/labels").is_some_and(|l| {
                    l[SERVICE_NAME_LABEL] == name && l[MANAGED_BY_LABEL] == MANAGED_BY
                })
            })
            .cloned()
            .collect();
        let ns_pods = pods.get(&ns).map(Vec::as_slice).unwrap_or_default();
        let changes = reconcile(svc, ns_pods, &existing);
        carry_out(client, caches, expectations, &uid, &ns, changes).await;
    }
}

async fn carry_out(
    client: &Client,
    caches: &Caches,
    expectations: &mut Expectations,
    uid: &str,
    ns: &str,
    changes: Changes,
) {
    let collection = resource_path("discovery.k8s.io/v1", "endpointslices", Some(ns), None);
    let expect = |name: String, want: Want| Expectation {
        informer: caches.endpointslices.clone(),
        namespace: ns.to_string(),
        name,
        want,
    };
    for slice in changes.create {
        match client.create(&collection, &slice).await {
            Ok(made) => expectations.expect(
                uid,
                expect(str_at(&made, "/metadata/name").into(), Want::Present),
            ),
            Err(e) => log_error("creating an endpointslice", ns, &e),
        }
    }
    for slice in changes.update {
        let name = str_at(&slice, "/metadata/name").to_string();
        let rv = str_at(&slice, "/metadata/resourceVersion").to_string();
        match client.update(&format!("{collection}/{name}"), &slice).await {
            Ok(_) => expectations.expect(uid, expect(name, Want::Changed(rv))),
            Err(e) => log_error("updating an endpointslice", ns, &e),
        }
    }
    for slice in changes.delete {
        let name = str_at(&slice, "/metadata/name").to_string();
        let options = json!({"preconditions": {"uid": slice["metadata"]["uid"]}});
        match client
            .delete(&format!("{collection}/{name}"), &options)
            .await
        {
            Ok(_) => expectations.expect(
                uid,
                expect(name, Want::Gone(str_at(&slice, "/metadata/uid").into())),
            ),
            Err(e) if e.is_not_found() => {}
            Err(e) => log_error("deleting an endpointslice", ns, &e),
        }
    }
}

/// A conflict means the cache was behind: the next round sees the news.
fn log_error(what: &str, namespace: &str, e: &ClientError) {
    if e.is_conflict() {
        tracing::debug!(namespace, error = %e, "{what}: conflict; retrying");
    } else {
        tracing::warn!(namespace, error = %e, "{what} failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"app": "web"}},
               "spec": spec})
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": {"phase": "Running", "podIP": ip,
                          "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn web() -> Value {
        svc(json!({"selector": {"app": "web"}, "clusterIP": "10.43.0.9",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}))
    }

    fn conditions(e: &Value) -> (bool, bool, bool) {
        let c = &e["conditions"];
        (
            c["ready"] == true,
            c["serving"] == true,
            c["terminating"] == true,
        )
    }

    #[test]
    fn endpoints_follow_readiness_and_termination() {
        let (ports, ep) = endpoint_of(&web(), &pod("a", "10.42.0.5", true)).unwrap();
        assert_eq!(
            ports,
            [json!({"name": "http", "port": 8080, "protocol": "TCP"})]
        );
        assert_eq!(ep["addresses"], json!(["10.42.0.5"]));
        assert_eq!(ep["nodeName"], "n1");
        assert_eq!(
            ep["targetRef"],
            json!({"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"})
        );
        assert_eq!(conditions(&ep), (true, true, false));
        let (_, ep) = endpoint_of(&web(), &pod("a", "10.42.0.5", false)).unwrap();
        assert_eq!(conditions(&ep), (false, false, false));
        let mut going = pod("a", "10.42.0.5", true);
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let (_, ep) = endpoint_of(&web(), &going).unwrap();
        assert_eq!(conditions(&ep), (false, true, true));
        let mut publish = web();
        publish["spec"]["publishNotReadyAddresses"] = json!(true);
        let (_, ep) = endpoint_of(&publish, &pod("a", "10.42.0.5", false)).unwrap();
        assert_eq!(conditions(&ep), (true, true, false));
        assert!(
            endpoint_of(&web(), &pod("a", "", true)).is_none(),
            "no IP yet"
        );
        let mut done = pod("a", "10.42.0.5", false);
        done["status"]["phase"] = json!("Succeeded");
        assert!(endpoint_of(&web(), &done).is_none(), "finished");
    }

    #[test]
    fn named_ports_resolve_per_pod_and_split_slices() {
        let mut other = pod("b", "10.42.0.6", true);
        other["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(9090);
        let mut portless = pod("c", "10.42.0.7", true);
        portless["spec"]["containers"][0]["ports"] = json!([]);
        let changes = reconcile(&web(), &[pod("a", "10.42.0.5", true), other, portless], &[]);
        assert!(changes.update.is_empty() && changes.delete.is_empty());
        let mut made: Vec<(i64, Vec<&str>)> = changes
            .create
            .iter()
            .map(|s| {
                let port = s["ports"]
                    .as_array()
                    .and_then(|p| p.first())
                    .map_or(0, |p| p["port"].as_i64().unwrap());
                (
                    port,
                    s["endpoints"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(address)
                        .collect(),
                )
            })
            .collect();
        made.sort();
        // A pod without the named port serves the Service on no port.
        assert_eq!(
            made,
            [
                (0, vec!["10.42.0.7"]),
                (8080, vec!["10.42.0.5"]),
                (9090, vec!["10.42.0.6"])
            ]
        );
        let s = &changes.create[0];
        assert_eq!(s["metadata"]["generateName"], "web-");
        assert_eq!(s["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(s["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(s["metadata"]["labels"]["app"], "web");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
        assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Service");
        assert_eq!(s["addressType"], "IPv4");
    }

    /// `changes.create` as if the server had stored them.
    fn stored(changes: Changes) -> Vec<Value> {
        changes
            .create
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s["metadata"]["name"] = json!(format!("web-{i:05}"));
                s["metadata"]["uid"] = json!(format!("slice-{i}"));
                s
            })
            .collect()
    }

    #[test]
    fn slices_hold_at_most_100_and_endpoints_stay_put() {
        let pods: Vec<Value> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.42.{}.{}", i / 200, i % 200 + 1),
                    true,
                )
            })
            .collect();
        let first = reconcile(&web(), &pods, &[]);
        let sizes: Vec<usize> = first
            .create
            .iter()
            .map(|s| s["endpoints"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        let existing = stored(first);
        // Nothing changed: nothing to write.
        let again = reconcile(&web(), &pods, &existing);
        assert!(
            again.create.is_empty() && again.update.is_empty() && again.delete.is_empty(),
            "{again:?}"
        );
        // One pod gone from the first slice, one new: only slices that
        // change are written, and the newcomer fills the hole.
        let mut next: Vec<Value> = pods
            .iter()
            .filter(|p| p["metadata"]["name"] != "p000")
            .cloned()
            .collect();
        next.push(pod("zzz", "10.42.9.9", true));
        let changes = reconcile(&web(), &next, &existing);
        assert!(changes.create.is_empty() && changes.delete.is_empty());
        assert_eq!(changes.update.len(), 1);
        let eps = changes.update[0]["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 100);
        assert!(eps.iter().any(|e| address(e) == "10.42.9.9"));
    }

    #[test]
    fn no_endpoints_leave_one_empty_placeholder() {
        let existing = stored(reconcile(&web(), &[pod("a", "10.42.0.5", true)], &[]));
        let changes = reconcile(&web(), &[], &existing);
        assert_eq!(changes.delete.len(), 1);
        assert_eq!(changes.create.len(), 1);
        assert_eq!(changes.create[0]["endpoints"], json!([]));
        assert_eq!(changes.create[0]["ports"], json!([]));
        let placeholder = stored(changes);
        let steady = reconcile(&web(), &[], &placeholder);
        assert!(steady.create.is_empty() && steady.update.is_empty() && steady.delete.is_empty());
        // Pods coming back replace the placeholder.
        let back = reconcile(&web(), &[pod("a", "10.42.0.5", true)], &placeholder);
        assert_eq!((back.create.len(), back.delete.len()), (1, 1));
    }

    #[test]
    fn headless_and_selectorless_services() {
        let mut headless = web();
        headless["spec"]["clusterIP"] = json!("None");
        headless["spec"]["ports"] = json!([]);
        let mut named = pod("a", "10.42.0.5", true);
        named["spec"]["hostname"] = json!("a");
        named["spec"]["subdomain"] = json!("web");
        let changes = reconcile(&headless, &[named], &[]);
        let s = &changes.create[0];
        assert_eq!(s["metadata"]["labels"][HEADLESS_LABEL], "");
        assert_eq!(s["ports"], json!([]));
        assert_eq!(s["endpoints"][0]["hostname"], "a");
        assert!(managed(&headless));
        let selectorless = svc(json!({"ports": [{"port": 80}]}));
        assert!(!managed(&selectorless));
        assert!(!selects(&selectorless, &pod("a", "10.42.0.5", true)));
        let external = svc(json!({"type": "ExternalName", "selector": {"app": "web"}}));
        assert!(!managed(&external));
    }

    #[test]
    fn numeric_target_ports_and_other_namespaces() {
        let numeric = svc(
            json!({"selector": {"app": "web"}, "ports": [{"name": "", "port": 80, "protocol": "UDP", "targetPort": 5353}]}),
        );
        let (ports, _) = endpoint_of(&numeric, &pod("a", "10.42.0.5", true)).unwrap();
        assert_eq!(
            ports,
            [json!({"name": "", "port": 5353, "protocol": "UDP"})]
        );
        let mut elsewhere = pod("a", "10.42.0.5", true);
        elsewhere["metadata"]["namespace"] = json!("other");
        assert!(!selects(&web(), &elsewhere));
    }
}
