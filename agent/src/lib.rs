//! k3rs's node agent (the kubelet's job, for host processes).

pub mod probes;
pub mod runtime;
pub mod supervisor;
