//! Where a single writer's durable write spends its time, through the
//! library (no HTTP): `cargo bench --bench phase`.
//!
//! For `async` and `sync` (a primary and two replicas in local directories,
//! fsync on), 1000 sequential `Replicator::put`s of 1.4 KB values, then 1000
//! bare `Log::append`s, and 500 raw object_store puts to a local directory.
//! It prints the put and append p50/p90, the committer's own time per group
//! (`CommitStats`: sled insert, flush, fdatasync and the head record) during
//! each phase, and the raw put p50. The appends are shipped as they land
//! (every target gets them), so their flushes share the disk with the
//! targets' fsyncs, as a write's does in a running sidecar.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use walship::{Config, Replicator};

fn p(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let url = |n: &str| walship::config::file_url(&root.join(n));
    let value = Bytes::from(vec![b'v'; 1400]);
    println!(
        "one writer, 1.4 KB values, primary + 2 replicas in local directories (fsync); microseconds"
    );
    println!(
        "{:>6} {:>8} {:>8} {:>12} {:>11} {:>11} {:>15}",
        "mode", "put p50", "put p90", "commit (put)", "append p50", "append p90", "commit (append)"
    );
    for mode in ["async", "sync"] {
        let d = root.join(mode);
        let text = format!(
            "data_dir = {:?}\n[replication]\nmode = \"{mode}\"\nenable_health_checks = false\n\
             [primary]\nname = \"p\"\nurl = {:?}\n[[targets]]\nname = \"r1\"\nurl = {:?}\n\
             [[targets]]\nname = \"r2\"\nurl = {:?}\n",
            d.join("data"),
            url(&format!("{mode}-p")),
            url(&format!("{mode}-r1")),
            url(&format!("{mode}-r2")),
        );
        let rep = Replicator::open(Config::from_toml(&text).expect("config"))
            .await
            .expect("open");
        let stats = rep.log().stats();
        let before = (
            stats.flush_us.load(Ordering::Relaxed),
            stats.flushes.load(Ordering::Relaxed),
        );
        let mut puts = Vec::new();
        for i in 0..1000 {
            let k = walship::key::Key::parse(&format!("k/{i}")).expect("key");
            let t = Instant::now();
            rep.put(&k, value.clone(), None).await.expect("put");
            puts.push(t.elapsed());
        }
        let after = (
            stats.flush_us.load(Ordering::Relaxed),
            stats.flushes.load(Ordering::Relaxed),
        );
        puts.sort();
        let mut appends = Vec::new();
        for i in 0..1000 {
            let k = walship::key::Key::parse(&format!("a/{i}")).expect("key");
            let t = Instant::now();
            rep.log()
                .append(walship::log::Write::put(k, value.clone()))
                .await
                .expect("append");
            appends.push(t.elapsed());
        }
        appends.sort();
        let end = (
            stats.flush_us.load(Ordering::Relaxed),
            stats.flushes.load(Ordering::Relaxed),
        );
        let commit = (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64;
        let commit_appends = (end.0 - after.0) as f64 / (end.1 - after.1).max(1) as f64;
        println!(
            "{mode:>6} {:>8.0} {:>8.0} {commit:>12.0} {:>11.0} {:>11.0} {commit_appends:>15.0}",
            p(&puts, 0.5),
            p(&puts, 0.9),
            p(&appends, 0.5),
            p(&appends, 0.9),
        );
        rep.shutdown(Duration::from_secs(5))
            .await
            .expect("shutdown");
    }
    let dir = root.join("raw");
    std::fs::create_dir_all(dir.join("k")).expect("dir");
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .expect("store")
        .with_fsync(true);
    let mut raw = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        fs.put(
            &object_store::path::Path::from(format!("k/{i}")),
            value.clone().into(),
        )
        .await
        .expect("put");
        raw.push(t.elapsed());
    }
    raw.sort();
    println!(
        "raw object_store put to a local directory (fsync): p50 {:.0}",
        p(&raw, 0.5)
    );
}
