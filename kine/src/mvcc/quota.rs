//! The space quota and the alarms it raises, as etcd has them.
//!
//! A write that would take the database past the quota raises the NOSPACE
//! alarm and fails with "etcdserver: mvcc: database space exceeded". While
//! NOSPACE is raised every write that adds data (puts, txns with puts,
//! lease grants) fails the same way; reads, deletes, compaction and
//! defragment still work, and an operator disarms the alarm once space is
//! back (`etcdctl alarm disarm`), as on etcd.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::writer::WriteOp;
use crate::proto::request_op::Request;
use crate::proto::{AlarmMember, AlarmType, RequestOp, TxnRequest};

/// etcd's default quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// etcd's estimate of what a key costs besides its key and value bytes.
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of what a lease costs.
const LEASE_OVERHEAD: u64 = 64;

/// Raised alarms and the quota.
#[derive(Debug, Default)]
pub struct Alarms {
    /// A std Mutex: nothing awaits while holding it.
    raised: Mutex<Vec<AlarmMember>>,
    /// Whether NOSPACE is raised (by any member id), read on every write.
    nospace: AtomicBool,
    /// The quota in bytes; 0 is none.
    quota: AtomicU64,
}

impl Alarms {
    fn raised(&self) -> std::sync::MutexGuard<'_, Vec<AlarmMember>> {
        self.raised.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The raised alarms of type `alarm` (NONE: all).
    pub fn list(&self, alarm: i32) -> Vec<AlarmMember> {
        self.raised()
            .iter()
            .filter(|a| alarm == AlarmType::None as i32 || a.alarm == alarm)
            .cloned()
            .collect()
    }

    /// Raises an alarm (NONE is ignored); true if it was not raised yet.
    pub fn activate(&self, member: AlarmMember) -> bool {
        if member.alarm == AlarmType::None as i32 {
            return false;
        }
        let mut raised = self.raised();
        if raised.contains(&member) {
            return false;
        }
        raised.push(member);
        self.refresh(&raised);
        true
    }

    /// Disarms an alarm; true if it was raised.
    pub fn deactivate(&self, member: &AlarmMember) -> bool {
        let mut raised = self.raised();
        let before = raised.len();
        raised.retain(|a| a != member);
        self.refresh(&raised);
        raised.len() < before
    }

    fn refresh(&self, raised: &[AlarmMember]) {
        let nospace = raised.iter().any(|a| a.alarm == AlarmType::Nospace as i32);
        self.nospace.store(nospace, Ordering::Release);
    }

    /// Whether NOSPACE is raised.
    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Acquire)
    }

    /// Sets the quota in bytes; 0 turns it off.
    pub fn set_quota(&self, bytes: u64) {
        self.quota.store(bytes, Ordering::Relaxed);
    }

    /// The quota in bytes; 0 is none.
    pub fn quota(&self) -> u64 {
        self.quota.load(Ordering::Relaxed)
    }
}

/// What `op` adds to the database by etcd's estimate; 0 for a write that
/// adds nothing (deletes, revokes, read-only txns), which the quota never
/// refuses.
pub(super) fn cost(op: &WriteOp) -> u64 {
    match op {
        WriteOp::Put(p) => KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64,
        WriteOp::Txn(t) => txn_cost(t),
        WriteOp::LeaseGrant { .. } => LEASE_OVERHEAD,
        WriteOp::DeleteRange(_)
        | WriteOp::LeaseRevoke { .. }
        | WriteOp::LeaseKeepAlive { .. }
        | WriteOp::Compact { .. }
        | WriteOp::Noop => 0,
    }
}

/// The costlier branch: only one of them runs.
fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => {
                    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
                }
                Some(Request::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DeleteRangeRequest, PutRequest};

    #[test]
    fn costs_follow_etcd() {
        let put = PutRequest {
            key: "k".into(),
            value: vec![0; 100].into(),
            ..Default::default()
        };
        assert_eq!(cost(&WriteOp::Put(put.clone())), 357);
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestPut(put)),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest::default())),
            }],
            ..Default::default()
        };
        assert_eq!(cost(&WriteOp::Txn(txn)), 357);
        assert_eq!(
            cost(&WriteOp::DeleteRange(DeleteRangeRequest::default())),
            0
        );
    }

    #[test]
    fn nospace_follows_the_raised_alarms() {
        let alarms = Alarms::default();
        let nospace = AlarmMember {
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        };
        assert!(alarms.activate(nospace));
        assert!(!alarms.activate(nospace));
        assert!(alarms.nospace());
        assert_eq!(alarms.list(AlarmType::Corrupt as i32), vec![]);
        assert!(alarms.deactivate(&nospace));
        assert!(!alarms.nospace());
    }
}
