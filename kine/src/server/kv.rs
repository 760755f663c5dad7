//! The KV service: check, call the store, map the error, fill the header
//! (etcd's v3rpc/key.go shape).

use prost::Message;
use tonic::{Request, Response, Status};

use super::Header;
use crate::error::Error;
use crate::mvcc::Store;
use crate::proto::kv_server::Kv;
use crate::proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

/// Largest request etcd accepts (`--max-request-bytes` default).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// `/etcdserverpb.KV`.
pub struct KvService {
    pub(super) store: Store,
    pub(super) header: Header,
}

fn check_size(req: &impl Message) -> Result<(), Status> {
    if req.encoded_len() > MAX_REQUEST_BYTES {
        Err(Error::RequestTooLarge.into())
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        let mut resp = self.store.range(&req).await?;
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        check_size(&req)?;
        let mut resp = self.store.put(req).await?;
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        check_size(&req)?;
        let mut resp = self.store.delete_range(req).await?;
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        check_size(&req)?;
        let mut resp = self.store.txn(req).await?;
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        let current = self.store.compact(req.revision, req.physical).await?;
        let mut resp = CompactionResponse::default();
        self.header.fill_at(&mut resp.header, current);
        Ok(Response::new(resp))
    }
}
