//! The attributes of a local directory's object (Content-Type and the
//! like, and the `walshiporigin`, `walshipts`, `walshipseq` metadata every
//! write carries), kept in one extended attribute of the object's file,
//! `user.walship`.
//!
//! Invariant: attributes are read back only for the very file they were
//! written with, at the path they were written for. The value records the
//! file's modification time (µs) and size when the put wrote it, and a
//! hash of the object's path; a file changed in place since (by hand, by
//! another program: the attribute stays with the inode), or moved, linked
//! or copied with its attributes from another key, no longer matches, and
//! reads as a file without attributes, which is what walship makes of any
//! hand edit (see `apply`: its bytes decide whose it is). A value that does
//! not decode reads the same way. What this cannot see: a rewrite in place
//! to the same size within one tick of the file system's clock (1 ns to
//! 10 ms on Linux; a second on some network file systems), or one that
//! sets the modification time back by hand.
//!
//! The value is small on purpose: ext4 keeps an attribute of up to about
//! 80 bytes inside the inode, and a larger one costs a block of its own per
//! file. walship's own three metadata take one byte of name each.

use std::borrow::Cow;

use object_store::{Attribute, AttributeValue, Attributes};
use serde::{Deserialize, Serialize};

use crate::conflict::{META_ORIGIN, META_SEQ, META_TS, is_walship_meta};

/// The extended attribute's name.
pub(crate) const XATTR: &str = "user.walship";

/// The value's format; another one reads as no attributes.
const FORMAT: u8 = 1;

/// The largest value decoded (ext4 allows one block, 4 KiB).
const MAX_VALUE: usize = 64 * 1024;

/// What identifies the file the attributes were written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    /// Modification time, µs since the epoch.
    pub mtime_us: u64,
    /// Size in bytes.
    pub size: u64,
    /// The first 8 bytes of the MD5 of the object's path.
    pub path: u64,
}

impl Stamp {
    /// The stamp of the file of `location` with metadata `m`.
    pub(crate) fn of(location: &str, m: &std::fs::Metadata) -> Stamp {
        Stamp {
            mtime_us: u64::try_from(mtime_us(m)).unwrap_or(u64::MAX),
            size: m.len(),
            path: path_hash(location),
        }
    }

    /// The stamp of an object as a read reports it.
    pub(crate) fn of_meta(meta: &object_store::ObjectMeta) -> Stamp {
        Stamp {
            mtime_us: u64::try_from(meta.last_modified.timestamp_micros()).unwrap_or(0),
            size: meta.size,
            path: path_hash(meta.location.as_ref()),
        }
    }
}

/// A file's modification time in µs since the epoch (0 before it), as
/// `LocalFileSystem` reads it.
pub(crate) fn mtime_us(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros()
}

/// A stable hash of an object's path (the same in every build).
fn path_hash(location: &str) -> u64 {
    use md5::{Digest, Md5};
    let d = Md5::digest(location.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first)
}

/// The value: `walshipts` and `walshipseq` as numbers where they are
/// numbers (a varint is half their text), then each other attribute as a
/// one-byte kind, the name for other metadata, and the value.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    format: u8,
    stamp: Stamp,
    ts: Option<u64>,
    seq: Option<u64>,
    attrs: Vec<(u8, Option<String>, String)>,
}

/// `v` as a number, where its text is exactly that number's.
fn number(v: &str) -> Option<u64> {
    v.parse::<u64>().ok().filter(|n| n.to_string() == v)
}

const TS: u8 = 8;
const SEQ: u8 = 9;
const OTHER_META: u8 = 10;

/// Each attribute kept under a kind of one byte (other metadata: kind
/// `OTHER_META` with its name).
const KINDS: [(u8, Attribute); 9] = [
    (1, Attribute::ContentType),
    (2, Attribute::ContentEncoding),
    (3, Attribute::ContentDisposition),
    (4, Attribute::CacheControl),
    (5, Attribute::ContentLanguage),
    (6, Attribute::StorageClass),
    (7, Attribute::Metadata(Cow::Borrowed(META_ORIGIN))),
    (TS, Attribute::Metadata(Cow::Borrowed(META_TS))),
    (SEQ, Attribute::Metadata(Cow::Borrowed(META_SEQ))),
];

