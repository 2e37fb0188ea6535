//! etcd's key ranges over the store's UTF-8 keys.
//!
//! Keys compare as bytes, which is also `String`'s (and so the store's
//! `BTreeMap`'s) order. An etcd range end is any byte string: the end of a
//! prefix range is usually not UTF-8 (`"a\u{ff}"` ends at `a\xc3\xc0`).

use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::limits::MAX_KEY_BYTES;

/// Longest range end, in bytes: one past the longest key, so "this key and
/// everything that extends it by one zero byte" stays expressible.
pub const MAX_RANGE_END_BYTES: usize = MAX_KEY_BYTES + 1;

/// A set of keys, as an etcd request names it with `key` and `range_end`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyRange {
    /// Exactly this key (etcd: empty `range_end`).
    One(String),
    /// Every key `>=` this one (etcd: `range_end == "\0"`; `From("")` is
    /// every key).
    From(String),
    /// `start <= key < end`, `end` compared as bytes. Empty when
    /// `end <= start`, as in etcd.
    Below { start: String, end: Vec<u8> },
}

impl KeyRange {
    /// The range an etcd request means by `key` and `range_end`.
    ///
    /// Keys must be UTF-8 here (the store's keys are strings), non-empty (as
    /// etcd requires) and at most [`MAX_KEY_BYTES`] long; `key == "\0"` with
    /// `range_end == "\0"` is etcd's "all keys" and becomes `From("")`.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> Result<KeyRange, KvError> {
        if key.is_empty() {
            return Err(KvError::InvalidKey("key is not provided (empty)".into()));
        }
        let key = std::str::from_utf8(key).map_err(|e| {
            KvError::InvalidKey(format!(
                "key is not UTF-8 (byte {} is invalid); this store's keys are text",
                e.valid_up_to()
            ))
        })?;
        let range = match range_end {
            [] => KeyRange::One(key.to_owned()),
            [0] if key == "\0" => KeyRange::From(String::new()),
            [0] => KeyRange::From(key.to_owned()),
            end => KeyRange::Below {
                start: key.to_owned(),
                end: end.to_vec(),
            },
        };
        range.validate()?;
        Ok(range)
    }

    /// Every key that starts with `p` (etcd's `WithPrefix`): up to `p` with
    /// its last byte below 0xff incremented and what follows dropped, or
    /// every key from `p` when there is no such byte (and when `p` is empty:
    /// every key).
    pub fn prefix(p: &str) -> KeyRange {
        let bytes = p.as_bytes();
        match bytes.iter().rposition(|&b| b < 0xff) {
            Some(i) => {
                let mut end = bytes[..=i].to_vec();
                end[i] += 1;
                KeyRange::Below {
                    start: p.to_owned(),
                    end,
                }
            }
            None => KeyRange::From(p.to_owned()),
        }
    }

    /// Is `key` in the range?
    pub fn contains(&self, key: &str) -> bool {
        match self {
            KeyRange::One(one) => key == one,
            KeyRange::From(start) => key >= start.as_str(),
            KeyRange::Below { start, end } => {
                key >= start.as_str() && key.as_bytes() < end.as_slice()
            }
        }
    }

    /// The smallest key the range can hold (the store scans from here).
    pub fn start(&self) -> &str {
        match self {
            KeyRange::One(start) | KeyRange::From(start) | KeyRange::Below { start, .. } => start,
        }
    }

    /// Checks the sizes: a `One` key is a valid key; a range start may be
    /// empty (every key from the first) but not longer than a key; an end is
    /// at most [`MAX_RANGE_END_BYTES`].
    pub fn validate(&self) -> Result<(), KvError> {
        match self {
            KeyRange::One(key) => crate::command::validate_key(key),
            KeyRange::From(start) => check_start(start),
            KeyRange::Below { start, end } => {
                check_start(start)?;
                if end.len() > MAX_RANGE_END_BYTES {
                    return Err(KvError::InvalidKey(format!(
                        "range end is {} bytes long, at most {MAX_RANGE_END_BYTES} allowed",
                        end.len()
                    )));
                }
                Ok(())
            }
        }
    }
}

