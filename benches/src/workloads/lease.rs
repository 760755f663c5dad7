//! lease-keepalive: each client grants a lease, then sends keepalives on
//! its own LeaseKeepAlive stream, one at a time, timing each round trip.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use kine::proto::lease_client::LeaseClient;
use kine::proto::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::result_from;
use crate::cli::{Global, LeaseKeepaliveArgs};
use crate::conn;
use crate::report::BenchResult;
use crate::runner::{Client, Outcome, run_closed_loop, status_error};

struct KeepaliveClient {
    id: i64,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl Client for KeepaliveClient {
    async fn call(&mut self, _: u64) -> Outcome {
        if self
            .tx
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .is_err()
        {
            return Outcome::of(Err(Status::unavailable("the keepalive stream closed")));
        }
        let r = match self.rx.message().await {
            Ok(Some(resp)) if resp.ttl > 0 => Ok(()),
            Ok(Some(_)) => Err(Status::not_found(
                "the lease expired or was not found (TTL <= 0)",
            )),
            Ok(None) => Err(Status::unavailable(
                "the server closed the keepalive stream",
            )),
            Err(s) => Err(s),
        };
        Outcome::of(r)
    }
}

/// Grants a lease and opens its keepalive stream.
async fn open(lease: &mut LeaseClient<Channel>, ttl: i64) -> Result<KeepaliveClient> {
    let grant = lease
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .map_err(|s| status_error("LeaseGrant", s))?
        .into_inner();
    if !grant.error.is_empty() {
        return Err(anyhow!("LeaseGrant failed: {}", grant.error));
    }
    // The first keepalive goes out with the call: etcd sends the response
    // headers only with its first message.
    let (tx, rx) = mpsc::channel(16);
    tx.send(LeaseKeepAliveRequest { id: grant.id })
        .await
        .map_err(|_| anyhow!("the keepalive stream closed"))?;
    let mut stream = lease
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_error("LeaseKeepAlive", s))?
        .into_inner();
    stream
        .message()
        .await
        .map_err(|s| status_error("LeaseKeepAlive", s))?;
    Ok(KeepaliveClient {
        id: grant.id,
        tx,
        rx: stream,
    })
}

/// `lease-keepalive`.
pub async fn keepalive(g: &Global, a: &LeaseKeepaliveArgs) -> Result<BenchResult> {
    let channels = conn::connect(&g.endpoints, g.conns).await?;
    let mut clients = Vec::with_capacity(g.clients);
    for c in 0..g.clients {
        clients.push(open(&mut conn::lease(&channels[c % channels.len()]), a.ttl).await?);
    }
    let ids: Vec<i64> = clients.iter().map(|c| c.id).collect();
    let out = run_closed_loop(clients, 1, &g.run_opts("lease-keepalive", a.total, 0.0)).await;
    // Best effort: leave no lease behind.
    let mut lease = conn::lease(&channels[0]);
    for id in ids {
        if let Err(s) = lease.lease_revoke(LeaseRevokeRequest { id }).await
            && s.code() == Code::Unimplemented
        {
            break;
        }
    }
    Ok(result_from(
        g,
        "lease-keepalive",
        &["keepalive"],
        out?,
        BTreeMap::new(),
    ))
}
