//! The sidecar's resident size under sustained writes (issue "within 0.8
//! of the raw durable floor": under 100 MiB, or say what holds it).
//!
//! `cargo bench --bench rss -- --rounds 3 --writes 60000 --writers 16`
//! (the defaults; `WALSHIP_BENCH_SCALE` scales the writes). Each round
//! starts the real `walship serve` twice, in an order that alternates by
//! round: as shipped (its allocator trimmed every second) and with
//! `WALSHIP_MALLOC_TRIM=0` (the baseline: glibc keeps what was freed).
//! Each gets a fresh data dir, `async`, a primary and two replicas as local
//! directories, and takes the writes (1.4 KB values, distinct keys) from
//! concurrent reqwest clients over HTTP. The bench reads the child's
//! `VmRSS` every 250 ms: the peak while writing, and the size 6 s after the
//! last write was acknowledged (once shipping is done and a trim had its
//! turn). The last lines give the medians and the ratios per round.
//! `WALSHIP_RSS_CACHE=BYTES` sets the sidecars' `log_cache_bytes`,
//! `WALSHIP_RSS_ONLY=trim` (or `no trim`) runs one side, and
//! `WALSHIP_BENCH_VERBOSE=1` prints the size every 5 s.

mod common;

use common::{arg, median, scale};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The sidecar this bench started: stopped (SIGTERM, by its pid) when
/// dropped, also when the bench panics, so it never outlives the bench.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the child this bench started, by its pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn start(root: &Path, trim: bool) -> (Started, String) {
    let port = free_port();
    // WALSHIP_RSS_CACHE=BYTES: the sidecars' log_cache_bytes (default 32 MiB).
    let cache = std::env::var("WALSHIP_RSS_CACHE")
        .map(|b| format!("log_cache_bytes = {b}\n"))
        .unwrap_or_default();
    let url = |n: &str| walship::config::file_url(&root.join("targets").join(n));
    let cfg = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\n\
         {cache}[replication]\nmode = \"async\"\n\
         [primary]\nname = \"primary\"\nurl = \"{}\"\n\
         [[targets]]\nname = \"replica-1\"\nurl = \"{}\"\n\
         [[targets]]\nname = \"replica-2\"\nurl = \"{}\"\n",
        root.join("data").display().to_string(),
        url("primary"),
        url("replica-1"),
        url("replica-2"),
    );
    std::fs::create_dir_all(root).expect("root");
    let path = root.join("walship.toml");
    std::fs::write(&path, cfg).expect("config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walship"));
    cmd.args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if !trim {
        cmd.env("WALSHIP_MALLOC_TRIM", "0");
    }
    let child = cmd.spawn().expect("start walship serve");
    (Started(child), format!("http://127.0.0.1:{port}"))
}

struct Run {
    per_sec: f64,
    peak_mib: f64,
    after_mib: f64,
}

async fn run(root: &Path, trim: bool, writes: usize, writers: usize) -> Run {
    let (child, base) = start(root, trim);
    let pid = child.0.id();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let mut up = false;
    for _ in 0..200 {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "walship serve did not answer /healthz in 10 s");
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            // WALSHIP_BENCH_VERBOSE=1: the size every 5 s as well.
            let verbose = std::env::var_os("WALSHIP_BENCH_VERBOSE").is_some();
            let t = Instant::now();
            let mut said = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                    if verbose && t.elapsed().as_secs() >= said {
                        println!("  {said:>4} s  {:.1} MiB", kib as f64 / 1024.0);
                        said += 5;
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let value = bytes::Bytes::from(vec![b'v'; 1400]);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (client, next, value, base) =
            (client.clone(), next.clone(), value.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= writes {
                    return;
                }
                let r = client
                    .put(format!("{base}/v1/objects/rss/{i}"))
                    .body(value.clone())
                    .send()
                    .await
                    .expect("put");
                assert!(r.status().is_success(), "put: {}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let per_sec = writes as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let after = rss_kib(pid).unwrap_or(0);
    drop(child);
    Run {
        per_sec,
        peak_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        after_mib: after as f64 / 1024.0,
    }
}

#[tokio::main]
async fn main() {
    let rounds = arg("--rounds", 3);
    let writes = (arg("--writes", 60_000) as f64 * scale()) as usize;
    let writers = arg("--writers", 16);
    let tmp = tempfile::tempdir().expect("tempdir");
    println!(
        "sidecar RSS under {writes} async writes of 1.4 KB from {writers} HTTP clients (primary + 2 local-directory replicas)"
    );
    println!(
        "{:>5} {:>9} {:>10} {:>10} {:>12}",
        "round", "side", "writes/s", "peak MiB", "after MiB"
    );
    let (mut peak_ratio, mut after_ratio, mut speed_ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut peaks, mut afters) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut got = [None, None];
        for trim in order {
            let side = if trim { "trim" } else { "no trim" };
            // WALSHIP_RSS_ONLY=trim|no trim: one side only (no ratios).
            if std::env::var("WALSHIP_RSS_ONLY").is_ok_and(|only| only != side) {
                continue;
            }
            let r = run(
                &tmp.path().join(format!("r{round}-{side}")),
                trim,
                writes,
                writers,
            )
            .await;
            println!(
                "{round:>5} {side:>9} {:>10.0} {:>10.1} {:>12.1}",
                r.per_sec, r.peak_mib, r.after_mib
            );
            got[usize::from(!trim)] = Some(r);
        }
        let [Some(t), Some(n)] = got else {
            unreachable!()
        };
        peak_ratio.push(t.peak_mib / n.peak_mib);
        after_ratio.push(t.after_mib / n.after_mib);
        speed_ratio.push(t.per_sec / n.per_sec);
        peaks[0].push(t.peak_mib);
        peaks[1].push(n.peak_mib);
        afters[0].push(t.after_mib);
        afters[1].push(n.after_mib);
    }
    if peak_ratio.is_empty() {
        return; // one side only: its rounds are above
    }
    let [pt, pn] = peaks;
    let [at, an] = afters;
    println!(
        "medians: peak {:.0} MiB (trim) vs {:.0} (no trim), after {:.0} vs {:.0}; trim / no trim: peak {:.2}, after {:.2}, writes/s {:.2}",
        median(pt),
        median(pn),
        median(at),
        median(an),
        median(peak_ratio),
        median(after_ratio),
        median(speed_ratio)
    );
}
