//! The garbage collector (kube-controller-manager's, reduced to the kinds
//! k3rs caches: Pods, ReplicaSets, Deployments, Nodes, node Leases, Services
//! and EndpointSlices).
//!
//! It follows `metadata.ownerReferences` both ways:
//! - a dependent whose owners are all gone is deleted (background);
//! - an owner deleted with `propagationPolicy: Foreground` carries the
//!   `foregroundDeletion` finalizer: its dependents are deleted, and once
//!   none is left the finalizer goes, and with it the owner;
//! - an owner deleted with `Orphan` carries `orphan`: its dependents lose
//!   their reference to it, then the finalizer goes.
//!
//! The API server adds those finalizers on DELETE; this module removes them.
//! Decisions are pure functions (tested below); a cache that says an owner
//! is gone is always confirmed with a GET first, so cache lag never deletes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::Caches;
use crate::client::{Client, ClientResult, PatchType, resource_path};
use crate::informer::Informer;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
/// Rounds run at least this often, so a failed write is retried even when
/// no cache changes.
const RESYNC: Duration = Duration::from_secs(10);
/// Lets a burst of changes (a ReplicaSet's pods going) land before a round.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// A kind the collector follows, as owner and as dependent.
#[derive(Debug, PartialEq)]
pub struct Kind {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

pub const KINDS: [Kind; 7] = [
    Kind {
        kind: "Pod",
        api_version: "v1",
        plural: "pods",
        namespaced: true,
    },
    Kind {
        kind: "ReplicaSet",
        api_version: "apps/v1",
        plural: "replicasets",
        namespaced: true,
    },
    Kind {
        kind: "Deployment",
        api_version: "apps/v1",
        plural: "deployments",
        namespaced: true,
    },
    Kind {
        kind: "Node",
        api_version: "v1",
        plural: "nodes",
        namespaced: false,
    },
    Kind {
        kind: "Lease",
        api_version: "coordination.k8s.io/v1",
        plural: "leases",
        namespaced: true,
    },
    Kind {
        kind: "Service",
        api_version: "v1",
        plural: "services",
        namespaced: true,
    },
    Kind {
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        namespaced: true,
    },
];

fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// The followed kind an owner reference names (any version of its group),
/// or `None`: the collector leaves such dependents alone.
pub fn kind_of(reference: &Value) -> Option<&'static Kind> {
    let kind = reference["kind"].as_str()?;
    let api_version = reference["apiVersion"].as_str().unwrap_or("");
    KINDS
        .iter()
        .find(|k| k.kind == kind && group(k.api_version) == group(api_version))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn uid(obj: &Value) -> &str {
    str_at(obj, "/metadata/uid")
}

fn references(obj: &Value) -> &[Value] {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn being_deleted(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

/// An owner as its dependents see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OwnerState {
    /// It exists and stays: so do its dependents.
    Solid,
    /// It is gone, or its name now belongs to another object (another uid).
    Dangling,
    /// It is being deleted in the foreground: its dependents go first.
    Waiting,
    /// Not known (a kind not followed, a failed lookup): nothing is done.
    Unknown,
}

/// The state of the owner `reference` names, given the object found under
/// its name (from the cache or a GET); `None` means absent.
pub fn owner_state(reference: &Value, found: Option<&Value>) -> OwnerState {
    match found {
        Some(o) if uid(o) == reference["uid"].as_str().unwrap_or("") => {
            if being_deleted(o) && finalizers(o).contains(&FOREGROUND) {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            }
        }
        _ => OwnerState::Dangling,
    }
}

/// What to do with a dependent.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Keep,
    /// Delete it with this propagation policy.
    Delete(&'static str),
    /// Keep it, without its references to these owner uids.
    DropReferences(Vec<String>),
}

/// kube's `attemptToDeleteItem`: `owners` pairs each owner uid with its
/// state; `has_dependents` says whether something references the dependent
/// itself (then it goes in the foreground too, so its own dependents go
/// before it).
pub fn decide(owners: &[(String, OwnerState)], has_dependents: bool) -> Decision {
    let any = |s: OwnerState| owners.iter().any(|(_, o)| *o == s);
    if owners.is_empty() || any(OwnerState::Unknown) {
        return Decision::Keep;
    }
    if any(OwnerState::Solid) {
        // A living owner keeps it; references to the others are dropped.
        let stale: Vec<String> = owners
            .iter()
            .filter(|(_, s)| *s != OwnerState::Solid)
            .map(|(u, _)| u.clone())
            .collect();
        return if stale.is_empty() {
            Decision::Keep
        } else {
            Decision::DropReferences(stale)
        };
    }
    if any(OwnerState::Waiting) && has_dependents {
        Decision::Delete("Foreground")
    } else {
        Decision::Delete("Background")
    }
}

/// What to do with an owner being deleted with a propagation finalizer.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnerAction {
    /// Its dependents are still going.
    Wait,
    /// Drop its reference from these dependents (by index in the input).
    Orphan(Vec<usize>),
    /// Nothing depends on it any more (to be confirmed with the API).
    RemoveFinalizer(&'static str),
}

/// The step for `owner`, given the objects that reference it; `None` when
/// it is not being deleted with `orphan` or `foregroundDeletion`. Orphaning
/// comes first: an owner with both finalizers keeps its dependents.
pub fn owner_action(owner: &Value, dependents: &[&Value]) -> Option<OwnerAction> {
    if !being_deleted(owner) {
        return None;
    }
    let f = finalizers(owner);
    if f.contains(&ORPHAN) {
        return Some(if dependents.is_empty() {
            OwnerAction::RemoveFinalizer(ORPHAN)
        } else {
            OwnerAction::Orphan((0..dependents.len()).collect())
        });
    }
    if f.contains(&FOREGROUND) {
        // Its dependents are deleted by `decide` (they see it Waiting);
        // it waits until they are all gone, terminating ones included.
        return Some(if dependents.is_empty() {
            OwnerAction::RemoveFinalizer(FOREGROUND)
        } else {
            OwnerAction::Wait
        });
    }
    None
}

/// The dependent's owner references without those to `uids` (`null` when
/// none is left: a merge patch then removes the field).
pub fn references_without(dependent: &Value, uids: &[String]) -> Value {
    let kept: Vec<Value> = references(dependent)
        .iter()
        .filter(|r| !uids.iter().any(|u| r["uid"].as_str() == Some(u.as_str())))
        .cloned()
        .collect();
    if kept.is_empty() {
        Value::Null
    } else {
        json!(kept)
    }
}

/// The owner's finalizers without `finalizer`.
pub fn finalizers_without(owner: &Value, finalizer: &str) -> Value {
    json!(
        finalizers(owner)
            .into_iter()
            .filter(|f| *f != finalizer)
            .collect::<Vec<_>>()
    )
}

fn informer<'a>(caches: &'a Caches, kind: &Kind) -> &'a Informer {
    match kind.kind {
        "Pod" => &caches.pods,
        "ReplicaSet" => &caches.replicasets,
        "Deployment" => &caches.deployments,
        "Node" => &caches.nodes,
        "Service" => &caches.services,
        "EndpointSlice" => &caches.endpointslices,
        _ => &caches.leases,
    }
}

