//! One cluster member: its raft, its store, and the `Replicator` the MVCC
//! store calls for every write, linearizable read and lease call.
//!
//! Writes and read indexes are the leader's work: a follower sends them to
//! the leader (`on_leader`) and, once answered, waits until it has applied
//! up to the answer's index itself, so a client sees its own write on the
//! member it asked, whatever it reads next.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kine::backend::StoreIdentity;
use kine::mvcc::replication::{BoxFuture, ClusterMember, LeaseTtl, RaftStatus, Replicator};
use kine::mvcc::writer::{WriteOp, WriteReply};
use kine::{Error, Result, Store};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};

use crate::network::{CallError, Peers};
use crate::peer::{PeerAnswer, PeerRequest};
use crate::types::{Answer, Command, MemberNode, Reply, TypeConfig};

/// How long a write or read waits for a leader and a quorum before
/// answering etcd's "request timed out" (or "no leader").
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a joining member may take to catch up before it votes.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A cluster member.
pub struct RaftNode {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) store: Store,
    pub(crate) id: u64,
    pub(crate) cluster_id: u64,
    pub(crate) peers: Peers,
    /// One membership change at a time (raft allows one in flight).
    pub(crate) membership_changes: tokio::sync::Mutex<()>,
    /// The leader's proposals, batched (see `start_proposer`).
    pub(crate) proposals: Proposals,
    /// Set when raft stopped on a storage failure.
    pub(crate) failed: tokio::sync::watch::Sender<Option<String>>,
    /// False while this member leads but a quorum has not confirmed it
    /// lately (cut off from the majority): it then reports no leader and
    /// takes no proposals, as etcd's CheckQuorum makes a leader step down.
    pub(crate) quorum_ok: std::sync::atomic::AtomicBool,
}

/// Queued proposals and where each one's answer goes.
pub(crate) type Proposals =
    tokio::sync::mpsc::UnboundedSender<(Command, tokio::sync::oneshot::Sender<Result<PeerAnswer>>)>;

/// Batched entries being replicated at once; proposals that arrive
/// meanwhile wait and go together as one entry, so the log's per-entry
/// costs (an fsync on every member, a replication round) are shared by all
/// of them. Measured (three members, 100 clients): 1 in flight ~7,000
/// puts/s, 2 ~5,300, 4 ~4,500, no batching ~2,700; one client's latency
/// is lowest with 1 too.
const PROPOSALS_IN_FLIGHT: usize = 1;
/// Most commands, and about the most bytes, in one batched entry.
const MAX_BATCH_COMMANDS: usize = 512;
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Starts the task that turns queued proposals into log entries.
pub(crate) fn start_proposer(raft: Raft<TypeConfig>) -> Proposals {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
        Command,
        tokio::sync::oneshot::Sender<Result<PeerAnswer>>,
    )>();
    let slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT));
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            // Everything that queued while the slots were busy goes along.
            let mut bytes = first.0.size();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(next) => {
                        bytes += next.0.size();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let raft = raft.clone();
            tokio::spawn(async move {
                let _slot = slot;
                propose_batch(&raft, batch).await;
            });
        }
    });
    tx
}

