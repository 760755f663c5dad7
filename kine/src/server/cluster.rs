//! The Cluster service: this server alone, or a replicated store's members.

use tonic::{Request, Response, Status};

use super::Header;
use crate::error::Error;
use crate::mvcc::Store;
use crate::mvcc::replication::ClusterMember;
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
        if let Some(r) = self.store.replicator() {
            return r.members().into_iter().map(to_member).collect();
        }
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

fn to_member(m: ClusterMember) -> Member {
    Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let Some(r) = self.store.replicator() else {
            return Err(Self::single_member("member add"));
        };
        let req = request.into_inner();
        let added = r.member_add(req.peer_ur_ls, req.is_learner).await?;
        let mut resp = MemberAddResponse {
            header: None,
            member: Some(to_member(added)),
            members: self.members(),
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let Some(r) = self.store.replicator() else {
            return Err(Self::single_member("member remove"));
        };
        r.member_remove(request.into_inner().id).await?;
        let mut resp = MemberRemoveResponse {
            header: None,
            members: self.members(),
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        if self.store.replicator().is_some() {
            // A member's peer URL changes when it rejoins with a new one.
            return Err(Error::Unimplemented(
                "k3rs: member update is not built yet; restart the member with its new --advertise-peer-url"
                    .into(),
            )
            .into());
        }
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
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let Some(r) = self.store.replicator() else {
            return Err(Self::single_member("member promote"));
        };
        r.member_promote(request.into_inner().id).await?;
        let mut resp = MemberPromoteResponse {
            header: None,
            members: self.members(),
        };
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
