//! The node lifecycle controller, with the taint-based eviction and the pod
//! garbage collection that go with it upstream:
//! - a node whose heartbeat (its Lease in `kube-node-lease`, or its Ready
//!   condition) is older than `node_monitor_grace` gets every condition
//!   `Unknown`, and its pods lose `Ready`;
//! - nodes carry the `node.kubernetes.io/*` taints their state implies
//!   (unreachable, not-ready, unschedulable, pressure), removed when it ends;
//! - pods on a node with a `NoExecute` taint they do not tolerate are
//!   deleted, at once or after their `tolerationSeconds`;
//! - pods whose node is lost or gone are force-deleted (see
//!   [`should_force_delete`] and [`round`]), since no agent will finish them.
//!
//! Decisions are pure functions of the objects and the time (tested below).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Caches, Config, record_event};
use crate::client::{Client, ClientResult, pod_path, resource_path};
use crate::scheduler::{ready_status, taints};

/// Nodes are checked this often even when no cache changes: staleness is
/// a matter of time passing, not of events.
const TICK: Duration = Duration::from_secs(1);
/// Lets a burst of changes land before a round.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A pod evicted or force-deleted is not acted on again for this long,
/// while the cache catches up with the write.
const ACTED_TTL: Duration = Duration::from_secs(30);

const CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// The NoSchedule taints kube's controller derives from a node condition
/// being True.
const PRESSURE_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Milliseconds since the epoch of an RFC 3339 UTC time, with or without a
/// fraction ("2026-11-28T16:15:47.123456Z").
pub fn time_ms(s: &str) -> Option<i64> {
    let secs = crate::objects::parse_rfc3339(s)?;
    let frac = s
        .get(19..)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(|rest| {
            let digits: String = rest
                .chars()
                .take_while(char::is_ascii_digit)
                .take(3)
                .collect();
            format!("{digits:0<3}").parse::<i64>().unwrap_or(0)
        })
        .unwrap_or(0);
    Some(secs * 1000 + frac)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn condition<'a>(node: &'a Value, kind: &str) -> Option<&'a Value> {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == kind)
}

/// The node's last sign of life: the later of its Lease's `renewTime` and
/// its Ready condition's `lastHeartbeatTime`; its creation when it never
/// sent either. (kube times the changes with its own clock; the agents'
/// timestamps are used here, which assumes the clocks agree.)
pub fn last_heartbeat(node: &Value, lease: Option<&Value>) -> Option<i64> {
    let renewed = lease.and_then(|l| time_ms(str_at(l, "/spec/renewTime")));
    let posted = condition(node, "Ready").and_then(|c| time_ms(str_at(c, "/lastHeartbeatTime")));
    renewed
        .max(posted)
        .or_else(|| time_ms(str_at(node, "/metadata/creationTimestamp")))
}

/// How the controller sees a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    Ready,
    /// Its agent says it is not ready.
    NotReady,
    /// Its agent stopped posting (or the Ready condition says Unknown).
    Unknown,
}

/// The node's health at `now`: `Unknown` once its heartbeat is older than
/// `grace`, else what its Ready condition says; `None` while a fresh node
/// has no Ready condition yet.
pub fn health(node: &Value, lease: Option<&Value>, now: i64, grace: Duration) -> Option<Health> {
    let stale = last_heartbeat(node, lease).is_none_or(|t| now - t > grace.as_millis() as i64);
    if stale {
        return Some(Health::Unknown);
    }
    match ready_status(node)? {
        "True" => Some(Health::Ready),
        "False" => Some(Health::NotReady),
        _ => Some(Health::Unknown),
    }
}

/// The node's conditions after its agent stopped posting: Ready and the
/// pressure conditions `Unknown` (their heartbeat kept, their transition
/// `now`), the missing ones added; `None` when they already are.
pub fn unknown_conditions(node: &Value, now: &str) -> Option<Vec<Value>> {
    let mut conditions: Vec<Value> = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut changed = false;
    for kind in CONDITIONS {
        match conditions.iter_mut().find(|c| c["type"] == kind) {
            Some(c) if c["status"] == "Unknown" => {}
            Some(c) => {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now);
                changed = true;
            }
            None => {
                conditions.push(json!({
                    "type": kind, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                    "message": "Kubelet never posted node status.",
                    "lastHeartbeatTime": node["metadata"]["creationTimestamp"],
                    "lastTransitionTime": now,
                }));
                changed = true;
            }
        }
    }
    changed.then_some(conditions)
}