fn path_of(kind: &Kind, namespace: &str, name: &str) -> String {
    let ns = kind.namespaced.then_some(namespace);
    resource_path(kind.api_version, kind.plural, ns, Some(name))
}

fn object_path(kind: &Kind, obj: &Value) -> String {
    path_of(
        kind,
        str_at(obj, "/metadata/namespace"),
        str_at(obj, "/metadata/name"),
    )
}

/// One round's view: every cached object with its kind, and who
/// references whom.
struct World {
    objects: Vec<(&'static Kind, Value)>,
    /// Indexes into `objects` of the dependents of each owner uid.
    dependents: HashMap<String, Vec<usize>>,
}

impl World {
    fn load(caches: &Caches) -> World {
        let mut objects = Vec::new();
        for kind in &KINDS {
            for obj in informer(caches, kind).list() {
                objects.push((kind, obj));
            }
        }
        let mut dependents: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (_, obj)) in objects.iter().enumerate() {
            let mut seen = HashSet::new();
            for r in references(obj) {
                if let Some(u) = r["uid"].as_str().filter(|u| seen.insert(*u)) {
                    dependents.entry(u.to_string()).or_default().push(i);
                }
            }
        }
        World {
            objects,
            dependents,
        }
    }
}

/// Owner states confirmed with the API this round, by uid.
type Confirmed = HashMap<String, OwnerState>;

