//! The ReplicaSet controller (kube-controller-manager's `replicaset`):
//! keeps `spec.replicas` active pods for every ReplicaSet and reports what
//! it sees in the status.
//!
//! [`plan`] decides from the cached ReplicaSet and pods (pure, tested
//! below); `run` carries the plan out. Caches lag behind writes, so after
//! creating or deleting pods for a ReplicaSet it is left alone until the
//! cache shows them ([`Expectations`], kube's `ControllerExpectations`);
//! otherwise a fast second round would create the same pods again.
//!
//! The label-selector, ownership, expectation and wait helpers here are
//! shared with the Deployment controller (`pub(crate)`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Caches, record_event};
use crate::client::{Client, ClientError, PatchType, resource_path};
use crate::informer::Informer;
use crate::objects;

const COMPONENT: &str = "replicaset-controller";

/// Most pods created for one ReplicaSet in one round (kube's `BurstReplicas`).
const BURST: usize = 500;

/// How long unconfirmed writes hold an owner back before the cache is
/// trusted again (kube waits 5 min; a lost watch event should not stall a
/// workload that long here).
pub(crate) const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Reconcile everything at least this often: minReadySeconds and progress
/// deadlines pass without any object changing.
pub(crate) const RESYNC: Duration = Duration::from_secs(5);

/// Changes arriving within this window are handled in one round.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(20);

/// A Ready condition without lastTransitionTime: ready, but never
/// available under minReadySeconds (kube's zero time).
const READY_SINCE_UNKNOWN: i64 = 0;

pub async fn run(client: Client, caches: Caches) {
    caches.pods.wait_synced().await;
    caches.replicasets.wait_synced().await;
    let mut changes = [caches.pods.changes(), caches.replicasets.changes()];
    let mut controller = Controller::default();
    loop {
        let recheck = controller.reconcile_all(&client, &caches).await;
        super::wait_for_change(
            &mut changes,
            recheck.map_or(RESYNC, |r| r.min(RESYNC)),
            DEBOUNCE,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// Shared helpers (also used by the Deployment controller).

/// Whether a `LabelSelector` (matchLabels + matchExpressions) selects
/// `labels`. An empty selector selects nothing here: apps/v1 refuses one,
/// and a controller adopting every pod in the namespace is the worse error.
pub(crate) fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let exprs = selector.get("matchExpressions").and_then(Value::as_array);
    if match_labels.is_none_or(|m| m.is_empty()) && exprs.is_none_or(|e| e.is_empty()) {
        return false;
    }
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    for (k, v) in match_labels.into_iter().flatten() {
        if label(k) != v.as_str() {
            return false;
        }
    }
    for e in exprs.into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let holds = match e["operator"].as_str() {
            Some("In") => label(key).is_some_and(|v| values.contains(&v)),
            Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
            Some("Exists") => label(key).is_some(),
            Some("DoesNotExist") => label(key).is_none(),
            _ => false,
        };
        if !holds {
            return false;
        }
    }
    true
}

/// The uid in the object's controlling ownerReference, if any.
pub(crate) fn controller_uid(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
        .and_then(|r| r["uid"].as_str())
}

pub(crate) fn is_terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

pub(crate) fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(crate) fn int_at(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

/// Seconds since the epoch of a timestamp field; 0 when absent.
pub(crate) fn time_at(obj: &Value, pointer: &str) -> i64 {
    objects::parse_rfc3339(str_at(obj, pointer)).unwrap_or(0)
}

/// The controlling ownerReference `owner` (a ReplicaSet or Deployment)
/// puts on what it creates or adopts.
pub(crate) fn controller_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": owner["kind"].as_str().filter(|k| !k.is_empty()).unwrap_or("ReplicaSet"),
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A merge patch making `owner` the controller of the orphan `obj`; the
/// resourceVersion makes it fail if someone else adopted it meanwhile.
pub(crate) fn adoption_patch(obj: &Value, owner: &Value) -> Value {
    let mut refs = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    refs.push(controller_ref(owner));
    json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj["metadata"]["resourceVersion"]}})
}

