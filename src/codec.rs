//! The on-disk encoding of one log entry. All encoding lives here.
//!
//! A record is
//!
//! ```text
//! +---------+--------------------------------------------+-----------+
//! | version | bincode 2 (standard config) of WireEntry   | crc32 LE  |
//! | 1 byte  | seq, ts_ms, op, key, value                 | 4 bytes   |
//! +---------+--------------------------------------------+-----------+
//! ```
//!
//! The crc32 covers every byte before it, version included. Invariant: a
//! record is only ever turned back into an [`Entry`] after its crc matched,
//! its version is known and the seq inside it equals the seq it is stored
//! under; anything else is [`Error::Corrupt`] naming that seq. The version
//! byte lets a later codec read old logs; `tests` pins the bytes of version 1.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The format version written by this build.
pub const FORMAT_V1: u8 = 1;

const CRC_LEN: usize = 4;

/// What an entry does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Store the value under the key.
    Put,
    /// Remove the key.
    Delete,
}

impl Op {
    fn to_byte(self) -> u8 {
        match self {
            Op::Put => 1,
            Op::Delete => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Op> {
        match b {
            1 => Some(Op::Put),
            2 => Some(Op::Delete),
            _ => None,
        }
    }

    /// `put` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }
}

/// One decoded, crc-checked log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, 1, 2, 3 … without gaps.
    pub seq: u64,
    /// Unix milliseconds when it was appended; never goes backwards.
    pub ts_ms: u64,
    /// Put or delete.
    pub op: Op,
    /// The object key.
    pub key: String,
    /// The value (empty for a delete).
    pub value: Bytes,
}

#[derive(Serialize, Deserialize)]
struct WireEntry<'a> {
    seq: u64,
    ts_ms: u64,
    op: u8,
    key: &'a str,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

/// Encodes an entry as a version-1 record with its crc32.
pub fn encode(seq: u64, ts_ms: u64, op: Op, key: &str, value: &[u8]) -> Vec<u8> {
    let wire = WireEntry {
        seq,
        ts_ms,
        op: op.to_byte(),
        key,
        value,
    };
    let mut out = Vec::with_capacity(1 + 24 + key.len() + value.len() + CRC_LEN);
    out.push(FORMAT_V1);
    // Encoding into a Vec cannot fail: every field has a fixed serde shape.
    let body = bincode::serde::encode_to_vec(&wire, bincode::config::standard())
        .unwrap_or_else(|e| unreachable!("bincode cannot fail on WireEntry: {e}"));
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The crc32 stored in a record, if it is long enough to hold one.
pub fn stored_crc(record: &[u8]) -> Option<u32> {
    let n = record.len();
    (n > CRC_LEN).then(|| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&record[n - CRC_LEN..]);
        u32::from_le_bytes(b)
    })
}

/// A decoded, crc-checked entry borrowing the record's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Position in the log.
    pub seq: u64,
    /// Unix milliseconds when it was appended.
    pub ts_ms: u64,
    /// Put or delete.
    pub op: Op,
    /// The object key.
    pub key: &'a str,
    /// The value (empty for a delete).
    pub value: &'a [u8],
}

/// Decodes and checks a record stored under `seq`.
pub fn decode(seq: u64, record: &[u8]) -> Result<Entry> {
    let e = decode_ref(seq, record)?;
    Ok(Entry {
        seq,
        ts_ms: e.ts_ms,
        op: e.op,
        key: e.key.to_string(),
        value: Bytes::copy_from_slice(e.value),
    })
}

/// Like [`decode`], without copying the key or the value.
pub fn decode_ref(seq: u64, record: &[u8]) -> Result<EntryRef<'_>> {
    let corrupt = |reason: String| Error::Corrupt { seq, reason };
    let Some(stored) = stored_crc(record) else {
        return Err(corrupt(format!(
            "record is {} bytes, too short",
            record.len()
        )));
    };
    let body = &record[..record.len() - CRC_LEN];
    let actual = crc32fast::hash(body);
    if actual != stored {
        return Err(corrupt(format!(
            "crc32 mismatch: stored {stored:08x}, computed {actual:08x}"
        )));
    }
    if body[0] != FORMAT_V1 {
        return Err(corrupt(format!(
            "unknown format version {} (this build reads {FORMAT_V1})",
            body[0]
        )));
    }
    let (wire, used): (WireEntry<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(&body[1..], bincode::config::standard())
            .map_err(|e| corrupt(format!("cannot decode: {e}")))?;
    if used != body.len() - 1 {
        return Err(corrupt(format!(
            "{} trailing bytes after the entry",
            body.len() - 1 - used
        )));
    }
    if wire.seq != seq {
        return Err(corrupt(format!(
            "record holds seq {} but is stored under seq {seq}",
            wire.seq
        )));
    }
    let op = Op::from_byte(wire.op).ok_or_else(|| corrupt(format!("unknown op {}", wire.op)))?;
    Ok(EntryRef {
        seq,
        ts_ms: wire.ts_ms,
        op,
        key: wire.key,
        value: wire.value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of format version 1. If this test fails, the log format
    /// changed: old logs would no longer read. Bump the version instead.
    #[test]
    fn golden_bytes_v1() {
        let rec = encode(1, 1_700_000_000_000, Op::Put, "a/b", b"hi");
        let expected: Vec<u8> = vec![
            0x01, // version
            0x01, // seq = 1 (varint)
            0xfd, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, // ts_ms as u64 varint
            0x01, // op put
            0x03, b'a', b'/', b'b', // key
            0x02, b'h', b'i', // value
        ];
        assert_eq!(
            &rec[..rec.len() - 4],
            &expected[..],
            "record body drifted: {rec:02x?}"
        );
        let crc = crc32fast::hash(&expected);
        assert_eq!(stored_crc(&rec), Some(crc));
        assert_eq!(crc, 0xb452_06a6, "crc of golden record: {crc:08x}");
    }

    #[test]
    fn roundtrip_put_and_delete() {
        for (op, value) in [(Op::Put, &b"value"[..]), (Op::Delete, &b""[..])] {
            let rec = encode(42, 7, op, "k", value);
            let e = decode(42, &rec).expect("decodes");
            assert_eq!(e.seq, 42);
            assert_eq!(e.ts_ms, 7);
            assert_eq!(e.op, op);
            assert_eq!(e.key, "k");
            assert_eq!(&e.value[..], value);
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let rec = encode(9, 123, Op::Put, "key/with space", b"some value bytes");
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[i] ^= 1 << bit;
                let err = decode(9, &bad).expect_err("flip must be caught");
                assert!(matches!(err, Error::Corrupt { seq: 9, .. }), "{err}");
            }
        }
    }

    #[test]
    fn wrong_seq_truncation_and_version_are_corrupt() {
        let rec = encode(5, 1, Op::Put, "k", b"v");
        assert!(matches!(
            decode(6, &rec),
            Err(Error::Corrupt { seq: 6, .. })
        ));
        assert!(matches!(
            decode(5, &rec[..3]),
            Err(Error::Corrupt { seq: 5, .. })
        ));
        assert!(matches!(decode(5, &[]), Err(Error::Corrupt { seq: 5, .. })));
        let mut v2 = rec.clone();
        v2[0] = 2;
        let n = v2.len();
        let crc = crc32fast::hash(&v2[..n - 4]);
        v2[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let msg = decode(5, &v2).expect_err("unknown version").to_string();
        assert!(msg.contains("format version 2"), "{msg}");
    }
}
