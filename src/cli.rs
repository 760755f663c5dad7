//! Command line and environment: the only place that reads argv or env.
//! Raw flags are validated into plain config values here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kine::backend::pg_tls::DatabaseTls;
use kine::backend::sqlite::{Durability, SqliteConfig};

/// k3rs: a lightweight Kubernetes datastore and control plane.
#[derive(Debug, Parser)]
#[command(name = "k3rs", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server: the datastore (the etcd v3 API) and the Kubernetes API on it.
    Server(ServerArgs),
    /// Run the datastore alone: a drop-in for kine or etcd under K3s or kube-apiserver.
    Kine(KineArgs),
    /// Run a node agent: join a server, register this node, run its pods.
    Agent(AgentArgs),
    /// Certificates for TLS and client-certificate auth.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// `k3rs kine`: serve, or a maintenance command.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KineArgs {
    #[command(subcommand)]
    pub command: Option<KineCommand>,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

/// Maintenance commands of `k3rs kine`.
#[derive(Debug, Subcommand)]
pub enum KineCommand {
    /// Save a running server's data to a file, or restore a file into a new database.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `k3rs kine snapshot`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a snapshot of a running server (as `etcdctl snapshot save`).
    Save(SnapshotSaveArgs),
    /// Restore a snapshot into a new database (offline; SQLite backend).
    Restore(SnapshotRestoreArgs),
}

/// Flags of `k3rs kine snapshot save`; etcdctl's names.
#[derive(Debug, Args)]
pub struct SnapshotSaveArgs {
    /// Where to write the snapshot.
    pub file: PathBuf,
    /// The server, HOST:PORT, or unix://PATH (`k3rs server`'s
    /// DATA_DIR/server/kine.sock).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// CA of the server's certificate (turns on TLS).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client certificate's key.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Flags of `k3rs kine snapshot restore`.
#[derive(Debug, Args)]
pub struct SnapshotRestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// The new database, sqlite://PATH. Default: DATA_DIR/server/db/state.db.
    #[arg(long, env = "KINE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Directory for k3rs's state (as for the server).
    #[arg(long, env = "K3RS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Restore a file without a SHA-256 trailer (a plain copy of a database).
    #[arg(long)]
    pub skip_hash_check: bool,
}

/// `k3rs certs`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Generate a CA, a server and a client certificate for a quick start.
    Generate(CertsGenerateArgs),
}

/// Flags of `k3rs certs generate`.
#[derive(Debug, Args)]
pub struct CertsGenerateArgs {
    /// Directory to write ca.crt/key, server.crt/key, client.crt/key and peer.crt/key into.
    #[arg(long)]
    pub dir: PathBuf,
    /// Names and addresses the server certificate is valid for.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    pub hosts: Vec<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Flags of `k3rs server`: the datastore's, and the Kubernetes API's
/// (K3s's names).
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub datastore: DatastoreArgs,

    /// Port of the Kubernetes API (HTTPS).
    #[arg(long, env = "K3RS_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,

    /// Address the Kubernetes API listens on.
    #[arg(long, env = "K3RS_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,

    /// An etcd v3 endpoint (http://HOST:PORT, real etcd included) for the
    /// Kubernetes API instead of the embedded datastore, which then does not run.
    #[arg(long, env = "K3RS_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: Option<String>,

    /// Run the datastore only, without the Kubernetes API.
    #[arg(long)]
    pub disable_apiserver: bool,

    /// Do not run an agent (pods run only on nodes that join).
    #[arg(long)]
    pub disable_agent: bool,

    /// Run neither the scheduler nor the controllers.
    #[arg(long)]
    pub disable_controllers: bool,

    #[command(flatten)]
    pub node: NodeArgs,

    /// A node whose heartbeat is older than this turns NotReady/Unknown
    /// (kube-controller-manager's --node-monitor-grace-period).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,

    /// How long pods stay on a not-ready or unreachable node before they are
    /// evicted, for pods that do not say (kube's DefaultTolerationSeconds).
    #[arg(long, default_value_t = 300)]
    pub default_not_ready_toleration_seconds: u64,

    /// The size of each node's pod subnet, a prefix length (K3s also
    /// takes it as --kube-controller-manager-arg=node-cidr-mask-size=N).
    #[arg(long, default_value_t = apiserver::controllers::DEFAULT_NODE_CIDR_MASK_SIZE)]
    pub node_cidr_mask_size: u8,

    /// kube-controller-manager flags, as K3s passes them (FLAG=VALUE,
    /// repeatable); only node-cidr-mask-size is understood.
    #[arg(long = "kube-controller-manager-arg")]
    pub kube_controller_manager_args: Vec<String>,
}

