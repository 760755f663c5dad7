//! Range: etcd's read semantics over the index, for readers and for the
//! writer's txns alike.

use bytes::Bytes;

use super::index::{Index, KeyRange, Revision};
use crate::error::{Error, Result};
use crate::proto::mvccpb::event::EventType;
use crate::proto::range_request::{SortOrder, SortTarget};
use crate::proto::{Event, KeyValue, RangeRequest, RangeResponse, ResponseHeader};

/// The revisions a read checks its request against.
#[derive(Debug, Clone, Copy)]
pub struct ReadView {
    /// The revision a read without `revision` sees, and the header's.
    pub current: i64,
    /// Reads below this revision fail with `Compacted`.
    pub compact: i64,
}

/// A range answer whose historic values may still be missing: each entry of
/// `missing` is an index into `kvs` whose value must be read from the log.
pub struct PartialRange {
    /// The answer, complete but for the values listed in `missing`.
    pub response: RangeResponse,
    /// Positions in `response.kvs` that need their value from the log.
    pub missing: Vec<usize>,
}

/// Checks a Range's shape as etcd's gRPC layer does.
pub fn check_range(req: &RangeRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if SortOrder::try_from(req.sort_order).is_err()
        || SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

/// Resolves `revision` of a request against the view.
pub fn read_revision(requested: i64, view: ReadView) -> Result<i64> {
    if requested > view.current {
        return Err(Error::FutureRevision);
    }
    let rev = if requested <= 0 {
        view.current
    } else {
        requested
    };
    if rev < view.compact {
        return Err(Error::Compacted);
    }
    Ok(rev)
}

/// Builds a wire `KeyValue` from a key and one of its revisions.
pub fn to_kv(key: &Bytes, r: &Revision, with_value: bool) -> KeyValue {
    KeyValue {
        key: key.clone(),
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        version: r.version,
        value: if with_value {
            r.value.clone().unwrap_or_default()
        } else {
            Bytes::new()
        },
        lease: r.lease,
    }
}

/// Answers a Range as etcd's applier does: fetch (limit + 1 unless sorting
/// or filtering), prune by the min/max filters, sort, truncate.
///
/// `log_value` reads a historic value from the log; it is called here only
/// for a sort by value, which cannot wait.
pub fn range(
    index: &Index,
    req: &RangeRequest,
    view: ReadView,
    log_value: &mut dyn FnMut(&[u8], i64) -> Result<Bytes>,
) -> Result<PartialRange> {
    let rev = read_revision(req.revision, view)?;
    let header = Some(ResponseHeader {
        revision: view.current,
        ..Default::default()
    });
    let keys = KeyRange::new(req.key.clone(), req.range_end.clone());

    if req.count_only {
        let mut count = 0;
        index.visit(&keys, |_, h| {
            count += h.at(rev).is_some() as i64;
            true
        });
        let response = RangeResponse {
            header,
            count,
            ..Default::default()
        };
        return Ok(PartialRange {
            response,
            missing: Vec::new(),
        });
    }

    let sort_order = match (
        SortTarget::try_from(req.sort_target),
        SortOrder::try_from(req.sort_order),
    ) {
        (Ok(SortTarget::Key) | Err(_), order) => order.unwrap_or(SortOrder::None),
        (Ok(_), Ok(SortOrder::None) | Err(_)) => SortOrder::Ascend,
        (Ok(_), Ok(order)) => order,
    };
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let fetch_limit = if req.sort_order != 0 || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        req.limit as usize + 1
    };

    let mut count = 0i64;
    let mut found: Vec<(&Bytes, &Revision, Option<Bytes>)> = Vec::new();
    index.visit(&keys, |key, h| {
        if let Some(r) = h.at(rev) {
            count += 1;
            if found.len() < fetch_limit {
                found.push((key, r, r.value.clone()));
            }
        }
        true
    });

    if filtered {
        found.retain(|(_, r, _)| {
            !(req.max_mod_revision != 0 && r.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && r.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && r.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && r.create_revision < req.min_create_revision)
        });
    }
    if sort_order != SortOrder::None {
        // Index order is ascending by key; a stable sort keeps it as the tie-break.
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        match target {
            SortTarget::Key => {}
            SortTarget::Version => found.sort_by_key(|(_, r, _)| r.version),
            SortTarget::Create => found.sort_by_key(|(_, r, _)| r.create_revision),
            SortTarget::Mod => found.sort_by_key(|(_, r, _)| r.mod_revision),
            SortTarget::Value => {
                for (key, r, value) in found.iter_mut().filter(|f| f.2.is_none()) {
                    *value = Some(log_value(key, r.mod_revision)?);
                }
                found.sort_by(|a, b| a.2.cmp(&b.2));
            }
        }
        if sort_order == SortOrder::Descend {
            found.reverse();
        }
    }
    let mut more = false;
    if req.limit > 0 && found.len() > req.limit as usize {
        found.truncate(req.limit as usize);
        more = true;
    }
    let mut missing = Vec::new();
    let kvs = found
        .iter()
        .enumerate()
        .map(|(i, (key, r, value))| {
            let mut kv = to_kv(key, r, false);
            if !req.keys_only {
                match value {
                    Some(v) => kv.value = v.clone(),
                    None => missing.push(i),
                }
            }
            kv
        })
        .collect();
    Ok(PartialRange {
        response: RangeResponse {
            header,
            kvs,
            more,
            count,
        },
        missing,
    })
}

/// Reads the values `range` left missing, through `log_value`. A value gone
/// from the log was compacted away while the read ran.
pub fn fill_missing(
    partial: PartialRange,
    log_value: &mut dyn FnMut(&[u8], i64) -> Result<Bytes>,
) -> Result<RangeResponse> {
    let PartialRange {
        mut response,
        missing,
    } = partial;
    for i in missing {
        let kv = &mut response.kvs[i];
        kv.value = log_value(&kv.key, kv.mod_revision)?;
    }
    Ok(response)
}

/// A watch event for `kv` (a delete when `create_revision` is 0).
pub fn to_event(kv: KeyValue, prev_kv: Option<KeyValue>) -> Event {
    let r#type = if kv.create_revision == 0 {
        EventType::Delete
    } else {
        EventType::Put
    };
    Event {
        r#type: r#type as i32,
        kv: Some(kv),
        prev_kv,
    }
}
