//! gRPC clients for one target, generated from k3rs's own protos
//! (`kine::proto`), over one shared `tonic` channel.

use std::time::Duration;

use kine::proto::cluster_client::ClusterClient;
use kine::proto::kv_client::KvClient;
use kine::proto::lease_client::LeaseClient;
use kine::proto::maintenance_client::MaintenanceClient;
use kine::proto::watch_client::WatchClient;
use tonic::transport::{Channel, Endpoint};

/// Responses may carry a 1.5 MiB value plus overhead; tonic's default 4 MiB
/// decode limit is raised so large ranges decode.
const MAX_DECODE: usize = 64 * 1024 * 1024;

/// One client per etcd service.
#[derive(Clone)]
pub struct Clients {
    /// `/etcdserverpb.KV`.
    pub kv: KvClient<Channel>,
    /// `/etcdserverpb.Watch`.
    pub watch: WatchClient<Channel>,
    /// `/etcdserverpb.Lease`.
    pub lease: LeaseClient<Channel>,
    /// `/etcdserverpb.Maintenance`.
    pub maintenance: MaintenanceClient<Channel>,
    /// `/etcdserverpb.Cluster`.
    pub cluster: ClusterClient<Channel>,
}

impl Clients {
    /// Connects to `endpoint` (`http://host:port`).
    pub async fn connect(endpoint: &str) -> Result<Self, String> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connect {endpoint}: {e}"))?;
        Ok(Clients {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(MAX_DECODE),
            watch: WatchClient::new(channel.clone()).max_decoding_message_size(MAX_DECODE),
            lease: LeaseClient::new(channel.clone()).max_decoding_message_size(MAX_DECODE),
            maintenance: MaintenanceClient::new(channel.clone())
                .max_decoding_message_size(MAX_DECODE),
            cluster: ClusterClient::new(channel).max_decoding_message_size(MAX_DECODE),
        })
    }
}
