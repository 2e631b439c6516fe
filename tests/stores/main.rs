//! Real object stores: one conformance suite over memory, a local
//! directory, S3 (moto) and Azure (azurite), the real binary against the
//! emulators, and two sidecars sharing buckets. One test binary for the
//! area.

#[path = "../common/emulators.rs"]
mod emulators;
#[path = "../common/sidecar.rs"]
mod sidecar;
#[path = "../common/skip.rs"]
mod skip;

mod t20_conformance;
mod t85_stores;
mod t87_two_sidecars;
