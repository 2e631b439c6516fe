//! Conflicts: what they are, how each strategy decides, and what is kept
//! about them. Pure: the I/O that finds and resolves them is in `apply`.
//!
//! A conflict is a target holding a version of a key that this log did not
//! write there (another sidecar writing the same bucket, a hand edit). Every
//! version carries a [`Tag`]: its entry timestamp and its origin (the id of
//! the sidecar that wrote it). Tags are totally ordered, so two sidecars
//! that meet the same two versions decide the same way, whichever of them
//! finds the conflict and on whichever target:
//!
//! - `last_write_wins`: the greater tag (newer timestamp; on a tie the
//!   greater origin id).
//! - `first_write_wins`: the smaller tag. A hand edit made before the entry
//!   that meets it is the version already there, and stays.
//! - `primary_wins`: a version on a replica that no walship sidecar wrote
//!   (a hand edit) never wins: the replica gets the acting primary's version
//!   (or this entry, when the primary still holds something older). On the
//!   acting primary, and between versions that sidecars wrote, the greater
//!   tag wins: the primary decides so, and deciding alike on the replicas
//!   is what makes them end with the primary's version whichever sidecar
//!   gets where first.
//! - `merge`: a [`Merge`] combines both (JSON deep merge in the sidecar);
//!   bytes it cannot merge go to `manual`.
//! - `manual`: a durable [`ConflictRecord`]; the target keeps its version
//!   (and later entries of that key wait) until `conflicts resolve`.
//!
//! Invariant: a conflict is counted as detected once, when a version is
//! first found, and as resolved once, when its decision has been carried
//! out on the target (or, for `manual`, when someone resolved it).

use serde::{Deserialize, Serialize};

use crate::config::ConflictResolution;

/// Object metadata names (lowercase letters only: Azure wants identifiers,
/// S3 sends them as `x-amz-meta-…` headers).
pub const META_ORIGIN: &str = "walshiporigin";
/// The entry timestamp, ms since the Unix epoch, in decimal.
pub const META_TS: &str = "walshipts";
/// The entry's seq in its origin's log, in decimal.
pub const META_SEQ: &str = "walshipseq";

/// Whether `a` is one of the three metadata walship stamps on each write.
pub(crate) fn is_walship_meta(a: &object_store::Attribute) -> bool {
    matches!(a, object_store::Attribute::Metadata(n) if [META_ORIGIN, META_TS, META_SEQ].contains(&n.as_ref()))
}

/// What orders two versions of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tag {
    /// Entry timestamp (ms since the epoch); for a version without walship
    /// metadata, the object's last-modified time.
    pub ts_ms: u64,
    /// The writing sidecar's id; empty when unknown (a hand edit).
    pub origin: String,
}

/// What to do with a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write this log's version over the target's.
    Ours,
    /// Keep the target's version.
    Theirs,
    /// Write the acting primary's version (primary_wins, on a replica).
    Primary,
    /// Combine both with the merge function.
    Merge,
    /// Record it for a person to decide.
    Manual,
}

/// How `strategy` decides between this log's entry (`ours`) and a target's
/// version (`theirs`). `on_primary`: the target is the acting primary.
pub fn decide(strategy: ConflictResolution, ours: &Tag, theirs: &Tag, on_primary: bool) -> Verdict {
    let newer_is_ours = ours > theirs;
    match strategy {
        ConflictResolution::LastWriteWins => {
            if newer_is_ours {
                Verdict::Ours
            } else {
                Verdict::Theirs
            }
        }
        ConflictResolution::FirstWriteWins => {
            if newer_is_ours {
                Verdict::Theirs
            } else {
                Verdict::Ours
            }
        }
        ConflictResolution::PrimaryWins if !on_primary && theirs.origin.is_empty() => {
            Verdict::Primary
        }
        ConflictResolution::PrimaryWins => {
            if newer_is_ours {
                Verdict::Ours
            } else {
                Verdict::Theirs
            }
        }
        ConflictResolution::Merge => Verdict::Merge,
        ConflictResolution::Manual => Verdict::Manual,
    }
}

/// Whether this log's next entry may replace a version a target is known to
/// hold from another origin, found in an earlier conflict and kept.
/// (`merge` and `manual` settled it already; a later write is a new intent.)
pub fn may_replace(
    strategy: ConflictResolution,
    ours: &Tag,
    theirs: &Tag,
    on_primary: bool,
) -> bool {
    match strategy {
        ConflictResolution::LastWriteWins | ConflictResolution::FirstWriteWins => {
            decide(strategy, ours, theirs, on_primary) == Verdict::Ours
        }
        ConflictResolution::PrimaryWins => ours > theirs,
        ConflictResolution::Merge | ConflictResolution::Manual => true,
    }
}

