//! The write side of etcd's applier: Put, DeleteRange and Txn evaluated
//! against the index by the single writer.
//!
//! A request that writes takes exactly one revision, `ctx.revision`; every
//! write it makes is pushed to the index at that revision at once (so later
//! ops of a txn see earlier ones) and recorded for the log. Readers do not
//! see these revisions until the writer publishes them after the commit.

use std::collections::HashSet;

use bytes::Bytes;

use super::index::{Index, KeyRange, Revision};
use super::lease::LeaseTable;
use super::read::{self, ReadView};
use crate::backend::LogRecord;
use crate::error::{Error, Result};
use crate::proto::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::request_op::Request;
use crate::proto::response_op::Response;
use crate::proto::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

/// Most compares, or ops per branch, one txn may carry (etcd's default).
pub const MAX_TXN_OPS: usize = 128;

/// What the writer lends one request.
pub struct WriteCtx<'a> {
    /// The index, with every earlier request of the batch applied.
    pub index: &'a mut Index,
    /// The revision before this request.
    pub base: i64,
    /// The compact revision.
    pub compact: i64,
    /// Rows written so far in this batch; this request appends its own.
    pub records: &'a mut Vec<LogRecord>,
    /// Where this request's rows start in `records`.
    pub first_record: usize,
    /// The next write's position within this revision.
    pub next_sub: u32,
    /// Live leases, and the keys attached to each.
    pub leases: &'a mut LeaseTable,
    /// Reads a historic value from the log.
    pub log_value: &'a mut dyn FnMut(&[u8], i64) -> Result<Bytes>,
}

impl WriteCtx<'_> {
    /// The revision this request writes at.
    pub fn revision(&self) -> i64 {
        self.base + 1
    }

    /// Whether this request has written anything yet.
    pub fn wrote(&self) -> bool {
        self.records.len() > self.first_record
    }

    /// The revision reads inside this request see (etcd: the begin revision,
    /// plus one once the request has written).
    fn read_revision(&self) -> i64 {
        if self.wrote() {
            self.revision()
        } else {
            self.base
        }
    }

    fn view(&self) -> ReadView {
        ReadView {
            current: self.read_revision(),
            compact: self.compact,
        }
    }

    /// Undoes this request's writes (it failed half-way).
    pub fn rollback(&mut self) {
        let records: Vec<LogRecord> = self.records.drain(self.first_record..).collect();
        undo(self.index, self.leases, &records, self.base);
    }

    fn write(&mut self, key: Bytes, mut revision: Revision) {
        let rev = self.revision();
        revision.sub = self.next_sub;
        self.next_sub += 1;
        let record = LogRecord {
            mod_revision: rev,
            sub: revision.sub,
            key: key.clone(),
            create_revision: revision.create_revision,
            version: revision.version,
            lease: revision.lease,
            value: revision.value.clone().unwrap_or_default(),
        };
        let new_lease = revision.lease;
        let (old_lease, replaced) = self.index.push(key, revision);
        self.leases.reattach(&record.key, old_lease, new_lease);
        if replaced {
            self.records
                .retain(|r| !(r.mod_revision == rev && r.key == record.key));
        }
        self.records.push(record);
    }

    fn current(&self, key: &[u8]) -> Option<&Revision> {
        self.index.get(key).and_then(|h| h.at(self.read_revision()))
    }

    fn range(&mut self, req: &RangeRequest) -> Result<RangeResponse> {
        let partial = read::range(self.index, req, self.view(), self.log_value)?;
        read::fill_missing(partial, self.log_value)
    }
}

