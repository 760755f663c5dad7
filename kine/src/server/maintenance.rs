//! The Maintenance service: status, hashes, defragment, alarms and
//! snapshots as a single etcd member answers them.

use std::io::Read;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::Header;
use crate::backend::snapshot::Sha256;
use crate::error::Error;
use crate::mvcc::Store;
use crate::mvcc::replication::RaftStatus;
use crate::proto::alarm_request::AlarmAction;
use crate::proto::maintenance_server::Maintenance;
use crate::proto::*;

/// `/etcdserverpb.Maintenance`.
pub struct MaintenanceService {
    pub(super) store: Store,
    pub(super) header: Header,
    pub(super) version: String,
}

/// Bytes per snapshot message (etcd's send buffer).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

type SnapshotStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        let alarms = self.store.alarms();
        let member = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        let answer = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => alarms.list(req.alarm),
            Ok(AlarmAction::Activate) => {
                if alarms.activate(member) {
                    tracing::warn!(alarm = req.alarm, "alarm raised by a client");
                }
                vec![member]
            }
            Ok(AlarmAction::Deactivate) => {
                if alarms.deactivate(&member) {
                    tracing::info!(alarm = req.alarm, "alarm disarmed");
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
        let raft = match self.store.replicator() {
            Some(r) => r.status(),
            // One member: it leads, and every revision is an applied entry.
            None => RaftStatus {
                leader: self.store.identity().member_id,
                term: super::RAFT_TERM,
                index: revision as u64,
                applied: revision as u64,
                is_learner: false,
            },
        };
        let mut resp = StatusResponse {
            header: None,
            version: self.version.clone(),
            db_size,
            leader: raft.leader,
            raft_index: raft.index,
            raft_term: raft.term,
            raft_applied_index: raft.applied,
            errors: Vec::new(),
            db_size_in_use,
            is_learner: raft.is_learner,
            storage_version: String::new(),
            db_size_quota: self.store.alarms().quota() as i64,
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
        let file = self.store.snapshot().await?;
        let mut header = None;
        self.header
            .fill_at(&mut header, self.store.current_revision());
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || stream_snapshot(file, header, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Error::Unimplemented("k3rs: move leader is not built yet".into()).into())
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Error::Unimplemented("k3rs: downgrade is not implemented".into()).into())
    }
}

/// Sends the snapshot file in chunks, then its SHA-256 (etcd's framing:
/// `remaining_bytes` counts down to 0 at the hash). Stops early if the
/// client goes away; the file is deleted when dropped.
fn stream_snapshot(
    mut file: std::fs::File,
    header: Option<ResponseHeader>,
    tx: mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let total = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => {
            let _ = tx.blocking_send(Err(Error::Storage(e.to_string()).into()));
            return;
        }
    };
    let mut sha = Sha256::default();
    let mut sent = 0u64;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    while sent < total {
        let want = SNAPSHOT_CHUNK.min((total - sent) as usize);
        if let Err(e) = file.read_exact(&mut buf[..want]) {
            let _ = tx.blocking_send(Err(
                Error::Storage(format!("reading the snapshot: {e}")).into()
            ));
            return;
        }
        sha.update(&buf[..want]);
        sent += want as u64;
        let chunk = SnapshotResponse {
            header,
            remaining_bytes: total - sent,
            blob: bytes::Bytes::copy_from_slice(&buf[..want]),
            ..Default::default()
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return;
        }
    }
    let _ = tx.blocking_send(Ok(SnapshotResponse {
        header,
        remaining_bytes: 0,
        blob: bytes::Bytes::copy_from_slice(&sha.finish()),
        ..Default::default()
    }));
}
