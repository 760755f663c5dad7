//! raft-store: k3rs's embedded HA, the MVCC store replicated with Raft
//! (openraft), as K3s's embedded etcd does it, with no external database.
//!
//! Module map:
//! - `types`: openraft's type configuration, the log's commands and their
//!   encodings.
//! - `log_store`: the raft log (its own SQLite file, group-fsynced).
//! - `state_machine`: the MVCC store fed committed entries.
//! - `network` / `peer`: the peer protocol over gRPC, client and server.
//! - `node`: a member, and the `Replicator` the MVCC store writes through.

pub mod log_store;
pub mod network;
pub mod node;
pub mod peer;
pub mod state_machine;
pub mod types;

/// The peer protocol's generated types.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/k3rs.peer.rs"));
}

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kine::{Error, Result, Store};
use openraft::{Config, Raft, SnapshotPolicy};

pub use node::RaftNode;

use crate::network::{CallError, Peers};
use crate::peer::{PeerAnswer, PeerRequest, PeerService};
use crate::types::MemberNode;

/// How a member comes to be part of a cluster the first time it starts;
/// a member restarting with its data ignores it.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// Start a new cluster with this server as its only member.
    ClusterInit,
    /// Join the cluster a member of which listens at this peer URL.
    Join(String),
}

/// A member's settings.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Where `raft.db` lives (beside the store's file).
    pub dir: PathBuf,
    /// `--name`.
    pub name: String,
    /// Where the peer service listens.
    pub peer_listen: SocketAddr,
    /// The peer URL other members use for this one.
    pub advertise_peer_url: String,
    /// The etcd API's URLs, for MemberList.
    pub client_urls: Vec<String>,
    /// The cluster token every peer call carries.
    pub token: String,
    /// First start: new cluster or join.
    pub bootstrap: Bootstrap,
    /// fsync the log at every append (default); off only by the named
    /// unsafe flag.
    pub fsync: bool,
    /// Applied entries between snapshots (etcd's `--snapshot-count`); the
    /// log is purged behind each snapshot.
    pub snapshot_count: u64,
    /// Mutual TLS on the peer protocol; `None` is plain HTTP/2.
    pub peer_tls: Option<network::PeerTls>,
    /// Injected network faults (tests); none by default.
    pub faults: network::Faults,
    /// openraft's heartbeat, in milliseconds (etcd's default: 100).
    pub heartbeat_ms: u64,
    /// The election timeout, in milliseconds (etcd's default: 1000): a
    /// follower that hears no heartbeat for 1.25 to 1.5 times it calls an
    /// election.
    pub election_timeout_ms: u64,
}

/// Starts this member: opens its log, joins or starts the cluster, serves
/// the peer protocol and makes `store` write through the cluster.
pub async fn start(config: RaftConfig, store: Store) -> Result<Arc<RaftNode>> {
    kine::backend::files::create_private_dir(&config.dir)
        .map_err(|e| Error::Storage(format!("cannot create {}: {e}", config.dir.display())))?;
    // Bound first: a taken port fails the start before anything changes.
    let listener = tokio::net::TcpListener::bind(config.peer_listen)
        .await
        .map_err(|e| {
            Error::Storage(format!(
                "cannot listen for peers on {}: {e}; choose another with --peer-listen-address",
                config.peer_listen
            ))
        })?;
    let log = log_store::LogStore::open(&config.dir.join("raft.db"), config.fsync)?;
    let peers = Peers::new(
        &config.token,
        config.faults.clone(),
        config.peer_tls.clone(),
    );
    let self_node = MemberNode {
        name: config.name.clone(),
        peer_url: config.advertise_peer_url.clone(),
        client_urls: config.client_urls.clone(),
    };
    let first_start = log.identity().is_none();
    if first_start && store.loaded_replication().is_none() && store.current_revision() > 1 {
        return Err(Error::Unimplemented(
            "k3rs: this data directory holds a single-server datastore; turning it into a cluster member is not built yet (start the cluster in a new data directory, then copy the keys in)".into(),
        ));
    }
    let (cluster_id, member_id) = match (log.identity(), &config.bootstrap) {
        (Some(identity), _) => identity,
        (None, Bootstrap::ClusterInit) => (node::new_member_id(), node::new_member_id()),
        (None, Bootstrap::Join(server)) => hello(&peers, server, &self_node.peer_url).await?,
    };
    log.save_identity((cluster_id, member_id)).await?;
    let raft_config = Config {
        cluster_name: "k3rs".into(),
        heartbeat_interval: config.heartbeat_ms,
        // openraft's follower waits out the leader's lease (the maximum)
        // and then a random timeout in [min, max]: with these, an election
        // starts 1.25 to 1.5 election timeouts after the last heartbeat
        // (etcd: 1 to 2).
        election_timeout_min: config.election_timeout_ms / 2,
        election_timeout_max: config.election_timeout_ms * 3 / 4,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        // Entries kept behind a snapshot, so a member a little behind
        // catches up from the log rather than a whole snapshot.
        max_in_snapshot_log_to_keep: (config.snapshot_count / 10).min(1000),
        max_payload_entries: 1024,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Storage(format!("raft settings: {e}")))?;
    let state_machine = state_machine::StateMachine::new(store.clone(), &config.dir)?;
    let raft = Raft::new(
        member_id,
        Arc::new(raft_config),
        peers.clone(),
        log,
        state_machine,
    )
    .await
    .map_err(|e| Error::Storage(format!("cannot start raft: {e}")))?;
    let node = Arc::new(RaftNode {
        raft: raft.clone(),
        store: store.clone(),
        id: member_id,
        cluster_id,
        peers: peers.clone(),
        membership_changes: Default::default(),
        proposals: node::start_proposer(raft.clone()),
        failed: tokio::sync::watch::channel(None).0,
        quorum_ok: std::sync::atomic::AtomicBool::new(true),
    });
    serve_peers(listener, &config, node.clone())?;
    watch_raft(node.clone());
    check_quorum(
        node.clone(),
        Duration::from_millis(config.election_timeout_ms),
    );
    store.set_replicator(node.clone())?;
    if first_start {
        match &config.bootstrap {
            Bootstrap::ClusterInit => {
                raft.initialize(BTreeMap::from([(member_id, self_node.clone())]))
                    .await
                    .map_err(|e| Error::Storage(format!("cannot start the cluster: {e}")))?;
                tracing::info!(member = %format!("{member_id:x}"), cluster = %format!("{cluster_id:x}"), "started a new cluster");
            }
            Bootstrap::Join(server) => {
                join(&peers, server, member_id, &self_node).await?;
            }
        }
    } else {
        tracing::info!(member = %format!("{member_id:x}"), "restarted as a cluster member");
    }
    Ok(node)
}

