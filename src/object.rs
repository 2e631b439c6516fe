//! What an object carries besides its bytes, and the conditions a write
//! can put on the version it replaces.
//!
//! Every put this build appends carries an [`ObjectMeta`]: the MD5 ETag of
//! the bytes (S3's; for a multipart upload the MD5 of the part MD5s with
//! `-N`), the crc32 of the bytes, the append time, and the HTTP attributes a
//! client sent (Content-Type, Content-Encoding, Content-Disposition,
//! Cache-Control, Content-Language, `x-amz-meta-*`). It is part of the log
//! entry (codec v2) and of the key index, so the log answers an S3 HEAD or
//! LIST without reading a target, and every target that keeps attributes
//! gets them with the object.
//!
//! Invariant: `ObjectMeta` is fixed once its entry is appended; it describes
//! exactly the bytes of that entry.

use std::sync::Arc;

use md5::{Digest, Md5};
use object_store::{Attribute, AttributeValue, Attributes};
use serde::{Deserialize, Serialize};

/// Most bytes of encoded metadata one object carries (S3 allows 2 KB of
/// user metadata; the rest is headers).
pub const MAX_META_BYTES: usize = 8 * 1024;

/// The attributes of one version of an object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The S3 ETag without quotes: hex MD5, or `hex-N` for a multipart one.
    pub etag: String,
    /// crc32 (IEEE) of the bytes.
    pub crc32: u32,
    /// When the entry was appended, unix ms (set by the log).
    pub ts_ms: u64,
    /// Content-Type as the client sent it.
    pub content_type: Option<String>,
    /// Content-Encoding.
    pub content_encoding: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Content-Language.
    pub content_language: Option<String>,
    /// `x-amz-meta-NAME: VALUE`, names lowercased, sorted by name.
    pub user: Vec<(String, String)>,
}

impl ObjectMeta {
    /// The metadata of `bytes` with no attributes: MD5 ETag and crc32.
    pub fn of(bytes: &[u8]) -> ObjectMeta {
        ObjectMeta {
            etag: md5_hex(bytes),
            crc32: crc32fast::hash(bytes),
            ..ObjectMeta::default()
        }
    }

    /// The metadata of `bytes` as a store holds them with `attrs` (an
    /// object walship did not write, adopted into the log): ETag and crc32
    /// of the bytes, the HTTP attributes and user metadata the store kept.
    pub fn from_attributes(bytes: &[u8], attrs: &Attributes) -> ObjectMeta {
        let mut m = ObjectMeta::of(bytes);
        for (k, v) in attrs.iter() {
            let v = v.to_string();
            match k {
                Attribute::ContentType => m.content_type = Some(v),
                Attribute::ContentEncoding => m.content_encoding = Some(v),
                Attribute::ContentDisposition => m.content_disposition = Some(v),
                Attribute::CacheControl => m.cache_control = Some(v),
                Attribute::ContentLanguage => m.content_language = Some(v),
                Attribute::Metadata(name) => m.user.push((name.to_ascii_lowercase(), v)),
                _ => {}
            }
        }
        m.user.sort();
        m
    }

    /// The encoded size, checked against [`MAX_META_BYTES`].
    pub fn check_size(&self) -> std::result::Result<(), String> {
        let n = self.encode().len();
        if n > MAX_META_BYTES {
            return Err(format!(
                "the object's metadata and headers take {n} bytes, over the {MAX_META_BYTES} walship keeps per object; send fewer or shorter x-amz-meta-* headers"
            ));
        }
        Ok(())
    }

