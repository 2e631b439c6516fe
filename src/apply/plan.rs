//! What applying one entry to one target decides, apart from the I/O that
//! carries it out.
//!
//! The executor (`Engine`, in `apply/mod.rs`) reads what a decision needs
//! (the version walship knows the target holds, the version a HEAD or GET
//! finds there), asks a function here, and does what it answers. Nothing
//! here reads or writes anything: each function is a pure decision, with
//! its tests below.
//!
//! The decisions, in the order an entry meets them:
//!
//! 1. [`first_step`]: replay over whatever is there, wait with an open
//!    manual conflict, keep a foreign version that still wins, or write.
//! 2. [`put_mode`]: a conditional put on the known e-tag, a create, or
//!    (where the store lacks the mode) a HEAD and [`holds_expected`] first.
//!    [`lacked_by`] / [`missing_cap`] say what a "not implemented" teaches.
//! 3. A refused write: [`read_body`] says whether the bytes are needed to
//!    tell whose the found version is, [`owner`] says whose it is (or that
//!    the log must be searched, [`own_scan`]), and [`after_refused`] what
//!    follows: write again, record it as there already, or a conflict.
//! 4. A delete: [`delete_step`] against what a HEAD found.
//! 5. What is recorded: [`stamp_tag`], [`recorded_seq`], [`written`],
//!    [`found_seq`] (a version copied from another target), and for a merge
//!    [`merge_order`] / [`merged_tag`].
//!
//! Invariants the tests hold these functions to:
//! - a write is never unconditional outside a replay or a resync unless a
//!   HEAD has just shown the expected version (or nothing) there;
//! - a version another writer made is never taken for this sidecar's;
//! - a version is recorded with this log's seq only when this log's entry
//!   wrote it (its own tag, or an entry that adopted another's version).

use bytes::Bytes;
use object_store::{Attributes, PutMode, UpdateVersion};

use crate::codec::{Entry, Op};
use crate::config::ConflictResolution;
use crate::conflict::{self, Known, Tag, VersionInfo};
use crate::target_state::Caps;

/// A version found on a target.
#[derive(Debug, Clone, Default)]
pub(super) struct Found {
    pub(super) etag: Option<String>,
    pub(super) version: Option<String>,
    pub(super) size: u64,
    pub(super) tag: Tag,
    /// `walshipseq`, when present.
    pub(super) seq: Option<u64>,
    /// Whether it carried `walshiporigin`.
    pub(super) has_origin: bool,
    pub(super) bytes: Option<Bytes>,
    /// Its attributes other than walship's own.
    pub(super) content: Attributes,
}

impl Found {
    /// It, as the known version of its key, recorded with `seq`.
    pub(super) fn known(&self, seq: u64) -> Known {
        Known {
            etag: self.etag.clone(),
            version: self.version.clone(),
            tag: self.tag.clone(),
            seq,
            resolving: false,
            conflict: None,
            in_sled: false,
        }
    }

    /// It, as one side of a conflict record.
    pub(super) fn info(&self) -> VersionInfo {
        VersionInfo {
            etag: self.etag.clone(),
            ts_ms: self.tag.ts_ms,
            size: self.size,
            origin: self.tag.origin.clone(),
        }
    }
}

/// Who is deciding, and where.
#[derive(Debug, Clone, Copy)]
pub(super) struct Who<'a> {
    /// This sidecar's origin id.
    pub(super) origin: &'a str,
    pub(super) strategy: ConflictResolution,
    /// Whether the target is the acting primary.
    pub(super) on_primary: bool,
}

/// Step 1: what to do with an entry, from what is known of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum First {
    /// A replay: this log's version over whatever the target holds.
    Force,
    /// An open manual conflict holds the key: the entry waits with it.
    Hold(u64),
    /// A foreign version kept by an earlier decision wins over this entry
    /// too: the entry lost, and the kept version is adopted again (it is
    /// not the log's newest). `settle`: its decision was not yet counted
    /// as carried out. `tag`: the tag the adopted entry carries (another
    /// sidecar's; `None` for a hand edit).
    KeepTheirs { settle: bool, tag: Option<Tag> },
    /// As `KeepTheirs`, but an adoption is under way: this entry may be
    /// the one it is appending, readable in the log a moment before it is
    /// recorded as adopted. Decide again once it is recorded (else the
    /// entry would be taken for one that lost, and adopted once more).
    Wait,
    /// Write the entry (a put or a delete, by its op).
    Write,
}