/// Checks a Put as etcd's gRPC layer does, before anything is applied.
pub fn check_put(req: &PutRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// Checks a Txn's shape: op counts, keys, and no key written twice.
pub fn check_txn(req: &TxnRequest) -> Result<()> {
    check_txn_ops(req)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn_ops(req: &TxnRequest) -> Result<()> {
    let most = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if most > MAX_TXN_OPS {
        return Err(Error::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => read::check_range(r)?,
            Some(Request::RequestPut(p)) => check_put(p)?,
            Some(Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(Error::EmptyKey);
            }
            Some(Request::RequestTxn(t)) => check_txn_ops(t)?,
            Some(_) => {}
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// A delete interval as etcd's duplicate check sees it: an empty end is the
/// key alone; any other end (`"\0"` included) is compared literally.
struct DeleteInterval<'a> {
    key: &'a [u8],
    end: &'a [u8],
}

impl DeleteInterval<'_> {
    fn covers(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == self.key
        } else {
            self.key <= k && k < self.end
        }
    }
}

/// etcd's `checkIntervals`: within one executed path, a key is put at most
/// once and never both put and deleted. Returns the puts and deletes of `ops`.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<&[u8]>, Vec<DeleteInterval<'_>>)> {
    let mut dels: Vec<DeleteInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(DeleteInterval {
                key: &d.key,
                end: &d.range_end,
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.covers(k)) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            // A key in both branches is fine: only one branch runs.
            if puts.contains(k) && !puts_then.contains(k) || dels.iter().any(|d| d.covers(k)) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k: &[u8] = &p.key;
        if puts.contains(k) || dels.iter().any(|d| d.covers(k)) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

/// Put (after `check_put`).
/// A Put request on its own (not inside a txn): etcd checks its lease
/// before the key its ignore flags need, where a txn checks the key first.
pub fn put_request(ctx: &mut WriteCtx, req: &PutRequest) -> Result<PutResponse> {
    if !req.ignore_lease && req.lease != 0 && !ctx.leases.contains(req.lease) {
        return Err(Error::LeaseNotFound);
    }
    put(ctx, req)
}

pub fn put(ctx: &mut WriteCtx, req: &PutRequest) -> Result<PutResponse> {
    let prev = ctx.current(&req.key).cloned();
    if (req.ignore_value || req.ignore_lease) && prev.is_none() {
        return Err(Error::KeyNotFound);
    }
    let lease = if req.ignore_lease {
        prev.as_ref().map_or(0, |p| p.lease)
    } else {
        req.lease
    };
    if lease != 0 && !ctx.leases.contains(lease) {
        return Err(Error::LeaseNotFound);
    }
    let prev_kv = match (&prev, req.prev_kv) {
        (Some(p), true) => {
            let mut kv = read::to_kv(&req.key, p, true);
            if p.value.is_none() {
                kv.value = (ctx.log_value)(&req.key, p.mod_revision)?;
            }
            Some(kv)
        }
        _ => None,
    };
    let value = if req.ignore_value {
        match &prev {
            Some(p) => match &p.value {
                Some(v) => v.clone(),
                None => (ctx.log_value)(&req.key, p.mod_revision)?,
            },
            None => Bytes::new(),
        }
    } else {
        // A decoded request's bytes share one allocation with the whole
        // request buffer; copy, so the index keeps only what it stores.
        Bytes::copy_from_slice(&req.value)
    };
    let rev = ctx.revision();
    let (create_revision, version) = match &prev {
        Some(p) => (p.create_revision, p.version + 1),
        None => (rev, 1),
    };
    ctx.write(
        Bytes::copy_from_slice(&req.key),
        Revision {
            mod_revision: rev,
            create_revision,
            version,
            lease,
            sub: 0,
            value: Some(value),
        },
    );
    Ok(PutResponse {
        header: Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        }),
        prev_kv,
    })
}

/// DeleteRange.
pub fn delete_range(ctx: &mut WriteCtx, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    let keys = KeyRange::new(req.key.clone(), req.range_end.clone());
    let at = ctx.read_revision();
    let mut doomed: Vec<(Bytes, Revision)> = Vec::new();
    ctx.index.visit(&keys, |key, h| {
        if let Some(r) = h.at(at) {
            doomed.push((key.clone(), r.clone()));
        }
        true
    });
    let mut prev_kvs = Vec::new();
    if req.prev_kv {
        for (key, r) in &doomed {
            let mut kv = read::to_kv(key, r, true);
            if r.value.is_none() {
                kv.value = (ctx.log_value)(key, r.mod_revision)?;
            }
            prev_kvs.push(kv);
        }
    }
    let rev = ctx.revision();
    let deleted = doomed.len() as i64;
    for (key, _) in doomed {
        ctx.write(key, Revision::tombstone(rev));
    }
    let revision = if ctx.wrote() { rev } else { ctx.base };
    Ok(DeleteRangeResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        deleted,
        prev_kvs,
    })
}

/// Txn (after `check_txn`): compares, then the chosen branch in order.
pub fn txn(ctx: &mut WriteCtx, req: &TxnRequest) -> Result<TxnResponse> {
    // etcd checks every range and put of the path that will run, in order,
    // before running any.
    let mut path = Vec::new();
    choose_path(ctx, req, &mut path);
    check_path_puts(ctx, req, &path, &mut 0)?;
    let mut next = 0;
    let resp = run_txn(ctx, req, &path, &mut next)?;
    Ok(resp)
}

/// Decides every (nested) txn's branch up front, against the state before
/// the txn, in the order the ops will run.
fn choose_path(ctx: &WriteCtx, req: &TxnRequest, path: &mut Vec<bool>) {
    let ok = req.compare.iter().all(|c| compare(ctx, c));
    path.push(ok);
    let ops = if ok { &req.success } else { &req.failure };
    for op in ops {
        if let Some(Request::RequestTxn(t)) = &op.request {
            choose_path(ctx, t, path);
        }
    }
}

