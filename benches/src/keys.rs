//! Keys and values the workloads write.

use bytes::Bytes;

/// The key number `n` as exactly `size` bytes: zero-padded decimal, so keys
/// sort as their numbers. Numbers wider than `size` keep their low digits.
pub fn numbered_key(n: u64, size: usize) -> Vec<u8> {
    let digits = n.to_string();
    let digits = digits.as_bytes();
    if digits.len() >= size {
        return digits[digits.len() - size..].to_vec();
    }
    let mut key = vec![b'0'; size - digits.len()];
    key.extend_from_slice(digits);
    key
}

/// `prefix` followed by `n` zero-padded to 8 digits (wider when needed).
pub fn prefixed_key(prefix: &[u8], n: u64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{n:08}").as_bytes());
    Bytes::from(key)
}

/// The `range_end` that makes a range cover every key starting with
/// `prefix` (etcd's `GetPrefixRangeEnd`): the prefix with its last byte
/// below 0xff incremented and the rest dropped; `"\0"` (to the end of the
/// key space) when every byte is 0xff or the prefix is empty.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().unwrap() = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// The key just after `key` in byte order: `key + "\0"`, the continue key
/// of a paged list.
pub fn key_after(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    Bytes::from(next)
}

/// `n` random bytes, deterministic per seed.
pub fn random_bytes(n: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    Bytes::from(v)
}

/// A value of `size` bytes whose first 8 carry `seq` big-endian (the
/// watch-latency workload reads it back from the event).
pub fn sequenced_value(seq: u64, size: usize) -> Bytes {
    let mut v = vec![b'v'; size.max(8)];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

/// The sequence number `sequenced_value` put in `value`.
pub fn value_sequence(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_keys_have_their_size_and_sort() {
        assert_eq!(numbered_key(42, 8), b"00000042");
        assert_eq!(numbered_key(123456, 3), b"456");
        assert_eq!(numbered_key(7, 256).len(), 256);
        assert!(numbered_key(9, 10) < numbered_key(10, 10));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn continue_key_and_sequence() {
        assert_eq!(key_after(b"k").as_ref(), b"k\0");
        let v = sequenced_value(77, 32);
        assert_eq!(v.len(), 32);
        assert_eq!(value_sequence(&v), Some(77));
        assert_eq!(value_sequence(b"short"), None);
        assert_eq!(prefixed_key(b"/p/", 5).as_ref(), b"/p/00000005");
        assert_eq!(random_bytes(16, 1), random_bytes(16, 1));
    }
}
