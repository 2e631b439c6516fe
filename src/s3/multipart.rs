//! Multipart uploads, staged durably under `data_dir/s3-uploads`.
//!
//! An upload is a directory named by its id (32 hex digits, random):
//! `upload.json` (bucket, key, the object's attributes, when it began) and
//! one file per part, `part-NNNNN-MD5HEX` (the name carries the part's MD5,
//! so listing parts reads no bytes). Every file is written to a temporary
//! name, fsynced, renamed and its directory fsynced, so an acknowledged
//! part survives a crash. Complete reads the named parts in order, checks
//! their ETags and S3's 5 MiB minimum for all but the last, and hands back
//! the bytes and the multipart ETag; the caller appends them as one log
//! entry and then removes the upload. Uploads older than a day are removed
//! by [`Uploads::sweep`].

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::object::{ObjectMeta, hex, multipart_etag};

/// S3's smallest part, but for the last.
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// S3's part numbers.
pub const MAX_PART_NUMBER: i32 = 10_000;
/// Uploads not completed within this long are removed.
pub const MAX_AGE_MS: u64 = 86_400_000;

/// What an upload is for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Upload {
    /// The bucket.
    pub bucket: String,
    /// The client's key.
    pub key: String,
    /// The attributes the object will carry (ETag and crc32 are set at
    /// Complete).
    pub meta: ObjectMeta,
    /// When CreateMultipartUpload ran, unix ms.
    pub initiated_ms: u64,
}

/// One staged part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its number.
    pub number: i32,
    /// Its size.
    pub size: u64,
    /// Its MD5 (hex).
    pub md5: String,
    /// When it was written, unix ms.
    pub modified_ms: u64,
}

/// Why an upload request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No such upload (or one for another bucket or key).
    NoSuchUpload,
    /// A part named at Complete is missing or has another ETag.
    InvalidPart(String),
    /// Parts not in ascending order.
    InvalidPartOrder,
    /// A part but the last under 5 MiB.
    EntityTooSmall(i32),
    /// Over `max_object_bytes`.
    TooLarge(u64),
}

/// The staging area.
pub struct Uploads {
    dir: PathBuf,
    /// One lock per upload: staging a part, assembling and removing an
    /// upload do not interleave (two uploads of one part number, an
    /// UploadPart racing an Abort).
    locks:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<std::sync::Mutex<()>>>>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// Writes `bytes` to `path` durably: temp file, fsync, rename, dir fsync.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("part")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing directory {}", dir.display())))
}

fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn part_name(number: i32, md5: &str) -> String {
    format!("part-{number:05}-{md5}")
}

fn parse_part_name(name: &str) -> Option<(i32, String)> {
    let rest = name.strip_prefix("part-")?;
    let (n, md5) = rest.split_once('-')?;
    Some((n.parse().ok()?, md5.to_string()))
}