/// A merge patch dropping `owner_uid`'s reference from `obj` (it no longer
/// matches the selector), so another controller may take it.
pub(crate) fn release_patch(obj: &Value, owner_uid: &str) -> Value {
    let refs: Vec<Value> = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r["uid"].as_str() != Some(owner_uid))
        .cloned()
        .collect();
    json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj["metadata"]["resourceVersion"]}})
}

/// `namespace/name` as the informers key objects.
pub(crate) fn key_of(obj: &Value) -> (String, String) {
    (
        str_at(obj, "/metadata/namespace").to_string(),
        str_at(obj, "/metadata/name").to_string(),
    )
}

/// The same object with `kind`/`apiVersion` set (events name them).
pub(crate) fn with_kind(obj: &Value, kind: &str) -> Value {
    let mut o = obj.clone();
    if o["kind"].as_str().is_none_or(str::is_empty) {
        o["kind"] = json!(kind);
        o["apiVersion"] = json!("apps/v1");
    }
    o
}

/// What a write should make the cache show before its owner is handled again.
pub(crate) enum Want {
    /// A created object.
    Present,
    /// An updated object: any resourceVersion but this one.
    Changed(String),
    /// A deleted object (with this uid): gone or terminating.
    Gone(String),
}

/// One unconfirmed write.
pub(crate) struct Expectation {
    pub informer: Informer,
    pub namespace: String,
    pub name: String,
    pub want: Want,
}

impl Expectation {
    fn met(&self) -> bool {
        let cached = self.informer.get(Some(&self.namespace), &self.name);
        match (&self.want, cached) {
            (Want::Present, cached) => cached.is_some(),
            (Want::Changed(_), None) => true,
            (Want::Changed(rv), Some(o)) => str_at(&o, "/metadata/resourceVersion") != rv,
            (Want::Gone(_), None) => true,
            (Want::Gone(uid), Some(o)) => str_at(&o, "/metadata/uid") != uid || is_terminating(&o),
        }
    }
}

/// Unconfirmed writes by owner uid (kube's `ControllerExpectations`, kept
/// as the objects themselves rather than counts).
#[derive(Default)]
pub(crate) struct Expectations {
    pending: HashMap<String, (Instant, Vec<Expectation>)>,
}

impl Expectations {
    pub fn expect(&mut self, owner_uid: &str, e: Expectation) {
        let entry = self
            .pending
            .entry(owner_uid.to_string())
            .or_insert_with(|| (Instant::now(), Vec::new()));
        entry.0 = Instant::now() + EXPECTATION_TIMEOUT;
        entry.1.push(e);
    }

    /// Whether the owner may be handled: every write is in the cache or
    /// the wait timed out.
    pub fn satisfied(&mut self, owner_uid: &str) -> bool {
        let Some((deadline, items)) = self.pending.get_mut(owner_uid) else {
            return true;
        };
        items.retain(|e| !e.met());
        if items.is_empty() || Instant::now() >= *deadline {
            if !items.is_empty() {
                tracing::debug!(
                    owner = owner_uid,
                    "expectations timed out; trusting the cache"
                );
            }
            self.pending.remove(owner_uid);
            return true;
        }
        false
    }

    /// Drops owners that are gone.
    pub fn retain(&mut self, live: &HashSet<String>) {
        self.pending.retain(|uid, _| live.contains(uid));
    }

    /// Time until the first pending wait times out.
    pub fn next_deadline(&self) -> Option<Duration> {
        let now = Instant::now();
        self.pending
            .values()
            .map(|(d, _)| d.saturating_duration_since(now) + Duration::from_millis(10))
            .min()
    }
}

