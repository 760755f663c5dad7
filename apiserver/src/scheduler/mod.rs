//! The default scheduler (kube-scheduler's default profile, reduced): each
//! pending pod is bound to a node that passes the filters, preferring the
//! node with the fewest replicas of the same owner, then the least requested
//! one; a pod no node can take gets `PodScheduled=False` and a
//! `FailedScheduling` event with kube's message.
//!
//! The decisions are pure functions over the raw objects (tested below);
//! [`run`] feeds them from the informer caches and does the writes.
//! [`quantity`] and [`taints`] are shared with the node lifecycle controller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{Client, pod_path};
use crate::controllers::{Caches, record_event};

const SCHEDULER_NAME: &str = "default-scheduler";
/// A pod we bound counts as bound for this long even while the cache still
/// shows it unbound (kube's assumed-pod expiry is of the same order).
const ASSUME_TTL: Duration = Duration::from_secs(30);
/// Pending pods are retried at least this often (a failed bind, a write
/// that met a conflict) even when no cache changed.
const RESYNC: Duration = Duration::from_secs(5);
/// Lets a burst of cache changes (a ReplicaSet creating pods) land before
/// a round, so the round sees all of them.
const DEBOUNCE: Duration = Duration::from_millis(30);

/// Scores BestEffort pods as if they asked this much, so they spread too
/// (kube's `DefaultMilliCPURequest` and `DefaultMemoryRequest`).
const NONZERO_MILLI_CPU: i64 = 100;
const NONZERO_MEMORY: i64 = 200 * 1024 * 1024;
/// The seconds of the default not-ready/unreachable tolerations pods get;
/// the scheduler only asks whether a taint is tolerated, not for how long.
const DEFAULT_TOLERATION_SECONDS: i64 = 300;

pub mod quantity;

pub mod taints;

/// Resource amounts by name, in [`quantity::amount`] units.
pub type Resources = BTreeMap<String, i64>;

fn add_into(total: &mut Resources, more: &Resources) {
    for (k, v) in more {
        *total.entry(k.clone()).or_insert(0) += v;
    }
}

