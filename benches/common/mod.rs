//! What the benches share: the scale knob and the raw sled baseline.
#![allow(dead_code)]

use std::fs::File;
use std::time::{Duration, Instant};

/// `WALSHIP_BENCH_SCALE` (default 1.0) scales the entry counts.
pub fn scale() -> f64 {
    std::env::var("WALSHIP_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

/// Raw sled: `n` inserts of `size` B (plus a record header's worth), one
/// flush + fdatasync of its data file per `batch`.
pub fn raw_sled(n: usize, size: usize, batch: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 << 20)
        .open()
        .expect("sled");
    let tree = db.open_tree("log").expect("tree");
    let data = File::open(dir.path().join("db")).expect("db file");
    let value = vec![7u8; size + 24];
    let t = Instant::now();
    let mut seq = 0u64;
    while (seq as usize) < n {
        let mut b = sled::Batch::default();
        for _ in 0..batch.max(1) {
            seq += 1;
            b.insert(&seq.to_be_bytes(), value.as_slice());
        }
        tree.apply_batch(b).expect("batch");
        db.flush().expect("flush");
        data.sync_data().expect("fdatasync");
    }
    t.elapsed()
}

/// The number after `--NAME` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of the rounds' figures (the lower middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}
