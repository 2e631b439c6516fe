//! The S3 API (SPEC "S3 API"): every S3 client writes through walship.
//!
//! The protocol (SigV4 headers, presigned URLs, aws-chunked bodies, XML,
//! routing) is `s3s`'s; this module maps each operation onto the same
//! [`Replicator`] the HTTP API uses, so it is the same log, modes, cursors,
//! conflicts and fresh reads. A bucket is a key prefix (`buckets`); object
//! attributes and the MD5 ETag travel inside the log entry
//! ([`crate::object::ObjectMeta`]); conditional puts are decided by the
//! committer at append time; multipart parts are staged durably
//! (`multipart`) and completed as one entry. Listing is the log's key
//! index in key order (`listing`), so it shows exactly the acknowledged
//! writes.
//!
//! Invariant: an S3 request changes the log only through
//! [`Replicator::put_object`] and [`Replicator::delete`]; anything refused
//! (bad signature, bad key, bad digest, failed precondition, too large) is
//! refused before it is appended.

pub mod buckets;
pub mod listing;
pub mod multipart;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use crate::config::{Mode, ReadPreference, S3Config};
use crate::error::Error;
use crate::key::Key;
use crate::object::{ObjectMeta, Precondition};
use crate::replicator::Replicator;
use crate::storage::KeyInfo;

use buckets::{Bucket, Buckets, Create};
use listing::{Offer, Page};
use multipart::{Refused, Upload, Uploads};

/// The S3 operations walship serves, for `walship_s3_requests_total`.
pub fn op_of(
    method: &http::Method,
    host: &str,
    path: &str,
    query: &str,
    copy: bool,
) -> &'static str {
    let has = |q: &str| {
        query
            .split('&')
            .any(|kv| kv == q || kv.starts_with(&format!("{q}=")))
    };
    let vhost = virtual_bucket(host).is_some();
    let rest = path.trim_start_matches('/');
    // Path style: "" (service), "bucket[/]" or "bucket/key".
    let (bucket, key) = if vhost {
        (true, !rest.is_empty())
    } else {
        match rest.split_once('/') {
            None => (!rest.is_empty(), false),
            Some((_, k)) => (true, !k.is_empty()),
        }
    };
    use http::Method as M;
    match (bucket, key) {
        (false, _) if *method == M::GET => "ListBuckets",
        (false, _) => "Other",
        (true, false) => match *method {
            M::GET if has("location") => "GetBucketLocation",
            M::GET if has("uploads") => "ListMultipartUploads",
            M::GET if has("list-type") => "ListObjectsV2",
            M::GET
                if query.is_empty()
                    || has("prefix")
                    || has("delimiter")
                    || has("marker")
                    || has("max-keys")
                    || has("encoding-type") =>
            {
                "ListObjects"
            }
            M::HEAD => "HeadBucket",
            M::PUT if query.is_empty() => "CreateBucket",
            M::DELETE if query.is_empty() => "DeleteBucket",
            M::POST if has("delete") => "DeleteObjects",
            _ => "Other",
        },
        (true, true) => match *method {
            M::PUT if has("partNumber") && has("uploadId") => "UploadPart",
            M::PUT if copy => "CopyObject",
            M::PUT if query.is_empty() => "PutObject",
            M::GET if has("uploadId") => "ListParts",
            M::GET => "GetObject",
            M::HEAD => "HeadObject",
            M::DELETE if has("uploadId") => "AbortMultipartUpload",
            M::DELETE => "DeleteObject",
            M::POST if has("uploads") => "CreateMultipartUpload",
            M::POST if has("uploadId") => "CompleteMultipartUpload",
            _ => "Other",
        },
    }
}

/// The bucket named by a virtual-hosted-style `Host`
/// (`BUCKET.localhost[:port]` or `BUCKET.s3.localhost[:port]`).
pub fn virtual_bucket(host: &str) -> Option<&str> {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    for base in [".s3.localhost", ".localhost"] {
        if let Some(b) = name.strip_suffix(base)
            && !b.is_empty()
            && !b.contains(':')
        {
            return Some(b);
        }
    }
    None
}

/// Path-style addressing everywhere; virtual-hosted on `*.localhost`.
struct Hosts;

impl s3s::host::S3Host for Hosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<s3s::host::VirtualHost<'a>> {
        Ok(match virtual_bucket(host) {
            Some(b) => s3s::host::VirtualHost::new(host).with_bucket(b),
            None => s3s::host::VirtualHost::new(host),
        })
    }
}

/// walship behind the `S3` trait.
pub struct Front {
    rep: Arc<Replicator>,
    buckets: Arc<Buckets>,
    uploads: Arc<Uploads>,
    region: String,
    max_object_bytes: u64,
}

