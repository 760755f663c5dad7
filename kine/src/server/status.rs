//! The one mapping from datastore errors to gRPC statuses, with etcd's codes
//! and messages byte for byte (clients match on the message text).

use tonic::{Code, Status};

use crate::error::Error;

/// The gRPC code etcd answers each error with.
pub fn code(e: &Error) -> Code {
    match e {
        Error::Compacted | Error::FutureRevision => Code::OutOfRange,
        Error::EmptyKey
        | Error::KeyNotFound
        | Error::ValueProvided
        | Error::LeaseProvided
        | Error::TooManyOps
        | Error::DuplicateKey
        | Error::InvalidSortOption
        | Error::RequestTooLarge => Code::InvalidArgument,
        Error::NoSpace => Code::ResourceExhausted,
        Error::LeaseNotFound => Code::NotFound,
        Error::LeaseExists | Error::MemberNotLearner | Error::PeerUrlExists => {
            Code::FailedPrecondition
        }
        Error::MemberNotFound => Code::NotFound,
        Error::LeaseTtlTooLarge => Code::OutOfRange,
        Error::Stopped
        | Error::Storage(_)
        | Error::CommitUnknown(_)
        | Error::NoLeader
        | Error::Timeout => Code::Unavailable,
        Error::Unimplemented(_) => Code::Unimplemented,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(code(&e), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's api/v3rpc/rpctypes table: the wire contract.
    #[test]
    fn statuses_match_etcd() {
        let table = [
            (
                Error::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                Error::FutureRevision,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                Error::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                Error::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                Error::ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                Error::LeaseProvided,
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                Error::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                Error::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                Error::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                Error::InvalidSortOption,
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                Error::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                Error::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                Error::LeaseExists,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                Error::LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                Error::Stopped,
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (Error::NoLeader, Code::Unavailable, "etcdserver: no leader"),
            (
                Error::MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                Error::MemberNotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                Error::PeerUrlExists,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                Error::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
        ];
        for (err, code, message) in table {
            let status = Status::from(err);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