    /// bincode 2, standard config (the form inside log entries and the key
    /// index).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_at(self.ts_ms)
    }

    /// [`ObjectMeta::encode`] with `ts_ms` in place of its own (the log
    /// stamps the append time without copying the metadata).
    pub fn encode_at(&self, ts_ms: u64) -> Vec<u8> {
        let view = MetaRef {
            etag: &self.etag,
            crc32: self.crc32,
            ts_ms,
            content_type: self.content_type.as_deref(),
            content_encoding: self.content_encoding.as_deref(),
            content_disposition: self.content_disposition.as_deref(),
            cache_control: self.cache_control.as_deref(),
            content_language: self.content_language.as_deref(),
            user: &self.user,
        };
        bincode::serde::encode_to_vec(&view, bincode::config::standard())
            .unwrap_or_else(|e| unreachable!("bincode cannot fail on ObjectMeta: {e}"))
    }

    /// Decodes [`ObjectMeta::encode`]'s bytes; `None` when they are not one.
    pub fn decode(b: &[u8]) -> Option<ObjectMeta> {
        let (m, used): (ObjectMeta, usize) =
            bincode::serde::decode_from_slice(b, bincode::config::standard()).ok()?;
        (used == b.len()).then_some(m)
    }

    /// The ETag as S3 sends it, in quotes.
    pub fn quoted_etag(&self) -> String {
        format!("\"{}\"", self.etag)
    }

    /// The attributes an object store keeps with the object.
    pub fn attributes(&self) -> Attributes {
        let mut a = Attributes::new();
        for (attr, v) in [
            (Attribute::ContentType, &self.content_type),
            (Attribute::ContentEncoding, &self.content_encoding),
            (Attribute::ContentDisposition, &self.content_disposition),
            (Attribute::CacheControl, &self.cache_control),
            (Attribute::ContentLanguage, &self.content_language),
        ] {
            if let Some(v) = v {
                a.insert(attr, AttributeValue::from(v.clone()));
            }
        }
        for (k, v) in &self.user {
            a.insert(
                Attribute::Metadata(k.clone().into()),
                AttributeValue::from(v.clone()),
            );
        }
        a
    }
}

/// [`ObjectMeta`] borrowed, with the same encoding.
#[derive(Serialize)]
struct MetaRef<'a> {
    etag: &'a str,
    crc32: u32,
    ts_ms: u64,
    content_type: Option<&'a str>,
    content_encoding: Option<&'a str>,
    content_disposition: Option<&'a str>,
    cache_control: Option<&'a str>,
    content_language: Option<&'a str>,
    user: &'a [(String, String)],
}

/// `attrs` with user metadata names Azure accepts (C# identifiers:
/// letters, digits and `_`, not starting with a digit): any other character
/// becomes `_`, and a leading digit gets a `_` before it. Azure refuses the
/// others, and reads answer from the log's own copy of the names anyway.
pub fn azure_safe(attrs: &Attributes) -> Attributes {
    attrs
        .iter()
        .map(|(k, v)| match k {
            Attribute::Metadata(name) => {
                let mut n: String = name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                if n.is_empty() || n.starts_with(|c: char| c.is_ascii_digit()) {
                    n.insert(0, '_');
                }
                (Attribute::Metadata(n.into()), v.clone())
            }
            other => (other.clone(), v.clone()),
        })
        .collect()
}

/// Shared, immutable metadata (entries and index records share one copy).
pub type Meta = Arc<ObjectMeta>;

/// Lowercase hex MD5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

/// The multipart ETag of parts whose MD5s are `part_md5s`: MD5 of the
/// concatenated digests, `-N`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = Md5::new();
    for d in part_md5s {
        h.update(d);
    }
    format!("{}-{}", hex(&h.finalize()), part_md5s.len())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// What a conditional write requires of the key's newest version in the
/// log, decided by the committer at append time, atomically with every
/// other write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `If-None-Match: *`: the key must not exist (its newest entry is a
    /// delete, or there is none).
    Absent,
    /// `If-Match: *`: the key must exist.
    Exists,
    /// `If-Match: ETAG`: the key's newest version must have this ETag.
    EtagIs(String),
}

