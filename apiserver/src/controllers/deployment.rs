//! The Deployment controller (kube-controller-manager's `deployment`):
//! turns each Deployment into ReplicaSets, one per pod template, and rolls
//! from the old ones to the new one (RollingUpdate or Recreate).
//!
//! [`plan`] is a port of kube's `syncDeployment` over cached objects: it
//! edits in-memory copies of the ReplicaSets and the status, and answers
//! the writes that make the cluster match ([`Write`]). It is level
//! triggered: each round takes one step (scale the new ReplicaSet up, or
//! the old ones down), and the next round runs when the ReplicaSets report
//! their pods. `run` carries the writes out and, like the ReplicaSet
//! controller, leaves a Deployment alone until the cache shows them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::replicaset::{
    Expectation, Expectations, RESYNC, Want, adoption_patch, controller_ref, controller_uid,
    int_at, is_terminating, key_of, log_write_error, min_opt, now_secs, release_patch,
    selector_matches, str_at, time_at, with_kind,
};
use super::{Caches, record_event};
use crate::client::{Client, PatchType, resource_path};
use crate::objects;

const COMPONENT: &str = "deployment-controller";

/// The label that tells the pods of one template from another's.
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations not copied to its ReplicaSets (kube's
/// `annotationsToSkip`).
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// Longest revision-history annotation kept (kube's default).
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// kube's `SafeEncodeString` alphabet: no vowels, no confusable digits.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub async fn run(client: Client, caches: Caches) {
    caches.deployments.wait_synced().await;
    caches.replicasets.wait_synced().await;
    caches.pods.wait_synced().await;
    let mut changes = [
        caches.deployments.changes(),
        caches.replicasets.changes(),
        caches.pods.changes(),
    ];
    let mut controller = Controller::default();
    loop {
        let recheck = controller.reconcile_all(&client, &caches).await;
        super::wait_for_change(
            &mut changes,
            recheck.map_or(RESYNC, |r| r.min(RESYNC)),
            super::replicaset::DEBOUNCE,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// Template hashing.

/// The `pod-template-hash` of a template: FNV-1a (32 bit) over its
/// canonical JSON and the collision count, rendered as kube does (decimal
/// digits mapped through [`SAFE_ALPHABET`]).
pub fn pod_template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut text = String::new();
    canonical(&normalized(template), &mut text);
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(text.as_bytes());
    if let Some(c) = collision_count {
        // kube writes the count as 8 little-endian bytes, the top 4 zero.
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(c as u32).to_le_bytes());
        feed(&bytes);
    }
    hash.to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[b as usize % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// Whether a ReplicaSet's template is the Deployment's, its hash label
/// aside (kube's `EqualIgnoreHash`).
pub fn templates_equal(deployment_template: &Value, rs_template: &Value) -> bool {
    let mut t = rs_template.clone();
    if let Some(Value::Object(labels)) = t.pointer_mut("/metadata/labels") {
        labels.remove(HASH_LABEL);
    }
    normalized(deployment_template) == normalized(&t)
}

/// Drops nulls and empty maps and lists, which JSON clients add or leave
/// out at will (`creationTimestamp: null`, `labels: {}`).
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// JSON with object keys sorted, whatever map order serde_json keeps.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Strategy numbers.

fn is_rolling(d: &Value) -> bool {
    str_at(d, "/spec/strategy/type") != "Recreate"
}

fn replicas_of(d: &Value) -> i64 {
    int_at(d, "/spec/replicas").unwrap_or(1).max(0)
}

/// An int-or-percent of `total`; a missing value is the API default 25%.
fn scaled(v: Option<&Value>, total: i64, round_up: bool) -> i64 {
    let percent = |p: i64| {
        if round_up {
            (p * total + 99) / 100
        } else {
            p * total / 100
        }
    };
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => match s.strip_suffix('%') {
            Some(p) => percent(p.trim().parse().unwrap_or(0)),
            None => s.trim().parse().unwrap_or(0),
        },
        _ => percent(25),
    }
    .max(0)
}

/// (maxSurge, maxUnavailable) as numbers (kube's `ResolveFenceposts`):
/// surge rounds up, unavailable down, and both zero means unavailable 1.
fn fenceposts(d: &Value) -> (i64, i64) {
    let replicas = replicas_of(d);
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = scaled(ru.get("maxSurge"), replicas, true);
    let unavailable = scaled(ru.get("maxUnavailable"), replicas, false);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

fn max_surge(d: &Value) -> i64 {
    if is_rolling(d) { fenceposts(d).0 } else { 0 }
}

fn max_unavailable(d: &Value) -> i64 {
    let replicas = replicas_of(d);
    if !is_rolling(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

fn progress_deadline(d: &Value) -> Option<i64> {
    int_at(d, "/spec/progressDeadlineSeconds").filter(|s| *s != i64::from(i32::MAX))
}

// ---------------------------------------------------------------------------
// Conditions (kube's deployment util).

fn condition(kind: &str, status: &str, reason: &str, message: &str, now: i64) -> Value {
    let t = objects::rfc3339(now);
    json!({
        "type": kind, "status": status, "lastUpdateTime": t, "lastTransitionTime": t,
        "reason": reason, "message": message,
    })
}

fn get_condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn remove_condition(status: &mut Value, kind: &str) {
    if let Some(cs) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        cs.retain(|c| c["type"] != kind);
    }
}

/// Replaces the condition of the same type unless status and reason are
/// unchanged; the transition time stays while the status does.
fn set_condition(status: &mut Value, mut cond: Value) {
    let kind = cond["type"].as_str().unwrap_or_default().to_string();
    if let Some(current) = get_condition(status, &kind) {
        if current["status"] == cond["status"] && current["reason"] == cond["reason"] {
            return;
        }
        if current["status"] == cond["status"] {
            cond["lastTransitionTime"] = current["lastTransitionTime"].clone();
        }
    }
    remove_condition(status, &kind);
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    status["conditions"]
        .as_array_mut()
        .expect("made an array above")
        .push(cond);
}

/// Every pod is the new template's and available (kube's `DeploymentComplete`).
fn deployment_complete(d: &Value, status: &Value) -> bool {
    let r = replicas_of(d);
    let n = |f: &str| status[f].as_i64().unwrap_or(0);
    n("updatedReplicas") == r
        && n("replicas") == r
        && n("availableReplicas") == r
        && n("observedGeneration") >= int_at(d, "/metadata/generation").unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The decision.

/// One write, in the order [`Plan::writes`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Adopt or release a ReplicaSet (a merge patch carrying its resourceVersion).
    Patch {
        name: String,
        rv: String,
        body: Value,
    },
    /// Create the new ReplicaSet; `events` are ScalingReplicaSet messages.
    Create { rs: Value, events: Vec<String> },
    /// Replace a ReplicaSet (it carries the cached resourceVersion).
    Update { rs: Value, events: Vec<String> },
    /// Delete an old ReplicaSet beyond revisionHistoryLimit.
    Delete { name: String, uid: String },
    /// The Deployment's new status.
    Status(Value),
    /// The Deployment's revision annotation (the new ReplicaSet's).
    Revision(String),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Why the Deployment was left alone, if it was.
    pub skipped: Option<String>,
}

/// Decides for Deployment `d` given the ReplicaSets and pods of its namespace.
pub fn plan(d: &Value, replicasets: &[Value], pods: &[Value], now: i64) -> Plan {
    let selector = &d["spec"]["selector"];
    let template_labels = &d["spec"]["template"]["metadata"]["labels"];
    if !selector_matches(selector, template_labels) {
        return Plan {
            writes: Vec::new(),
            skipped: Some("the selector is empty or does not match the template's labels".into()),
        };
    }
    let uid = str_at(d, "/metadata/uid");
    let deleting = is_terminating(d);
    let mut owned = Vec::new();
    let mut writes = Vec::new();
    let owner = with_kind(d, "Deployment");
    for rs in replicasets {
        let labels = &rs["metadata"]["labels"];
        let (_, name) = key_of(rs);
        let rv = str_at(rs, "/metadata/resourceVersion").to_string();
        match controller_uid(rs) {
            Some(u) if u == uid => {
                if selector_matches(selector, labels) || deleting {
                    owned.push(rs.clone());
                } else {
                    let body = release_patch(rs, uid);
                    writes.push(Write::Patch { name, rv, body });
                }
            }
            None if !deleting && !is_terminating(rs) && selector_matches(selector, labels) => {
                let body = adoption_patch(rs, &owner);
                writes.push(Write::Patch { name, rv, body });
            }
            _ => {}
        }
    }
    // Ownership settles first; counting waits for the cache to show it.
    if !writes.is_empty() {
        return Plan {
            writes,
            skipped: None,
        };
    }
    let mut r = Rollout::new(d, owned, now);
    if deleting {
        let new = r.get_new(false);
        r.sync_deployment_status(new);
        return r.finish();
    }
    r.check_paused_conditions();
    if d["spec"]["paused"].as_bool() == Some(true) || r.is_scaling_event() {
        r.sync();
    } else if is_rolling(d) {
        r.rolling();
    } else {
        r.recreate(pods);
    }
    r.finish()
}

/// One owned ReplicaSet as the plan edits it.
struct Owned {
    obj: Value,
    /// To be written (scaled or annotated).
    changed: bool,
    /// Made by this plan; not in the cluster yet.
    create: bool,
    delete: bool,
    events: Vec<String>,
}

impl Owned {
    fn name(&self) -> &str {
        str_at(&self.obj, "/metadata/name")
    }
    fn spec(&self) -> i64 {
        int_at(&self.obj, "/spec/replicas").unwrap_or(1)
    }
    fn status(&self, field: &str) -> i64 {
        self.obj["status"][field].as_i64().unwrap_or(0)
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.obj["metadata"]["annotations"].get(key)?.as_str()
    }
    fn revision(&self) -> i64 {
        self.annotation(REVISION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    }
    fn age_key(&self) -> (i64, String) {
        (
            time_at(&self.obj, "/metadata/creationTimestamp"),
            self.name().to_string(),
        )
    }
}

/// kube's `syncDeployment` state: the Deployment, its ReplicaSets (edited
/// in place) and the status being built.
struct Rollout<'a> {
    d: &'a Value,
    now: i64,
    rss: Vec<Owned>,
    /// The status as built so far (starts as the cached one).
    status: Value,
    /// What the Deployment's revision annotation should say.
    revision: Option<String>,
}

impl<'a> Rollout<'a> {
    fn new(d: &'a Value, owned: Vec<Value>, now: i64) -> Rollout<'a> {
        let rss = owned
            .into_iter()
            .map(|obj| Owned {
                obj,
                changed: false,
                create: false,
                delete: false,
                events: Vec::new(),
            })
            .collect();
        let status = match &d["status"] {
            Value::Object(m) => Value::Object(m.clone()),
            _ => json!({}),
        };
        Rollout {
            d,
            now,
            rss,
            status,
            revision: None,
        }
    }

    fn replicas(&self) -> i64 {
        replicas_of(self.d)
    }

    /// Indices sorted oldest first (kube's `ReplicaSetsByCreationTimestamp`).
    fn oldest_first(&self, mut idx: Vec<usize>) -> Vec<usize> {
        idx.sort_by_key(|i| self.rss[*i].age_key());
        idx
    }

    fn find_new(&self) -> Option<usize> {
        let template = &self.d["spec"]["template"];
        self.oldest_first((0..self.rss.len()).collect())
            .into_iter()
            .find(|i| templates_equal(template, &self.rss[*i].obj["spec"]["template"]))
    }

    fn olds(&self, new: Option<usize>) -> Vec<usize> {
        (0..self.rss.len()).filter(|i| Some(*i) != new).collect()
    }

    fn active(&self, idx: impl IntoIterator<Item = usize>) -> Vec<usize> {
        idx.into_iter()
            .filter(|i| self.rss[*i].spec() > 0)
            .collect()
    }

    fn sum(&self, idx: &[usize], f: impl Fn(&Owned) -> i64) -> i64 {
        idx.iter().map(|i| f(&self.rss[*i])).sum()
    }

    /// The ReplicaSet of the current template, its annotations brought up
    /// to date; made (sized by the strategy) if missing and `create` (kube's
    /// `getNewReplicaSet`).
    fn get_new(&mut self, create: bool) -> Option<usize> {
        let found = self.find_new();
        let max_old_revision = self
            .olds(found)
            .iter()
            .map(|i| self.rss[*i].revision())
            .max()
            .unwrap_or(0);
        let new_revision = max_old_revision + 1;
        let min_ready = int_at(self.d, "/spec/minReadySeconds").unwrap_or(0);
        if let Some(i) = found {
            let mut rs = self.rss[i].obj.clone();
            let mut updated = copy_annotations(self.d, &mut rs);
            updated |= set_revision(&mut rs, new_revision);
            if int_at(&rs, "/spec/minReadySeconds").unwrap_or(0) != min_ready {
                rs["spec"]["minReadySeconds"] = json!(min_ready);
                updated = true;
            }
            if updated {
                self.rss[i].obj = rs;
                self.rss[i].changed = true;
            }
            self.revision = self.rss[i].annotation(REVISION).map(str::to_string);
            if progress_deadline(self.d).is_some()
                && get_condition(&self.status, "Progressing").is_none()
            {
                let message = format!("Found new replica set \"{}\"", self.rss[i].name());
                let c = condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    &message,
                    self.now,
                );
                set_condition(&mut self.status, c);
            }
            return Some(i);
        }
        if !create {
            return None;
        }
        let mut rs = new_replicaset(self.d, self.now);
        set_revision(&mut rs, new_revision);
        set_replicas_annotations(
            &mut rs,
            self.replicas(),
            self.replicas() + max_surge(self.d),
        );
        self.rss.push(Owned {
            obj: rs,
            changed: false,
            create: true,
            delete: false,
            events: Vec::new(),
        });
        let i = self.rss.len() - 1;
        let size = self.new_rs_new_replicas(i);
        self.rss[i].obj["spec"]["replicas"] = json!(size);
        let name = self.rss[i].name().to_string();
        if size > 0 {
            self.rss[i]
                .events
                .push(format!("Scaled up replica set {name} from 0 to {size}"));
        }
        self.revision = Some(new_revision.to_string());
        if progress_deadline(self.d).is_some() {
            let message = format!("Created new replica set \"{name}\"");
            let c = condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                &message,
                self.now,
            );
            set_condition(&mut self.status, c);
        }
        Some(i)
    }

    /// The new ReplicaSet's size this step (kube's `NewRSNewReplicas`).
    fn new_rs_new_replicas(&self, new: usize) -> i64 {
        let replicas = self.replicas();
        if !is_rolling(self.d) {
            return replicas;
        }
        let max_total = replicas + max_surge(self.d);
        let all: Vec<usize> = (0..self.rss.len()).collect();
        let current = self.sum(&all, Owned::spec);
        let spec = self.rss[new].spec();
        if current >= max_total {
            return spec;
        }
        spec + (max_total - current).min(replicas - spec)
    }

    /// Sets the size and the replicas annotations; answers whether the
    /// size changed (kube's `scaleReplicaSet`).
    fn scale_rs(&mut self, i: usize, size: i64, direction: &str) -> bool {
        let desired = self.replicas();
        let max = desired + max_surge(self.d);
        let rs = &mut self.rss[i];
        let old = rs.spec();
        let resize = old != size;
        let annotate = rs.annotation(DESIRED_REPLICAS) != Some(&desired.to_string())
            || rs.annotation(MAX_REPLICAS) != Some(&max.to_string());
        if !(resize || annotate) {
            return false;
        }
        rs.obj["spec"]["replicas"] = json!(size);
        set_replicas_annotations(&mut rs.obj, desired, max);
        rs.changed = true;
        if resize {
            let name = rs.name().to_string();
            rs.events.push(format!(
                "Scaled {direction} replica set {name} from {old} to {size}"
            ));
        }
        resize
    }

    fn scale_and_record(&mut self, i: usize, size: i64) -> bool {
        let current = self.rss[i].spec();
        if current == size {
            return false;
        }
        let direction = if size > current { "up" } else { "down" };
        self.scale_rs(i, size, direction)
    }

    /// A ReplicaSet with replicas was sized for another Deployment size.
    fn is_scaling_event(&mut self) -> bool {
        self.get_new(false);
        let replicas = self.replicas().to_string();
        self.rss.iter().any(|rs| {
            rs.spec() > 0
                && rs
                    .annotation(DESIRED_REPLICAS)
                    .is_some_and(|d| d != replicas)
        })
    }

    /// Scaling or paused: resize without rolling (kube's `sync`).
    fn sync(&mut self) {
        let new = self.get_new(false);
        let olds = self.olds(new);
        self.scale(new, &olds);
        if self.d["spec"]["paused"].as_bool() == Some(true) {
            self.cleanup(&olds);
        }
        self.sync_deployment_status(new);
    }

    /// kube's `scale`: the only active ReplicaSet takes the whole size;
    /// mid-rollout every active one grows or shrinks in proportion.
    fn scale(&mut self, new: Option<usize>, olds: &[usize]) {
        let replicas = self.replicas();
        if let Some(i) = self.active_or_latest(new, olds) {
            self.scale_and_record(i, replicas);
            return;
        }
        if self.is_saturated(new) {
            for i in self.active(olds.iter().copied()) {
                self.scale_and_record(i, 0);
            }
            return;
        }
        if !is_rolling(self.d) {
            return;
        }
        let mut all = self.active(olds.iter().copied().chain(new));
        let current = self.sum(&all, Owned::spec);
        let allowed = if replicas > 0 {
            replicas + max_surge(self.d)
        } else {
            0
        };
        let to_add = allowed - current;
        // Largest first; on a tie newer first when growing, older first when shrinking.
        all.sort_by(|a, b| {
            let (ra, rb) = (&self.rss[*a], &self.rss[*b]);
            let tie = if to_add > 0 {
                rb.age_key().cmp(&ra.age_key())
            } else {
                ra.age_key().cmp(&rb.age_key())
            };
            rb.spec().cmp(&ra.spec()).then(tie)
        });
        let direction = if to_add > 0 { "up" } else { "down" };
        let mut added = 0;
        let mut sizes = Vec::with_capacity(all.len());
        for i in &all {
            let spec = self.rss[*i].spec();
            if to_add != 0 {
                let p = self.proportion(*i, to_add, added);
                sizes.push(spec + p);
                added += p;
            } else {
                sizes.push(spec);
            }
        }
        if to_add != 0 && !sizes.is_empty() {
            sizes[0] = (sizes[0] + to_add - added).max(0);
        }
        for (i, size) in all.into_iter().zip(sizes) {
            self.scale_rs(i, size, direction);
        }
    }

    fn active_or_latest(&self, new: Option<usize>, olds: &[usize]) -> Option<usize> {
        if new.is_none() && olds.is_empty() {
            return None;
        }
        let mut newest_first = self.oldest_first(olds.to_vec());
        newest_first.reverse();
        let active = self.active(newest_first.iter().copied().chain(new));
        match active.len() {
            0 => new.or(newest_first.first().copied()),
            1 => Some(active[0]),
            _ => None,
        }
    }

    fn is_saturated(&self, new: Option<usize>) -> bool {
        let Some(i) = new else { return false };
        let rs = &self.rss[i];
        let replicas = self.replicas();
        rs.spec() == replicas
            && rs.annotation(DESIRED_REPLICAS) == Some(&replicas.to_string())
            && rs.status("availableReplicas") == replicas
    }

    /// This ReplicaSet's share of `to_add` (kube's `GetProportion`).
    fn proportion(&self, i: usize, to_add: i64, added: i64) -> i64 {
        let rs = &self.rss[i];
        if rs.spec() == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let replicas = self.replicas();
        let fraction = if replicas == 0 {
            -rs.spec()
        } else {
            let max_now = replicas + max_surge(self.d);
            let max_before = rs
                .annotation(MAX_REPLICAS)
                .and_then(|m| m.parse::<i64>().ok())
                .filter(|m| *m != 0)
                .unwrap_or_else(|| self.d["status"]["replicas"].as_i64().unwrap_or(0));
            if max_before == 0 {
                0
            } else {
                ((rs.spec() * max_now) as f64 / max_before as f64).round() as i64 - rs.spec()
            }
        };
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// kube's `rolloutRolling`: one step per round, scale up before down.
    fn rolling(&mut self) {
        let Some(new) = self.get_new(true) else {
            return;
        };
        let olds = self.olds(Some(new));
        if self.reconcile_new(new) {
            return self.sync_rollout_status(Some(new));
        }
        let active_olds = self.active(olds.iter().copied());
        if self.reconcile_olds(&active_olds, new) {
            return self.sync_rollout_status(Some(new));
        }
        if deployment_complete(self.d, &self.d["status"]) {
            self.cleanup(&olds);
        }
        self.sync_rollout_status(Some(new));
    }

    fn reconcile_new(&mut self, new: usize) -> bool {
        let (spec, replicas) = (self.rss[new].spec(), self.replicas());
        if spec == replicas {
            return false;
        }
        if spec > replicas {
            return self.scale_and_record(new, replicas);
        }
        let size = self.new_rs_new_replicas(new);
        self.scale_and_record(new, size)
    }

    /// Scales old ReplicaSets down as far as availability allows, their
    /// unhealthy pods first (kube's `reconcileOldReplicaSets`).
    fn reconcile_olds(&mut self, olds: &[usize], new: usize) -> bool {
        if self.sum(olds, Owned::spec) == 0 {
            return false;
        }
        let all: Vec<usize> = (0..self.rss.len()).collect();
        let min_available = self.replicas() - max_unavailable(self.d);
        let new_unavailable = self.rss[new].spec() - self.rss[new].status("availableReplicas");
        let max_scaled_down = self.sum(&all, Owned::spec) - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let olds = self.oldest_first(olds.to_vec());
        let mut cleaned = 0;
        for &i in &olds {
            if cleaned >= max_scaled_down {
                break;
            }
            let (spec, available) = (self.rss[i].spec(), self.rss[i].status("availableReplicas"));
            if spec == 0 || available >= spec {
                continue;
            }
            let n = (max_scaled_down - cleaned).min(spec - available);
            self.scale_and_record(i, spec - n);
            cleaned += n;
        }
        let with_new: Vec<usize> = olds.iter().copied().chain([new]).collect();
        let available = self.sum(&with_new, |rs| rs.status("availableReplicas"));
        let mut scaled = 0;
        if available > min_available {
            let to_scale = available - min_available;
            for &i in &olds {
                if scaled >= to_scale {
                    break;
                }
                let spec = self.rss[i].spec();
                if spec == 0 {
                    continue;
                }
                let n = spec.min(to_scale - scaled);
                self.scale_and_record(i, spec - n);
                scaled += n;
            }
        }
        cleaned + scaled > 0
    }

    /// kube's `rolloutRecreate`: old ReplicaSets to zero, wait until their
    /// pods are gone, then the new one at full size.
    fn recreate(&mut self, pods: &[Value]) {
        let new = self.get_new(false);
        let olds = self.olds(new);
        let mut scaled_down = false;
        for i in self.active(olds.iter().copied()) {
            scaled_down |= self.scale_and_record(i, 0);
        }
        if scaled_down || self.old_pods_running(&olds, pods) {
            return self.sync_rollout_status(new);
        }
        let new = new.or_else(|| self.get_new(true));
        if let Some(i) = new {
            let replicas = self.replicas();
            self.scale_and_record(i, replicas);
        }
        if deployment_complete(self.d, &self.d["status"]) {
            self.cleanup(&olds);
        }
        self.sync_rollout_status(new);
    }

    fn old_pods_running(&self, olds: &[usize], pods: &[Value]) -> bool {
        if self.sum(olds, |rs| rs.status("replicas")) > 0 {
            return true;
        }
        let old_uids: HashSet<&str> = olds
            .iter()
            .map(|i| str_at(&self.rss[*i].obj, "/metadata/uid"))
            .filter(|u| !u.is_empty())
            .collect();
        pods.iter().any(|p| {
            controller_uid(p).is_some_and(|u| old_uids.contains(u))
                && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
        })
    }

    /// Deletes the oldest idle ReplicaSets beyond revisionHistoryLimit
    /// (kube's `cleanupDeployment`).
    fn cleanup(&mut self, olds: &[usize]) {
        let Some(limit) = int_at(self.d, "/spec/revisionHistoryLimit") else {
            return;
        };
        let mut cleanable: Vec<usize> = olds
            .iter()
            .copied()
            .filter(|i| !is_terminating(&self.rss[*i].obj) && !self.rss[*i].create)
            .collect();
        let diff = cleanable.len() as i64 - limit;
        if diff <= 0 {
            return;
        }
        cleanable.sort_by_key(|i| (self.rss[*i].revision(), self.rss[*i].age_key()));
        for i in cleanable.into_iter().take(diff as usize) {
            let rs = &mut self.rss[i];
            let generation = int_at(&rs.obj, "/metadata/generation").unwrap_or(0);
            if rs.status("replicas") != 0
                || rs.spec() != 0
                || generation > rs.status("observedGeneration")
                || rs.changed
            {
                continue;
            }
            rs.delete = true;
        }
    }

    /// kube's `calculateStatus`: counts from the ReplicaSets' statuses and
    /// the Available condition.
    fn calculate_status(&self, new: Option<usize>) -> Value {
        let all: Vec<usize> = (0..self.rss.len()).collect();
        let available = self.sum(&all, |rs| rs.status("availableReplicas"));
        let unavailable = (self.sum(&all, Owned::spec) - available).max(0);
        let mut status = self.status.clone();
        let map = status.as_object_mut().expect("an object");
        let generation = int_at(self.d, "/metadata/generation").unwrap_or(0);
        map.insert("observedGeneration".into(), json!(generation));
        for (field, n) in [
            ("replicas", self.sum(&all, |rs| rs.status("replicas"))),
            (
                "updatedReplicas",
                new.map_or(0, |i| self.rss[i].status("replicas")),
            ),
            (
                "readyReplicas",
                self.sum(&all, |rs| rs.status("readyReplicas")),
            ),
            ("availableReplicas", available),
            ("unavailableReplicas", unavailable),
        ] {
            // Go's omitempty: zero counts are left out.
            if n != 0 {
                map.insert(field.into(), json!(n));
            } else {
                map.remove(field);
            }
        }
        let c = if available >= self.replicas() - max_unavailable(self.d) {
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                self.now,
            )
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                self.now,
            )
        };
        set_condition(&mut status, c);
        status
    }

    fn sync_deployment_status(&mut self, new: Option<usize>) {
        self.status = self.calculate_status(new);
    }

    /// kube's `syncRolloutStatus`: the status plus the Progressing condition
    /// (progressing, complete, or past its deadline) and ReplicaFailure.
    fn sync_rollout_status(&mut self, new: Option<usize>) {
        let mut s = self.calculate_status(new);
        let deadline = progress_deadline(self.d);
        if deadline.is_none() {
            remove_condition(&mut s, "Progressing");
        }
        let current = get_condition(&self.status, "Progressing").cloned();
        let n = |st: &Value, f: &str| st[f].as_i64().unwrap_or(0);
        let complete_already = n(&s, "replicas") == n(&s, "updatedReplicas")
            && current
                .as_ref()
                .is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
        let new_name = new.map(|i| self.rss[i].name().to_string());
        let about = |what: &str| match &new_name {
            Some(name) => format!("ReplicaSet \"{name}\" {what}"),
            None => format!("Deployment \"{}\" {what}", str_at(self.d, "/metadata/name")),
        };
        if let Some(seconds) = deadline.filter(|_| !complete_already) {
            let old = &self.d["status"];
            let progressed = n(&s, "updatedReplicas") > n(old, "updatedReplicas")
                || n(&s, "replicas") - n(&s, "updatedReplicas")
                    < n(old, "replicas") - n(old, "updatedReplicas")
                || n(&s, "readyReplicas") > n(old, "readyReplicas")
                || n(&s, "availableReplicas") > n(old, "availableReplicas");
            if deployment_complete(self.d, &s) {
                let message = about("has successfully progressed.");
                let c = condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &message,
                    self.now,
                );
                set_condition(&mut s, c);
            } else if progressed {
                let message = about("is progressing.");
                let mut c = condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &message,
                    self.now,
                );
                if let Some(cur) = current.as_ref().filter(|c| c["status"] == "True") {
                    c["lastTransitionTime"] = cur["lastTransitionTime"].clone();
                }
                // Unlike set_condition, a new lastUpdateTime marks progress
                // even when the reason stays.
                remove_condition(&mut s, "Progressing");
                set_condition(&mut s, c);
            } else if self.timed_out(&s, seconds) {
                let message = about("has timed out progressing.");
                let c = condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &message,
                    self.now,
                );
                set_condition(&mut s, c);
            }
        }
        match self.replica_failure(new) {
            Some(c) => set_condition(&mut s, c),
            None => remove_condition(&mut s, "ReplicaFailure"),
        }
        self.status = s;
    }

    fn timed_out(&self, status: &Value, seconds: i64) -> bool {
        let Some(c) = get_condition(status, "Progressing") else {
            return false;
        };
        match c["reason"].as_str() {
            Some("NewReplicaSetAvailable") => false,
            Some("ProgressDeadlineExceeded") => true,
            _ => time_at(c, "/lastUpdateTime") + seconds < self.now,
        }
    }

    /// A ReplicaFailure of the new ReplicaSet, else of an old one.
    fn replica_failure(&self, new: Option<usize>) -> Option<Value> {
        let olds = self.olds(new);
        new.into_iter().chain(olds).find_map(|i| {
            let c = get_condition(&self.rss[i].obj["status"], "ReplicaFailure")?;
            let mut c = c.clone();
            c["lastUpdateTime"] = c["lastTransitionTime"].clone();
            Some(c)
        })
    }

    /// Progressing Unknown while paused, and once more on resume.
    fn check_paused_conditions(&mut self) {
        if progress_deadline(self.d).is_none() {
            return;
        }
        let reason = get_condition(&self.status, "Progressing")
            .and_then(|c| c["reason"].as_str())
            .map(str::to_string);
        if reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return;
        }
        let paused = self.d["spec"]["paused"].as_bool() == Some(true);
        let paused_shown = reason.as_deref() == Some("DeploymentPaused");
        let c = if paused && !paused_shown {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                self.now,
            )
        } else if !paused && paused_shown {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                self.now,
            )
        } else {
            return;
        };
        set_condition(&mut self.status, c);
    }

    fn finish(self) -> Plan {
        let mut writes = Vec::new();
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for rs in self.rss {
            if rs.create {
                let mut obj = rs.obj;
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("creationTimestamp");
                }
                writes.push(Write::Create {
                    rs: obj,
                    events: rs.events,
                });
            } else if rs.delete {
                deletes.push(Write::Delete {
                    name: str_at(&rs.obj, "/metadata/name").to_string(),
                    uid: str_at(&rs.obj, "/metadata/uid").to_string(),
                });
            } else if rs.changed {
                updates.push(Write::Update {
                    rs: rs.obj,
                    events: rs.events,
                });
            }
        }
        writes.extend(updates);
        writes.extend(deletes);
        if self.status != self.d["status"] {
            writes.push(Write::Status(self.status));
        }
        if let Some(rev) = self.revision {
            let current = self.d["metadata"]["annotations"][REVISION].as_str();
            if current != Some(rev.as_str()) {
                writes.push(Write::Revision(rev));
            }
        }
        Plan {
            writes,
            skipped: None,
        }
    }
}

