//! The in-memory MVCC index: for every key, the revisions it went through.
//!
//! This is etcd's `treeIndex` with one addition: the newest revision of each
//! key also carries its value, so a read at the current revision never touches
//! the disk. Older revisions keep only their metadata; their values are read
//! from the log by `(mod_revision, key)` when a historic read needs them.
//!
//! Worked example. Put `a` at 2, put `a` at 3, delete `a` at 4, put `a` at 6:
//! the history of `a` is `[2 (v1), 3 (v2), 4 (tombstone), 6 (v1)]`.
//! A read at revision 3 sees version 2; at 4 or 5 sees nothing; at 6 sees
//! version 1 with create_revision 6. Compacting at 5 keeps only `[6]`:
//! the tombstone at 4 is below 5 and would only ever answer "absent".
//! Compacting at 3 keeps `[3, 4, 6]`: revision 3 must stay readable.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use smallvec::SmallVec;

/// One revision of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// The revision that wrote this state (`mod_revision`).
    pub mod_revision: i64,
    /// The revision that created the key; 0 marks a tombstone (a delete).
    pub create_revision: i64,
    /// Puts since creation; 0 for a tombstone.
    pub version: i64,
    /// Attached lease, 0 for none.
    pub lease: i64,
    /// Position among the writes of its revision (write order of a txn).
    pub sub: u32,
    /// The value, kept in memory for a key's newest revisions only;
    /// `None` means "read it from the log".
    pub value: Option<Bytes>,
}

impl Revision {
    /// A delete at `mod_revision`.
    pub fn tombstone(mod_revision: i64) -> Self {
        Revision {
            mod_revision,
            create_revision: 0,
            version: 0,
            lease: 0,
            sub: 0,
            value: Some(Bytes::new()),
        }
    }

    /// Whether this revision is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.create_revision == 0
    }
}

/// The revisions of one key, oldest first. Most keys hold one revision
/// (after compaction, or when written once): it sits inline in the map's
/// node, so scans and counts do not chase a pointer per key.
#[derive(Debug, Default, Clone)]
pub struct KeyHistory {
    revisions: SmallVec<[Revision; 1]>,
}

impl KeyHistory {
    /// The key's live state as of `rev`: `None` if it did not exist then.
    pub fn at(&self, rev: i64) -> Option<&Revision> {
        let idx = self.revisions.partition_point(|r| r.mod_revision <= rev);
        let found = self.revisions[..idx].last()?;
        (!found.is_tombstone()).then_some(found)
    }

    /// The newest revision, including writes not yet published.
    pub fn latest(&self) -> Option<&Revision> {
        self.revisions.last()
    }

    /// All retained revisions, oldest first.
    pub fn revisions(&self) -> &[Revision] {
        &self.revisions
    }

    /// The state just before `rev` (for a watch event's `prev_kv`).
    pub fn before(&self, rev: i64) -> Option<&Revision> {
        self.at(rev - 1)
    }
}

/// Every key's history, ordered bytewise by key.
#[derive(Debug, Default)]
pub struct Index {
    keys: BTreeMap<Bytes, KeyHistory>,
    /// Revisions held (for sizing and metrics).
    revision_count: usize,
}

/// Drops the values of all but the newest revision (see `release_old_values`).
fn release(revisions: &mut [Revision]) {
    if let Some((_, older)) = revisions.split_last_mut() {
        for r in older.iter_mut().rev() {
            if r.value.is_none() {
                break;
            }
            r.value = None;
        }
    }
}

/// The keys `[start, end)` as `BTreeMap` bounds, with etcd's conventions
/// already applied by `KeyRange`.
fn bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    let end = match &range.end {
        RangeEnd::Single => Bound::Included(range.start.as_ref()),
        RangeEnd::Unbounded => Bound::Unbounded,
        RangeEnd::Before(end) => Bound::Excluded(end.as_ref()),
    };
    (Bound::Included(range.start.as_ref()), end)
}

/// Where a key range stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEnd {
    /// Only the start key.
    Single,
    /// Every key from the start on (`range_end = "\0"`).
    Unbounded,
    /// Keys below this one.
    Before(Bytes),
}

/// A key range in etcd's terms: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// First key.
    pub start: Bytes,
    /// Where it stops.
    pub end: RangeEnd,
}