pub(crate) fn now_secs() -> i64 {
    objects::parse_rfc3339(&objects::now()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The decision.

/// What one round does for one ReplicaSet.
#[derive(Debug, Default)]
pub struct Plan {
    /// Orphan pods to adopt. While any are listed nothing is created or
    /// deleted: the count is settled once the cache shows the adoption.
    pub adopt: Vec<Value>,
    /// Owned pods that no longer match the selector, to let go.
    pub release: Vec<Value>,
    /// How many pods to create.
    pub create: usize,
    /// Active pods to delete, least valuable first.
    pub delete: Vec<Value>,
    /// The new status, when it differs from the cached one.
    pub status: Option<Value>,
    /// When a pod turns available with nothing changing (minReadySeconds).
    pub recheck: Option<Duration>,
}

/// Decides for `rs` given the pods of its namespace. `create_error` is the
/// last failed create (it shows as a ReplicaFailure condition).
pub fn plan(rs: &Value, pods: &[Value], now: i64, create_error: Option<&str>) -> Plan {
    let mut plan = Plan::default();
    let uid = str_at(rs, "/metadata/uid");
    let selector = &rs["spec"]["selector"];
    let deleting = is_terminating(rs);
    let mut owned: Vec<&Value> = Vec::new();
    for pod in pods {
        let labels = &pod["metadata"]["labels"];
        match controller_uid(pod) {
            Some(u) if u == uid => {
                if selector_matches(selector, labels) || deleting {
                    owned.push(pod);
                } else if !is_terminating(pod) {
                    plan.release.push(pod.clone());
                }
            }
            None if !deleting && !is_terminating(pod) && selector_matches(selector, labels) => {
                plan.adopt.push(pod.clone());
            }
            _ => {}
        }
    }
    let mut active: Vec<&Value> = owned.iter().copied().filter(|p| is_active(p)).collect();
    let (status, recheck) = status_of(rs, &active, now, create_error);
    plan.recheck = recheck;
    if status != rs["status"] {
        plan.status = Some(status);
    }
    if deleting || !plan.adopt.is_empty() || !plan.release.is_empty() {
        return plan;
    }
    let want = int_at(rs, "/spec/replicas").unwrap_or(1).max(0) as usize;
    if active.len() < want {
        plan.create = (want - active.len()).min(BURST);
    } else if active.len() > want {
        active.sort_by(|a, b| deletion_order(a, b));
        plan.delete = active[..(active.len() - want).min(BURST)]
            .iter()
            .map(|p| (*p).clone())
            .collect();
    }
    plan
}

/// A pod that counts: not terminating and not finished.
pub(crate) fn is_active(pod: &Value) -> bool {
    !is_terminating(pod) && !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// When the pod's Ready condition turned True, if it is ready.
pub(crate) fn ready_since(pod: &Value) -> Option<i64> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .map(|c| time_at(c, "/lastTransitionTime"))
}

/// Ready for longer than `min_ready` seconds (kube's `IsPodAvailable`).
fn is_available(pod: &Value, min_ready: i64, now: i64) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(since) => since != READY_SINCE_UNKNOWN && since + min_ready < now,
    }
}

/// The status kube's `calculateStatus` writes; zero counts are left out as
/// Go's `omitempty` does (except `replicas`).
fn status_of(
    rs: &Value,
    active: &[&Value],
    now: i64,
    create_error: Option<&str>,
) -> (Value, Option<Duration>) {
    let min_ready = int_at(rs, "/spec/minReadySeconds").unwrap_or(0);
    let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
    let fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| p.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| ready_since(p).is_some()).count();
    let available = active
        .iter()
        .filter(|p| is_available(p, min_ready, now))
        .count();
    let recheck = active
        .iter()
        .filter_map(|p| ready_since(p))
        .filter(|since| min_ready > 0 && *since != READY_SINCE_UNKNOWN && since + min_ready >= now)
        .map(|since| Duration::from_secs((since + min_ready + 1 - now).max(1) as u64))
        .min();

    let mut status = match &rs["status"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let map = status.as_object_mut().expect("an object");
    map.insert("replicas".into(), json!(active.len()));
    for (field, n) in [
        ("fullyLabeledReplicas", fully_labeled),
        ("readyReplicas", ready),
        ("availableReplicas", available),
    ] {
        if n > 0 {
            map.insert(field.into(), json!(n));
        } else {
            map.remove(field);
        }
    }
    match int_at(rs, "/metadata/generation") {
        Some(g) => map.insert("observedGeneration".into(), json!(g)),
        None => map.remove("observedGeneration"),
    };
    let mut conditions: Vec<Value> = map
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let had_failure = conditions.iter().any(|c| c["type"] == "ReplicaFailure");
    match create_error {
        Some(message) if !had_failure => conditions.push(json!({
            "type": "ReplicaFailure",
            "status": "True",
            "reason": "FailedCreate",
            "message": message,
            "lastTransitionTime": objects::rfc3339(now),
        })),
        None if had_failure => conditions.retain(|c| c["type"] != "ReplicaFailure"),
        _ => {}
    }
    if conditions.is_empty() {
        map.remove("conditions");
    } else {
        map.insert("conditions".into(), json!(conditions));
    }
    (status, recheck)
}

