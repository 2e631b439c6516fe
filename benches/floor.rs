//! walship against the raw durable floor of the same work, both over HTTP
//! as a user's client writes (issue "within 0.8 of the raw durable floor").
//!
//! `cargo bench --bench floor -- --rounds 3 --size 1400` (the defaults).
//! Each side is an HTTP server on loopback in this process, written to by
//! reqwest clients (1 and 16), one distinct key per write:
//! - walship: the sidecar's own router over a Replicator with a primary and
//!   two replicas in local directories (fsync on);
//! - the floor: a PUT handler that appends the value to one log file with
//!   group commit (one `write` and one `fdatasync` per group, like
//!   walship's committer, no sled), then writes the value to each target
//!   directory as a staged file, `fsync`, `rename`, directory `fsync` (what
//!   a durable local put is); in `sync` it answers after all three, in
//!   `async` after the primary's (the replicas' puts still run, unawaited).
//!
//! - the floor in order: the same, but a write is answered only once every
//!   earlier write has landed in each directory it waits for (a cursor's
//!   promise: what walship acknowledges is a prefix of the log). Its ratio
//!   says what answering in log order costs by itself.
//!
//! Rounds rotate the sides' order; the table gives writes/s, ack p50 and
//! the CPU time the process spent per write (user and system; the clients
//! run in this process too, the same for every side), and for walship and
//! the floor their committer's time and writes per group; then the median
//! ratios per mode and writers. With both sides on one machine's two cores
//! busy, CPU per write is what sets throughput at 16 writers: the last
//! column's ratio follows the first.
//!
//! `WALSHIP_FLOOR_DIR=/dev/shm` runs both on tmpfs (what each costs
//! beyond the file system); `WALSHIP_FLOOR_KEEP=1` leaves the files.

mod common;

use common::{arg, median};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use walship::{Config, Replicator};

// ---- the floor ----

struct Group {
    value: Bytes,
    /// Answered with the write's seq once it is durable.
    done: tokio::sync::oneshot::Sender<u64>,
}

/// Which seqs have landed in one directory: the prefix all landed
/// (published), and those landed beyond it.
struct Landed {
    beyond: std::sync::Mutex<(u64, std::collections::BTreeSet<u64>)>,
    prefix: tokio::sync::watch::Sender<u64>,
}

impl Landed {
    fn new() -> Landed {
        Landed {
            beyond: std::sync::Mutex::new((0, Default::default())),
            prefix: tokio::sync::watch::channel(0).0,
        }
    }

    fn land(&self, seq: u64) {
        let mut g = self.beyond.lock().expect("landed");
        let (prefix, beyond) = &mut *g;
        beyond.insert(seq);
        let before = *prefix;
        while beyond.remove(&(*prefix + 1)) {
            *prefix += 1;
        }
        if *prefix != before {
            self.prefix.send_replace(*prefix);
        }
    }

    async fn wait(&self, seq: u64) {
        let mut rx = self.prefix.subscribe();
        let _ = rx.wait_for(|p| *p >= seq).await;
    }
}

/// The floor's committer: groups, writes and µs spent writing and syncing.
#[derive(Default)]
struct FloorStats {
    groups: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    us: std::sync::atomic::AtomicU64,
}

/// A group-committed log file: one write and one fdatasync per group.
fn committer(path: PathBuf, rx: std::sync::mpsc::Receiver<Group>, stats: Arc<FloorStats>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("log file");
    let mut buf = Vec::new();
    let mut seq = 0u64;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(g) = rx.try_recv() {
            group.push(g);
        }
        buf.clear();
        for g in &group {
            buf.extend_from_slice(&(g.value.len() as u32).to_le_bytes());
            buf.extend_from_slice(&g.value);
            buf.extend_from_slice(&crc32fast::hash(&g.value).to_le_bytes());
        }
        let started = Instant::now();
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        stats
            .us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        for g in group {
            seq += 1;
            let _ = g.done.send(seq);
        }
    }
}

