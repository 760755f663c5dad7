//! The `Runtime` on CRI: each pod is a pod sandbox (containerd's pause
//! container holding its namespaces and network), its containers are CRI
//! containers in it.
//!
//! What the agent made is found again by labels, as the kubelet finds
//! it: every sandbox and container carries `io.kubernetes.pod.uid` (and
//! the container its `io.kubernetes.container.name`), plus
//! `k3rs.io/node`, so agents sharing one runtime never touch each other's
//! pods. A pod's cgroups live under `/k3rs/pod<uid>`; they are removed
//! with its sandbox.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::client::{Cri, go_error};
use super::container::{self, CriContainer, ExitWatcher};
use super::v1;
use crate::resolv::{self, ClusterDns};
use crate::runtime::{
    BoxFuture, Container, ContainerSpec, LogFormat, Runtime, Sandbox, SandboxSpec, StartError,
    StreamRequest,
};

/// Labels the kubelet puts on what it creates; the runtime's own tools
/// (`crictl pods`) show them.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Which agent made it.
pub const NODE: &str = "k3rs.io/node";

/// How long sandbox calls may take (a CNI setup included).
const SANDBOX_CALL: Duration = Duration::from_secs(240);

/// Runs pods through a CRI endpoint.
pub struct CriRuntime {
    cri: Cri,
    node: String,
    /// `containerd`, as container IDs are prefixed (`containerd://…`).
    runtime_name: String,
    runtime_version: String,
    exits: Arc<ExitWatcher>,
    /// The cluster DNS pods' resolv.conf names.
    dns: ClusterDns,
}

impl CriRuntime {
    /// A runtime for node `node` on `cri`, whose name (from `Version`)
    /// prefixes container IDs.
    pub fn new(
        cri: Cri,
        node: &str,
        runtime_name: &str,
        runtime_version: &str,
        dns: ClusterDns,
    ) -> CriRuntime {
        let exits = ExitWatcher::start(cri.clone(), node);
        CriRuntime {
            cri,
            node: node.to_string(),
            runtime_name: runtime_name.to_string(),
            runtime_version: runtime_version.to_string(),
            exits,
            dns,
        }
    }

    /// This node's sandboxes, optionally only those of pod `uid`.
    async fn sandboxes(&self, uid: Option<&str>) -> Result<Vec<v1::PodSandbox>, tonic::Status> {
        let mut labels = HashMap::from([(NODE.to_string(), self.node.clone())]);
        if let Some(uid) = uid {
            labels.insert(POD_UID.to_string(), uid.to_string());
        }
        let filter = v1::PodSandboxFilter {
            label_selector: labels,
            ..Default::default()
        };
        let mut runtime = self.cri.runtime.clone();
        let reply = runtime
            .list_pod_sandbox(v1::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await?;
        Ok(reply.into_inner().items)
    }

    /// The pod's ready sandbox from a previous run, if there is one; any
    /// that is not ready (its pause process died) is removed, as its
    /// containers lost their namespaces.
    async fn existing(&self, uid: &str) -> Result<(Option<String>, u32), StartError> {
        let mut found = self
            .sandboxes(Some(uid))
            .await
            .map_err(|s| StartError::start(go_error(&s)))?;
        found.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let attempts = found.len() as u32;
        let mut ready = None;
        for sandbox in found {
            if ready.is_none() && sandbox.state == v1::PodSandboxState::SandboxReady as i32 {
                ready = Some(sandbox.id);
            } else {
                remove_sandbox(&self.cri, &sandbox.id).await;
            }
        }
        Ok((ready, attempts))
    }

    async fn run_sandbox(&self, config: v1::PodSandboxConfig) -> Result<String, StartError> {
        let mut runtime = self.cri.runtime.clone();
        let mut request = tonic::Request::new(v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        });
        request.set_timeout(SANDBOX_CALL);
        let reply = runtime
            .run_pod_sandbox(request)
            .await
            .map_err(|s| StartError::start(go_error(&s)))?;
        Ok(reply.into_inner().pod_sandbox_id)
    }

    /// The sandbox's IP; None for one on the node's network.
    async fn sandbox_ip(&self, id: &str) -> Result<Option<String>, StartError> {
        let mut runtime = self.cri.runtime.clone();
        let reply = runtime
            .pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .map_err(|s| StartError::start(go_error(&s)))?;
        let ip = reply
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty());
        Ok(ip)
    }
}