/// Flags describing the node an agent runs (K3s's names).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's name. Default: the host name.
    #[arg(long, env = "K3RS_NODE_NAME")]
    pub node_name: Option<String>,

    /// The address the node reports and its agent port listens on.
    /// Default: the address of the default route, else 127.0.0.1.
    #[arg(long, env = "K3RS_NODE_IP")]
    pub node_ip: Option<std::net::IpAddr>,

    /// A label for the node, KEY=VALUE (repeatable).
    #[arg(long = "node-label")]
    pub node_labels: Vec<String>,

    /// A taint for the node, KEY[=VALUE]:EFFECT (repeatable).
    #[arg(long = "node-taint")]
    pub node_taints: Vec<String>,

    /// The agent's port for logs (the kubelet's); 0 picks a free one.
    #[arg(long, env = "K3RS_AGENT_PORT", default_value_t = 10250)]
    pub agent_port: u16,

    /// How containers run: `containerd` (started and kept by the agent),
    /// or `process` (host processes: no images, no isolation). Default:
    /// containerd when it is on PATH and the agent runs as root.
    #[arg(long, value_enum, env = "K3RS_CONTAINER_RUNTIME")]
    pub container_runtime: Option<ContainerRuntime>,

    /// An existing CRI socket (unix:///run/containerd/containerd.sock) to
    /// run pods on instead of starting containerd.
    #[arg(long, env = "K3RS_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<PathBuf>,

    /// K3s's registries.yaml: registry mirrors, TLS and credentials for
    /// the agent's containerd.
    #[arg(long, default_value = "/etc/k3rs/registries.yaml")]
    pub private_registry: PathBuf,

    /// The pods' addresses, one subnet of it per node; the agent
    /// masquerades pod traffic leaving it.
    #[arg(long, env = "K3RS_CLUSTER_CIDR", default_value = apiserver::controllers::DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: ipnet::Ipv4Net,

    /// The cluster DNS address: pods' nameserver, served by every node, and
    /// the ClusterIP of Service kube-system/kube-dns.
    #[arg(long, env = "K3RS_CLUSTER_DNS", default_value = "10.43.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,

    /// The cluster's DNS domain.
    #[arg(long, env = "K3RS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The pod network between nodes: `host-gw` (a route per node, the
    /// nodes on one L2 network) or `none` (bring your own CNI).
    #[arg(
        long,
        value_enum,
        env = "K3RS_FLANNEL_BACKEND",
        default_value = "host-gw"
    )]
    pub flannel_backend: FlannelBackend,

    /// Do not run the service proxy (bring your own kube-proxy).
    #[arg(long, env = "K3RS_DISABLE_KUBE_PROXY")]
    pub disable_kube_proxy: bool,
}

/// The pod network backends (K3s's flag; vxlan and wireguard are not built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlannelBackend {
    HostGw,
    None,
}

/// The container runtimes an agent can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainerRuntime {
    Containerd,
    Process,
}

impl NodeArgs {
    fn into_config(self, server: String, token: String, dir: PathBuf) -> Result<agent::Config> {
        let node_name = match self.node_name {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_ascii_lowercase())
                .context("cannot read the host name; give --node-name")?,
        };
        let mut labels = Vec::new();
        for l in self.node_labels {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--node-label {l:?} is not KEY=VALUE"))?;
            labels.push((k.to_string(), v.to_string()));
        }
        for t in &self.node_taints {
            let effect = t.rsplit_once(':').map(|(_, e)| e).unwrap_or("");
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                bail!(
                    "--node-taint {t:?} is not KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute"
                );
            }
        }
        let runtime = match (self.container_runtime, self.container_runtime_endpoint) {
            (Some(ContainerRuntime::Process), Some(_)) => {
                bail!("--container-runtime process runs no CRI: drop --container-runtime-endpoint")
            }
            (Some(ContainerRuntime::Process), None) => agent::RuntimeChoice::Process,
            (_, Some(socket)) => agent::RuntimeChoice::Endpoint(socket),
            (Some(ContainerRuntime::Containerd), None) => agent::RuntimeChoice::Containerd,
            (None, None) => agent::RuntimeChoice::Auto,
        };
        if !apiserver::objects::is_subdomain(&self.cluster_domain) {
            bail!(
                "--cluster-domain {:?} is not a DNS name (lowercase labels joined by dots)",
                self.cluster_domain
            );
        }
        if self.cluster_cidr != self.cluster_cidr.trunc() {
            bail!(
                "--cluster-cidr {} has host bits set: did you mean {}?",
                self.cluster_cidr,
                self.cluster_cidr.trunc()
            );
        }
        let network = agent::NetworkConfig {
            cluster_cidr: self.cluster_cidr,
            cluster_dns: self.cluster_dns,
            cluster_domain: self.cluster_domain,
            pod_network: self.flannel_backend == FlannelBackend::HostGw,
            service_proxy: !self.disable_kube_proxy,
        };
        Ok(agent::Config {
            server,
            token,
            dir,
            node_name,
            node_ip: self.node_ip,
            port: self.agent_port,
            labels,
            taints: self.node_taints,
            runtime,
            private_registry: self.private_registry,
            network,
        })
    }
}

/// Flags of `k3rs agent` (K3s's names).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The server to join, https://HOST:6443.
    #[arg(long, env = "K3RS_URL")]
    pub server: String,

    /// The cluster token (the server's DATA_DIR/server/tls/token).
    #[arg(long, env = "K3RS_TOKEN", required_unless_present = "token_file")]
    pub token: Option<String>,

    /// A file holding the cluster token.
    #[arg(long, env = "K3RS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Directory for the agent's state. Default: /var/lib/k3rs as root, ~/.k3rs otherwise.
    #[arg(long, env = "K3RS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Log format.
    #[arg(long, value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// Log at debug level (RUST_LOG overrides).
    #[arg(long)]
    pub debug: bool,
}

impl AgentArgs {
    pub fn into_config(self) -> Result<agent::Config> {
        let token = match (self.token, &self.token_file) {
            (Some(t), _) => t,
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?
                .trim()
                .to_string(),
            (None, None) => bail!("give --token or --token-file"),
        };
        let dir = self.data_dir.unwrap_or_else(default_data_dir).join("agent");
        self.node.into_config(self.server, token, dir)
    }
}

/// What `k3rs server` runs.
pub struct ServerConfig {
    /// The embedded datastore; `None` when the API uses an external etcd.
    pub datastore: Option<DatastoreConfig>,
    pub log_format: LogFormat,
    pub debug: bool,
    /// The Kubernetes API; `None` with --disable-apiserver.
    pub api: Option<apiserver::Config>,
    /// The server's own agent (its server URL and token are filled in
    /// once the API is up); `None` with --disable-agent.
    pub agent: Option<agent::Config>,
    /// Directories of k3rs's own to create 0700, or tighten to 0700.
    pub private_dirs: Vec<PathBuf>,
}

