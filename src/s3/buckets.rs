//! Buckets: the names S3 clients use, each mapped to a walship key prefix.
//!
//! Configured buckets (`[[s3.buckets]]`) are fixed for the process; with
//! `allow_create_bucket`, CreateBucket adds one mapped to `NAME/`, kept in
//! the log's meta (`s3_buckets`) so it survives restarts. Invariant: no two
//! buckets' prefixes overlap (one a prefix of the other), so a walship key
//! belongs to at most one bucket; `check-config` refuses overlaps among
//! configured ones and CreateBucket refuses a new one that would overlap.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::{Mode, ReadPreference, S3Config};
use crate::error::{Error, Result};
use crate::storage::LogStorage;

const CREATED_META: &str = "s3_buckets";

/// One bucket as the S3 API serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The bucket name.
    pub name: String,
    /// The walship key prefix.
    pub prefix: String,
    /// Its writes' mode, when it has its own.
    pub mode: Option<Mode>,
    /// Its reads' preference, when it has its own.
    pub read_preference: Option<ReadPreference>,
    /// When it was made, unix ms (0 for configured buckets).
    pub created_ms: u64,
    /// Made by CreateBucket (and so removable by DeleteBucket).
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CreatedRecord {
    name: String,
    created_ms: u64,
}

/// What CreateBucket decides.
#[derive(Debug, PartialEq, Eq)]
pub enum Create {
    /// Made.
    Made,
    /// It exists already (S3: BucketAlreadyOwnedByYou).
    Exists,
    /// CreateBucket is off.
    NotAllowed,
    /// Its prefix would overlap this bucket's.
    Overlaps(String),
}

/// The bucket map.
pub struct Buckets {
    configured: Vec<Bucket>,
    created: Mutex<Vec<Bucket>>,
    allow_create: bool,
    storage: Arc<dyn LogStorage>,
}

impl Buckets {
    /// The configured buckets plus those CreateBucket made before.
    pub fn open(cfg: &S3Config, storage: Arc<dyn LogStorage>) -> Result<Buckets> {
        let configured = cfg
            .buckets
            .iter()
            .map(|b| Bucket {
                name: b.name.clone(),
                prefix: b.key_prefix(),
                mode: b.mode,
                read_preference: b.read_preference,
                created_ms: 0,
                created: false,
            })
            .collect();
        let created = match storage.meta(CREATED_META)? {
            None => Vec::new(),
            Some(b) => match serde_json::from_slice::<Vec<CreatedRecord>>(&b) {
                Ok(records) => records
                    .into_iter()
                    .map(|r| created_bucket(r.name, r.created_ms))
                    .collect(),
                // Without CreateBucket the record is not needed to serve the
                // configured buckets: go on without it, loudly.
                Err(e) if !cfg.allow_create_bucket => {
                    tracing::error!(error = %e, "the record of created S3 buckets (meta {CREATED_META}) does not decode; serving the configured buckets only. Add the created ones to [[s3.buckets]] (their prefix is NAME/) to reach their objects");
                    Vec::new()
                }
                Err(e) => {
                    return Err(Error::Damaged(format!(
                        "the record of created S3 buckets (meta {CREATED_META}) does not decode: {e}. \
                         Set [s3] allow_create_bucket = false and add those buckets to [[s3.buckets]] \
                         (prefix NAME/): walship then serves them without the record"
                    )));
                }
            },
        };
        Ok(Buckets {
            configured,
            created: Mutex::new(created),
            allow_create: cfg.allow_create_bucket,
            storage,
        })
    }

    fn created(&self) -> std::sync::MutexGuard<'_, Vec<Bucket>> {
        self.created.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bucket named `name`.
    pub fn get(&self, name: &str) -> Option<Bucket> {
        self.configured
            .iter()
            .find(|b| b.name == name)
            .cloned()
            .or_else(|| self.created().iter().find(|b| b.name == name).cloned())
    }