/// kube's `ActivePods` order, least valuable first: unassigned before
/// assigned; Pending, Unknown, Running; not ready before ready; lower
/// pod-deletion-cost; ready for less time; more restarts; newer.
fn deletion_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Reverse;
    let phase = |p: &Value| match str_at(p, "/status/phase") {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    };
    let cost = |p: &Value| {
        str_at(
            p,
            "/metadata/annotations/controller.kubernetes.io~1pod-deletion-cost",
        )
        .parse::<i64>()
        .unwrap_or(0)
    };
    let restarts = |p: &Value| {
        p.pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["restartCount"].as_i64())
            .max()
            .unwrap_or(0)
    };
    // Newer first; a missing time counts as newest (kube's `afterOrZero`).
    let newest_first = |t: i64| Reverse(if t == 0 { i64::MAX } else { t });
    let key = |p: &Value| {
        let ready = ready_since(p);
        (
            !str_at(p, "/spec/nodeName").is_empty(),
            phase(p),
            ready.is_some(),
            cost(p),
            newest_first(ready.unwrap_or(0)),
            Reverse(restarts(p)),
            newest_first(time_at(p, "/metadata/creationTimestamp")),
        )
    };
    key(a)
        .cmp(&key(b))
        .then_with(|| str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name")))
}

