//! walship: a durable write-ahead-log replicator.
//!
//! Every write is appended to a local sled log with a gapless `seq` and a
//! crc32, made durable (group commit), then per-target shippers apply the
//! entries to object stores. See `SPEC.md` for the contract and README.md
//! for a tour.
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

mod apply;
pub mod codec;
pub mod conflict;
pub mod error;
pub mod key;
pub mod log;
pub mod storage;

pub use error::{Error, Result};
pub mod config;
pub mod faults;
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
pub mod server;
mod target_state;