impl ServerArgs {
    pub fn into_config(self) -> Result<ServerConfig> {
        let data_dir = self
            .datastore
            .data_dir
            .clone()
            .unwrap_or_else(default_data_dir);
        let server_dir = data_dir.join("server");
        let external = match self.datastore_endpoint.as_deref() {
            Some(e)
                if ["http://", "https://", "unix:"]
                    .iter()
                    .any(|p| e.starts_with(p)) =>
            {
                Some(e.to_string())
            }
            Some(e) => bail!(
                "--datastore-endpoint {e:?} is not an etcd endpoint (http://HOST:PORT or unix://PATH); for a database use --endpoint"
            ),
            None => None,
        };
        let (log_format, debug) = (self.datastore.log_format, self.datastore.debug);
        let datastore = match external {
            Some(_) => None,
            None => {
                // K3s's kine.sock: the API server's way to its datastore,
                // open to this user alone.
                let socket = std::path::absolute(server_dir.join("kine.sock"))
                    .with_context(|| format!("cannot resolve {}", server_dir.display()))?;
                Some(self.datastore.into_config_with(Some(socket))?)
            }
        };
        let etcd_endpoint = match (&external, &datastore) {
            (Some(e), _) => e.clone(),
            (None, Some(d)) => match &d.socket {
                Some(socket) => format!("unix://{}", socket.display()),
                None => unreachable!("`k3rs server` always serves its socket"),
            },
            (None, None) => unreachable!("one of the two is set"),
        };
        let mut private_dirs = vec![data_dir.clone(), server_dir.clone()];
        if !self.disable_apiserver {
            private_dirs.extend([server_dir.join("tls"), server_dir.join("cred")]);
        }
        let mut mask = self.node_cidr_mask_size;
        for arg in &self.kube_controller_manager_args {
            match arg.split_once('=') {
                Some(("node-cidr-mask-size" | "node-cidr-mask-size-ipv4", n)) => {
                    mask = n.parse().with_context(|| {
                        format!("--kube-controller-manager-arg {arg:?}: not a prefix length")
                    })?;
                }
                _ => bail!(
                    "--kube-controller-manager-arg {arg:?} is not supported: only node-cidr-mask-size=N is"
                ),
            }
        }
        apiserver::controllers::node_ipam::validate(self.node.cluster_cidr, mask)
            .map_err(anyhow::Error::msg)?;
        let controllers = (!self.disable_controllers).then(|| apiserver::controllers::Config {
            node_monitor_grace: self.node_monitor_grace_period,
            default_toleration: std::time::Duration::from_secs(
                self.default_not_ready_toleration_seconds,
            ),
            cluster_cidr: self.node.cluster_cidr,
            node_cidr_mask_size: mask,
        });
        let cluster_dns = self.node.cluster_dns;
        let agent_dir = server_dir.with_file_name("agent");
        let agent = if self.disable_agent || self.disable_apiserver {
            None
        } else {
            Some(
                self.node
                    .into_config(String::new(), String::new(), agent_dir)?,
            )
        };
        let api = (!self.disable_apiserver).then(|| apiserver::Config {
            listen: SocketAddr::new(self.bind_address, self.https_listen_port),
            server_dir,
            etcd_endpoint,
            controllers,
            cluster_dns,
        });
        Ok(ServerConfig {
            datastore,
            log_format,
            debug,
            api,
            agent,
            private_dirs,
        })
    }
}

/// Flags of the datastore; names follow kine's where kine has one.
#[derive(Debug, Args)]
pub struct DatastoreArgs {
    /// Address the etcd v3 gRPC API listens on: HOST:PORT, or unix://PATH
    /// for a socket only its owner can use. `k3rs kine`: 127.0.0.1:2379 by
    /// default. `k3rs server`: the socket DATA_DIR/server/kine.sock by
    /// default, which its Kubernetes API uses; HOST:PORT opens TCP besides
    /// it, without credentials unless --trusted-ca-file is set.
    #[arg(long, env = "KINE_LISTEN_ADDRESS")]
    pub listen_address: Option<String>,

    /// Start an empty store even though the database file is empty or
    /// damaged, or only its -wal is left: the file is set aside and what it
    /// held is lost. Without it k3rs refuses to start on such files.
    #[arg(long, env = "K3RS_INIT_EMPTY")]
    pub init_empty: bool,

    /// Storage DSN, in kine's form: sqlite://PATH, postgres://USER:PASS@HOST:PORT/DB or mysql://USER:PASS@tcp(HOST:PORT)/DB.
    /// Default: SQLite at DATA_DIR/server/db/state.db.
    #[arg(long, env = "KINE_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Directory for k3rs's state. Default: /var/lib/k3rs as root, ~/.k3rs otherwise.
    #[arg(long, env = "K3RS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// CA of the database server's certificate (PostgreSQL; with sslmode=verify-ca or verify-full).
    #[arg(long, alias = "ca-file", env = "KINE_CA_FILE")]
    pub datastore_cafile: Option<PathBuf>,

    /// Client certificate for the database (PostgreSQL).
    #[arg(long, alias = "cert-file", env = "KINE_CERT_FILE")]
    pub datastore_certfile: Option<PathBuf>,

    /// Client certificate's key for the database (PostgreSQL).
    #[arg(long, alias = "key-file", env = "KINE_KEY_FILE")]
    pub datastore_keyfile: Option<PathBuf>,

    /// etcd version reported by Status; kube-apiserver enables watch-progress features from 3.5.13.
    #[arg(long, env = "KINE_EMULATED_ETCD_VERSION", default_value = kine::DEFAULT_EMULATED_ETCD_VERSION)]
    pub emulated_etcd_version: String,

