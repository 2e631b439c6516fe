//! The attributes of a local directory's object (Content-Type and the
//! like, and the `walshiporigin`, `walshipts`, `walshipseq` metadata every
//! write carries), kept in one extended attribute of the object's file,
//! `user.walship`.
//!
//! Invariant: attributes are read back only for the very file they were
//! written with. The value records the file's modification time (µs) and
//! size when the put wrote it; a file changed in place since (by hand, by
//! another program: the attribute stays with the inode) no longer matches,
//! and reads as a file without attributes, which is what walship makes of
//! any hand edit (see `apply`: its bytes decide whose it is). A value that
//! does not decode reads the same way.
//!
//! The value is small on purpose: ext4 keeps an attribute of up to about
//! 80 bytes inside the inode, and a larger one costs a block of its own per
//! file. walship's own three metadata take one byte of name each.

use object_store::{Attribute, AttributeValue, Attributes};
use serde::{Deserialize, Serialize};

use crate::conflict::{META_ORIGIN, META_SEQ, META_TS};

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
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub(crate) fn of(m: &std::fs::Metadata) -> Stamp {
        let mtime_us = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default()
            .as_micros();
        Stamp {
            mtime_us: u64::try_from(mtime_us).unwrap_or(u64::MAX),
            size: m.len(),
        }
    }
}

/// One attribute: a one-byte kind, and the name for other metadata.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    format: u8,
    stamp: Stamp,
    attrs: Vec<(u8, Option<String>, String)>,
}

const CONTENT_TYPE: u8 = 1;
const CONTENT_ENCODING: u8 = 2;
const CONTENT_DISPOSITION: u8 = 3;
const CACHE_CONTROL: u8 = 4;
const CONTENT_LANGUAGE: u8 = 5;
const STORAGE_CLASS: u8 = 6;
const ORIGIN: u8 = 7;
const TS: u8 = 8;
const SEQ: u8 = 9;
const OTHER_META: u8 = 10;

fn kind_of(a: &Attribute) -> Option<(u8, Option<String>)> {
    Some(match a {
        Attribute::ContentType => (CONTENT_TYPE, None),
        Attribute::ContentEncoding => (CONTENT_ENCODING, None),
        Attribute::ContentDisposition => (CONTENT_DISPOSITION, None),
        Attribute::CacheControl => (CACHE_CONTROL, None),
        Attribute::ContentLanguage => (CONTENT_LANGUAGE, None),
        Attribute::StorageClass => (STORAGE_CLASS, None),
        Attribute::Metadata(n) if n == META_ORIGIN => (ORIGIN, None),
        Attribute::Metadata(n) if n == META_TS => (TS, None),
        Attribute::Metadata(n) if n == META_SEQ => (SEQ, None),
        Attribute::Metadata(n) => (OTHER_META, Some(n.to_string())),
        _ => return None,
    })
}

fn attribute_of(kind: u8, name: Option<String>) -> Option<Attribute> {
    Some(match (kind, name) {
        (CONTENT_TYPE, None) => Attribute::ContentType,
        (CONTENT_ENCODING, None) => Attribute::ContentEncoding,
        (CONTENT_DISPOSITION, None) => Attribute::ContentDisposition,
        (CACHE_CONTROL, None) => Attribute::CacheControl,
        (CONTENT_LANGUAGE, None) => Attribute::ContentLanguage,
        (STORAGE_CLASS, None) => Attribute::StorageClass,
        (ORIGIN, None) => Attribute::Metadata(META_ORIGIN.into()),
        (TS, None) => Attribute::Metadata(META_TS.into()),
        (SEQ, None) => Attribute::Metadata(META_SEQ.into()),
        (OTHER_META, Some(n)) => Attribute::Metadata(n.into()),
        _ => return None,
    })
}

/// The value kept for `attrs` on a file of `stamp`; the name of an
/// attribute it cannot keep (one object_store added after this build).
pub(crate) fn encode(stamp: Stamp, attrs: &Attributes) -> Result<Vec<u8>, String> {
    let mut wire = Wire {
        format: FORMAT,
        stamp,
        attrs: Vec::with_capacity(attrs.len()),
    };
    for (a, v) in attrs {
        let (kind, name) = kind_of(a).ok_or_else(|| format!("{a:?}"))?;
        wire.attrs.push((kind, name, v.as_ref().to_string()));
    }
    // Sorted, so that equal attributes are equal bytes.
    wire.attrs.sort();
    bincode::serde::encode_to_vec(&wire, bincode::config::standard()).map_err(|e| e.to_string())
}

/// The attributes in `value` if it was written for a file of `stamp`;
/// `None` for a file changed since, or a value that does not decode.
pub(crate) fn decode(value: &[u8], stamp: Stamp) -> Option<Attributes> {
    if value.len() > MAX_VALUE {
        return None;
    }
    let config = bincode::config::standard().with_limit::<MAX_VALUE>();
    let (wire, used): (Wire, usize) = bincode::serde::decode_from_slice(value, config).ok()?;
    if used != value.len() || wire.format != FORMAT || wire.stamp != stamp {
        return None;
    }
    let mut attrs = Attributes::with_capacity(wire.attrs.len());
    for (kind, name, v) in wire.attrs {
        attrs.insert(attribute_of(kind, name)?, AttributeValue::from(v));
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
        let v = encode(stamp(), &walships(123_456)).expect("encode");
        // ext4 keeps up to about 80 bytes of value in a 256-byte inode.
        assert!(v.len() <= 64, "{} bytes", v.len());
        assert_eq!(decode(&v, stamp()), Some(walships(123_456)));
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
        assert_eq!(decode(&v, touched), None);
        assert_eq!(decode(&v, grown), None);
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
        ) {
            let mut attrs = Attributes::new();
            for (a, v) in pairs {
                attrs.insert(a, v.into());
            }
            let stamp = Stamp { mtime_us, size };
            let v = encode(stamp, &attrs).expect("encode");
            prop_assert_eq!(decode(&v, stamp), Some(attrs));
        }

        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, stamp());
        }
    }
}