fn container_requests(container: &Value) -> Resources {
    let mut out = Resources::new();
    // Limits stand in for missing requests (kube's defaulting does this).
    for field in ["limits", "requests"] {
        let Some(m) = container
            .pointer(&format!("/resources/{field}"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (name, q) in m {
            if let Some(a) = quantity::amount(name, q) {
                out.insert(name.clone(), a);
            }
        }
    }
    out
}

fn containers<'a>(pod: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// What a pod asks of a node: per resource the sum over its containers, at
/// least the largest init container's (they run one at a time, before),
/// plus the pod's overhead.
pub fn pod_requests(pod: &Value) -> Resources {
    let mut total = Resources::new();
    for c in containers(pod, "containers") {
        add_into(&mut total, &container_requests(c));
    }
    for c in containers(pod, "initContainers") {
        for (k, v) in container_requests(c) {
            let e = total.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
    }
    if let Some(m) = pod.pointer("/spec/overhead").and_then(Value::as_object) {
        for (name, q) in m {
            if let Some(a) = quantity::amount(name, q) {
                *total.entry(name.clone()).or_insert(0) += a;
            }
        }
    }
    total
}

/// CPU and memory for scoring, with defaults for containers that ask none.
fn nonzero_requests(pod: &Value) -> (i64, i64) {
    containers(pod, "containers").fold((0, 0), |(cpu, mem), c| {
        let r = container_requests(c);
        (
            cpu + r.get("cpu").copied().unwrap_or(NONZERO_MILLI_CPU),
            mem + r.get("memory").copied().unwrap_or(NONZERO_MEMORY),
        )
    })
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The uid of the pod's controller (`ownerReferences[].controller`).
pub fn controller_uid(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
        .and_then(|r| r["uid"].as_str())
}

fn is_terminal(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// The status of the node's Ready condition, if it has one.
pub fn ready_status(node: &Value) -> Option<&str> {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
}

/// Whether the scheduler should place this pod now: unbound, not being
/// deleted, meant for this scheduler, not finished, not gated.
pub fn is_pending(pod: &Value) -> bool {
    let scheduler = str_at(pod, "/spec/schedulerName");
    let gated = pod
        .pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty());
    str_at(pod, "/spec/nodeName").is_empty()
        && pod.pointer("/metadata/deletionTimestamp").is_none()
        && (scheduler.is_empty() || scheduler == SCHEDULER_NAME)
        && !is_terminal(pod)
        && !gated
}

/// A node as the filters see it: the node and what its pods already take.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Value,
    requested: Resources,
    /// CPU and memory requested, defaults included (for scoring only).
    nonzero: (i64, i64),
    pods: i64,
    /// Pods on the node per controller uid (for spreading replicas).
    owners: HashMap<String, i64>,
}

impl NodeInfo {
    pub fn new(node: Value) -> NodeInfo {
        NodeInfo {
            node,
            requested: Resources::new(),
            nonzero: (0, 0),
            pods: 0,
            owners: HashMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        str_at(&self.node, "/metadata/name")
    }

    /// Counts `pod` as running here.
    pub fn add(&mut self, pod: &Value) {
        add_into(&mut self.requested, &pod_requests(pod));
        let (cpu, mem) = nonzero_requests(pod);
        self.nonzero.0 += cpu;
        self.nonzero.1 += mem;
        self.pods += 1;
        if let Some(uid) = controller_uid(pod) {
            *self.owners.entry(uid.to_string()).or_insert(0) += 1;
        }
    }

    /// What the node offers of `resource`. A node that reports neither
    /// allocatable nor capacity (a hand-made Node without status) is not
    /// limited; one that reports them but not `resource` offers none.
    fn allocatable(&self, resource: &str) -> Option<i64> {
        let status = &self.node["status"];
        let reported = ["allocatable", "capacity"]
            .iter()
            .find_map(|f| status.get(*f).and_then(Value::as_object))?;
        Some(
            reported
                .get(resource)
                .and_then(|q| quantity::amount(resource, q))
                .unwrap_or(0),
        )
    }
}

/// Every node with the pods bound to it (finished pods take nothing).
pub fn snapshot(nodes: &[Value], pods: &[Value]) -> BTreeMap<String, NodeInfo> {
    let mut infos: BTreeMap<String, NodeInfo> = nodes
        .iter()
        .map(|n| {
            (
                str_at(n, "/metadata/name").to_string(),
                NodeInfo::new(n.clone()),
            )
        })
        .collect();
    for pod in pods {
        if is_terminal(pod) {
            continue;
        }
        if let Some(info) = infos.get_mut(str_at(pod, "/spec/nodeName")) {
            info.add(pod);
        }
    }
    infos
}

/// Why a node cannot take a pod (one per node: the first failing filter,
/// in kube's plugin order; the resource filter lists every shortfall).
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    Unschedulable,
    Taint { key: String, value: String },
    Selector,
    Resources(Vec<String>),
}

impl Rejection {
    /// kube's reason strings, counted per node in the message.
    fn reasons(&self) -> Vec<String> {
        match self {
            Rejection::Unschedulable => vec!["node(s) were unschedulable".into()],
            Rejection::Taint { key, value } => {
                vec![format!("node(s) had untolerated taint {{{key}: {value}}}")]
            }
            Rejection::Selector => vec!["node(s) didn't match Pod's node affinity/selector".into()],
            Rejection::Resources(r) => r.clone(),
        }
    }

    /// Whether evicting other pods could make room (kube's `Unschedulable`
    /// as opposed to `UnschedulableAndUnresolvable`).
    fn preemption_might_help(&self) -> bool {
        matches!(self, Rejection::Resources(_))
    }
}

/// The taint a node that is not Ready will get from the node lifecycle
/// controller; checked here too so the cache lag before it is added does
/// not let pods onto a dead node.
fn readiness_taint(node: &Value) -> Option<Value> {
    let key = match ready_status(node) {
        Some("True") => return None,
        Some("Unknown") => taints::UNREACHABLE,
        _ => taints::NOT_READY,
    };
    Some(json!({"key": key, "effect": "NoSchedule"}))
}

fn matches_expression(expr: &Value, lookup: impl Fn(&str) -> Option<String>) -> bool {
    let key = str_at(expr, "/key");
    let values: Vec<&str> = expr["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let have = lookup(key);
    let number = |s: &str| s.parse::<i64>().ok();
    match str_at(expr, "/operator") {
        "In" => have.is_some_and(|h| values.contains(&h.as_str())),
        "NotIn" => have.is_none_or(|h| !values.contains(&h.as_str())),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(h), Some(v)) = (
                have.as_deref().and_then(number),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if str_at(expr, "/operator") == "Gt" {
                h > v
            } else {
                h < v
            }
        }
        _ => false,
    }
}

/// `spec.nodeSelector` and the required node affinity (its terms are ORed,
/// a term's expressions ANDed, an empty term matches nothing).
pub fn matches_node_selector(pod: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
    let selector_ok = pod
        .pointer("/spec/nodeSelector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k).as_deref() == v.as_str());
    if !selector_ok {
        return false;
    }
    let Some(terms) = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
    else {
        return true;
    };
    let field =
        |k: &str| (k == "metadata.name").then(|| str_at(node, "/metadata/name").to_string());
    terms.iter().any(|term| {
        let exprs = term["matchExpressions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let fields = term["matchFields"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|e| matches_expression(e, label))
            && fields.iter().all(|e| matches_expression(e, field))
    })
}

/// Whether `info`'s node can take `pod`, in kube's filter order:
/// NodeUnschedulable, TaintToleration, NodeAffinity, NodeResourcesFit.
pub fn filter(pod: &Value, tolerations: &[Value], info: &NodeInfo) -> Result<(), Rejection> {
    let node = &info.node;
    let cordoned = node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true);
    let cordon_taint = json!({"key": taints::UNSCHEDULABLE, "effect": "NoSchedule"});
    if cordoned && taints::matching(tolerations, &cordon_taint).is_none() {
        return Err(Rejection::Unschedulable);
    }
    let mut node_taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(t) = readiness_taint(node)
        && !node_taints
            .iter()
            .any(|n| taints::key(n) == taints::key(&t) && taints::effect(n) == "NoSchedule")
    {
        node_taints.push(t);
    }
    let untolerated = node_taints.iter().find(|t| {
        matches!(taints::effect(t), "NoSchedule" | "NoExecute")
            && taints::matching(tolerations, t).is_none()
    });
    if let Some(t) = untolerated {
        return Err(Rejection::Taint {
            key: taints::key(t).to_string(),
            value: taints::value(t).to_string(),
        });
    }
    if !matches_node_selector(pod, node) {
        return Err(Rejection::Selector);
    }
    let mut short = Vec::new();
    if info
        .allocatable("pods")
        .is_some_and(|max| info.pods + 1 > max)
    {
        short.push("Too many pods".to_string());
    }
    for (name, want) in pod_requests(pod) {
        if want <= 0 {
            continue;
        }
        let used = info.requested.get(&name).copied().unwrap_or(0);
        if info.allocatable(&name).is_some_and(|a| used + want > a) {
            short.push(format!("Insufficient {name}"));
        }
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(Rejection::Resources(short))
    }
}

/// kube's LeastAllocated score (0–100, higher is emptier) over CPU and
/// memory, counting the pod itself.
fn least_requested(pod: &Value, info: &NodeInfo) -> i64 {
    let (cpu, mem) = nonzero_requests(pod);
    let part = |requested: i64, resource: &str| match info.allocatable(resource) {
        Some(a) if a > 0 && requested <= a => (a - requested) * 100 / a,
        Some(_) => 0,
        None => 100,
    };
    (part(info.nonzero.0 + cpu, "cpu") + part(info.nonzero.1 + mem, "memory")) / 2
}

/// What to do with a pending pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Bind(String),
    Unschedulable(String),
}

/// Picks the node for `pod`: among the nodes that pass [`filter`], the one
/// with the fewest pods of the same controller, then the least requested,
/// then the first by name (kube breaks ties at random; a fixed order makes
/// the choice reproducible).
pub fn decide(pod: &Value, tolerations: &[Value], nodes: &BTreeMap<String, NodeInfo>) -> Decision {
    let owner = controller_uid(pod);
    let mut rejections = Vec::new();
    let mut best: Option<((i64, i64), &str)> = None;
    for (name, info) in nodes {
        match filter(pod, tolerations, info) {
            Err(r) => rejections.push(r),
            Ok(()) => {
                let same_owner = owner.and_then(|o| info.owners.get(o)).copied().unwrap_or(0);
                let key = (same_owner, -least_requested(pod, info));
                if best.is_none_or(|(b, _)| key < b) {
                    best = Some((key, name));
                }
            }
        }
    }
    match best {
        Some((_, name)) => Decision::Bind(name.to_string()),
        None => Decision::Unschedulable(unschedulable_message(pod, nodes.len(), &rejections)),
    }
}

/// Counts as kube's `FitError` prints them: "N reason", sorted as strings.
fn histogram(reasons: impl Iterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_insert(0) += 1;
    }
    let mut lines: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    lines.sort();
    lines.join(", ")
}

/// kube's message for a pod no node takes, e.g. "0/2 nodes are available:
/// 1 Insufficient cpu, 1 node(s) were unschedulable. preemption: 0/2 nodes
/// are available: 1 No preemption victims found for incoming pod, 1
/// Preemption is not helpful for scheduling." k3rs does not preempt; pods
/// of equal priority (all of them, by default) have no victims anyway.
pub fn unschedulable_message(pod: &Value, total: usize, rejections: &[Rejection]) -> String {
    if total == 0 {
        return "0/0 nodes are available: no nodes available to schedule pods.".into();
    }
    let filters = histogram(rejections.iter().flat_map(Rejection::reasons));
    let preemption = if str_at(pod, "/spec/preemptionPolicy") == "Never" {
        "not eligible due to preemptionPolicy=Never.".to_string()
    } else {
        let verdicts = histogram(rejections.iter().map(|r| {
            if r.preemption_might_help() {
                "No preemption victims found for incoming pod".to_string()
            } else {
                "Preemption is not helpful for scheduling".to_string()
            }
        }));
        format!("0/{total} nodes are available: {verdicts}.")
    };
    format!("0/{total} nodes are available: {filters}. preemption: {preemption}")
}

/// The message of the pod's current `PodScheduled=False` condition.
fn current_unschedulable_message(pod: &Value) -> Option<&str> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        .and_then(|c| c["message"].as_str())
}

/// The pod with its PodScheduled condition set to Unschedulable (the
/// transition time kept when it was already False).
pub fn with_unschedulable_condition(pod: &Value, message: &str, now: &str) -> Value {
    let mut out = pod.clone();
    let mut conditions: Vec<Value> = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let since = conditions
        .iter()
        .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now)
        .to_string();
    conditions.retain(|c| c["type"] != "PodScheduled");
    conditions.push(json!({
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null, "lastTransitionTime": since,
    }));
    if !out.get("status").is_some_and(Value::is_object) {
        out["status"] = json!({});
    }
    out["status"]["conditions"] = json!(conditions);
    out
}

