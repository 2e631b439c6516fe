//! End to end through the library: W writers put N values of S bytes in
//! mode M to a primary and replicas in local directories (fsync on), and
//! the table shows writes/s, ack latency percentiles and the end-to-end lag
//! (ack → every target applied) percentiles, next to baselines measured in
//! the same run: raw sled (insert + flush + fdatasync) at the group size
//! walship reached, and raw object_store puts to one local directory with
//! the same number in flight (and to as many directories as targets at
//! once: the same disk work). Each of `--rounds` rounds runs walship and
//! both raw baselines in a rotating order; the last line gives the median
//! ratios. No phase's files are removed before the end (see `main`).
//!
//! `cargo bench --bench e2e -- --writers 64 --size 256 --mode async --targets 3 --entries 20000 --rounds 3`
//! (those are the defaults). `WALSHIP_BENCH_SCALE` scales `--entries`.
//! `WALSHIP_E2E_TARGETS_DIR=/dev/shm` puts the target directories (walship's
//! and the raw baselines') there, to see walship's cost apart from the
//! disk; the log stays in the default temp dir.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::{median, raw_sled};
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
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        writers: 64,
        size: 256,
        mode: "async".into(),
        targets: 3,
        entries: 20_000,
        rounds: 3,
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
            "--rounds" => a.rounds = num().max(1),
            "--mode" => a.mode = val.clone(),
            // cargo bench passes --bench; anything else is a mistake.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!(
                "unknown argument {other:?}; use --writers N --size BYTES --mode sync|semi_sync|async --targets N --entries N --rounds N"
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

async fn walship_run(a: &Args, root: &std::path::Path) -> Run {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Kept: see `main`.
    let targets = tempfile::tempdir_in(root)
        .expect("tempdir for targets")
        .keep();
    let mut cfg = format!(
        "data_dir = {:?}\n[replication]\nmode = \"{}\"\nmin_sync_replicas = 1\n",
        tmp.path().join("data").display().to_string(),
        a.mode
    );
    for t in 0..a.targets {
        let table = if t == 0 { "[primary]" } else { "[[targets]]" };
        let url = walship::config::file_url(&targets.join(format!("t{t}")));
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
async fn raw_puts(n: usize, size: usize, dirs: usize, root: &std::path::Path) -> Duration {
    let tmp = tempfile::tempdir_in(root).expect("tempdir for raw puts");
    // Kept: see `main`.
    let tmp = tmp.keep();
    let t = Instant::now();
    let jobs = (0..dirs).map(|d| {
        let dir = tmp.join(format!("d{d}"));
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

/// ext4 without a journal skips inodes deleted in the last 5 s (300 s
/// while their inode table block is still dirty) when it allocates one, and
/// each skip costs a lookup: right after an earlier run removed its files
/// every put here was slower. Writing everything back and waiting 6 s puts
/// every run on the same footing.
fn settle_deleted_inodes() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_secs(6));
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let n = a.entries;
    let per_s = |d: Duration| n as f64 / d.as_secs_f64();
    // Every phase's files stay until the end: ext4 without a journal (these
    // machines) scans past recently deleted inodes when it allocates one, so
    // a phase that ran right after another's files were removed paid for it.
    let root = targets_root();
    settle_deleted_inodes();
    println!(
        "end to end: {} writers, {} B, mode {}, {} local-dir targets (fsync), {} entries, {} rounds",
        a.writers, a.size, a.mode, a.targets, n, a.rounds
    );
    // The phases of a round run in a rotating order, so that neither side
    // always runs first (or last) on a machine whose load drifts.
    let (mut one, mut all, mut cpu_ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for r in 0..a.rounds {
        let (mut run, mut puts_t, mut puts_all_t) = (None, Duration::ZERO, Duration::ZERO);
        // CPU time of each phase (walship, raw one dir, raw all dirs).
        let mut cpu = [Duration::ZERO; 3];
        for phase in 0..3 {
            let which = (phase + r) % 3;
            let before = cpu_time();
            match which {
                0 => run = Some(rt.block_on(walship_run(&a, root.path()))),
                1 => puts_t = rt.block_on(raw_puts(n, a.size, 1, root.path())),
                _ => puts_all_t = rt.block_on(raw_puts(n, a.size, a.targets, root.path())),
            }
            cpu[which] = cpu_time().saturating_sub(before);
        }
        // Microseconds of CPU per object written to a target.
        let objects = |phase: usize| (n * if phase == 1 { 1 } else { a.targets }) as f64;
        let us = |phase: usize| cpu[phase].as_secs_f64() * 1e6 / objects(phase);
        cpu_ratio.push(us(2) / us(0));
        let run = run.expect("the walship phase ran");
        let applied = per_s(run.all_applied);
        one.push(applied / per_s(puts_t));
        all.push(applied / per_s(puts_all_t));
        println!(
            "round {}: walship {:>6.0} writes/s, every target applied {:>6.0}/s (ack ms p50 {:.2} p99 {:.2} p999 {:.2}; lag ack→all applied ms p50 {:.1} p99 {:.1} p999 {:.1}; group {:.1} entries/flush)",
            r + 1,
            per_s(run.took),
            applied,
            pct(&run.acks, 0.5),
            pct(&run.acks, 0.99),
            pct(&run.acks, 0.999),
            pct(&run.lags, 0.5),
            pct(&run.lags, 0.99),
            pct(&run.lags, 0.999),
            run.group
        );
        println!(
            "         raw puts {IN_FLIGHT} in flight: one dir {:>6.0}/s (walship/raw {:.2}), {} dirs at once {:>6.0}/s per dir (walship/raw {:.2})",
            per_s(puts_t),
            one[r],
            a.targets,
            per_s(puts_all_t),
            all[r]
        );
        println!(
            "         CPU µs per object written: walship {:.0} (log, shipping, conflict checks included), raw one dir {:.0}, raw {} dirs {:.0} (raw/walship {:.2})",
            us(0),
            us(1),
            a.targets,
            us(2),
            cpu_ratio[r]
        );
        last = Some(run);
    }
    let run = last.expect("at least one round");
    let sled_t = raw_sled(n, a.size, run.group.round() as usize);
    println!(
        "  raw sled, {:.0} per flush: {:>10.0}/s   walship writes/raw {:.2} (every write also waits for the acting primary; `--bench append` compares the log alone)",
        run.group.round(),
        per_s(sled_t),
        per_s(run.took) / per_s(sled_t)
    );
    println!(
        "  median walship applied per target / raw puts: one dir {:.2}, {} dirs at once {:.2}; CPU per object raw/walship {:.2}",
        median(one),
        a.targets,
        median(all),
        median(cpu_ratio)
    );
}