/// A durable put to a local directory: staged file, fsync, rename,
/// directory fsync.
fn durable_put(dir: &Path, key: &str, value: &[u8]) {
    let dest = dir.join(key);
    let parent = dest.parent().expect("parent");
    std::fs::create_dir_all(parent).expect("mkdir");
    let tmp = parent.join(format!(".{}.tmp", rand::random::<u64>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .expect("stage");
    f.write_all(value).expect("write");
    f.sync_all().expect("fsync");
    std::fs::rename(&tmp, &dest).expect("rename");
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .expect("dir fsync");
}

#[derive(Clone)]
struct Floor {
    log: std::sync::mpsc::SyncSender<Group>,
    dirs: Arc<Vec<PathBuf>>,
    sync: bool,
    /// Per directory, when writes are answered in log order.
    ordered: Option<Arc<Vec<Landed>>>,
}

async fn floor_put(
    axum::extract::State(f): axum::extract::State<Floor>,
    axum::extract::Path(key): axum::extract::Path<String>,
    body: Bytes,
) -> &'static str {
    let (done, rx) = tokio::sync::oneshot::channel();
    f.log
        .send(Group {
            value: body.clone(),
            done,
        })
        .expect("committer");
    let seq = rx.await.expect("committed");
    let mut puts = Vec::new();
    for (i, d) in f.dirs.iter().enumerate() {
        let (d, key, body) = (d.clone(), key.clone(), body.clone());
        let ordered = f.ordered.clone();
        let h = tokio::task::spawn_blocking(move || {
            durable_put(&d, &key, &body);
            if let Some(o) = ordered {
                o[i].land(seq);
            }
        });
        if f.sync || i == 0 {
            puts.push(h);
        }
    }
    for p in puts {
        p.await.expect("put");
    }
    if let Some(o) = &f.ordered {
        let waited = if f.sync { o.len() } else { 1 };
        for landed in &o[..waited] {
            landed.wait(seq).await;
        }
    }
    "ok"
}

async fn serve_floor(root: &Path, sync: bool, in_order: bool) -> (String, Arc<FloorStats>) {
    let dirs: Vec<PathBuf> = ["p", "r1", "r2"].iter().map(|n| root.join(n)).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).expect("dir");
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    let log = root.join("log");
    let stats = Arc::new(FloorStats::default());
    let s = stats.clone();
    std::thread::spawn(move || committer(log, rx, s));
    let app = axum::Router::new()
        .route("/v1/objects/{*key}", axum::routing::put(floor_put))
        .with_state(Floor {
            log: tx,
            ordered: in_order.then(|| Arc::new(dirs.iter().map(|_| Landed::new()).collect())),
            dirs: Arc::new(dirs),
            sync,
        });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), stats)
}

// ---- walship ----

async fn serve_walship(root: &Path, mode: &str) -> (String, Arc<Replicator>) {
    let url = |n: &str| walship::config::file_url(&root.join(n));
    let text = format!(
        "data_dir = {:?}\nshutdown_grace_seconds = 1\n[replication]\nmode = \"{mode}\"\n\
         [primary]\nname = \"p\"\nurl = {:?}\n\
         [[targets]]\nname = \"r1\"\nurl = {:?}\n[[targets]]\nname = \"r2\"\nurl = {:?}\n",
        root.join("data"),
        url("p"),
        url("r1"),
        url("r2"),
    );
    let rep = Replicator::open(Config::from_toml(&text).expect("config"))
        .await
        .expect("open");
    let app = walship::server::router(rep.clone(), None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), rep)
}

// ---- clients ----

/// CPU seconds (user, system) this process has used so far, every thread.
fn cpu_used() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

struct Run {
    per_sec: f64,
    p50_ms: f64,
}

async fn write_all(base: &str, tag: &str, writers: usize, n: usize, value: Bytes) -> Run {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (client, next, value) = (client.clone(), next.clone(), value.clone());
        let base = format!("{base}/v1/objects/{tag}");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return lat;
                }
                let t = Instant::now();
                let r = client
                    .put(format!("{base}/{i}"))
                    .body(value.clone())
                    .send()
                    .await
                    .expect("put");
                assert!(r.status().is_success(), "put: {}", r.status());
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    Run {
        per_sec: n as f64 / secs,
        p50_ms: lat[lat.len() / 2].as_secs_f64() * 1000.0,
    }
}