fn kind_of(a: &Attribute) -> Option<(u8, Option<String>)> {
    match KINDS.iter().find(|(_, known)| known == a) {
        Some((kind, _)) => Some((*kind, None)),
        None => match a {
            Attribute::Metadata(n) => Some((OTHER_META, Some(n.to_string()))),
            _ => None,
        },
    }
}

fn attribute_of(kind: u8, name: Option<String>) -> Option<Attribute> {
    match (kind, name) {
        (OTHER_META, Some(n)) => Some(Attribute::Metadata(n.into())),
        (kind, None) => KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| a.clone()),
        _ => None,
    }
}

/// The value kept for `attrs` on a file of `stamp`; the name of an
/// attribute it cannot keep (one object_store added after this build).
pub(crate) fn encode(stamp: Stamp, attrs: &Attributes) -> Result<Vec<u8>, String> {
    let mut wire = Wire {
        format: FORMAT,
        stamp,
        ts: None,
        seq: None,
        attrs: Vec::with_capacity(attrs.len()),
    };
    for (a, v) in attrs {
        let (kind, name) = kind_of(a).ok_or_else(|| format!("{a:?}"))?;
        match (kind, number(v.as_ref())) {
            (TS, Some(n)) => wire.ts = Some(n),
            (SEQ, Some(n)) => wire.seq = Some(n),
            _ => wire.attrs.push((kind, name, v.as_ref().to_string())),
        }
    }
    // Sorted, so that equal attributes are equal bytes.
    wire.attrs.sort();
    bincode::serde::encode_to_vec(&wire, bincode::config::standard()).map_err(|e| e.to_string())
}

/// `attrs` without what walship's own three are not.
pub(crate) fn walships_own(attrs: &Attributes) -> Attributes {
    attrs
        .iter()
        .filter(|(a, _)| is_walship_meta(a))
        .map(|(a, v)| (a.clone(), v.clone()))
        .collect()
}

/// Whether a file system refused an attribute for its size (ext4 and xfs
/// answer `ENOSPC` where the value does not fit, others `E2BIG`).
pub(crate) fn too_large(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::E2BIG | libc::ENOSPC | libc::ERANGE)
    )
}

