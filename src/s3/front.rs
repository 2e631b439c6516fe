//! walship behind s3s's `S3` trait: each operation mapped onto the
//! [`Replicator`] the HTTP API uses (see the module above for the
//! invariant: the log changes only through `put_object` and `delete`).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use crate::config::{Mode, ReadPreference};
use crate::error::Error;
use crate::key::Key;
use crate::object::{ObjectMeta, Precondition};
use crate::replicator::Replicator;
use crate::storage::KeyInfo;

use super::buckets::{Bucket, Buckets, Create};
use super::listing::{Offer, Page};
use super::multipart::{self, Upload, Uploads};
use super::wire::*;

pub(super) struct Front {
    pub(super) rep: Arc<Replicator>,
    pub(super) buckets: Arc<Buckets>,
    pub(super) uploads: Arc<Uploads>,
    pub(super) region: String,
    pub(super) max_object_bytes: u64,
    /// Conditional writes answered 504, by (`amz-sdk-invocation-id`, key):
    /// their seq. An SDK's automatic retry of one carries the same id; it
    /// waits for that entry again instead of failing its own condition.
    pub(super) timed_out: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
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
                match page.offer(rel, info) {
                    Offer::Full => break 'outer,
                    // Every key under a common prefix rolls up into it:
                    // jump past them rather than read them all.
                    Offer::SkipPast(cp) => {
                        cursor = format!("{}{cp}\u{10FFFF}", b.prefix);
                        continue 'outer;
                    }
                    Offer::Next => cursor = k,
                }
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

    /// A read whose bytes are the version the log's metadata describes: a
    /// target may apply a newer entry between the log's answer and its
    /// own, so the key's newest entry is read again after the target, and
    /// the read repeated while it moved (or the bytes miss the crc32).
    /// After a few tries the metadata is left out (the caller derives it
    /// from the bytes).
    async fn get_consistent(
        &self,
        key: &Key,
        pref: Option<ReadPreference>,
    ) -> S3Result<crate::replicator::Read<Bytes>> {
        let mut last = None;
        for _ in 0..5 {
            let read = self.rep.get(key, pref).await.map_err(s3_error)?;
            let after = self
                .rep
                .log()
                .key_info(key.as_str())
                .await
                .map_err(s3_error)?;
            let same = after.as_ref().map(|i| i.seq) == read.info.as_ref().map(|i| i.seq);
            let bytes_fit = match (
                &read.found,
                read.info.as_ref().and_then(|i| i.meta.as_deref()),
            ) {
                (Some(b), Some(m)) => m.etag.is_empty() || crc32fast::hash(b) == m.crc32,
                _ => true,
            };
            if same && bytes_fit {
                return Ok(read);
            }
            last = Some(read);
        }
        let mut read = last.ok_or_else(|| internal("no read was made"))?;
        read.info = None;
        Ok(read)
    }

    /// Like [`Front::get_consistent`] for HEAD: the size must be the
    /// version's, and the key's newest entry the same after the target.
    async fn head_consistent(
        &self,
        key: &Key,
        pref: Option<ReadPreference>,
    ) -> S3Result<crate::replicator::Read<object_store::ObjectMeta>> {
        let mut last = None;
        for _ in 0..5 {
            let read = self.rep.head_object(key, pref).await.map_err(s3_error)?;
            let after = self
                .rep
                .log()
                .key_info(key.as_str())
                .await
                .map_err(s3_error)?;
            let same = after.as_ref().map(|i| i.seq) == read.info.as_ref().map(|i| i.seq);
            let size_fits = match (&read.found, &read.info) {
                (Some(f), Some(i)) => f.size == i.size,
                _ => true,
            };
            if same && size_fits {
                return Ok(read);
            }
            last = Some(read);
        }
        let mut read = last.ok_or_else(|| internal("no read was made"))?;
        read.info = None;
        Ok(read)
    }

