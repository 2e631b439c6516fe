//! Durable append throughput: walship's group-commit log against raw sled
//! (insert + flush + fdatasync, batched the same way), in the same run.
//!
//! `cargo bench --bench append` prints a table. WALSHIP_BENCH_SCALE (default
//! 1.0) scales the entry counts.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use walship::codec::Op;
use walship::key::Key;
use walship::log::{Log, Write};
use walship::storage::SledStorage;

const VALUE: usize = 256;

fn scale() -> f64 {
    std::env::var("WALSHIP_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

/// Raw sled: `n` inserts of 256 B, one flush + fdatasync per `batch`.
fn raw_sled(n: usize, batch: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 << 20)
        .open()
        .expect("sled");
    let tree = db.open_tree("log").expect("tree");
    let data = File::open(dir.path().join("db")).expect("db file");
    let value = vec![7u8; VALUE + 24];
    let t = Instant::now();
    let mut seq = 0u64;
    while (seq as usize) < n {
        let mut b = sled::Batch::default();
        for _ in 0..batch {
            seq += 1;
            b.insert(&seq.to_be_bytes(), value.as_slice());
        }
        tree.apply_batch(b).expect("batch");
        db.flush().expect("flush");
        data.sync_data().expect("fdatasync");
    }
    t.elapsed()
}

/// walship: `writers` tasks appending `n` entries in total.
fn walship_log(rt: &tokio::runtime::Runtime, n: usize, writers: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(SledStorage::open(dir.path(), 64 << 20).expect("open"));
    let log = Log::open(storage).expect("log");
    let value = Bytes::from(vec![7u8; VALUE]);
    let per = n / writers;
    rt.block_on(async {
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let log = log.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per {
                    let key = Key::parse(&format!("w{w}/{i}")).expect("key");
                    log.append(Write { op: Op::Put, key, value: value.clone() }).await.expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let took = t.elapsed();
        let s = log.stats();
        let (e, f) = (s.entries.load(std::sync::atomic::Ordering::Relaxed), s.flushes.load(std::sync::atomic::Ordering::Relaxed));
        if std::env::var("WALSHIP_BENCH_VERBOSE").is_ok() {
            let g = s.gather_us.load(std::sync::atomic::Ordering::Relaxed);
            let fl = s.flush_us.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "  writers {writers}: {e} entries in {f} flushes ({:.1} per flush), gather {:.0} µs/flush, append+sync {:.0} µs/flush, total {:?}",
                e as f64 / f.max(1) as f64,
                g as f64 / f.max(1) as f64,
                fl as f64 / f.max(1) as f64,
                took
            );
        }
        took
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("durable append, {VALUE} B values (median of 3 runs each)");
    println!(
        "{:>8} {:>9} {:>14} {:>14} {:>7}",
        "writers", "entries", "walship/s", "raw sled/s", "ratio"
    );
    for (writers, base_n) in [(1usize, 2_000usize), (8, 16_000), (64, 64_000)] {
        let n = ((base_n as f64 * scale()) as usize).max(writers) / writers * writers;
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..3 {
            ours.push(n as f64 / walship_log(&rt, n, writers).as_secs_f64());
            raw.push(n as f64 / raw_sled(n, writers).as_secs_f64());
        }
        ours.sort_by(f64::total_cmp);
        raw.sort_by(f64::total_cmp);
        let (o, r) = (ours[1], raw[1]);
        println!("{writers:>8} {n:>9} {o:>14.0} {r:>14.0} {:>7.2}", o / r);
    }
}