    /// Interval of periodic watch progress notifications (e.g. 5s, 10m).
    #[arg(long, env = "KINE_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub watch_progress_notify_interval: std::time::Duration,

    /// Compact the history on this interval (e.g. 5m); 0 leaves compaction to
    /// the clients (kube-apiserver compacts every 5 minutes).
    #[arg(long, env = "KINE_COMPACT_INTERVAL", default_value = "0")]
    pub compact_interval: String,

    /// Revisions kept by --compact-interval compaction.
    #[arg(long, env = "KINE_COMPACT_MIN_RETAIN", default_value_t = 1000)]
    pub compact_min_retain: i64,

    /// UNSAFE: do not fsync at commit. Acknowledged writes survive a crash of
    /// k3rs but can be lost on power loss or a kernel crash.
    #[arg(long, env = "K3RS_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,

    /// Member name reported by MemberList. Default: the host name.
    #[arg(long, env = "K3RS_NAME")]
    pub name: Option<String>,

    /// Log format.
    #[arg(long, env = "KINE_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,

    /// Log at debug level (RUST_LOG overrides).
    #[arg(long, env = "KINE_DEBUG")]
    pub debug: bool,

    /// Certificate of the etcd listener (PEM); with --server-key-file, serves TLS.
    #[arg(long, env = "KINE_SERVER_CERT_FILE", requires = "server_key_file")]
    pub server_cert_file: Option<PathBuf>,

    /// Private key of --server-cert-file (PEM).
    #[arg(long, env = "KINE_SERVER_KEY_FILE", requires = "server_cert_file")]
    pub server_key_file: Option<PathBuf>,

    /// CA for client certificates (PEM): clients without a certificate it
    /// signed are refused at the TLS handshake.
    #[arg(long, env = "KINE_TRUSTED_CA_FILE", requires = "server_cert_file")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Address of /metrics, /healthz and /readyz (HTTP). Default
    /// 127.0.0.1:8080, skipped with a warning if taken; "" or "0" turns it off.
    #[arg(long, env = "KINE_METRICS_BIND_ADDRESS")]
    pub metrics_bind_address: Option<String>,

    /// Log requests slower than this (e.g. 500ms, 1s).
    #[arg(long, env = "K3RS_SLOW_REQUEST_THRESHOLD", default_value = "1s", value_parser = parse_duration)]
    pub slow_request_threshold: std::time::Duration,

    /// Space quota in bytes, as etcd's: past it writes fail and the NOSPACE
    /// alarm is raised. 0: etcd's default (2 GiB); negative: no quota.
    #[arg(
        long,
        env = "K3RS_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// How long a new connection has to send its first bytes (slow or
    /// silent clients are closed after it).
    #[arg(long, env = "K3RS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: std::time::Duration,

    /// How often the server pings each client connection (etcd's flag;
    /// etcd's default is 2h).
    #[arg(long, env = "K3RS_GRPC_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub grpc_keepalive_interval: std::time::Duration,

    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, env = "K3RS_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: std::time::Duration,

    /// Most concurrent gRPC streams per client connection.
    #[arg(long, env = "K3RS_MAX_CONCURRENT_STREAMS", default_value_t = kine::server::DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,

    /// Start a new replicated cluster (embedded HA, no external database)
    /// with this server as its first member.
    #[arg(long, env = "K3RS_CLUSTER_INIT", conflicts_with = "server")]
    pub cluster_init: bool,

    /// Join the replicated cluster through a member's peer URL
    /// (http://HOST:2380); needs --token.
    #[arg(long, env = "K3RS_URL")]
    pub server: Option<String>,

    /// The cluster's shared secret, carried by every call between members.
    /// With --cluster-init and none given, one is generated into
    /// DATA_DIR/server/db/token.
    #[arg(long, env = "K3RS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Address the peer protocol (replication between members) listens on.
    #[arg(
        long,
        env = "K3RS_PEER_LISTEN_ADDRESS",
        default_value = "127.0.0.1:2380"
    )]
    pub peer_listen_address: String,

    /// The peer URL other members reach this one at. Default: from --peer-listen-address.
    #[arg(long, env = "K3RS_ADVERTISE_PEER_URL")]
    pub advertise_peer_url: Option<String>,

    /// Certificate for the peer protocol (PEM), serving and calling other
    /// members: mutual TLS, with --peer-key-file and --peer-trusted-ca-file
    /// (etcd's flags; `k3rs certs generate` writes peer.crt).
    #[arg(long, env = "K3RS_PEER_CERT_FILE", requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    pub peer_cert_file: Option<PathBuf>,

    /// Private key of --peer-cert-file (PEM).
    #[arg(long, env = "K3RS_PEER_KEY_FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,

    /// CA that signed every member's peer certificate (PEM): peers without
    /// one are refused at the handshake.
    #[arg(long, env = "K3RS_PEER_TRUSTED_CA_FILE", requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Raft heartbeat interval in milliseconds (etcd's flag and default).
    #[arg(long, env = "K3RS_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Applied entries between raft snapshots (etcd's flag); the raft log
    /// is purged behind each snapshot.
    #[arg(long, env = "K3RS_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,

    /// Raft election timeout in milliseconds (etcd's flag and default); a
    /// follower that hears no heartbeat for 1.25 to 1.5 times it calls an
    /// election.
    #[arg(long, env = "K3RS_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
}

/// Validated settings of a replicated member (the token is resolved at start).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub bootstrap: raft_store::Bootstrap,
    pub token: Option<String>,
    pub dir: PathBuf,
    pub peer_listen: SocketAddr,
    pub advertise_peer_url: String,
    pub fsync: bool,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub peer_tls: Option<raft_store::network::PeerTls>,
}