fn check_path_puts(
    ctx: &WriteCtx,
    req: &TxnRequest,
    path: &[bool],
    next: &mut usize,
) -> Result<()> {
    let ok = path[*next];
    *next += 1;
    for op in if ok { &req.success } else { &req.failure } {
        match &op.request {
            // etcd's checkRequestRange: against the revision before the
            // txn, so not at the txn's own new revision; and, unlike a plain
            // Range, a negative revision below the compact revision counts.
            Some(Request::RequestRange(r)) if r.revision != 0 => {
                if r.revision > ctx.base {
                    return Err(Error::FutureRevision);
                }
                if r.revision < ctx.compact {
                    return Err(Error::Compacted);
                }
            }
            Some(Request::RequestPut(p)) => {
                let prev = ctx.current(&p.key);
                if (p.ignore_value || p.ignore_lease) && prev.is_none() {
                    return Err(Error::KeyNotFound);
                }
                if p.lease != 0 && !ctx.leases.contains(p.lease) {
                    return Err(Error::LeaseNotFound);
                }
            }
            Some(Request::RequestTxn(t)) => check_path_puts(ctx, t, path, next)?,
            _ => {}
        }
    }
    Ok(())
}

fn run_txn(
    ctx: &mut WriteCtx,
    req: &TxnRequest,
    path: &[bool],
    next: &mut usize,
) -> Result<TxnResponse> {
    let succeeded = path[*next];
    *next += 1;
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Response::ResponseRange(ctx.range(r)?),
            Some(Request::RequestPut(p)) => Response::ResponsePut(put(ctx, p)?),
            Some(Request::RequestDeleteRange(d)) => {
                Response::ResponseDeleteRange(delete_range(ctx, d)?)
            }
            Some(Request::RequestTxn(t)) => Response::ResponseTxn(run_txn(ctx, t, path, next)?),
            None => return Err(Error::KeyNotFound),
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    let revision = ctx.read_revision();
    Ok(TxnResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        succeeded,
        responses,
    })
}

/// etcd's `applyCompare`: every key in the compare's range must match; a
/// missing key compares as zero, except for VALUE, which then fails.
fn compare(ctx: &WriteCtx, c: &Compare) -> bool {
    let rev = ctx.read_revision();
    let keys = KeyRange::new(c.key.clone(), c.range_end.clone());
    let mut any = false;
    let mut all = true;
    ctx.index.visit(&keys, |_, h| {
        if let Some(r) = h.at(rev) {
            any = true;
            all = compare_one(c, Some(r));
        }
        all
    });
    if !any {
        return c.target != CompareTarget::Value as i32 && compare_one(c, None);
    }
    all
}

/// Compares one key's state. Compares read the newest state, whose value
/// the index always holds in memory.
fn compare_one(c: &Compare, r: Option<&Revision>) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            let have: &[u8] = r.and_then(|r| r.value.as_deref()).unwrap_or_default();
            have.cmp(want)
        }
        target => {
            let (have, want) = match (target, &c.target_union) {
                (Ok(CompareTarget::Version), u) => (
                    r.map_or(0, |r| r.version),
                    if let Some(TargetUnion::Version(v)) = u {
                        *v
                    } else {
                        0
                    },
                ),
                (Ok(CompareTarget::Create), u) => (
                    r.map_or(0, |r| r.create_revision),
                    if let Some(TargetUnion::CreateRevision(v)) = u {
                        *v
                    } else {
                        0
                    },
                ),
                (Ok(CompareTarget::Mod), u) => (
                    r.map_or(0, |r| r.mod_revision),
                    if let Some(TargetUnion::ModRevision(v)) = u {
                        *v
                    } else {
                        0
                    },
                ),
                (Ok(CompareTarget::Lease), u) => (
                    r.map_or(0, |r| r.lease),
                    if let Some(TargetUnion::Lease(v)) = u {
                        *v
                    } else {
                        0
                    },
                ),
                _ => (0, 0),
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

/// Takes back `records` (written above `base`) from the index and moves
/// their keys back to the leases they had before.
pub fn undo(index: &mut Index, leases: &mut LeaseTable, records: &[LogRecord], base: i64) {
    for record in records.iter().rev() {
        index.truncate_above(&record.key, base);
        let restored = index
            .get(&record.key)
            .and_then(|h| h.latest())
            .map_or(0, |l| l.lease);
        leases.reattach(&record.key, record.lease, restored);
    }
}

/// Revokes a lease: deletes every attached key in this request's revision.
pub fn revoke_lease(ctx: &mut WriteCtx, id: i64) -> Result<i64> {
    let Some(lease) = ctx.leases.get(id) else {
        return Err(Error::LeaseNotFound);
    };
    let keys: Vec<Bytes> = lease.keys.iter().cloned().collect();
    let rev = ctx.revision();
    for key in keys {
        ctx.write(key, Revision::tombstone(rev));
    }
    ctx.leases.remove(id);
    Ok(if ctx.wrote() { rev } else { ctx.base })
}