/// Combines two versions of a key (library users bring their own).
pub trait Merge: Send + Sync {
    /// The merged bytes, or `None` when these bytes cannot be merged (the
    /// conflict then goes to the manual queue). `newer` is the version with
    /// the greater [`Tag`]; the result must depend only on the two versions,
    /// so every sidecar merges alike.
    fn merge(&self, key: &str, newer: &[u8], older: &[u8]) -> Option<Vec<u8>>;
}

/// JSON deep merge: objects merge key by key, recursively; anything else
/// (scalars, arrays, a type mismatch) takes the newer value. Both versions
/// must be JSON objects; other bytes are not merged.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonMerge;

impl Merge for JsonMerge {
    fn merge(&self, _key: &str, newer: &[u8], older: &[u8]) -> Option<Vec<u8>> {
        let newer: serde_json::Value = serde_json::from_slice(newer).ok()?;
        let older: serde_json::Value = serde_json::from_slice(older).ok()?;
        if !(newer.is_object() && older.is_object()) {
            return None;
        }
        serde_json::to_vec(&deep_merge(older, newer)).ok()
    }
}

fn deep_merge(older: serde_json::Value, newer: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (older, newer) {
        (Value::Object(mut base), Value::Object(top)) => {
            for (k, v) in top {
                let merged = match base.remove(&k) {
                    Some(old) => deep_merge(old, v),
                    None => v,
                };
                base.insert(k, merged);
            }
            Value::Object(base)
        }
        (_, newer) => newer,
    }
}

/// The version walship knows a target holds for a key (side table
/// `versions`). The next write to the key is conditional on `etag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// The object's e-tag, when the store gives one.
    pub etag: Option<String>,
    /// The object's version, when the store gives one.
    pub version: Option<String>,
    /// Who wrote it and when.
    pub tag: Tag,
    /// This log's seq when this sidecar wrote it; 0 otherwise.
    pub seq: u64,
    /// A conflict was detected on this version and its decision is not
    /// carried out yet (counted resolved when it is).
    #[serde(default)]
    pub resolving: bool,
    /// An open manual conflict holds the key on this target.
    #[serde(default)]
    pub conflict: Option<u64>,
    /// Whether sled holds this record (not stored).
    #[serde(skip)]
    pub in_sled: bool,
}

/// One side of a recorded conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Its e-tag (for `primary`: what this sidecar last wrote there).
    pub etag: Option<String>,
    /// Entry timestamp or last-modified, ms since the epoch.
    pub ts_ms: u64,
    /// Size in bytes.
    pub size: u64,
    /// The writing sidecar's id; empty when unknown.
    pub origin: String,
}

/// An open manual conflict (side table `conflicts`; `walship conflicts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// Its id (`conflicts resolve ID`).
    pub id: u64,
    /// The key.
    pub key: String,
    /// The target holding the other version.
    pub target: String,
    /// When it was detected (ms since the epoch).
    pub detected_ms: u64,
    /// The newest entry of the key in this log that the target did not get.
    pub seq: u64,
    /// "put" or "delete".
    pub op: String,
    /// This log's version.
    pub primary: VersionInfo,
    /// The version the target holds.
    pub replica: VersionInfo,
}

/// Which version `conflicts resolve` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The acting primary's version (for a conflict on the acting primary:
    /// this log's newest entry of the key).
    Primary,
    /// The version the target holds.
    Replica,
}

