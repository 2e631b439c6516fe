//! walship: a durable write-ahead-log replicator.
//!
//! Every write is appended to a local sled log with a gapless `seq` and a
//! crc32, made durable (group commit), then per-target shippers apply the
//! entries to object stores. See `SPEC.md` for the contract and README.md
//! for a tour.
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

pub mod api;
mod apply;
mod billing;
pub mod codec;
pub mod conflict;
pub mod error;
pub mod frame;
pub mod headfile;
pub mod key;
mod keyfit;
mod keyindex;
pub mod log;
pub mod object;
pub mod storage;

pub use error::{Error, Result};
pub mod config;
pub mod faults;
mod pipeline;
pub mod quorum;
pub mod replicator;
mod shipper;
pub mod status;
pub mod target;

pub use apply::list_conflicts;
pub use config::{Config, Mode};
pub use conflict::{JsonMerge, Merge};
pub use replicator::{Replicator, WriteAck};
pub mod cli;
pub mod crash;
pub mod failover;
pub mod health;
pub mod metrics;
pub mod model;
pub mod reads;
pub mod restore;
pub mod s3;
pub mod server;
mod target_machine;
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