#[tokio::main]
async fn main() {
    let rounds = arg("--rounds", 3);
    let size = arg("--size", 1400);
    let value = Bytes::from(vec![b'v'; size]);
    // `WALSHIP_FLOOR_DIR=/dev/shm` runs both sides on tmpfs (what each
    // costs beyond the file system); `WALSHIP_FLOOR_KEEP=1` leaves the
    // files, so that the next run does not start right after their
    // removal (ext4 without a journal skips inodes freed in the last
    // minute when it allocates one, a cost that falls on whoever creates
    // files next: see benches/e2e.rs).
    let tmp = match std::env::var_os("WALSHIP_FLOOR_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    println!(
        "walship against the raw durable floor over HTTP: primary + 2 replicas on local directories (fsync), {size}-byte values"
    );
    println!(
        "{:>9} {:>7} {:>5} {:>8} {:>10} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "mode",
        "writers",
        "round",
        "side",
        "writes/s",
        "p50 ms",
        "cpu µs/w",
        "user µs/w",
        "commit µs",
        "per group"
    );
    let mut table = Vec::new();
    for mode in ["sync", "async"] {
        // Fresh servers per mode; every phase writes new keys, nothing is
        // removed before the end (see benches/e2e.rs on deleted inodes).
        let root = tmp.path().join(mode);
        let (wbase, rep) = serve_walship(&root.join("walship"), mode).await;
        let (fbase, fstats) = serve_floor(&root.join("floor"), mode == "sync", false).await;
        let (obase, ostats) = serve_floor(&root.join("floor-ordered"), mode == "sync", true).await;
        for writers in [1usize, 16] {
            let n = if writers == 1 { 1000 } else { 4000 };
            let mut ratios = Vec::new();
            let mut ordered_ratios = Vec::new();
            let mut cpu_ratios = Vec::new();
            for round in 0..rounds {
                let mut order = [0usize, 1, 2];
                order.rotate_left(round % 3);
                let mut got = [0.0f64; 3];
                let mut cpu = [0.0f64; 3];
                for side in order {
                    // `WALSHIP_FLOOR_ONLY=sync:16:walship` runs one side of
                    // one row (for a profiler).
                    let name = ["walship", "floor", "in order"][side];
                    if std::env::var("WALSHIP_FLOOR_ONLY")
                        .is_ok_and(|only| only != format!("{mode}:{writers}:{name}"))
                    {
                        continue;
                    }
                    let tag = format!("w{writers}r{round}");
                    let stats = rep.log().stats();
                    let before = (
                        stats.flushes.load(Ordering::Relaxed),
                        stats.flush_us.load(Ordering::Relaxed),
                        stats.entries.load(Ordering::Relaxed),
                    );
                    let floor_stats = [&fstats, &fstats, &ostats][side];
                    let floor_before = (
                        floor_stats.groups.load(Ordering::Relaxed),
                        floor_stats.us.load(Ordering::Relaxed),
                        floor_stats.writes.load(Ordering::Relaxed),
                    );
                    let base = [&wbase, &fbase, &obase][side];
                    let cpu_before = cpu_used();
                    let r = write_all(base, &tag, writers, n, value.clone()).await;
                    let cpu_after = cpu_used();
                    // What this side's committer did: time per group and
                    // writes per group.
                    let (groups, us, writes) = if side == 0 {
                        (
                            stats.flushes.load(Ordering::Relaxed) - before.0,
                            stats.flush_us.load(Ordering::Relaxed) - before.1,
                            stats.entries.load(Ordering::Relaxed) - before.2,
                        )
                    } else {
                        (
                            floor_stats.groups.load(Ordering::Relaxed) - floor_before.0,
                            floor_stats.us.load(Ordering::Relaxed) - floor_before.1,
                            floor_stats.writes.load(Ordering::Relaxed) - floor_before.2,
                        )
                    };
                    let per_write = |a: f64, b: f64| (b - a) * 1e6 / n as f64;
                    let user_us = per_write(cpu_before.0, cpu_after.0);
                    let cpu_us = user_us + per_write(cpu_before.1, cpu_after.1);
                    println!(
                        "{mode:>9} {writers:>7} {round:>5} {name:>8} {:>10.0} {:>8.2} {cpu_us:>10.0} {user_us:>10.0} {:>10.0} {:>8.1}",
                        r.per_sec,
                        r.p50_ms,
                        us as f64 / groups.max(1) as f64,
                        writes as f64 / groups.max(1) as f64
                    );
                    got[side] = r.per_sec;
                    cpu[side] = cpu_us;
                }
                if got[0] > 0.0 && got[1] > 0.0 {
                    ratios.push(got[0] / got[1]);
                }
                if got[0] > 0.0 && got[2] > 0.0 {
                    ordered_ratios.push(got[0] / got[2]);
                }
                if cpu[0] > 0.0 && cpu[1] > 0.0 {
                    cpu_ratios.push(cpu[1] / cpu[0]);
                }
            }
            if !ratios.is_empty() {
                let ordered = if ordered_ratios.is_empty() {
                    f64::NAN
                } else {
                    median(ordered_ratios)
                };
                table.push((mode, writers, median(ratios), ordered, median(cpu_ratios)));
            }
        }
        rep.shutdown(Duration::from_secs(5))
            .await
            .expect("shutdown");
    }
    println!(
        "\n| mode | writers | walship / floor | walship / floor in order | CPU per write floor / walship |\n| --- | --- | --- | --- | --- |"
    );
    for (mode, writers, r, o, c) in table {
        println!("| {mode} | {writers} | {r:.2} | {o:.2} | {c:.2} |");
    }
    if std::env::var_os("WALSHIP_FLOOR_KEEP").is_some() {
        println!("kept {}", tmp.keep().display());
    }
}
