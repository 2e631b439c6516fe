//! Shipping over stores with real latency: every request to a replica takes
//! 30 ms more (the fault wrapper's delay), and W writers (1, 16, 64) write
//! in `sync` and `semi_sync`. `cargo bench --features testing --bench latency`.
//!
//! The primary is a local directory (fsync on); the two replicas are
//! in-memory stores behind the delay, so the figure is what the delay
//! costs, not the disk. Each mode and writer count runs with and without
//! the delay, in the same run. The goal the issue sets: 64 writers in
//! `sync` reach at least 0.8 × min(64 / RTT, the same run's throughput
//! without the delay), i.e. shipping pipelines across writers instead of
//! serialising them. `WALSHIP_LATENCY_CALLS=1` also prints a replica's
//! requests per run (one put per write here).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use walship::faults::{Fault, FaultyStore};
use walship::{Config, Replicator};

const RTT: Duration = Duration::from_millis(30);

async fn run(root: &std::path::Path, mode: &str, writers: usize, delay: bool) -> f64 {
    let dir = root.join(format!("{mode}-{writers}-{delay}"));
    let text = format!(
        "data_dir = {:?}\nshutdown_grace_seconds = 1\n[replication]\nmode = \"{mode}\"\n\
         min_sync_replicas = 1\nenable_health_checks = false\n\
         [primary]\nname = \"p\"\nurl = {:?}\n\
         [[targets]]\nname = \"r1\"\nurl = \"memory://\"\nsync_timeout_seconds = 30\n\
         [[targets]]\nname = \"r2\"\nurl = \"memory://\"\nsync_timeout_seconds = 30\n",
        dir.join("data"),
        walship::config::file_url(&dir.join("p")),
    );
    let mut stores: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
    let mut controls = Vec::new();
    for name in ["r1", "r2"] {
        let (store, faults) = FaultyStore::wrap(Arc::new(InMemory::new()));
        if delay {
            faults.set(Fault::Delay(RTT));
        }
        stores.insert(name.to_string(), store);
        controls.push(faults);
    }
    let rep = Replicator::open_with_stores(Config::from_toml(&text).expect("config"), stores)
        .await
        .expect("open");
    let n = (writers * 20).clamp(200, 2000);
    let value = Bytes::from(vec![b'v'; 1400]);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (rep, next, value) = (rep.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let k = walship::key::Key::parse(&format!("k/{i}")).expect("key");
                rep.put(&k, value.clone(), None).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    if std::env::var_os("WALSHIP_LATENCY_CALLS").is_some() {
        eprintln!(
            "{mode} {writers} delay={delay}: r1 calls {} puts {} for {n} writes",
            controls[0].calls(),
            controls[0].puts()
        );
    }
    rep.shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    per_sec
}

#[tokio::main]
async fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    println!(
        "replicas behind a {} ms delay per request; primary a local directory; 1.4 KB values",
        RTT.as_millis()
    );
    println!(
        "{:>9} {:>7} {:>14} {:>14} {:>16} {:>8}",
        "mode", "writers", "no delay w/s", "30 ms w/s", "min(W/RTT, none)", "ratio"
    );
    for mode in ["sync", "semi_sync"] {
        for writers in [1usize, 16, 64] {
            // `WALSHIP_LATENCY_ONLY=sync:64` runs one row (for a profiler).
            if std::env::var("WALSHIP_LATENCY_ONLY")
                .is_ok_and(|only| only != format!("{mode}:{writers}"))
            {
                continue;
            }
            let none = run(tmp.path(), mode, writers, false).await;
            let slow = run(tmp.path(), mode, writers, true).await;
            let bound = (writers as f64 / RTT.as_secs_f64()).min(none);
            println!(
                "{mode:>9} {writers:>7} {none:>14.0} {slow:>14.0} {bound:>16.0} {:>8.2}",
                slow / bound
            );
        }
    }
}
