//! End to end through the library: W writers put N values of S bytes in
//! mode M to a primary and replicas in local directories (fsync on), and
//! the table shows writes/s, ack latency percentiles and the end-to-end lag
//! (ack → every target applied) percentiles, next to baselines measured in
//! the same run: raw sled (insert + flush + fdatasync) at the group size
//! walship reached, and raw object_store puts to one local directory with
//! the same number in flight.
//!
//! `cargo bench --bench e2e -- --writers 64 --size 256 --mode async --targets 3 --entries 20000`
//! (those are the defaults). `WALSHIP_BENCH_SCALE` scales `--entries`.
//! `WALSHIP_E2E_TARGETS_DIR=/dev/shm` puts the target directories (walship's
//! and the raw baselines') there, to see walship's cost apart from the
//! disk; the log stays in the default temp dir.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::raw_sled;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use walship::key::Key;
use walship::{Config, Mode, Replicator};

/// Requests in flight per target (the shipper's window).
const IN_FLIGHT: usize = 32;

struct Args {
    writers: usize,
    size: usize,
    mode: String,
    targets: usize,
    entries: usize,
}

fn args() -> Args {
    let mut a = Args {
        writers: 64,
        size: 256,
        mode: "async".into(),
        targets: 3,
        entries: 20_000,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        let num = || {
            val.parse::<usize>()
                .unwrap_or_else(|_| panic!("{} needs a number, not {val:?}", argv[i]))
        };
        match argv[i].as_str() {
            "--writers" => a.writers = num(),
            "--size" => a.size = num(),
            "--targets" => a.targets = num().max(1),
            "--entries" => a.entries = num(),
            "--mode" => a.mode = val.clone(),
            // cargo bench passes --bench; anything else is a mistake.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!(
                "unknown argument {other:?}; use --writers N --size BYTES --mode sync|semi_sync|async --targets N --entries N"
            ),
        }
        i += 2;
    }
    a.entries = ((a.entries as f64 * common::scale()) as usize).max(a.writers);
    a
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Run {
    took: Duration,
    all_applied: Duration,
    acks: Vec<Duration>,
    lags: Vec<Duration>,
    group: f64,
}

/// Where target directories go (see the module doc).
fn targets_root() -> tempfile::TempDir {
    match std::env::var("WALSHIP_E2E_TARGETS_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).expect("tempdir in WALSHIP_E2E_TARGETS_DIR"),
        Err(_) => tempfile::tempdir().expect("tempdir"),
    }
}

