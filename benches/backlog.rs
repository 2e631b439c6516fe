//! A large backlog: fill a log with N entries (default 1M, 256 B) while every
//! replica is down, then measure, in a fresh process, the reopen time of the
//! replicator (log open, key index, resuming every cursor) and that
//! process's peak RSS while it ships the backlog to the primary. Then catch-up after an outage, with
//! 10% distinct keys against all-distinct keys (what coalescing saves).
//!
//! `cargo bench --features testing --bench backlog`; WALSHIP_BENCH_SCALE scales N.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::scale;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use walship::faults::{Fault, FaultyStore};
use walship::key::Key;
use walship::log::{Log, Write};
use walship::storage::SledStorage;
use walship::{Config, Replicator};

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn fill(data: &std::path::Path, n: usize, distinct: usize) {
    let log = Log::open(Arc::new(SledStorage::open(data, 64 << 20).expect("open"))).expect("log");
    let value = Bytes::from(vec![7u8; 256]);
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(writers) {
                let key = Key::parse(&format!("k/{}", i % distinct)).expect("key");
                log.append(Write::put(key, value.clone()))
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("fill");
    }
}

fn config(data: &std::path::Path) -> Config {
    // WALSHIP_BACKLOG_CACHE=BYTES sets log_cache_bytes (default: walship's).
    let cache = std::env::var("WALSHIP_BACKLOG_CACHE")
        .map(|b| format!("log_cache_bytes = {b}\n"))
        .unwrap_or_default();
    Config::from_toml(&format!(
        "data_dir = {:?}\n{cache}[replication]\nenable_failover = false\n[primary]\nname = \"p\"\nurl = \"memory://\"\n[[targets]]\nname = \"r1\"\nurl = \"memory://\"\n[[targets]]\nname = \"r2\"\nurl = \"memory://\"\n",
        data.display().to_string()
    ))
    .expect("config")
}

async fn catch_up(n: usize, distinct: usize) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    fill(&data, n, distinct).await;
    let dir = tmp.path().join("dir");
    std::fs::create_dir_all(&dir).expect("dir");
    let local: Arc<dyn ObjectStore> = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .expect("fs")
            .with_fsync(false),
    );
    let mut stores: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
    stores.insert("p".into(), Arc::new(InMemory::new()));
    stores.insert("r1".into(), Arc::new(InMemory::new()));
    stores.insert("r2".into(), local);
    let t = Instant::now();
    let rep = Replicator::open_with_stores(config(&data), stores)
        .await
        .expect("open");
    loop {
        let c = rep.cursors().expect("cursors");
        if c.targets.iter().all(|t| t.cursor == c.head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    rep.shutdown(Duration::ZERO).await.expect("shutdown");
    took
}

/// The reopen phase, in a fresh process (so its peak RSS is the sidecar's
/// alone, not the filling's): open the replicator on the filled log with
/// both replicas hung, ship the backlog to the primary, report.
fn reopen_child(data: &std::path::Path, n: usize) {
    // As the `walship` binary does.
    walship::tune_allocator();
    walship::trim_allocator_every(walship::TRIM_INTERVAL);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let before = rss_kib("VmRSS:");
        let mut stores: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
        for name in ["r1", "r2"] {
            let (s, f) = FaultyStore::wrap(Arc::new(InMemory::new()));
            f.set(Fault::Hang);
            stores.insert(name.into(), s);
        }
        // The primary acknowledges and keeps nothing, so the RSS is walship's
        // own, not a million objects held by an in-memory store.
        let (p, f) = FaultyStore::wrap(Arc::new(InMemory::new()));
        f.set(Fault::DropWrites);
        stores.insert("p".into(), p);
        let t = Instant::now();
        let rep = Replicator::open_with_stores(config(data), stores)
            .await
            .expect("open");
        let reopen = t.elapsed();
        // Let the primary ship the whole backlog while both replicas hang.
        loop {
            let c = rep.cursors().expect("cursors");
            if c.targets[0].cursor == c.head {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let c = rep.cursors().expect("cursors");
        println!(
            "reopen with {n} entries and 3 cursors at 0: {:.2}s",
            reopen.as_secs_f64()
        );
        println!(
            "peak RSS of the sidecar process {} MiB (at start {} MiB); replicas {} entries / {} MiB behind",
            rss_kib("VmHWM:") / 1024,
            before / 1024,
            c.targets[1].lag_entries,
            c.targets[1].lag_bytes >> 20
        );
        rep.shutdown(Duration::ZERO).await.expect("shutdown");
    });
}

fn main() {
    let n = ((1_000_000.0 * scale()) as usize).max(1000);
    if let Ok(data) = std::env::var("WALSHIP_BACKLOG_CHILD") {
        reopen_child(std::path::Path::new(&data), n);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // WALSHIP_BACKLOG_ONLY=catch-up skips the million-entry part.
    let only_catch_up = std::env::var("WALSHIP_BACKLOG_ONLY").as_deref() == Ok("catch-up");
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let t = Instant::now();
    if !only_catch_up {
        rt.block_on(fill(&data, n, n));
        println!("filled {n} entries in {:.1}s", t.elapsed().as_secs_f64());
        // WALSHIP_BACKLOG_FILL_ONLY=DIR: keep a copy of the filled log there
        // (to run the reopen phase again with WALSHIP_BACKLOG_CHILD=DIR).
        if let Ok(keep) = std::env::var("WALSHIP_BACKLOG_FILL_ONLY") {
            let status = std::process::Command::new("cp")
                .arg("-r")
                .arg(&data)
                .arg(&keep)
                .status()
                .expect("cp");
            assert!(status.success());
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .env("WALSHIP_BACKLOG_CHILD", &data)
            .status()
            .expect("run the reopen phase");
        assert!(status.success(), "reopen phase: {status:?}");
    }
    drop(tmp);
    let m = ((100_000.0 * scale()) as usize).max(1000);
    let coalesced = rt.block_on(catch_up(m, m / 10));
    let distinct = rt.block_on(catch_up(m, m));
    println!(
        "catch-up of {m} entries to 3 targets (one a local dir): 10% distinct keys {:.2}s, all distinct {:.2}s, ratio {:.1}x",
        coalesced.as_secs_f64(),
        distinct.as_secs_f64(),
        distinct.as_secs_f64() / coalesced.as_secs_f64()
    );
}
