//! The Cluster service: one member, this server.

use tonic::{Request, Response, Status};

use super::Header;
use crate::error::Error;
use crate::mvcc::Store;
use crate::proto::cluster_server::Cluster;
use crate::proto::*;

/// `/etcdserverpb.Cluster`.
pub struct ClusterService {
    pub(super) store: Store,
    pub(super) header: Header,
    pub(super) name: String,
    pub(super) client_urls: Vec<String>,
    pub(super) peer_urls: Vec<String>,
}

impl ClusterService {
    fn members(&self) -> Vec<Member> {
        vec![Member {
            id: self.store.identity().member_id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: false,
        }]
    }

    fn single_member(what: &str) -> Status {
        Error::Unimplemented(format!(
            "k3rs: {what} needs a replicated backend; this one has a single member"
        ))
        .into()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(Self::single_member("member add"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(Self::single_member("member remove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Self::single_member("member update"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let mut resp = MemberListResponse {
            header: None,
            members: self.members(),
        };
        // etcd's Cluster service leaves the header revision at 0.
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(Self::single_member("member promote"))
    }
}