/// Whether this controller owns the taint (it adds and removes it).
fn managed(taint: &Value) -> bool {
    let key = taints::key(taint);
    key == taints::NOT_READY
        || key == taints::UNREACHABLE
        || key == taints::UNSCHEDULABLE
        || PRESSURE_TAINTS.iter().any(|(_, k)| *k == key)
}

/// The managed taints the node should carry; `None` for the readiness ones
/// means "no opinion yet" (a node still registering keeps what it has).
fn wanted_taints(node: &Value, health: Option<Health>) -> Vec<(&'static str, &'static str)> {
    let mut wanted = Vec::new();
    let readiness = match health {
        Some(Health::NotReady) => Some(taints::NOT_READY),
        Some(Health::Unknown) => Some(taints::UNREACHABLE),
        _ => None,
    };
    if let Some(key) = readiness {
        wanted.push((key, "NoSchedule"));
        wanted.push((key, "NoExecute"));
    }
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        wanted.push((taints::UNSCHEDULABLE, "NoSchedule"));
    }
    for (kind, key) in PRESSURE_TAINTS {
        if health != Some(Health::Unknown)
            && condition(node, kind).is_some_and(|c| c["status"] == "True")
        {
            wanted.push((key, "NoSchedule"));
        }
    }
    wanted
}

/// The node's taints with the managed ones brought in line with `health`
/// and its spec and conditions (others kept, in order; kept taints keep
/// their `timeAdded`; new NoExecute ones get `now`); `None` when unchanged.
pub fn reconciled_taints(node: &Value, health: Option<Health>, now: &str) -> Option<Vec<Value>> {
    let current: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let wanted = wanted_taints(node, health);
    let is_wanted = |t: &Value| {
        wanted
            .iter()
            .any(|(k, e)| taints::key(t) == *k && taints::effect(t) == *e)
    };
    let keep_readiness = health.is_none();
    let mut out: Vec<Value> = current
        .iter()
        .filter(|t| {
            let readiness =
                matches!(taints::key(t), k if k == taints::NOT_READY || k == taints::UNREACHABLE);
            !managed(t) || is_wanted(t) || (keep_readiness && readiness)
        })
        .cloned()
        .collect();
    for (key, effect) in &wanted {
        if !out
            .iter()
            .any(|t| taints::key(t) == *key && taints::effect(t) == *effect)
        {
            let mut taint = json!({"key": key, "effect": effect});
            if *effect == "NoExecute" {
                taint["timeAdded"] = json!(now);
            }
            out.push(taint);
        }
    }
    (out != current).then_some(out)
}

/// When kube's taint manager deletes a pod from its node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eviction {
    Never,
    Now,
    /// At this time (ms since the epoch).
    At(i64),
}

/// The eviction of `pod` from `node` at `now`: at once when a NoExecute
/// taint is not tolerated; else when the first toleration with
/// `tolerationSeconds` runs out, counted from its taint's `timeAdded`
/// (tolerations without seconds tolerate forever). Pods get the default
/// not-ready/unreachable tolerations of `default_seconds` unless they say
/// otherwise (DefaultTolerationSeconds).
pub fn eviction(pod: &Value, node: &Value, default_seconds: i64, now: i64) -> Eviction {
    let tolerations = taints::with_defaults(&taints::of_pod(pod), default_seconds);
    let mut deadline: Option<i64> = None;
    let no_execute = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| taints::effect(t) == "NoExecute");
    for taint in no_execute {
        let Some(toleration) = taints::matching(&tolerations, taint) else {
            return Eviction::Now;
        };
        if let Some(seconds) = toleration["tolerationSeconds"].as_i64() {
            let added = time_ms(str_at(taint, "/timeAdded")).unwrap_or(now);
            let at = added + seconds.max(0) * 1000;
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
    }
    match deadline {
        None => Eviction::Never,
        Some(at) if at <= now => Eviction::Now,
        Some(at) => Eviction::At(at),
    }
}

