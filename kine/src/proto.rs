//! The etcd v3 wire types and gRPC service stubs, generated at build time
//! from `kine/proto/*.proto` (written here from etcd's published API).

#![allow(missing_docs, clippy::all)]

/// `package mvccpb`: KeyValue and Event.
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// `package etcdserverpb`: the KV, Watch, Lease, Cluster and Maintenance services.
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

pub use etcdserverpb::*;
pub use mvccpb::{Event, KeyValue};
