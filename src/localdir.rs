//! A local directory as a target: object_store's `LocalFileSystem` for
//! reads, listings, deletes and copies, and walship's own put.
//!
//! Protocol of a put (the same files and steps as `LocalFileSystem`'s, so
//! its reads and listings see exactly what it would have written):
//!
//! 1. the value goes to a staged file `PATH#N` beside the object (created
//!    new; `N` counts up past any left over, and listings skip such names),
//!    the missing parent directories made first (each new one fsynced, and
//!    the first that existed, when `fsync` is on);
//! 2. its e-tag is read from the staged file (inode, mtime, size: what a
//!    HEAD of the object answers); the put's attributes, if any, are set as
//!    its extended attribute `user.walship` (see `localattrs`: they read
//!    back only while the file is the one they were written with); then it
//!    is fsynced and closed;
//! 3. it is published: `PutMode::Overwrite` renames it over `PATH`,
//!    `PutMode::Create` links it at `PATH` (refused when anything is there:
//!    `AlreadyExists`) and removes the staged name; then `PATH`'s directory
//!    is fsynced;
//! 4. on any failure the staged file is removed and nothing is published.
//!
//! Why walship's own: the whole put runs as one job on the blocking pool,
//! holding its path's place in line (see `ordered`) until it is done,
//! whether or not its caller still waits. Through `LocalFileSystem` the
//! same write was a task that took the place in line and then a second
//! hand-off to the blocking pool: two thread wake-ups more per put, three
//! per write with three targets.
//!
//! Reads are `LocalFileSystem`'s, with the attributes of the file they
//! opened added (read from that open file, so they are its own: one
//! `fgetxattr` on the calling thread, which a local file system answers
//! from the inode it has just opened). A file
//! system that keeps no extended attributes answers a put with attributes
//! as `LocalFileSystem` does (not implemented), and the engine then writes
//! there without them (recording its versions next to the log instead).
//!
//! Invariant (from `ordered`): a put or delete of path P starts only after
//! every earlier started one of P has finished.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::localattrs::{self, Stamp, XATTR};
use crate::ordered::Ordered;

/// A local directory target; see the module docs.
pub(crate) struct LocalDir {
    fs: Arc<LocalFileSystem>,
    /// `fs` with its writes of one path in order; reads pass through.
    ordered: Ordered,
    fsync: bool,
}

impl LocalDir {
    /// The directory `fs` is rooted at, its puts made durable (file and
    /// directory fsync) when `fsync` is on.
    pub(crate) fn new(fs: LocalFileSystem, fsync: bool) -> LocalDir {
        let fs = Arc::new(fs);
        LocalDir {
            ordered: Ordered::new(fs.clone()),
            fs,
            fsync,
        }
    }
}

/// What `LocalFileSystem` answers for a put it cannot do: the engine learns
/// the missing capability from the operation's text.
fn not_implemented(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.into(),
        implementer: "LocalFileSystem".into(),
    }
}

fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    }
}

/// An I/O error with what was being done to which path; the `io::Error`
/// stays its source (the engine reads its code: `EISDIR`, `ENAMETOOLONG`).
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
struct PutError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn io_err(what: &'static str, path: &FsPath) -> impl FnOnce(std::io::Error) -> object_store::Error {
    let path = path.to_path_buf();
    move |source| generic(PutError { what, path, source })
}

/// The e-tag `LocalFileSystem` gives a file: inode, mtime in µs and size.
fn etag_of(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let mtime = localattrs::mtime_us(m);
    format!("\"{:x}-{mtime:x}-{:x}\"", m.ino(), m.len())
}

fn fsync_dir(dir: &FsPath) -> object_store::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync of directory", dir))
}

/// Makes `path`'s missing parent directories; with `fsync`, each new one
/// and the first that existed (its entries changed) are fsynced.
fn make_parents(path: &FsPath, fsync: bool) -> object_store::Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let mut existing = parent;
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    std::fs::create_dir_all(parent).map_err(io_err("creating directory", parent))?;
    if fsync {
        let mut dir = parent;
        loop {
            fsync_dir(dir)?;
            if dir == existing {
                break;
            }
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
    }
    Ok(())
}

/// Creates the staged file `PATH#N` for `path` (the first free `N` from 1).
fn stage(path: &FsPath, fsync: bool) -> object_store::Result<(File, PathBuf)> {
    let mut n = 1u64;
    let mut made_parents = false;
    loop {
        let mut staged = path.as_os_str().to_owned();
        staged.push(format!("#{n}"));
        let staged = PathBuf::from(staged);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&staged)
        {
            Ok(f) => return Ok((f, staged)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == ErrorKind::NotFound && !made_parents => {
                make_parents(&staged, fsync)?;
                made_parents = true;
            }
            Err(e) => return Err(io_err("creating staged file", &staged)(e)),
        }
    }
}