/// Step 1. `forced`: the entry is within a replay; `adopted`: it is an
/// entry that adopted a foreign version (it replaces that version whatever
/// the strategy says); `adopting`: an adoption was under way when
/// `adopted` was read; `ours`: the tag a write of it carries (asked for
/// only when a foreign version is known: most entries never build it).
pub(super) fn first_step(
    who: Who<'_>,
    forced: bool,
    adopted: bool,
    adopting: bool,
    ours: impl FnOnce() -> Tag,
    known: Option<&Known>,
) -> First {
    if forced {
        return First::Force;
    }
    let Some(k) = known else {
        return First::Write;
    };
    if let Some(id) = k.conflict {
        return First::Hold(id);
    }
    if k.tag.origin != who.origin
        && !adopted
        && !conflict::may_replace(who.strategy, &ours(), &k.tag, who.on_primary)
    {
        if adopting {
            return First::Wait;
        }
        return First::KeepTheirs {
            settle: k.resolving,
            tag: (!k.tag.origin.is_empty()).then(|| k.tag.clone()),
        };
    }
    First::Write
}

/// How a write over `over` (the version expected there; `None`: nothing)
/// is made on a store lacking `caps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mode {
    /// A conditional write the store checks itself.
    Store(PutMode),
    /// The store cannot check it: HEAD, compare ([`holds_expected`]), then
    /// overwrite. The race between the two remains (documented).
    HeadFirst,
}

/// Step 2.
pub(super) fn put_mode(over: Option<&Known>, caps: Caps) -> Mode {
    match over {
        Some(Known {
            etag: Some(etag),
            version,
            ..
        }) if !caps.contains(Caps::NO_UPDATE) => Mode::Store(PutMode::Update(UpdateVersion {
            e_tag: Some(etag.clone()),
            version: version.clone(),
        })),
        None if !caps.contains(Caps::NO_CREATE) => Mode::Store(PutMode::Create),
        _ => Mode::HeadFirst,
    }
}

/// Whether the target holds what a write over `over` expects, by what a
/// HEAD found (`cur`): nothing there always is; otherwise the e-tags must
/// be equal (a version without an e-tag is never the expected one).
pub(super) fn holds_expected(over: Option<&Known>, cur: Option<&Found>) -> bool {
    match (over, cur) {
        (_, None) => true,
        (Some(k), Some(c)) => k.etag.is_some() && k.etag == c.etag,
        (None, Some(_)) => false,
    }
}

/// The capability a "not implemented" answer to a write in `mode` shows
/// missing (`None`: an unconditional write lacks nothing).
pub(super) fn lacked_by(mode: &PutMode) -> Option<Caps> {
    match mode {
        PutMode::Update(_) => Some(Caps::NO_UPDATE),
        PutMode::Create => Some(Caps::NO_CREATE),
        PutMode::Overwrite => None,
    }
}

/// The capability object_store's "not implemented" `operation` names.
/// object_store has no typed answer for it: its text is matched.
pub(crate) fn missing_cap(operation: &str) -> Option<Caps> {
    if operation.contains("PutMode::Update") {
        Some(Caps::NO_UPDATE)
    } else if operation.contains("PutMode::Create") {
        Some(Caps::NO_CREATE)
    } else if operation.contains("attributes") {
        Some(Caps::NO_ATTRS)
    } else {
        None
    }
}

/// Whether a found version's bytes must be read to tell whose it is: only
/// when it carries no `walshiporigin` (a store without metadata, or a hand
/// edit).
pub(super) fn read_body(head: &Found) -> bool {
    !head.has_origin
}

/// Whose a found version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// This sidecar wrote it.
    Ours,
    /// Another writer did.
    Theirs,
    /// Only the log can tell: are its bytes those of an entry of the key
    /// shipped since this process opened (a crash between a put and
    /// recording it)? See [`own_scan`].
    AskLog,
}

/// Whose `cur` is, meeting entry `e` (whose write carries `ours`).
pub(super) fn owner(origin: &str, ours: &Tag, e: &Entry, cur: &Found) -> Owner {
    if cur.has_origin {
        // An entry adopting another sidecar's version carries its tag:
        // finding that very version is finding this entry's.
        return if cur.tag.origin == origin || *ours == cur.tag {
            Owner::Ours
        } else {
            Owner::Theirs
        };
    }
    match &cur.bytes {
        None => Owner::Theirs,
        Some(b) if e.op == Op::Put && *b == e.value => Owner::Ours,
        Some(_) => Owner::AskLog,
    }
}

/// The entries [`Owner::AskLog`] searches: those before `seq` shipped
/// since this process opened the target at `opened_cursor`, still in the
/// log (from `first`), at most `max` of them. `None`: none to search.
pub(super) fn own_scan(opened_cursor: u64, first: u64, seq: u64, max: u64) -> Option<(u64, u64)> {
    let from = (opened_cursor + 1).max(first).max(seq.saturating_sub(max));
    (from < seq).then(|| (from, seq - 1))
}

