//! The one error type of walship.
//!
//! Every variant says what happened and, where the user can act, what to do.
//! Errors carry context (the seq, the target, the path) rather than a bare
//! source, so a line in a log or an HTTP answer is enough to act on.

use std::path::PathBuf;

/// Result with walship's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in walship.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A conditional write (`If-None-Match: *`, `If-Match`) found the key's
    /// newest version in the log other than it required; nothing was
    /// appended.
    #[error("precondition failed for key {key:?}: {reason}; nothing was written")]
    PreconditionFailed {
        /// The key.
        key: String,
        /// What the log holds instead.
        reason: String,
    },

    /// A stored log entry failed its crc or could not be decoded.
    #[error(
        "log entry seq {seq} is corrupt: {reason}. Shipping stops before it; \
         no wrong bytes are shipped. Restore data_dir from a backup, or resync the targets"
    )]
    Corrupt {
        /// The sequence number of the bad entry.
        seq: u64,
        /// What was wrong with its bytes.
        reason: String,
    },

    /// Something walship keeps next to the log (the key index, a record
    /// of what a target holds, a conflict record) does not decode. The
    /// message names it and says what to do.
    #[error("{0}")]
    Damaged(String),

    /// The log opened shorter than its head record says it reached: sled's
    /// recovery stopped at a damaged page, or its file was cut or removed.
    #[error(
        "the log in {} ends at seq {log_head}, but its head record says seqs up to {acked} were acknowledged: \
         seqs {}..={acked} are missing or damaged (sled treats a damaged page as the end of its log). \
         Nothing was changed and walship will not reuse those seqs. Restore data_dir from a backup, or run \
         `walship repair --accept-loss --data-dir {}` to record the loss, move the head past {acked} \
         and resync every target that had not applied them from the acting primary",
        .dir.display(), .log_head + 1, .dir.display()
    )]
    LogShorter {
        /// The data directory.
        dir: PathBuf,
        /// Where the log that opened ends.
        log_head: u64,
        /// The head record's acknowledged seq.
        acked: u64,
    },

    /// The head record file is damaged in both of its slots.
    #[error(
        "the head record {} is damaged, so the log's length cannot be checked. If the log is intact \
         (`walship log`, `walship verify`), run `walship repair --accept-loss` to record its head anew",
        .path.display()
    )]
    HeadRecordDamaged {
        /// The file.
        path: PathBuf,
    },

    /// `data_dir` has no space left (or the log is reopening after a failed
    /// flush): the write was not acknowledged; walship takes writes again by
    /// itself once space is freed.
    #[error(
        "data_dir is full, or the log is reopening after a failed flush ({0}): nothing was acknowledged \
         (a write may or may not have been kept; retrying it is safe). Free space in data_dir and retry: \
         walship takes writes again by itself, no restart needed"
    )]
    DiskFull(String),

    /// The log storage (sled) failed.
    #[error(
        "log storage failed while {op} in {path}: {source}. Check the disk, free space and permissions of data_dir"
    )]
    Storage {
        /// What the log was doing.
        op: &'static str,
        /// The data directory.
        path: PathBuf,
        /// The storage engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The log reopened from disk (after a failed write) between a change
    /// and the sync meant to make it durable: the change may be gone.
    #[error(
        "the log reopened from disk after a failed write while this change was being made, and may have \
         dropped it; nothing is known to be kept: check the disk of data_dir, then retry"
    )]
    LogReopened,

    /// The log stopped accepting writes after a failed durable flush.
    #[error(
        "a durable flush of the log failed ({0}); this write was not acknowledged (it may or may not have \
         been kept; retrying it is safe). The log reopens itself from disk before it takes writes again: \
         check the disk of data_dir, then retry"
    )]
    LogPoisoned(String),

    /// An operating-system I/O error with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, e.g. "reading config walship.toml".
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A key that breaks the key rules of SPEC.md.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given (possibly shortened).
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A key some target cannot hold (guarantee 11): nothing was written.
    #[error("key {key:?} cannot be stored on target {target}: {reason}. Nothing was written")]
    KeyDoesNotFit {
        /// The key refused (possibly shortened).
        key: String,
        /// The target that cannot hold it.
        target: String,
        /// Why, naming the other key when there is one.
        reason: String,
    },

    /// A target that refuses an entry for good (guarantee 11): a directory
    /// or a file stands in the way of the key's path, a name too long.
    #[error(
        "target {target} rejects seq {seq} (key {key:?}) for good: {reason}. Shipping to {target} stopped \
         (state failed); the other targets go on. Clear the way on {target} (or write the key again \
         differently), then `walship resume {target}`; or `walship resync {target}`"
    )]
    Rejected {
        /// The target.
        target: String,
        /// The entry's seq.
        seq: u64,
        /// Its key.
        key: String,
        /// What the store said.
        reason: String,
    },

    /// A value larger than `max_object_bytes`.
    #[error(
        "the value is {size} bytes, over max_object_bytes ({max}); raise max_object_bytes in the config or store a smaller object"
    )]
    TooLarge {
        /// Size of the value.
        size: usize,
        /// The configured maximum.
        max: usize,
    },

    /// A config file that cannot be used; one line per problem.
    #[error("invalid config:\n{}", .problems.join("\n"))]
    Config {
        /// Each problem, naming its field.
        problems: Vec<String>,
    },

    /// A target's object store failed.
    #[error("target {target}: {source}")]
    Target {
        /// Target name.
        target: String,
        /// The object store error.
        #[source]
        source: Box<object_store::Error>,
    },

    /// A target name that is not configured.
    #[error("unknown target {0:?}; `walship cursors` lists the configured targets")]
    UnknownTarget(String),

    /// A write is durable locally but missed its replication quorum in time.
    #[error(
        "replication timed out: the entry is durable locally at seq {seq}, acknowledged by {acked} of {required} required targets ({}), \
         and will still be replicated (unless a target keeps another version of the key by its conflict strategy: see walship conflicts and the log)",
        if .acked_by.is_empty() { "none".to_string() } else { .acked_by.join(", ") }
    )]
    QuorumTimeout {
        /// The seq of the durable entry.
        seq: u64,
        /// Required targets that acknowledged in time.
        acked: usize,
        /// Number of targets required by the mode.
        required: usize,
        /// Every target whose cursor passed the seq when the wait ended.
        acked_by: Vec<String>,
    },

    /// No target that may serve a read has applied the key's latest entry.
    #[error(
        "no healthy target has applied seq {seq} of key {key:?} yet; retry shortly, or read with ?read_preference=any"
    )]
    NoFreshTarget {
        /// The key.
        key: String,
        /// Its latest seq in the log.
        seq: u64,
    },

    /// An endpoint action that does not exist.
    #[error("{0}")]
    UnknownAction(String),

    /// A state change the target's current state does not allow (a pause
    /// during a resync, a resync of the acting primary, ...): the message
    /// names the state and what to do.
    #[error("{0}")]
    StateRefused(String),

    /// A conflict resolution that cannot be done as asked now: the target
    /// changed since the record, the acting primary has not applied the
    /// entry yet, or the log no longer holds it. The message says what to do.
    #[error("{0}")]
    ResolveRefused(String),

    /// A key on a target changed every time walship wrote it (someone else
    /// keeps writing it): the write is retried.
    #[error(
        "key {key:?} on target {target} changed {rounds} times while walship wrote it; retrying"
    )]
    KeyContended {
        /// The key.
        key: String,
        /// The target.
        target: String,
        /// Conditional writes that lost.
        rounds: usize,
    },

    /// A conflict id that is not in the manual queue.
    #[error("no open conflict with id {0}; `walship conflicts` lists the open ones")]
    UnknownConflict(u64),

    /// The sidecar is stopping.
    #[error("walship is shutting down and takes no new writes; retry once it has restarted")]
    ShuttingDown,

    /// Bad usage of an API (a malformed query, an unknown mode, ...).
    #[error("{0}")]
    BadRequest(String),
}

