//! Keys every target can hold (SPEC guarantee 11), checked at the door.
//!
//! A local directory cannot hold `a` beside `a/b` (one would be a file and
//! a directory at once) nor a path segment over 255 bytes (NAME_MAX). Such
//! a key accepted into the log would be retried on that target forever, so
//! with a `file://` target it is refused before it is appended (409, naming
//! the other key and the target), and nothing changes.
//!
//! Invariant: no two *live* keys (newest entry a put) of the log, nor a
//! live key and a write in flight, are one the directory of the other.
//! Writes in flight are registered here before the index is consulted and
//! leave once their append is answered, when the key index already shows
//! them: two concurrent writers of `a` and `a/b` cannot both pass.

use std::sync::{Arc, Mutex};

/// Longest path segment a local file system holds.
pub(crate) const MAX_SEGMENT_BYTES: usize = 255;

/// The first segment of `key` whose file name (object_store percent-
/// encodes some characters, `~` to `%7E`) is longer than
/// [`MAX_SEGMENT_BYTES`], with that length.
pub(crate) fn long_segment(key: &str) -> Option<(&str, usize)> {
    key.split('/')
        .map(|s| (s, object_store::path::PathPart::from(s).as_ref().len()))
        .find(|(_, n)| *n > MAX_SEGMENT_BYTES)
}

/// Whether one key is a directory of the other (`a` and `a/b`).
pub(crate) fn nested(a: &str, b: &str) -> bool {
    let under = |short: &str, long: &str| {
        long.len() > short.len() && long.starts_with(short) && long.as_bytes()[short.len()] == b'/'
    };
    under(a, b) || under(b, a)
}

/// Every proper directory of `key`: `a`, `a/b` for `a/b/c`.
pub(crate) fn parents(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/').map(move |(i, _)| &key[..i])
}

/// Keys of puts between their check and their answer.
#[derive(Debug, Default, Clone)]
pub(crate) struct InFlight(Arc<Mutex<Vec<String>>>);

/// A registered key; it leaves the registry when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    set: InFlight,
    key: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut v = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = v.iter().position(|k| *k == self.key) {
            v.swap_remove(i);
        }
    }
}

impl InFlight {
    /// Registers `key`, or names the write in flight it cannot live beside.
    pub(crate) fn register(&self, key: &str) -> Result<Registered, String> {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = v.iter().find(|k| nested(k, key)) {
            return Err(other.clone());
        }
        v.push(key.to_string());
        Ok(Registered {
            set: self.clone(),
            key: key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_by_whole_segments() {
        assert!(nested("a", "a/b"));
        assert!(nested("a/b/c", "a"));
        assert!(nested("a/b", "a/b/c"));
        assert!(!nested("a", "ab/c"));
        assert!(!nested("a", "a"));
        assert!(!nested("a/b", "a/c"));
        assert_eq!(parents("a/b/c").collect::<Vec<_>>(), vec!["a", "a/b"]);
        assert_eq!(parents("a").count(), 0);
    }

    #[test]
    fn a_long_segment_is_found() {
        let long = "x".repeat(256);
        assert_eq!(
            long_segment(&format!("ok/{long}/z")),
            Some((long.as_str(), 256))
        );
        assert_eq!(long_segment(&format!("ok/{}", "y".repeat(255))), None);
        // On disk `~` takes three bytes: 250 + 3 * 3 is over.
        let tilde = format!("{}~~~", "y".repeat(250));
        assert_eq!(long_segment(&tilde), Some((tilde.as_str(), 259)));
    }

    #[test]
    fn writes_in_flight_exclude_their_nested_keys_until_answered() {
        let f = InFlight::default();
        let a = f.register("a/b").expect("first");
        assert_eq!(f.register("a").expect_err("nested"), "a/b");
        assert_eq!(f.register("a/b/c").expect_err("nested"), "a/b");
        let same = f.register("a/b").expect("the same key twice is fine");
        let other = f.register("b").expect("unrelated");
        drop(a);
        assert!(
            f.register("a").is_err(),
            "the second a/b is still in flight"
        );
        drop(same);
        drop(other);
        f.register("a").expect("once answered, the index decides");
    }
}
