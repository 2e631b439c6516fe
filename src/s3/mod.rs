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
//! Files: `front` (the `S3` trait over the replicator), `listener` (the
//! HTTP side: operation names, virtual hosts, connection handling),
//! `wire` (errors, digests, attributes, tokens), `buckets`, `listing`,
//! `multipart`.
//!
//! Invariant: an S3 request changes the log only through
//! [`Replicator::put_object`] and [`Replicator::delete`]; anything refused
//! (bad signature, bad key, bad digest, failed precondition, too large) is
//! refused before it is appended.

pub mod buckets;
mod front;
mod listener;
pub mod listing;
pub mod multipart;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use crate::config::S3Config;
use crate::error::Error;
use crate::replicator::Replicator;

use buckets::Buckets;

/// The problem named when the S3 API has no secret to check signatures with.
pub(crate) const NO_SECRET: &str = "s3.secret_access_key_file: not set, and WALSHIP_S3_SECRET_ACCESS_KEY is not either; \
every S3 request is signed with the secret: write it to a file named by s3.secret_access_key_file, \
or set WALSHIP_S3_SECRET_ACCESS_KEY";
use front::Front;
use listener::Hosts;
use multipart::Uploads;

pub use listener::{op_of, router, virtual_bucket};

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
                problems: vec![NO_SECRET.into()],
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
        timed_out: Default::default(),
    };
    let mut b = s3s::service::S3ServiceBuilder::new(front);
    b.set_auth(s3s::auth::SimpleAuth::from_single(
        s3.access_key_id.clone(),
        secret,
    ));
    b.set_host(Hosts);
    Ok(b.build())
}