/// The order pods are considered in: higher priority first, then older.
fn queue_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    let priority = |p: &Value| {
        p.pointer("/spec/priority")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    priority(b)
        .cmp(&priority(a))
        .then_with(|| {
            str_at(a, "/metadata/creationTimestamp").cmp(str_at(b, "/metadata/creationTimestamp"))
        })
        .then_with(|| str_at(a, "/metadata/namespace").cmp(str_at(b, "/metadata/namespace")))
        .then_with(|| str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name")))
}

fn uid_of(obj: &Value) -> &str {
    str_at(obj, "/metadata/uid")
}

/// Waits until `rx` changes; a closed channel never does.
/// The scheduler's memory between rounds.
#[derive(Default)]
struct Scheduler {
    /// Pods bound by us that the cache may not show bound yet, by uid.
    assumed: HashMap<String, (Value, Instant)>,
    /// The last unschedulable message written per pod uid (the cache may
    /// lag behind the write; this keeps the event from repeating).
    reported: HashMap<String, String>,
}

impl Scheduler {
    async fn round(&mut self, client: &Client, caches: &Caches) {
        let nodes = caches.nodes.list();
        let mut pods = caches.pods.list();
        let cached: HashMap<String, bool> = pods
            .iter()
            .map(|p| {
                (
                    uid_of(p).to_string(),
                    !str_at(p, "/spec/nodeName").is_empty(),
                )
            })
            .collect();
        self.assumed
            .retain(|uid, (_, at)| cached.get(uid) == Some(&false) && at.elapsed() < ASSUME_TTL);
        for pod in pods.iter_mut() {
            if let Some((bound, _)) = self.assumed.get(uid_of(pod)) {
                *pod = bound.clone();
            }
        }
        let mut infos = snapshot(&nodes, &pods);
        let mut pending: Vec<&Value> = pods.iter().filter(|p| is_pending(p)).collect();
        pending.sort_by(|a, b| queue_order(a, b));
        let pending_uids: HashSet<String> = pending.iter().map(|p| uid_of(p).to_string()).collect();
        self.reported.retain(|uid, _| pending_uids.contains(uid));
        for pod in pending {
            let tolerations =
                taints::with_defaults(&taints::of_pod(pod), DEFAULT_TOLERATION_SECONDS);
            match decide(pod, &tolerations, &infos) {
                Decision::Bind(node) => {
                    if let Some(bound) = bind(client, pod, &node).await {
                        if let Some(info) = infos.get_mut(&node) {
                            info.add(&bound);
                        }
                        self.reported.remove(uid_of(pod));
                        self.assumed
                            .insert(uid_of(pod).to_string(), (bound, Instant::now()));
                    }
                }
                Decision::Unschedulable(message) => {
                    let uid = uid_of(pod);
                    if self.reported.get(uid) == Some(&message)
                        || current_unschedulable_message(pod) == Some(message.as_str())
                    {
                        continue;
                    }
                    if report_unschedulable(client, pod, &message).await {
                        self.reported.insert(uid.to_string(), message);
                    }
                }
            }
        }
    }
}

/// POSTs the Binding; answers the pod as bound, or `None` when the server
/// refused (already bound or gone: the cache lagged; next round sees it).
async fn bind(client: &Client, pod: &Value, node: &str) -> Option<Value> {
    let ns = str_at(pod, "/metadata/namespace");
    let name = str_at(pod, "/metadata/name");
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    match client
        .create(&format!("{}/binding", pod_path(pod)), &binding)
        .await
    {
        Ok(_) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), node, "bound");
            let message = format!("Successfully assigned {ns}/{name} to {node}");
            record_event(client, pod, "Normal", "Scheduled", &message, SCHEDULER_NAME).await;
            let mut bound = pod.clone();
            bound["spec"]["nodeName"] = json!(node);
            Some(bound)
        }
        Err(e) if e.is_conflict() || e.is_not_found() => {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "binding refused");
            None
        }
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "binding failed");
            None
        }
    }
}

