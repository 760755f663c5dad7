//! The hook a replicated store (`raft-store`) plugs into the MVCC store.
//!
//! With a `Replicator` set, every write is ordered by the cluster before
//! any member applies it: `Store`'s write methods hand their op to
//! `propose`, and the cluster's state machine applies committed ops on each
//! member with `Store::apply_replicated`, which records the cluster's
//! applied position in the same commit. Linearizable reads first pass a
//! read barrier (ReadIndex). Lease deadlines are the leader's alone.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::writer::{WriteOp, WriteReply};
use crate::backend::StoreIdentity;
use crate::error::Result;

/// A boxed future, so the trait stays object-safe without a macro crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A lease's `(remaining seconds, granted TTL, attached keys)`.
pub type LeaseTtl = (i64, i64, Vec<Bytes>);

/// A member as etcd's Cluster service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    /// Member id.
    pub id: u64,
    /// Human-readable name (empty while a member has not started).
    pub name: String,
    /// URLs the members talk to each other on.
    pub peer_urls: Vec<String>,
    /// URLs clients use.
    pub client_urls: Vec<String>,
    /// Whether it is a learner (replicated to, does not vote).
    pub is_learner: bool,
}

/// Raft's view of the cluster, for Maintenance.Status and headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// The leader's member id, 0 if none is known.
    pub leader: u64,
    /// The current term.
    pub term: u64,
    /// The index of the last log entry.
    pub index: u64,
    /// The index of the last entry applied here.
    pub applied: u64,
    /// Whether this member is a learner.
    pub is_learner: bool,
}

/// What a replicated store provides to the MVCC store and the services.
pub trait Replicator: Send + Sync + 'static {
    /// Orders `op` through the cluster (forwarding to the leader when this
    /// member is not it); answers once it is applied on this member.
    fn propose(&self, op: WriteOp) -> BoxFuture<'_, Result<WriteReply>>;

    /// ReadIndex: returns once this member has applied every entry the
    /// cluster committed before the call.
    fn read_barrier(&self) -> BoxFuture<'_, Result<()>>;

    /// Restarts a lease's TTL on the leader, whose deadlines count.
    fn keep_alive(&self, id: i64) -> BoxFuture<'_, Result<i64>>;

    /// `(remaining, granted, keys)` of a lease, from the leader.
    fn time_to_live(&self, id: i64, with_keys: bool) -> BoxFuture<'_, Result<Option<LeaseTtl>>>;

    /// Whether this member is the leader now (it alone expires leases).
    fn is_leader(&self) -> bool;

    /// The cluster's id and this member's id.
    fn identity(&self) -> StoreIdentity;

    /// Leader, term and indexes as this member sees them.
    fn status(&self) -> RaftStatus;

    /// Every member of the cluster, learners included.
    fn members(&self) -> Vec<ClusterMember>;

    /// Adds a member by its peer URLs (a learner if asked); it joins when
    /// it starts with those URLs.
    fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> BoxFuture<'_, Result<ClusterMember>>;

    /// Removes a member.
    fn member_remove(&self, id: u64) -> BoxFuture<'_, Result<()>>;

    /// Makes a learner a voting member.
    fn member_promote(&self, id: u64) -> BoxFuture<'_, Result<()>>;
}
