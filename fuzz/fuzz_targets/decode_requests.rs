//! Arbitrary bytes decoded as each etcd request the store takes, then put
//! through the checks the store runs before it applies anything.
//!
//! Decoding may fail. A request that decodes must pass its checks or fail
//! them with one of etcd's own errors, and must encode back to itself.

#![no_main]

use kine::Error;
use kine::mvcc::apply::{check_put, check_txn};
use kine::mvcc::read::check_range;
use kine::proto::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, TxnRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the request type, as a gRPC method path does.
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 7 {
        0 => {
            if let Some(r) = decode::<RangeRequest>(bytes) {
                checked(check_range(&r));
            }
        }
        1 => {
            if let Some(p) = decode::<PutRequest>(bytes) {
                checked(check_put(&p));
            }
        }
        2 => {
            decode::<DeleteRangeRequest>(bytes);
        }
        3 => {
            if let Some(t) = decode::<TxnRequest>(bytes) {
                checked(check_txn(&t));
            }
        }
        4 => {
            decode::<CompactionRequest>(bytes);
        }
        5 => {
            decode::<LeaseGrantRequest>(bytes);
        }
        _ => {
            decode::<LeaseRevokeRequest>(bytes);
        }
    }
});

/// Decodes a request; one that decodes survives an encode and decode.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let encoded = m.encode_to_vec();
    assert_eq!(encoded.len(), m.encoded_len(), "encoded_len is wrong");
    assert_eq!(M::decode(&encoded[..]).as_ref(), Ok(&m), "no round trip");
    Some(m)
}

/// A refused request gets an etcd error, which clients match by its text.
fn checked(result: Result<(), Error>) {
    if let Err(e) = result {
        assert!(
            e.to_string().starts_with("etcdserver: "),
            "not an etcd error: {e:?}"
        );
        assert!(
            !matches!(e, Error::Stopped),
            "a check said the server stopped"
        );
    }
}