/// Writes `PodScheduled=False` (a PUT of the status with the cached
/// resourceVersion: a stale cache gets 409 and is retried next round) and
/// the `FailedScheduling` event; answers whether it was written.
async fn report_unschedulable(client: &Client, pod: &Value, message: &str) -> bool {
    let updated = with_unschedulable_condition(pod, message, &crate::objects::now());
    match client
        .update(&format!("{}/status", pod_path(pod)), &updated)
        .await
    {
        Ok(_) => {
            record_event(
                client,
                pod,
                "Warning",
                "FailedScheduling",
                message,
                SCHEDULER_NAME,
            )
            .await;
            true
        }
        Err(e) => {
            tracing::debug!(pod = %str_at(pod, "/metadata/name"), error = %e, "writing PodScheduled=False failed; retrying next round");
            false
        }
    }
}

/// Schedules pending pods until the process ends: a round on every pod or
/// node change (so unschedulable pods are retried when room appears) and
/// at least every [`RESYNC`].
pub async fn run(client: Client, caches: Caches) {
    caches.pods.wait_synced().await;
    caches.nodes.wait_synced().await;
    let mut changes = [caches.pods.changes(), caches.nodes.changes()];
    let mut scheduler = Scheduler::default();
    loop {
        scheduler.round(&client, &caches).await;
        crate::controllers::wait_for_change(&mut changes, RESYNC, DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, memory: &str, pods: &str) -> Value {
        json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory, "pods": pods},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        })
    }

    fn pod(name: &str, cpu: Option<&str>, memory: Option<&str>) -> Value {
        let mut requests = serde_json::Map::new();
        if let Some(c) = cpu {
            requests.insert("cpu".into(), json!(c));
        }
        if let Some(m) = memory {
            requests.insert("memory".into(), json!(m));
        }
        json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": requests}}]},
            "status": {"phase": "Pending"},
        })
    }

    fn owned(mut p: Value, owner: &str) -> Value {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": owner, "controller": true}]);
        p
    }

    fn bound(mut p: Value, node: &str) -> Value {
        p["spec"]["nodeName"] = json!(node);
        p
    }

    fn check(p: &Value, nodes: &[Value], pods: &[Value]) -> Decision {
        let infos = snapshot(nodes, pods);
        decide(p, &taints::with_defaults(&taints::of_pod(p), 300), &infos)
    }

    fn message(text: &str) -> Decision {
        Decision::Unschedulable(text.to_string())
    }

    #[test]
    fn quantities_parse_as_kube_does() {
        let cases = [
            ("100m", 3, 100),
            ("0.5", 3, 500),
            ("2", 3, 2000),
            ("1.5", 3, 1500),
            ("0.0001", 3, 1),
            ("128Mi", 0, 134_217_728),
            ("1Gi", 0, 1_073_741_824),
            ("1G", 0, 1_000_000_000),
            ("500k", 0, 500_000),
            ("1e3", 0, 1000),
            ("1E3", 0, 1000),
            ("2E", 0, 2_000_000_000_000_000_000),
            ("1.5Ki", 0, 1536),
            ("250u", 3, 1),
            ("0", 3, 0),
            ("10Ei", 0, i64::MAX),
        ];
        for (q, scale, want) in cases {
            assert_eq!(quantity::scaled(q, scale), Some(want), "{q}");
        }
        for bad in ["", "abc", "1.2.3", "5Xi", "1e"] {
            assert_eq!(quantity::scaled(bad, 0), None, "{bad}");
        }
        assert_eq!(quantity::amount("cpu", &json!(2)), Some(2000));
        assert_eq!(quantity::amount("memory", &json!("64Mi")), Some(67_108_864));
    }

    #[test]
    fn requests_sum_containers_and_fall_back_to_limits() {
        let p = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "memory": "1Gi"}}},
                {"resources": {"requests": {"cpu": "200m", "memory": "128Mi"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
        }});
        let r = pod_requests(&p);
        assert_eq!(r["cpu"], 2000, "the init container is the largest");
        assert_eq!(r["memory"], 1_073_741_824 + 134_217_728);
    }

    #[test]
    fn binds_to_a_ready_node_with_room() {
        let nodes = [node("a", "2", "4Gi", "110")];
        assert_eq!(
            check(&pod("p", Some("1"), Some("1Gi")), &nodes, &[]),
            Decision::Bind("a".into())
        );
    }

    #[test]
    fn resources_must_fit_allocatable_minus_bound_pods() {
        let nodes = [node("a", "1", "1Gi", "110")];
        let running = [bound(pod("r", Some("600m"), Some("512Mi")), "a")];
        assert_eq!(
            check(&pod("p", Some("500m"), Some("600Mi")), &nodes, &running),
            message(
                "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
            )
        );
        // Finished pods take nothing.
        let mut done = running[0].clone();
        done["status"]["phase"] = json!("Succeeded");
        assert_eq!(
            check(&pod("p", Some("500m"), Some("600Mi")), &nodes, &[done]),
            Decision::Bind("a".into())
        );
    }

    #[test]
    fn pod_count_is_limited() {
        let nodes = [node("a", "4", "4Gi", "1")];
        let running = [bound(pod("r", None, None), "a")];
        assert_eq!(
            check(&pod("p", None, None), &nodes, &running),
            message(
                "0/1 nodes are available: 1 Too many pods. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
            )
        );
    }

    #[test]
    fn taints_need_tolerations() {
        let mut n = node("a", "4", "4Gi", "110");
        n["spec"]["taints"] = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
        let nodes = [n];
        assert_eq!(
            check(&pod("p", None, None), &nodes, &[]),
            message(
                "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: db}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            )
        );
        for toleration in [
            json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "operator": "Exists"}),
            json!({"operator": "Exists"}),
        ] {
            let mut p = pod("p", None, None);
            p["spec"]["tolerations"] = json!([toleration]);
            assert_eq!(
                check(&p, &nodes, &[]),
                Decision::Bind("a".into()),
                "{toleration}"
            );
        }
        let mut p = pod("p", None, None);
        p["spec"]["tolerations"] =
            json!([{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]);
        assert!(matches!(check(&p, &nodes, &[]), Decision::Unschedulable(_)));
        // PreferNoSchedule does not filter.
        let mut soft = node("a", "4", "4Gi", "110");
        soft["spec"]["taints"] = json!([{"key": "k", "effect": "PreferNoSchedule"}]);
        assert_eq!(
            check(&pod("p", None, None), &[soft], &[]),
            Decision::Bind("a".into())
        );
    }

    #[test]
    fn not_ready_nodes_are_filtered_as_their_taint_would() {
        let mut unknown = node("a", "4", "4Gi", "110");
        unknown["status"]["conditions"][0]["status"] = json!("Unknown");
        let mut not_ready = node("b", "4", "4Gi", "110");
        not_ready["status"]["conditions"][0]["status"] = json!("False");
        assert_eq!(
            check(&pod("p", None, None), &[unknown.clone(), not_ready], &[]),
            message(
                "0/2 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
            )
        );
        // The default NoExecute toleration does not cover NoSchedule.
        let mut p = pod("p", None, None);
        p["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
        assert_eq!(check(&p, &[unknown], &[]), Decision::Bind("a".into()));
    }

    #[test]
    fn cordoned_nodes_are_unschedulable() {
        let mut n = node("a", "4", "4Gi", "110");
        n["spec"]["unschedulable"] = json!(true);
        n["spec"]["taints"] = json!([{"key": taints::UNSCHEDULABLE, "effect": "NoSchedule"}]);
        assert_eq!(
            check(&pod("p", None, None), &[n], &[]),
            message(
                "0/1 nodes are available: 1 node(s) were unschedulable. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            )
        );
    }

    #[test]
    fn node_selector_and_affinity_match_labels() {
        let mut ssd = node("a", "4", "4Gi", "110");
        ssd["metadata"]["labels"]["disk"] = json!("ssd");
        let nodes = [ssd, node("b", "4", "4Gi", "110")];
        let mut p = pod("p", None, None);
        p["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        assert_eq!(check(&p, &nodes, &[]), Decision::Bind("a".into()));
        p["spec"]["nodeSelector"] = json!({"disk": "hdd"});
        assert_eq!(
            check(&p, &nodes, &[]),
            message(
                "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
            )
        );
        let mut p = pod("p", None, None);
        p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}]},
        ]}}});
        assert_eq!(check(&p, &nodes, &[]), Decision::Bind("b".into()));
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] =
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]);
        assert_eq!(check(&p, &nodes, &[]), Decision::Bind("a".into()));
    }

    #[test]
    fn mixed_reasons_are_counted_and_sorted_like_kube() {
        let mut tainted = node("a", "4", "4Gi", "110");
        tainted["spec"]["taints"] = json!([{"key": taints::UNREACHABLE, "effect": "NoSchedule"}]);
        let mut labelled = node("b", "4", "4Gi", "110");
        labelled["metadata"]["labels"]["zone"] = json!("x");
        let mut p = pod("p", None, None);
        p["spec"]["nodeSelector"] = json!({"zone": "y"});
        assert_eq!(
            check(&p, &[tainted, labelled], &[]),
            message(
                "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
            )
        );
        assert_eq!(
            check(&pod("p", None, None), &[], &[]),
            message("0/0 nodes are available: no nodes available to schedule pods.")
        );
        let mut never = pod("p", Some("100"), None);
        never["spec"]["preemptionPolicy"] = json!("Never");
        assert_eq!(
            check(&never, &[node("a", "1", "1Gi", "110")], &[]),
            message(
                "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
            )
        );
    }

    #[test]
    fn replicas_spread_then_least_requested() {
        let nodes = [node("a", "4", "8Gi", "110"), node("b", "4", "8Gi", "110")];
        // b is busier, but a already holds a replica of the same owner.
        let running = [
            bound(owned(pod("r1", Some("100m"), None), "rs"), "a"),
            bound(pod("other", Some("2"), Some("4Gi")), "b"),
        ];
        let p = owned(pod("r2", Some("100m"), None), "rs");
        assert_eq!(check(&p, &nodes, &running), Decision::Bind("b".into()));
        // Without an owner, the emptier node wins.
        assert_eq!(
            check(&pod("x", Some("100m"), None), &nodes, &running),
            Decision::Bind("a".into())
        );
    }

    #[test]
    fn pods_bound_in_a_round_count_for_the_next() {
        let nodes = [node("a", "4", "8Gi", "110"), node("b", "4", "8Gi", "110")];
        let mut infos = snapshot(&nodes, &[]);
        let mut placed = Vec::new();
        for i in 0..4 {
            let p = owned(pod(&format!("r{i}"), None, None), "rs");
            let Decision::Bind(n) = decide(&p, &[], &infos) else {
                panic!("unschedulable")
            };
            infos.get_mut(&n).unwrap().add(&bound(p, &n));
            placed.push(n);
        }
        assert_eq!(placed, ["a", "b", "a", "b"]);
    }

    #[test]
    fn pending_means_unbound_for_this_scheduler() {
        let p = pod("p", None, None);
        assert!(is_pending(&p));
        assert!(!is_pending(&bound(p.clone(), "a")));
        let mut other = p.clone();
        other["spec"]["schedulerName"] = json!("custom");
        assert!(!is_pending(&other));
        let mut deleting = p.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(!is_pending(&deleting));
        let mut gated = p;
        gated["spec"]["schedulingGates"] = json!([{"name": "wait"}]);
        assert!(!is_pending(&gated));
    }

    #[test]
    fn the_unschedulable_condition_keeps_its_transition_time() {
        let p = pod("p", None, None);
        let first = with_unschedulable_condition(&p, "m1", "2026-01-01T00:00:00Z");
        let second = with_unschedulable_condition(&first, "m2", "2026-01-01T00:05:00Z");
        let c = &second["status"]["conditions"];
        assert_eq!(c.as_array().unwrap().len(), 1);
        assert_eq!(c[0]["message"], "m2");
        assert_eq!(c[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(current_unschedulable_message(&second), Some("m2"));
    }
}
