//! The cases, one module per group. Each case is an `async fn(Ctx)`;
//! the list in `crate::for_each_case!` registers them.

pub mod compaction;
pub mod etcdctl;
pub mod kubernetes;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod python;
pub mod txn;
pub mod watch;