/// What a found version means after a conditional write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refused {
    /// Nothing is there (deleted meanwhile): write again as a create.
    Absent,
    /// A create was refused as "exists" twice where nothing is found: a
    /// directory of other keys stands at the key's path. The entry is
    /// rejected.
    Blocked,
    /// This entry's own version is there already (a re-ship): record it,
    /// write nothing.
    There(Known),
    /// An older version of this sidecar's is there: write again over it.
    Over(Known),
    /// Another writer's version: a conflict.
    Conflict,
}

/// Step 3. `created`: the refused write was a create; `absent_seen`: how
/// many times (this one included) a create was refused where nothing was
/// then found; `cur` with `ours` its owner (when found).
pub(super) fn after_refused(
    origin: &str,
    e: &Entry,
    created: bool,
    absent_seen: u32,
    cur: Option<(&Found, bool)>,
) -> Refused {
    let Some((cur, ours)) = cur else {
        return if created && absent_seen >= 2 {
            Refused::Blocked
        } else {
            Refused::Absent
        };
    };
    if !ours {
        return Refused::Conflict;
    }
    let mut mine = cur.known(cur.seq.unwrap_or(0));
    mine.tag.origin = origin.to_string();
    if cur.seq == Some(e.seq) || cur.bytes.as_ref() == Some(&e.value) {
        mine.tag.ts_ms = e.ts_ms;
        mine.seq = e.seq;
        Refused::There(mine)
    } else {
        Refused::Over(mine)
    }
}

/// What a delete does, by what a HEAD found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delete {
    /// Nothing there: record the key as absent.
    Gone,
    /// The expected version, or one this sidecar wrote: delete it.
    Remove,
    /// A version without `walshiporigin` that is not the expected one: read
    /// its bytes, then [`owner`].
    ReadBody,
    /// A version of another origin: [`owner`] decides (an adopted entry's
    /// tag is this entry's own).
    Judge,
}

/// Step 4 (object_store has no conditional delete: HEAD, then delete).
pub(super) fn delete_step(origin: &str, known: Option<&Known>, head: Option<&Found>) -> Delete {
    let Some(head) = head else {
        return Delete::Gone;
    };
    let expected = known.is_some_and(|k| k.etag.is_some() && k.etag == head.etag);
    if expected || (head.has_origin && head.tag.origin == origin) {
        Delete::Remove
    } else if head.has_origin {
        Delete::Judge
    } else {
        Delete::ReadBody
    }
}

/// The tag a write of entry `e` carries: this sidecar's, or for an entry
/// that adopted another sidecar's version, that version's (its origin
/// kept, so that sidecar sees its own version, not a conflict).
pub(super) fn stamp_tag(origin: &str, e: &Entry, adopted: Option<Tag>) -> Tag {
    adopted.unwrap_or_else(|| Tag {
        ts_ms: e.ts_ms,
        origin: origin.to_string(),
    })
}

/// The seq a version written with `tag` for entry `seq` is recorded with:
/// this log's seq when this log's entry made it (its own tag, or an
/// adopting entry), else 0.
pub(super) fn recorded_seq(origin: &str, tag: &Tag, seq: u64, adopted: bool) -> u64 {
    if tag.origin == origin || adopted {
        seq
    } else {
        0
    }
}

/// The seq a version found on another target is written (and recorded)
/// with when copied: its `walshipseq` when this sidecar wrote it, else 0.
pub(super) fn found_seq(origin: &str, found: &Found) -> u64 {
    if found.tag.origin == origin {
        found.seq.unwrap_or(0)
    } else {
        0
    }
}

/// What a resync's copy of `found` (from the acting primary) is written
/// and recorded with: its tag and seq. A version without `walshiporigin`
/// came from this log through the primary (a store without metadata): it
/// is recorded as this sidecar's.
pub(super) fn copied(origin: &str, found: &Found) -> (Tag, u64) {
    let mut tag = found.tag.clone();
    if !found.has_origin {
        tag.origin = origin.to_string();
    }
    let seq = if tag.origin == origin {
        found.seq.unwrap_or(0)
    } else {
        0
    };
    (tag, seq)
}

/// The version a write made, as recorded (`etag`, `version`: the store's
/// answer).
pub(super) fn written(etag: Option<String>, version: Option<String>, tag: Tag, seq: u64) -> Known {
    Known {
        etag,
        version,
        tag,
        seq,
        resolving: false,
        conflict: None,
        in_sled: false,
    }
}

/// A merge takes the newer version first: whether that is this entry's.
pub(super) fn merge_order(ours: &Tag, theirs: &Tag) -> bool {
    ours > theirs
}