/// Whether a terminating pod on a lost node is removed without its agent.
///
/// Upstream such a pod stays Terminating until PodGC removes it (the node
/// deleted, or tainted `node.kubernetes.io/out-of-service`). k3rs removes
/// it on its own so the pod list stays truthful, by this rule: the node's
/// Ready condition has been `Unknown` since `T`, and `now` is past both the
/// pod's `deletionTimestamp` (the end of its grace period, as the server
/// sets it) and `T + deletionGracePeriodSeconds` (the node was gone for at
/// least a whole grace period). A node that comes back within that time
/// finishes its pods itself.
pub fn should_force_delete(pod: &Value, node: &Value, now: i64) -> bool {
    let Some(deleting_at) = time_ms(str_at(pod, "/metadata/deletionTimestamp")) else {
        return false;
    };
    let Some(ready) = condition(node, "Ready").filter(|c| c["status"] == "Unknown") else {
        return false;
    };
    let Some(unknown_since) = time_ms(str_at(ready, "/lastTransitionTime")) else {
        return false;
    };
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .max(0);
    now >= deleting_at.max(unknown_since + grace * 1000)
}

/// The pod with its Ready condition False (kube's `MarkPodsNotReady`, so
/// Services stop sending to a lost node); `None` unless it was True.
pub fn marked_not_ready(pod: &Value, now: &str) -> Option<Value> {
    let conditions = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)?;
    let i = conditions
        .iter()
        .position(|c| c["type"] == "Ready" && c["status"] == "True")?;
    let mut out = pod.clone();
    out["status"]["conditions"][i]["status"] = json!("False");
    out["status"]["conditions"][i]["lastTransitionTime"] = json!(now);
    Some(out)
}

/// The node with `timeAdded` filled in, from when this controller first
/// saw them, on NoExecute taints added without one (`kubectl taint`).
fn with_taint_times(node: &Value, first_seen: &mut HashMap<String, i64>, now: i64) -> Value {
    let mut out = node.clone();
    let name = str_at(node, "/metadata/name");
    if let Some(list) = out
        .pointer_mut("/spec/taints")
        .and_then(Value::as_array_mut)
    {
        for t in list.iter_mut().filter(|t| taints::effect(t) == "NoExecute") {
            if time_ms(str_at(t, "/timeAdded")).is_none() {
                let key = format!("{name}\n{}\n{}", taints::key(t), taints::value(t));
                let seen = *first_seen.entry(key).or_insert(now);
                t["timeAdded"] = json!(crate::objects::rfc3339(seen / 1000));
            }
        }
    }
    out
}

fn pod_label(pod: &Value) -> String {
    format!(
        "{}/{}",
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name")
    )
}

/// Conflicts and vanished objects are the cache lagging: the next round
/// sees the truth and tries again.
fn log_write(what: &str, target: &str, result: &ClientResult<Value>) {
    match result {
        Ok(_) => {}
        Err(e) if e.is_conflict() || e.is_not_found() => {
            tracing::debug!(target, error = %e, "{what} raced; retrying next round");
        }
        Err(e) => tracing::warn!(target, error = %e, "{what} failed"),
    }
}

/// The controller's memory between rounds.
struct Lifecycle {
    config: Config,
    /// When NoExecute taints without `timeAdded` were first seen.
    first_seen: HashMap<String, i64>,
    /// When each missing node was first found missing (PodGC's quarantine).
    missing_since: HashMap<String, i64>,
    /// Pods evicted or force-deleted recently, by uid.
    acted: HashMap<String, Instant>,
}

impl Lifecycle {
    /// Brings one node's conditions and taints in line; answers the node
    /// as written (or as cached when a write failed).
    async fn reconcile_node(
        &self,
        client: &Client,
        caches: &Caches,
        mut node: Value,
        now: i64,
    ) -> Value {
        let name = str_at(&node, "/metadata/name").to_string();
        let stamp = crate::objects::rfc3339(now / 1000);
        let lease = caches.leases.get(Some("kube-node-lease"), &name);
        let health = health(&node, lease.as_ref(), now, self.config.node_monitor_grace);
        let path = resource_path("v1", "nodes", None, Some(&name));
        if health == Some(Health::Unknown)
            && let Some(conditions) = unknown_conditions(&node, &stamp)
        {
            let was_unknown = ready_status(&node) == Some("Unknown");
            let mut updated = node.clone();
            updated["status"]["conditions"] = json!(conditions);
            let result = client.update(&format!("{path}/status"), &updated).await;
            log_write("marking a node Unknown", &name, &result);
            let Ok(written) = result else { return node };
            tracing::info!(node = %name, "node stopped posting status; marked Unknown");
            if !was_unknown {
                let message = format!("Node {name} status is now: NodeNotReady");
                record_event(
                    client,
                    &written,
                    "Normal",
                    "NodeNotReady",
                    &message,
                    "node-controller",
                )
                .await;
            }
            node = written;
        }
        if let Some(new_taints) = reconciled_taints(&node, health, &stamp) {
            let mut updated = node.clone();
            updated["spec"]["taints"] = json!(new_taints);
            let result = client.update(&path, &updated).await;
            log_write("updating node taints", &name, &result);
            if let Ok(written) = result {
                node = written;
            }
        }
        node
    }