impl Runtime for CriRuntime {
    fn sandbox<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn Sandbox>, StartError>> {
        Box::pin(async move {
            let pod = &spec.pod;
            let uid = text(pod, "/metadata/uid");
            let (existing, attempt) = self.existing(uid).await?;
            let mut config = sandbox_config(pod, spec.dir.clone(), &self.node, attempt);
            let dns = resolv::pod_dns(pod, &self.dns, &resolv::host_resolv_conf());
            config.dns_config = Some(v1::DnsConfig {
                servers: dns.nameservers,
                searches: dns.searches,
                options: dns.options,
            });
            let id = match existing {
                Some(id) => id,
                None => self.run_sandbox(config.clone()).await?,
            };
            let ip = self.sandbox_ip(&id).await?;
            if !host_network(pod) {
                let hosts = etc_hosts(pod, ip.as_deref(), &self.dns.domain);
                if let Err(e) = tokio::fs::write(spec.dir.join("etc-hosts"), hosts).await {
                    return Err(StartError::start(format!(
                        "writing the pod's hosts file: {e}"
                    )));
                }
            }
            Ok(Arc::new(CriSandbox {
                cri: self.cri.clone(),
                id,
                ip,
                config,
                dir: spec.dir.clone(),
                runtime_name: self.runtime_name.clone(),
                exits: self.exits.clone(),
            }) as Arc<dyn Sandbox>)
        })
    }

    fn forget_others<'a>(&'a self, keep: &'a HashSet<String>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let sandboxes = match self.sandboxes(None).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %go_error(&e), "listing the runtime's pod sandboxes failed");
                    return;
                }
            };
            for sandbox in sandboxes {
                let uid = sandbox.labels.get(POD_UID).cloned().unwrap_or_default();
                if !keep.contains(&uid) {
                    tracing::info!(sandbox = %sandbox.id, pod_uid = %uid, "removing the sandbox of a pod no longer on this node");
                    remove_sandbox(&self.cri, &sandbox.id).await;
                    remove_pod_cgroups(uid.as_str());
                }
            }
        })
    }

    fn log_format(&self) -> LogFormat {
        LogFormat::Cri
    }

    fn version(&self) -> String {
        format!("{}://{}", self.runtime_name, self.runtime_version)
    }

    fn stream_url<'a>(
        &'a self,
        request: &'a StreamRequest,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let mut runtime = self.cri.runtime.clone();
            let answer = match request.clone() {
                StreamRequest::Exec {
                    container_id,
                    command,
                    stdio,
                } => runtime
                    .exec(v1::ExecRequest {
                        container_id,
                        cmd: command,
                        tty: stdio.tty,
                        stdin: stdio.stdin,
                        stdout: stdio.stdout,
                        stderr: stdio.stderr,
                    })
                    .await
                    .map(|r| r.into_inner().url),
                StreamRequest::Attach {
                    container_id,
                    stdio,
                } => runtime
                    .attach(v1::AttachRequest {
                        container_id,
                        stdin: stdio.stdin,
                        tty: stdio.tty,
                        stdout: stdio.stdout,
                        stderr: stdio.stderr,
                    })
                    .await
                    .map(|r| r.into_inner().url),
                StreamRequest::PortForward { pod_uid, ports } => {
                    let (id, _) = self.existing(&pod_uid).await.map_err(|e| e.message)?;
                    let id = id.ok_or_else(|| format!("pod {pod_uid} has no running sandbox"))?;
                    runtime
                        .port_forward(v1::PortForwardRequest {
                            pod_sandbox_id: id,
                            port: ports,
                        })
                        .await
                        .map(|r| r.into_inner().url)
                }
            };
            answer.map_err(|s| go_error(&s))
        })
    }
}

/// One pod's sandbox.
struct CriSandbox {
    cri: Cri,
    id: String,
    ip: Option<String>,
    /// What it was made from: containers are created against it.
    config: v1::PodSandboxConfig,
    dir: PathBuf,
    runtime_name: String,
    exits: Arc<ExitWatcher>,
}

impl Sandbox for CriSandbox {
    fn ip(&self) -> Option<String> {
        self.ip.clone()
    }

    fn start<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn Container>, StartError>> {
        Box::pin(async move {
            let started = container::start(
                &self.cri,
                &self.id,
                &self.config,
                &self.dir,
                spec,
                &self.exits,
                &self.runtime_name,
            )
            .await?;
            Ok(Arc::new(started) as Arc<dyn Container>)
        })
    }

