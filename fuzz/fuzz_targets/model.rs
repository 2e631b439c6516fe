//! The model check of `walship::model` driven by fuzzer input: every two
//! bytes are one step (put, delete, fail, heal, pause, resume, crash).
#![no_main]

use libfuzzer_sys::fuzz_target;
use walship::model::{Step, check};

fuzz_target!(|data: &[u8]| {
    let steps: Vec<Step> = data.chunks_exact(2).take(40).map(|c| Step::from_bytes(c[0], c[1])).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(check(&steps)) {
        panic!("model invariant broken: {e}");
    }
});