    /// Whether the node is really gone (a GET confirms the cache) and has
    /// been for at least the grace period, so a pod bound to a node about
    /// to register is not taken for an orphan.
    async fn node_gone(
        &mut self,
        client: &Client,
        name: &str,
        confirmed: &mut HashMap<String, bool>,
        now: i64,
    ) -> bool {
        if let Some(gone) = confirmed.get(name) {
            return *gone;
        }
        let missing = matches!(
            client.get(&resource_path("v1", "nodes", None, Some(name))).await,
            Err(e) if e.is_not_found()
        );
        let gone = missing && {
            let since = *self.missing_since.entry(name.to_string()).or_insert(now);
            now - since >= self.config.node_monitor_grace.as_millis() as i64
        };
        if !missing {
            self.missing_since.remove(name);
        }
        confirmed.insert(name.to_string(), gone);
        gone
    }

    async fn round(&mut self, client: &Client, caches: &Caches) {
        let now = now_ms();
        let stamp = crate::objects::rfc3339(now / 1000);
        let mut nodes = BTreeMap::new();
        for node in caches.nodes.list() {
            let name = str_at(&node, "/metadata/name").to_string();
            let node = self.reconcile_node(client, caches, node, now).await;
            nodes.insert(name, node);
        }
        self.first_seen
            .retain(|k, _| nodes.contains_key(k.split('\n').next().unwrap_or("")));
        let nodes: BTreeMap<String, Value> = nodes
            .into_iter()
            .map(|(n, v)| {
                let timed = with_taint_times(&v, &mut self.first_seen, now);
                (n, timed)
            })
            .collect();
        self.missing_since.retain(|n, _| !nodes.contains_key(n));
        self.acted.retain(|_, at| at.elapsed() < ACTED_TTL);
        let default_seconds = self.config.default_toleration.as_secs() as i64;
        let mut confirmed_gone = HashMap::new();
        for pod in caches.pods.list() {
            let node_name = str_at(&pod, "/spec/nodeName");
            let uid = str_at(&pod, "/metadata/uid").to_string();
            if node_name.is_empty() || self.acted.contains_key(&uid) {
                continue;
            }
            let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
            let Some(node) = nodes.get(node_name) else {
                // PodGC: a pod bound to a node that no longer exists.
                if self
                    .node_gone(client, node_name, &mut confirmed_gone, now)
                    .await
                {
                    self.force_delete(client, &pod, "its node is gone").await;
                }
                continue;
            };
            if deleting {
                if should_force_delete(&pod, node, now) {
                    self.force_delete(client, &pod, "its node is lost").await;
                }
                continue;
            }
            if ready_status(node) == Some("Unknown")
                && let Some(updated) = marked_not_ready(&pod, &stamp)
            {
                let result = client
                    .update(&format!("{}/status", pod_path(&pod)), &updated)
                    .await;
                log_write("marking a pod not ready", &pod_label(&pod), &result);
                if result.is_ok() {
                    record_event(
                        client,
                        &pod,
                        "Warning",
                        "NodeNotReady",
                        "Node is not ready",
                        "node-controller",
                    )
                    .await;
                }
            }
            if eviction(&pod, node, default_seconds, now) == Eviction::Now {
                self.evict(client, &pod).await;
            }
        }
    }