    fn adopt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<(Arc<dyn Container>, u32)>> {
        Box::pin(async move {
            let (adopted, restarts) =
                CriContainer::adopt(&self.cri, &self.id, name, &self.exits, &self.runtime_name)
                    .await?;
            Some((Arc::new(adopted) as Arc<dyn Container>, restarts))
        })
    }

    fn remove(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            remove_sandbox(&self.cri, &self.id).await;
            let uid = self
                .config
                .metadata
                .as_ref()
                .map(|m| m.uid.clone())
                .unwrap_or_default();
            remove_pod_cgroups(&uid);
        })
    }
}

/// Stops and removes a sandbox and its containers; failures are logged
/// (the next agent start retries through `forget_others`).
async fn remove_sandbox(cri: &Cri, id: &str) {
    let mut runtime = cri.runtime.clone();
    let mut stop = tonic::Request::new(v1::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    });
    stop.set_timeout(SANDBOX_CALL);
    if let Err(e) = runtime.stop_pod_sandbox(stop).await {
        tracing::warn!(sandbox = id, error = %go_error(&e), "stopping a pod sandbox failed");
    }
    let mut remove = tonic::Request::new(v1::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    });
    remove.set_timeout(SANDBOX_CALL);
    if let Err(e) = runtime.remove_pod_sandbox(remove).await {
        tracing::warn!(sandbox = id, error = %go_error(&e), "removing a pod sandbox failed");
    }
}

/// The cgroup parent of a pod's containers.
pub fn pod_cgroup(uid: &str) -> String {
    format!("/k3rs/pod{uid}")
}

/// Removes the pod's (now empty) cgroup directories in every hierarchy.
fn remove_pod_cgroups(uid: &str) {
    if uid.is_empty() || !apiserver::objects::is_dns1123_label(uid) {
        return;
    }
    let relative = pod_cgroup(uid);
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten();
    let mut dirs: Vec<PathBuf> = hierarchies
        .map(|h| h.path().join(relative.trim_start_matches('/')))
        .collect();
    // cgroup v2 (and a v1 hierarchy mounted right there).
    dirs.push(PathBuf::from("/sys/fs/cgroup").join(relative.trim_start_matches('/')));
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        // Children first: runc leaves none, but a crash may have.
        let children = std::fs::read_dir(dir).into_iter().flatten().flatten();
        for child in children.filter(|c| c.path().is_dir()) {
            let _ = std::fs::remove_dir(child.path());
        }
        if let Err(e) = std::fs::remove_dir(dir) {
            tracing::debug!(cgroup = %dir.display(), error = %e, "removing a pod cgroup failed");
        }
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn flag(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer).and_then(Value::as_bool).unwrap_or(false)
}

pub(crate) fn host_network(pod: &Value) -> bool {
    flag(pod, "/spec/hostNetwork")
}

/// The namespaces the pod shares with the node or among its containers,
/// as the kubelet asks for them.
pub(crate) fn namespace_options(pod: &Value) -> v1::NamespaceOption {
    let node_or = |on: bool, otherwise: v1::NamespaceMode| {
        if on {
            v1::NamespaceMode::Node
        } else {
            otherwise
        }
    };
    let pid_shared = if flag(pod, "/spec/shareProcessNamespace") {
        v1::NamespaceMode::Pod
    } else {
        v1::NamespaceMode::Container
    };
    v1::NamespaceOption {
        network: node_or(host_network(pod), v1::NamespaceMode::Pod) as i32,
        pid: node_or(flag(pod, "/spec/hostPID"), pid_shared) as i32,
        ipc: node_or(flag(pod, "/spec/hostIPC"), v1::NamespaceMode::Pod) as i32,
        target_id: String::new(),
    }
}

