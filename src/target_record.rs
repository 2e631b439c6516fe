//! A target's persisted record: everything a restart reads back of one
//! target, in one value written whole.
//!
//! Invariant: what a target's state depends on (the cursor and the log
//! offset after it, a replay's intent, whether walship marked the target)
//! and the state itself are one record, so one write puts a change where a
//! restart reads it, and no restart sees half of one. It is written only
//! under the target's record lock (`TargetHandle::record`, which keeps
//! the copy last written): by the shipper saving its cursor, and by
//! `Replicator::change_state`, whose changes are durable (one sync) before
//! anything acts on them.
//!
//! Layout, version 1 (31 bytes, integers big-endian):
//!
//! ```text
//!  0      1        9        17     18             26      27      31
//!  │ 0x01 │ cursor │ offset │state │ replay_until │ marked │ crc32 │
//! ```
//!
//! `offset` is `u64::MAX` when not known (a data dir from before offsets
//! were kept: the log places it in one scan at open); `state` is 0 active,
//! 1 paused, 2 syncing; `replay_until` is 0 when no replay is under way;
//! the crc32 covers the 27 bytes before it, so a damaged record is told
//! apart from a short one.
//!
//! Data dirs from before kept these apart: a cursor value of 8 or 16 bytes
//! (seq, then offset) and the meta records `state/NAME`, `replay/NAME` and
//! `marker/NAME`. [`TargetRecord::from_legacy`] reads them; the storage
//! rewrites them as one record when it opens.

use crate::status::TargetState;

/// Length of an encoded record.
pub(crate) const RECORD_LEN: usize = 31;
const VERSION: u8 = 1;
const NO_OFFSET: u64 = u64::MAX;

/// What a restart reads back of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetRecord {
    /// The highest seq the target has applied (every seq up to it).
    pub cursor: u64,
    /// The log offset just after `cursor`, if known.
    pub offset: Option<u64>,
    /// The state a restart starts from: `Active`, `Paused` or `Syncing`
    /// (a failed target is kept as what it was: it ships again after a
    /// restart and meets its fault again, or not).
    pub state: TargetState,
    /// A replay under way writes every entry up to this seq over whatever
    /// the target holds; 0 for none.
    pub replay_until: u64,
    /// walship wrote the target's marker object (so a missing one is a
    /// loss, not a target from before markers).
    pub marked: bool,
}

impl Default for TargetRecord {
    fn default() -> Self {
        TargetRecord {
            cursor: 0,
            offset: None,
            state: TargetState::Active,
            replay_until: 0,
            marked: false,
        }
    }
}

impl TargetRecord {
    /// The end of a replay cut short, if it still covers entries past the
    /// cursor (those go over whatever the target holds).
    pub fn replaying(&self) -> Option<u64> {
        Some(self.replay_until).filter(|until| *until > self.cursor)
    }

    /// The record's bytes.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0] = VERSION;
        b[1..9].copy_from_slice(&self.cursor.to_be_bytes());
        b[9..17].copy_from_slice(&self.offset.unwrap_or(NO_OFFSET).to_be_bytes());
        b[17] = match self.state {
            TargetState::Paused => 1,
            TargetState::Syncing => 2,
            _ => 0,
        };
        b[18..26].copy_from_slice(&self.replay_until.to_be_bytes());
        b[26] = u8::from(self.marked);
        let crc = crc32fast::hash(&b[..27]);
        b[27..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Reads a record written by [`TargetRecord::encode`], or says what is
    /// wrong with the bytes.
    pub fn decode(b: &[u8]) -> Result<TargetRecord, String> {
        if b.len() != RECORD_LEN {
            return Err(format!("{} bytes, not {RECORD_LEN}", b.len()));
        }
        if b[0] != VERSION {
            return Err(format!(
                "version {} (this walship reads version {VERSION})",
                b[0]
            ));
        }
        let crc = u32::from_be_bytes([b[27], b[28], b[29], b[30]]);
        if crc32fast::hash(&b[..27]) != crc {
            return Err("its crc32 does not match its bytes".into());
        }
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(w)
        };
        let state = match b[17] {
            0 => TargetState::Active,
            1 => TargetState::Paused,
            2 => TargetState::Syncing,
            other => return Err(format!("state byte {other} names no state")),
        };
        let marked = match b[26] {
            0 => false,
            1 => true,
            other => return Err(format!("marked byte {other} is neither 0 nor 1")),
        };
        Ok(TargetRecord {
            cursor: u64_at(1),
            offset: Some(u64_at(9)).filter(|o| *o != NO_OFFSET),
            state,
            replay_until: u64_at(18),
            marked,
        })
    }

