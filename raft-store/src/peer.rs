//! The server side of the peer protocol: openraft's RPCs handed to the
//! local raft, and members' calls to the leader handed to the node. Every
//! call must carry the cluster token.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::node::RaftNode;
use crate::pb::Blob;
use crate::pb::peer_server::Peer;
use crate::types::{Command, MemberNode, Reply, WireError, decode, encode};

/// A member's request to the leader (or, for `Hello`, to any member).
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Order a write through the log.
    Propose(Command),
    /// The leader's commit index, leadership confirmed by a quorum.
    ReadIndex,
    /// Restart a lease's TTL on the leader.
    KeepAlive(i64),
    /// A lease's remaining TTL, as the leader counts it.
    TimeToLive { id: i64, keys: bool },
    /// A new server asks which member id and cluster it is.
    Hello { peer_url: String },
    /// A started server asks to be added (as a learner, then a voter).
    Join { id: u64, node: MemberNode },
    /// etcd's MemberAdd.
    AddMember { peer_url: String, learner: bool },
    /// etcd's MemberRemove.
    RemoveMember(u64),
    /// etcd's MemberPromote.
    PromoteMember(u64),
}

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerAnswer {
    /// Applied on the leader at this log index.
    Applied { reply: Reply, index: u64 },
    /// A log index (ReadIndex).
    Index(u64),
    /// A keep-alive's TTL, 0 if the lease is gone.
    Ttl(i64),
    /// `(remaining, granted, keys)` or none.
    TimeToLive(Option<(i64, i64, Vec<Vec<u8>>)>),
    /// The member id to use and the cluster's id.
    Welcome { member_id: u64, cluster_id: u64 },
    /// A member was added with this id.
    Added(u64),
    /// Done.
    Done,
    /// This member is not the leader; try the one named, if any.
    NotLeader(Option<u64>),
}

/// The gRPC service.
pub struct PeerService {
    pub(crate) node: Arc<RaftNode>,
    pub(crate) token: Arc<str>,
}

impl PeerService {
    fn check<'a>(&self, request: &'a Request<Blob>) -> Result<&'a [u8], Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), self.token.as_bytes()) => {
                Ok(&request.get_ref().data)
            }
            _ => Err(Status::unauthenticated(
                "k3rs: peer call without this cluster's token",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn blob(data: Vec<u8>) -> Response<Blob> {
    Response::new(Blob { data: data.into() })
}

fn undecodable(e: kine::Error) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = decode(self.check(&request)?).map_err(undecodable)?;
        Ok(blob(encode(&self.node.raft.append_entries(rpc).await)))
    }

    async fn vote(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = decode(self.check(&request)?).map_err(undecodable)?;
        Ok(blob(encode(&self.node.raft.vote(rpc).await)))
    }

    async fn install_snapshot(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = decode(self.check(&request)?).map_err(undecodable)?;
        Ok(blob(encode(&self.node.raft.install_snapshot(rpc).await)))
    }

    async fn call(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let call: PeerRequest = decode(self.check(&request)?).map_err(undecodable)?;
        // Membership calls come from servers that know one member, maybe
        // not the leader: passed on. The rest come from members that
        // picked the leader themselves.
        let answer = match call {
            PeerRequest::Hello { .. }
            | PeerRequest::Join { .. }
            | PeerRequest::AddMember { .. }
            | PeerRequest::RemoveMember(_)
            | PeerRequest::PromoteMember(_) => self.node.on_leader(call).await,
            other => self.node.handle(&other).await,
        };
        Ok(blob(encode(&answer.map_err(|e| WireError::from(&e)))))
    }
}
