//! Durable append throughput: walship's group-commit log against raw sled
//! (insert + flush + fdatasync, batched the same way), in the same run.
//!
//! `cargo bench --bench append` prints a table. WALSHIP_BENCH_SCALE (default
//! 1.0) scales the entry counts. The "no head rec" column is walship with
//! the head record of guarantee 8 switched off (what it cost before it),
//! so the last column is what the head record costs, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::{raw_sled, scale};
use walship::key::Key;
use walship::log::{Log, Write};
use walship::storage::SledStorage;

const VALUE: usize = 256;

/// walship: `writers` tasks appending `n` entries in total.
fn walship_log(
    rt: &tokio::runtime::Runtime,
    n: usize,
    writers: usize,
    head_record: bool,
) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(SledStorage::open(dir.path(), 64 << 20).expect("open"));
    if !head_record {
        storage.bench_without_head_record();
    }
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
                    log.append(Write::put(key, value.clone())).await.expect("append");
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
    println!("durable append, {VALUE} B values (median of 5 alternating rounds each)");
    println!(
        "{:>8} {:>9} {:>12} {:>12} {:>12} {:>7} {:>9}",
        "writers", "entries", "walship/s", "no head rec", "raw sled/s", "ratio", "head rec"
    );
    for (writers, base_n) in [(1usize, 2_000usize), (8, 16_000), (64, 64_000)] {
        let n = ((base_n as f64 * scale()) as usize).max(writers) / writers * writers;
        let mut ours = Vec::new();
        let mut bare = Vec::new();
        let mut raw = Vec::new();
        let mut cost = Vec::new();
        for round in 0..5 {
            // Rotate the order so no phase always follows another.
            let mut o = 0.0;
            let mut b = 0.0;
            for phase in 0..3 {
                match (phase + round) % 3 {
                    0 => o = n as f64 / walship_log(&rt, n, writers, true).as_secs_f64(),
                    1 => b = n as f64 / walship_log(&rt, n, writers, false).as_secs_f64(),
                    _ => raw.push(n as f64 / raw_sled(n, VALUE, writers).as_secs_f64()),
                }
            }
            ours.push(o);
            bare.push(b);
            cost.push(o / b);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (o, b, r, c) = (
            median(&mut ours),
            median(&mut bare),
            median(&mut raw),
            median(&mut cost),
        );
        println!(
            "{writers:>8} {n:>9} {o:>12.0} {b:>12.0} {r:>12.0} {:>7.2} {c:>9.2}",
            o / r
        );
    }
}
