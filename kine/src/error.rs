//! The datastore's errors: etcd's sentinel errors, plus the few of our own.
//!
//! The only mapping to gRPC statuses lives in `server::status`; this module
//! knows nothing about tonic.

/// Everything a datastore operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The requested revision is below the compact revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A request named no key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist, or an empty txn op.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More than `MAX_TXN_OPS` compares or ops in one txn.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two writes to one key in one txn.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A Range with a sort order or target etcd does not know (etcd 3.5+).
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A request over `MAX_REQUEST_BYTES`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The space quota is exhausted.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A put or a lease call named a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease grant named an id already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A lease grant asked for more than the maximum TTL.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// The server is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A replicated store has no leader (an election, or no quorum).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// A replicated request did not complete in time (no quorum answered).
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A membership call named a member the cluster does not have.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MemberPromote of a member that already votes.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MemberAdd with a peer URL a member already has.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// A feature k3rs does not have (yet); never a silent wrong answer.
    #[error("{0}")]
    Unimplemented(String),
    /// The connection to the database broke during a commit: whether it
    /// landed is settled once the database is back. Clients retry.
    #[error("k3rs: database unavailable: {0}")]
    CommitUnknown(String),
    /// The storage engine failed; the write was not applied.
    #[error("k3rs: storage error: {0}")]
    Storage(String),
}

/// Shorthand for datastore results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