/// Builds the S3 service for `rep` (whose config has `[s3]`), with SigV4
/// auth for the one configured key, and starts the hourly sweep of stale
/// multipart uploads (stopped with `stop`).
pub fn service(
    rep: Arc<Replicator>,
    s3: &S3Config,
    stop: tokio_util::sync::CancellationToken,
) -> crate::error::Result<s3s::service::S3Service> {
    let secret = match (&s3.secret_from_env, &s3.secret_access_key_file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| {
                Error::io(
                    format!("reading s3.secret_access_key_file {}", f.display()),
                    e,
                )
            })?
            .trim()
            .to_string(),
        (None, None) => {
            return Err(Error::Config {
                problems: vec!["s3.secret_access_key_file: not set, and WALSHIP_S3_SECRET_ACCESS_KEY is not either".into()],
            });
        }
    };
    let buckets = Arc::new(Buckets::open(s3, rep.log().storage().clone())?);
    let uploads = Arc::new(Uploads::open(&rep.config().data_dir)?);
    {
        let uploads = uploads.clone();
        tokio::spawn(async move {
            loop {
                match uploads.sweep(crate::log::now_ms()) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        removed = n,
                        "removed multipart uploads not completed within a day"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "sweeping stale multipart uploads failed; retrying in an hour")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
        });
    }
    let front = Front {
        max_object_bytes: rep.config().max_object_bytes,
        rep,
        buckets,
        uploads,
        region: s3.region.clone(),
    };
    let mut b = s3s::service::S3ServiceBuilder::new(front);
    b.set_auth(s3s::auth::SimpleAuth::from_single(
        s3.access_key_id.clone(),
        secret,
    ));
    b.set_host(Hosts);
    Ok(b.build())
}

// ---- errors ----