impl std::str::FromStr for Keep {
    type Err = String;
    fn from_str(s: &str) -> Result<Keep, String> {
        match s {
            "primary" => Ok(Keep::Primary),
            "replica" => Ok(Keep::Replica),
            other => Err(format!(
                "keep must be \"primary\" or \"replica\", not {other:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(ts: u64, origin: &str) -> Tag {
        Tag {
            ts_ms: ts,
            origin: origin.into(),
        }
    }

    #[test]
    fn every_sidecar_decides_alike() {
        // Two sidecars meeting the same two versions, from either side.
        let a = tag(100, "a");
        let b = tag(200, "b");
        for (strategy, winner) in [
            (ConflictResolution::LastWriteWins, &b),
            (ConflictResolution::FirstWriteWins, &a),
        ] {
            let from_a = decide(strategy, &a, &b, false);
            let from_b = decide(strategy, &b, &a, false);
            let a_picks = if from_a == Verdict::Ours { &a } else { &b };
            let b_picks = if from_b == Verdict::Ours { &b } else { &a };
            assert_eq!(a_picks, winner, "{strategy:?}");
            assert_eq!(b_picks, winner, "{strategy:?}");
        }
    }

    #[test]
    fn equal_timestamps_are_broken_by_origin() {
        let a = tag(100, "a");
        let b = tag(100, "b");
        let lww = ConflictResolution::LastWriteWins;
        assert_eq!(decide(lww, &b, &a, false), Verdict::Ours);
        assert_eq!(decide(lww, &a, &b, false), Verdict::Theirs);
        // A hand edit (no origin) loses a tie.
        assert_eq!(decide(lww, &a, &tag(100, ""), false), Verdict::Ours);
    }

    #[test]
    fn primary_wins_defers_to_the_primary_only_on_replicas() {
        let ours = tag(100, "a");
        let newer = tag(200, "");
        let pw = ConflictResolution::PrimaryWins;
        // A hand edit on a replica never wins there...
        assert_eq!(decide(pw, &ours, &newer, false), Verdict::Primary);
        // ...on the primary the newer version does,
        assert_eq!(decide(pw, &ours, &newer, true), Verdict::Theirs);
        assert_eq!(decide(pw, &newer, &ours, true), Verdict::Ours);
        // and versions from sidecars are ordered alike everywhere.
        let other = tag(200, "b");
        assert_eq!(decide(pw, &ours, &other, false), Verdict::Theirs);
        assert_eq!(decide(pw, &other, &ours, false), Verdict::Ours);
        assert_eq!(
            decide(ConflictResolution::Merge, &ours, &newer, true),
            Verdict::Merge
        );
        assert_eq!(
            decide(ConflictResolution::Manual, &ours, &newer, false),
            Verdict::Manual
        );
    }

    #[test]
    fn a_kept_foreign_version_is_replaced_only_by_what_would_win() {
        let theirs = tag(200, "b");
        let older = tag(100, "a");
        let newer = tag(300, "a");
        let lww = ConflictResolution::LastWriteWins;
        assert!(!may_replace(lww, &older, &theirs, false));
        assert!(may_replace(lww, &newer, &theirs, false));
        let fww = ConflictResolution::FirstWriteWins;
        assert!(may_replace(fww, &older, &theirs, false));
        assert!(!may_replace(fww, &newer, &theirs, false));
        assert!(may_replace(
            ConflictResolution::Manual,
            &older,
            &theirs,
            false
        ));
    }

    #[test]
    fn json_deep_merge_takes_both_sides_and_the_newer_leaf() {
        let older = br#"{"a":1,"shared":{"x":1,"y":1},"list":[1]}"#;
        let newer = br#"{"b":2,"shared":{"y":2,"z":2},"list":[2]}"#;
        let merged = JsonMerge
            .merge("k", newer, older)
            .expect("both are objects");
        let v: serde_json::Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":1,"b":2,"shared":{"x":1,"y":2,"z":2},"list":[2]})
        );
    }

    #[test]
    fn json_merge_without_clashing_leaves_is_the_same_bytes_either_way() {
        // Two sidecars may merge in either order; where no leaf clashes the
        // bytes (keys sorted) must not depend on it.
        let x = br#"{"z":1,"a":{"q":1}}"#;
        let y = br#"{"m":2,"a":{"p":2}}"#;
        let xy = JsonMerge.merge("k", x, y).unwrap();
        assert_eq!(Some(xy.clone()), JsonMerge.merge("k", y, x));
        assert_eq!(xy, br#"{"a":{"p":2,"q":1},"m":2,"z":1}"#.to_vec());
    }

    #[test]
    fn non_json_and_non_objects_are_not_merged() {
        assert_eq!(JsonMerge.merge("k", b"plain", br#"{"a":1}"#), None);
        assert_eq!(JsonMerge.merge("k", br#"{"a":1}"#, b"\xff\x00"), None);
        assert_eq!(JsonMerge.merge("k", b"[1]", b"[2]"), None);
        assert_eq!(JsonMerge.merge("k", b"1", br#"{"a":1}"#), None);
    }

    #[test]
    fn keep_parses_its_two_words_only() {
        assert_eq!("primary".parse::<Keep>(), Ok(Keep::Primary));
        assert_eq!("replica".parse::<Keep>(), Ok(Keep::Replica));
        assert!("both".parse::<Keep>().unwrap_err().contains("primary"));
    }
}