/// Asks a member which id this server is to use (a member added with its
/// peer URL keeps the id MemberAdd gave it) and what the cluster is.
async fn hello(peers: &Peers, server: &str, peer_url: &str) -> Result<(u64, u64)> {
    let request = PeerRequest::Hello {
        peer_url: peer_url.to_string(),
    };
    match call_retrying(peers, server, &request).await? {
        PeerAnswer::Welcome {
            member_id,
            cluster_id,
        } => Ok((cluster_id, member_id)),
        other => Err(Error::Storage(format!(
            "unexpected answer from {server}: {other:?}"
        ))),
    }
}

async fn join(peers: &Peers, server: &str, id: u64, node: &MemberNode) -> Result<()> {
    tracing::info!(server, "joining the cluster; catching up as a learner");
    let request = PeerRequest::Join {
        id,
        node: node.clone(),
    };
    call_retrying(peers, server, &request).await?;
    tracing::info!(member = %format!("{id:x}"), "joined the cluster as a voting member");
    Ok(())
}

/// A call to the server named on the command line, retried while it is
/// unreachable (it may be starting too).
async fn call_retrying(peers: &Peers, server: &str, request: &PeerRequest) -> Result<PeerAnswer> {
    let mut attempts = 0;
    loop {
        match peers.call(server, request).await {
            Ok(answer) => return answer,
            Err(e @ CallError::Unreachable(..)) if attempts < 60 => {
                attempts += 1;
                tracing::warn!(error = %e, "the server to join is unreachable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(Error::Storage(format!(
                    "cannot join the cluster through {server}: {e}"
                )));
            }
        }
    }
}

fn serve_peers(
    listener: tokio::net::TcpListener,
    config: &RaftConfig,
    node: Arc<RaftNode>,
) -> Result<()> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.peer_tls {
        builder = builder
            .tls_config(tls.server_config())
            .map_err(|e| Error::Storage(format!("peer TLS: {e}")))?;
    }
    let service = PeerService {
        node,
        token: config.token.as_str().into(),
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let served = builder
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20))
            .add_service(
                pb::peer_server::PeerServer::new(service)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            )
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the peer service stopped");
        }
    });
    Ok(())
}

/// etcd's CheckQuorum: a leader that a quorum has not confirmed for two
/// election timeouts in a row stops calling itself leader (Status, lease
/// expiry, proposals) until one does. openraft 0.9 keeps such a leader
/// in place; it could commit nothing anyway.
fn check_quorum(node: Arc<RaftNode>, every: Duration) {
    tokio::spawn(async move {
        let mut misses = 0;
        loop {
            tokio::time::sleep(every).await;
            let leader = {
                let metrics = node.raft.metrics();
                let m = metrics.borrow();
                m.state == openraft::ServerState::Leader && m.current_leader == Some(node.id)
            };
            let confirmed = !leader
                || matches!(
                    tokio::time::timeout(every, node.raft.get_read_log_id()).await,
                    Ok(Ok(_))
                );
            misses = if confirmed { 0 } else { misses + 1 };
            let ok = misses < 2;
            let was = node
                .quorum_ok
                .swap(ok, std::sync::atomic::Ordering::Relaxed);
            if was && !ok {
                tracing::warn!(
                    "no quorum has confirmed this leader for two election timeouts; not acting as leader"
                );
            } else if !was && ok {
                tracing::info!("a quorum confirms this member again");
            }
        }
    });
}

/// Watches this member's raft: lease deadlines were the old leader's, so
/// a new leader gives every lease its full TTL again (etcd's rule) before
/// expiring them itself; and a raft that stopped on a storage failure
/// (a full disk, a log it cannot write) is reported through `failed`.
fn watch_raft(node: Arc<RaftNode>) {
    let mut metrics = node.raft.metrics();
    tokio::spawn(async move {
        let mut was_leader = false;
        loop {
            let fatal = match &metrics.borrow().running_state {
                Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = fatal {
                tracing::error!(error = %e, "raft stopped on a storage failure; this member cannot go on");
                let _ = node.failed.send(Some(e));
                return;
            }
            let leads = node.leads();
            if leads && !was_leader {
                node.store.renew_all_leases();
                let term = metrics.borrow().current_term;
                tracing::info!(term, "this member is the leader");
            }
            was_leader = leads;
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}
