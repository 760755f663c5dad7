//! The agent's side of the Container Runtime Interface: a client of
//! containerd's `RuntimeService` and `ImageService` on its unix socket
//! (`client`), containerd itself started and kept running (`containerd`),
//! images made and imported locally (`images`), registries.yaml
//! (`registries`), the node's setup before
//! its first pod (`setup`), and the `Runtime` that runs pods through them
//! (`runtime` for sandboxes, `container` for their containers).

pub mod client;
pub mod container;
pub mod containerd;
pub mod images;
pub mod registries;
pub mod runtime;
pub mod setup;

/// The CRI v1 messages and clients, compiled from `proto/cri.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

pub use client::Cri;
