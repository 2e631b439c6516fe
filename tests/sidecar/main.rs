//! The real `walship` binary: the CLI, the config checks, the HTTP and S3
//! front doors, deployment files, the Python package's tests, and
//! `kill -9` at random moments. One test binary for the area.

#[path = "../common/sidecar.rs"]
mod sidecar;
#[path = "../common/skip.rs"]
mod skip;

mod t80_sidecar;
mod t90_crash;