/// Closes `file`, reporting what the close reports (NFS and some FUSE
/// file systems only report a failed write there).
fn close(file: File, path: &FsPath) -> object_store::Result<()> {
    use std::os::fd::IntoRawFd as _;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken from a `File`, which no longer owns it;
    // it is closed exactly once, here.
    if unsafe { libc::close(fd) } != 0 {
        return Err(io_err("closing staged file", path)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Steps 2 and 3 of the protocol for a staged file.
fn write_and_publish(mut file: File, staged: &FsPath, put: &Put) -> object_store::Result<String> {
    let Put {
        path,
        location,
        payload,
        mode,
        attributes,
        fsync,
    } = put;
    let (path, fsync) = (path.as_path(), *fsync);
    for chunk in payload.iter() {
        file.write_all(chunk)
            .map_err(io_err("writing staged file", staged))?;
    }
    let meta = file
        .metadata()
        .map_err(io_err("reading the metadata of", staged))?;
    let etag = etag_of(&meta);
    if !attributes.is_empty() {
        set_attributes(&file, staged, Stamp::of(location, &meta), attributes)?;
    }
    if fsync {
        file.sync_all().map_err(io_err("fsync of", staged))?;
    }
    close(file, staged)?;
    match mode {
        PutMode::Create => match std::fs::hard_link(staged, path) {
            Ok(()) => {
                // The staged name goes; the object is the link.
                let _ = std::fs::remove_file(staged);
            }
            Err(source) if source.kind() == ErrorKind::AlreadyExists => {
                return Err(object_store::Error::AlreadyExists {
                    path: path.to_string_lossy().into_owned(),
                    source: Box::new(source),
                });
            }
            Err(e) => return Err(io_err("linking", path)(e)),
        },
        _ => std::fs::rename(staged, path).map_err(io_err("renaming over", path))?,
    }
    if fsync && let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(etag)
}

/// Keeps `attributes` on `file` (stamped `stamp`). A file system that
/// keeps no extended attributes answers "not implemented" for attributes:
/// the engine learns the directory keeps none, and writes again without
/// them. Attributes too large for the file system (ext4 keeps about 4 KiB
/// per file) are kept as walship's own three only, which tell whose the
/// version is (the log keeps the rest and answers reads with them). Any
/// other failure fails the put.
fn set_attributes(
    file: &File,
    staged: &FsPath,
    stamp: Stamp,
    attributes: &Attributes,
) -> object_store::Result<()> {
    use xattr::FileExt as _;
    let refused = |e: &std::io::Error| {
        not_implemented(&format!(
            "`put_opts` with `opts.attributes` specified: this directory's file system keeps no extended attributes ({e})"
        ))
    };
    let encode = |attributes: &Attributes| {
        localattrs::encode(stamp, attributes).map_err(|name| {
            not_implemented(&format!(
                "`put_opts` with `opts.attributes` specified: a local directory cannot keep the attribute {name}"
            ))
        })
    };
    let failed = |e| io_err("setting the extended attribute user.walship of", staged)(e);
    let too_large = match file.set_xattr(XATTR, &encode(attributes)?) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::Unsupported => return Err(refused(&e)),
        Err(e) if localattrs::too_large(&e) => e,
        Err(e) => return Err(failed(e)),
    };
    match file.set_xattr(XATTR, &encode(&localattrs::walships_own(attributes))?) {
        Ok(()) => {
            tracing::warn!(path = %staged.display(), error = %too_large, "the object's attributes are too large for this file system's extended attributes; it keeps walship's own only (reads through walship answer the rest from the log)");
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::Unsupported => Err(refused(&e)),
        // Not the size after all (a full disk answers ENOSPC too).
        Err(e) => Err(failed(e)),
    }
}

/// The attributes kept on `file` (see `localattrs`); none when it has none,
/// the file system keeps none, or it was changed since they were written.
fn attributes_of(
    file: &File,
    meta: &ObjectMeta,
    path: &FsPath,
) -> object_store::Result<Attributes> {
    use xattr::FileExt as _;
    let value = match file.get_xattr(XATTR) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(Attributes::new()),
        Err(e) if e.kind() == ErrorKind::Unsupported => return Ok(Attributes::new()),
        Err(e) => {
            return Err(io_err(
                "reading the extended attribute user.walship of",
                path,
            )(e));
        }
    };
    Ok(localattrs::decode(&value, Stamp::of_meta(meta)).unwrap_or_default())
}

/// One put: what is written where, and how.
struct Put {
    /// The object's file.
    path: PathBuf,
    /// The object's path in the store (its attributes are stamped with it).
    location: String,
    payload: PutPayload,
    mode: PutMode,
    attributes: Attributes,
    fsync: bool,
}

/// A whole put (the module's protocol), on the calling thread.
fn put_file(put: &Put) -> object_store::Result<PutResult> {
    let (file, staged) = stage(&put.path, put.fsync)?;
    match write_and_publish(file, &staged, put) {
        Ok(etag) => Ok(PutResult {
            e_tag: Some(etag),
            version: None,
            extensions: Default::default(),
        }),
        Err(e) => {
            // Nothing published: the staged file goes (it may be gone).
            let _ = std::fs::remove_file(&staged);
            Err(e)
        }
    }
}

impl fmt::Debug for LocalDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalDir({})", self.fs)
    }
}

