//! The Lease service: grant, revoke, keep-alive, time-to-live, list.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::Header;
use crate::mvcc::Store;
use crate::proto::lease_server::Lease;
use crate::proto::*;

/// Keep-alive answers buffered per stream.
const KEEPALIVE_BUFFER: usize = 64;

/// `/etcdserverpb.Lease`.
pub struct LeaseService {
    pub(super) store: Store,
    pub(super) header: Header,
    pub(super) shutdown: super::shutdown::Shutdown,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        let mut resp = self.store.lease_grant(req.id, req.ttl).await?;
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let revision = self.store.lease_revoke(request.into_inner().id).await?;
        let mut resp = LeaseRevokeResponse::default();
        self.header.fill_at(&mut resp.header, revision);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let store = self.store.clone();
        let header = self.header.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let ttl = match store.lease_keep_alive(req.id).await {
                    Ok(ttl) => ttl,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                };
                let mut resp = LeaseKeepAliveResponse {
                    header: None,
                    id: req.id,
                    ttl,
                };
                header.fill_at(&mut resp.header, store.current_revision());
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            self.shutdown.clone().guard(ReceiverStream::new(rx)),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let mut resp = match self.store.lease_time_to_live(req.id, req.keys).await? {
            Some((ttl, granted_ttl, keys)) => LeaseTimeToLiveResponse {
                header: None,
                id: req.id,
                ttl,
                granted_ttl,
                keys,
            },
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                header: None,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        self.header
            .fill_at(&mut resp.header, self.store.current_revision());
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .store
            .lease_ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        let mut resp = LeaseLeasesResponse {
            header: None,
            leases,
        };
        self.header
            .fill_at(&mut resp.header, self.store.current_revision());
        Ok(Response::new(resp))
    }
}
