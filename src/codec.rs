//! The on-disk encoding of one log entry. All encoding lives here.
//!
//! A record is
//!
//! ```text
//! +---------+--------------------------------------------+-----------+
//! | version | bincode 2 (standard config) of WireEntry   | crc32 LE  |
//! | 1 byte  | seq, ts_ms, op, key, value[, meta]         | 4 bytes   |
//! +---------+--------------------------------------------+-----------+
//! ```
//!
//! Version 2 (written by this build) adds `meta`: the bytes of an
//! [`ObjectMeta`] (ETag, crc32, Content-Type and the other attributes),
//! empty for an entry without one (a delete). Version 1 (no `meta`) is
//! still read.
//!
//! The crc32 covers every byte before it, version included. Invariant: a
//! record is only ever turned back into an [`Entry`] after its crc matched,
//! its version is known and the seq inside it equals the seq it is stored
//! under; anything else is [`Error::Corrupt`] naming that seq. The version
//! byte lets a later codec read old logs; `tests` pins the bytes of
//! versions 1 and 2.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::object::{Meta, ObjectMeta};

/// The first format: no metadata.
pub const FORMAT_V1: u8 = 1;
/// The format written by this build: with metadata.
pub const FORMAT_V2: u8 = 2;

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
    /// The object's metadata (`None` for a delete and for version-1
    /// entries). Its `ts_ms` is the entry's.
    pub meta: Option<Meta>,
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

#[derive(Serialize, Deserialize)]
struct WireEntryV2<'a> {
    seq: u64,
    ts_ms: u64,
    op: u8,
    key: &'a str,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
    #[serde(with = "serde_bytes")]
    meta: &'a [u8],
}

fn seal<T: Serialize>(version: u8, wire: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + 1 + 24 + CRC_LEN);
    out.push(version);
    // Encoding into a Vec cannot fail: every field has a fixed serde shape.
    let body = bincode::serde::encode_to_vec(wire, bincode::config::standard())
        .unwrap_or_else(|e| unreachable!("bincode cannot fail on a wire entry: {e}"));
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Encodes an entry without metadata as a version-2 record with its crc32.
pub fn encode(seq: u64, ts_ms: u64, op: Op, key: &str, value: &[u8]) -> Vec<u8> {
    encode_with(seq, ts_ms, op, key, value, None)
}

/// Encodes an entry as a version-2 record with its crc32; `meta` (whose
/// `ts_ms` is replaced by the entry's) travels inside it.
pub fn encode_with(
    seq: u64,
    ts_ms: u64,
    op: Op,
    key: &str,
    value: &[u8],
    meta: Option<&ObjectMeta>,
) -> Vec<u8> {
    let meta = meta.map(|m| m.encode_at(ts_ms)).unwrap_or_default();
    let wire = WireEntryV2 {
        seq,
        ts_ms,
        op: op.to_byte(),
        key,
        value,
        meta: &meta,
    };
    seal(FORMAT_V2, &wire, key.len() + value.len() + meta.len())
}

/// Encodes an entry as a version-1 record (the format of older logs; kept
/// so tests can write one).
pub fn encode_v1(seq: u64, ts_ms: u64, op: Op, key: &str, value: &[u8]) -> Vec<u8> {
    let wire = WireEntry {
        seq,
        ts_ms,
        op: op.to_byte(),
        key,
        value,
    };
    seal(FORMAT_V1, &wire, key.len() + value.len())
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
    /// The encoded metadata (empty when none): see [`EntryRef::meta`].
    pub meta_bytes: &'a [u8],
}

