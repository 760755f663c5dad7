//! gRPC connections to etcd v3 endpoints.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kine::proto::kv_client::KvClient;
use kine::proto::lease_client::LeaseClient;
use kine::proto::watch_client::WatchClient;
use tonic::transport::{Channel, Endpoint};

/// Largest response the generator accepts (a page of big values).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// `host:port` or a URL, as a gRPC URI.
pub fn endpoint_uri(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Opens `conns` HTTP/2 connections, spread round-robin over `endpoints`.
pub async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<Channel>> {
    if endpoints.is_empty() {
        bail!("no endpoint given (--endpoints)");
    }
    let mut out = Vec::with_capacity(conns.max(1));
    for i in 0..conns.max(1) {
        let ep = &endpoints[i % endpoints.len()];
        let channel = Endpoint::from_shared(endpoint_uri(ep))
            .with_context(|| format!("bad endpoint {ep:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| {
                format!("cannot connect to {ep}; is an etcd v3 server listening there?")
            })?;
        out.push(channel);
    }
    Ok(out)
}

/// A KV client on `channel` with no practical response size limit.
pub fn kv(channel: &Channel) -> KvClient<Channel> {
    KvClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A Watch client on `channel`.
pub fn watch(channel: &Channel) -> WatchClient<Channel> {
    WatchClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A Lease client on `channel`.
pub fn lease(channel: &Channel) -> LeaseClient<Channel> {
    LeaseClient::new(channel.clone())
}
