//! The library's guarantees, driven through `Replicator` over in-memory
//! stores behind the fault wrapper (`tests/common/mod.rs`'s `Rig`): one
//! module per area of SPEC.md. One test binary for the area, so CI links
//! it once.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/skip.rs"]
mod skip;

mod t30_modes;
mod t40_order;
mod t50_faults;
mod t60_health;
mod t65_conflicts;
mod t70_http;
mod t75_lifecycle;
mod t95_model;