/// The tag of a merged version: this sidecar made it, as late as the later
/// of the two.
pub(super) fn merged_tag(origin: &str, ours: &Tag, theirs: &Tag) -> Tag {
    Tag {
        ts_ms: ours.ts_ms.max(theirs.ts_ms),
        origin: origin.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conflict::{Verdict, decide};

    const ME: &str = "me";
    const ALL: [ConflictResolution; 5] = [
        ConflictResolution::LastWriteWins,
        ConflictResolution::FirstWriteWins,
        ConflictResolution::PrimaryWins,
        ConflictResolution::Merge,
        ConflictResolution::Manual,
    ];

    fn caps_all() -> [Caps; 4] {
        [
            Caps::default(),
            Caps::NO_UPDATE,
            Caps::NO_CREATE,
            Caps::NO_UPDATE.with(Caps::NO_CREATE).with(Caps::NO_ATTRS),
        ]
    }

    fn tag(ts_ms: u64, origin: &str) -> Tag {
        Tag {
            ts_ms,
            origin: origin.into(),
        }
    }

    fn entry(seq: u64, ts_ms: u64, op: Op, value: &'static [u8]) -> Entry {
        Entry {
            seq,
            ts_ms,
            op,
            key: "k".into(),
            value: Bytes::from_static(value),
            meta: None,
        }
    }

    fn known(etag: &str, t: Tag, seq: u64) -> Known {
        written(Some(etag.into()), None, t, seq)
    }

    /// The versions a target may hold for a key, as a HEAD sees them.
    fn found_kinds() -> Vec<(&'static str, Found)> {
        let f = |etag: &str, t: Tag, seq: Option<u64>, has_origin: bool| Found {
            etag: Some(etag.into()),
            tag: t,
            seq,
            has_origin,
            ..Found::default()
        };
        vec![
            ("ours, this entry", f("e5", tag(5, ME), Some(5), true)),
            ("ours, older", f("e3", tag(3, ME), Some(3), true)),
            (
                "another sidecar's, newer",
                f("x9", tag(9, "other"), Some(2), true),
            ),
            (
                "another sidecar's, older",
                f("x1", tag(1, "other"), Some(2), true),
            ),
            ("a hand edit, newer", f("h9", tag(9, ""), None, false)),
            ("a hand edit, older", f("h1", tag(1, ""), None, false)),
        ]
    }

    fn who(strategy: ConflictResolution, on_primary: bool) -> Who<'static> {
        Who {
            origin: ME,
            strategy,
            on_primary,
        }
    }

    // ---- step 1 ----

    #[test]
    fn a_replay_writes_whatever_is_known() {
        let held = Known {
            conflict: Some(7),
            ..known("x", tag(9, "other"), 0)
        };
        for s in ALL {
            for k in [None, Some(&held)] {
                assert_eq!(
                    first_step(who(s, false), true, false, false, || tag(5, ME), k),
                    First::Force
                );
            }
        }
    }

    #[test]
    fn an_open_conflict_holds_every_later_entry_of_its_key() {
        let held = Known {
            conflict: Some(7),
            ..known("e", tag(3, ME), 3)
        };
        for s in ALL {
            for adopted in [false, true] {
                assert_eq!(
                    first_step(
                        who(s, false),
                        false,
                        adopted,
                        true,
                        || tag(5, ME),
                        Some(&held)
                    ),
                    First::Hold(7)
                );
            }
        }
    }

    #[test]
    fn an_unknown_key_or_our_own_version_is_written() {
        for s in ALL {
            for p in [false, true] {
                let w = who(s, p);
                assert_eq!(
                    first_step(w, false, false, false, || tag(5, ME), None),
                    First::Write
                );
                let mine = known("e", tag(9, ME), 3);
                assert_eq!(
                    first_step(w, false, false, true, || tag(5, ME), Some(&mine)),
                    First::Write,
                    "{s:?}: our own version, even a later-stamped one, never stops our entry"
                );
            }
        }
    }

    /// Whether a kept foreign version stops an entry (ours at ts 5), per
    /// the strategies' meaning in SPEC.md: last_write_wins and
    /// primary_wins keep the newer, first_write_wins the older; merge and
    /// manual decide again at the write.
    fn kept(s: ConflictResolution, theirs_newer: bool) -> bool {
        match s {
            ConflictResolution::LastWriteWins | ConflictResolution::PrimaryWins => theirs_newer,
            ConflictResolution::FirstWriteWins => !theirs_newer,
            ConflictResolution::Merge | ConflictResolution::Manual => false,
        }
    }

    #[test]
    fn a_kept_foreign_version_stops_an_entry_exactly_when_the_strategy_keeps_it() {
        let ours = tag(5, ME);
        for s in ALL {
            for p in [false, true] {
                for (theirs, newer) in [
                    (tag(9, "other"), true),
                    (tag(1, "other"), false),
                    (tag(9, ""), true),
                    (tag(1, ""), false),
                ] {
                    for resolving in [false, true] {
                        let k = Known {
                            resolving,
                            ..known("x", theirs.clone(), 0)
                        };
                        let step =
                            first_step(who(s, p), false, false, false, || ours.clone(), Some(&k));
                        let case = format!("{s:?} on_primary={p} theirs={theirs:?}");
                        if kept(s, newer) {
                            let other = theirs.origin == "other";
                            assert_eq!(
                                step,
                                First::KeepTheirs {
                                    settle: resolving,
                                    // Adopted with another sidecar's tag; a
                                    // hand edit's entry is ours.
                                    tag: other.then(|| tag(theirs.ts_ms, "other")),
                                },
                                "{case}"
                            );
                        } else {
                            assert_eq!(step, First::Write, "{case}");
                        }
                        // While an adoption is under way, the entry may be
                        // the one appended: decided again, never taken for
                        // one that lost.
                        assert_eq!(
                            first_step(who(s, p), false, false, true, || ours.clone(), Some(&k)),
                            if kept(s, newer) {
                                First::Wait
                            } else {
                                First::Write
                            },
                            "{case}"
                        );
                        // An adopting entry carries that very version: it
                        // is written whatever the strategy keeps.
                        assert_eq!(
                            first_step(who(s, p), false, true, true, || ours.clone(), Some(&k)),
                            First::Write,
                            "{case}"
                        );
                    }
                }
            }
        }
    }

    // ---- step 2 ----

    #[test]
    fn a_write_is_conditional_on_the_store_or_preceded_by_a_head() {
        let over = known("e1", tag(3, ME), 3);
        let no_etag = written(None, None, tag(3, ME), 3);
        for caps in caps_all() {
            let update = put_mode(Some(&over), caps);
            if caps.contains(Caps::NO_UPDATE) {
                assert_eq!(update, Mode::HeadFirst);
            } else {
                assert_eq!(
                    update,
                    Mode::Store(PutMode::Update(UpdateVersion {
                        e_tag: Some("e1".into()),
                        version: None
                    }))
                );
            }
            let create = put_mode(None, caps);
            if caps.contains(Caps::NO_CREATE) {
                assert_eq!(create, Mode::HeadFirst);
            } else {
                assert_eq!(create, Mode::Store(PutMode::Create));
            }
            // A known version without an e-tag cannot be a condition.
            assert_eq!(put_mode(Some(&no_etag), caps), Mode::HeadFirst);
        }
        // The store's object version goes with the e-tag.
        let versioned = Known {
            version: Some("v7".into()),
            ..over
        };
        assert_eq!(
            put_mode(Some(&versioned), Caps::default()),
            Mode::Store(PutMode::Update(UpdateVersion {
                e_tag: Some("e1".into()),
                version: Some("v7".into())
            }))
        );
    }

    #[test]
    fn a_head_allows_the_overwrite_only_over_the_expected_version_or_nothing() {
        let over = known("e1", tag(3, ME), 3);
        let same = Found {
            etag: Some("e1".into()),
            ..Found::default()
        };
        let other = Found {
            etag: Some("e2".into()),
            ..Found::default()
        };
        let untagged = Found::default();
        assert!(holds_expected(Some(&over), None));
        assert!(holds_expected(None, None));
        assert!(holds_expected(Some(&over), Some(&same)));
        assert!(!holds_expected(Some(&over), Some(&other)));
        assert!(!holds_expected(None, Some(&same)), "a create over anything");
        let no_etag = written(None, None, tag(3, ME), 3);
        assert!(!holds_expected(Some(&no_etag), Some(&untagged)));
    }

    #[test]
    fn what_a_not_implemented_answer_teaches() {
        assert_eq!(
            lacked_by(&PutMode::Update(UpdateVersion {
                e_tag: None,
                version: None
            })),
            Some(Caps::NO_UPDATE)
        );
        assert_eq!(lacked_by(&PutMode::Create), Some(Caps::NO_CREATE));
        assert_eq!(lacked_by(&PutMode::Overwrite), None);
        // object_store's own texts (local directories, in-memory stores).
        assert_eq!(missing_cap("PutMode::Update"), Some(Caps::NO_UPDATE));
        assert_eq!(missing_cap("PutMode::Create"), Some(Caps::NO_CREATE));
        assert_eq!(
            missing_cap("Local file system does not support attributes"),
            Some(Caps::NO_ATTRS)
        );
        assert_eq!(missing_cap("copy_if_not_exists"), None);
    }

    // ---- step 3 ----

    #[test]
    fn whose_a_found_version_is() {
        let e = entry(5, 5, Op::Put, b"v5");
        let ours = tag(5, ME);
        let verdicts: Vec<(&str, Owner)> = found_kinds()
            .into_iter()
            .map(|(name, f)| (name, owner(ME, &ours, &e, &f)))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                ("ours, this entry", Owner::Ours),
                ("ours, older", Owner::Ours),
                ("another sidecar's, newer", Owner::Theirs),
                ("another sidecar's, older", Owner::Theirs),
                // A HEAD of a hand edit: no bytes to compare yet.
                ("a hand edit, newer", Owner::Theirs),
                ("a hand edit, older", Owner::Theirs),
            ]
        );
        // An adopting entry stamped with another sidecar's tag meets that
        // very version.
        let adopted = tag(9, "other");
        let (_, theirs_newer) = &found_kinds()[2];
        assert_eq!(owner(ME, &adopted, &e, theirs_newer), Owner::Ours);
        // Without metadata, the bytes tell.
        let bare = |b: &'static [u8]| Found {
            bytes: Some(Bytes::from_static(b)),
            ..Found::default()
        };
        assert_eq!(owner(ME, &ours, &e, &bare(b"v5")), Owner::Ours);
        assert_eq!(owner(ME, &ours, &e, &bare(b"v4")), Owner::AskLog);
        let del = entry(5, 5, Op::Delete, b"");
        assert_eq!(
            owner(ME, &ours, &del, &bare(b"")),
            Owner::AskLog,
            "a delete's empty value is no version's bytes"
        );
    }

    #[test]
    fn the_log_search_covers_only_what_this_process_shipped_and_the_log_holds() {
        // Opened at cursor 10, entry 20: entries 11..=19.
        assert_eq!(own_scan(10, 1, 20, 1_000_000), Some((11, 19)));
        // Truncated past the opening cursor: from the first held.
        assert_eq!(own_scan(10, 15, 20, 1_000_000), Some((15, 19)));
        // At most `max` entries.
        assert_eq!(own_scan(0, 1, 100, 10), Some((90, 99)));
        // The first entry shipped since opening: nothing to search.
        assert_eq!(own_scan(19, 1, 20, 1_000_000), None);
        assert_eq!(own_scan(25, 1, 20, 1_000_000), None);
        assert_eq!(own_scan(0, 1, 1, 1_000_000), None);
    }

    #[test]
    fn a_refused_write_over_nothing_retries_as_a_create_then_names_the_blocker() {
        let e = entry(5, 5, Op::Put, b"v5");
        assert_eq!(after_refused(ME, &e, true, 1, None), Refused::Absent);
        assert_eq!(after_refused(ME, &e, true, 2, None), Refused::Blocked);
        // An update refused over nothing: deleted meanwhile, create it.
        assert_eq!(after_refused(ME, &e, false, 0, None), Refused::Absent);
        assert_eq!(after_refused(ME, &e, false, 5, None), Refused::Absent);
    }

    #[test]
    fn a_refused_write_finding_our_version_records_or_writes_over_it() {
        let e = entry(5, 50, Op::Put, b"v5");
        for (name, f) in found_kinds() {
            let r = after_refused(ME, &e, false, 0, Some((&f, false)));
            assert_eq!(r, Refused::Conflict, "{name}: not ours is a conflict");
        }
        let kinds = found_kinds();
        let this = &kinds[0].1;
        let Refused::There(k) = after_refused(ME, &e, false, 0, Some((this, true))) else {
            panic!("this entry's own version is there already");
        };
        assert_eq!(
            (k.seq, k.tag.clone(), k.etag.as_deref()),
            (5, tag(50, ME), Some("e5"))
        );
        let older = &kinds[1].1;
        let Refused::Over(k) = after_refused(ME, &e, false, 0, Some((older, true))) else {
            panic!("an older version of ours is written over");
        };
        assert_eq!(
            (k.seq, k.etag.as_deref(), k.tag.clone()),
            (3, Some("e3"), tag(3, ME))
        );
        // An adopted version carrying another sidecar's tag, found as ours
        // (its entry's very version): it is recorded as this sidecar's.
        let adopted = Found {
            etag: Some("x9".into()),
            tag: tag(9, "other"),
            seq: Some(4),
            has_origin: true,
            ..Found::default()
        };
        let Refused::Over(k) = after_refused(ME, &e, false, 0, Some((&adopted, true))) else {
            panic!("an earlier entry's version is written over");
        };
        assert_eq!((k.seq, k.tag.clone()), (4, tag(9, ME)));
        // Without metadata: the same bytes are this entry's version.
        let bare = Found {
            etag: Some("b".into()),
            bytes: Some(Bytes::from_static(b"v5")),
            ..Found::default()
        };
        let Refused::There(k) = after_refused(ME, &e, false, 0, Some((&bare, true))) else {
            panic!("the same bytes are this entry's version");
        };
        assert_eq!((k.seq, k.tag.origin.as_str()), (5, ME));
        let older_bare = Found {
            bytes: Some(Bytes::from_static(b"v4")),
            ..bare
        };
        let Refused::Over(k) = after_refused(ME, &e, false, 0, Some((&older_bare, true))) else {
            panic!("an earlier entry's bytes are written over");
        };
        assert_eq!((k.seq, k.tag.origin.as_str()), (0, ME));
    }

    // ---- step 4 ----

    #[test]
    fn a_delete_removes_only_the_expected_version_or_ours_and_judges_the_rest() {
        let expect = known("h9", tag(3, ME), 3);
        let steps: Vec<(&str, Delete, Delete)> = found_kinds()
            .into_iter()
            .map(|(name, f)| {
                (
                    name,
                    delete_step(ME, None, Some(&f)),
                    delete_step(ME, Some(&expect), Some(&f)),
                )
            })
            .collect();
        use Delete::*;
        assert_eq!(
            steps,
            vec![
                ("ours, this entry", Remove, Remove),
                ("ours, older", Remove, Remove),
                ("another sidecar's, newer", Judge, Judge),
                ("another sidecar's, older", Judge, Judge),
                // The expected e-tag is this hand edit's: walship knew it.
                ("a hand edit, newer", ReadBody, Remove),
                ("a hand edit, older", ReadBody, ReadBody),
            ]
        );
        assert_eq!(delete_step(ME, Some(&expect), None), Gone);
        assert_eq!(delete_step(ME, None, None), Gone);
    }

    // ---- what is recorded ----

    #[test]
    fn a_version_is_recorded_with_this_logs_seq_only_when_this_logs_entry_wrote_it() {
        assert_eq!(recorded_seq(ME, &tag(5, ME), 5, false), 5);
        assert_eq!(recorded_seq(ME, &tag(9, "other"), 5, true), 5);
        assert_eq!(recorded_seq(ME, &tag(9, "other"), 5, false), 0);
        assert_eq!(recorded_seq(ME, &tag(9, ""), 5, false), 0);
        let mut f = Found {
            tag: tag(9, ME),
            seq: Some(4),
            ..Found::default()
        };
        assert_eq!(found_seq(ME, &f), 4);
        f.seq = None;
        assert_eq!(found_seq(ME, &f), 0);
        f.tag = tag(9, "other");
        f.seq = Some(4);
        assert_eq!(found_seq(ME, &f), 0, "another log's seq is not ours");
        // A resync's copy: another sidecar's version keeps its tag and no
        // seq; one without metadata came through this log.
        f.has_origin = true;
        assert_eq!(copied(ME, &f), (tag(9, "other"), 0));
        f.tag = tag(9, ME);
        assert_eq!(copied(ME, &f), (tag(9, ME), 4));
        let bare = Found {
            tag: tag(7, ""),
            seq: None,
            ..Found::default()
        };
        assert_eq!(copied(ME, &bare), (tag(7, ME), 0));
        let bare_with_seq = Found {
            seq: Some(6),
            ..bare
        };
        assert_eq!(copied(ME, &bare_with_seq), (tag(7, ME), 6));
    }

    #[test]
    fn a_write_carries_our_tag_unless_it_adopts_another_sidecars() {
        let e = entry(5, 50, Op::Put, b"v");
        assert_eq!(stamp_tag(ME, &e, None), tag(50, ME));
        assert_eq!(stamp_tag(ME, &e, Some(tag(9, "other"))), tag(9, "other"));
    }

    #[test]
    fn a_merge_puts_the_newer_first_and_is_ours_as_late_as_either() {
        assert!(merge_order(&tag(5, ME), &tag(4, "")));
        assert!(!merge_order(&tag(4, ME), &tag(5, "")));
        assert_eq!(merged_tag(ME, &tag(4, ME), &tag(9, "")), tag(9, ME));
        assert_eq!(merged_tag(ME, &tag(9, ME), &tag(4, "x")), tag(9, ME));
    }

    // ---- every strategy × store capability × found version ----

    /// One put walked through the planner as the executor walks it: the
    /// entry (ts 5) meets `found` on a store lacking `caps`, with no version
    /// known (a first write) or an older one of ours known (e-tag `e3`). The
    /// store is modelled: a put-if-match succeeds when the e-tag matches, a
    /// put-if-absent is refused (something is there), and a log search
    /// finds nothing. The requests and the outcome, as words.
    fn walk(
        s: ConflictResolution,
        on_primary: bool,
        caps: Caps,
        known: Option<&Known>,
        found: &Found,
    ) -> String {
        let e = entry(5, 5, Op::Put, b"v5");
        let ours = tag(5, ME);
        let mut steps = vec![];
        match first_step(
            who(s, on_primary),
            false,
            false,
            false,
            || ours.clone(),
            known,
        ) {
            First::Write => {}
            other => return format!("{other:?}"),
        }
        match put_mode(known, caps) {
            Mode::Store(PutMode::Update(u)) => {
                steps.push("put-if-match");
                if u.e_tag == found.etag {
                    steps.push("written");
                    return steps.join(" ");
                }
            }
            Mode::Store(_) => steps.push("put-if-absent"),
            Mode::HeadFirst => {
                steps.push("head");
                if holds_expected(known, Some(found)) {
                    steps.push("put written");
                    return steps.join(" ");
                }
            }
        }
        // Refused: what is there?
        steps.push("head");
        let found = if read_body(found) {
            steps.push("get");
            Found {
                bytes: Some(Bytes::from_static(b"hand")),
                ..found.clone()
            }
        } else {
            found.clone()
        };
        let mine = match owner(ME, &ours, &e, &found) {
            Owner::Ours => true,
            Owner::Theirs => false,
            Owner::AskLog => {
                steps.push("search-log");
                false
            }
        };
        steps.push(
            match after_refused(ME, &e, known.is_none(), 0, Some((&found, mine))) {
                Refused::Conflict => match decide(s, &ours, &found.tag, on_primary) {
                    Verdict::Ours => "conflict ours",
                    Verdict::Theirs => "conflict theirs",
                    Verdict::Primary => "conflict primary",
                    Verdict::Merge => "conflict merge",
                    Verdict::Manual => "conflict manual",
                },
                Refused::There(k) if k.seq == 5 && k.tag == ours => "there",
                Refused::Over(k) if k.tag.origin == ME => "over",
                other => panic!("{other:?} after finding {found:?}"),
            },
        );
        steps.join(" ")
    }

    /// The verdict on a version of another writer (ours at ts 5), per the
    /// strategies' meaning in SPEC.md.
    fn verdict_wanted(s: ConflictResolution, on_primary: bool, name: &str) -> &'static str {
        let newer = name.ends_with("newer");
        let hand = name.starts_with("a hand edit");
        let newer_wins = if newer { "theirs" } else { "ours" };
        match s {
            ConflictResolution::LastWriteWins => newer_wins,
            ConflictResolution::FirstWriteWins => {
                if newer {
                    "ours"
                } else {
                    "theirs"
                }
            }
            ConflictResolution::PrimaryWins if hand && !on_primary => "primary",
            ConflictResolution::PrimaryWins => newer_wins,
            ConflictResolution::Merge => "merge",
            ConflictResolution::Manual => "manual",
        }
    }

    #[test]
    fn every_strategy_store_and_found_version() {
        let older_ours = known("e3", tag(3, ME), 3);
        for s in ALL {
            for p in [false, true] {
                for caps in caps_all() {
                    for (name, f) in found_kinds() {
                        for k in [None, Some(&older_ours)] {
                            let w = walk(s, p, caps, k, &f);
                            let case = format!(
                                "{s:?} on_primary={p} {caps:?} {name} known={}",
                                k.is_some()
                            );
                            // A store lacking the mode is asked by HEAD
                            // first; one that has it, never.
                            let lacks = if k.is_some() {
                                caps.contains(Caps::NO_UPDATE)
                            } else {
                                caps.contains(Caps::NO_CREATE)
                            };
                            assert_eq!(w.starts_with("head"), lacks, "{case}: {w}");
                            let end = w.trim_start_matches("head ");
                            let end = end
                                .trim_start_matches("put-if-match ")
                                .trim_start_matches("put-if-absent ")
                                .trim_start_matches("head ");
                            // What was found decides, never the store's means.
                            let want = match (name, k.is_some()) {
                                ("ours, this entry", _) => "there".to_string(),
                                ("ours, older", true) if lacks => "put written".to_string(),
                                ("ours, older", true) => "written".to_string(),
                                ("ours, older", false) => "over".to_string(),
                                (n, _) if n.starts_with("a hand edit") => {
                                    format!("get search-log conflict {}", verdict_wanted(s, p, n))
                                }
                                (n, _) => format!("conflict {}", verdict_wanted(s, p, n)),
                            };
                            assert_eq!(end, want, "{case}: {w}");
                        }
                    }
                }
            }
        }
        // Two walks spelled out whole.
        let hand_newer = &found_kinds()[4].1;
        assert_eq!(
            walk(
                ConflictResolution::LastWriteWins,
                false,
                Caps::default(),
                None,
                hand_newer
            ),
            "put-if-absent head get search-log conflict theirs"
        );
        assert_eq!(
            walk(
                ConflictResolution::FirstWriteWins,
                false,
                Caps::NO_CREATE,
                None,
                hand_newer
            ),
            "head head get search-log conflict ours"
        );
    }
}
