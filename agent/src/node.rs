//! The node's record in the API: the Node object (registered once, its
//! status reported), and the Lease in kube-node-lease renewed every 10 s,
//! which is the heartbeat the node lifecycle controller watches.

use std::time::Duration;

use anyhow::Result;
use apiserver::client::{Client, PatchType, resource_path};
use serde_json::{Value, json};

/// How often the Lease is renewed (the kubelet's default).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease's duration (the kubelet's default).
const LEASE_SECONDS: i64 = 40;
/// Node status is reported at least this often even when unchanged.
const STATUS_REPORT: Duration = Duration::from_secs(60);
/// Pods a node takes (the kubelet's default).
const MAX_PODS: i64 = 110;

/// What the Node says about this machine.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub agent_port: u16,
    pub labels: Vec<(String, String)>,
    /// `key=value:Effect` or `key:Effect`.
    pub taints: Vec<String>,
    /// `containerd://1.6.20`, as `kubectl get nodes -o wide` shows it.
    pub runtime_version: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn memory_kib() -> i64 {
    read_trimmed("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn os_image() -> String {
    read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn parse_taint(spec: &str) -> Option<Value> {
    let (kv, effect) = spec.rsplit_once(':')?;
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    let mut taint = json!({"key": key, "effect": effect});
    if let Some(v) = value {
        taint["value"] = json!(v);
    }
    Some(taint)
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Ready and the pressure conditions, as the kubelet reports a healthy node.
fn conditions(now: &str, since: &str) -> Value {
    let c = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// The Node's status: capacity of this machine, addresses, conditions.
pub fn status(info: &NodeInfo, now: &str, since: &str) -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory = format!("{}Ki", memory_kib());
    let resources = json!({"cpu": cpus.to_string(), "memory": memory, "pods": MAX_PODS.to_string(),
                           "ephemeral-storage": "10Gi"});
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": conditions(now, since),
        "addresses": [{"type": "InternalIP", "address": info.address}, {"type": "Hostname", "address": info.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": info.agent_port}},
        "nodeInfo": {
            "machineID": read_trimmed("/etc/machine-id"),
            "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
            "systemUUID": read_trimmed("/etc/machine-id"),
            "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": info.runtime_version,
            "kubeletVersion": format!("v1.32.0-k3rs{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

/// The Node object to register.
pub fn node_object(info: &NodeInfo, now: &str) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(info.name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/arch".into(), json!(arch()));
    labels.insert("beta.kubernetes.io/os".into(), json!("linux"));
    labels.insert("beta.kubernetes.io/arch".into(), json!(arch()));
    labels.insert("node.kubernetes.io/instance-type".into(), json!("k3rs"));
    for (k, v) in &info.labels {
        labels.insert(k.clone(), json!(v));
    }
    let taints: Vec<Value> = info.taints.iter().filter_map(|t| parse_taint(t)).collect();
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": info.name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0", "k3rs.io/node-args": "agent"}},
        "spec": {},
        "status": status(info, now, now),
    });
    if !taints.is_empty() {
        node["spec"]["taints"] = json!(taints);
    }
    node
}

/// Registers the Node (or takes over the one with its name: the join has
/// already checked the node password) and reports its status.
pub async fn register(client: &Client, info: &NodeInfo) -> Result<Value> {
    let now = apiserver::objects::now();
    let path = resource_path("v1", "nodes", None, None);
    let node = node_object(info, &now);
    let created = match client.create(&path, &node).await {
        Ok(n) => n,
        Err(e) if e.is_conflict() => {
            let name_path = resource_path("v1", "nodes", None, Some(&info.name));
            let patch = json!({"metadata": {"labels": node["metadata"]["labels"]}});
            client.patch(&name_path, PatchType::Merge, &patch).await?
        }
        Err(e) => return Err(e.into()),
    };
    report_status(client, info, &now).await?;
    Ok(created)
}

async fn report_status(client: &Client, info: &NodeInfo, since: &str) -> Result<()> {
    let now = apiserver::objects::now();
    let path = format!(
        "{}/status",
        resource_path("v1", "nodes", None, Some(&info.name))
    );
    client
        .patch(
            &path,
            PatchType::Merge,
            &json!({"status": status(info, &now, since)}),
        )
        .await?;
    Ok(())
}

/// RFC 3339 with microseconds, as Lease times are written.
fn micro_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = apiserver::objects::rfc3339(d.as_secs() as i64);
    format!("{}.{:06}Z", secs.trim_end_matches('Z'), d.subsec_micros())
}

async fn renew_lease(client: &Client, info: &NodeInfo, node_uid: &str) -> Result<()> {
    let path = resource_path(
        "coordination.k8s.io/v1",
        "leases",
        Some("kube-node-lease"),
        Some(&info.name),
    );
    let now = micro_now();
    match client.get(&path).await {
        Ok(mut lease) => {
            lease["spec"]["renewTime"] = json!(now);
            lease["spec"]["holderIdentity"] = json!(info.name);
            client.update(&path, &lease).await?;
        }
        Err(e) if e.is_not_found() => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": info.name, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": info.name, "uid": node_uid}]},
                "spec": {"holderIdentity": info.name, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": now, "acquireTime": now},
            });
            let collection = resource_path(
                "coordination.k8s.io/v1",
                "leases",
                Some("kube-node-lease"),
                None,
            );
            client.create(&collection, &lease).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Renews the Lease every 10 s and reports status every minute; a Node
/// deleted meanwhile is registered again (as the kubelet does).
pub async fn heartbeat(client: Client, info: NodeInfo, mut node_uid: String) {
    let since = apiserver::objects::now();
    let mut last_status = tokio::time::Instant::now();
    loop {
        let node_path = resource_path("v1", "nodes", None, Some(&info.name));
        match client.get(&node_path).await {
            Ok(node) => {
                let uid = node
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                node_uid = uid.to_string();
                let ready = node
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                if !ready || last_status.elapsed() >= STATUS_REPORT {
                    if let Err(e) = report_status(&client, &info, &since).await {
                        tracing::warn!(error = %e, "reporting node status failed");
                    }
                    last_status = tokio::time::Instant::now();
                }
            }
            Err(e) if e.is_not_found() => match register(&client, &info).await {
                Ok(node) => {
                    node_uid = node["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    tracing::info!(node = %info.name, "the Node was deleted; registered it again");
                }
                Err(e) => tracing::warn!(error = %e, "registering the node failed"),
            },
            Err(e) => tracing::warn!(error = %e, "reading the Node failed"),
        }
        if let Err(e) = renew_lease(&client, &info, &node_uid).await {
            tracing::warn!(error = %e, "renewing the node lease failed");
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_carries_what_the_kubelet_reports() {
        let info = NodeInfo {
            name: "n1".into(),
            address: "10.0.0.1".into(),
            agent_port: 10250,
            labels: vec![("role".into(), "edge".into())],
            taints: vec!["dedicated=db:NoSchedule".into(), "gpu:NoExecute".into()],
            runtime_version: "process://0.1.0".into(),
        };
        let node = node_object(&info, "2026-11-28T00:00:00Z");
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
        assert_eq!(node["metadata"]["labels"]["role"], "edge");
        assert_eq!(
            node["spec"]["taints"][0],
            json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"})
        );
        assert_eq!(
            node["spec"]["taints"][1],
            json!({"key": "gpu", "effect": "NoExecute"})
        );
        assert_eq!(node["status"]["allocatable"]["pods"], "110");
        assert_eq!(
            node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
            10250
        );
        let ready = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
    }
}
