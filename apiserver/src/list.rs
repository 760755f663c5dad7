//! List: pages read at one revision, continue tokens, selectors, and the
//! list and Table shapes.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::resources::Resource;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::store::Store;

/// Keys per datastore read of a list without `limit`.
const UNLIMITED_PAGE: i64 = 1000;

/// Query parameters of a list or watch.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: i64,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    /// `resourceVersionMatch=Exact`: read at exactly that revision (else a
    /// list from a resourceVersion reads the newest state, "not older than").
    pub exact: bool,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
}

impl ListParams {
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

fn encode_continue(revision: i64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(token))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if start.starts_with('/') || start.contains("..") {
        return Err(bad());
    }
    Ok((rev, start.to_string()))
}

/// Reads one page of matching objects; returns the list object.
pub async fn list(
    store: &Store,
    res: &Resource,
    namespace: Option<&str>,
    p: &ListParams,
) -> ApiResult<Value> {
    let prefix = res.prefix(namespace);
    let (mut revision, mut start) = match &p.continue_token {
        Some(token) => {
            if p.resource_version
                .as_deref()
                .is_some_and(|rv| !rv.is_empty() && rv != "0")
            {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rev, start) = decode_continue(token)?;
            (rev, Some(format!("{prefix}{start}")))
        }
        None => {
            let rev = match p.resource_version.as_deref() {
                None | Some("") | Some("0") => 0,
                Some(rv) => {
                    let rev: i64 = rv.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version {rv:?}"))
                    })?;
                    if p.exact { rev } else { 0 }
                }
            };
            (rev, None)
        }
    };
    let want = if p.limit > 0 {
        p.limit as usize
    } else {
        usize::MAX
    };
    let filtered = !p.labels.is_empty() || !p.fields.is_empty();
    let mut items = Vec::new();
    let mut last_key = None;
    let mut remaining;
    // An unlimited list is read in pages too, at the first page's
    // revision: no datastore answer grows with the collection.
    let mut page_limit = if p.limit > 0 { p.limit } else { UNLIMITED_PAGE };
    loop {
        let page = store.list(&prefix, start.as_deref(), page_limit, revision).await.map_err(|e| {
            if e.code == 410 && p.continue_token.is_some() {
                ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            } else {
                e
            }
        })?;
        revision = page.revision;
        let n = page.items.len();
        let mut consumed = 0;
        for (key, obj) in page.items {
            if items.len() == want {
                break;
            }
            consumed += 1;
            last_key = Some(key);
            if p.matches(&obj) {
                items.push(obj);
            }
        }
        // Keys after the last one looked at.
        remaining = page.remaining + (n - consumed) as i64;
        if items.len() >= want || remaining == 0 || n == 0 {
            break;
        }
        // Selectors dropped some: read on from the last key, with a larger page.
        start = last_key.as_ref().map(|k| format!("{k}\u{0}"));
        page_limit = (page_limit * 2).min(10_000);
    }
    let more = p.limit > 0 && items.len() as i64 >= p.limit && remaining > 0;
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if more && let Some(key) = &last_key {
        metadata["continue"] = json!(encode_continue(
            revision,
            key.strip_prefix(&prefix).unwrap_or(key)
        ));
        if !filtered {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    Ok(json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// A Table column: name, type, and whether it shows only with `-o wide`.
type Column = (&'static str, &'static str, bool);

/// Where a kind shows AGE when not after its last narrow column (as
/// kube's node printer does); its cell is the table's to fill.
const AGE: Column = ("Age", "string", false);

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: &str) -> Value {
    json!(if s.is_empty() { "<none>" } else { s })
}

/// The columns kubectl shows for a kind, as kube-apiserver's printers do.
fn columns(kind: &str) -> &'static [Column] {
    match kind {
        "Pod" => &[
            ("Ready", "string", false),
            ("Status", "string", false),
            ("Restarts", "string", false),
            ("IP", "string", true),
            ("Node", "string", true),
        ],
        "Deployment" => &[
            ("Ready", "string", false),
            ("Up-to-date", "integer", false),
            ("Available", "integer", false),
            ("Containers", "string", true),
            ("Images", "string", true),
            ("Selector", "string", true),
        ],
        "ReplicaSet" => &[
            ("Desired", "integer", false),
            ("Current", "integer", false),
            ("Ready", "integer", false),
            ("Containers", "string", true),
            ("Images", "string", true),
        ],
        "Service" => &[
            ("Type", "string", false),
            ("Cluster-IP", "string", false),
            ("External-IP", "string", false),
            ("Port(s)", "string", false),
            ("Selector", "string", true),
        ],
        "Node" => &[
            ("Status", "string", false),
            ("Roles", "string", false),
            AGE,
            ("Version", "string", false),
            ("Internal-IP", "string", true),
            ("External-IP", "string", true),
            ("OS-Image", "string", true),
            ("Kernel-Version", "string", true),
            ("Container-Runtime", "string", true),
        ],
        "Namespace" => &[("Status", "string", false)],
        "ConfigMap" => &[("Data", "integer", false)],
        "Secret" => &[("Type", "string", false), ("Data", "integer", false)],
        "ServiceAccount" => &[("Secrets", "integer", false)],
        "Endpoints" => &[("Endpoints", "string", false)],
        "Event" => &[
            ("Type", "string", false),
            ("Reason", "string", false),
            ("Object", "string", false),
            ("Message", "string", false),
        ],
        "Lease" => &[("Holder", "string", false)],
        "EndpointSlice" => &[
            ("AddressType", "string", false),
            ("Ports", "string", false),
            ("Endpoints", "string", false),
        ],
        "NetworkPolicy" => &[("Pod-Selector", "string", false)],
        _ => &[],
    }
}

fn selector_text(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// kube's `listWithMoreString`: the first three, then how many more.
fn list_with_more(items: Vec<String>, empty: &str) -> String {
    const MAX: usize = 3;
    if items.len() > MAX {
        format!("{} + {} more...", items[..MAX].join(","), items.len() - MAX)
    } else if items.is_empty() {
        empty.to_string()
    } else {
        items.join(",")
    }
}

/// A `metav1.LabelSelector` as kube's `FormatLabelSelector` writes it;
/// `<none>` when it selects everything.
fn label_selector_text(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    parts.sort();
    for r in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = str_at(r, "/key");
        let values: Vec<&str> = r
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match str_at(r, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op} ({})", values.join(",")),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// kube's `getServiceExternalIP` (wide, as the server prints).
fn service_external_ip(svc: &Value) -> String {
    let external: Vec<String> = svc
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    match str_at(svc, "/spec/type") {
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let mut all: Vec<String> = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    let ip = str_at(i, "/ip");
                    let host = str_at(i, "/hostname");
                    [ip, host]
                        .into_iter()
                        .find(|s| !s.is_empty())
                        .map(str::to_string)
                })
                .collect();
            // A set in kube: sorted, each once.
            all.sort();
            all.dedup();
            all.extend(external);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        _ if external.is_empty() => "<none>".into(),
        _ => external.join(","),
    }
}

fn containers(obj: &Value, pointer: &str, field: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| c.get(field).and_then(Value::as_str).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn cells(kind: &str, obj: &Value) -> Vec<Value> {
    let count = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_object)
            .map_or(0, |m| m.len())
    };
    match kind {
        "Pod" => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses.map_or(0, |s| {
                s.iter()
                    .filter(|c| c.get("ready") == Some(&json!(true)))
                    .count()
            });
            let restarts: i64 = statuses.map_or(0, |s| {
                s.iter()
                    .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                    .sum()
            });
            let status = pod_status_text(obj);
            let status = status.as_str();
            vec![
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                or_none(str_at(obj, "/status/podIP")),
                or_none(str_at(obj, "/spec/nodeName")),
            ]
        }
        "Deployment" => vec![
            json!(format!(
                "{}/{}",
                int_at(obj, "/status/readyReplicas"),
                int_at(obj, "/spec/replicas")
            )),
            json!(int_at(obj, "/status/updatedReplicas")),
            json!(int_at(obj, "/status/availableReplicas")),
            json!(containers(obj, "/spec/template/spec/containers", "name")),
            json!(containers(obj, "/spec/template/spec/containers", "image")),
            json!(selector_text(obj, "/spec/selector/matchLabels")),
        ],
        "ReplicaSet" => vec![
            json!(int_at(obj, "/spec/replicas")),
            json!(int_at(obj, "/status/replicas")),
            json!(int_at(obj, "/status/readyReplicas")),
            json!(containers(obj, "/spec/template/spec/containers", "name")),
            json!(containers(obj, "/spec/template/spec/containers", "image")),
        ],
        "Service" => {
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{port}:{np}/{proto}"),
                                None => format!("{port}/{proto}"),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let selector = selector_text(obj, "/spec/selector");
            vec![
                json!(str_at(obj, "/spec/type")),
                or_none(str_at(obj, "/spec/clusterIP")),
                json!(service_external_ip(obj)),
                or_none(&ports),
                or_none(&selector),
            ]
        }
        "Node" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
                .map_or("Unknown", |c| {
                    if c.get("status") == Some(&json!("True")) {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                });
            let status = if obj.pointer("/spec/unschedulable") == Some(&json!(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let roles: Vec<&str> = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .collect()
                })
                .unwrap_or_default();
            let address = |kind: &str| {
                obj.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| x.get("type") == Some(&json!(kind))))
                    .and_then(|x| x.get("address").and_then(Value::as_str))
                    .unwrap_or("")
            };
            let info = |key: &str| or_none(str_at(obj, &format!("/status/nodeInfo/{key}")));
            vec![
                json!(status),
                or_none(&roles.join(",")),
                Value::Null,
                json!(str_at(obj, "/status/nodeInfo/kubeletVersion")),
                or_none(address("InternalIP")),
                or_none(address("ExternalIP")),
                info("osImage"),
                info("kernelVersion"),
                info("containerRuntimeVersion"),
            ]
        }
        "Namespace" => vec![json!(
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else {
                "Active"
            }
        )],
        "ConfigMap" => vec![json!(count("/data") + count("/binaryData"))],
        "Secret" => vec![json!(str_at(obj, "/type")), json!(count("/data"))],
        "ServiceAccount" => vec![json!(
            obj.pointer("/secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        )],
        "Endpoints" => {
            // kube's formatEndpoints: ip:port per address and port (the
            // ip alone in a subset without ports), ready addresses only.
            let mut eps = Vec::new();
            for subset in obj
                .pointer("/subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("port").and_then(Value::as_i64))
                    .collect();
                for a in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ip = str_at(a, "/ip");
                    if ports.is_empty() {
                        eps.push(ip.to_string());
                    }
                    eps.extend(ports.iter().map(|p| format!("{ip}:{p}")));
                }
            }
            vec![json!(list_with_more(eps, "<none>"))]
        }
        "EndpointSlice" => {
            let ports = obj
                .pointer("/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(
                    |p| match (p.get("port").and_then(Value::as_i64), p.get("name")) {
                        (Some(n), _) => n.to_string(),
                        (None, Some(Value::String(name))) => name.clone(),
                        (None, _) => "*".to_string(),
                    },
                )
                .collect();
            let addresses = obj
                .pointer("/endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .map(|a| a.as_str().unwrap_or("").to_string())
                .collect();
            vec![
                json!(str_at(obj, "/addressType")),
                json!(list_with_more(ports, "<unset>")),
                json!(list_with_more(addresses, "<unset>")),
            ]
        }
        "NetworkPolicy" => vec![json!(label_selector_text(obj.pointer("/spec/podSelector")))],
        "Event" => vec![
            json!(str_at(obj, "/type")),
            json!(str_at(obj, "/reason")),
            json!(format!(
                "{}/{}",
                str_at(obj, "/involvedObject/kind").to_lowercase(),
                str_at(obj, "/involvedObject/name")
            )),
            json!(str_at(obj, "/message")),
        ],
        "Lease" => vec![or_none(str_at(obj, "/spec/holderIdentity"))],
        _ => Vec::new(),
    }
}

/// The `Table` kubectl asks for: NAME, the kind's columns (`-o wide` adds
/// the priority-1 ones), AGE.
pub fn table(res: &Resource, list: &Value) -> Value {
    let items: Vec<&Value> = match list.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![list],
    };
    let kind_columns = columns(res.kind);
    let column = |name: &str, ty: &str, wide: bool| json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": name, "priority": wide as i32});
    let mut definitions = vec![column("Name", "string", false)];
    let (narrow, wide): (Vec<_>, Vec<_>) = kind_columns.iter().enumerate().partition(|(_, c)| !c.2);
    definitions.extend(narrow.iter().map(|(_, c)| column(c.0, c.1, false)));
    let age_placed = kind_columns.contains(&AGE);
    if !age_placed {
        definitions.push(column("Age", "string", false));
    }
    definitions.extend(wide.iter().map(|(_, c)| column(c.0, c.1, true)));
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let values = cells(res.kind, obj);
            let age = json!(crate::objects::age(str_at(obj, "/metadata/creationTimestamp")));
            let pick = |idx: &[(usize, &Column)]| {
                idx.iter()
                    .map(|(i, c)| if **c == AGE { age.clone() } else { values.get(*i).cloned().unwrap_or(json!("")) })
                    .collect::<Vec<_>>()
            };
            let mut row = vec![obj.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            row.extend(pick(&narrow));
            if !age_placed {
                row.push(age.clone());
            }
            row.extend(pick(&wide));
            json!({
                "cells": row,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))},
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list.get("metadata").cloned().unwrap_or(json!({})),
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// The pod STATUS column as kubectl prints it: an init container's progress
/// or failure, else the reason a container waits or ended, else the phase.
fn pod_status_text(pod: &Value) -> String {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = pod
        .pointer("/status/reason")
        .or(pod.pointer("/status/phase"))
        .and_then(Value::as_str)
        .unwrap_or("Pending")
        .to_string();
    let ended = |c: &Value, prefix: &str| -> Option<String> {
        let t = c.pointer("/state/terminated")?;
        if let Some(r) = t
            .get("reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            return Some(format!("{prefix}{r}"));
        }
        match t.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
            Some(sig) => Some(format!("{prefix}Signal:{sig}")),
            None => Some(format!(
                "{prefix}ExitCode:{}",
                t["exitCode"].as_i64().unwrap_or(0)
            )),
        }
    };
    let inits = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array);
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    for (i, c) in inits.into_iter().flatten().enumerate() {
        if c.pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64)
            == Some(0)
        {
            continue;
        }
        if c.pointer("/state/terminated").is_some() {
            return ended(c, "Init:").unwrap_or_default();
        }
        if let Some(w) = c.pointer("/state/waiting/reason").and_then(Value::as_str)
            && w != "PodInitializing"
        {
            return format!("Init:{w}");
        }
        return format!("Init:{i}/{init_total}");
    }
    let mut running = false;
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    for c in statuses.into_iter().flatten().rev() {
        if let Some(w) = c
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
        {
            reason = w.to_string();
        } else if let Some(e) = ended(c, "") {
            reason = e;
        } else if c.pointer("/state/running").is_some() && c["ready"] == json!(true) {
            running = true;
        }
    }
    if reason == "Completed" && running {
        reason = "Running".into();
    }
    reason
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_status_reads_as_kubectl_prints_it() {
        let pod = |status: serde_json::Value| json!({"spec": {"containers": [{"name": "a"}]}, "status": status});
        let waiting = pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "a", "ready": false, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}));
        assert_eq!(super::pod_status_text(&waiting), "CrashLoopBackOff");
        let done = pod(json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}));
        assert_eq!(super::pod_status_text(&done), "Completed");
        let killed = pod(json!({"phase": "Failed", "containerStatuses": [
            {"name": "a", "state": {"terminated": {"exitCode": 137, "signal": 9}}}]}));
        assert_eq!(super::pod_status_text(&killed), "Signal:9");
        let running = pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "a", "ready": true, "state": {"running": {}}}]}));
        assert_eq!(super::pod_status_text(&running), "Running");
        let mut init = pod(json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "i", "state": {"running": {}}}]}));
        init["spec"]["initContainers"] = json!([{"name": "i"}]);
        assert_eq!(super::pod_status_text(&init), "Init:0/1");
        let mut gone = running.clone();
        gone["metadata"] = json!({"deletionTimestamp": "2026-01-01T00:00:00Z"});
        assert_eq!(super::pod_status_text(&gone), "Terminating");
    }

    use super::*;

    #[test]
    fn node_tables_have_kubes_columns_in_kubes_order() {
        let nodes = crate::resources::find("", "v1", "nodes").unwrap();
        let node = json!({"metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian", "kernelVersion": "6.1",
                                    "containerRuntimeVersion": "containerd://1.6.20"}}});
        let t = table(nodes, &node);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Status",
                "Roles",
                "Age",
                "Version",
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "Ready");
        assert_eq!(cells[4], "v1.32.0");
        assert_eq!(cells[6], "<none>");
        assert_eq!(cells[9], "containerd://1.6.20");
    }

    fn row(plural: &str, group: &str, obj: Value) -> Vec<Value> {
        let res = crate::resources::find(group, "v1", plural).unwrap();
        table(res, &obj)["rows"][0]["cells"]
            .as_array()
            .unwrap()
            .clone()
    }

    #[test]
    fn endpoint_slices_and_endpoints_print_as_kube_does() {
        let endpoints: Vec<Value> = (1..=4)
            .map(|i| json!({"addresses": [format!("10.42.0.{i}")]}))
            .collect();
        let slice = json!({"metadata": {"name": "web-abcde"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "x"}], "endpoints": endpoints});
        let cells = row("endpointslices", "discovery.k8s.io", slice);
        assert_eq!(cells[1], "IPv4");
        assert_eq!(cells[2], "8080,x");
        assert_eq!(cells[3], "10.42.0.1,10.42.0.2,10.42.0.3 + 1 more...");
        let empty = row(
            "endpointslices",
            "discovery.k8s.io",
            json!({"metadata": {"name": "e"}, "addressType": "IPv4"}),
        );
        assert_eq!(
            (&empty[2], &empty[3]),
            (&json!("<unset>"), &json!("<unset>"))
        );
        let eps = json!({"metadata": {"name": "web"}, "subsets": [
            {"addresses": [{"ip": "10.42.0.1"}, {"ip": "10.42.0.2"}], "notReadyAddresses": [{"ip": "10.42.0.9"}],
             "ports": [{"port": 80}]}]});
        assert_eq!(row("endpoints", "", eps)[1], "10.42.0.1:80,10.42.0.2:80");
        let none = json!({"metadata": {"name": "web"}});
        assert_eq!(row("endpoints", "", none)[1], "<none>");
    }

    #[test]
    fn load_balancers_show_their_ingress_or_pending() {
        let svc = |status: Value| {
            json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.5",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}, "status": status})
        };
        assert_eq!(
            row("services", "", svc(json!({"loadBalancer": {}})))[3],
            "<pending>"
        );
        let ingress =
            json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}]}});
        assert_eq!(row("services", "", svc(ingress))[3], "10.0.0.1,10.0.0.2");
        let plain = json!({"metadata": {"name": "c"}, "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.6"}});
        assert_eq!(row("services", "", plain)[3], "<none>");
    }

    #[test]
    fn network_policies_print_their_pod_selector() {
        let np = |sel: Value| json!({"metadata": {"name": "p"}, "spec": {"podSelector": sel}});
        let all = row("networkpolicies", "networking.k8s.io", np(json!({})));
        assert_eq!(all[1], "<none>");
        let some = row(
            "networkpolicies",
            "networking.k8s.io",
            np(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]})),
        );
        assert_eq!(some[1], "app=web,tier in (a,b)");
    }

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "default/web");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "default/web\u{0}".to_string())
        );
        assert!(decode_continue("!!").is_err());
    }
}