impl KeyRange {
    /// Builds a range from a request's `key` and `range_end`.
    /// Empty `range_end`: one key. `"\0"`: every key from `key` on.
    pub fn new(key: Bytes, range_end: Bytes) -> Self {
        let end = if range_end.is_empty() {
            RangeEnd::Single
        } else if range_end.as_ref() == [0] {
            RangeEnd::Unbounded
        } else {
            RangeEnd::Before(range_end)
        };
        KeyRange { start: key, end }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        if key < self.start.as_ref() {
            return false;
        }
        match &self.end {
            RangeEnd::Single => key == self.start.as_ref(),
            RangeEnd::Unbounded => true,
            RangeEnd::Before(end) => key < end.as_ref(),
        }
    }

    /// An inverted range (`end <= start`) holds no key and must not reach
    /// `BTreeMap::range`, which panics on it.
    fn is_empty(&self) -> bool {
        matches!(&self.end, RangeEnd::Before(end) if end.as_ref() <= self.start.as_ref())
    }
}

impl Index {
    /// Visits the keys of `range` in ascending order with their history;
    /// `f` returns false to stop.
    pub fn visit<'a>(
        &'a self,
        range: &KeyRange,
        mut f: impl FnMut(&'a Bytes, &'a KeyHistory) -> bool,
    ) {
        if range.is_empty() {
            return;
        }
        for (key, history) in self.keys.range::<[u8], _>(bounds(range)) {
            if !f(key, history) {
                return;
            }
        }
    }

    /// The history of one key.
    pub fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.keys.get(key)
    }

    /// Appends a new revision to `key`'s history, in one lookup. Returns
    /// the lease of the key's previous newest revision, and whether that
    /// revision was replaced because it had the same `mod_revision`: two
    /// writes to one key in one revision happen only through sibling nested
    /// txns (etcd allows it), and the later one is the key's state.
    pub fn push(&mut self, key: Bytes, revision: Revision) -> (i64, bool) {
        let history = self.keys.entry(key).or_default();
        let old_lease = history.latest().map_or(0, |l| l.lease);
        let replaced = history
            .latest()
            .is_some_and(|l| l.mod_revision == revision.mod_revision);
        if replaced {
            history.revisions.pop();
        } else {
            self.revision_count += 1;
        }
        debug_assert!(
            history
                .latest()
                .is_none_or(|l| l.mod_revision < revision.mod_revision)
        );
        history.revisions.push(revision);
        (old_lease, replaced)
    }

    /// Publishes `key`'s revision `rev`: returns it with the key's previous
    /// live state (for a watch event), then drops the in-memory values of
    /// the revisions before it, all in one lookup. A later revision of the
    /// same batch still finds this one's value for its own `prev_kv`.
    pub fn publish(&mut self, key: &[u8], rev: i64) -> Option<(Revision, Option<Revision>)> {
        let history = self.keys.get_mut(key)?;
        let this = history
            .revisions
            .iter()
            .rposition(|r| r.mod_revision == rev)?;
        let prev = history.before(rev).cloned();
        let published = history.revisions[this].clone();
        release(&mut history.revisions[..=this]);
        Some((published, prev))
    }

    /// Takes back every revision above `rev` of `key` (a failed commit).
    pub fn truncate_above(&mut self, key: &[u8], rev: i64) {
        if let Some(history) = self.keys.get_mut(key) {
            let keep = history.revisions.partition_point(|r| r.mod_revision <= rev);
            self.revision_count -= history.revisions.len() - keep;
            history.revisions.truncate(keep);
            if history.revisions.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Drops the in-memory values of every revision of `key` older than its
    /// newest one: once a newer revision is published, readers of the old
    /// one are rare and the log has its value.
    pub fn release_old_values(&mut self, key: &[u8]) {
        if let Some(history) = self.keys.get_mut(key) {
            release(&mut history.revisions);
        }
    }

    /// Compacts every key at `rev` (see the module docs) and returns the
    /// `(mod_revision, key)` of each revision removed, for the log to delete.
    pub fn compact(&mut self, rev: i64) -> Vec<(i64, Bytes)> {
        let mut removed = Vec::new();
        let mut from = Some(Bytes::new());
        while let Some(start) = from {
            from = self.compact_some(rev, start, usize::MAX, &mut removed);
        }
        removed
    }

    /// Compacts at `rev` up to `max_keys` keys from `from` on, appending
    /// what it removed; returns the key to continue from, if any. Readers
    /// at or above `rev` see the same answers before and after, so a
    /// compaction can proceed in steps between write batches.
    pub fn compact_some(
        &mut self,
        rev: i64,
        from: Bytes,
        max_keys: usize,
        removed: &mut Vec<(i64, Bytes)>,
    ) -> Option<Bytes> {
        let mut batch: Vec<Bytes> = Vec::new();
        let mut next = None;
        for key in self
            .keys
            .range::<[u8], _>((Bound::Included(from.as_ref()), Bound::Unbounded))
            .map(|(k, _)| k)
        {
            if batch.len() == max_keys {
                next = Some(key.clone());
                break;
            }
            batch.push(key.clone());
        }
        let before = removed.len();
        for key in batch {
            let Some(history) = self.keys.get_mut(&key) else {
                continue;
            };
            let revs = &mut history.revisions;
            let upto = revs.partition_point(|r| r.mod_revision <= rev);
            if upto == 0 {
                continue;
            }
            // Keep the newest revision at or below `rev`, unless it is a
            // tombstone strictly below `rev` (it only says "absent").
            let newest = &revs[upto - 1];
            let drop = if newest.is_tombstone() && newest.mod_revision < rev {
                upto
            } else {
                upto - 1
            };
            removed.extend(revs.drain(..drop).map(|r| (r.mod_revision, key.clone())));
            if revs.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.revision_count -= removed.len() - before;
        next
    }

    /// Number of keys with any retained history (tombstones included).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Number of revisions retained.
    pub fn revision_count(&self) -> usize {
        self.revision_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(mod_revision: i64, create_revision: i64, version: i64) -> Revision {
        Revision {
            mod_revision,
            create_revision,
            version,
            lease: 0,
            sub: 0,
            value: Some(Bytes::from_static(b"v")),
        }
    }

    fn example() -> Index {
        let mut idx = Index::default();
        let a = Bytes::from_static(b"a");
        idx.push(a.clone(), rev(2, 2, 1));
        idx.push(a.clone(), rev(3, 2, 2));
        idx.push(a.clone(), rev(4, 0, 0));
        idx.push(a, rev(6, 6, 1));
        idx
    }

    #[test]
    fn reads_follow_the_worked_example() {
        let idx = example();
        let h = idx.get(b"a").unwrap();
        assert!(h.at(1).is_none());
        assert_eq!(h.at(3).unwrap().version, 2);
        assert!(h.at(4).is_none());
        assert!(h.at(5).is_none());
        assert_eq!(h.at(6).unwrap().create_revision, 6);
    }

    #[test]
    fn compaction_keeps_what_stays_readable() {
        let mut idx = example();
        let removed = idx.compact(3);
        assert_eq!(removed.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
        assert_eq!(idx.get(b"a").unwrap().at(3).unwrap().version, 2);
        let removed = idx.compact(5);
        assert_eq!(removed.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(idx.revision_count(), 1);
    }

    #[test]
    fn compaction_at_a_tombstone_keeps_it() {
        let mut idx = example();
        idx.compact(4);
        assert_eq!(idx.get(b"a").unwrap().revisions()[0].mod_revision, 4);
    }

    #[test]
    fn inverted_ranges_hold_nothing() {
        let idx = example();
        let mut n = 0;
        idx.visit(
            &KeyRange::new(Bytes::from_static(b"b"), Bytes::from_static(b"a")),
            |_, _| {
                n += 1;
                true
            },
        );
        assert_eq!(n, 0);
    }
}

#[cfg(test)]
mod publish_tests {
    use super::*;

    fn put(rev: i64, v: &'static [u8]) -> Revision {
        Revision {
            mod_revision: rev,
            create_revision: 2,
            version: rev - 1,
            lease: 0,
            sub: 0,
            value: Some(Bytes::from_static(v)),
        }
    }

    /// Two revisions of one key in one batch: the second's prev_kv is the
    /// first, with its value, and only the newest keeps a value afterwards.
    #[test]
    fn a_batch_writing_one_key_twice_keeps_prev_values() {
        let mut idx = Index::default();
        let k = Bytes::from_static(b"k");
        idx.push(k.clone(), put(2, b"a"));
        idx.push(k.clone(), put(3, b"b"));
        idx.push(k.clone(), put(4, b"c"));
        let (this, prev) = idx.publish(b"k", 3).unwrap();
        assert_eq!(
            (this.value.as_deref(), prev.unwrap().value.as_deref()),
            (Some(&b"b"[..]), Some(&b"a"[..]))
        );
        let (this, prev) = idx.publish(b"k", 4).unwrap();
        assert_eq!(
            (this.value.as_deref(), prev.unwrap().value.as_deref()),
            (Some(&b"c"[..]), Some(&b"b"[..]))
        );
        let values: Vec<_> = idx
            .get(b"k")
            .unwrap()
            .revisions()
            .iter()
            .map(|r| r.value.is_some())
            .collect();
        assert_eq!(values, vec![false, false, true]);
    }
}
