//! k3rs's node agent (the kubelet's job): joins the cluster, registers its
//! Node, renews its Lease, runs the pods bound to it and serves their logs.
//!
//! - `join`: the CA check against the token, the node password, the
//!   agent port's certificate.
//! - `node`: the Node object, its status and the Lease heartbeat.
//! - `pods`: this node's pods from the API to the supervisor and back.
//! - `supervisor`: each pod's containers, restarts, probes and status;
//!   `runtime`: the seam between it and how pods run; `cri`: pods on
//!   containerd through CRI; `process`: containers as host processes;
//!   `probes`: readiness, liveness and startup probes; `volumes` and
//!   `env`: a pod's volumes and a container's variables, from the API
//!   objects `objects` reads; `pull_secrets`: a pod's imagePullSecrets.
//! - `logs`: the agent's HTTPS port, serving container logs (`cri_log`
//!   reads the CRI log format) and exec, attach and port-forward
//!   (`streams`).
//! - `proxy`: the service proxy (kube-proxy's job) on nftables.
//! - `dns`: the cluster DNS at 10.43.0.10 (Services, pods, forwarding).
//! - `network`: the pod network on CRI (CNI bridge for the node's
//!   podCIDR, routes to the other nodes', masquerade); `resolv`: pods'
//!   DNS settings by dnsPolicy.

pub mod cri;
pub mod cri_log;
pub mod dns;
pub mod env;
pub mod join;
pub mod logs;
pub mod network;
pub mod node;
pub mod objects;
pub mod pods;
pub mod probes;
pub mod process;
pub mod proxy;
pub mod pull_secrets;
pub mod resolv;
pub mod runtime;
pub mod streams;
pub mod supervisor;
pub mod volumes;
pub mod websocket;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

pub use network::NetworkConfig;

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server, `https://HOST:6443`.
    pub server: String,
    /// The cluster token (`K10<CA hash>::server:<secret>`).
    pub token: String,
    /// The agent's directory: node password, pod directories, logs.
    pub dir: PathBuf,
    pub node_name: String,
    /// The address the node reports and its port listens on; `None`: the
    /// address of the default route, else 127.0.0.1.
    pub node_ip: Option<IpAddr>,
    /// The agent's port (the kubelet's 10250); 0 picks a free one.
    pub port: u16,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<String>,
    /// How the node's containers run.
    pub runtime: RuntimeChoice,
    /// K3s's registries.yaml (mirrors, TLS, credentials) for containerd.
    pub private_registry: PathBuf,
    /// The cluster CIDR, DNS, and whether the pod network runs.
    pub network: NetworkConfig,
}

/// How the node's containers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// containerd when it is on PATH and the agent runs as root, else
    /// host processes (with a warning saying what to install).
    Auto,
    /// A containerd the agent starts and keeps running.
    Containerd,
    /// An existing CRI socket.
    Endpoint(PathBuf),
    /// Host processes: no images, no isolation.
    Process,
}

/// Creates `dir` 0700, or tightens it to 0700: the node password, the
/// serving key and the pods' files and logs live below it.
fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let was = std::fs::metadata(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if was & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        tracing::warn!(
            path = %dir.display(),
            was = %format!("{was:04o}"),
            now = "0700",
            "tightened the mode: other local users could read k3rs's data through it"
        );
    }
    Ok(())
}

/// The address this machine reaches others from (no packet is sent).
fn default_ip() -> IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => IpAddr::from([127, 0, 0, 1]),
    }
}

/// The runtime `config` asks for, ready to run pods, and the CNI
/// directories of the containerd the agent runs.
async fn start_runtime(config: &Config, pods_dir: &Path) -> Result<StartedRuntime> {
    let choice = match &config.runtime {
        RuntimeChoice::Auto => auto_runtime(),
        other => other.clone(),
    };
    let endpoint = match choice {
        RuntimeChoice::Process => {
            process::cleanup_orphans(pods_dir);
            return Ok(StartedRuntime {
                runtime: Arc::new(process::ProcessRuntime),
                cni: None,
                on_cri: false,
            });
        }
        RuntimeChoice::Endpoint(socket) => Some(socket),
        _ => None,
    };
    let dns = resolv::ClusterDns {
        nameserver: config.network.cluster_dns,
        domain: config.network.cluster_domain.clone(),
    };
    let started = cri::setup::start(
        &config.dir,
        &config.node_name,
        endpoint.as_deref(),
        &config.private_registry,
        dns,
    )
    .await?;
    if started.cni.is_none() {
        tracing::info!("the CRI endpoint's own CNI configuration gives pods their network");
    }
    Ok(StartedRuntime {
        runtime: Arc::new(started.runtime),
        cni: started.cni,
        on_cri: true,
    })
}

/// What `start_runtime` started.
struct StartedRuntime {
    runtime: Arc<dyn runtime::Runtime>,
    /// Where the pod network's CNI configuration goes, for a containerd
    /// of the agent's own (an existing CRI endpoint brings its own).
    cni: Option<cri::setup::CniDirs>,
    /// Pods run in sandboxes with network namespaces of their own.
    on_cri: bool,
}