/// The sandbox of `pod`, logging below `dir`.
fn sandbox_config(pod: &Value, dir: PathBuf, node: &str, attempt: u32) -> v1::PodSandboxConfig {
    let (name, namespace, uid) = (
        text(pod, "/metadata/name"),
        text(pod, "/metadata/namespace"),
        text(pod, "/metadata/uid"),
    );
    let strings = |pointer: &str| -> HashMap<String, String> {
        pod.pointer(pointer)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    };
    let mut labels = strings("/metadata/labels");
    labels.insert(POD_NAME.into(), name.into());
    labels.insert(POD_NAMESPACE.into(), namespace.into());
    labels.insert(POD_UID.into(), uid.into());
    labels.insert(NODE.into(), node.into());
    let privileged = containers(pod).any(|c| flag(c, "/securityContext/privileged"));
    let security = v1::LinuxSandboxSecurityContext {
        namespace_options: Some(namespace_options(pod)),
        run_as_user: int64(pod, "/spec/securityContext/runAsUser"),
        run_as_group: int64(pod, "/spec/securityContext/runAsGroup"),
        supplemental_groups: pod
            .pointer("/spec/securityContext/supplementalGroups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_i64)
            .collect(),
        privileged,
        readonly_rootfs: false,
    };
    let sysctls = pod
        .pointer("/spec/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["name"].as_str()?.to_string(),
                s["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt,
        }),
        hostname: hostname(pod),
        log_directory: dir.to_string_lossy().into_owned(),
        dns_config: None,
        port_mappings: port_mappings(pod),
        labels,
        annotations: strings("/metadata/annotations"),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup(uid),
            security_context: Some(security),
            sysctls,
        }),
    }
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["/spec/initContainers", "/spec/containers"]
        .into_iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
}

pub(crate) fn int64(v: &Value, pointer: &str) -> Option<v1::Int64Value> {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .map(|value| v1::Int64Value { value })
}

/// The pod's hostname: `spec.hostname`, else its name, cut to 63
/// characters as the kubelet cuts it; empty for host network: the pod
/// shares the node's UTS namespace, whose name runc cannot set.
fn hostname(pod: &Value) -> String {
    if host_network(pod) {
        return String::new();
    }
    let name = match text(pod, "/spec/hostname") {
        "" => text(pod, "/metadata/name"),
        h => h,
    };
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// `hostPort`s of the pod's containers.
fn port_mappings(pod: &Value) -> Vec<v1::PortMapping> {
    containers(pod)
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let host_port = p["hostPort"].as_i64().filter(|&n| n > 0)?;
            let protocol = match p["protocol"].as_str() {
                Some("UDP") => v1::Protocol::Udp,
                Some("SCTP") => v1::Protocol::Sctp,
                _ => v1::Protocol::Tcp,
            };
            Some(v1::PortMapping {
                protocol: protocol as i32,
                container_port: p["containerPort"].as_i64().unwrap_or_default() as i32,
                host_port: host_port as i32,
                host_ip: p["hostIP"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// The kubelet's managed `/etc/hosts`: loopback entries, the pod's own
/// address under its hostname, then `hostAliases`.
fn etc_hosts(pod: &Value, ip: Option<&str>, domain: &str) -> String {
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        let name = hostname(pod);
        let fqdn = match text(pod, "/spec/subdomain") {
            "" => name.clone(),
            sub => format!(
                "{name}.{sub}.{}.svc.{domain}\t{name}",
                text(pod, "/metadata/namespace")
            ),
        };
        hosts.push_str(&format!("{ip}\t{fqdn}\n"));
    }
    let aliases = pod.pointer("/spec/hostAliases").and_then(Value::as_array);
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        hosts.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names: Vec<&str> = alias["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            hosts.push_str(&format!("{}\t{}\n", text(alias, "/ip"), names.join("\t")));
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sandbox_config_carries_the_kubelets_labels_and_namespaces() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"hostPID": true, "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]},
        });
        let c = sandbox_config(&pod, PathBuf::from("/pods/u-1"), "node-a", 0);
        assert_eq!(c.labels[POD_UID], "u-1");
        assert_eq!(c.labels[NODE], "node-a");
        assert_eq!(c.labels["app"], "web");
        assert_eq!(c.hostname, "web-1");
        assert_eq!(c.log_directory, "/pods/u-1");
        let linux = c.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/k3rs/podu-1");
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.pid, v1::NamespaceMode::Node as i32);
        assert_eq!(ns.network, v1::NamespaceMode::Pod as i32);
        assert_eq!(c.port_mappings[0].host_port, 8080);
    }

    #[test]
    fn hosts_file_names_the_pod_and_its_aliases() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "ns"},
            "spec": {"hostAliases": [{"ip": "10.1.2.3", "hostnames": ["a", "b"]}]},
        });
        let hosts = etc_hosts(&pod, Some("10.42.0.9"), "cluster.local");
        assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("\n10.42.0.9\tweb-1\n"), "{hosts}");
        assert!(
            hosts.ends_with("# Entries added by HostAliases.\n10.1.2.3\ta\tb\n"),
            "{hosts}"
        );
    }
}