    /// `Replicator::put_object`, with retries of a conditional write that
    /// missed its quorum recognised (see `timed_out`): SPEC says a retry
    /// after a 504 is harmless, so it must not fail the condition its own
    /// first attempt already met.
    async fn write_object(
        &self,
        headers: &HeaderMap,
        key: &Key,
        bytes: Bytes,
        meta: ObjectMeta,
        cond: Option<Precondition>,
        mode: Option<Mode>,
    ) -> S3Result<crate::replicator::WriteAck> {
        let id = cond
            .as_ref()
            .and(headers.get("amz-sdk-invocation-id"))
            .and_then(|v| v.to_str().ok())
            .map(|v| (v.to_string(), key.as_str().to_string()));
        let timed_out = || self.timed_out.lock().unwrap_or_else(|e| e.into_inner());
        match self.rep.put_object(key, bytes, meta, cond, mode).await {
            Ok(ack) => Ok(ack),
            Err(e @ Error::QuorumTimeout { .. }) => {
                if let (Some(id), &Error::QuorumTimeout { seq, .. }) = (id, &e) {
                    let mut t = timed_out();
                    if t.len() >= 10_000 {
                        t.clear();
                    }
                    t.insert(id, seq);
                }
                Err(s3_error(e))
            }
            Err(e @ Error::PreconditionFailed { .. }) => {
                let earlier = id.as_ref().and_then(|id| timed_out().get(id).copied());
                let newest = self
                    .rep
                    .log()
                    .key_info(key.as_str())
                    .await
                    .map_err(s3_error)?;
                match earlier {
                    Some(seq) if newest.is_some_and(|i| i.seq == seq) => {
                        let mode = mode.unwrap_or(self.rep.config().replication.mode);
                        let ack = self
                            .rep
                            .wait_for(seq, key.as_str(), mode)
                            .await
                            .map_err(s3_error)?;
                        if let Some(id) = &id {
                            timed_out().remove(id);
                        }
                        Ok(ack)
                    }
                    _ => Err(s3_error(e)),
                }
            }
            Err(e) => Err(s3_error(e)),
        }
    }