/// containerd when it can run here, else host processes.
fn auto_runtime() -> RuntimeChoice {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && cri::containerd::on_path("containerd") {
        return RuntimeChoice::Containerd;
    }
    let why = if root {
        "containerd is not on PATH"
    } else {
        "containerd needs root"
    };
    tracing::warn!(
        why,
        "running containers as host processes, without images or isolation: install containerd, runc and \
         containernetworking-plugins (apt-get install containerd runc containernetworking-plugins) \
         and run the agent as root, or pass --container-runtime process to silence this"
    );
    RuntimeChoice::Process
}

/// The node's share of Services: the proxy (unless disabled) and the
/// cluster DNS, both for pods in their own network namespaces; host
/// processes share the host's and get neither.
fn start_services(
    client: &apiserver::client::Client,
    config: &Config,
    ip: IpAddr,
    nft: Option<std::path::PathBuf>,
) {
    let network = &config.network;
    if network.service_proxy {
        let mut proxy = proxy::ProxyConfig::k3s_defaults(&config.node_name, vec![ip]);
        proxy.cluster_cidr = proxy::Ipv4Cidr {
            addr: network.cluster_cidr.network(),
            prefix: network.cluster_cidr.prefix_len(),
        };
        proxy.cluster_dns_ip = Some(IpAddr::V4(network.cluster_dns));
        proxy.nft = nft.unwrap_or(proxy.nft);
        tokio::spawn(proxy::run(client.clone(), proxy));
    }
    let dns = dns::DnsConfig {
        listen_ip: IpAddr::V4(network.cluster_dns),
        cluster_domain: network.cluster_domain.clone(),
        cluster_cidr: network.cluster_cidr,
        ..dns::DnsConfig::default()
    };
    tokio::spawn(run_dns(client.clone(), dns));
}

/// The cluster DNS, started again after a failure (the address taken, the
/// link not made yet), 1 s after the first and up to 30 s apart.
async fn run_dns(client: apiserver::client::Client, config: dns::DnsConfig) {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    let mut delay = FIRST;
    loop {
        let started = tokio::time::Instant::now();
        let why = match dns::run(client.clone(), config.clone()).await {
            Ok(()) => "the cluster DNS stopped".to_string(),
            Err(e) => format!("{e:#}"),
        };
        // A server that ran a while failed anew: start over from 1 s.
        if started.elapsed() > MAX {
            delay = FIRST;
        }
        tracing::error!(error = %why, retry_in_s = delay.as_secs(), "the cluster DNS is down; pods cannot resolve names");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX);
    }
}

/// Joins (retrying while the server is unreachable), registers the node and
/// runs until the process ends; errors that retrying cannot fix end it.
pub async fn run(config: Config) -> Result<()> {
    private_dir(&config.dir)?;
    let ip = config.node_ip.unwrap_or_else(default_ip);
    let listener = logs::bind(SocketAddr::new(ip, config.port)).await?;
    let port = listener.local_addr()?.port();
    let mut delay = Duration::from_millis(200);
    let joined = loop {
        match join::join(
            &config.server,
            &config.token,
            &config.node_name,
            &[ip.to_string()],
            &config.dir,
        )
        .await
        {
            Ok(j) => break j,
            Err(join::JoinError::Refused(e)) => return Err(e),
            Err(join::JoinError::Unreachable(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "waiting for the server");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let pods_dir = config.dir.join("pods");
    private_dir(&pods_dir)?;
    let StartedRuntime {
        runtime,
        cni: cni_dirs,
        on_cri,
    } = start_runtime(&config, &pods_dir).await?;
    let (supervisor, updates) = supervisor::Supervisor::new(pods_dir, runtime, ip.to_string());
    let sources = objects::ApiSources {
        client: joined.client.clone(),
    };
    let supervisor = Arc::new(supervisor.with_sources(Arc::new(sources)));
    logs::serve(
        listener,
        &joined.serving_cert_pem,
        &joined.serving_key_pem,
        supervisor.clone(),
        joined.token.clone(),
    )?;
    let info = node::NodeInfo {
        name: config.node_name.clone(),
        address: ip.to_string(),
        agent_port: port,
        labels: config.labels.clone(),
        taints: config.taints.clone(),
        runtime_version: supervisor.runtime_version(),
    };
    let client = joined.client.clone();
    let registered = loop {
        match node::register(&client, &info).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "registering the node failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(node = %info.name, address = %ip, port, server = %config.server, "node registered; running its pods");
    let uid = registered["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    tokio::spawn(node::heartbeat(client.clone(), info, uid));
    // One nft for the NAT table and the proxy.
    let nft = cri::containerd::find_on_path("nft");
    match cni_dirs {
        Some(dirs) if config.network.pod_network => {
            network::start(
                &client,
                &config.node_name,
                ip,
                &config.network,
                &dirs,
                nft.clone(),
            )
            .await?;
        }
        Some(dirs) => tracing::info!(
            conf_dir = %dirs.conf_dir.display(),
            "the pod network is off (--flannel-backend none): put a CNI configuration there"
        ),
        None => {}
    }
    if on_cri {
        start_services(&client, &config, ip, nft);
    }
    tokio::spawn(pods::report(client.clone(), updates));
    pods::run(client, config.node_name, supervisor).await;
    Ok(())
}
