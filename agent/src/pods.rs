//! The pods bound to this node: a cache of them (list + watch on
//! `spec.nodeName`), handed to the supervisor; its status reports written
//! back; deletions carried out gracefully, then confirmed to the API.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiserver::client::{Client, PatchType, encode_query, pod_path, resource_path};
use apiserver::informer::Informer;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::supervisor::{PodUpdate, Supervisor};

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn is_finished(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// Watches this node's pods and keeps the supervisor in step with them.
pub async fn run(client: Client, node: String, supervisor: Arc<Supervisor>) {
    let query = format!(
        "fieldSelector={}",
        encode_query(&format!("spec.nodeName={node}"))
    );
    let pods = Informer::start(client.clone(), "/api/v1/pods", &query);
    pods.wait_synced().await;
    // What a previous run left in the runtime for pods since gone.
    let bound: HashSet<String> = pods
        .list()
        .iter()
        .map(|p| str_at(p, "/metadata/uid").to_string())
        .collect();
    supervisor.forget_others(&bound).await;
    let mut changes = pods.changes();
    // UIDs being terminated, so each deletion runs once.
    let terminating: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let cached = pods.list();
        let present: HashSet<String> = cached
            .iter()
            .map(|p| str_at(p, "/metadata/uid").to_string())
            .collect();
        let known: HashSet<String> = supervisor.uids().into_iter().collect();
        for pod in &cached {
            let uid = str_at(pod, "/metadata/uid").to_string();
            if pod.pointer("/metadata/deletionTimestamp").is_some() {
                if terminating
                    .lock()
                    .expect("not poisoned")
                    .insert(uid.clone())
                {
                    tokio::spawn(finish_deletion(
                        client.clone(),
                        supervisor.clone(),
                        pod.clone(),
                        terminating.clone(),
                    ));
                }
            } else if known.contains(&uid) || !is_finished(pod) {
                supervisor.sync(pod);
            }
        }
        for gone in known.difference(&present) {
            supervisor.remove(gone).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
        // Let a burst of events settle into one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pod marked for deletion: stop it within its grace period, then delete
/// it for good (grace 0, only this very pod, by uid).
async fn finish_deletion(
    client: Client,
    supervisor: Arc<Supervisor>,
    pod: Value,
    terminating: Arc<Mutex<HashSet<String>>>,
) {
    let uid = str_at(&pod, "/metadata/uid").to_string();
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30)
        .max(0) as u64;
    supervisor.terminate(&uid, Duration::from_secs(grace)).await;
    let path = pod_path(&pod);
    let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
    for attempt in 0..30 {
        match client.delete(&path, &options).await {
            Ok(_) => break,
            Err(e) if e.is_not_found() || e.is_conflict() => break,
            Err(e) => {
                tracing::warn!(pod = %path, error = %e, attempt, "confirming a pod's deletion failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    supervisor.remove(&uid).await;
    terminating.lock().expect("not poisoned").remove(&uid);
}

/// The Events the kubelet records for a change of a pod's status: a
/// container started, crash-looping, or failing to start.
pub fn events_between(
    old: Option<&Value>,
    new: &Value,
) -> Vec<(&'static str, &'static str, String)> {
    let mut events = Vec::new();
    let statuses = |s: Option<&Value>| -> Vec<Value> {
        s.and_then(|s| s.get("containerStatuses"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let before = statuses(old);
    for c in statuses(Some(new)) {
        let name = c["name"].as_str().unwrap_or_default();
        let prev = before.iter().find(|b| b["name"] == c["name"]);
        let prev_state = prev.map(|p| &p["state"]);
        let started = c.pointer("/state/running/startedAt");
        if started.is_some() && prev_state.and_then(|s| s.pointer("/running/startedAt")) != started
        {
            events.push(("Normal", "Started", format!("Started container {name}")));
        }
        let waiting = c.pointer("/state/waiting/reason").and_then(Value::as_str);
        let was_waiting = prev_state
            .and_then(|s| s.pointer("/waiting/reason"))
            .and_then(Value::as_str);
        if waiting == Some("CrashLoopBackOff") && was_waiting != Some("CrashLoopBackOff") {
            events.push((
                "Warning",
                "BackOff",
                format!("Back-off restarting failed container {name}"),
            ));
        }
        if let Some(reason) = waiting.filter(|w| Some(*w) != was_waiting) {
            let image = c["image"].as_str().unwrap_or_default();
            let message = c
                .pointer("/state/waiting/message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            events.extend(waiting_events(reason, image, message));
        }
        let last = c.pointer("/lastState/terminated");
        if last.is_some()
            && last.and_then(|t| t.get("reason")).and_then(Value::as_str) == Some("StartError")
            && prev.and_then(|p| p.pointer("/lastState/terminated/finishedAt"))
                != last.and_then(|t| t.get("finishedAt"))
        {
            let message = last
                .and_then(|t| t.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("");
            events.push(("Warning", "Failed", format!("Error: {message}")));
        }
    }
    events
}

/// The kubelet's Events for a container that waits for `reason`.
fn waiting_events(
    reason: &str,
    image: &str,
    message: &str,
) -> Vec<(&'static str, &'static str, String)> {
    match reason {
        "ErrImagePull" => vec![
            (
                "Warning",
                "Failed",
                format!("Failed to pull image {image:?}: {message}"),
            ),
            ("Warning", "Failed", "Error: ErrImagePull".to_string()),
        ],
        "ImagePullBackOff" => vec![
            (
                "Normal",
                "BackOff",
                format!("Back-off pulling image {image:?}"),
            ),
            ("Warning", "Failed", "Error: ImagePullBackOff".to_string()),
        ],
        "ErrImageNeverPull" => vec![
            ("Warning", "ErrImageNeverPull", message.to_string()),
            ("Warning", "Failed", "Error: ErrImageNeverPull".to_string()),
        ],
        "CreateContainerConfigError" | "CreateContainerError" | "InvalidImageName" => {
            vec![("Warning", "Failed", format!("Error: {message}"))]
        }
        _ => Vec::new(),
    }
}

/// Writes the supervisor's status reports to `pods/NAME/status`; a burst
/// for one pod is written once, with its latest status; records the Events
/// its changes mean.
pub async fn report(client: Client, mut updates: mpsc::Receiver<PodUpdate>) {
    let mut pending: HashMap<String, PodUpdate> = HashMap::new();
    let mut last: HashMap<String, Value> = HashMap::new();
    loop {
        if pending.is_empty() {
            match updates.recv().await {
                Some(u) => queue(&mut pending, u),
                None => return,
            }
        }
        while let Ok(u) = updates.try_recv() {
            queue(&mut pending, u);
        }
        let batch: Vec<PodUpdate> = pending.drain().map(|(_, u)| u).collect();
        if last.len() > 4096 {
            last.clear();
        }
        for update in batch {
            let path = format!(
                "{}/status",
                resource_path("v1", "pods", Some(&update.namespace), Some(&update.name))
            );
            let body = json!({"status": update.status});
            match client.patch(&path, PatchType::Merge, &body).await {
                Ok(pod) => {
                    let mut events = update.events.clone();
                    events.extend(events_between(last.get(&update.uid), &update.status));
                    for (kind, reason, message) in events {
                        apiserver::controllers::record_event(
                            &client, &pod, kind, reason, &message, "kubelet",
                        )
                        .await;
                    }
                    last.insert(update.uid.clone(), update.status);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(pod = %path, error = %e, "writing pod status failed; retrying");
                    queue_older(&mut pending, update);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Queues an update; one still pending for the pod is replaced, its
/// events kept.
fn queue(pending: &mut HashMap<String, PodUpdate>, mut update: PodUpdate) {
    if let Some(older) = pending.remove(&update.uid) {
        let mut events = older.events;
        events.append(&mut update.events);
        update.events = events;
    }
    pending.insert(update.uid.clone(), update);
}

/// Puts back an update whose write failed, unless a newer one came.
fn queue_older(pending: &mut HashMap<String, PodUpdate>, older: PodUpdate) {
    match pending.get_mut(&older.uid) {
        Some(newer) => {
            let mut events = older.events;
            events.append(&mut newer.events);
            newer.events = events;
        }
        None => {
            pending.insert(older.uid.clone(), older);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_changes_become_the_kubelets_events() {
        let running = json!({"containerStatuses": [{"name": "web", "state": {"running": {"startedAt": "t1"}}}]});
        let events = events_between(None, &running);
        assert_eq!(
            events,
            vec![("Normal", "Started", "Started container web".to_string())]
        );
        assert!(events_between(Some(&running), &running).is_empty());
        let looping = json!({"containerStatuses": [{"name": "web", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"reason": "StartError", "message": "exec: no", "finishedAt": "t2"}}}]});
        let events = events_between(Some(&running), &looping);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].1, "BackOff");
        assert_eq!(
            events[1],
            ("Warning", "Failed", "Error: exec: no".to_string())
        );
        assert!(events_between(Some(&looping), &looping).is_empty());
    }
}