impl Uploads {
    /// The staging area in `data_dir/s3-uploads` (made when missing).
    pub fn open(data_dir: &Path) -> Result<Uploads> {
        let dir = data_dir.join("s3-uploads");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Uploads {
            dir,
            locks: Default::default(),
        })
    }

    fn lock(&self, id: &str) -> std::sync::Arc<std::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.len() > 4096 {
            locks.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
        }
        locks.entry(id.to_string()).or_default().clone()
    }

    fn upload_dir(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.dir.join(id))
    }

    /// Starts an upload; its id.
    pub fn create(&self, upload: &Upload) -> Result<String> {
        let id = hex(&rand::random::<[u8; 16]>());
        let dir = self.dir.join(&id);
        std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let json = serde_json::to_vec(upload)
            .map_err(|e| Error::BadRequest(format!("encoding the upload record: {e}")))?;
        write_durably(&dir.join("upload.json"), &json)?;
        sync_dir(&self.dir)?;
        Ok(id)
    }

    /// The upload `id`, when it exists and is for `bucket` and `key`.
    pub fn get(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
    ) -> Result<std::result::Result<Upload, Refused>> {
        let Some(dir) = self.upload_dir(id) else {
            return Ok(Err(Refused::NoSuchUpload));
        };
        let bytes = match std::fs::read(dir.join("upload.json")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(Refused::NoSuchUpload));
            }
            Err(e) => return Err(Error::io(format!("reading upload {id}"), e)),
        };
        let u: Upload = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Damaged(format!(
                "the record of multipart upload {id} in {} does not decode ({e}); abort the upload and start it again",
                dir.display()
            ))
        })?;
        if u.bucket != bucket || u.key != key {
            return Ok(Err(Refused::NoSuchUpload));
        }
        Ok(Ok(u))
    }

    /// Stages part `number` of upload `id` (replacing an earlier one);
    /// its MD5. `max` bounds the upload's total size.
    pub fn put_part(
        &self,
        id: &str,
        number: i32,
        bytes: &[u8],
        max: u64,
    ) -> Result<std::result::Result<String, Refused>> {
        let Some(dir) = self.upload_dir(id) else {
            return Ok(Err(Refused::NoSuchUpload));
        };
        let lock = self.lock(id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !dir.join("upload.json").is_file() {
            // Completed or aborted meanwhile.
            return Ok(Err(Refused::NoSuchUpload));
        }
        let others: u64 = self
            .parts(id)?
            .iter()
            .filter(|p| p.number != number)
            .map(|p| p.size)
            .sum();
        if others + bytes.len() as u64 > max {
            return Ok(Err(Refused::TooLarge(others + bytes.len() as u64)));
        }
        let md5 = crate::object::md5_hex(bytes);
        let name = part_name(number, &md5);
        write_durably(&dir.join(&name), bytes)?;
        // An earlier upload of the same part number goes.
        for p in self.parts(id)? {
            if p.number == number && p.md5 != md5 {
                let _ = std::fs::remove_file(dir.join(part_name(number, &p.md5)));
            }
        }
        Ok(Ok(md5))
    }

    /// The staged parts of `id`, by number.
    pub fn parts(&self, id: &str) -> Result<Vec<Part>> {
        let Some(dir) = self.upload_dir(id) else {
            return Ok(Vec::new());
        };
        let mut parts = Vec::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(parts),
            Err(e) => return Err(Error::io(format!("listing upload {id}"), e)),
        };
        for entry in rd {
            let entry = entry.map_err(io(format!("listing upload {id}")))?;
            let name = entry.file_name();
            let Some((number, md5)) = name.to_str().and_then(parse_part_name) else {
                continue;
            };
            let meta = entry
                .metadata()
                .map_err(io(format!("reading a part of upload {id}")))?;
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            parts.push(Part {
                number,
                size: meta.len(),
                md5,
                modified_ms,
            });
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    /// Every upload of `bucket`, by key then id.
    pub fn list(&self, bucket: &str) -> Result<Vec<(String, Upload)>> {
        let mut out = Vec::new();
        let rd =
            std::fs::read_dir(&self.dir).map_err(io(format!("listing {}", self.dir.display())))?;
        for entry in rd {
            let entry = entry.map_err(io(format!("listing {}", self.dir.display())))?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !valid_id(&id) {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path().join("upload.json")) else {
                continue;
            };
            if let Ok(u) = serde_json::from_slice::<Upload>(&bytes)
                && u.bucket == bucket
            {
                out.push((id, u));
            }
        }
        out.sort_by(|a, b| a.1.key.cmp(&b.1.key).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Reads the parts `wanted` (number, ETag as the client sent it) of
    /// `id` in order: the bytes and the multipart ETag.
    pub fn assemble(
        &self,
        id: &str,
        wanted: &[(i32, String)],
        max: u64,
    ) -> Result<std::result::Result<(Vec<u8>, String), Refused>> {
        let Some(dir) = self.upload_dir(id) else {
            return Ok(Err(Refused::NoSuchUpload));
        };
        let lock = self.lock(id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !dir.join("upload.json").is_file() {
            return Ok(Err(Refused::NoSuchUpload));
        }
        let staged = self.parts(id)?;
        let mut total = 0u64;
        let mut chosen = Vec::with_capacity(wanted.len());
        if wanted.windows(2).any(|w| w[1].0 <= w[0].0) {
            return Ok(Err(Refused::InvalidPartOrder));
        }
        for (i, (number, etag)) in wanted.iter().enumerate() {
            let etag = etag.trim_matches('"');
            let Some(p) = staged.iter().find(|p| p.number == *number && p.md5 == etag) else {
                return Ok(Err(Refused::InvalidPart(format!(
                    "part {number} with ETag {etag:?} was not uploaded (or was replaced)"
                ))));
            };
            if i + 1 < wanted.len() && p.size < MIN_PART_BYTES {
                return Ok(Err(Refused::EntityTooSmall(*number)));
            }
            total += p.size;
            chosen.push(p.clone());
        }
        if total > max {
            return Ok(Err(Refused::TooLarge(total)));
        }
        let mut bytes = Vec::with_capacity(total as usize);
        let mut digests = Vec::with_capacity(chosen.len());
        for p in &chosen {
            let b = std::fs::read(dir.join(part_name(p.number, &p.md5)))
                .map_err(io(format!("reading part {} of upload {id}", p.number)))?;
            let d: [u8; 16] = <md5::Md5 as md5::Digest>::digest(&b).into();
            if hex(&d) != p.md5 {
                return Err(Error::Damaged(format!(
                    "part {} of multipart upload {id} no longer has the bytes it was uploaded with; upload the part again",
                    p.number
                )));
            }
            digests.push(d);
            bytes.extend_from_slice(&b);
        }
        Ok(Ok((bytes, multipart_etag(&digests))))
    }

    /// Removes upload `id`.
    pub fn remove(&self, id: &str) -> Result<()> {
        let lock = self.lock(id);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = self.upload_dir(id) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => sync_dir(&self.dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing upload {id}"), e)),
            }
        }
        Ok(())
    }

    /// Removes uploads begun before `now_ms - MAX_AGE_MS`; how many.
    pub fn sweep(&self, now_ms: u64) -> Result<usize> {
        let mut removed = 0;
        let rd =
            std::fs::read_dir(&self.dir).map_err(io(format!("listing {}", self.dir.display())))?;
        for entry in rd.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !valid_id(&id) {
                continue;
            }
            let began = std::fs::read(entry.path().join("upload.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Upload>(&b).ok())
                .map(|u| u.initiated_ms);
            // An unreadable record: judged by the directory's age.
            let began = began.unwrap_or_else(|| {
                entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(now_ms, |d| d.as_millis() as u64)
            });
            if now_ms.saturating_sub(began) > MAX_AGE_MS {
                self.remove(&id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(key: &str, at: u64) -> Upload {
        Upload {
            bucket: "b".into(),
            key: key.into(),
            meta: ObjectMeta::default(),
            initiated_ms: at,
        }
    }

    #[test]
    fn parts_are_staged_checked_and_assembled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = Uploads::open(dir.path()).expect("open");
        let id = up.create(&upload("k", 1)).expect("create");
        assert_eq!(
            up.get(&id, "b", "other").expect("get"),
            Err(Refused::NoSuchUpload)
        );
        assert_eq!(
            up.get("../../etc", "b", "k").expect("get"),
            Err(Refused::NoSuchUpload)
        );
        let big = vec![7u8; MIN_PART_BYTES as usize];
        let m1 = up
            .put_part(&id, 1, b"first try", u64::MAX)
            .expect("put")
            .expect("ok");
        let m1b = up
            .put_part(&id, 1, &big, u64::MAX)
            .expect("put")
            .expect("ok");
        let m2 = up
            .put_part(&id, 2, b"tail", u64::MAX)
            .expect("put")
            .expect("ok");
        let parts = up.parts(&id).expect("parts");
        assert_eq!(
            parts.iter().map(|p| (p.number, p.size)).collect::<Vec<_>>(),
            [(1, MIN_PART_BYTES), (2, 4)]
        );
        // The replaced part 1 is gone.
        let stale = up
            .assemble(&id, &[(1, m1), (2, m2.clone())], u64::MAX)
            .expect("assemble");
        assert!(matches!(stale, Err(Refused::InvalidPart(_))), "{stale:?}");
        let order = up
            .assemble(&id, &[(2, m2.clone()), (1, m1b.clone())], u64::MAX)
            .expect("a");
        assert_eq!(order, Err(Refused::InvalidPartOrder));
        assert_eq!(
            up.assemble(&id, &[(1, m1b.clone()), (2, m2.clone())], 10)
                .expect("a"),
            Err(Refused::TooLarge(MIN_PART_BYTES + 4))
        );
        let (bytes, etag) = up
            .assemble(&id, &[(1, format!("\"{m1b}\"")), (2, m2.clone())], u64::MAX)
            .expect("assemble")
            .expect("ok");
        assert_eq!(bytes.len() as u64, MIN_PART_BYTES + 4);
        assert!(etag.ends_with("-2"), "{etag}");
        // A small part before the last is refused.
        let id2 = up.create(&upload("k2", 1)).expect("create");
        let s1 = up
            .put_part(&id2, 1, b"small", u64::MAX)
            .expect("put")
            .expect("ok");
        let s2 = up
            .put_part(&id2, 2, b"x", u64::MAX)
            .expect("put")
            .expect("ok");
        assert_eq!(
            up.assemble(&id2, &[(1, s1), (2, s2)], u64::MAX).expect("a"),
            Err(Refused::EntityTooSmall(1))
        );
        assert_eq!(up.list("b").expect("list").len(), 2);
        up.remove(&id).expect("remove");
        assert_eq!(
            up.get(&id, "b", "k").expect("get"),
            Err(Refused::NoSuchUpload)
        );
        // A part that comes after an Abort or Complete finds no upload.
        assert_eq!(
            up.put_part(&id, 3, b"late", u64::MAX).expect("put"),
            Err(Refused::NoSuchUpload)
        );
        assert_eq!(
            up.assemble(&id, &[(1, m1b)], u64::MAX).expect("assemble"),
            Err(Refused::NoSuchUpload)
        );
    }

    #[test]
    fn uploads_older_than_a_day_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = Uploads::open(dir.path()).expect("open");
        let old = up.create(&upload("old", 1_000)).expect("create");
        let new = up.create(&upload("new", MAX_AGE_MS)).expect("create");
        assert_eq!(up.sweep(MAX_AGE_MS + 1_001).expect("sweep"), 1);
        assert!(up.get(&old, "b", "old").expect("get").is_err());
        assert!(up.get(&new, "b", "new").expect("get").is_ok());
    }
}
