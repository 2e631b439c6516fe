//! Object keys, checked once at the edge.
//!
//! Invariant: a [`Key`] is UTF-8, 1–1024 bytes, has no leading `/`, no empty,
//! `.` or `..` segment, no control characters, and does not start with the
//! reserved prefix `.walship/`. Every such key maps to exactly one object
//! path, the same on every target.

use std::fmt;

use object_store::path::Path;

use crate::error::{Error, Result};

/// Longest key in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Keys under this prefix are walship's own (health markers).
pub const RESERVED_PREFIX: &str = ".walship/";

/// A validated object key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Checks `key` against the key rules.
    pub fn parse(key: &str) -> Result<Key> {
        let bad = |reason: &'static str| {
            let mut shown: String = key.chars().take(80).collect();
            if shown.len() < key.len() {
                shown.push('…');
            }
            Err(Error::InvalidKey { key: shown, reason })
        };
        if key.is_empty() {
            return bad("a key must not be empty");
        }
        if key.len() > MAX_KEY_BYTES {
            return bad("a key must be at most 1024 bytes");
        }
        if key.starts_with('/') {
            return bad("a key must not start with '/'");
        }
        if key.chars().any(char::is_control) {
            return bad("a key must not contain control characters");
        }
        if key.starts_with(RESERVED_PREFIX) {
            return bad("keys under '.walship/' are reserved for walship's own markers");
        }
        for segment in key.split('/') {
            match segment {
                "" => return bad("a key must not have an empty segment ('//' or a trailing '/')"),
                "." => return bad("a key must not have a '.' segment"),
                ".." => return bad("a key must not have a '..' segment"),
                _ => {}
            }
        }
        Ok(Key(key.to_string()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The object path this key is stored under on every target.
    pub fn object_path(&self) -> Path {
        object_path(&self.0)
    }
}

/// The object path for a key that is already known to be valid (read back
/// from the log).
pub(crate) fn object_path(key: &str) -> Path {
    Path::from(key)
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_keys() {
        for k in [
            "a",
            "a/b/c",
            "results/2024 report.json",
            "ünïcødé/κλειδί",
            "a.b/..c/d..",
            &"x".repeat(1024),
        ] {
            let key = Key::parse(k).unwrap_or_else(|e| panic!("{k:?}: {e}"));
            assert_eq!(key.as_str(), k);
            assert_eq!(key.object_path().parts().count(), k.split('/').count());
        }
    }

    #[test]
    fn each_rule_is_enforced_with_its_reason() {
        let cases = [
            ("", "empty"),
            ("/abs", "start with '/'"),
            ("a/../b", "'..' segment"),
            ("..", "'..' segment"),
            ("a/./b", "'.' segment"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a\nb", "control"),
            ("a\u{7f}b", "control"),
            (".walship/health", "reserved"),
        ];
        for (k, why) in cases {
            let err = Key::parse(k).expect_err(k).to_string();
            assert!(err.contains(why), "{k:?}: {err}");
        }
        let err = Key::parse(&"x".repeat(1025))
            .expect_err("too long")
            .to_string();
        assert!(err.contains("1024 bytes"), "{err}");
    }
}
