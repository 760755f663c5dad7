//! What the cluster replicates and answers: openraft's type configuration,
//! the log's commands, and their encodings.
//!
//! A command is a datastore write as the client sent it (prost-encoded
//! etcd requests), so every member evaluates it alike; anything a member
//! would choose for itself (a lease id, an expiry) is chosen before the
//! command is proposed.

use std::fmt;

use kine::Error;
use kine::mvcc::writer::{WriteOp, WriteReply};
use kine::proto::{
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse, PutRequest, PutResponse,
    TxnRequest, TxnResponse,
};
use prost::Message;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// k3rs's raft: commands in, replies out, file-backed snapshots.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = MemberNode,
        SnapshotData = tokio::fs::File,
);

/// openraft's log entry for k3rs.
pub type Entry = openraft::Entry<TypeConfig>;
/// A position in the log.
pub type LogId = openraft::LogId<u64>;
/// Membership as of a log position.
pub type StoredMembership = openraft::StoredMembership<u64, MemberNode>;

/// What the cluster knows of a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Its name (`--name`), empty until it has started.
    pub name: String,
    /// Where its peer service listens (`http://HOST:PORT`).
    pub peer_url: String,
    /// Where its etcd API listens.
    pub client_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_url)
    }
}

/// One replicated write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    // serde_bytes: bincode copies a byte string at once instead of
    // element by element (a 1.5 MiB value must cross in well under a
    // heartbeat).
    /// A prost-encoded `PutRequest`.
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A prost-encoded `DeleteRangeRequest`.
    DeleteRange(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A prost-encoded `TxnRequest`.
    Txn(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Grant lease `id` (never 0: the proposer chose it).
    LeaseGrant { id: i64, ttl: i64 },
    /// Revoke lease `id` and delete its keys.
    LeaseRevoke { id: i64 },
    /// Compact at `revision`.
    Compact { revision: i64 },
    /// Writes proposed together (the leader batches concurrent proposals
    /// into one entry); applied in order, answered one by one.
    Batch(Vec<Command>),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys or values: logs must not carry data.
        match self {
            Command::Put(_) => write!(f, "put"),
            Command::DeleteRange(_) => write!(f, "delete-range"),
            Command::Txn(_) => write!(f, "txn"),
            Command::LeaseGrant { id, ttl } => write!(f, "lease-grant {id:x} ttl {ttl}"),
            Command::LeaseRevoke { id } => write!(f, "lease-revoke {id:x}"),
            Command::Compact { revision } => write!(f, "compact {revision}"),
            Command::Batch(commands) => write!(f, "batch of {}", commands.len()),
        }
    }
}

impl Command {
    /// The command for a store write; `None` for ops that are not
    /// replicated (keep-alives go to the leader's lease table).
    pub fn from_op(op: &WriteOp) -> Option<Command> {
        Some(match op {
            WriteOp::Put(p) => Command::Put(p.encode_to_vec()),
            WriteOp::DeleteRange(d) => Command::DeleteRange(d.encode_to_vec()),
            WriteOp::Txn(t) => Command::Txn(t.encode_to_vec()),
            WriteOp::LeaseGrant { id, ttl } => Command::LeaseGrant { id: *id, ttl: *ttl },
            WriteOp::LeaseRevoke { id, .. } => Command::LeaseRevoke { id: *id },
            WriteOp::Compact { revision } => Command::Compact {
                revision: *revision,
            },
            WriteOp::LeaseKeepAlive { .. } | WriteOp::Noop => return None,
        })
    }

    /// The store write this command applies.
    pub fn to_op(&self) -> Result<WriteOp, Error> {
        let bad = |e: prost::DecodeError| Error::Storage(format!("corrupt log entry: {e}"));
        Ok(match self {
            Command::Put(b) => WriteOp::Put(PutRequest::decode(b.as_slice()).map_err(bad)?),
            Command::DeleteRange(b) => {
                WriteOp::DeleteRange(DeleteRangeRequest::decode(b.as_slice()).map_err(bad)?)
            }
            Command::Txn(b) => WriteOp::Txn(TxnRequest::decode(b.as_slice()).map_err(bad)?),
            Command::LeaseGrant { id, ttl } => WriteOp::LeaseGrant { id: *id, ttl: *ttl },
            Command::LeaseRevoke { id } => WriteOp::LeaseRevoke {
                id: *id,
                only_if_expired: false,
            },
            Command::Compact { revision } => WriteOp::Compact {
                revision: *revision,
            },
            Command::Batch(_) => {
                return Err(Error::Storage(
                    "a batch is applied command by command".into(),
                ));
            }
        })
    }

    /// Roughly the bytes this command adds to an entry.
    pub fn size(&self) -> usize {
        match self {
            Command::Put(b) | Command::DeleteRange(b) | Command::Txn(b) => b.len() + 8,
            Command::Batch(commands) => commands.iter().map(Command::size).sum(),
            _ => 24,
        }
    }
}

/// The answer to one applied entry, as it crosses to the proposer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply(pub Result<Answer, WireError>);