/// The attributes in `value` if it was written for a file of `stamp`;
/// `None` for a file changed since, or a value that does not decode. A
/// kind this build does not know (a later build's) is left out.
pub(crate) fn decode(value: &[u8], stamp: Stamp) -> Option<Attributes> {
    if value.len() > MAX_VALUE {
        return None;
    }
    let config = bincode::config::standard().with_limit::<MAX_VALUE>();
    let (wire, used): (Wire, usize) = bincode::serde::decode_from_slice(value, config).ok()?;
    if used != value.len() || wire.format != FORMAT || wire.stamp != stamp {
        return None;
    }
    let mut attrs = Attributes::with_capacity(wire.attrs.len() + 2);
    for (name, n) in [(META_TS, wire.ts), (META_SEQ, wire.seq)] {
        if let Some(n) = n {
            attrs.insert(Attribute::Metadata(name.into()), n.to_string().into());
        }
    }
    for (kind, name, v) in wire.attrs {
        if let Some(a) = attribute_of(kind, name) {
            attrs.insert(a, AttributeValue::from(v));
        }
    }
    Some(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp() -> Stamp {
        Stamp {
            mtime_us: 1_765_000_000_123_456,
            size: 1400,
            path: path_hash("k/2026/12/07/object.json"),
        }
    }

    fn walships(seq: u64) -> Attributes {
        let mut a = Attributes::new();
        a.insert(
            Attribute::Metadata(META_ORIGIN.into()),
            "3f2a9c0d11e4b7a8".into(),
        );
        a.insert(Attribute::Metadata(META_TS.into()), "1765000000123".into());
        a.insert(Attribute::Metadata(META_SEQ.into()), seq.to_string().into());
        a
    }

    #[test]
    fn walships_own_three_fit_inside_an_ext4_inode() {
        // ext4 keeps a value of up to 64 bytes (named `user.walship`)
        // inside a 256-byte inode; a larger one takes a block of its own.
        for seq in [1, 123_456, u64::MAX] {
            let v = encode(stamp(), &walships(seq)).expect("encode");
            assert!(v.len() <= 64, "{} bytes at seq {seq}", v.len());
            assert_eq!(decode(&v, stamp()), Some(walships(seq)));
        }
    }

    #[test]
    fn a_file_changed_since_reads_as_one_without_attributes() {
        let v = encode(stamp(), &walships(1)).expect("encode");
        let touched = Stamp {
            mtime_us: stamp().mtime_us + 1,
            ..stamp()
        };
        let grown = Stamp {
            size: 1401,
            ..stamp()
        };
        let elsewhere = Stamp {
            path: path_hash("k/2026/12/07/object.jso"),
            ..stamp()
        };
        assert_eq!(decode(&v, touched), None);
        assert_eq!(decode(&v, grown), None);
        assert_eq!(decode(&v, elsewhere), None, "moved from another key");
    }

    #[test]
    fn a_kind_of_a_later_build_is_left_out_and_the_rest_kept() {
        let wire = Wire {
            format: FORMAT,
            stamp: stamp(),
            ts: None,
            seq: None,
            attrs: vec![
                (7, None, "3f2a9c0d11e4b7a8".into()),
                (200, None, "from a later build".into()),
            ],
        };
        let v = bincode::serde::encode_to_vec(&wire, bincode::config::standard()).expect("encode");
        let mut only_origin = Attributes::new();
        only_origin.insert(
            Attribute::Metadata(META_ORIGIN.into()),
            "3f2a9c0d11e4b7a8".into(),
        );
        assert_eq!(decode(&v, stamp()), Some(only_origin));
    }

    #[test]
    fn a_value_cut_or_with_bytes_after_it_reads_as_none() {
        let v = encode(stamp(), &walships(7)).expect("encode");
        for cut in 0..v.len() {
            assert_eq!(decode(&v[..cut], stamp()), None, "cut at {cut}");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert_eq!(decode(&longer, stamp()), None);
        let mut other_format = v;
        other_format[0] = FORMAT + 1;
        assert_eq!(decode(&other_format, stamp()), None);
    }

    fn attribute() -> impl Strategy<Value = Attribute> {
        prop_oneof![
            Just(Attribute::ContentType),
            Just(Attribute::ContentEncoding),
            Just(Attribute::ContentDisposition),
            Just(Attribute::CacheControl),
            Just(Attribute::ContentLanguage),
            Just(Attribute::StorageClass),
            Just(Attribute::Metadata(META_ORIGIN.into())),
            Just(Attribute::Metadata(META_TS.into())),
            Just(Attribute::Metadata(META_SEQ.into())),
            "[a-z0-9_-]{1,20}".prop_map(|n| Attribute::Metadata(n.into())),
        ]
    }

    proptest! {
        #[test]
        fn any_attributes_read_back_as_written(
            pairs in proptest::collection::vec((attribute(), "\\PC{0,40}"), 0..8),
            mtime_us in any::<u64>(),
            size in any::<u64>(),
            path in any::<u64>(),
        ) {
            let mut attrs = Attributes::new();
            for (a, v) in pairs {
                attrs.insert(a, v.into());
            }
            let stamp = Stamp { mtime_us, size, path };
            let v = encode(stamp, &attrs).expect("encode");
            prop_assert_eq!(decode(&v, stamp), Some(attrs));
        }

        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, stamp());
        }
    }
}