fn err(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

fn with_status(mut e: S3Error, status: StatusCode, headers: &[(&'static str, String)]) -> S3Error {
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
fn s3_error(e: Error) -> S3Error {
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
        | Error::LogPoisoned(_) => with_status(
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
        _ => err(S3ErrorCode::InternalError, msg),
    }
}

fn refused(r: Refused, upload_id: &str) -> S3Error {
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

fn internal(e: impl std::fmt::Display) -> S3Error {
    err(S3ErrorCode::InternalError, e.to_string())
}

// ---- helpers ----

fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

fn ms_of(t: &Timestamp) -> u64 {
    let st: SystemTime = time::OffsetDateTime::from(t.clone()).into();
    st.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn crc32_b64(crc: u32) -> String {
    b64(&crc.to_be_bytes())
}

/// Reads a request body, at most `max` bytes.
async fn collect(body: Option<StreamingBlob>, max: u64) -> S3Result<Bytes> {
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
fn check_digests(
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
fn attributes(
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

fn user_metadata(m: &ObjectMeta) -> Option<Metadata> {
    (!m.user.is_empty()).then(|| m.user.iter().cloned().collect())
}

fn precondition(
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
fn url_encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

fn encode_token(after: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after.as_bytes())
}

fn decode_token(t: &str) -> S3Result<String> {
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

/// One listing page, before it becomes v1 or v2 XML.
struct Listed {
    objects: Vec<(String, KeyInfo)>,
    prefixes: Vec<String>,
    next_after: Option<String>,
}

impl Front {
    fn bucket(&self, name: &str) -> S3Result<Bucket> {
        self.buckets.get(name).ok_or_else(|| {
            err(
                S3ErrorCode::NoSuchBucket,
                format!("no bucket {name:?}: add it to [[s3.buckets]] in the config (or create it, with allow_create_bucket)"),
            )
        })
    }

    fn key(&self, b: &Bucket, key: &str) -> S3Result<Key> {
        Key::parse(&format!("{}{key}", b.prefix)).map_err(|e| match e {
            Error::InvalidKey { .. } if b.prefix.len() + key.len() > 1024 => {
                err(S3ErrorCode::KeyTooLongError, e.to_string())
            }
            e => err(S3ErrorCode::InvalidArgument, e.to_string()),
        })
    }

    fn mode(&self, headers: &HeaderMap, b: &Bucket) -> S3Result<Option<Mode>> {
        if let Some(v) = headers.get("x-walship-mode") {
            let v = v.to_str().unwrap_or("");
            return v
                .parse::<Mode>()
                .map(Some)
                .map_err(|e| err(S3ErrorCode::InvalidArgument, format!("x-walship-mode: {e}")));
        }
        Ok(b.mode)
    }

    fn read_pref(&self, b: &Bucket) -> Option<ReadPreference> {
        b.read_preference
    }

    async fn list(
        &self,
        b: &Bucket,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
        after: &str,
    ) -> S3Result<Listed> {
        let mut page: Page<KeyInfo> = Page::new(prefix, delimiter, max_keys, after);
        if max_keys == 0 {
            return Ok(Listed {
                objects: vec![],
                prefixes: vec![],
                next_after: None,
            });
        }
        let full_prefix = format!("{}{prefix}", b.prefix);
        let mut cursor = if after.is_empty() {
            String::new()
        } else {
            format!("{}{after}", b.prefix)
        };
        const BATCH: usize = 1000;
        'outer: loop {
            let batch = self
                .rep
                .list(&full_prefix, &cursor, BATCH)
                .await
                .map_err(s3_error)?;
            let n = batch.len();
            for (k, info) in batch {
                let rel = &k[b.prefix.len()..];
                if page.offer(rel, info) == Offer::Full {
                    break 'outer;
                }
                cursor = k;
            }
            if n < BATCH {
                break;
            }
        }
        let next_after = page.next_after();
        Ok(Listed {
            objects: page.objects,
            prefixes: page.prefixes,
            next_after,
        })
    }

    fn object(key: String, info: &KeyInfo, url: bool) -> Object {
        let meta = info.meta.as_deref();
        Object {
            key: Some(if url { url_encode(&key) } else { key }),
            size: Some(info.size as i64),
            e_tag: meta
                .filter(|m| !m.etag.is_empty())
                .map(|m| ETag::Strong(m.etag.clone())),
            last_modified: meta.map(|m| timestamp(m.ts_ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        }
    }

    /// The stored metadata of a read, or (for keys written before
    /// metadata) what the bytes give.
    fn meta_of(info: Option<&KeyInfo>, bytes: Option<&[u8]>) -> ObjectMeta {
        match (info.and_then(|i| i.meta.as_deref()), bytes) {
            (Some(m), _) => m.clone(),
            (None, Some(b)) => ObjectMeta::of(b),
            (None, None) => ObjectMeta::default(),
        }
    }

    /// GET/HEAD conditions against the version the log knows.
    fn check_read_conditions(
        m: &ObjectMeta,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
        if_modified_since: Option<&Timestamp>,
        if_unmodified_since: Option<&Timestamp>,
    ) -> S3Result<()> {
        let etag = ETag::Strong(m.etag.clone());
        let secs = m.ts_ms / 1000;
        if let Some(c) = if_match {
            let ok = match c {
                ETagCondition::Any => true,
                ETagCondition::ETag(e) => etag.strong_cmp(e),
            };
            if !ok {
                return Err(err(
                    S3ErrorCode::PreconditionFailed,
                    "If-Match: the object has another ETag",
                ));
            }
        } else if let Some(t) = if_unmodified_since
            && secs > ms_of(t) / 1000
        {
            return Err(err(
                S3ErrorCode::PreconditionFailed,
                "If-Unmodified-Since: the object changed since",
            ));
        }
        let not_modified = || {
            with_status(
                S3Error::new(S3ErrorCode::NotModified),
                StatusCode::NOT_MODIFIED,
                &[],
            )
        };
        if let Some(c) = if_none_match {
            let hit = match c {
                ETagCondition::Any => true,
                ETagCondition::ETag(e) => etag.weak_cmp(e),
            };
            if hit {
                return Err(not_modified());
            }
        } else if let Some(t) = if_modified_since
            && secs <= ms_of(t) / 1000
        {
            return Err(not_modified());
        }
        Ok(())
    }

    fn read_headers(read_served_by: &str, seq: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(read_served_by) {
            h.insert("x-walship-served-by", v);
        }
        if let Some(seq) = seq {
            h.insert("x-walship-seq", HeaderValue::from(seq));
        }
        h
    }

    fn ack_headers(seq: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-walship-seq", HeaderValue::from(seq));
        h
    }
}

#[async_trait::async_trait]
impl S3 for Front {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self
            .buckets
            .all()
            .into_iter()
            .map(|b| s3s::dto::Bucket {
                name: Some(b.name),
                creation_date: Some(timestamp(b.created_ms)),
                bucket_region: Some(self.region.clone()),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner {
                display_name: Some("walship".into()),
                id: Some("walship".into()),
            }),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket)?;
        // us-east-1 is answered as no constraint, as S3 does.
        let c = (self.region != "us-east-1")
            .then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: c,
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = req.input.bucket;
        if !crate::config::valid_bucket_name(&name) {
            return Err(err(
                S3ErrorCode::InvalidBucketName,
                format!(
                    "{name:?} is not a bucket name (3-63 lowercase letters, digits, '.' and '-')"
                ),
            ));
        }
        match self
            .buckets
            .create(&name, crate::log::now_ms())
            .map_err(s3_error)?
        {
            Create::Made => Ok(S3Response::new(CreateBucketOutput {
                location: Some(format!("/{name}")),
            })),
            Create::Exists => Err(err(
                S3ErrorCode::BucketAlreadyOwnedByYou,
                format!("bucket {name:?} exists and is yours"),
            )),
            Create::NotAllowed => Err(err(
                S3ErrorCode::AccessDenied,
                format!(
                    "CreateBucket is off: add {name:?} to [[s3.buckets]] in the config, or set [s3] allow_create_bucket = true"
                ),
            )),
            Create::Overlaps(other) => Err(err(
                S3ErrorCode::InvalidBucketName,
                format!(
                    "bucket {name:?} would map to keys {name}/ that overlap bucket {other:?}'s prefix"
                ),
            )),
        }
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        if !b.created {
            return Err(err(
                S3ErrorCode::AccessDenied,
                format!(
                    "bucket {:?} is configured in [[s3.buckets]]; remove it there",
                    b.name
                ),
            ));
        }
        if !self
            .rep
            .list(&b.prefix, "", 1)
            .await
            .map_err(s3_error)?
            .is_empty()
        {
            return Err(err(
                S3ErrorCode::BucketNotEmpty,
                format!("bucket {:?} holds objects; delete them first", b.name),
            ));
        }
        self.buckets.remove(&b.name).map_err(s3_error)?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let key = self.key(&b, &req.input.key)?;
        let mode = self.mode(&req.headers, &b)?;
        let input = req.input;
        if let Some(len) = input.content_length
            && len as u64 > self.max_object_bytes
        {
            return Err(err(
                S3ErrorCode::EntityTooLarge,
                format!(
                    "the body of {len} bytes is over max_object_bytes ({})",
                    self.max_object_bytes
                ),
            ));
        }
        let cond = precondition(input.if_none_match.as_ref(), input.if_match.as_ref())?;
        let bytes = collect(input.body, self.max_object_bytes).await?;
        let sums = Checksum {
            checksum_crc32: input.checksum_crc32,
            checksum_crc32c: input.checksum_crc32c,
            checksum_sha256: input.checksum_sha256,
            checksum_sha1: input.checksum_sha1,
            checksum_crc64nvme: input.checksum_crc64nvme,
            ..Default::default()
        };
        let asked_crc32 = sums.checksum_crc32.is_some();
        check_digests(
            &bytes,
            input.content_md5.as_deref(),
            sums,
            req.trailing_headers,
        )?;
        let mut meta = attributes(
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.cache_control,
            input.content_language,
            input.metadata,
        );
        let fresh = ObjectMeta::of(&bytes);
        meta.etag = fresh.etag;
        meta.crc32 = fresh.crc32;
        let etag = meta.etag.clone();
        let crc = meta.crc32;
        let ack = self
            .rep
            .put_object(&key, bytes, meta, cond, mode)
            .await
            .map_err(s3_error)?;
        let mut r = S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            checksum_crc32: asked_crc32.then(|| crc32_b64(crc)),
            ..Default::default()
        });
        r.headers = Self::ack_headers(ack.seq);
        Ok(r)
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let key = self.key(&b, &req.input.key)?;
        let input = req.input;
        if input.part_number.is_some() {
            return Err(err(
                S3ErrorCode::NotImplemented,
                "GetObject by partNumber is not served; use a Range",
            ));
        }
        let read = self
            .rep
            .get(&key, self.read_pref(&b))
            .await
            .map_err(s3_error)?;
        let headers = Self::read_headers(&read.served_by, read.seq);
        let Some(bytes) = read.found else {
            return Err(err(
                S3ErrorCode::NoSuchKey,
                format!("no object {:?} in bucket {:?}", input.key, b.name),
            ));
        };
        let meta = Self::meta_of(read.info.as_ref(), Some(&bytes));
        Self::check_read_conditions(
            &meta,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let len = bytes.len() as u64;
        let (body, content_range) = match input.range {
            None => (bytes, None),
            Some(r) => {
                let span = r.check(len).map_err(|_| {
                    err(
                        S3ErrorCode::InvalidRange,
                        format!("the range is outside the object's {len} bytes"),
                    )
                })?;
                (
                    bytes.slice(span.start as usize..span.end as usize),
                    Some(format!("bytes {}-{}/{len}", span.start, span.end - 1)),
                )
            }
        };
        let whole = content_range.is_none();
        let checksum = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED)
            && whole;
        let n = body.len() as i64;
        let mut r = S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::from(s3s::Body::from(body))),
            content_length: Some(n),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            last_modified: Some(timestamp(meta.ts_ms)),
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_disposition: meta.content_disposition.clone(),
            cache_control: meta.cache_control.clone(),
            content_language: meta.content_language.clone(),
            metadata: user_metadata(&meta),
            checksum_crc32: checksum.then(|| crc32_b64(meta.crc32)),
            checksum_type: checksum.then(|| ChecksumType::from_static(ChecksumType::FULL_OBJECT)),
            ..Default::default()
        });
        r.headers = headers;
        Ok(r)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let key = self.key(&b, &req.input.key)?;
        let input = req.input;
        let read = self
            .rep
            .head_object(&key, self.read_pref(&b))
            .await
            .map_err(s3_error)?;
        let headers = Self::read_headers(&read.served_by, read.seq);
        let Some(found) = read.found else {
            return Err(err(
                S3ErrorCode::NoSuchKey,
                format!("no object {:?} in bucket {:?}", input.key, b.name),
            ));
        };
        let meta = match read.info.as_ref().and_then(|i| i.meta.as_deref()) {
            Some(m) => m.clone(),
            // Written before metadata: the bytes give the ETag.
            None => {
                let r = self
                    .rep
                    .get(&key, self.read_pref(&b))
                    .await
                    .map_err(s3_error)?;
                Self::meta_of(None, r.found.as_deref())
            }
        };
        Self::check_read_conditions(
            &meta,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let checksum = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let mut r = S3Response::new(HeadObjectOutput {
            content_length: Some(found.size as i64),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            last_modified: Some(timestamp(meta.ts_ms)),
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_disposition: meta.content_disposition.clone(),
            cache_control: meta.cache_control.clone(),
            content_language: meta.content_language.clone(),
            metadata: user_metadata(&meta),
            checksum_crc32: checksum.then(|| crc32_b64(meta.crc32)),
            ..Default::default()
        });
        r.headers = headers;
        Ok(r)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let key = self.key(&b, &req.input.key)?;
        let mode = self.mode(&req.headers, &b)?;
        let ack = self.rep.delete(&key, mode).await.map_err(s3_error)?;
        let mut r = S3Response::new(DeleteObjectOutput::default());
        r.headers = Self::ack_headers(ack.seq);
        Ok(r)
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let mode = self.mode(&req.headers, &b)?;
        let quiet = req.input.delete.quiet.unwrap_or(false);
        if req.input.delete.objects.len() > 1000 {
            return Err(err(
                S3ErrorCode::MalformedXML,
                "DeleteObjects takes at most 1000 keys",
            ));
        }
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in req.input.delete.objects {
            let res = match self.key(&b, &o.key) {
                Ok(k) => self.rep.delete(&k, mode).await.map_err(s3_error),
                Err(e) => Err(e),
            };
            match res {
                Ok(_) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(o.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(s3s::dto::Error {
                    key: Some(o.key),
                    code: Some(e.code().as_str().to_string()),
                    message: e.message().map(str::to_string),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let (src_bucket, src_key) = match &req.input.copy_source {
            CopySource::Bucket { bucket, key, .. } => (bucket.to_string(), key.to_string()),
            _ => {
                return Err(err(
                    S3ErrorCode::NotImplemented,
                    "copy from an access point or outpost is not served",
                ));
            }
        };
        let sb = self.bucket(&src_bucket)?;
        let skey = self.key(&sb, &src_key)?;
        let b = self.bucket(&req.input.bucket)?;
        let key = self.key(&b, &req.input.key)?;
        let mode = self.mode(&req.headers, &b)?;
        let input = req.input;
        let read = self
            .rep
            .get(&skey, self.read_pref(&sb))
            .await
            .map_err(s3_error)?;
        let Some(bytes) = read.found else {
            return Err(err(
                S3ErrorCode::NoSuchKey,
                format!("no object {src_key:?} in bucket {src_bucket:?} to copy"),
            ));
        };
        let src = Self::meta_of(read.info.as_ref(), Some(&bytes));
        if let Some(c) = &input.copy_source_if_match {
            let ok = match c {
                ETagCondition::Any => true,
                ETagCondition::ETag(e) => ETag::Strong(src.etag.clone()).strong_cmp(e),
            };
            if !ok {
                return Err(err(
                    S3ErrorCode::PreconditionFailed,
                    "x-amz-copy-source-if-match: the source has another ETag",
                ));
            }
        }
        if let Some(c) = &input.copy_source_if_none_match {
            let hit = match c {
                ETagCondition::Any => true,
                ETagCondition::ETag(e) => ETag::Strong(src.etag.clone()).weak_cmp(e),
            };
            if hit {
                return Err(err(
                    S3ErrorCode::PreconditionFailed,
                    "x-amz-copy-source-if-none-match: the source has that ETag",
                ));
            }
        }
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let mut meta = if replace {
            attributes(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.cache_control,
                input.content_language,
                input.metadata,
            )
        } else {
            ObjectMeta {
                etag: String::new(),
                crc32: 0,
                ts_ms: 0,
                ..src
            }
        };
        let fresh = ObjectMeta::of(&bytes);
        meta.etag = fresh.etag;
        meta.crc32 = fresh.crc32;
        let etag = meta.etag.clone();
        let ack = self
            .rep
            .put_object(&key, bytes, meta, None, mode)
            .await
            .map_err(s3_error)?;
        let mut r = S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        });
        r.headers = Self::ack_headers(ack.seq);
        Ok(r)
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let b = self.bucket(&req.input.bucket)?;
        let input = req.input;
        let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(t), _) => decode_token(t)?,
            (None, Some(s)) => s.clone(),
            (None, None) => String::new(),
        };
        let l = self
            .list(&b, &prefix, input.delimiter.as_deref(), max, &after)
            .await?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let count = (l.objects.len() + l.prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(b.name.clone()),
            prefix: Some(enc(prefix)),
            delimiter: input.delimiter.map(enc),
            max_keys: Some(max as i32),
            key_count: Some(count),
            is_truncated: Some(l.next_after.is_some()),
            continuation_token: input.continuation_token,
            next_continuation_token: l.next_after.as_deref().map(encode_token),
            start_after: input.start_after.map(enc),
            encoding_type: input.encoding_type,
            contents: Some(
                l.objects
                    .into_iter()
                    .map(|(k, i)| Self::object(k, &i, url))
                    .collect(),
            ),
            common_prefixes: Some(
                l.prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let input = req.input;
        let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = input.marker.clone().unwrap_or_default();
        let l = self
            .list(&b, &prefix, input.delimiter.as_deref(), max, &after)
            .await?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(b.name.clone()),
            prefix: Some(enc(prefix)),
            delimiter: input.delimiter.map(enc),
            marker: input.marker.map(enc),
            max_keys: Some(max as i32),
            is_truncated: Some(l.next_after.is_some()),
            next_marker: l.next_after.map(enc),
            encoding_type: input.encoding_type,
            contents: Some(
                l.objects
                    .into_iter()
                    .map(|(k, i)| Self::object(k, &i, url))
                    .collect(),
            ),
            common_prefixes: Some(
                l.prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        self.key(&b, &req.input.key)?;
        let input = req.input;
        let meta = attributes(
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.cache_control,
            input.content_language,
            input.metadata,
        );
        meta.check_size()
            .map_err(|m| err(S3ErrorCode::MetadataTooLarge, m))?;
        let up = Upload {
            bucket: b.name.clone(),
            key: input.key.clone(),
            meta,
            initiated_ms: crate::log::now_ms(),
        };
        let uploads = self.uploads.clone();
        let id = tokio::task::spawn_blocking(move || uploads.create(&up))
            .await
            .map_err(internal)?
            .map_err(s3_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(b.name),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let input = req.input;
        if !(1..=multipart::MAX_PART_NUMBER).contains(&input.part_number) {
            return Err(err(
                S3ErrorCode::InvalidArgument,
                "the part number must be between 1 and 10000",
            ));
        }
        self.uploads
            .get(&input.upload_id, &b.name, &input.key)
            .map_err(s3_error)?
            .map_err(|r| refused(r, &input.upload_id))?;
        let bytes = collect(input.body, self.max_object_bytes).await?;
        let sums = Checksum {
            checksum_crc32: input.checksum_crc32,
            checksum_crc32c: input.checksum_crc32c,
            checksum_sha256: input.checksum_sha256,
            checksum_sha1: input.checksum_sha1,
            checksum_crc64nvme: input.checksum_crc64nvme,
            ..Default::default()
        };
        let asked_crc32 = sums.checksum_crc32.is_some();
        check_digests(
            &bytes,
            input.content_md5.as_deref(),
            sums,
            req.trailing_headers,
        )?;
        let crc = crc32fast::hash(&bytes);
        let (uploads, id, n, max) = (
            self.uploads.clone(),
            input.upload_id.clone(),
            input.part_number,
            self.max_object_bytes,
        );
        let md5 = tokio::task::spawn_blocking(move || uploads.put_part(&id, n, &bytes, max))
            .await
            .map_err(internal)?
            .map_err(s3_error)?
            .map_err(|r| refused(r, &input.upload_id))?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(md5)),
            checksum_crc32: asked_crc32.then(|| crc32_b64(crc)),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let input = req.input;
        self.uploads
            .get(&input.upload_id, &b.name, &input.key)
            .map_err(s3_error)?
            .map_err(|r| refused(r, &input.upload_id))?;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let all: Vec<_> = self
            .uploads
            .parts(&input.upload_id)
            .map_err(s3_error)?
            .into_iter()
            .filter(|p| p.number > marker)
            .collect();
        let truncated = all.len() > max;
        let parts: Vec<Part> = all
            .into_iter()
            .take(max)
            .map(|p| Part {
                part_number: Some(p.number),
                size: Some(p.size as i64),
                e_tag: Some(ETag::Strong(p.md5)),
                last_modified: Some(timestamp(p.modified_ms)),
                ..Default::default()
            })
            .collect();
        let next = parts.last().and_then(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(b.name),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: truncated.then_some(next).flatten(),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            parts: Some(parts),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self
            .uploads
            .list(&b.name)
            .map_err(s3_error)?
            .into_iter()
            .filter(|(_, u)| u.key.starts_with(&prefix))
            .take(1000)
            .map(|(id, u)| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(id),
                initiated: Some(timestamp(u.initiated_ms)),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(b.name),
            prefix: input.prefix,
            max_uploads: Some(1000),
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let input = req.input;
        self.uploads
            .get(&input.upload_id, &b.name, &input.key)
            .map_err(s3_error)?
            .map_err(|r| refused(r, &input.upload_id))?;
        self.uploads.remove(&input.upload_id).map_err(s3_error)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let b = self.bucket(&req.input.bucket)?;
        let key = self.key(&b, &req.input.key)?;
        let mode = self.mode(&req.headers, &b)?;
        let input = req.input;
        let up = self
            .uploads
            .get(&input.upload_id, &b.name, &input.key)
            .map_err(s3_error)?
            .map_err(|r| refused(r, &input.upload_id))?;
        let wanted: Vec<(i32, String)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.part_number.unwrap_or(0),
                    p.e_tag.map(|e| e.value().to_string()).unwrap_or_default(),
                )
            })
            .collect();
        if wanted.is_empty() {
            return Err(err(
                S3ErrorCode::MalformedXML,
                "CompleteMultipartUpload names no part",
            ));
        }
        let cond = precondition(input.if_none_match.as_ref(), input.if_match.as_ref())?;
        let (uploads, id, max) = (
            self.uploads.clone(),
            input.upload_id.clone(),
            self.max_object_bytes,
        );
        let (bytes, etag) =
            tokio::task::spawn_blocking(move || uploads.assemble(&id, &wanted, max))
                .await
                .map_err(internal)?
                .map_err(s3_error)?
                .map_err(|r| refused(r, &input.upload_id))?;
        let mut meta = up.meta;
        meta.etag = etag.clone();
        meta.crc32 = crc32fast::hash(&bytes);
        let ack = self
            .rep
            .put_object(&key, Bytes::from(bytes), meta, cond, mode)
            .await
            .map_err(s3_error)?;
        // The entry is durable: the staged parts can go.
        if let Err(e) = self.uploads.remove(&input.upload_id) {
            tracing::warn!(error = %e, upload = %input.upload_id, "removing a completed upload's parts failed; the daily sweep removes them");
        }
        let mut r = S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(b.name),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        });
        r.headers = Self::ack_headers(ack.seq);
        Ok(r)
    }
}

/// The axum handler the S3 listener serves: s3s does the protocol;
/// this counts `walship_s3_requests_total{op,status}`, refuses an
/// `Authorization` that is no AWS signature, and closes connections whose
/// request body may be left unread (see [`close_after`]).
pub fn router(svc: s3s::service::S3Service, rep: Arc<Replicator>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state((svc, rep))
}

type FrontState = (s3s::service::S3Service, Arc<Replicator>);

async fn handle(
    axum::extract::State((svc, rep)): axum::extract::State<FrontState>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let headers = req.headers().clone();
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let copy = headers.contains_key("x-amz-copy-source");
    let op = op_of(
        req.method(),
        &host,
        req.uri().path(),
        req.uri().query().unwrap_or(""),
        copy,
    );
    let mut resp = if foreign_auth(&headers) {
        xml_error(err(
            S3ErrorCode::AccessDenied,
            "the Authorization header is not an AWS signature; sign requests with AWS Signature V4",
        ))
    } else {
        // Without a length or chunking there is no body; s3s must be told
        // so (a wrapped body's size is not known to it).
        let has_body = headers.contains_key(http::header::CONTENT_LENGTH)
            || headers.contains_key(http::header::TRANSFER_ENCODING);
        let req = if has_body {
            req.map(s3s::Body::http_body_unsync)
        } else {
            req.map(|_| s3s::Body::empty())
        };
        match svc.call(req).await {
            Ok(r) => r.map(axum::body::Body::new),
            Err(e) => {
                tracing::error!(error = ?e, "the S3 request failed inside the protocol layer");
                xml_error(err(
                    S3ErrorCode::InternalError,
                    "the request failed inside the S3 protocol layer; see the sidecar's log",
                ))
            }
        }
    };
    if close_after(&headers, resp.status()) {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    rep.metrics()
        .s3_requests
        .get_or_create(&crate::metrics::S3Labels {
            op: op.to_string(),
            status: resp.status().as_u16().to_string(),
        })
        .inc();
    resp
}

fn xml_error(e: S3Error) -> axum::response::Response {
    match e.to_http_response() {
        Ok(r) => r.map(axum::body::Body::new),
        Err(_) => http::Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(axum::body::Body::from("internal error"))
            .unwrap_or_default(),
    }
}

/// An `Authorization` header that is neither SigV4 nor SigV2 (a bearer
/// token, say): AccessDenied, not s3s's "invalid header".
fn foreign_auth(h: &HeaderMap) -> bool {
    h.get(http::header::AUTHORIZATION).is_some_and(|v| {
        let v = v.as_bytes();
        !(v.starts_with(b"AWS4-HMAC-SHA256 ") || v.starts_with(b"AWS "))
    })
}

/// Whether to close the connection after this answer: when its request's
/// body may be left unread (an error answered before or instead of reading
/// it), and when an empty body was announced with `Expect: 100-continue`
/// (no `100 Continue` is sent for it, and some clients then misread the
/// next answer on the same connection).
fn close_after(h: &HeaderMap, status: StatusCode) -> bool {
    let len = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = h.contains_key(http::header::TRANSFER_ENCODING);
    let expects = h
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let has_body = chunked || len.is_some_and(|n| n > 0);
    (expects && !has_body) || (has_body && (status.is_client_error() || status.is_server_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn operations_are_named_from_the_request() {
        let m =
            |method: Method, path: &str, q: &str| op_of(&method, "127.0.0.1:7602", path, q, false);
        assert_eq!(m(Method::GET, "/", ""), "ListBuckets");
        assert_eq!(m(Method::HEAD, "/results", ""), "HeadBucket");
        assert_eq!(
            m(Method::GET, "/results", "list-type=2&prefix=a"),
            "ListObjectsV2"
        );
        assert_eq!(m(Method::GET, "/results/", "prefix=a"), "ListObjects");
        assert_eq!(m(Method::GET, "/results", "location"), "GetBucketLocation");
        assert_eq!(m(Method::POST, "/results", "delete"), "DeleteObjects");
        assert_eq!(m(Method::PUT, "/results/a/b", ""), "PutObject");
        assert_eq!(
            op_of(&Method::PUT, "h", "/results/a", "", true),
            "CopyObject"
        );
        assert_eq!(
            m(Method::PUT, "/results/a", "partNumber=1&uploadId=x"),
            "UploadPart"
        );
        assert_eq!(
            m(Method::POST, "/results/a", "uploads"),
            "CreateMultipartUpload"
        );
        assert_eq!(
            m(Method::POST, "/results/a", "uploadId=x"),
            "CompleteMultipartUpload"
        );
        assert_eq!(
            m(Method::DELETE, "/results/a", "uploadId=x"),
            "AbortMultipartUpload"
        );
        assert_eq!(m(Method::GET, "/results/a", "uploadId=x"), "ListParts");
        assert_eq!(m(Method::GET, "/results/a", ""), "GetObject");
        assert_eq!(m(Method::HEAD, "/results/a", ""), "HeadObject");
        assert_eq!(m(Method::DELETE, "/results/a", ""), "DeleteObject");
        // Virtual-hosted: the path is the key.
        assert_eq!(
            op_of(&Method::GET, "results.localhost:7602", "/a", "", false),
            "GetObject"
        );
        assert_eq!(
            op_of(
                &Method::GET,
                "results.localhost:7602",
                "/",
                "list-type=2",
                false
            ),
            "ListObjectsV2"
        );
    }

    #[test]
    fn connections_close_after_unread_bodies_and_empty_expects() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let ok = StatusCode::OK;
        let bad = StatusCode::BAD_REQUEST;
        assert!(close_after(
            &h(&[("content-length", "0"), ("expect", "100-continue")]),
            ok
        ));
        assert!(!close_after(
            &h(&[("content-length", "5"), ("expect", "100-continue")]),
            ok
        ));
        assert!(close_after(&h(&[("content-length", "5")]), bad));
        assert!(close_after(
            &h(&[("transfer-encoding", "chunked")]),
            StatusCode::GATEWAY_TIMEOUT
        ));
        assert!(!close_after(&h(&[]), bad), "no body: nothing left unread");
        assert!(!close_after(&h(&[("content-length", "5")]), ok));
        assert!(foreign_auth(&h(&[("authorization", "Bearer x")])));
        assert!(!foreign_auth(&h(&[(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=a"
        )])));
        assert!(!foreign_auth(&h(&[("authorization", "AWS a:b")])));
        assert!(!foreign_auth(&h(&[])));
    }

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
    fn virtual_hosts_name_their_bucket() {
        assert_eq!(virtual_bucket("results.localhost:7602"), Some("results"));
        assert_eq!(virtual_bucket("results.s3.localhost"), Some("results"));
        assert_eq!(virtual_bucket("127.0.0.1:7602"), None);
        assert_eq!(virtual_bucket("localhost:7602"), None);
        assert_eq!(virtual_bucket("[::1]:7602"), None);
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