impl Precondition {
    /// Whether a key whose newest version is `current` (`None`: absent;
    /// `Some(etag)`, empty when unknown) satisfies the condition.
    pub fn holds(&self, current: Option<&str>) -> bool {
        match (self, current) {
            (Precondition::Absent, cur) => cur.is_none(),
            (Precondition::Exists, cur) => cur.is_some(),
            (Precondition::EtagIs(want), Some(have)) => {
                !have.is_empty() && want.trim_matches('"') == have
            }
            (Precondition::EtagIs(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_s3s() {
        // Known MD5s.
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
        let p: [u8; 16] = Md5::digest(b"hello").into();
        let e = multipart_etag(&[p, p]);
        assert!(e.ends_with("-2") && e.len() == 34, "{e}");
        assert_ne!(e, multipart_etag(&[p]));
    }

    #[test]
    fn meta_roundtrips_and_junk_is_refused() {
        let mut m = ObjectMeta::of(b"x");
        m.content_type = Some("text/csv".into());
        m.user = vec![("a".into(), "1".into())];
        assert_eq!(ObjectMeta::decode(&m.encode()), Some(m.clone()));
        let mut b = m.encode();
        b.push(0);
        assert_eq!(ObjectMeta::decode(&b), None, "trailing bytes");
        assert_eq!(ObjectMeta::decode(&[0xff]), None);
        let a = m.attributes();
        assert_eq!(
            a.get(&Attribute::ContentType).map(|v| v.as_ref()),
            Some("text/csv")
        );
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn metadata_from_a_stores_attributes() {
        let mut a = Attributes::new();
        a.insert(Attribute::ContentType, AttributeValue::from("text/csv"));
        a.insert(
            Attribute::Metadata("Owner".into()),
            AttributeValue::from("qa"),
        );
        let m = ObjectMeta::from_attributes(b"x", &a);
        assert_eq!(m.etag, md5_hex(b"x"));
        assert_eq!(m.content_type.as_deref(), Some("text/csv"));
        assert_eq!(m.user, vec![("owner".to_string(), "qa".to_string())]);
        assert_eq!(m.attributes().len(), 2);
    }

    #[test]
    fn azure_gets_metadata_names_it_accepts() {
        let mut a = Attributes::new();
        a.insert(
            Attribute::Metadata("original-filename".into()),
            AttributeValue::from("x"),
        );
        a.insert(Attribute::Metadata("1st".into()), AttributeValue::from("y"));
        a.insert(
            Attribute::Metadata("walshipseq".into()),
            AttributeValue::from("3"),
        );
        a.insert(Attribute::ContentType, AttributeValue::from("text/csv"));
        let safe = azure_safe(&a);
        let names: Vec<String> = safe
            .iter()
            .filter_map(|(k, _)| match k {
                Attribute::Metadata(n) => Some(n.to_string()),
                _ => None,
            })
            .collect();
        for want in ["original_filename", "_1st", "walshipseq"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert_eq!(
            safe.get(&Attribute::ContentType).map(|v| v.as_ref()),
            Some("text/csv")
        );
    }

    #[test]
    fn preconditions() {
        use Precondition::*;
        assert!(Absent.holds(None));
        assert!(!Absent.holds(Some("e")));
        assert!(Exists.holds(Some("")));
        assert!(!Exists.holds(None));
        assert!(EtagIs("\"e\"".into()).holds(Some("e")));
        assert!(EtagIs("e".into()).holds(Some("e")));
        assert!(!EtagIs("e".into()).holds(Some("f")));
        assert!(!EtagIs("e".into()).holds(None));
        assert!(!EtagIs("".into()).holds(Some("")), "unknown never matches");
    }

    #[test]
    fn oversized_metadata_is_named() {
        let mut m = ObjectMeta::of(b"x");
        m.user = vec![("big".into(), "v".repeat(MAX_META_BYTES))];
        let e = m.check_size().expect_err("too big");
        assert!(e.contains("x-amz-meta"), "{e}");
    }
}
