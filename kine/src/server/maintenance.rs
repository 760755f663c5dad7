//! The Maintenance service: status, hashes, defragment and alarms as a
//! healthy single etcd member answers them.

use std::sync::Mutex;

use tonic::{Request, Response, Status};

use super::Header;
use crate::error::Error;
use crate::mvcc::Store;
use crate::proto::alarm_request::AlarmAction;
use crate::proto::maintenance_server::Maintenance;
use crate::proto::*;

/// `/etcdserverpb.Maintenance`.
pub struct MaintenanceService {
    pub(super) store: Store,
    pub(super) header: Header,
    pub(super) version: String,
    /// Raised alarms. A std Mutex: nothing awaits while holding it.
    pub(super) alarms: Mutex<Vec<AlarmMember>>,
}

type SnapshotStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        let mut alarms = self.alarms.lock().unwrap_or_else(|p| p.into_inner());
        let member = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        let answer = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => alarms
                .iter()
                .filter(|a| req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                .cloned()
                .collect(),
            Ok(AlarmAction::Activate) => {
                if req.alarm != AlarmType::None as i32 && !alarms.contains(&member) {
                    alarms.push(member.clone());
                }
                vec![member]
            }
            Ok(AlarmAction::Deactivate) => {
                let before = alarms.len();
                alarms.retain(|a| a != &member);
                if alarms.len() < before {
                    vec![member]
                } else {
                    Vec::new()
                }
            }
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        let mut resp = AlarmResponse {
            header: None,
            alarms: answer,
        };
        // etcd leaves an Alarm answer's header revision at 0.
        self.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let (db_size, db_size_in_use) = self.store.db_size()?;
        let revision = self.store.current_revision();
        let id = self.store.identity().member_id;
        let mut resp = StatusResponse {
            header: None,
            version: self.version.clone(),
            db_size,
            leader: id,
            raft_index: revision as u64,
            raft_term: super::RAFT_TERM,
            raft_applied_index: revision as u64,
            errors: Vec::new(),
            db_size_in_use,
            is_learner: false,
            storage_version: String::new(),
            db_size_quota: 0,
        };
        self.header.fill_at(&mut resp.header, revision);
        Ok(Response::new(resp))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.store.defragment().await?;
        let mut resp = DefragmentResponse::default();
        self.header
            .fill_at(&mut resp.header, self.store.current_revision());
        Ok(Response::new(resp))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, _, at) = self.store.hash_kv(0).await?;
        let mut resp = HashResponse { header: None, hash };
        self.header.fill_at(&mut resp.header, at);
        Ok(Response::new(resp))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let (hash, compact_revision, hash_revision) =
            self.store.hash_kv(request.into_inner().revision).await?;
        let mut resp = HashKvResponse {
            header: None,
            hash,
            compact_revision,
            hash_revision,
        };
        self.header
            .fill_at(&mut resp.header, self.store.current_revision());
        Ok(Response::new(resp))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        Err(Error::Unimplemented("k3rs: snapshot is not implemented yet".into()).into())
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Error::Unimplemented("k3rs: move leader needs a replicated backend".into()).into())
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Error::Unimplemented("k3rs: downgrade is not implemented".into()).into())
    }
}