/// The new ReplicaSet for `d`'s template, at size 0 (the caller sizes it).
pub fn new_replicaset(d: &Value, now: i64) -> Value {
    let collisions = int_at(d, "/status/collisionCount");
    let hash = pod_template_hash(&d["spec"]["template"], collisions);
    let mut template = d["spec"]["template"].clone();
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    if !selector["matchLabels"].is_object() {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", str_at(d, "/metadata/name")),
            "namespace": d["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": {},
            "ownerReferences": [controller_ref(&with_kind(d, "Deployment"))],
            // In memory only (sorting); dropped before the create.
            "creationTimestamp": objects::rfc3339(now),
        },
        "spec": {
            "replicas": 0,
            "minReadySeconds": int_at(d, "/spec/minReadySeconds").unwrap_or(0),
            "selector": selector,
            "template": template,
        },
    });
    copy_annotations(d, &mut rs);
    rs
}

fn annotations_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"]
        .as_object_mut()
        .expect("made an object above")
}

/// Copies the Deployment's annotations (change-cause and the like) to the
/// ReplicaSet; answers whether any changed.
fn copy_annotations(d: &Value, rs: &mut Value) -> bool {
    let Some(from) = d["metadata"]["annotations"].as_object() else {
        return false;
    };
    let to = annotations_mut(rs);
    let mut changed = false;
    for (k, v) in from {
        if NOT_COPIED.contains(&k.as_str()) || to.get(k) == Some(v) {
            continue;
        }
        to.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// Raises the ReplicaSet's revision to `revision`; a ReplicaSet that had
/// one (a rollback) keeps it in the revision history. Answers whether it
/// changed (kube's `SetNewReplicaSetAnnotations`).
fn set_revision(rs: &mut Value, revision: i64) -> bool {
    let a = annotations_mut(rs);
    let old = a.get(REVISION).and_then(Value::as_str).map(str::to_string);
    let old_n = match old.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return false,
    };
    if old_n >= revision {
        return false;
    }
    a.insert(REVISION.into(), json!(revision.to_string()));
    if let Some(old) = old {
        let history = a
            .get(REVISION_HISTORY)
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut entries: Vec<&str> = history.split(',').filter(|s| !s.is_empty()).collect();
        entries.push(&old);
        while entries.join(",").len() > MAX_REVISION_HISTORY_CHARS && entries.len() > 1 {
            entries.remove(0);
        }
        let joined = entries.join(",");
        a.insert(REVISION_HISTORY.into(), json!(joined));
    }
    true
}

fn set_replicas_annotations(rs: &mut Value, desired: i64, max: i64) {
    let a = annotations_mut(rs);
    a.insert(DESIRED_REPLICAS.into(), json!(desired.to_string()));
    a.insert(MAX_REPLICAS.into(), json!(max.to_string()));
}

// ---------------------------------------------------------------------------
// Carrying plans out.

#[derive(Default)]
struct Controller {
    expectations: Expectations,
    /// Deployments already warned about, by uid and generation.
    warned: HashSet<(String, i64)>,
}

impl Controller {
    async fn reconcile_all(&mut self, client: &Client, caches: &Caches) -> Option<Duration> {
        let now = now_secs();
        let by_namespace = |objects: Vec<Value>| {
            let mut map: HashMap<String, Vec<Value>> = HashMap::new();
            for o in objects {
                map.entry(str_at(&o, "/metadata/namespace").to_string())
                    .or_default()
                    .push(o);
            }
            map
        };
        let rss = by_namespace(caches.replicasets.list());
        let pods = by_namespace(caches.pods.list());
        let deployments = caches.deployments.list();
        let live: HashSet<String> = deployments
            .iter()
            .map(|d| str_at(d, "/metadata/uid").to_string())
            .collect();
        self.expectations.retain(&live);
        self.warned.retain(|(uid, _)| live.contains(uid));
        for d in deployments {
            let uid = str_at(&d, "/metadata/uid").to_string();
            if !self.expectations.satisfied(&uid) {
                continue;
            }
            let ns = str_at(&d, "/metadata/namespace");
            let empty = Vec::new();
            let p = plan(
                &d,
                rss.get(ns).unwrap_or(&empty),
                pods.get(ns).unwrap_or(&empty),
                now,
            );
            if let Some(why) = p.skipped {
                let generation = int_at(&d, "/metadata/generation").unwrap_or(0);
                if self.warned.insert((uid, generation)) {
                    tracing::warn!(
                        deployment = str_at(&d, "/metadata/name"),
                        namespace = ns,
                        "skipping deployment: {why}"
                    );
                }
                continue;
            }
            self.carry_out(client, caches, &with_kind(&d, "Deployment"), p.writes)
                .await;
        }
        // Progress deadlines and availability pass with nothing changing;
        // RESYNC covers them.
        min_opt(None, self.expectations.next_deadline())
    }

    /// Writes in order; the first failure ends the round for this
    /// Deployment (the next round plans from fresher caches).
    async fn carry_out(&mut self, client: &Client, caches: &Caches, d: &Value, writes: Vec<Write>) {
        let uid = str_at(d, "/metadata/uid").to_string();
        let (ns, d_name) = key_of(d);
        let d_rv = str_at(d, "/metadata/resourceVersion").to_string();
        let rs_path = |name: Option<&str>| resource_path("apps/v1", "replicasets", Some(&ns), name);
        let d_path = resource_path("apps/v1", "deployments", Some(&ns), Some(&d_name));
        let expect_rs = |name: &str, want: Want| Expectation {
            informer: caches.replicasets.clone(),
            namespace: ns.clone(),
            name: name.to_string(),
            want,
        };
        let expect_d = || Expectation {
            informer: caches.deployments.clone(),
            namespace: ns.clone(),
            name: d_name.clone(),
            want: Want::Changed(d_rv.clone()),
        };
        for write in writes {
            match write {
                Write::Patch { name, rv, body } => {
                    match client
                        .patch(&rs_path(Some(&name)), PatchType::Merge, &body)
                        .await
                    {
                        Ok(_) => self
                            .expectations
                            .expect(&uid, expect_rs(&name, Want::Changed(rv))),
                        Err(e) => {
                            return log_write_error("patching a replicaset's owner", &name, &e);
                        }
                    }
                }
                Write::Create { rs, events } => {
                    let name = str_at(&rs, "/metadata/name").to_string();
                    match client.create(&rs_path(None), &rs).await {
                        Ok(_) => {
                            self.expectations
                                .expect(&uid, expect_rs(&name, Want::Present));
                            self.events(client, d, &events).await;
                        }
                        Err(e) if e.code == 409 => {
                            if !self.is_ours(client, d, &rs_path(Some(&name))).await {
                                self.bump_collision_count(client, d, &d_path).await;
                                self.expectations.expect(&uid, expect_d());
                                return;
                            }
                        }
                        Err(e) => {
                            log_write_error("creating a replicaset", &name, &e);
                            let message = format!(
                                "Failed to create new replica set \"{name}\": {}",
                                e.message
                            );
                            record_event(
                                client,
                                d,
                                "Warning",
                                "ReplicaSetCreateError",
                                &message,
                                COMPONENT,
                            )
                            .await;
                            return;
                        }
                    }
                }
                Write::Update { rs, events } => {
                    let name = str_at(&rs, "/metadata/name").to_string();
                    let rv = str_at(&rs, "/metadata/resourceVersion").to_string();
                    match client.update(&rs_path(Some(&name)), &rs).await {
                        Ok(_) => {
                            self.expectations
                                .expect(&uid, expect_rs(&name, Want::Changed(rv)));
                            self.events(client, d, &events).await;
                        }
                        Err(e) => return log_write_error("updating a replicaset", &name, &e),
                    }
                }
                Write::Delete { name, uid: rs_uid } => {
                    let options = json!({"preconditions": {"uid": rs_uid}});
                    match client.delete(&rs_path(Some(&name)), &options).await {
                        Ok(_) => self
                            .expectations
                            .expect(&uid, expect_rs(&name, Want::Gone(rs_uid))),
                        Err(e) => log_write_error("deleting an old replicaset", &name, &e),
                    }
                }
                Write::Status(status) => {
                    let mut body = d.clone();
                    body["status"] = status;
                    match client.update(&format!("{d_path}/status"), &body).await {
                        Ok(_) => self.expectations.expect(&uid, expect_d()),
                        Err(e) => {
                            return log_write_error("updating deployment status", &d_name, &e);
                        }
                    }
                }
                Write::Revision(rev) => {
                    let body = json!({"metadata": {"annotations": {REVISION: rev}}});
                    match client.patch(&d_path, PatchType::Merge, &body).await {
                        Ok(_) => self.expectations.expect(&uid, expect_d()),
                        Err(e) => {
                            log_write_error("annotating the deployment's revision", &d_name, &e)
                        }
                    }
                }
            }
        }
    }

    async fn events(&self, client: &Client, d: &Value, messages: &[String]) {
        for m in messages {
            record_event(client, d, "Normal", "ScalingReplicaSet", m, COMPONENT).await;
        }
    }

    /// The name is taken: by this Deployment's own ReplicaSet for this
    /// template (a stale cache), or by another one (a hash collision).
    async fn is_ours(&self, client: &Client, d: &Value, path: &str) -> bool {
        match client.get(path).await {
            Ok(rs) => {
                controller_uid(&rs) == Some(str_at(d, "/metadata/uid"))
                    && templates_equal(&d["spec"]["template"], &rs["spec"]["template"])
            }
            // Gone again: the next round creates it.
            Err(_) => true,
        }
    }

    /// A new collisionCount gives the next round another hash and name.
    async fn bump_collision_count(&self, client: &Client, d: &Value, d_path: &str) {
        let mut body = d.clone();
        let count = int_at(d, "/status/collisionCount").unwrap_or(0) + 1;
        if !body["status"].is_object() {
            body["status"] = json!({});
        }
        body["status"]["collisionCount"] = json!(count);
        tracing::info!(
            deployment = str_at(d, "/metadata/name"),
            count,
            "replicaset name collision; bumping collisionCount"
        );
        if let Err(e) = client.update(&format!("{d_path}/status"), &body).await {
            log_write_error("bumping collisionCount", str_at(d, "/metadata/name"), &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn template(image: &str) -> Value {
        json!({
            "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "image": image}]}
        })
    }

    fn deployment(replicas: i64, strategy: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1,
                         "resourceVersion": "1",
                         "annotations": {"kubernetes.io/change-cause": "first",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template("nginx:1"),
                "strategy": strategy,
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            }
        })
    }

    fn rolling() -> Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    }

    /// A cluster in miniature: the plan's writes applied, and the
    /// ReplicaSet controller played by `pods_follow`.
    struct Sim {
        d: Value,
        rss: Vec<Value>,
        pods: Vec<Value>,
        events: Vec<String>,
        clock: i64,
        next_uid: u32,
    }

    impl Sim {
        fn new(d: Value) -> Sim {
            Sim {
                d,
                rss: Vec::new(),
                pods: Vec::new(),
                events: Vec::new(),
                clock: NOW,
                next_uid: 0,
            }
        }

        fn round(&mut self) -> Vec<Write> {
            self.clock += 1;
            let p = plan(&self.d, &self.rss, &self.pods, self.clock);
            for w in &p.writes {
                match w.clone() {
                    Write::Create { mut rs, events } => {
                        self.next_uid += 1;
                        rs["metadata"]["uid"] = json!(format!("rs-{}", self.next_uid));
                        rs["metadata"]["generation"] = json!(1);
                        rs["metadata"]["creationTimestamp"] = json!(objects::rfc3339(self.clock));
                        self.rss.push(rs);
                        self.events.extend(events);
                    }
                    Write::Update { rs, events } => {
                        let i = self.index(str_at(&rs, "/metadata/name"));
                        let old = self.rss[i].clone();
                        let mut rs = rs;
                        if rs["spec"] != old["spec"] {
                            rs["metadata"]["generation"] =
                                json!(int_at(&old, "/metadata/generation").unwrap() + 1);
                        }
                        self.rss[i] = rs;
                        self.events.extend(events);
                    }
                    Write::Delete { name, .. } => {
                        let i = self.index(&name);
                        self.rss.remove(i);
                    }
                    Write::Status(s) => self.d["status"] = s,
                    Write::Revision(r) => self.d["metadata"]["annotations"][REVISION] = json!(r),
                    Write::Patch { .. } => panic!("nothing to adopt here"),
                }
            }
            p.writes
        }

        fn index(&self, name: &str) -> usize {
            self.rss
                .iter()
                .position(|r| str_at(r, "/metadata/name") == name)
                .unwrap()
        }

        /// The ReplicaSet controller's work: pods for every ReplicaSet;
        /// new ones ready when `ready`.
        fn pods_follow(&mut self, ready: bool) {
            for rs in &mut self.rss {
                let spec = int_at(rs, "/spec/replicas").unwrap();
                let was = rs["status"]["availableReplicas"].as_i64().unwrap_or(0);
                let available = if ready { spec } else { was.min(spec) };
                rs["status"] = json!({
                    "replicas": spec, "readyReplicas": available, "availableReplicas": available,
                    "observedGeneration": rs["metadata"]["generation"],
                });
            }
        }

        fn spec_of(&self, name: &str) -> i64 {
            int_at(&self.rss[self.index(name)], "/spec/replicas").unwrap()
        }

        fn available(&self) -> i64 {
            self.rss
                .iter()
                .map(|r| r["status"]["availableReplicas"].as_i64().unwrap_or(0))
                .sum()
        }

        fn total_spec(&self) -> i64 {
            self.rss
                .iter()
                .map(|r| int_at(r, "/spec/replicas").unwrap())
                .sum()
        }

        fn set_template(&mut self, image: &str) {
            self.d["spec"]["template"] = template(image);
            let g = int_at(&self.d, "/metadata/generation").unwrap();
            self.d["metadata"]["generation"] = json!(g + 1);
        }

        fn rollout_done(&self) -> bool {
            let s = &self.d["status"];
            let n = |f: &str| s[f].as_i64().unwrap_or(0);
            n("observedGeneration") >= int_at(&self.d, "/metadata/generation").unwrap()
                && n("updatedReplicas") == replicas_of(&self.d)
                && n("replicas") == n("updatedReplicas")
                && n("availableReplicas") == n("updatedReplicas")
        }

        fn condition(&self, kind: &str) -> Value {
            get_condition(&self.d["status"], kind)
                .cloned()
                .unwrap_or(Value::Null)
        }
    }

    fn name_for(image: &str) -> String {
        format!("web-{}", pod_template_hash(&template(image), None))
    }

    #[test]
    fn the_hash_is_stable_and_follows_the_template() {
        let a = pod_template_hash(&template("nginx:1"), None);
        assert_eq!(a, pod_template_hash(&template("nginx:1"), None));
        let reordered = json!({
            "spec": {"containers": [{"image": "nginx:1", "name": "c"}]},
            "metadata": {"labels": {"app": "web"}}
        });
        assert_eq!(a, pod_template_hash(&reordered, None));
        assert_ne!(a, pod_template_hash(&template("nginx:2"), None));
        assert_ne!(a, pod_template_hash(&template("nginx:1"), Some(1)));
        assert!(
            !a.is_empty() && a.bytes().all(|b| SAFE_ALPHABET.contains(&b)),
            "{a}"
        );
    }

    #[test]
    fn fenceposts_round_like_kube() {
        let d = deployment(3, rolling());
        assert_eq!((max_surge(&d), max_unavailable(&d)), (1, 0));
        let d = deployment(
            10,
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "5%"}}),
        );
        assert_eq!(
            (max_surge(&d), max_unavailable(&d)),
            (0, 1),
            "both zero: one may be unavailable"
        );
        let d = deployment(
            4,
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": "50%"}}),
        );
        assert_eq!((max_surge(&d), max_unavailable(&d)), (2, 2));
        let d = deployment(4, json!({"type": "Recreate"}));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 0));
    }

    #[test]
    fn the_new_replicaset_has_kubes_shape() {
        let mut sim = Sim::new(deployment(3, rolling()));
        let writes = sim.round();
        let Write::Create { rs, events } = &writes[0] else {
            panic!("{writes:?}")
        };
        let hash = pod_template_hash(&template("nginx:1"), None);
        assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(
            rs["metadata"]["labels"],
            json!({"app": "web", HASH_LABEL: hash})
        );
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
            hash
        );
        assert_eq!(
            rs["spec"]["selector"]["matchLabels"],
            json!({"app": "web", HASH_LABEL: hash})
        );
        assert_eq!(rs["spec"]["replicas"], 3);
        assert!(rs["metadata"].get("creationTimestamp").is_none());
        assert_eq!(
            rs["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid",
                    "controller": true, "blockOwnerDeletion": true}])
        );
        let a = &rs["metadata"]["annotations"];
        assert_eq!(a[REVISION], "1");
        assert_eq!(a[DESIRED_REPLICAS], "3");
        assert_eq!(a[MAX_REPLICAS], "4");
        assert_eq!(a["kubernetes.io/change-cause"], "first");
        assert!(
            a.get("kubectl.kubernetes.io/last-applied-configuration")
                .is_none()
        );
        assert_eq!(
            events,
            &[format!("Scaled up replica set web-{hash} from 0 to 3")]
        );
        assert_eq!(sim.d["metadata"]["annotations"][REVISION], "1");
        assert_eq!(
            sim.condition("Progressing")["reason"],
            "NewReplicaSetCreated"
        );
        assert_eq!(sim.condition("Available")["status"], "False");
    }

    #[test]
    fn a_rolling_update_keeps_three_available_and_at_most_four() {
        let mut sim = Sim::new(deployment(3, rolling()));
        sim.round();
        sim.pods_follow(true);
        sim.round();
        assert!(sim.rollout_done());
        let complete = sim.condition("Progressing");
        assert_eq!(complete["reason"], "NewReplicaSetAvailable");
        assert_eq!(
            complete["message"],
            format!(
                "ReplicaSet \"{}\" has successfully progressed.",
                name_for("nginx:1")
            )
        );
        assert_eq!(
            sim.condition("Available")["reason"],
            "MinimumReplicasAvailable"
        );
        assert_eq!(sim.d["status"]["observedGeneration"], 1);
        // Settled: nothing more to write.
        assert_eq!(sim.round(), vec![]);

        sim.set_template("nginx:2");
        sim.events.clear();
        let (v1, v2) = (name_for("nginx:1"), name_for("nginx:2"));
        for step in 0..20 {
            sim.round();
            assert!(sim.total_spec() <= 4, "step {step}: surge at most 1");
            // Pods start unready, then turn ready: two reconciles per change.
            sim.pods_follow(false);
            assert!(sim.available() >= 3, "step {step}: none unavailable");
            sim.round();
            sim.pods_follow(true);
            if sim.rollout_done() {
                break;
            }
        }
        sim.round();
        assert!(sim.rollout_done(), "{}", sim.d["status"]);
        assert_eq!((sim.spec_of(&v1), sim.spec_of(&v2)), (0, 3));
        assert_eq!(
            sim.events,
            [
                format!("Scaled up replica set {v2} from 0 to 1"),
                format!("Scaled down replica set {v1} from 3 to 2"),
                format!("Scaled up replica set {v2} from 1 to 2"),
                format!("Scaled down replica set {v1} from 2 to 1"),
                format!("Scaled up replica set {v2} from 2 to 3"),
                format!("Scaled down replica set {v1} from 1 to 0"),
            ]
        );
        let progressing = sim.condition("Progressing");
        assert_eq!(progressing["reason"], "NewReplicaSetAvailable");
        assert_eq!(
            progressing["message"],
            format!("ReplicaSet \"{v2}\" has successfully progressed.")
        );
        assert_eq!(sim.d["metadata"]["annotations"][REVISION], "2");
        let rs2 = &sim.rss[sim.index(&v2)];
        assert_eq!(rs2["metadata"]["annotations"][REVISION], "2");
    }

    #[test]
    fn progress_shows_while_rolling_and_a_deadline_can_pass() {
        let mut sim = Sim::new(deployment(3, rolling()));
        sim.round();
        sim.pods_follow(true);
        sim.round();
        sim.set_template("nginx:2");
        sim.round();
        sim.pods_follow(false);
        sim.round();
        assert_eq!(sim.condition("Progressing")["reason"], "ReplicaSetUpdated");
        assert_eq!(
            sim.condition("Progressing")["message"],
            format!("ReplicaSet \"{}\" is progressing.", name_for("nginx:2"))
        );
        sim.clock += 601;
        sim.round();
        let c = sim.condition("Progressing");
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("ProgressDeadlineExceeded"))
        );
    }

    #[test]
    fn recreate_scales_old_down_and_waits_for_its_pods() {
        let mut sim = Sim::new(deployment(3, json!({"type": "Recreate"})));
        sim.round();
        sim.pods_follow(true);
        sim.round();
        let v1 = name_for("nginx:1");
        let v1_uid = str_at(&sim.rss[0], "/metadata/uid").to_string();
        sim.set_template("nginx:2");
        let writes = sim.round();
        assert!(matches!(&writes[0], Write::Update { .. }), "{writes:?}");
        assert_eq!(sim.spec_of(&v1), 0);
        assert_eq!(sim.rss.len(), 1, "no new ReplicaSet yet");
        sim.pods_follow(true);
        // A terminating pod of the old ReplicaSet holds the new one back.
        sim.pods = vec![json!({"metadata": {"name": "old", "deletionTimestamp": "x",
            "ownerReferences": [{"uid": v1_uid, "controller": true}]}, "status": {"phase": "Running"}})];
        sim.round();
        assert_eq!(sim.rss.len(), 1);
        sim.pods.clear();
        sim.round();
        assert_eq!(
            sim.spec_of(&name_for("nginx:2")),
            3,
            "the new one at full size at once"
        );
        sim.pods_follow(true);
        sim.round();
        assert!(sim.rollout_done());
    }

    #[test]
    fn rollback_reuses_the_old_replicaset_with_the_next_revision() {
        let mut sim = Sim::new(deployment(1, rolling()));
        sim.round();
        sim.pods_follow(true);
        for image in ["nginx:2", "nginx:1"] {
            sim.set_template(image);
            for _ in 0..6 {
                sim.round();
                sim.pods_follow(true);
            }
        }
        assert_eq!(sim.rss.len(), 2, "the old ReplicaSet is reused");
        let v1 = &sim.rss[sim.index(&name_for("nginx:1"))];
        assert_eq!(v1["metadata"]["annotations"][REVISION], "3");
        assert_eq!(v1["metadata"]["annotations"][REVISION_HISTORY], "1");
        assert_eq!(int_at(v1, "/spec/replicas"), Some(1));
        let v2 = &sim.rss[sim.index(&name_for("nginx:2"))];
        assert_eq!(v2["metadata"]["annotations"][REVISION], "2");
        assert_eq!(int_at(v2, "/spec/replicas"), Some(0));
        assert_eq!(sim.d["metadata"]["annotations"][REVISION], "3");
        assert!(sim.rollout_done());
    }

    #[test]
    fn old_replicasets_beyond_the_history_limit_are_deleted() {
        let mut d = deployment(1, rolling());
        d["spec"]["revisionHistoryLimit"] = json!(1);
        let mut sim = Sim::new(d);
        sim.round();
        sim.pods_follow(true);
        for image in ["nginx:2", "nginx:3", "nginx:4"] {
            sim.set_template(image);
            for _ in 0..6 {
                sim.round();
                sim.pods_follow(true);
            }
        }
        let mut left: Vec<String> = sim
            .rss
            .iter()
            .map(|r| str_at(r, "/metadata/name").to_string())
            .collect();
        left.sort();
        let mut want = vec![name_for("nginx:3"), name_for("nginx:4")];
        want.sort();
        assert_eq!(left, want, "the newest old one and the current one stay");
    }

    #[test]
    fn scaling_resizes_the_replicaset_without_a_rollout() {
        let mut sim = Sim::new(deployment(3, rolling()));
        sim.round();
        sim.pods_follow(true);
        sim.round();
        sim.events.clear();
        sim.d["spec"]["replicas"] = json!(5);
        sim.d["metadata"]["generation"] = json!(2);
        sim.round();
        let v1 = name_for("nginx:1");
        assert_eq!(sim.spec_of(&v1), 5);
        assert_eq!(
            sim.events,
            [format!("Scaled up replica set {v1} from 3 to 5")]
        );
        let a = &sim.rss[0]["metadata"]["annotations"];
        assert_eq!(
            (a[DESIRED_REPLICAS].as_str(), a[MAX_REPLICAS].as_str()),
            (Some("5"), Some("7"))
        );
        sim.pods_follow(true);
        sim.round();
        assert!(sim.rollout_done());
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        let mut sim = Sim::new(deployment(10, rolling()));
        sim.round();
        sim.pods_follow(true);
        sim.round();
        sim.set_template("nginx:2");
        // Surge 3, unavailable 2: new at 3, old down to 8 at once.
        sim.round();
        sim.pods_follow(false);
        let (v1, v2) = (name_for("nginx:1"), name_for("nginx:2"));
        assert_eq!((sim.spec_of(&v1), sim.spec_of(&v2)), (8, 3));
        sim.d["spec"]["replicas"] = json!(20);
        sim.round();
        // The allowed total goes from 10+3 to 20+5: each grows by 25/13
        // (8 → 15, 3 → 6) and the rounding leftover goes to the largest.
        assert_eq!((sim.spec_of(&v1), sim.spec_of(&v2)), (19, 6));
        assert_eq!(sim.total_spec(), 25);
    }

    #[test]
    fn a_paused_deployment_does_not_roll_out() {
        let mut sim = Sim::new(deployment(2, rolling()));
        sim.round();
        sim.pods_follow(true);
        sim.round();
        sim.d["spec"]["paused"] = json!(true);
        sim.set_template("nginx:2");
        sim.round();
        assert_eq!(sim.rss.len(), 1);
        let c = sim.condition("Progressing");
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("Unknown"), Some("DeploymentPaused"))
        );
        sim.d["spec"]["paused"] = json!(false);
        sim.round();
        assert_eq!(sim.rss.len(), 2, "resumed: the rollout starts");
    }

    #[test]
    fn orphans_are_adopted_and_mismatched_deployments_skipped() {
        let d = deployment(1, rolling());
        let orphan = json!({"metadata": {"name": "web-x", "namespace": "default", "uid": "o",
            "resourceVersion": "7", "labels": {"app": "web"}}, "spec": {"replicas": 1}});
        let p = plan(&d, &[orphan], &[], NOW);
        let [Write::Patch { name, rv, body }] = p.writes.as_slice() else {
            panic!("{:?}", p.writes)
        };
        assert_eq!((name.as_str(), rv.as_str()), ("web-x", "7"));
        assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Deployment");

        let mut bad = deployment(1, rolling());
        bad["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        let p = plan(&bad, &[], &[], NOW);
        assert!(p.writes.is_empty() && p.skipped.is_some());
    }

    #[test]
    fn revisions_keep_a_bounded_history() {
        let mut rs = json!({"metadata": {"annotations": {REVISION: "4", REVISION_HISTORY: "1,2"}}});
        assert!(set_revision(&mut rs, 7));
        assert_eq!(rs["metadata"]["annotations"][REVISION_HISTORY], "1,2,4");
        assert!(!set_revision(&mut rs, 7), "never lowered or repeated");
    }
}