fn check_start(start: &str) -> Result<(), KvError> {
    if start.len() > MAX_KEY_BYTES {
        return Err(KvError::InvalidKey(format!(
            "range start is {} bytes long, at most {MAX_KEY_BYTES} allowed",
            start.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn below(start: &str, end: &[u8]) -> KeyRange {
        KeyRange::Below {
            start: start.into(),
            end: end.to_vec(),
        }
    }

    #[test]
    fn from_etcd_shapes() {
        assert_eq!(
            KeyRange::from_etcd(b"a", b"").unwrap(),
            KeyRange::One("a".into())
        );
        assert_eq!(
            KeyRange::from_etcd(b"a", b"\0").unwrap(),
            KeyRange::From("a".into())
        );
        // etcd's "all keys".
        let all = KeyRange::from_etcd(b"\0", b"\0").unwrap();
        assert_eq!(all, KeyRange::From(String::new()));
        assert!(all.contains("\0") && all.contains("a") && all.contains(""));
        // "\0" alone is a key like any other.
        assert_eq!(
            KeyRange::from_etcd(b"\0", b"").unwrap(),
            KeyRange::One("\0".into())
        );
        assert_eq!(
            KeyRange::from_etcd(b"a", b"c\xff").unwrap(),
            below("a", b"c\xff")
        );
    }

    #[test]
    fn from_etcd_refuses_bad_keys() {
        for (key, end) in [
            (&b"\xff"[..], &b""[..]),
            (b"a\xc3", b"\0"),
            (b"", b""),
            (b"", b"\0"),
        ] {
            let e = KeyRange::from_etcd(key, end).unwrap_err();
            assert!(matches!(e, KvError::InvalidKey(_)), "{key:?}: {e}");
        }
        let e = KeyRange::from_etcd(b"a\xff", b"").unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        let long = vec![b'k'; MAX_KEY_BYTES + 1];
        assert!(KeyRange::from_etcd(&long, b"").is_err());
        assert!(KeyRange::from_etcd(&long, b"\0").is_err());
        assert!(KeyRange::from_etcd(b"a", &vec![b'z'; MAX_RANGE_END_BYTES + 1]).is_err());
        assert!(KeyRange::from_etcd(b"a", &vec![b'z'; MAX_RANGE_END_BYTES]).is_ok());
    }

    #[test]
    fn prefixes() {
        assert_eq!(KeyRange::prefix("ab"), below("ab", b"ac"));
        assert_eq!(KeyRange::prefix(""), KeyRange::From(String::new()));
        // 'ÿ' is c3 bf: the end is not UTF-8.
        let p = KeyRange::prefix("a\u{ff}");
        assert_eq!(p, below("a\u{ff}", b"a\xc3\xc0"));
        assert!(p.contains("a\u{ff}") && p.contains("a\u{ff}\u{10ffff}"));
        assert!(!p.contains("a\u{100}") && !p.contains("a") && !p.contains("b"));
        let p = KeyRange::prefix("a/");
        for (key, inside) in [
            ("a/", true),
            ("a/x", true),
            ("a/\u{10ffff}", true),
            ("a", false),
            ("a0", false),
            ("a.", false),
            ("b", false),
        ] {
            assert_eq!(p.contains(key), inside, "{key:?}");
        }
    }

    #[test]
    fn contains_edges() {
        let one = KeyRange::One("k".into());
        assert!(one.contains("k") && !one.contains("k\0") && !one.contains("j"));
        let from = KeyRange::From("k".into());
        assert!(from.contains("k") && from.contains("z") && !from.contains("j\u{ff}"));
        let r = below("b", b"d");
        assert!(r.contains("b") && r.contains("c\u{10ffff}") && !r.contains("d"));
        assert!(!r.contains("a") && !r.contains("d\0"));
        // An end at or below the start holds nothing.
        for end in [&b"b"[..], b"a", b""] {
            let empty = below("b", end);
            assert!(["", "a", "b", "b\0", "c"]
                .iter()
                .all(|k| !empty.contains(k)));
        }
    }
}