impl EntryRef<'_> {
    /// The decoded metadata; a record whose metadata does not decode is
    /// corrupt.
    pub fn meta(&self) -> Result<Option<Meta>> {
        if self.meta_bytes.is_empty() {
            return Ok(None);
        }
        ObjectMeta::decode(self.meta_bytes)
            .map(|m| Some(std::sync::Arc::new(m)))
            .ok_or_else(|| Error::Corrupt {
                seq: self.seq,
                reason: "its object metadata does not decode".into(),
            })
    }
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
        meta: e.meta()?,
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
    let (wire, used) = match body[0] {
        FORMAT_V1 => {
            let (w, used): (WireEntry<'_>, usize) =
                bincode::serde::borrow_decode_from_slice(&body[1..], bincode::config::standard())
                    .map_err(|e| corrupt(format!("cannot decode: {e}")))?;
            let w = WireEntryV2 {
                seq: w.seq,
                ts_ms: w.ts_ms,
                op: w.op,
                key: w.key,
                value: w.value,
                meta: &[],
            };
            (w, used)
        }
        FORMAT_V2 => bincode::serde::borrow_decode_from_slice::<WireEntryV2<'_>, _>(
            &body[1..],
            bincode::config::standard(),
        )
        .map_err(|e| corrupt(format!("cannot decode: {e}")))?,
        v => {
            return Err(corrupt(format!(
                "unknown format version {v} (this build reads {FORMAT_V1} and {FORMAT_V2})"
            )));
        }
    };
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
        meta_bytes: wire.meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of format version 1. If this test fails, the log format
    /// changed: old logs would no longer read. Bump the version instead.
    #[test]
    fn golden_bytes_v1() {
        let rec = encode_v1(1, 1_700_000_000_000, Op::Put, "a/b", b"hi");
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
        // And this build still reads it.
        let e = decode(1, &rec).expect("v1 reads");
        assert_eq!(
            (e.key.as_str(), &e.value[..], e.meta),
            ("a/b", &b"hi"[..], None)
        );
    }

    /// The bytes of format version 2, with metadata and without.
    #[test]
    fn golden_bytes_v2() {
        let meta = ObjectMeta {
            etag: "e".into(),
            crc32: 7,
            ts_ms: 0,
            content_type: Some("t".into()),
            user: vec![("k".into(), "v".into())],
            ..ObjectMeta::default()
        };
        let rec = encode_with(1, 5, Op::Put, "a", b"h", Some(&meta));
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            0x02, // version
            0x01, 0x05, 0x01, // seq, ts_ms, op put
            0x01, b'a', 0x01, b'h', // key, value
            0x10, // meta: 16 bytes
            0x01, b'e', 0x07, 0x05, // etag, crc32, ts_ms (the entry's)
            0x01, 0x01, b't', // content_type Some("t")
            0x00, 0x00, 0x00, 0x00, // the other four headers None
            0x01, 0x01, b'k', 0x01, b'v', // user metadata
        ];
        assert_eq!(&rec[..rec.len() - 4], &expected[..], "drifted: {rec:02x?}");
        let e = decode(1, &rec).expect("decodes");
        assert_eq!(e.meta.as_deref().map(|m| m.ts_ms), Some(5));
        assert_eq!(
            e.meta.as_deref().and_then(|m| m.content_type.as_deref()),
            Some("t")
        );
        let bare = encode(2, 5, Op::Delete, "a", b"");
        assert_eq!(
            &bare[..bare.len() - 4],
            &[0x02, 0x02, 0x05, 0x02, 0x01, b'a', 0x00, 0x00]
        );
        assert_eq!(decode(2, &bare).expect("decodes").meta, None);
    }

    #[test]
    fn metadata_that_does_not_decode_is_corrupt() {
        let wire = WireEntryV2 {
            seq: 3,
            ts_ms: 1,
            op: 1,
            key: "k",
            value: b"v",
            meta: &[0xff, 0xff],
        };
        let rec = seal(FORMAT_V2, &wire, 8);
        let err = decode(3, &rec).expect_err("bad meta");
        assert!(matches!(err, Error::Corrupt { seq: 3, .. }), "{err}");
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
        let mut v3 = rec.clone();
        v3[0] = 3;
        let n = v3.len();
        let crc = crc32fast::hash(&v3[..n - 4]);
        v3[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let msg = decode(5, &v3).expect_err("unknown version").to_string();
        assert!(msg.contains("format version 3"), "{msg}");
    }
}