impl Error {
    /// When a target's error means it will never take this entry as it is
    /// (retrying cannot help): what the store said.
    pub(crate) fn permanent_reason(&self) -> Option<String> {
        let Error::Target { source, .. } = self else {
            return None;
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && let Some(code) = io.raw_os_error()
                && [libc::EISDIR, libc::ENOTDIR, libc::ENAMETOOLONG].contains(&code)
            {
                return Some(io.to_string());
            }
            cur = e.source();
        }
        None
    }

    /// Whether this is (or was caused by) a full disk: ENOSPC or EDQUOT.
    pub fn is_disk_full(&self) -> bool {
        fn full(io: &std::io::Error) -> bool {
            matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || io.kind() == std::io::ErrorKind::StorageFull
        }
        match self {
            Error::DiskFull(_) => true,
            Error::Io { source, .. } => full(source),
            Error::Storage { source, .. } => {
                if let Some(sled::Error::Io(io)) = source.downcast_ref::<sled::Error>() {
                    full(io)
                } else {
                    source.downcast_ref::<std::io::Error>().is_some_and(full)
                }
            }
            _ => false,
        }
    }

    /// Whether this sidecar's own data dir failed in a way that passes once
    /// the disk does (full, the log reopening, a failed sled I/O): not the
    /// fault of a target being written, and worth retrying soon.
    pub fn is_local_transient(&self) -> bool {
        match self {
            Error::DiskFull(_) | Error::LogPoisoned(_) | Error::LogReopened => true,
            Error::Storage { source, .. } => {
                matches!(
                    source.downcast_ref::<sled::Error>(),
                    Some(sled::Error::Io(_))
                )
            }
            Error::Io { .. } => self.is_disk_full(),
            _ => false,
        }
    }

    pub(crate) fn storage(
        op: &'static str,
        path: &std::path::Path,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Storage {
            op,
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn target(target: &str, source: object_store::Error) -> Self {
        Error::Target {
            target: target.to_string(),
            source: Box::new(source),
        }
    }
}
