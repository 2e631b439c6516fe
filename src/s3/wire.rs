//! The S3 wire's small pieces: walship errors as S3 errors (code, status,
//! headers), request bodies read within `max_object_bytes`, Content-MD5 and
//! `x-amz-checksum-*` checked against the bytes, object attributes from
//! request headers, conditional-write headers as a [`Precondition`], and
//! listing's url encoding and continuation tokens. All pure but `collect`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};

use crate::error::Error;
use crate::object::{ObjectMeta, Precondition};

use super::multipart::Refused;

// ---- errors ----

pub(super) fn err(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

pub(super) fn with_status(
    mut e: S3Error,
    status: StatusCode,
    headers: &[(&'static str, String)],
) -> S3Error {
    e.set_status_code(status);
    // These headers replace the answer's own (s3s): keep it typed as XML.
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    for (name, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*name, v);
        }
    }
    e.set_headers(h);
    e
}

/// walship's error as S3's.
pub(super) fn s3_error(e: Error) -> S3Error {
    let msg = e.to_string();
    match e {
        Error::QuorumTimeout { seq, .. } => with_status(
            err(
                S3ErrorCode::Custom("ReplicationTimeout".into()),
                format!(
                    "{msg}. The entry is durable in the log and every target gets it; a retry appends the same bytes again, which is harmless"
                ),
            ),
            StatusCode::GATEWAY_TIMEOUT,
            &[("x-walship-seq", seq.to_string())],
        ),
        Error::NoFreshTarget { .. }
        | Error::ShuttingDown
        | Error::DiskFull(_)
        | Error::LogPoisoned(_)
        | Error::LogReopened => with_status(
            err(S3ErrorCode::ServiceUnavailable, msg),
            StatusCode::SERVICE_UNAVAILABLE,
            &[("retry-after", "1".into())],
        ),
        Error::TooLarge { .. } => err(S3ErrorCode::EntityTooLarge, msg),
        Error::PreconditionFailed { .. } => err(S3ErrorCode::PreconditionFailed, msg),
        Error::InvalidKey { .. } | Error::BadRequest(_) | Error::KeyDoesNotFit { .. } => {
            err(S3ErrorCode::InvalidArgument, msg)
        }
        Error::Target { .. } => with_status(
            err(S3ErrorCode::ServiceUnavailable, msg),
            StatusCode::SERVICE_UNAVAILABLE,
            &[("retry-after", "1".into())],
        ),
        // A full data_dir met below the committer's check is a full disk
        // too: retried like `DiskFull`, not an internal error.
        e if e.is_disk_full() => with_status(
            err(S3ErrorCode::ServiceUnavailable, msg),
            StatusCode::SERVICE_UNAVAILABLE,
            &[("retry-after", "1".into())],
        ),
        _ => err(S3ErrorCode::InternalError, msg),
    }
}

pub(super) fn refused(r: Refused, upload_id: &str) -> S3Error {
    match r {
        Refused::NoSuchUpload => err(
            S3ErrorCode::NoSuchUpload,
            format!(
                "no multipart upload {upload_id:?} for this bucket and key (completed, aborted, or removed after a day)"
            ),
        ),
        Refused::InvalidPart(m) => err(S3ErrorCode::InvalidPart, m),
        Refused::InvalidPartOrder => err(
            S3ErrorCode::InvalidPartOrder,
            "the parts must be listed in ascending order of part number",
        ),
        Refused::EntityTooSmall(n) => err(
            S3ErrorCode::EntityTooSmall,
            format!(
                "part {n} is smaller than 5 MiB; every part but the last must be at least 5 MiB"
            ),
        ),
        Refused::TooLarge(n) => err(
            S3ErrorCode::EntityTooLarge,
            format!("the upload's parts add up to {n} bytes, over max_object_bytes"),
        ),
    }
}

pub(super) fn internal(e: impl std::fmt::Display) -> S3Error {
    err(S3ErrorCode::InternalError, e.to_string())
}

// ---- helpers ----

pub(super) fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

pub(super) fn ms_of(t: &Timestamp) -> u64 {
    let st: SystemTime = time::OffsetDateTime::from(t.clone()).into();
    st.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn crc32_b64(crc: u32) -> String {
    b64(&crc.to_be_bytes())
}

/// Reads a request body, at most `max` bytes.
pub(super) async fn collect(body: Option<StreamingBlob>, max: u64) -> S3Result<Bytes> {
    let Some(mut body) = body else {
        return Ok(Bytes::new());
    };
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| match e.downcast::<S3Error>() {
            Ok(s3) => *s3,
            // s3s's aws-chunked decoder names a bad chunk signature so.
            Err(e) if e.to_string().contains("SignatureMismatch") => with_status(
                err(
                    S3ErrorCode::SignatureDoesNotMatch,
                    "a chunk of the aws-chunked body does not match its signature; nothing was written",
                ),
                StatusCode::FORBIDDEN,
                &[],
            ),
            Err(e) => err(
                S3ErrorCode::IncompleteBody,
                format!("reading the request body failed: {e}"),
            ),
        })?;
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(err(
                S3ErrorCode::EntityTooLarge,
                format!("the body is over max_object_bytes ({max} bytes)"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The checksums a request carries (headers or aws-chunked trailers),
/// checked against the bytes: BadDigest on a mismatch.
pub(super) fn check_digests(
    bytes: &[u8],
    content_md5: Option<&str>,
    mut sums: Checksum,
    trailers: Option<s3s::TrailingHeaders>,
) -> S3Result<()> {
    if let Some(want) = content_md5 {
        use base64::Engine as _;
        let want = base64::engine::general_purpose::STANDARD
            .decode(want)
            .map_err(|_| err(S3ErrorCode::InvalidDigest, "Content-MD5 is not base64"))?;
        let have: [u8; 16] = <md5::Md5 as md5::Digest>::digest(bytes).into();
        if want != have {
            return Err(err(
                S3ErrorCode::BadDigest,
                "the Content-MD5 you sent does not match the bytes received; nothing was written",
            ));
        }
    }
    if let Some(t) = trailers.and_then(|t| t.take()) {
        let get = |n: &str| t.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        sums.checksum_crc32 = get("x-amz-checksum-crc32").or(sums.checksum_crc32);
        sums.checksum_crc32c = get("x-amz-checksum-crc32c").or(sums.checksum_crc32c);
        sums.checksum_sha256 = get("x-amz-checksum-sha256").or(sums.checksum_sha256);
        sums.checksum_sha1 = get("x-amz-checksum-sha1").or(sums.checksum_sha1);
        sums.checksum_crc64nvme = get("x-amz-checksum-crc64nvme").or(sums.checksum_crc64nvme);
    }
    let mut h = s3s::checksum::ChecksumHasher::default();
    if sums.checksum_crc32.is_some() {
        h.crc32 = Some(Default::default());
    }
    if sums.checksum_crc32c.is_some() {
        h.crc32c = Some(Default::default());
    }
    if sums.checksum_sha256.is_some() {
        h.sha256 = Some(Default::default());
    }
    if sums.checksum_sha1.is_some() {
        h.sha1 = Some(Default::default());
    }
    if sums.checksum_crc64nvme.is_some() {
        h.crc64nvme = Some(Default::default());
    }
    h.update(bytes);
    let got = h.finalize();
    for (name, want, have) in [
        (
            "x-amz-checksum-crc32",
            &sums.checksum_crc32,
            &got.checksum_crc32,
        ),
        (
            "x-amz-checksum-crc32c",
            &sums.checksum_crc32c,
            &got.checksum_crc32c,
        ),
        (
            "x-amz-checksum-sha256",
            &sums.checksum_sha256,
            &got.checksum_sha256,
        ),
        (
            "x-amz-checksum-sha1",
            &sums.checksum_sha1,
            &got.checksum_sha1,
        ),
        (
            "x-amz-checksum-crc64nvme",
            &sums.checksum_crc64nvme,
            &got.checksum_crc64nvme,
        ),
    ] {
        if want.is_some() && want != have {
            return Err(err(
                S3ErrorCode::BadDigest,
                format!(
                    "{name} {} does not match the bytes received ({}); nothing was written",
                    want.as_deref().unwrap_or(""),
                    have.as_deref().unwrap_or("")
                ),
            ));
        }
    }
    Ok(())
}

/// The attributes a client sent with an object.
#[allow(clippy::too_many_arguments)]
pub(super) fn attributes(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    cache_control: Option<String>,
    content_language: Option<String>,
    metadata: Option<Metadata>,
) -> ObjectMeta {
    let mut user: Vec<(String, String)> = metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    user.sort();
    ObjectMeta {
        content_type,
        content_encoding,
        content_disposition,
        cache_control,
        content_language,
        user,
        ..ObjectMeta::default()
    }
}

pub(super) fn user_metadata(m: &ObjectMeta) -> Option<Metadata> {
    (!m.user.is_empty()).then(|| m.user.iter().cloned().collect())
}

pub(super) fn precondition(
    if_none_match: Option<&ETagCondition>,
    if_match: Option<&ETagCondition>,
) -> S3Result<Option<Precondition>> {
    match (if_none_match, if_match) {
        (Some(_), Some(_)) => Err(err(
            S3ErrorCode::InvalidArgument,
            "send If-None-Match or If-Match, not both",
        )),
        (Some(ETagCondition::Any), None) => Ok(Some(Precondition::Absent)),
        (Some(ETagCondition::ETag(_)), None) => Err(err(
            S3ErrorCode::NotImplemented,
            "If-None-Match on a write takes only \"*\"",
        )),
        (None, Some(ETagCondition::Any)) => Ok(Some(Precondition::Exists)),
        (None, Some(ETagCondition::ETag(e))) => {
            Ok(Some(Precondition::EtagIs(e.value().to_string())))
        }
        (None, None) => Ok(None),
    }
}

/// Percent-encodes as S3 does for `encoding-type=url` (all but unreserved
/// characters and `/`).
pub(super) fn url_encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

pub(super) fn encode_token(after: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after.as_bytes())
}

pub(super) fn decode_token(t: &str) -> S3Result<String> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            err(
                S3ErrorCode::InvalidArgument,
                "the continuation token is not one this server gave",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walship_errors_become_s3_codes_statuses_and_headers() {
        let e = s3_error(Error::QuorumTimeout {
            seq: 42,
            acked: 1,
            required: 3,
            acked_by: vec!["p".into()],
        });
        assert_eq!(e.code().as_str(), "ReplicationTimeout");
        assert_eq!(e.status_code(), Some(StatusCode::GATEWAY_TIMEOUT));
        let h = e.headers().expect("headers");
        assert_eq!(
            h.get("x-walship-seq").and_then(|v| v.to_str().ok()),
            Some("42")
        );
        assert_eq!(
            h.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/xml")
        );
        let e = s3_error(Error::NoFreshTarget {
            key: "k".into(),
            seq: 3,
        });
        assert_eq!(e.code(), &S3ErrorCode::ServiceUnavailable);
        assert_eq!(e.status_code(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            e.headers()
                .and_then(|h| h.get("retry-after"))
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert_eq!(
            s3_error(Error::ShuttingDown).code(),
            &S3ErrorCode::ServiceUnavailable
        );
        // ENOSPC from sled (a cursor or replay record) is a full disk too.
        let full = s3_error(Error::storage(
            "persisting a cursor",
            std::path::Path::new("/d"),
            sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        ));
        assert_eq!(full.code(), &S3ErrorCode::ServiceUnavailable);
        assert_eq!(full.status_code(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            s3_error(Error::TooLarge { size: 2, max: 1 }).code(),
            &S3ErrorCode::EntityTooLarge
        );
        assert_eq!(
            s3_error(Error::PreconditionFailed {
                key: "k".into(),
                reason: "r".into()
            })
            .code(),
            &S3ErrorCode::PreconditionFailed
        );
        assert_eq!(
            s3_error(Error::BadRequest("x".into())).code(),
            &S3ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn url_encoding_and_tokens() {
        assert_eq!(url_encode("a b/c+d%é"), "a%20b/c%2Bd%25%C3%A9");
        let t = encode_token("dir/x y");
        assert_eq!(decode_token(&t).expect("decodes"), "dir/x y");
        assert!(decode_token("!!").is_err());
    }

    #[test]
    fn digests_are_checked() {
        let b = b"hello";
        let md5 = b64(&<md5::Md5 as md5::Digest>::digest(b));
        assert!(check_digests(b, Some(&md5), Checksum::default(), None).is_ok());
        let e = check_digests(b"other", Some(&md5), Checksum::default(), None).expect_err("bad");
        assert_eq!(e.code(), &S3ErrorCode::BadDigest);
        let good = Checksum {
            checksum_crc32: Some(crc32_b64(crc32fast::hash(b))),
            ..Default::default()
        };
        assert!(check_digests(b, None, good.clone(), None).is_ok());
        let e = check_digests(b"hellp", None, good, None).expect_err("bad crc");
        assert_eq!(e.code(), &S3ErrorCode::BadDigest);
    }

    #[test]
    fn preconditions_from_headers() {
        let any = ETagCondition::Any;
        let e = ETagCondition::ETag(ETag::Strong("abc".into()));
        assert_eq!(
            precondition(Some(&any), None).expect("ok"),
            Some(Precondition::Absent)
        );
        assert_eq!(
            precondition(None, Some(&any)).expect("ok"),
            Some(Precondition::Exists)
        );
        assert_eq!(
            precondition(None, Some(&e)).expect("ok"),
            Some(Precondition::EtagIs("abc".into()))
        );
        assert!(precondition(Some(&e), None).is_err());
        assert!(precondition(Some(&any), Some(&e)).is_err());
    }
}