    /// The record a data dir from before records holds, from its cursor
    /// value and its `state/`, `replay/` and `marker/` meta records. What
    /// does not decode is left at its default (a damaged replay intent:
    /// the rest ships as ordinary writes, as before).
    pub fn from_legacy(
        cursor: Option<&[u8]>,
        state: Option<&[u8]>,
        replay: Option<&[u8]>,
        marker: Option<&[u8]>,
    ) -> TargetRecord {
        let be = |b: &[u8]| <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes);
        TargetRecord {
            cursor: cursor.and_then(|c| c.get(..8)).and_then(be).unwrap_or(0),
            offset: cursor.and_then(|c| c.get(8..16)).and_then(be),
            state: match state {
                Some(b"paused") => TargetState::Paused,
                Some(b"syncing") => TargetState::Syncing,
                _ => TargetState::Active,
            },
            replay_until: replay.and_then(be).unwrap_or(0),
            marked: marker.is_some(),
        }
    }
}

/// The meta names a data dir from before records kept of `target`, in
/// the order [`TargetRecord::from_legacy`] takes them (state, replay,
/// marker).
pub(crate) fn legacy_meta(target: &str) -> [String; 3] {
    [
        format!("state/{target}"),
        format!("replay/{target}"),
        format!("marker/{target}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TargetRecord {
        TargetRecord {
            cursor: 41,
            offset: Some(9_000),
            state: TargetState::Paused,
            replay_until: 77,
            marked: true,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        for state in [
            TargetState::Active,
            TargetState::Paused,
            TargetState::Syncing,
        ] {
            for offset in [None, Some(0), Some(123)] {
                let r = TargetRecord {
                    state,
                    offset,
                    ..sample()
                };
                assert_eq!(TargetRecord::decode(&r.encode()), Ok(r));
            }
        }
        assert_eq!(
            TargetRecord::decode(&TargetRecord::default().encode()),
            Ok(TargetRecord::default())
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused_with_what_is_wrong() {
        let good = sample().encode();
        for i in 0..RECORD_LEN {
            for bit in 0..8 {
                let mut b = good;
                b[i] ^= 1 << bit;
                let err = TargetRecord::decode(&b).expect_err("a flipped bit must not decode");
                assert!(!err.is_empty());
            }
        }
        assert!(
            TargetRecord::decode(&good[..30])
                .expect_err("short")
                .contains("30 bytes")
        );
        let mut v2 = good;
        v2[0] = 2;
        assert!(
            TargetRecord::decode(&v2)
                .expect_err("v2")
                .contains("version 2")
        );
    }

    #[test]
    fn a_replay_counts_only_past_the_cursor() {
        let r = |cursor, replay_until| TargetRecord {
            cursor,
            replay_until,
            ..TargetRecord::default()
        };
        assert_eq!(r(10, 40).replaying(), Some(40));
        assert_eq!(r(40, 40).replaying(), None);
        assert_eq!(r(50, 40).replaying(), None);
        assert_eq!(r(10, 0).replaying(), None);
    }

    #[test]
    fn the_records_of_older_data_dirs_are_read_as_one() {
        let mut cursor = [0u8; 16];
        cursor[..8].copy_from_slice(&41u64.to_be_bytes());
        cursor[8..].copy_from_slice(&9_000u64.to_be_bytes());
        let r = TargetRecord::from_legacy(
            Some(&cursor),
            Some(b"paused"),
            Some(&77u64.to_be_bytes()),
            Some(b"1"),
        );
        assert_eq!(r, sample());
        // A cursor of the seq alone (from before offsets were kept).
        let r = TargetRecord::from_legacy(Some(&cursor[..8]), Some(b"syncing"), None, None);
        assert_eq!(
            r,
            TargetRecord {
                cursor: 41,
                state: TargetState::Syncing,
                ..TargetRecord::default()
            }
        );
        // A damaged replay intent is dropped; nothing at all is a new target.
        let r = TargetRecord::from_legacy(Some(&cursor), None, Some(b"\x01\x02"), None);
        assert_eq!((r.cursor, r.replay_until, r.marked), (41, 0, false));
        assert_eq!(
            TargetRecord::from_legacy(None, None, None, None),
            TargetRecord::default()
        );
    }
}
