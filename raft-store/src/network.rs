//! The client side of the peer protocol: openraft's RPCs and members'
//! calls to the leader, over gRPC, each carrying the cluster token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::pb::Blob;
use crate::pb::peer_client::PeerClient;
use crate::peer::{PeerAnswer, PeerRequest};
use crate::types::{MemberNode, TypeConfig, WireError, decode, encode};

/// How long a connection to a peer may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of entries in one AppendEntries: openraft waits a heartbeat
/// interval for the answer, so a batch of large values is split (openraft
/// retries with the entry count `PayloadTooLarge` suggests).
const MAX_APPEND_BYTES: u64 = 2 << 20;

/// Connections to peers, one per URL, shared by every caller.
#[derive(Clone)]
pub struct Peers {
    token: Arc<str>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    faults: Faults,
    tls: Option<PeerTls>,
}

/// Mutual TLS between members (etcd's `--peer-cert-file`,
/// `--peer-key-file`, `--peer-trusted-ca-file`): each member serves and
/// calls with its certificate, and accepts only peers whose certificate
/// the CA signed.
#[derive(Clone)]
pub struct PeerTls {
    /// The CA that signs every member's certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// This member's certificate, for serving and for calling (PEM).
    pub cert_pem: Vec<u8>,
    /// Its private key (PEM).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// The peer service's server side.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }

    fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
    }
}

/// Injected network faults, for tests: calls from this member to a peer
/// URL are dropped (the link is cut) or delayed. Cheap to clone; clones
/// share the settings.
#[derive(Clone, Default, Debug)]
pub struct Faults(Arc<Mutex<HashMap<String, Fault>>>);

/// What happens to calls on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Never delivered: the caller sees the peer unreachable.
    Drop,
    /// Delivered this much later.
    Delay(Duration),
}

impl Faults {
    /// Sets the fault on calls to `url`.
    pub fn set(&self, url: &str, fault: Fault) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.to_string(), fault);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn get(&self, url: &str) -> Option<Fault> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .copied()
    }
}

/// A failed call to a peer: whether the request may have reached it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection could not be opened: the request was not sent.
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    /// Sent, but no answer came: it may or may not have been handled.
    #[error("no answer from {0}: {1}")]
    Failed(String, String),
    /// Refused: this server does not hold the cluster's token.
    #[error("{0} refused the call: {1}")]
    Refused(String, String),
}

impl Peers {
    /// Peers authenticated by `token`.
    pub fn new(token: &str, faults: Faults, tls: Option<PeerTls>) -> Peers {
        Peers {
            token: token.into(),
            channels: Arc::default(),
            faults,
            tls,
        }
    }

    fn client(&self, url: &str) -> Result<PeerClient<Channel>, CallError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let mut endpoint = Endpoint::from_shared(url.to_string())
                    .map_err(|e| CallError::Unreachable(url.into(), e.to_string()))?;
                if let Some(tls) = &self.tls {
                    endpoint = endpoint
                        .tls_config(tls.client_config())
                        .map_err(|e| CallError::Unreachable(url.into(), e.to_string()))?;
                }
                let endpoint = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .initial_stream_window_size(Some(4 << 20))
                    .initial_connection_window_size(Some(8 << 20))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                let channel = endpoint.connect_lazy();
                channels.insert(url.to_string(), channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    fn request(&self, data: Vec<u8>) -> tonic::Request<Blob> {
        let mut request = tonic::Request::new(Blob { data: data.into() });
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// One raw call: `which` picks the RPC.
    async fn raw(&self, url: &str, which: Rpc, data: Vec<u8>) -> Result<Vec<u8>, CallError> {
        match self.faults.get(url) {
            Some(Fault::Drop) => {
                return Err(CallError::Unreachable(
                    url.into(),
                    "link cut (injected fault)".into(),
                ));
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        let mut client = self.client(url)?;
        let request = self.request(data);
        let answer = match which {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
            Rpc::Call => client.call(request).await,
        };
        match answer {
            Ok(blob) => Ok(blob.into_inner().data.to_vec()),
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                Err(CallError::Refused(url.into(), status.message().into()))
            }
            Err(status) if is_connect_failure(&status) => {
                Err(CallError::Unreachable(url.into(), status.message().into()))
            }
            Err(status) => Err(CallError::Failed(
                url.into(),
                format!("{:?}: {}", status.code(), status.message()),
            )),
        }
    }

    /// A member's call to another (usually the leader).
    pub async fn call(
        &self,
        url: &str,
        request: &PeerRequest,
    ) -> Result<Result<PeerAnswer, kine::Error>, CallError> {
        let bytes = self.raw(url, Rpc::Call, encode(request)).await?;
        let answer: Result<PeerAnswer, WireError> =
            decode(&bytes).map_err(|e| CallError::Failed(url.into(), e.to_string()))?;
        Ok(answer.map_err(kine::Error::from))
    }
}

/// Whether tonic failed before the request left (connection refused,
/// unresolvable name): then it is safe to send it elsewhere.
fn is_connect_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source = status.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            );
        }
        if e.to_string().contains("tcp connect error") {
            return true;
        }
        source = e.source();
    }
    false
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Call,
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            peers: self.clone(),
            target,
            url: node.peer_url.clone(),
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    peers: Peers,
    target: u64,
    url: String,
}

impl PeerConnection {
    async fn rpc<Resp, E>(
        &self,
        which: Rpc,
        request: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, MemberNode, RaftError<u64, E>>>
    where
        Resp: for<'a> serde::Deserialize<'a>,
        E: std::error::Error + for<'a> serde::Deserialize<'a>,
    {
        let sent =
            tokio::time::timeout(option.hard_ttl(), self.peers.raw(&self.url, which, request))
                .await;
        let bytes = match sent {
            Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
            Ok(Err(e @ CallError::Unreachable(..))) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Ok(Err(e)) => return Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(bytes)) => bytes,
        };
        let answer: Result<Resp, RaftError<u64, E>> =
            decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        let bytes = encode(&rpc);
        if bytes.len() as u64 > MAX_APPEND_BYTES && rpc.entries.len() > 1 {
            let mut total = 0;
            let fit = rpc
                .entries
                .iter()
                .take_while(|e| {
                    total += bincode::serialized_size(e).unwrap_or(u64::MAX);
                    total <= MAX_APPEND_BYTES
                })
                .count()
                .max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit as u64),
            ));
        }
        self.rpc(Rpc::AppendEntries, bytes, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, MemberNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.rpc(Rpc::InstallSnapshot, encode(&rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        self.rpc(Rpc::Vote, encode(&rpc), &option).await
    }
}
