//! walship: a durable write-ahead-log replicator.
//!
//! Every write is appended to a local sled log with a gapless `seq` and a
//! crc32, made durable (group commit), then per-target shippers apply the
//! entries to object stores. README.md is the tour; `docs/contract.md`
//! the contract.
//!
//! # Writing, per mode
//!
//! [`Replicator::put`] answers once the write is where its [`Mode`] says;
//! `None` takes the config's `replication.mode`. Whatever the mode, an
//! acknowledged write is in the log and reaches every target in the end.
//!
//! ```
//! use bytes::Bytes;
//! use walship::key::Key;
//! use walship::{Config, Mode, Replicator};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> walship::Result<()> {
//! let dir = tempfile::tempdir().expect("a temp dir");
//! let url = |n: &str| walship::config::file_url(&dir.path().join(n));
//! let cfg = Config::from_toml(&format!(
//!     "data_dir = {:?}\n\
//!      [replication]\nmode = \"semi_sync\"\nmin_sync_replicas = 1\n\
//!      [primary]\nname = \"p\"\nurl = {:?}\n\
//!      [[targets]]\nname = \"r1\"\nurl = {:?}\n\
//!      [[targets]]\nname = \"r2\"\nurl = {:?}\n",
//!     dir.path().join("data"),
//!     url("p"),
//!     url("r1"),
//!     url("r2"),
//! ))?;
//! let rep = Replicator::open(cfg).await?;
//! let key = Key::parse("reports/2026-12-01.json")?;
//!
//! // async: durable in the log and written to the acting primary.
//! let ack = rep.put(&key, Bytes::from("v1"), Some(Mode::Async)).await?;
//! assert!(ack.acked_by.contains(&"p".to_string()));
//!
//! // semi_sync (the config's mode here): and on min_sync_replicas replicas.
//! let ack = rep.put(&key, Bytes::from("v2"), None).await?;
//! assert!(ack.acked_by.len() >= 2);
//!
//! // sync: on every replica that is not paused.
//! let ack = rep.put(&key, Bytes::from("v3"), Some(Mode::Sync)).await?;
//! assert_eq!(ack.acked_by.len(), 3);
//!
//! // Reads go by the read preference (the config's when `None`).
//! let read = rep.get(&key, None).await?;
//! assert_eq!(read.found.as_deref(), Some(&b"v3"[..]));
//! rep.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

mod acting;
mod api;
mod apply;
mod billing;
pub mod codec;
pub mod conflict;
pub mod error;
pub mod frame;
mod headfile;
mod journal;
pub mod key;
mod keyed;
mod keyfit;
mod keyindex;
pub mod log;
pub mod object;
mod reopen_pace;
pub mod storage;

pub use error::{Error, Result};
pub mod config;
#[cfg(feature = "testing")]
pub mod faults;
mod localattrs;
mod localdir;
mod ordered;
mod pipeline;
mod quorum;
pub mod replicator;
mod shipper;
pub mod status;
pub mod target;
mod waiters;

pub use apply::list_conflicts;
pub use config::{Config, Mode};
pub use conflict::{JsonMerge, Merge};
pub use replicator::{Replicator, WriteAck};
// Types the public API hands out, from modules kept private.
pub use api::{LogAnswer, LogEntryRow};
pub use metrics::Metrics;
pub use restore::{RestorePlan, RestoreRequest};
pub mod cli;
mod crash;
mod failover;
mod health;
mod metrics;
#[cfg(feature = "testing")]
pub mod model;
mod reads;
mod restore;
pub mod s3;
pub mod server;
mod target_machine;
mod target_record;
mod target_state;

/// Caps glibc malloc at two arenas. With one arena per thread, memory freed
/// by the shippers' and log readers' threads stays mapped and the resident
/// size of a sidecar catching up on a long backlog grows by a third or more
/// (measured in `benches/backlog.rs`). The `walship` binary calls this
/// first thing; a library user may too. A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// How often [`trim_allocator_every`]'s thread hands freed memory back.
pub const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts a thread that hands the allocator's freed memory back to the
/// kernel every `every` (glibc's `malloc_trim`, which also releases free
/// pages inside its arenas, not only at their tops). Under sustained
/// writes glibc otherwise keeps what sled's buffers and the requests freed
/// mapped: the sidecar's resident size sat tens of MiB above its live heap
/// (measured in `benches/rss.rs`). The `walship` binary calls this with
/// [`TRIM_INTERVAL`] unless `WALSHIP_MALLOC_TRIM=0` (the bench's
/// baseline). A no-op off glibc, and when the thread cannot be started.
pub fn trim_allocator_every(every: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::thread::Builder::new()
            .name("walship-trim".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    // SAFETY: malloc_trim only returns free memory to the
                    // kernel; it is thread-safe and leaves live blocks alone.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the allocator's trim thread; the resident size may stay above the live heap");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}
