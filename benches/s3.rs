//! The S3 front door's cost: PUT throughput and latency through the S3 API
//! against walship's own HTTP API, on the same sidecar and targets, in the
//! same run.
//!
//! `cargo bench --bench s3 -- --rounds 5 --entries 1500 --size 1400`
//! (the defaults) runs one in-process sidecar (a local-directory primary
//! and two local-directory replicas, `sync`, so every PUT waits for all
//! three) serving both APIs on loopback. For 1 and 16 clients, each round
//! writes `entries` distinct keys through the HTTP API (reqwest) and through
//! the S3 API (object_store's S3 client: SigV4 with a signed payload, as
//! boto3 sends over http), in an order that alternates by round. It prints
//! writes/s and p50/p99 latency per side and round, and the median of the
//! rounds' S3 / HTTP throughput and p50 latency ratios (the p50 is steadier
//! than throughput on a shared machine: one stall moves a round's writes/s).

mod common;

use common::{arg, median};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use walship::{Config, Replicator};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Run {
    per_sec: f64,
    p50: f64,
    p99: f64,
}

async fn run<F, Fut>(clients: usize, entries: usize, put: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let put = Arc::new(put);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (put, next) = (put.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= entries {
                    return lat;
                }
                let t = Instant::now();
                put(i).await;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    Run {
        per_sec: entries as f64 / secs,
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
    }
}

#[tokio::main]
async fn main() {
    let rounds = arg("--rounds", 5);
    let entries = arg("--entries", 1500);
    let size = arg("--size", 1400);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("secret"), "bench-secret").expect("secret");
    let text = format!(
        "data_dir = {:?}\nshutdown_grace_seconds = 1\n[replication]\nmode = \"sync\"\n\
         [primary]\nname = \"p\"\nurl = {:?}\n\
         [[targets]]\nname = \"r1\"\nurl = {:?}\n[[targets]]\nname = \"r2\"\nurl = {:?}\n\
         [s3]\nlisten = \"127.0.0.1:0\"\nsecret_access_key_file = {:?}\n\
         [[s3.buckets]]\nname = \"bench\"\nprefix = \"\"\n",
        d.join("data"),
        walship::config::file_url(&d.join("p")),
        walship::config::file_url(&d.join("r1")),
        walship::config::file_url(&d.join("r2")),
        d.join("secret"),
    );
    let cfg = Config::from_toml(&text).expect("config");
    let s3cfg = cfg.s3.clone().expect("s3");
    let rep = Replicator::open(cfg).await.expect("open");
    let stop = tokio_util::sync::CancellationToken::new();

    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http_addr = http.local_addr().expect("addr");
    let app = walship::server::router(rep.clone(), None);
    tokio::spawn(async move { axum::serve(http, app).await });

    let s3 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let s3_addr = s3.local_addr().expect("addr");
    let svc = walship::s3::service(rep.clone(), &s3cfg, stop.clone()).expect("s3 service");
    let app = walship::s3::router(svc, rep.clone());
    tokio::spawn(async move { axum::serve(s3, app).await });

    let client = reqwest::Client::new();
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(format!("http://{s3_addr}"))
            .with_allow_http(true)
            .with_bucket_name("bench")
            .with_region("us-east-1")
            .with_access_key_id("walship")
            .with_secret_access_key("bench-secret")
            .build()
            .expect("s3 client"),
    );
    let value = Bytes::from(vec![b'v'; size]);

    println!(
        "S3 API against the HTTP API: sync, primary + 2 replicas on local directories, {size}-byte values, {entries} writes per side per round"
    );
    println!(
        "{:>7} {:>5} {:>6} {:>10} {:>8} {:>8}",
        "clients", "round", "api", "writes/s", "p50 ms", "p99 ms"
    );
    let mut summary = Vec::new();
    for clients in [1usize, 16] {
        let mut ratios = Vec::new();
        let mut p50s = Vec::new();
        for round in 0..rounds {
            let mut pair = [None, None];
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let tag = format!("c{clients}r{round}s{side}");
                let r = if side == 0 {
                    let (client, value, tag) = (client.clone(), value.clone(), tag.clone());
                    run(clients, entries, move |i| {
                        let (client, value) = (client.clone(), value.clone());
                        let url = format!("http://{http_addr}/v1/objects/{tag}/{i}");
                        async move {
                            let r = client.put(url).body(value).send().await.expect("http put");
                            assert!(r.status().is_success(), "http put: {}", r.status());
                        }
                    })
                    .await
                } else {
                    let (store, value, tag) = (store.clone(), value.clone(), tag.clone());
                    run(clients, entries, move |i| {
                        let (store, value) = (store.clone(), value.clone());
                        let path = ObjPath::from(format!("{tag}/{i}"));
                        async move {
                            store.put(&path, value.into()).await.expect("s3 put");
                        }
                    })
                    .await
                };
                println!(
                    "{clients:>7} {round:>5} {:>6} {:>10.0} {:>8.2} {:>8.2}",
                    if side == 0 { "http" } else { "s3" },
                    r.per_sec,
                    r.p50,
                    r.p99
                );
                pair[side] = Some(r);
            }
            if let [Some(h), Some(s)] = &pair {
                ratios.push(s.per_sec / h.per_sec);
                p50s.push(s.p50 / h.p50);
            }
        }
        summary.push((clients, median(ratios), median(p50s)));
    }
    for (clients, r, p) in summary {
        println!(
            "{clients:>2} client(s): median S3 / HTTP writes/s {r:.2} (front door cost {:.0}%), median S3 / HTTP p50 latency {p:.2}",
            (1.0 - r) * 100.0
        );
    }
    stop.cancel();
    rep.shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
}