/// A `WriteReply`, encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    DeleteRange(#[serde(with = "serde_bytes")] Vec<u8>),
    Txn(#[serde(with = "serde_bytes")] Vec<u8>),
    LeaseGrant(#[serde(with = "serde_bytes")] Vec<u8>),
    Revision(i64),
    KeepAlive(i64),
    /// The answers to a `Command::Batch`, in order.
    Batch(Vec<Reply>),
}

impl Reply {
    /// Encodes the store's answer.
    pub fn new(result: &Result<WriteReply, Error>) -> Reply {
        Reply(match result {
            Ok(WriteReply::Put(r)) => Ok(Answer::Put(r.encode_to_vec())),
            Ok(WriteReply::DeleteRange(r)) => Ok(Answer::DeleteRange(r.encode_to_vec())),
            Ok(WriteReply::Txn(r)) => Ok(Answer::Txn(r.encode_to_vec())),
            Ok(WriteReply::LeaseGrant(r)) => Ok(Answer::LeaseGrant(r.encode_to_vec())),
            Ok(WriteReply::Revision(r)) => Ok(Answer::Revision(*r)),
            Ok(WriteReply::KeepAlive(t)) => Ok(Answer::KeepAlive(*t)),
            Err(e) => Err(WireError::from(e)),
        })
    }

    /// Decodes it back.
    pub fn into_result(self) -> Result<WriteReply, Error> {
        let bad = |e: prost::DecodeError| Error::Storage(format!("corrupt reply: {e}"));
        match self.0 {
            Ok(Answer::Put(b)) => Ok(WriteReply::Put(
                PutResponse::decode(b.as_slice()).map_err(bad)?,
            )),
            Ok(Answer::DeleteRange(b)) => Ok(WriteReply::DeleteRange(
                DeleteRangeResponse::decode(b.as_slice()).map_err(bad)?,
            )),
            Ok(Answer::Txn(b)) => Ok(WriteReply::Txn(
                TxnResponse::decode(b.as_slice()).map_err(bad)?,
            )),
            Ok(Answer::LeaseGrant(b)) => Ok(WriteReply::LeaseGrant(
                LeaseGrantResponse::decode(b.as_slice()).map_err(bad)?,
            )),
            Ok(Answer::Revision(r)) => Ok(WriteReply::Revision(r)),
            Ok(Answer::KeepAlive(t)) => Ok(WriteReply::KeepAlive(t)),
            Ok(Answer::Batch(_)) => Err(Error::Storage(
                "k3rs: a batch's answer where one answer was expected".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// A datastore error as it crosses between members: its kind and, for
/// the kinds that carry one, its message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    kind: u8,
    message: String,
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> WireError {
        let (kind, message) = match e {
            Error::Compacted => (1, String::new()),
            Error::FutureRevision => (2, String::new()),
            Error::EmptyKey => (3, String::new()),
            Error::KeyNotFound => (4, String::new()),
            Error::ValueProvided => (5, String::new()),
            Error::LeaseProvided => (6, String::new()),
            Error::TooManyOps => (7, String::new()),
            Error::DuplicateKey => (8, String::new()),
            Error::InvalidSortOption => (9, String::new()),
            Error::RequestTooLarge => (10, String::new()),
            Error::NoSpace => (11, String::new()),
            Error::LeaseNotFound => (12, String::new()),
            Error::LeaseExists => (13, String::new()),
            Error::LeaseTtlTooLarge => (14, String::new()),
            Error::Stopped => (15, String::new()),
            Error::Unimplemented(m) => (16, m.clone()),
            Error::CommitUnknown(m) => (17, m.clone()),
            Error::NoLeader => (18, String::new()),
            Error::Timeout => (19, String::new()),
            Error::MemberNotFound => (20, String::new()),
            Error::MemberNotLearner => (21, String::new()),
            Error::PeerUrlExists => (22, String::new()),
            Error::Storage(m) => (0, m.clone()),
        };
        WireError { kind, message }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e.kind {
            1 => Error::Compacted,
            2 => Error::FutureRevision,
            3 => Error::EmptyKey,
            4 => Error::KeyNotFound,
            5 => Error::ValueProvided,
            6 => Error::LeaseProvided,
            7 => Error::TooManyOps,
            8 => Error::DuplicateKey,
            9 => Error::InvalidSortOption,
            10 => Error::RequestTooLarge,
            11 => Error::NoSpace,
            12 => Error::LeaseNotFound,
            13 => Error::LeaseExists,
            14 => Error::LeaseTtlTooLarge,
            15 => Error::Stopped,
            16 => Error::Unimplemented(e.message),
            17 => Error::CommitUnknown(e.message),
            18 => Error::NoLeader,
            19 => Error::Timeout,
            20 => Error::MemberNotFound,
            21 => Error::MemberNotLearner,
            22 => Error::PeerUrlExists,
            _ => Error::Storage(e.message),
        }
    }
}

/// bincode, for every blob between members and in the log.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always serialize")
}

/// The inverse of `encode`; a clear error for a corrupt or foreign blob.
pub fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, Error> {
    bincode::deserialize(bytes).map_err(|e| Error::Storage(format!("undecodable peer data: {e}")))
}