    /// The bytes and metadata a copy reads (CopyObject, UploadPartCopy):
    /// the source as a GET reads it, under the copy's conditions.
    async fn copy_source(
        &self,
        source: &CopySource,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<(Bytes, ObjectMeta)> {
        let CopySource::Bucket { bucket, key, .. } = source else {
            return Err(err(
                S3ErrorCode::NotImplemented,
                "copy from an access point or outpost is not served",
            ));
        };
        let sb = self.bucket(bucket)?;
        let skey = self.key(&sb, key)?;
        let read = self.get_consistent(&skey, self.read_pref(&sb)).await?;
        let Some(bytes) = read.found else {
            return Err(err(
                S3ErrorCode::NoSuchKey,
                format!("no object {key:?} in bucket {bucket:?} to copy from"),
            ));
        };
        let src = Self::meta_of(read.info.as_ref(), Some(&bytes));
        let etag = ETag::Strong(src.etag.clone());
        if let Some(ETagCondition::ETag(e)) = if_match
            && !etag.strong_cmp(e)
        {
            return Err(err(
                S3ErrorCode::PreconditionFailed,
                "x-amz-copy-source-if-match: the source has another ETag",
            ));
        }
        if let Some(c) = if_none_match {
            let hit = match c {
                ETagCondition::Any => true,
                ETagCondition::ETag(e) => etag.weak_cmp(e),
            };
            if hit {
                return Err(err(
                    S3ErrorCode::PreconditionFailed,
                    "x-amz-copy-source-if-none-match: the source has that ETag",
                ));
            }
        }
        Ok((bytes, src))
    }

    /// A listing page's objects and common prefixes as S3 has them
    /// (url-encoded when the client asked).
    fn page_entries(l: Listed, url: bool) -> (Vec<Object>, Vec<CommonPrefix>) {
        let objects = l
            .objects
            .into_iter()
            .map(|(k, i)| Self::object(k, &i, url))
            .collect();
        let prefixes = l
            .prefixes
            .into_iter()
            .map(|p| CommonPrefix {
                prefix: Some(if url { url_encode(&p) } else { p }),
            })
            .collect();
        (objects, prefixes)
    }

    fn object(key: String, info: &KeyInfo, url: bool) -> Object {
        let meta = info.meta.as_deref();
        Object {
            key: Some(if url { url_encode(&key) } else { key }),
            size: Some(info.size as i64),
            e_tag: meta
                .filter(|m| !m.etag.is_empty())
                .map(|m| ETag::Strong(m.etag.clone())),
            // Keys last written before metadata have no time the index
            // knows; S3 clients need one (the epoch says "unknown").
            last_modified: Some(timestamp(meta.map_or(0, |m| m.ts_ms))),
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
            .write_object(&req.headers, &key, bytes, meta, cond, mode)
            .await?;
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
        let read = self.get_consistent(&key, self.read_pref(&b)).await?;
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
        let read = self.head_consistent(&key, self.read_pref(&b)).await?;
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
        // Concurrently, so the deletes share group commits and acks (one
        // at a time, a slow target would outlast a client's timeout).
        let b = &b;
        let results: Vec<(ObjectIdentifier, S3Result<()>)> =
            futures::stream::iter(req.input.delete.objects)
                .map(|o| async move {
                    let res = match self.key(b, &o.key) {
                        Ok(k) => self
                            .rep
                            .delete(&k, mode)
                            .await
                            .map(|_| ())
                            .map_err(s3_error),
                        Err(e) => Err(e),
                    };
                    (o, res)
                })
                .buffered(64)
                .collect()
                .await;
        for (o, res) in results {
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
        let b = self.bucket(&req.input.bucket)?;
        let key = self.key(&b, &req.input.key)?;
        let mode = self.mode(&req.headers, &b)?;
        let input = req.input;
        let (bytes, src) = self
            .copy_source(
                &input.copy_source,
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
            )
            .await?;
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
        let next_after = l.next_after.clone();
        let (contents, common_prefixes) = Self::page_entries(l, url);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(b.name.clone()),
            prefix: Some(enc(prefix)),
            delimiter: input.delimiter.map(enc),
            max_keys: Some(max as i32),
            key_count: Some(count),
            is_truncated: Some(next_after.is_some()),
            continuation_token: input.continuation_token,
            next_continuation_token: next_after.as_deref().map(encode_token),
            start_after: input.start_after.map(enc),
            encoding_type: input.encoding_type,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
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
        let next_after = l.next_after.clone();
        let (contents, common_prefixes) = Self::page_entries(l, url);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(b.name.clone()),
            prefix: Some(enc(prefix)),
            delimiter: input.delimiter.map(enc),
            marker: input.marker.map(enc),
            max_keys: Some(max as i32),
            is_truncated: Some(next_after.is_some()),
            next_marker: next_after.map(enc),
            encoding_type: input.encoding_type,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
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

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
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
        let (bytes, _) = self
            .copy_source(
                &input.copy_source,
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
            )
            .await?;
        let len = bytes.len() as u64;
        let part = match &input.copy_source_range {
            None => bytes,
            Some(r) => {
                let span = Range::parse(r)
                    .ok()
                    .and_then(|r| r.check(len).ok())
                    .ok_or_else(|| {
                        err(
                            S3ErrorCode::InvalidArgument,
                            format!("x-amz-copy-source-range {r:?} is not a range inside the source's {len} bytes"),
                        )
                    })?;
                bytes.slice(span.start as usize..span.end as usize)
            }
        };
        let (uploads, id, n, max) = (
            self.uploads.clone(),
            input.upload_id.clone(),
            input.part_number,
            self.max_object_bytes,
        );
        let md5 = tokio::task::spawn_blocking(move || uploads.put_part(&id, n, &part, max))
            .await
            .map_err(internal)?
            .map_err(s3_error)?
            .map_err(|r| refused(r, &input.upload_id))?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(md5)),
                last_modified: Some(Timestamp::from(SystemTime::now())),
                ..Default::default()
            }),
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
        let max = input.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let id_marker = input.upload_id_marker.clone().unwrap_or_default();
        // In (key, upload id) order, after the markers.
        let mut all: Vec<(String, Upload)> = self
            .uploads
            .list(&b.name)
            .map_err(s3_error)?
            .into_iter()
            .filter(|(_, u)| u.key.starts_with(&prefix))
            .filter(|(id, u)| {
                key_marker.is_empty()
                    || u.key > key_marker
                    || (u.key == key_marker && !id_marker.is_empty() && *id > id_marker)
            })
            .take(max + 1)
            .collect();
        let truncated = all.len() > max;
        all.truncate(max);
        let (next_key, next_id) = match (truncated, all.last()) {
            (true, Some((id, u))) => (Some(u.key.clone()), Some(id.clone())),
            _ => (None, None),
        };
        let uploads = all
            .into_iter()
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
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
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
            .write_object(&req.headers, &key, Bytes::from(bytes), meta, cond, mode)
            .await?;
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
