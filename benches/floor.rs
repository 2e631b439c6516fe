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
//! Rounds alternate the sides' order; the table gives writes/s and ack p50
//! per side and round, and the median ratio per mode and writers.

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
    done: tokio::sync::oneshot::Sender<()>,
}

/// A group-committed log file: one write and one fdatasync per group.
fn committer(path: PathBuf, rx: std::sync::mpsc::Receiver<Group>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("log file");
    let mut buf = Vec::new();
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
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        for g in group {
            let _ = g.done.send(());
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
    rx.await.expect("committed");
    let mut puts = Vec::new();
    for (i, d) in f.dirs.iter().enumerate() {
        let (d, key, body) = (d.clone(), key.clone(), body.clone());
        let h = tokio::task::spawn_blocking(move || durable_put(&d, &key, &body));
        if f.sync || i == 0 {
            puts.push(h);
        }
    }
    for p in puts {
        p.await.expect("put");
    }
    "ok"
}

async fn serve_floor(root: &Path, sync: bool) -> String {
    let dirs: Vec<PathBuf> = ["p", "r1", "r2"].iter().map(|n| root.join(n)).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).expect("dir");
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    let log = root.join("log");
    std::thread::spawn(move || committer(log, rx));
    let app = axum::Router::new()
        .route("/v1/objects/{*key}", axum::routing::put(floor_put))
        .with_state(Floor {
            log: tx,
            dirs: Arc::new(dirs),
            sync,
        });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
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
    let tmp = tempfile::tempdir().expect("tempdir");
    println!(
        "walship against the raw durable floor over HTTP: primary + 2 replicas on local directories (fsync), {size}-byte values"
    );
    println!(
        "{:>9} {:>7} {:>5} {:>8} {:>10} {:>8} {:>10} {:>8}",
        "mode", "writers", "round", "side", "writes/s", "p50 ms", "commit µs", "per group"
    );
    let mut table = Vec::new();
    for mode in ["sync", "async"] {
        // Fresh servers per mode; every phase writes new keys, nothing is
        // removed before the end (see benches/e2e.rs on deleted inodes).
        let root = tmp.path().join(mode);
        let (wbase, rep) = serve_walship(&root.join("walship"), mode).await;
        let fbase = serve_floor(&root.join("floor"), mode == "sync").await;
        for writers in [1usize, 16] {
            let n = if writers == 1 { 1000 } else { 4000 };
            let mut ratios = Vec::new();
            for round in 0..rounds {
                let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                let mut got = [0.0f64; 2];
                for side in order {
                    // `WALSHIP_FLOOR_ONLY=sync:16:walship` runs one side of
                    // one row (for a profiler).
                    let name = if side == 0 { "walship" } else { "floor" };
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
                    let r = if side == 0 {
                        write_all(&wbase, &tag, writers, n, value.clone()).await
                    } else {
                        write_all(&fbase, &tag, writers, n, value.clone()).await
                    };
                    // walship's committer: time per group and writes per group.
                    let groups = (stats.flushes.load(Ordering::Relaxed) - before.0).max(1);
                    let commit = if side == 0 {
                        format!(
                            "{:>10.0} {:>8.1}",
                            (stats.flush_us.load(Ordering::Relaxed) - before.1) as f64
                                / groups as f64,
                            (stats.entries.load(Ordering::Relaxed) - before.2) as f64
                                / groups as f64
                        )
                    } else {
                        String::new()
                    };
                    println!(
                        "{mode:>9} {writers:>7} {round:>5} {name:>8} {:>10.0} {:>8.2} {commit}",
                        r.per_sec, r.p50_ms
                    );
                    got[side] = r.per_sec;
                }
                if got[1] > 0.0 {
                    ratios.push(got[0] / got[1]);
                }
            }
            if !ratios.is_empty() {
                table.push((mode, writers, median(ratios)));
            }
        }
        rep.shutdown(Duration::from_secs(5))
            .await
            .expect("shutdown");
    }
    println!("\n| mode | writers | walship / floor |\n| --- | --- | --- |");
    for (mode, writers, r) in table {
        println!("| {mode} | {writers} | {r:.2} |");
    }
}