/// A storage endpoint, parsed once.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Embedded SQLite.
    Sqlite(SqliteConfig),
    /// An external PostgreSQL database.
    Postgres(kine::backend::postgres::PostgresConfig),
    /// An external MySQL or MariaDB database.
    Mysql(kine::backend::mysql::MysqlConfig),
}

/// Where the monitoring endpoints listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsBind {
    /// Not at all.
    Off,
    /// At the default address, if it is free.
    Default(SocketAddr),
    /// At an address the user chose: failing to bind is an error.
    Required(SocketAddr),
}

/// The default monitoring address (kine's port, on loopback).
const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:8080";

/// The default etcd address of `k3rs kine` (etcd's and kine's port, on loopback).
const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:2379";

/// Validated datastore settings.
#[derive(Debug)]
pub struct DatastoreConfig {
    /// TCP listener; `None` serves the socket alone.
    pub listen: Option<SocketAddr>,
    /// Unix socket (absolute path), owner-only.
    pub socket: Option<PathBuf>,
    /// Directories of k3rs's own to create 0700, or tighten to 0700.
    pub private_dirs: Vec<PathBuf>,
    /// Set an empty, headerless or orphaned database aside and start empty.
    pub init_empty: bool,
    pub endpoint: Endpoint,
    pub server: kine::ServerConfig,
    pub log_format: LogFormat,
    pub debug: bool,
    /// Own compaction: interval and revisions kept; `None` is off.
    pub auto_compact: Option<(std::time::Duration, i64)>,
    pub metrics: MetricsBind,
    /// Space quota in bytes; 0 is none.
    pub quota_bytes: u64,
    /// A replicated member's settings; `None` for a single server.
    pub cluster: Option<ClusterSettings>,
}

/// Parses argv and the environment.
pub fn parse() -> Cli {
    Cli::parse()
}

/// Like `parse_duration`, with 0 meaning "off".
fn parse_optional_duration(s: &str) -> Result<Option<std::time::Duration>, String> {
    if s.trim_start_matches('0')
        .chars()
        .all(|c| !c.is_ascii_digit())
    {
        return Ok(None);
    }
    parse_duration(s).map(Some)
}

/// Parses durations like `500us`, `500ms`, `5s`, `10m`, `1h`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s or 10m"))?;
    let micros = match unit {
        "us" | "µs" => Some(n),
        "ms" => n.checked_mul(1_000),
        "s" | "" => n.checked_mul(1_000_000),
        "m" => n.checked_mul(60_000_000),
        "h" => n.checked_mul(3_600_000_000),
        _ => return Err(format!("{s:?} has an unknown unit; use us, ms, s, m or h")),
    }
    .ok_or_else(|| format!("{s:?} is too long"))?;
    if micros == 0 {
        return Err("the interval must be above zero".into());
    }
    Ok(std::time::Duration::from_micros(micros))
}

fn default_data_dir() -> PathBuf {
    // Root gets a system path, as K3s does; anyone else their home.
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    match (is_root, std::env::var_os("HOME")) {
        (Ok(false), Some(home)) => PathBuf::from(home).join(".k3rs"),
        _ => PathBuf::from("/var/lib/k3rs"),
    }
}

fn parse_endpoint(dsn: &str, durability: Durability, tls: &DatabaseTls) -> Result<Endpoint> {
    let tls_flags = tls.ca_pem.is_some() || tls.cert_pem.is_some();
    let Some((scheme, rest)) = dsn.split_once("://") else {
        bail!("--endpoint {dsn:?} has no scheme; use sqlite://PATH");
    };
    match scheme {
        "sqlite" if tls_flags => {
            bail!(
                "--datastore-cafile/-certfile/-keyfile are for PostgreSQL; SQLite is a local file"
            )
        }
        "sqlite" => {
            let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                bail!(
                    "--endpoint {dsn:?} names no file; use sqlite://PATH, e.g. sqlite://./db/state.db"
                );
            }
            if !params.is_empty() {
                tracing::warn!(
                    params,
                    "go-sqlite3 parameters in --endpoint are ignored; k3rs sets its own pragmas"
                );
            }
            Ok(Endpoint::Sqlite(SqliteConfig {
                path: PathBuf::from(path),
                durability,
            }))
        }
        // Checks the DSN and the TLS files now, so a typo fails before anything starts.
        "postgres" | "postgresql" => Ok(Endpoint::Postgres(
            kine::backend::postgres::PostgresConfig::new(dsn, tls)
                .map_err(|e| anyhow::anyhow!("--endpoint: {e}"))?,
        )),
        "mysql" => {
            let asks_tls = dsn.split_once('?').is_some_and(|(_, q)| {
                q.split('&')
                    .any(|p| p.starts_with("tls=") && p != "tls=false" && p != "tls=")
            });
            if asks_tls || tls_flags {
                bail!(
                    "TLS to MySQL and MariaDB is not built yet (unimplemented); use a TLS tunnel or PostgreSQL"
                );
            }
            Ok(Endpoint::Mysql(kine::backend::mysql::MysqlConfig {
                dsn: dsn.into(),
            }))
        }
        other => bail!(
            "--endpoint scheme {other:?} is unknown; use sqlite://PATH, postgres:// or mysql://"
        ),
    }
}

/// The database an `--endpoint` or `--data-dir` names.
pub fn database_endpoint(
    endpoint: Option<&str>,
    data_dir: Option<PathBuf>,
    durability: Durability,
    tls: &DatabaseTls,
) -> Result<Endpoint> {
    match endpoint {
        Some(dsn) if !dsn.is_empty() => parse_endpoint(dsn, durability, tls),
        _ => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            Ok(Endpoint::Sqlite(SqliteConfig {
                path: dir.join("server/db/state.db"),
                durability,
            }))
        }
    }
}