/// The pod a ReplicaSet creates (kube's `GetPodFromTemplate`).
pub fn pod_from_template(rs: &Value) -> Value {
    let template = &rs["spec"]["template"];
    let mut meta = json!({
        "generateName": format!("{}-", str_at(rs, "/metadata/name")),
        "ownerReferences": [controller_ref(&with_kind(rs, "ReplicaSet"))],
    });
    for field in ["labels", "annotations", "finalizers"] {
        if let Some(v) = template["metadata"].get(field).filter(|v| !v.is_null()) {
            meta[field] = v.clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
}

// ---------------------------------------------------------------------------
// Carrying plans out.

#[derive(Default)]
struct Controller {
    expectations: Expectations,
    /// The last create error per ReplicaSet uid (shown as ReplicaFailure).
    create_errors: HashMap<String, String>,
}

impl Controller {
    /// One round over every ReplicaSet; answers when to look again.
    async fn reconcile_all(&mut self, client: &Client, caches: &Caches) -> Option<Duration> {
        let now = now_secs();
        let mut pods_by_ns: HashMap<String, Vec<Value>> = HashMap::new();
        for pod in caches.pods.list() {
            pods_by_ns
                .entry(str_at(&pod, "/metadata/namespace").to_string())
                .or_default()
                .push(pod);
        }
        let replicasets = caches.replicasets.list();
        let live: HashSet<String> = replicasets
            .iter()
            .map(|rs| str_at(rs, "/metadata/uid").to_string())
            .collect();
        self.expectations.retain(&live);
        self.create_errors.retain(|uid, _| live.contains(uid));
        let mut recheck: Option<Duration> = None;
        for rs in replicasets {
            let uid = str_at(&rs, "/metadata/uid").to_string();
            if !self.expectations.satisfied(&uid) {
                continue;
            }
            let pods = pods_by_ns
                .get(str_at(&rs, "/metadata/namespace"))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let p = plan(
                &rs,
                pods,
                now,
                self.create_errors.get(&uid).map(String::as_str),
            );
            recheck = min_opt(recheck, p.recheck);
            self.carry_out(client, caches, &with_kind(&rs, "ReplicaSet"), p)
                .await;
        }
        min_opt(recheck, self.expectations.next_deadline())
    }

    async fn carry_out(&mut self, client: &Client, caches: &Caches, rs: &Value, plan: Plan) {
        let uid = str_at(rs, "/metadata/uid").to_string();
        let (ns, name) = key_of(rs);
        for (pod, body) in plan
            .adopt
            .iter()
            .map(|p| (p, adoption_patch(p, rs)))
            .chain(plan.release.iter().map(|p| (p, release_patch(p, &uid))))
        {
            let (pod_ns, pod_name) = key_of(pod);
            let path = resource_path("v1", "pods", Some(&pod_ns), Some(&pod_name));
            match client.patch(&path, PatchType::Merge, &body).await {
                Ok(_) => self.expectations.expect(
                    &uid,
                    Expectation {
                        informer: caches.pods.clone(),
                        namespace: pod_ns,
                        name: pod_name,
                        want: Want::Changed(str_at(pod, "/metadata/resourceVersion").into()),
                    },
                ),
                Err(e) => log_write_error("patching the owner of a pod", &name, &e),
            }
        }
        if plan.create > 0 {
            self.create_pods(client, caches, rs, plan.create).await;
        }
        if !plan.delete.is_empty() {
            self.delete_pods(client, caches, rs, &plan.delete).await;
        }
        if let Some(status) = plan.status {
            let mut body = rs.clone();
            body["status"] = status;
            let path = resource_path("apps/v1", "replicasets", Some(&ns), Some(&name));
            match client.update(&format!("{path}/status"), &body).await {
                Ok(_) => self.expectations.expect(
                    &uid,
                    Expectation {
                        informer: caches.replicasets.clone(),
                        namespace: ns,
                        name,
                        want: Want::Changed(str_at(rs, "/metadata/resourceVersion").into()),
                    },
                ),
                Err(e) => log_write_error(
                    "updating replicaset status",
                    str_at(rs, "/metadata/name"),
                    &e,
                ),
            }
        }
    }

    /// Creates in doubling batches (kube's `slowStartBatch`): a failing
    /// create (quota, terminating namespace) costs one call, not hundreds.
    async fn create_pods(&mut self, client: &Client, caches: &Caches, rs: &Value, count: usize) {
        let uid = str_at(rs, "/metadata/uid").to_string();
        let (ns, _) = key_of(rs);
        let pod = pod_from_template(rs);
        let path = resource_path("v1", "pods", Some(&ns), None);
        let mut remaining = count;
        let mut batch = 1;
        let mut failure: Option<ClientError> = None;
        while remaining > 0 && failure.is_none() {
            let n = batch.min(remaining);
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (client, path, pod) = (client.clone(), path.clone(), pod.clone());
                tasks.spawn(async move { client.create(&path, &pod).await });
            }
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok(Ok(created)) => {
                        let (pod_ns, pod_name) = key_of(&created);
                        record_event(
                            client,
                            rs,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {pod_name}"),
                            COMPONENT,
                        )
                        .await;
                        self.expectations.expect(
                            &uid,
                            Expectation {
                                informer: caches.pods.clone(),
                                namespace: pod_ns,
                                name: pod_name,
                                want: Want::Present,
                            },
                        );
                    }
                    Ok(Err(e)) => failure = Some(e),
                    Err(e) => tracing::warn!(error = %e, "a pod create task failed"),
                }
            }
            remaining -= n;
            batch *= 2;
        }
        match failure {
            Some(e) => {
                let rs_name = str_at(rs, "/metadata/name");
                log_write_error("creating pods", rs_name, &e);
                let message = format!("Error creating: {}", e.message);
                record_event(client, rs, "Warning", "FailedCreate", &message, COMPONENT).await;
                self.create_errors.insert(uid, e.message);
            }
            None => {
                self.create_errors.remove(&uid);
            }
        }
    }

    async fn delete_pods(&mut self, client: &Client, caches: &Caches, rs: &Value, pods: &[Value]) {
        let uid = str_at(rs, "/metadata/uid").to_string();
        let mut tasks = tokio::task::JoinSet::new();
        for pod in pods {
            let (ns, name) = key_of(pod);
            let pod_uid = str_at(pod, "/metadata/uid").to_string();
            let client = client.clone();
            tasks.spawn(async move {
                let path = resource_path("v1", "pods", Some(&ns), Some(&name));
                let options = json!({"preconditions": {"uid": pod_uid}});
                let result = client.delete(&path, &options).await;
                (ns, name, pod_uid, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((ns, name, pod_uid, result)) = joined else {
                continue;
            };
            match result {
                Ok(_) => {
                    let message = format!("Deleted pod: {name}");
                    record_event(
                        client,
                        rs,
                        "Normal",
                        "SuccessfulDelete",
                        &message,
                        COMPONENT,
                    )
                    .await;
                    self.expectations.expect(
                        &uid,
                        Expectation {
                            informer: caches.pods.clone(),
                            namespace: ns,
                            name,
                            want: Want::Gone(pod_uid),
                        },
                    );
                }
                // Already gone: nothing to wait for.
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    log_write_error("deleting a pod", &name, &e);
                    let message = format!("Error deleting: {}", e.message);
                    record_event(client, rs, "Warning", "FailedDelete", &message, COMPONENT).await;
                }
            }
        }
    }
}

pub(crate) fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Conflicts and vanished objects are normal with stale caches: the next
/// round sees the new state.
pub(crate) fn log_write_error(what: &str, name: &str, e: &ClientError) {
    if e.is_conflict() || e.is_not_found() {
        tracing::debug!(name, error = %e, "{what}: retrying next round");
    } else {
        tracing::warn!(name, error = %e, "{what} failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn rs(replicas: i64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid",
                         "generation": 2, "resourceVersion": "10"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web", "tier": "front"}, "annotations": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}
                }
            }
        })
    }

    fn pod(name: &str, owner: Option<&str>) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "resourceVersion": "5", "labels": {"app": "web", "tier": "front"},
                         "creationTimestamp": objects::rfc3339(NOW - 100)},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running"}
        });
        if let Some(uid) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": uid, "controller": true}]);
        }
        p
    }

    fn ready(mut p: Value, since: i64) -> Value {
        p["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
            "lastTransitionTime": objects::rfc3339(since)}]);
        p
    }

    fn names(pods: &[Value]) -> Vec<&str> {
        pods.iter().map(|p| str_at(p, "/metadata/name")).collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = json!({"app": "web", "env": "prod"});
        let sel = |s: Value| selector_matches(&s, &labels);
        assert!(sel(json!({"matchLabels": {"app": "web"}})));
        assert!(!sel(json!({"matchLabels": {"app": "db"}})));
        assert!(sel(
            json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "qa"]}]})
        ));
        assert!(!sel(
            json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]})
        ));
        assert!(sel(
            json!({"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["prod"]}]})
        ));
        assert!(sel(
            json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]})
        ));
        assert!(sel(
            json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]})
        ));
        assert!(!sel(
            json!({"matchExpressions": [{"key": "app", "operator": "Bogus"}]})
        ));
        assert!(!sel(json!({})), "an empty selector selects nothing");
    }

    #[test]
    fn too_few_pods_are_created_and_terminating_ones_do_not_count() {
        let mut gone = pod("b", Some("rs-uid"));
        gone["metadata"]["deletionTimestamp"] = json!(objects::rfc3339(NOW));
        let mut done = pod("c", Some("rs-uid"));
        done["status"]["phase"] = json!("Succeeded");
        let other = pod("d", Some("someone-else"));
        let p = plan(
            &rs(3),
            &[pod("a", Some("rs-uid")), gone, done, other],
            NOW,
            None,
        );
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty() && p.adopt.is_empty());
        assert_eq!(p.status.unwrap()["replicas"], 1);
        assert_eq!(plan(&rs(2000), &[], NOW, None).create, BURST);
    }

    #[test]
    fn orphans_are_adopted_before_counting() {
        let mut stranger = pod("s", None);
        stranger["metadata"]["labels"] = json!({"app": "db"});
        let p = plan(&rs(3), &[pod("o", None), stranger], NOW, None);
        assert_eq!(names(&p.adopt), ["o"]);
        assert_eq!(p.create, 0, "counts wait until the adoption shows");
        let patch = adoption_patch(&p.adopt[0], &rs(3));
        assert_eq!(patch["metadata"]["resourceVersion"], "5");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "rs-uid");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["controller"], true);
    }

    #[test]
    fn pods_that_stop_matching_are_released() {
        let mut p = pod("q", Some("rs-uid"));
        p["metadata"]["labels"] = json!({"app": "debug"});
        let plan = plan(&rs(1), &[p], NOW, None);
        assert_eq!(names(&plan.release), ["q"]);
        let patch = release_patch(&plan.release[0], "rs-uid");
        assert_eq!(patch["metadata"]["ownerReferences"], json!([]));
    }

    #[test]
    fn too_many_pods_are_deleted_least_valuable_first() {
        let owner = Some("rs-uid");
        let mut unassigned = pod("unassigned", owner);
        unassigned["spec"]["nodeName"] = json!("");
        unassigned["status"]["phase"] = json!("Pending");
        let mut pending = pod("pending", owner);
        pending["status"]["phase"] = json!("Pending");
        let mut unknown = pod("unknown", owner);
        unknown["status"]["phase"] = json!("Unknown");
        let not_ready = pod("not-ready", owner);
        let ready_new = ready(pod("ready-new", owner), NOW - 10);
        let ready_old = ready(pod("ready-old", owner), NOW - 1000);
        let mut crashy = ready(pod("crashy", owner), NOW - 1000);
        crashy["status"]["containerStatuses"] = json!([{"restartCount": 4}]);
        let mut young = ready(pod("young", owner), NOW - 1000);
        young["metadata"]["creationTimestamp"] = json!(objects::rfc3339(NOW - 50));
        let all = [
            ready_old.clone(),
            young,
            crashy,
            ready_new,
            not_ready,
            unknown,
            pending,
            unassigned,
        ];
        let p = plan(&rs(1), &all, NOW, None);
        assert_eq!(
            names(&p.delete),
            [
                "unassigned",
                "pending",
                "unknown",
                "not-ready",
                "ready-new",
                "crashy",
                "young"
            ]
        );
    }

    #[test]
    fn status_counts_ready_and_available_after_min_ready_seconds() {
        let mut set = rs(3);
        set["spec"]["minReadySeconds"] = json!(30);
        let mut unlabeled = ready(pod("c", Some("rs-uid")), NOW - 5);
        unlabeled["metadata"]["labels"] = json!({"app": "web"});
        let pods = [
            ready(pod("a", Some("rs-uid")), NOW - 100),
            unlabeled,
            pod("b", Some("rs-uid")),
        ];
        let p = plan(&set, &pods, NOW, None);
        let status = p.status.unwrap();
        assert_eq!(status["replicas"], 3);
        assert_eq!(status["fullyLabeledReplicas"], 2);
        assert_eq!(status["readyReplicas"], 2);
        assert_eq!(status["availableReplicas"], 1);
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(p.recheck, Some(Duration::from_secs(26)));

        // Nothing changed: nothing written.
        set["status"] = status;
        assert!(plan(&set, &pods, NOW, None).status.is_none());
    }

    #[test]
    fn create_failures_show_as_a_condition() {
        let p = plan(&rs(1), &[], NOW, Some("quota exceeded"));
        let status = p.status.unwrap();
        assert_eq!(status["conditions"][0]["type"], "ReplicaFailure");
        assert_eq!(status["conditions"][0]["reason"], "FailedCreate");
        assert!(status.get("readyReplicas").is_none());
        let mut set = rs(1);
        set["status"] = status;
        let cleared = plan(&set, &[], NOW, None).status.unwrap();
        assert!(cleared.get("conditions").is_none());
    }

    #[test]
    fn pods_come_from_the_template() {
        let p = pod_from_template(&rs(1));
        assert_eq!(p["metadata"]["generateName"], "web-abc-");
        assert_eq!(p["metadata"]["labels"]["tier"], "front");
        assert_eq!(p["metadata"]["annotations"]["a"], "b");
        assert_eq!(
            p["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                    "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true}])
        );
        assert_eq!(p["spec"]["containers"][0]["image"], "nginx");
    }

    #[test]
    fn a_replicaset_being_deleted_creates_nothing() {
        let mut set = rs(3);
        set["metadata"]["deletionTimestamp"] = json!(objects::rfc3339(NOW));
        let p = plan(&set, &[pod("o", None)], NOW, None);
        assert_eq!(p.create, 0);
        assert!(p.adopt.is_empty());
    }
}