/// The state of the owner `reference` of a dependent in `namespace`: from
/// the cache when it shows the owner, else from a GET.
async fn resolve(
    client: &Client,
    caches: &Caches,
    confirmed: &mut Confirmed,
    namespace: &str,
    reference: &Value,
) -> OwnerState {
    let Some(kind) = kind_of(reference) else {
        return OwnerState::Unknown;
    };
    let name = reference["name"].as_str().unwrap_or("");
    let ns = kind.namespaced.then_some(namespace);
    let cached = informer(caches, kind).get(ns, name);
    let state = owner_state(reference, cached.as_ref());
    if state != OwnerState::Dangling {
        return state;
    }
    let owner_uid = reference["uid"].as_str().unwrap_or("").to_string();
    if let Some(s) = confirmed.get(&owner_uid) {
        return *s;
    }
    let state = match client.get(&path_of(kind, namespace, name)).await {
        Ok(found) => owner_state(reference, Some(&found)),
        Err(e) if e.is_not_found() => OwnerState::Dangling,
        Err(e) => {
            tracing::debug!(owner = name, error = %e, "looking up an owner failed");
            OwnerState::Unknown
        }
    };
    confirmed.insert(owner_uid, state);
    state
}

async fn collect_dependent(
    client: &Client,
    caches: &Caches,
    world: &World,
    confirmed: &mut Confirmed,
    kind: &Kind,
    obj: &Value,
) {
    let namespace = str_at(obj, "/metadata/namespace");
    let mut owners = Vec::new();
    for reference in references(obj) {
        let state = resolve(client, caches, confirmed, namespace, reference).await;
        owners.push((reference["uid"].as_str().unwrap_or("").to_string(), state));
    }
    let has_dependents = world.dependents.contains_key(uid(obj));
    let path = object_path(kind, obj);
    let result = match decide(&owners, has_dependents) {
        Decision::Keep => return,
        Decision::Delete(policy) => {
            tracing::debug!(%path, policy, "deleting a dependent whose owners are gone");
            let options = json!({"propagationPolicy": policy, "preconditions": {"uid": uid(obj)}});
            client.delete(&path, &options).await.map(drop)
        }
        Decision::DropReferences(uids) => {
            let patch = json!({"metadata": {
                "ownerReferences": references_without(obj, &uids),
                "resourceVersion": obj["metadata"]["resourceVersion"],
            }});
            client
                .patch(&path, PatchType::Merge, &patch)
                .await
                .map(drop)
        }
    };
    log_write(&path, result);
}