    /// Every bucket, by name.
    pub fn all(&self) -> Vec<Bucket> {
        let mut v = self.configured.clone();
        v.extend(self.created().iter().cloned());
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// CreateBucket.
    pub fn create(&self, name: &str, now_ms: u64) -> Result<Create> {
        if self.get(name).is_some() {
            return Ok(Create::Exists);
        }
        if !self.allow_create {
            return Ok(Create::NotAllowed);
        }
        let new = created_bucket(name.to_string(), now_ms);
        let mut created = self.created();
        if let Some(other) = self
            .configured
            .iter()
            .chain(created.iter())
            .find(|b| overlap(&b.prefix, &new.prefix))
        {
            return Ok(Create::Overlaps(other.name.clone()));
        }
        created.push(new);
        self.save(&created)?;
        Ok(Create::Made)
    }

    /// DeleteBucket of a bucket CreateBucket made (the caller checked it is
    /// empty). False when it is not one.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let mut created = self.created();
        let before = created.len();
        created.retain(|b| b.name != name);
        if created.len() == before {
            return Ok(false);
        }
        self.save(&created)?;
        Ok(true)
    }

    fn save(&self, created: &[Bucket]) -> Result<()> {
        let records: Vec<CreatedRecord> = created
            .iter()
            .map(|b| CreatedRecord {
                name: b.name.clone(),
                created_ms: b.created_ms,
            })
            .collect();
        let bytes = serde_json::to_vec(&records)
            .map_err(|e| Error::BadRequest(format!("encoding the created buckets: {e}")))?;
        let generation = self.storage.generation();
        self.storage.set_meta(CREATED_META, &bytes)?;
        self.storage.sync_since(generation)
    }
}

fn created_bucket(name: String, created_ms: u64) -> Bucket {
    Bucket {
        prefix: format!("{name}/"),
        name,
        mode: None,
        read_preference: None,
        created_ms,
        created: true,
    }
}

/// Whether two prefixes overlap (a key could start with both).
pub fn overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Bucket;

    fn cfg(allow: bool) -> S3Config {
        S3Config {
            listen: "127.0.0.1:0".into(),
            access_key_id: "k".into(),
            secret_access_key_file: None,
            secret_from_env: Some("s".into()),
            region: "us-east-1".into(),
            allow_create_bucket: allow,
            buckets: vec![S3Bucket {
                name: "results".into(),
                prefix: None,
                mode: Some(Mode::Sync),
                read_preference: None,
            }],
        }
    }

    #[test]
    fn created_buckets_survive_a_reopen_and_overlaps_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn LogStorage> =
            Arc::new(crate::storage::SledStorage::open(dir.path(), 1 << 20).expect("open"));
        let b = Buckets::open(&cfg(true), storage.clone()).expect("open");
        assert_eq!(b.get("results").map(|b| b.prefix), Some("results/".into()));
        assert_eq!(b.create("results", 1).expect("create"), Create::Exists);
        assert_eq!(b.create("new-one", 5).expect("create"), Create::Made);
        assert_eq!(b.create("new-one", 6).expect("create"), Create::Exists);
        drop(b);
        let b = Buckets::open(&cfg(true), storage.clone()).expect("reopen");
        let got = b.get("new-one").expect("kept");
        assert_eq!(
            (got.prefix.as_str(), got.created_ms, got.created),
            ("new-one/", 5, true)
        );
        assert_eq!(
            b.all().iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["new-one", "results"]
        );
        assert!(!b.remove("results").expect("remove"), "configured stays");
        assert!(b.remove("new-one").expect("remove"));
        assert!(b.get("new-one").is_none());
        let off = Buckets::open(&cfg(false), storage).expect("open");
        assert_eq!(off.create("other", 1).expect("create"), Create::NotAllowed);
        assert!(overlap("a/", "a/b/") && overlap("", "x/") && !overlap("a/", "b/"));
    }

    #[test]
    fn a_damaged_record_of_created_buckets_has_a_way_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn LogStorage> =
            Arc::new(crate::storage::SledStorage::open(dir.path(), 1 << 20).expect("open"));
        storage.set_meta(CREATED_META, b"not json").expect("meta");
        let e = Buckets::open(&cfg(true), storage.clone())
            .err()
            .expect("refused");
        assert!(e.to_string().contains("allow_create_bucket = false"), "{e}");
        let b = Buckets::open(&cfg(false), storage).expect("served without it");
        assert_eq!(b.all().len(), 1, "the configured bucket");
    }
}