    async fn evict(&mut self, client: &Client, pod: &Value) {
        let label = pod_label(pod);
        let result = client.delete(&pod_path(pod), &json!({})).await;
        log_write("evicting a pod", &label, &result);
        if result.is_ok() {
            tracing::info!(pod = %label, "evicted by a NoExecute taint");
            self.acted
                .insert(str_at(pod, "/metadata/uid").to_string(), Instant::now());
            let message = format!("Marking for deletion Pod {label}");
            record_event(
                client,
                pod,
                "Normal",
                "TaintManagerEviction",
                &message,
                "taint-eviction-controller",
            )
            .await;
        }
    }

    async fn force_delete(&mut self, client: &Client, pod: &Value, why: &str) {
        let label = pod_label(pod);
        let uid = str_at(pod, "/metadata/uid");
        let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
        let result = client.delete(&pod_path(pod), &options).await;
        log_write("force-deleting a pod", &label, &result);
        if result.is_ok() {
            tracing::info!(pod = %label, why, "force-deleted");
            self.acted.insert(uid.to_string(), Instant::now());
        }
    }
}

/// Waits until `rx` changes; a closed channel never does.
/// Watches nodes until the process ends: a round on every node, lease or
/// pod change and every [`TICK`].
pub async fn run(client: Client, caches: Caches, config: Config) {
    caches.nodes.wait_synced().await;
    caches.leases.wait_synced().await;
    caches.pods.wait_synced().await;
    let mut changes = [
        caches.nodes.changes(),
        caches.leases.changes(),
        caches.pods.changes(),
    ];
    let mut lifecycle = Lifecycle {
        config,
        first_seen: HashMap::new(),
        missing_since: HashMap::new(),
        acted: HashMap::new(),
    };
    loop {
        lifecycle.round(&client, &caches).await;
        super::wait_for_change(&mut changes, TICK, DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(40);
    /// 2026-11-28T12:00:00Z.
    const NOON: i64 = 1_795_867_200_000;

    fn at(offset_secs: i64) -> String {
        crate::objects::rfc3339(NOON / 1000 + offset_secs)
    }

    fn node(ready: &str, heartbeat: i64) -> Value {
        let c = |t: &str, s: &str| {
            json!({"type": t, "status": s, "reason": "KubeletReady",
            "lastHeartbeatTime": at(heartbeat), "lastTransitionTime": at(-3600)})
        };
        json!({
            "metadata": {"name": "n1", "creationTimestamp": at(-7200)},
            "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
            "status": {"conditions": [
                c("MemoryPressure", "False"), c("DiskPressure", "False"),
                c("PIDPressure", "False"), c("Ready", ready),
            ]},
        })
    }

    fn lease(renewed: &str) -> Value {
        json!({"spec": {"holderIdentity": "n1", "renewTime": renewed}})
    }

    fn keys(taints: &[Value]) -> Vec<String> {
        taints
            .iter()
            .map(|t| format!("{}:{}", taints::key(t), taints::effect(t)))
            .collect()
    }

    fn pod(tolerations: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"},
               "spec": {"nodeName": "n1", "tolerations": tolerations}})
    }

    fn tainted(key: &str, added: i64) -> Value {
        let mut n = node("Unknown", -600);
        n["spec"]["taints"] = json!([
            {"key": key, "effect": "NoSchedule"},
            {"key": key, "effect": "NoExecute", "timeAdded": at(added)},
        ]);
        n
    }

    #[test]
    fn times_parse_with_fractions() {
        assert_eq!(time_ms("2026-11-28T12:00:00Z"), Some(NOON));
        assert_eq!(time_ms("2026-11-28T12:00:00.123456Z"), Some(NOON + 123));
        assert_eq!(time_ms("2026-11-28T12:00:00.5Z"), Some(NOON + 500));
        assert_eq!(time_ms("soon"), None);
    }

    #[test]
    fn the_lease_is_the_heartbeat() {
        let n = node("True", -600);
        // The lease renewed 10 s ago keeps the node Ready despite an old status.
        let fresh = lease("2026-11-28T11:59:50.250000Z");
        assert_eq!(last_heartbeat(&n, Some(&fresh)), Some(NOON - 9750));
        assert_eq!(health(&n, Some(&fresh), NOON, GRACE), Some(Health::Ready));
        // Without a lease the Ready condition's heartbeat counts.
        assert_eq!(health(&n, None, NOON, GRACE), Some(Health::Unknown));
        assert_eq!(
            health(&node("True", -5), None, NOON, GRACE),
            Some(Health::Ready)
        );
        assert_eq!(
            health(&node("False", -5), None, NOON, GRACE),
            Some(Health::NotReady)
        );
        // A node that never posted anything counts from its creation.
        let bare = json!({"metadata": {"name": "n", "creationTimestamp": at(-10)}});
        assert_eq!(health(&bare, None, NOON, GRACE), None);
        assert_eq!(
            health(&bare, None, NOON + 60_000, GRACE),
            Some(Health::Unknown)
        );
    }

    #[test]
    fn a_stale_node_turns_unknown_and_tainted() {
        let n = node("True", -600);
        let stale = lease(&at(-60));
        let h = health(&n, Some(&stale), NOON, GRACE);
        assert_eq!(h, Some(Health::Unknown));
        let conditions = unknown_conditions(&n, &at(0)).expect("changed");
        assert_eq!(conditions.len(), 4);
        for c in &conditions {
            assert_eq!(c["status"], "Unknown");
            assert_eq!(c["reason"], "NodeStatusUnknown");
            assert_eq!(c["message"], "Kubelet stopped posting node status.");
            assert_eq!(c["lastTransitionTime"], at(0));
            assert_eq!(c["lastHeartbeatTime"], at(-600), "the heartbeat is kept");
        }
        let mut marked = n.clone();
        marked["status"]["conditions"] = json!(conditions);
        assert_eq!(unknown_conditions(&marked, &at(5)), None, "already Unknown");
        let t = reconciled_taints(&marked, h, &at(0)).expect("changed");
        assert_eq!(
            keys(&t),
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/unreachable:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute"
            ]
        );
        assert_eq!(t[2]["timeAdded"], at(0));
        assert!(t[1].get("timeAdded").is_none());
        marked["spec"]["taints"] = json!(t);
        assert_eq!(
            reconciled_taints(&marked, h, &at(30)),
            None,
            "timeAdded is kept"
        );
    }

    #[test]
    fn a_node_that_never_posted_gets_unknown_conditions() {
        let bare = json!({"metadata": {"name": "n", "creationTimestamp": at(-100)}});
        let c = unknown_conditions(&bare, &at(0)).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c[0]["reason"], "NodeStatusNeverUpdated");
        assert_eq!(c[0]["lastHeartbeatTime"], at(-100));
    }

    #[test]
    fn not_ready_nodes_get_the_not_ready_taints() {
        let n = node("False", -5);
        let h = health(&n, None, NOON, GRACE);
        let t = reconciled_taints(&n, h, &at(0)).unwrap();
        assert_eq!(
            keys(&t),
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/not-ready:NoSchedule",
                "node.kubernetes.io/not-ready:NoExecute"
            ]
        );
    }

    #[test]
    fn a_recovered_node_loses_the_taints() {
        let mut n = tainted(taints::UNREACHABLE, -100);
        n["spec"]["taints"].as_array_mut().unwrap().insert(
            0,
            json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"}),
        );
        // Its agent is back: lease fresh, Ready True again.
        n["status"]["conditions"] = node("True", -2)["status"]["conditions"].clone();
        let h = health(&n, Some(&lease(&at(-1))), NOON, GRACE);
        assert_eq!(h, Some(Health::Ready));
        assert_eq!(
            keys(&reconciled_taints(&n, h, &at(0)).unwrap()),
            ["dedicated:NoSchedule"]
        );
        // Unknown → NotReady swaps the taints.
        let h = Some(Health::NotReady);
        let t = reconciled_taints(&tainted(taints::UNREACHABLE, -100), h, &at(0)).unwrap();
        assert_eq!(
            keys(&t),
            [
                "node.kubernetes.io/not-ready:NoSchedule",
                "node.kubernetes.io/not-ready:NoExecute"
            ]
        );
        // A node still registering keeps what it has.
        let t = tainted(taints::NOT_READY, -1);
        assert_eq!(reconciled_taints(&t, None, &at(0)), None);
    }

    #[test]
    fn cordon_and_pressure_are_taints_too() {
        let mut n = node("True", -1);
        n["spec"]["unschedulable"] = json!(true);
        n["status"]["conditions"][1]["status"] = json!("True");
        let t = reconciled_taints(&n, Some(Health::Ready), &at(0)).unwrap();
        assert_eq!(
            keys(&t),
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/unschedulable:NoSchedule",
                "node.kubernetes.io/disk-pressure:NoSchedule"
            ]
        );
    }

    #[test]
    fn untolerated_no_execute_evicts_now() {
        let mut n = node("True", -1);
        n["spec"]["taints"] = json!([{"key": "gpu", "effect": "NoExecute", "timeAdded": at(0)}]);
        assert_eq!(eviction(&pod(json!([])), &n, 300, NOON), Eviction::Now);
        assert_eq!(
            eviction(
                &pod(json!([{"key": "gpu", "operator": "Exists"}])),
                &n,
                300,
                NOON
            ),
            Eviction::Never
        );
        // NoSchedule taints never evict.
        assert_eq!(
            eviction(&pod(json!([])), &node("True", -1), 300, NOON),
            Eviction::Never
        );
    }

    #[test]
    fn default_tolerations_evict_after_their_seconds() {
        let n = tainted(taints::UNREACHABLE, -100);
        let p = pod(json!([]));
        assert_eq!(eviction(&p, &n, 300, NOON), Eviction::At(NOON + 200_000));
        assert_eq!(eviction(&p, &n, 300, NOON + 200_000), Eviction::Now);
        assert_eq!(
            eviction(&p, &n, 60, NOON),
            Eviction::Now,
            "60 s after timeAdded has passed"
        );
    }

    #[test]
    fn explicit_tolerations_decide_the_timing() {
        let n = tainted(taints::NOT_READY, -100);
        let short = pod(
            json!([{"key": taints::NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]),
        );
        assert_eq!(eviction(&short, &n, 300, NOON), Eviction::Now);
        let long = pod(
            json!([{"key": taints::NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3600}]),
        );
        assert_eq!(
            eviction(&long, &n, 300, NOON),
            Eviction::At(NOON + 3_500_000)
        );
        let forever =
            pod(json!([{"key": taints::NOT_READY, "operator": "Exists", "effect": "NoExecute"}]));
        assert_eq!(
            eviction(&forever, &n, 300, NOON + 999_999_000),
            Eviction::Never
        );
        let all = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction(&all, &n, 300, NOON), Eviction::Never);
    }

    #[test]
    fn terminating_pods_on_lost_nodes_are_force_deleted_after_their_grace() {
        let mut n = node("Unknown", -600);
        n["status"]["conditions"][3]["lastTransitionTime"] = json!(at(-10));
        let mut p = pod(json!([]));
        p["metadata"]["deletionTimestamp"] = json!(at(20));
        p["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        assert!(
            !should_force_delete(&p, &n, NOON),
            "within the grace period"
        );
        assert!(!should_force_delete(&p, &n, NOON + 19_000));
        assert!(should_force_delete(&p, &n, NOON + 20_000));
        // The node must have been lost for a whole grace period too.
        n["status"]["conditions"][3]["lastTransitionTime"] = json!(at(15));
        assert!(!should_force_delete(&p, &n, NOON + 30_000));
        assert!(should_force_delete(&p, &n, NOON + 45_000));
        // Live nodes finish their own pods; pods not being deleted stay.
        assert!(!should_force_delete(&p, &node("True", -1), NOON + 999_000));
        assert!(!should_force_delete(&pod(json!([])), &n, NOON + 999_000));
    }

    #[test]
    fn pods_on_unknown_nodes_lose_ready() {
        let mut p = pod(json!([]));
        p["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": at(-50)}]});
        let marked = marked_not_ready(&p, &at(0)).unwrap();
        assert_eq!(marked["status"]["conditions"][0]["status"], "False");
        assert_eq!(
            marked["status"]["conditions"][0]["lastTransitionTime"],
            at(0)
        );
        assert_eq!(marked_not_ready(&marked, &at(1)), None);
    }

    #[test]
    fn taints_without_time_added_count_from_first_sight() {
        let mut n = node("True", -1);
        n["spec"]["taints"] = json!([{"key": "gpu", "effect": "NoExecute"}]);
        let mut seen = HashMap::new();
        let first = with_taint_times(&n, &mut seen, NOON);
        let later = with_taint_times(&n, &mut seen, NOON + 60_000);
        assert_eq!(first["spec"]["taints"][0]["timeAdded"], at(0));
        assert_eq!(later["spec"]["taints"][0]["timeAdded"], at(0));
    }
}