/// Lists the followed kinds where dependents of `owner` may live and
/// answers whether any still references it (the cache may lag behind a
/// dependent just created).
async fn has_dependents_in_api(
    client: &Client,
    owner_kind: &Kind,
    owner: &Value,
) -> ClientResult<bool> {
    let owner_uid = uid(owner);
    let namespace = str_at(owner, "/metadata/namespace");
    for kind in KINDS.iter().filter(|k| k.namespaced) {
        let ns = if owner_kind.namespaced {
            Some(namespace)
        } else if kind.kind == "Lease" {
            Some("kube-node-lease")
        } else {
            None
        };
        let list = client
            .get(&resource_path(kind.api_version, kind.plural, ns, None))
            .await?;
        let referenced = list["items"].as_array().into_iter().flatten().any(|o| {
            references(o)
                .iter()
                .any(|r| r["uid"].as_str() == Some(owner_uid))
        });
        if referenced {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn finish_owner(client: &Client, world: &World, kind: &Kind, owner: &Value) {
    let indexes = world
        .dependents
        .get(uid(owner))
        .map_or(&[][..], Vec::as_slice);
    let dependents: Vec<&Value> = indexes.iter().map(|i| &world.objects[*i].1).collect();
    match owner_action(owner, &dependents) {
        None | Some(OwnerAction::Wait) => {}
        Some(OwnerAction::Orphan(which)) => {
            let owner_uid = vec![uid(owner).to_string()];
            for i in which {
                let (dep_kind, dep) = &world.objects[indexes[i]];
                let path = object_path(dep_kind, dep);
                let patch = json!({"metadata": {
                    "ownerReferences": references_without(dep, &owner_uid),
                    "resourceVersion": dep["metadata"]["resourceVersion"],
                }});
                tracing::debug!(%path, "orphaning a dependent");
                log_write(
                    &path,
                    client
                        .patch(&path, PatchType::Merge, &patch)
                        .await
                        .map(drop),
                );
            }
        }
        Some(OwnerAction::RemoveFinalizer(finalizer)) => {
            let path = object_path(kind, owner);
            match has_dependents_in_api(client, kind, owner).await {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => {
                    tracing::debug!(%path, error = %e, "listing dependents failed");
                    return;
                }
            }
            let patch = json!({"metadata": {
                "finalizers": finalizers_without(owner, finalizer),
                "resourceVersion": owner["metadata"]["resourceVersion"],
            }});
            tracing::debug!(%path, finalizer, "dependents handled; removing the finalizer");
            log_write(
                &path,
                client
                    .patch(&path, PatchType::Merge, &patch)
                    .await
                    .map(drop),
            );
        }
    }
}

/// Conflicts and vanished objects are the cache lagging: the next round
/// sees the truth and tries again.
fn log_write(path: &str, result: ClientResult<()>) {
    match result {
        Ok(()) => {}
        Err(e) if e.is_conflict() || e.is_not_found() => {
            tracing::debug!(path, error = %e, "write raced; retrying next round");
        }
        Err(e) => tracing::warn!(path, error = %e, "garbage collector write failed"),
    }
}

async fn round(client: &Client, caches: &Caches) {
    let world = World::load(caches);
    let mut confirmed = Confirmed::new();
    for (kind, obj) in &world.objects {
        if !being_deleted(obj) && !references(obj).is_empty() {
            collect_dependent(client, caches, &world, &mut confirmed, kind, obj).await;
        }
    }
    for (kind, obj) in &world.objects {
        if being_deleted(obj) {
            finish_owner(client, &world, kind, obj).await;
        }
    }
}

/// Waits until `rx` changes; a closed channel never does.
/// Collects garbage until the process ends: a round on every cache change
/// and at least every [`RESYNC`].
pub async fn run(client: Client, caches: Caches) {
    caches.wait_synced().await;
    let mut changes = [
        caches.pods.changes(),
        caches.replicasets.changes(),
        caches.deployments.changes(),
        caches.nodes.changes(),
        caches.leases.changes(),
    ];
    loop {
        round(&client, &caches).await;
        super::wait_for_change(&mut changes, RESYNC, DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: &str, name: &str, uid: &str) -> Value {
        let api_version = if kind == "ReplicaSet" || kind == "Deployment" {
            "apps/v1"
        } else {
            "v1"
        };
        json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true})
    }

    fn object(name: &str, uid: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "7"}})
    }

    fn deleting(mut o: Value, finalizers: &[&str]) -> Value {
        o["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        o["metadata"]["finalizers"] = json!(finalizers);
        o
    }

    fn owned(uids: &[(&str, OwnerState)]) -> Vec<(String, OwnerState)> {
        uids.iter().map(|(u, s)| (u.to_string(), *s)).collect()
    }

    #[test]
    fn owner_references_map_to_followed_kinds() {
        assert_eq!(
            kind_of(&reference("ReplicaSet", "rs", "u")).unwrap().plural,
            "replicasets"
        );
        assert_eq!(
            kind_of(&json!({"apiVersion": "apps/v1beta2", "kind": "Deployment"}))
                .unwrap()
                .plural,
            "deployments"
        );
        assert!(
            !kind_of(&json!({"apiVersion": "v1", "kind": "Node"}))
                .unwrap()
                .namespaced
        );
        assert!(kind_of(&json!({"apiVersion": "batch/v1", "kind": "Job"})).is_none());
        assert!(
            kind_of(&json!({"apiVersion": "v1", "kind": "ReplicaSet"})).is_none(),
            "wrong group"
        );
    }

    #[test]
    fn owner_state_checks_the_uid() {
        let r = reference("ReplicaSet", "rs", "u1");
        assert_eq!(
            owner_state(&r, Some(&object("rs", "u1"))),
            OwnerState::Solid
        );
        assert_eq!(
            owner_state(&r, Some(&object("rs", "u2"))),
            OwnerState::Dangling,
            "recreated"
        );
        assert_eq!(owner_state(&r, None), OwnerState::Dangling);
        let fg = deleting(object("rs", "u1"), &[FOREGROUND]);
        assert_eq!(owner_state(&r, Some(&fg)), OwnerState::Waiting);
        // Background or orphan deletion in progress: still an owner.
        assert_eq!(
            owner_state(&r, Some(&deleting(object("rs", "u1"), &[ORPHAN]))),
            OwnerState::Solid
        );
    }

    #[test]
    fn dependents_of_gone_owners_are_deleted() {
        assert_eq!(
            decide(&owned(&[("a", OwnerState::Dangling)]), false),
            Decision::Delete("Background")
        );
        assert_eq!(
            decide(
                &owned(&[("a", OwnerState::Dangling), ("b", OwnerState::Dangling)]),
                true
            ),
            Decision::Delete("Background")
        );
        assert_eq!(
            decide(&owned(&[("a", OwnerState::Solid)]), false),
            Decision::Keep
        );
        assert_eq!(decide(&[], false), Decision::Keep);
    }

    #[test]
    fn one_living_owner_keeps_a_dependent_without_the_dead_references() {
        assert_eq!(
            decide(
                &owned(&[("a", OwnerState::Dangling), ("b", OwnerState::Solid)]),
                false
            ),
            Decision::DropReferences(vec!["a".into()])
        );
        let dep = json!({"metadata": {"ownerReferences": [reference("ReplicaSet", "x", "a"), reference("ReplicaSet", "y", "b")]}});
        assert_eq!(
            references_without(&dep, &["a".into()]),
            json!([reference("ReplicaSet", "y", "b")])
        );
        assert_eq!(
            references_without(&dep, &["a".into(), "b".into()]),
            Value::Null
        );
    }

    #[test]
    fn unknown_owners_leave_the_dependent_alone() {
        assert_eq!(
            decide(
                &owned(&[("a", OwnerState::Dangling), ("b", OwnerState::Unknown)]),
                false
            ),
            Decision::Keep
        );
    }

    #[test]
    fn foreground_deletion_deletes_dependents_then_the_owner() {
        // Dependents of a Waiting owner go; those with dependents of their
        // own go in the foreground too (Deployment → ReplicaSet → Pods).
        assert_eq!(
            decide(&owned(&[("d", OwnerState::Waiting)]), true),
            Decision::Delete("Foreground")
        );
        assert_eq!(
            decide(&owned(&[("rs", OwnerState::Waiting)]), false),
            Decision::Delete("Background")
        );
        let owner = deleting(object("rs", "rs"), &[FOREGROUND]);
        let pod = deleting(object("p", "p"), &[]);
        assert_eq!(
            owner_action(&owner, &[&pod]),
            Some(OwnerAction::Wait),
            "terminating pods still count"
        );
        assert_eq!(
            owner_action(&owner, &[]),
            Some(OwnerAction::RemoveFinalizer(FOREGROUND))
        );
        let both = deleting(object("rs", "rs"), &["example.com/keep", FOREGROUND]);
        assert_eq!(
            finalizers_without(&both, FOREGROUND),
            json!(["example.com/keep"])
        );
    }

    #[test]
    fn orphan_deletion_unlinks_dependents_then_the_owner() {
        let owner = deleting(object("rs", "rs"), &[ORPHAN]);
        let (a, b) = (object("a", "a"), object("b", "b"));
        assert_eq!(
            owner_action(&owner, &[&a, &b]),
            Some(OwnerAction::Orphan(vec![0, 1]))
        );
        assert_eq!(
            owner_action(&owner, &[]),
            Some(OwnerAction::RemoveFinalizer(ORPHAN))
        );
        assert_eq!(finalizers_without(&owner, ORPHAN), json!([]));
    }

    #[test]
    fn owners_not_being_deleted_need_nothing() {
        assert_eq!(owner_action(&object("rs", "rs"), &[]), None);
        assert_eq!(owner_action(&deleting(object("rs", "rs"), &[]), &[]), None);
    }
}