async fn walship_run(a: &Args) -> Run {
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = targets_root();
    let mut cfg = format!(
        "data_dir = {:?}\n[replication]\nmode = \"{}\"\nmin_sync_replicas = 1\n",
        tmp.path().join("data").display().to_string(),
        a.mode
    );
    for t in 0..a.targets {
        let table = if t == 0 { "[primary]" } else { "[[targets]]" };
        let url = walship::config::file_url(&targets.path().join(format!("t{t}")));
        cfg.push_str(&format!(
            "{table}\nname = \"t{t}\"\nurl = \"{url}\"\nsync_timeout_seconds = 30\n"
        ));
    }
    let cfg = Config::from_toml(&cfg).expect("config");
    let mode: Mode = a.mode.parse().expect("mode");
    let rep = Replicator::open(cfg).await.expect("open");
    let value = Bytes::from(vec![7u8; a.size]);
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Watches the lowest cursor and dates when each acked seq reached it.
    let observer = {
        let rep = rep.clone();
        let acked = acked.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut last_min = 0u64;
            let mut marks: Vec<(u64, Instant)> = Vec::new();
            loop {
                let c = rep.cursors().expect("cursors");
                let min = c.targets.iter().map(|t| t.cursor).min().unwrap_or(0);
                if min > last_min {
                    marks.push((min, Instant::now()));
                    last_min = min;
                }
                if done.load(std::sync::atomic::Ordering::Acquire) && min >= c.head {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let acked = acked.lock().expect("lock").clone();
            let mut lags = Vec::with_capacity(acked.len());
            for (seq, at) in acked {
                let i = marks.partition_point(|(m, _)| *m < seq);
                let when = marks.get(i).map(|(_, t)| *t).unwrap_or_else(Instant::now);
                lags.push(when.saturating_duration_since(at));
            }
            lags
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let rep = rep.clone();
        let value = value.clone();
        let acked = acked.clone();
        let n = a.entries;
        let writers = a.writers;
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in (w..n).step_by(writers) {
                let key = Key::parse(&format!("k/{i}")).expect("key");
                let t = Instant::now();
                let ack = rep.put(&key, value.clone(), Some(mode)).await.expect("put");
                let at = Instant::now();
                acks.push(at - t);
                acked.lock().expect("lock").push((ack.seq, at));
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.expect("writer"));
    }
    let took = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut lags = observer.await.expect("observer");
    let all_applied = start.elapsed();
    let stats = rep.log().stats();
    let flushes = stats
        .flushes
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    let group = stats.entries.load(std::sync::atomic::Ordering::Relaxed) as f64 / flushes as f64;
    rep.shutdown(Duration::ZERO).await.expect("shutdown");
    acks.sort_unstable();
    lags.sort_unstable();
    Run {
        took,
        all_applied,
        acks,
        lags,
        group,
    }
}

/// Raw object_store: `n` puts of `size` B to each of `dirs` local
/// directories (fsync on), `IN_FLIGHT` at a time per directory.
async fn raw_puts(n: usize, size: usize, dirs: usize) -> Duration {
    let tmp = targets_root();
    let t = Instant::now();
    let jobs = (0..dirs).map(|d| {
        let dir = tmp.path().join(format!("d{d}"));
        async move {
            std::fs::create_dir_all(&dir).expect("dir");
            raw_puts_one(n, size, &dir).await
        }
    });
    futures::future::join_all(jobs).await;
    t.elapsed()
}

async fn raw_puts_one(n: usize, size: usize, dir: &std::path::Path) {
    let store: Arc<dyn ObjectStore> = Arc::new(
        LocalFileSystem::new_with_prefix(dir)
            .expect("fs")
            .with_fsync(true),
    );
    let value = Bytes::from(vec![7u8; size]);
    futures::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            let value = value.clone();
            async move {
                store
                    .put(&format!("k/{i}").into(), PutPayload::from_bytes(value))
                    .await
                    .expect("put")
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|_| async {})
        .await;
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let run = rt.block_on(walship_run(&a));
    let n = a.entries;
    let sled_t = raw_sled(n, a.size, run.group.round() as usize);
    let puts_t = rt.block_on(raw_puts(n, a.size, 1));
    let puts_all_t = rt.block_on(raw_puts(n, a.size, a.targets));
    let per_s = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "end to end: {} writers, {} B, mode {}, {} local-dir targets (fsync), {} entries",
        a.writers, a.size, a.mode, a.targets, n
    );
    println!(
        "  writes/s {:>10.0}   ack ms p50 {:.2} p99 {:.2} p999 {:.2}   group {:.1} entries/flush",
        per_s(run.took),
        pct(&run.acks, 0.5),
        pct(&run.acks, 0.99),
        pct(&run.acks, 0.999),
        run.group
    );
    println!(
        "  lag ack→all applied ms p50 {:.1} p99 {:.1} p999 {:.1}   all applied after {:.2}s",
        pct(&run.lags, 0.5),
        pct(&run.lags, 0.99),
        pct(&run.lags, 0.999),
        run.all_applied.as_secs_f64()
    );
    println!(
        "  raw sled, {:.0} per flush: {:>10.0}/s   walship writes/raw {:.2} (every write also waits for the acting primary; `--bench append` compares the log alone)",
        run.group.round(),
        per_s(sled_t),
        per_s(run.took) / per_s(sled_t)
    );
    println!(
        "  raw puts, one dir, {IN_FLIGHT} in flight: {:>8.0}/s   walship applied per target/raw {:.2}",
        per_s(puts_t),
        per_s(run.all_applied) / per_s(puts_t)
    );
    println!(
        "  raw puts, {} dirs at once, {IN_FLIGHT} in flight each: {:>8.0}/s per dir   walship/raw {:.2}",
        a.targets,
        per_s(puts_all_t),
        per_s(run.all_applied) / per_s(puts_all_t)
    );
}