impl fmt::Display for LocalDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fs)
    }
}

#[async_trait]
impl ObjectStore for LocalDir {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if matches!(opts.mode, PutMode::Update(_)) {
            return Err(not_implemented("`put_opts` with mode `PutMode::Update`"));
        }
        let path = self.fs.path_to_filesystem(location)?;
        let put = Put {
            path,
            location: location.to_string(),
            payload,
            mode: opts.mode,
            attributes: opts.attributes,
            fsync: self.fsync,
        };
        self.ordered
            .in_order_blocking(location, move || put_file(&put))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.ordered.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let mut r = self.ordered.get_opts(location, options).await?;
        if let GetResultPayload::File(file, path) = &r.payload {
            r.attributes = attributes_of(file, &r.meta, path)?;
        }
        Ok(r)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.ordered.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.ordered.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.ordered.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.ordered.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.ordered.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt as _;

    fn dir(fsync: bool) -> (tempfile::TempDir, LocalDir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fs = LocalFileSystem::new_with_prefix(tmp.path())
            .expect("fs")
            .with_automatic_cleanup(true)
            .with_fsync(fsync);
        (tmp, LocalDir::new(fs, fsync))
    }

    fn create() -> PutOptions {
        PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        }
    }

    /// No staged file is left anywhere under `root`.
    fn no_staged_files(root: &FsPath) -> bool {
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else if e.file_name().to_string_lossy().contains('#') {
                    return false;
                }
            }
        }
        true
    }

    #[tokio::test]
    async fn a_put_is_read_back_by_the_directorys_own_reads_with_the_same_etag() {
        for fsync in [true, false] {
            let (tmp, d) = dir(fsync);
            let p = Path::from("a/b/c.json");
            let r = d.put(&p, "v1".into()).await.expect("put");
            let head = d.head(&p).await.expect("head");
            assert_eq!(r.e_tag, head.e_tag, "the put's e-tag is what a HEAD says");
            assert_eq!(head.size, 2);
            let got = d.get(&p).await.expect("get").bytes().await.expect("bytes");
            assert_eq!(&got[..], b"v1");
            // An overwrite replaces it and changes the e-tag.
            let r2 = d.put(&p, "version 2".into()).await.expect("overwrite");
            assert_ne!(r2.e_tag, r.e_tag);
            assert_eq!(r2.e_tag, d.head(&p).await.expect("head").e_tag);
            assert_eq!(
                std::fs::read(tmp.path().join("a/b/c.json")).expect("file"),
                b"version 2"
            );
            assert!(no_staged_files(tmp.path()));
        }
    }

    #[tokio::test]
    async fn a_create_is_refused_over_anything_there_and_changes_nothing() {
        let (tmp, d) = dir(true);
        let p = Path::from("k");
        d.put_opts(&p, "first".into(), create())
            .await
            .expect("create");
        let again = d.put_opts(&p, "second".into(), create()).await;
        assert!(
            matches!(again, Err(object_store::Error::AlreadyExists { .. })),
            "{again:?}"
        );
        assert_eq!(std::fs::read(tmp.path().join("k")).expect("k"), b"first");
        // A directory of other keys at the path is "something there" too.
        d.put(&Path::from("dir/x"), "x".into()).await.expect("put");
        let over_dir = d.put_opts(&Path::from("dir"), "v".into(), create()).await;
        assert!(
            matches!(over_dir, Err(object_store::Error::AlreadyExists { .. })),
            "{over_dir:?}"
        );
        assert!(no_staged_files(tmp.path()), "the refused puts left nothing");
    }

    #[tokio::test]
    async fn what_the_directory_cannot_do_is_said_as_local_file_system_says_it() {
        let (_tmp, d) = dir(true);
        let update = d
            .put_opts(
                &Path::from("k"),
                "v".into(),
                PutOptions {
                    mode: PutMode::Update(object_store::UpdateVersion {
                        e_tag: Some("x".into()),
                        version: None,
                    }),
                    ..Default::default()
                },
            )
            .await;
        match update {
            Err(object_store::Error::NotImplemented { operation, .. }) => {
                assert_eq!(
                    crate::apply::missing_cap(&operation),
                    Some(crate::target_state::Caps::NO_UPDATE)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_puts_attributes_read_back_while_the_file_is_the_one_written() {
        let (tmp, d) = dir(true);
        let mut attributes = Attributes::new();
        attributes.insert(object_store::Attribute::ContentType, "text/plain".into());
        attributes.insert(
            object_store::Attribute::Metadata(crate::conflict::META_ORIGIN.into()),
            "0123456789abcdef".into(),
        );
        let with_attributes = PutOptions {
            attributes: attributes.clone(),
            ..Default::default()
        };
        let p = Path::from("a/k");
        let put = d
            .put_opts(&p, "v".into(), with_attributes.clone())
            .await
            .expect("put with attributes");
        let got = d.get(&p).await.expect("get");
        assert_eq!(got.attributes, attributes);
        assert_eq!(got.meta.e_tag, put.e_tag);
        let head = d
            .get_opts(&p, GetOptions::default().with_head(true))
            .await
            .expect("head");
        assert_eq!(head.attributes, attributes, "a HEAD has them too");
        // A put without attributes leaves none behind.
        d.put(&p, "w".into()).await.expect("put");
        assert!(d.get(&p).await.expect("get").attributes.is_empty());

        // Changed in place after the put (the attribute stays with the
        // inode): read as a file without attributes.
        d.put_opts(&p, "v".into(), with_attributes.clone())
            .await
            .expect("put");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let file = tmp.path().join("a/k");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(b" edited"))
            .expect("edit in place");
        {
            use xattr::FileExt as _;
            let f = File::open(&file).expect("open");
            assert!(f.get_xattr(XATTR).expect("xattr").is_some(), "still there");
        }
        assert!(d.get(&p).await.expect("get").attributes.is_empty());

        // Rewritten in place to the same size: the same.
        d.put_opts(&p, "12345".into(), with_attributes.clone())
            .await
            .expect("put");
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::os::unix::fs::FileExt as _;
            let f = OpenOptions::new().write(true).open(&file).expect("open");
            f.write_all_at(b"54321", 0).expect("rewrite in place");
        }
        assert!(d.get(&p).await.expect("get").attributes.is_empty());

        // Moved here from another key, attribute and times kept: the same.
        let other = Path::from("a/other");
        d.put_opts(&other, "moved".into(), with_attributes)
            .await
            .expect("put");
        std::fs::rename(tmp.path().join("a/other"), &file).expect("mv");
        let moved = d.get(&p).await.expect("get");
        assert_eq!(moved.bytes().await.expect("bytes").as_ref(), b"moved");
        assert!(d.get(&p).await.expect("get").attributes.is_empty());
        assert!(no_staged_files(tmp.path()));
    }

    #[tokio::test]
    async fn attributes_too_large_for_the_file_system_keep_walships_own() {
        let (_tmp, d) = dir(true);
        let mut attributes = Attributes::new();
        let origin = object_store::Attribute::Metadata(crate::conflict::META_ORIGIN.into());
        attributes.insert(origin.clone(), "0123456789abcdef".into());
        // Over the 64 KiB any Linux file system takes for one attribute.
        attributes.insert(
            object_store::Attribute::Metadata("big".into()),
            "x".repeat(70 * 1024).into(),
        );
        let p = Path::from("k");
        d.put_opts(
            &p,
            "v".into(),
            PutOptions {
                attributes,
                ..Default::default()
            },
        )
        .await
        .expect("the put goes through");
        let got = d.get(&p).await.expect("get").attributes;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got.get(&origin).map(|v| v.as_ref()),
            Some("0123456789abcdef")
        );
    }

    #[tokio::test]
    async fn a_put_that_cannot_be_published_leaves_nothing_and_names_the_os_error() {
        let (tmp, d) = dir(true);
        // A file where a directory of the key must be.
        d.put(&Path::from("file"), "x".into()).await.expect("put");
        let under = d.put(&Path::from("file/below"), "v".into()).await;
        let err = crate::Error::target("t", under.expect_err("not a directory"));
        assert!(err.permanent_reason().is_some(), "{err}");
        // A segment longer than a file name may be.
        let long = "x".repeat(300);
        let named = d.put(&Path::from(long.as_str()), "v".into()).await;
        let err = crate::Error::target("t", named.expect_err("name too long"));
        assert!(
            err.permanent_reason()
                .is_some_and(|r| r.contains("too long")),
            "{err}"
        );
        assert!(no_staged_files(tmp.path()));
    }
}