fn parse_listen_address(address: &str) -> Result<SocketAddr> {
    address.parse().with_context(|| {
        format!(
            "--listen-address {address:?} is not HOST:PORT (e.g. 127.0.0.1:2379) or unix://PATH"
        )
    })
}

/// The absolute path of `unix://PATH` or `unix:PATH` (kine's forms).
fn unix_socket_path(address: &str) -> Result<PathBuf> {
    let path = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .unwrap_or(address);
    if path.is_empty() {
        bail!("--listen-address {address:?} names no socket; use unix://PATH");
    }
    std::path::absolute(path)
        .with_context(|| format!("--listen-address {address:?}: cannot resolve the path"))
}

fn read_pem(path: &PathBuf, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))
}

impl DatastoreArgs {
    fn tls(&self) -> Result<Option<kine::TlsConfig>> {
        let (Some(cert), Some(key)) = (&self.server_cert_file, &self.server_key_file) else {
            return Ok(None);
        };
        Ok(Some(kine::TlsConfig {
            cert_pem: read_pem(cert, "--server-cert-file")?,
            key_pem: read_pem(key, "--server-key-file")?,
            client_ca_pem: self
                .trusted_ca_file
                .as_ref()
                .map(|ca| read_pem(ca, "--trusted-ca-file"))
                .transpose()?,
        }))
    }

    fn metrics_bind(&self) -> Result<MetricsBind> {
        let parse = |s: &str| -> Result<SocketAddr> {
            s.parse().with_context(|| {
                format!("--metrics-bind-address {s:?} is not HOST:PORT (e.g. 127.0.0.1:8080)")
            })
        };
        Ok(match self.metrics_bind_address.as_deref() {
            None => MetricsBind::Default(parse(DEFAULT_METRICS_ADDRESS)?),
            Some("" | "0") => MetricsBind::Off,
            // kine's form ":8080" means every address.
            Some(s) if s.starts_with(':') => MetricsBind::Required(parse(&format!("0.0.0.0{s}"))?),
            Some(s) => MetricsBind::Required(parse(s)?),
        })
    }

    /// Validates the flags of `k3rs kine` into a config.
    pub fn into_config(self) -> Result<DatastoreConfig> {
        self.into_config_with(None)
    }

