//! k3rs-benches: an etcd-style load generator for any etcd v3 endpoint
//! (`k3rs-bench`), a side-by-side comparison of k3rs with etcd
//! (`k3rs-compare`) and criterion micro-benchmarks of kine's hot paths
//! (`cargo bench -p k3rs-benches`).
//!
//! The generator speaks gRPC through the clients generated in `kine::proto`;
//! it needs nothing of k3rs but the wire protocol, so the same run works
//! against etcd.

pub mod chart;
pub mod cli;
pub mod conn;
pub mod keys;
pub mod procstat;
pub mod report;
pub mod runner;
pub mod stats;
pub mod workloads;

pub use cli::{Cli, run};
pub use report::{BenchResult, Section};
pub use runner::Unsupported;