async fn propose_batch(
    raft: &Raft<TypeConfig>,
    batch: Vec<(Command, tokio::sync::oneshot::Sender<Result<PeerAnswer>>)>,
) {
    let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let single = commands.len() == 1;
    let entry = if single {
        commands.into_iter().next().expect("one command")
    } else {
        Command::Batch(commands)
    };
    let written = tokio::time::timeout(REQUEST_TIMEOUT, raft.client_write(entry)).await;
    let answers: Vec<Result<PeerAnswer>> = match written {
        Err(_) => replies.iter().map(|_| Err(Error::Timeout)).collect(),
        Ok(Ok(resp)) => {
            let index = resp.log_id.index;
            match resp.data {
                Reply(Ok(Answer::Batch(each))) if !single => each
                    .into_iter()
                    .map(|reply| Ok(PeerAnswer::Applied { reply, index }))
                    .collect(),
                reply => vec![Ok(PeerAnswer::Applied { reply, index })],
            }
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => replies
            .iter()
            .map(|_| Ok(PeerAnswer::NotLeader(f.leader_id)))
            .collect(),
        Ok(Err(e)) => {
            let e = raft_failure(e);
            replies.iter().map(|_| Err(e.clone())).collect()
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

impl RaftNode {
    /// The raft handle (metrics, shutdown).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Resolves with the error once raft stopped on a storage failure.
    pub async fn failure(&self) -> String {
        let mut failed = self.failed.subscribe();
        loop {
            if let Some(e) = failed.borrow_and_update().clone() {
                return e;
            }
            if failed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    fn leader(&self) -> Option<(u64, Option<MemberNode>)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader).cloned();
        Some((leader, node))
    }

    /// Whether this member leads now.
    pub fn leads(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && self.quorum_ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `request` on the leader: here when this member leads, else
    /// sent to it. Retried while there is no leader or leadership moved
    /// before the request was handled; a request that reached a leader and
    /// got no answer is not retried (it may have been applied).
    pub(crate) async fn on_leader(&self, request: PeerRequest) -> Result<PeerAnswer> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut saw_leader = false;
        loop {
            let answer = match self.leader() {
                Some((id, _)) if id == self.id => {
                    saw_leader = true;
                    self.handle(&request).await?
                }
                Some((_, Some(node))) => {
                    saw_leader = true;
                    match self.peers.call(&node.peer_url, &request).await {
                        Ok(answer) => answer?,
                        Err(CallError::Unreachable(..)) => PeerAnswer::NotLeader(None),
                        Err(e @ CallError::Refused(..)) => {
                            return Err(Error::Storage(e.to_string()));
                        }
                        Err(e @ CallError::Failed(..)) => {
                            tracing::warn!(error = %e, "the leader did not answer");
                            return Err(Error::Timeout);
                        }
                    }
                }
                _ => PeerAnswer::NotLeader(None),
            };
            match answer {
                PeerAnswer::NotLeader(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                PeerAnswer::NotLeader(_) if saw_leader => return Err(Error::Timeout),
                PeerAnswer::NotLeader(_) => return Err(Error::NoLeader),
                answer => return Ok(answer),
            }
        }
    }

    /// Handles a request as the leader; `NotLeader` if this member is not.
    pub(crate) async fn handle(&self, request: &PeerRequest) -> Result<PeerAnswer> {
        let not_leader = || PeerAnswer::NotLeader(self.leader().map(|(id, _)| id));
        match request {
            PeerRequest::Propose(command) => {
                if !self.leads() {
                    return Ok(not_leader());
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.proposals
                    .send((command.clone(), tx))
                    .map_err(|_| Error::Stopped)?;
                rx.await.map_err(|_| Error::Stopped)?
            }
            PeerRequest::ReadIndex => {
                let read = tokio::time::timeout(REQUEST_TIMEOUT, self.raft.get_read_log_id())
                    .await
                    .map_err(|_| Error::Timeout)?;
                match read {
                    Ok((read, _)) => Ok(PeerAnswer::Index(read.map_or(0, |l| l.index))),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                        Ok(not_leader())
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                        Err(Error::Timeout)
                    }
                    Err(e) => Err(raft_failure(e)),
                }
            }
            PeerRequest::KeepAlive(id) if self.leads() => {
                Ok(PeerAnswer::Ttl(self.store.local_keep_alive(*id)))
            }
            PeerRequest::TimeToLive { id, keys } if self.leads() => Ok(PeerAnswer::TimeToLive(
                self.store
                    .local_lease_time_to_live(*id, *keys)
                    .map(|(left, ttl, keys)| {
                        (left, ttl, keys.iter().map(|k| k.to_vec()).collect())
                    }),
            )),
            PeerRequest::KeepAlive(_) | PeerRequest::TimeToLive { .. } => Ok(not_leader()),
            _ if !self.leads() => Ok(not_leader()),
            PeerRequest::Hello { peer_url } => {
                let member_id = self
                    .nodes()
                    .into_iter()
                    .find(|(_, n)| &n.peer_url == peer_url)
                    .map(|(id, _)| id)
                    .unwrap_or_else(new_member_id);
                Ok(PeerAnswer::Welcome {
                    member_id,
                    cluster_id: self.cluster_id,
                })
            }
            PeerRequest::Join { id, node } => {
                self.join(*id, node.clone()).await?;
                Ok(PeerAnswer::Done)
            }
            PeerRequest::AddMember { peer_url, learner } => {
                if self.nodes().iter().any(|(_, n)| &n.peer_url == peer_url) {
                    return Err(Error::PeerUrlExists);
                }
                let _one_at_a_time = self.membership_changes.lock().await;
                let id = new_member_id();
                let node = MemberNode {
                    peer_url: peer_url.clone(),
                    ..Default::default()
                };
                self.raft
                    .add_learner(id, node, false)
                    .await
                    .map_err(raft_failure)?;
                if !learner {
                    self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                        .await?;
                }
                Ok(PeerAnswer::Added(id))
            }
            PeerRequest::RemoveMember(id) => {
                let _one_at_a_time = self.membership_changes.lock().await;
                let voters = self.voters();
                if voters.contains(id) {
                    self.change(ChangeMembers::RemoveVoters(BTreeSet::from([*id])))
                        .await?;
                }
                if !self.nodes().contains_key(id) {
                    return if voters.contains(id) {
                        Ok(PeerAnswer::Done)
                    } else {
                        Err(Error::MemberNotFound)
                    };
                }
                self.change(ChangeMembers::RemoveNodes(BTreeSet::from([*id])))
                    .await?;
                Ok(PeerAnswer::Done)
            }
            PeerRequest::PromoteMember(id) => {
                let _one_at_a_time = self.membership_changes.lock().await;
                if !self.nodes().contains_key(id) {
                    return Err(Error::MemberNotFound);
                }
                if self.voters().contains(id) {
                    return Err(Error::MemberNotLearner);
                }
                self.change(ChangeMembers::AddVoterIds(BTreeSet::from([*id])))
                    .await?;
                Ok(PeerAnswer::Done)
            }
        }
    }

    /// Adds a started server: as a learner until it has caught up, then as
    /// a voter. A member rejoining (restarted with its data) is left as is.
    async fn join(&self, id: u64, node: MemberNode) -> Result<()> {
        let _one_at_a_time = self.membership_changes.lock().await;
        if self.voters().contains(&id) && self.nodes().get(&id) == Some(&node) {
            return Ok(());
        }
        if self.nodes().contains_key(&id) {
            // Added by MemberAdd (or restarted with new details): record
            // its name and URLs, then wait for it to catch up.
            self.change(ChangeMembers::SetNodes(BTreeMap::from([(
                id,
                node.clone(),
            )])))
            .await?;
        } else {
            tracing::info!(member = %format!("{id:x}"), peer_url = %node.peer_url, "adding a member as a learner");
        }
        tokio::time::timeout(JOIN_TIMEOUT, self.raft.add_learner(id, node, true))
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(raft_failure)?;
        if !self.voters().contains(&id) {
            self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                .await?;
        }
        tracing::info!(member = %format!("{id:x}"), "member caught up and votes");
        Ok(())
    }

    async fn change(&self, change: ChangeMembers<u64, MemberNode>) -> Result<()> {
        tokio::time::timeout(JOIN_TIMEOUT, self.raft.change_membership(change, false))
            .await
            .map_err(|_| Error::Timeout)?
            .map(|_| ())
            .map_err(raft_failure)
    }

    fn nodes(&self) -> BTreeMap<u64, MemberNode> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    fn voters(&self) -> BTreeSet<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Waits until this member has applied the entry at `index`.
    async fn wait_applied(&self, index: u64) -> Result<()> {
        self.raft
            .wait(Some(REQUEST_TIMEOUT))
            .applied_index_at_least(Some(index), "read your write")
            .await
            .map(|_| ())
            .map_err(|_| Error::Timeout)
    }
}

fn raft_failure<E: std::fmt::Display>(e: E) -> Error {
    Error::Storage(format!("raft: {e}"))
}

/// A fresh member id: random, never 0.
pub(crate) fn new_member_id() -> u64 {
    kine::backend::random_id()
}

impl Replicator for RaftNode {
    fn propose(&self, op: WriteOp) -> BoxFuture<'_, Result<WriteReply>> {
        Box::pin(async move {
            let command = Command::from_op(&op).ok_or_else(|| {
                Error::Storage("k3rs: this write is not replicated through the log".into())
            })?;
            match self.on_leader(PeerRequest::Propose(command)).await? {
                PeerAnswer::Applied { reply, index } => {
                    self.wait_applied(index).await?;
                    reply.into_result()
                }
                other => Err(unexpected(other)),
            }
        })
    }

    fn read_barrier(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.on_leader(PeerRequest::ReadIndex).await? {
                PeerAnswer::Index(index) => self.wait_applied(index).await,
                other => Err(unexpected(other)),
            }
        })
    }

    fn keep_alive(&self, id: i64) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            match self.on_leader(PeerRequest::KeepAlive(id)).await? {
                PeerAnswer::Ttl(ttl) => Ok(ttl),
                other => Err(unexpected(other)),
            }
        })
    }

    fn time_to_live(&self, id: i64, with_keys: bool) -> BoxFuture<'_, Result<Option<LeaseTtl>>> {
        Box::pin(async move {
            match self
                .on_leader(PeerRequest::TimeToLive {
                    id,
                    keys: with_keys,
                })
                .await?
            {
                PeerAnswer::TimeToLive(found) => Ok(found.map(|(left, ttl, keys)| {
                    (left, ttl, keys.into_iter().map(Bytes::from).collect())
                })),
                other => Err(unexpected(other)),
            }
        })
    }

    fn is_leader(&self) -> bool {
        self.leads()
    }

    fn identity(&self) -> StoreIdentity {
        StoreIdentity {
            cluster_id: self.cluster_id,
            member_id: self.id,
        }
    }

    fn status(&self) -> RaftStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let cut_off = m.current_leader == Some(self.id)
            && !self.quorum_ok.load(std::sync::atomic::Ordering::Relaxed);
        RaftStatus {
            leader: if cut_off {
                0
            } else {
                m.current_leader.unwrap_or(0)
            },
            term: m.current_term,
            index: m.last_log_index.unwrap_or(0),
            applied: m.last_applied.map_or(0, |l| l.index),
            is_learner: m.state == ServerState::Learner,
        }
    }

    fn members(&self) -> Vec<ClusterMember> {
        let voters = self.voters();
        self.nodes()
            .into_iter()
            .map(|(id, n)| ClusterMember {
                id,
                name: n.name,
                peer_urls: vec![n.peer_url],
                client_urls: n.client_urls,
                is_learner: !voters.contains(&id),
            })
            .collect()
    }

    fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> BoxFuture<'_, Result<ClusterMember>> {
        Box::pin(async move {
            let Some(peer_url) = peer_urls.first().cloned() else {
                return Err(Error::Unimplemented(
                    "k3rs: member add needs a peer URL".into(),
                ));
            };
            match self
                .on_leader(PeerRequest::AddMember {
                    peer_url: peer_url.clone(),
                    learner: is_learner,
                })
                .await?
            {
                PeerAnswer::Added(id) => Ok(ClusterMember {
                    id,
                    name: String::new(),
                    peer_urls: vec![peer_url],
                    client_urls: Vec::new(),
                    is_learner,
                }),
                other => Err(unexpected(other)),
            }
        })
    }

    fn member_remove(&self, id: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.on_leader(PeerRequest::RemoveMember(id)).await? {
                PeerAnswer::Done => Ok(()),
                other => Err(unexpected(other)),
            }
        })
    }

    fn member_promote(&self, id: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.on_leader(PeerRequest::PromoteMember(id)).await? {
                PeerAnswer::Done => Ok(()),
                other => Err(unexpected(other)),
            }
        })
    }
}

fn unexpected(answer: PeerAnswer) -> Error {
    Error::Storage(format!(
        "k3rs: unexpected answer from the leader: {answer:?}"
    ))
}