    /// Validates the flags into a config; with `default_socket` (`k3rs
    /// server`), the datastore is served on that socket, and on TCP only
    /// when --listen-address asks for it.
    fn into_config_with(self, default_socket: Option<PathBuf>) -> Result<DatastoreConfig> {
        let (listen, socket) = match self.listen_address.as_deref() {
            Some(a) if a.starts_with("unix:") => (None, Some(unix_socket_path(a)?)),
            Some(a) => (Some(parse_listen_address(a)?), default_socket),
            None if default_socket.is_some() => (None, default_socket),
            None => (Some(parse_listen_address(DEFAULT_LISTEN_ADDRESS)?), None),
        };
        if self.server_cert_file.is_some() && listen.is_none() {
            bail!(
                "--server-cert-file secures a TCP listener, and there is none: the datastore is served on the unix socket {} only; give --listen-address HOST:PORT too",
                socket.as_deref().unwrap_or(Path::new("")).display()
            );
        }
        // The database's directory is k3rs's own when it is the default
        // one; one an --endpoint names is created 0700 but left as it is.
        let private_dirs = if self.endpoint.as_deref().is_none_or(str::is_empty) {
            let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
            vec![
                data_dir.clone(),
                data_dir.join("server"),
                data_dir.join("server/db"),
            ]
        } else {
            Vec::new()
        };
        let compact_interval = parse_optional_duration(&self.compact_interval)
            .map_err(|e| anyhow::anyhow!("--compact-interval: {e}"))?;
        let durability = if self.unsafe_no_fsync {
            Durability::NoSyncUnsafe
        } else {
            Durability::Fsync
        };
        let database_tls = DatabaseTls {
            ca_pem: self
                .datastore_cafile
                .as_ref()
                .map(|f| read_pem(f, "--datastore-cafile"))
                .transpose()?,
            cert_pem: self
                .datastore_certfile
                .as_ref()
                .map(|f| read_pem(f, "--datastore-certfile"))
                .transpose()?,
            key_pem: self
                .datastore_keyfile
                .as_ref()
                .map(|f| read_pem(f, "--datastore-keyfile"))
                .transpose()?,
        };
        let mut endpoint = database_endpoint(
            self.endpoint.as_deref(),
            self.data_dir.clone(),
            durability,
            &database_tls,
        )?;
        let cluster = self.cluster_settings(&mut endpoint)?;
        let tls = self.tls()?;
        let metrics = self.metrics_bind()?;
        let name = self.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "default".into())
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = match (listen, &socket) {
            (Some(listen), _) => {
                let host = if listen.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    listen.ip().to_string()
                };
                if listen.is_ipv6() {
                    format!("{scheme}://[{host}]:{}", listen.port())
                } else {
                    format!("{scheme}://{host}:{}", listen.port())
                }
            }
            (None, Some(socket)) => format!("unix://{}", socket.display()),
            (None, None) => unreachable!("a listener is always chosen"),
        };
        let quota_bytes = match self.quota_backend_bytes {
            0 => kine::mvcc::quota::DEFAULT_QUOTA_BYTES,
            q if q < 0 => 0,
            q => q as u64,
        };
        Ok(DatastoreConfig {
            listen,
            socket,
            private_dirs,
            init_empty: self.init_empty,
            endpoint,
            server: kine::ServerConfig {
                emulated_etcd_version: self.emulated_etcd_version,
                name,
                advertise_client_urls: vec![client_url],
                watch_progress_notify_interval: self.watch_progress_notify_interval,
                tls,
                slow_request_threshold: self.slow_request_threshold,
                max_concurrent_streams: self.max_concurrent_streams.max(1),
                handshake_timeout: self.handshake_timeout,
                keepalive_interval: self.grpc_keepalive_interval,
                keepalive_timeout: self.grpc_keepalive_timeout,
            },
            log_format: self.log_format,
            debug: self.debug,
            auto_compact: compact_interval.map(|i| (i, self.compact_min_retain.max(0))),
            metrics,
            quota_bytes,
            cluster,
        })
    }

    /// A replicated member's settings: with --cluster-init or --server, or
    /// when the data directory already holds a raft log. The store then
    /// skips its own fsync: the raft log is fsynced and replays into it.
    fn cluster_settings(&self, endpoint: &mut Endpoint) -> Result<Option<ClusterSettings>> {
        let wanted = self.cluster_init || self.server.is_some();
        let Endpoint::Sqlite(sqlite) = endpoint else {
            if wanted {
                bail!(
                    "--cluster-init and --server replicate the embedded SQLite datastore; servers sharing an external database need neither"
                );
            }
            return Ok(None);
        };
        let dir = sqlite
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if !wanted && !dir.join("raft.db").exists() {
            return Ok(None);
        }
        let peer_tls = match (
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ) {
            (Some(cert), Some(key), Some(ca)) => Some(raft_store::network::PeerTls {
                cert_pem: read_pem(cert, "--peer-cert-file")?,
                key_pem: read_pem(key, "--peer-key-file")?,
                ca_pem: read_pem(ca, "--peer-trusted-ca-file")?,
            }),
            _ => None,
        };
        let scheme = if peer_tls.is_some() { "https" } else { "http" };
        let bootstrap = match &self.server {
            Some(url) if !url.starts_with(&format!("{scheme}://")) => {
                bail!(
                    "--server {url:?}: the peer protocol is {scheme} here (TLS comes with --peer-cert-file), so the URL must start with {scheme}://"
                )
            }
            Some(url) => {
                if self.token.is_none() {
                    bail!(
                        "--server needs --token: the cluster's token (see the first server's DATA_DIR/server/db/token)"
                    );
                }
                raft_store::Bootstrap::Join(url.clone())
            }
            None => raft_store::Bootstrap::ClusterInit,
        };
        let peer_listen: SocketAddr = self.peer_listen_address.parse().with_context(|| {
            format!(
                "--peer-listen-address {:?} is not HOST:PORT",
                self.peer_listen_address
            )
        })?;
        let advertise_peer_url = self.advertise_peer_url.clone().unwrap_or_else(|| {
            let ip = if peer_listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                peer_listen.ip().to_string()
            };
            format!("{scheme}://{ip}:{}", peer_listen.port())
        });
        if self.election_timeout < 5 * self.heartbeat_interval.max(1) {
            bail!("--election-timeout must be at least five times --heartbeat-interval");
        }
        let fsync = sqlite.durability == Durability::Fsync;
        sqlite.durability = Durability::ReplayedFromLog;
        Ok(Some(ClusterSettings {
            bootstrap,
            token: self.token.clone(),
            dir,
            peer_listen,
            advertise_peer_url,
            fsync,
            heartbeat_ms: self.heartbeat_interval.max(1),
            election_timeout_ms: self.election_timeout,
            snapshot_count: self.snapshot_count.max(1),
            peer_tls,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<DatastoreConfig> {
        let cli = Cli::try_parse_from(args)?;
        match cli.command {
            Command::Server(a) => a.into_config()?.datastore.context("no embedded datastore"),
            Command::Kine(KineArgs { datastore: a, .. }) => a.into_config(),
            other => anyhow::bail!("not a serving command: {other:?}"),
        }
    }

    fn server(args: &[&str]) -> Result<ServerConfig> {
        let mut argv = vec!["k3rs", "server", "--data-dir", "/tmp/k3rs-cli-test"];
        argv.extend(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Server(a) => a.into_config(),
            other => anyhow::bail!("not a server: {other:?}"),
        }
    }

    #[test]
    fn cluster_network_flags_parse_and_are_checked() {
        let c = server(&["--node-name", "n"]).unwrap();
        let controllers = c.api.unwrap().controllers.unwrap();
        assert_eq!(controllers.cluster_cidr.to_string(), "10.42.0.0/16");
        assert_eq!(controllers.node_cidr_mask_size, 24);
        let network = c.agent.unwrap().network;
        assert_eq!(network.cluster_dns.to_string(), "10.43.0.10");
        assert_eq!(network.cluster_domain, "cluster.local");
        assert!(network.pod_network);

        let c = server(&[
            "--node-name",
            "n",
            "--cluster-cidr",
            "10.100.0.0/16",
            "--kube-controller-manager-arg=node-cidr-mask-size=26",
            "--cluster-dns",
            "10.101.0.10",
            "--cluster-domain",
            "corp.internal",
            "--flannel-backend",
            "none",
        ])
        .unwrap();
        let controllers = c.api.unwrap().controllers.unwrap();
        assert_eq!(controllers.cluster_cidr.to_string(), "10.100.0.0/16");
        assert_eq!(controllers.node_cidr_mask_size, 26);
        let network = c.agent.unwrap().network;
        assert_eq!(network.cluster_cidr.to_string(), "10.100.0.0/16");
        assert_eq!(network.cluster_domain, "corp.internal");
        assert!(!network.pod_network);

        let err = |args: &[&str]| format!("{:#}", server(args).err().expect("refused"));
        assert!(err(&["--node-cidr-mask-size", "8"]).contains("shorter than the cluster CIDR"));
        assert!(err(&["--node-cidr-mask-size", "31"]).contains("at most 30"));
        assert!(err(&["--cluster-cidr", "10.42.0.1/16"]).contains("host bits"));
        assert!(
            err(&["--kube-controller-manager-arg", "leader-elect=false"]).contains("not supported")
        );
        assert!(
            err(&["--node-name", "n", "--cluster-domain", "Bad_Domain"]).contains("not a DNS name")
        );
    }

    #[test]
    fn defaults_and_flags_parse() {
        let c = parse_args(&["k3rs", "kine"]).unwrap();
        assert_eq!(c.listen.unwrap().to_string(), "127.0.0.1:2379");
        assert!(c.auto_compact.is_none());
        assert!(!c.init_empty);
        assert!(
            parse_args(&["k3rs", "kine", "--init-empty"])
                .unwrap()
                .init_empty
        );
        let c = parse_args(&[
            "k3rs",
            "kine",
            "--compact-interval",
            "5m",
            "--watch-progress-notify-interval",
            "100ms",
        ])
        .unwrap();
        assert_eq!(
            c.auto_compact,
            Some((std::time::Duration::from_secs(300), 1000))
        );
        assert_eq!(
            c.server.watch_progress_notify_interval,
            std::time::Duration::from_millis(100)
        );
        assert!(parse_args(&["k3rs", "kine", "--compact-interval", "5 parsecs"]).is_err());
        assert!(parse_args(&["k3rs", "kine", "--listen-address", "nowhere"]).is_err());
    }

    #[test]
    fn listeners() {
        // `k3rs server`: its own socket, and TCP only when asked.
        let c = parse_args(&["k3rs", "server", "--data-dir", "/d"]).unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.socket.as_deref(), Some(Path::new("/d/server/kine.sock")));
        assert_eq!(
            c.server.advertise_client_urls,
            ["unix:///d/server/kine.sock"]
        );
        assert_eq!(
            c.private_dirs,
            [
                PathBuf::from("/d"),
                PathBuf::from("/d/server"),
                PathBuf::from("/d/server/db")
            ]
        );
        let server = ["k3rs", "server", "--data-dir", "/d"];
        let c =
            parse_args(&[&server[..], &["--listen-address", "127.0.0.1:2379"]].concat()).unwrap();
        assert_eq!(c.listen.unwrap().to_string(), "127.0.0.1:2379");
        assert_eq!(c.socket.as_deref(), Some(Path::new("/d/server/kine.sock")));
        let cli = Cli::try_parse_from(server).unwrap();
        let Command::Server(args) = cli.command else {
            unreachable!()
        };
        let config = args.into_config().unwrap();
        assert_eq!(
            config.api.unwrap().etcd_endpoint,
            "unix:///d/server/kine.sock"
        );
        assert!(
            config
                .private_dirs
                .contains(&PathBuf::from("/d/server/tls"))
        );
        let tls_without_tcp = [
            &server[..],
            &["--server-cert-file", "/c", "--server-key-file", "/k"],
        ]
        .concat();
        let err = parse_args(&tls_without_tcp).unwrap_err().to_string();
        assert!(err.contains("--listen-address"), "{err}");

        // `k3rs kine`: TCP by default, or kine's unix:// form alone.
        let c = parse_args(&["k3rs", "kine", "--listen-address", "unix:///run/k.sock"]).unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.socket.as_deref(), Some(Path::new("/run/k.sock")));
        assert!(parse_args(&["k3rs", "kine", "--listen-address", "unix://"]).is_err());
        let c = parse_args(&["k3rs", "kine", "--endpoint", "sqlite:///x/state.db"]).unwrap();
        assert!(
            c.private_dirs.is_empty(),
            "a named database's directory is the user's"
        );
    }

    #[test]
    fn endpoints() {
        assert!(
            matches!(parse_endpoint("sqlite://./db/state.db", Durability::Fsync, &DatabaseTls::default()), Ok(Endpoint::Sqlite(c)) if c.path == PathBuf::from("./db/state.db"))
        );
        assert!(
            matches!(parse_endpoint("sqlite:///abs/x.db?_journal=WAL", Durability::Fsync, &DatabaseTls::default()), Ok(Endpoint::Sqlite(c)) if c.path == PathBuf::from("/abs/x.db"))
        );
        assert!(parse_endpoint("state.db", Durability::Fsync, &DatabaseTls::default()).is_err());
        assert!(parse_endpoint("sqlite://", Durability::Fsync, &DatabaseTls::default()).is_err());
        assert!(parse_endpoint("nats://x", Durability::Fsync, &DatabaseTls::default()).is_err());
        assert!(matches!(
            parse_endpoint(
                "postgres://u:p@db:5432/k?sslmode=disable",
                Durability::Fsync,
                &DatabaseTls::default()
            ),
            Ok(Endpoint::Postgres(_))
        ));
        assert!(matches!(
            parse_endpoint(
                "postgresql://u@db/k",
                Durability::Fsync,
                &DatabaseTls::default()
            ),
            Ok(Endpoint::Postgres(_))
        ));
        assert!(matches!(
            parse_endpoint(
                "mysql://u@tcp(db:3306)/k",
                Durability::Fsync,
                &DatabaseTls::default()
            ),
            Ok(Endpoint::Mysql(_))
        ));
        assert!(
            parse_endpoint(
                "mysql://u@tcp(db:3306)/k?tls=true",
                Durability::Fsync,
                &DatabaseTls::default()
            )
            .is_err()
        );
        assert!(
            parse_endpoint(
                "postgres://u@db/k?sslmode=verify-full",
                Durability::Fsync,
                &DatabaseTls::default()
            )
            .is_err()
        );
    }
}
