//! Async shipping throughput: a backlog of N entries (256 B, distinct keys)
//! shipped to two targets, against raw object_store puts of the same objects
//! to two stores of the same kind with the same concurrency, in one run.
//!
//! `cargo bench --bench ship` prints a table. WALSHIP_BENCH_SCALE scales N.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::scale;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use walship::key::Key;
use walship::log::{Log, Write};
use walship::storage::SledStorage;
use walship::{Config, Replicator};

const VALUE: usize = 256;
const WINDOW: usize = 32;

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Dir,
}

fn store(kind: Kind, dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    match kind {
        Kind::Memory => Arc::new(InMemory::new()),
        Kind::Dir => {
            std::fs::create_dir_all(dir).expect("dir");
            Arc::new(
                LocalFileSystem::new_with_prefix(dir)
                    .expect("fs")
                    .with_fsync(true),
            )
        }
    }
}

async fn raw(kind: Kind, n: usize) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stores = [
        store(kind, &tmp.path().join("a")),
        store(kind, &tmp.path().join("b")),
    ];
    let value = Bytes::from(vec![7u8; VALUE]);
    let t = Instant::now();
    let jobs = stores.iter().map(|s| {
        let s = s.clone();
        let value = value.clone();
        async move {
            futures::stream::iter(0..n)
                .map(|i| {
                    let s = s.clone();
                    let value = value.clone();
                    async move {
                        s.put(&format!("k/{i}").into(), PutPayload::from_bytes(value))
                            .await
                            .expect("put")
                    }
                })
                .buffer_unordered(WINDOW)
                .for_each(|_| async {})
                .await
        }
    });
    futures::future::join_all(jobs).await;
    t.elapsed()
}

async fn shipped(kind: Kind, n: usize) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    {
        let log =
            Log::open(Arc::new(SledStorage::open(&data, 64 << 20).expect("open"))).expect("log");
        let value = Bytes::from(vec![7u8; VALUE]);
        let mut tasks = Vec::new();
        for w in 0..16 {
            let log = log.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(16) {
                    let key = Key::parse(&format!("k/{i}")).expect("key");
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
    let cfg = Config::from_toml(&format!(
        "data_dir = {:?}\n[primary]\nname = \"a\"\nurl = \"memory://\"\n[[targets]]\nname = \"b\"\nurl = \"memory://\"\n",
        data.display().to_string()
    ))
    .expect("config");
    let mut stores: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
    stores.insert("a".into(), store(kind, &tmp.path().join("a")));
    stores.insert("b".into(), store(kind, &tmp.path().join("b")));
    let t = Instant::now();
    let rep = Replicator::open_with_stores(cfg, stores)
        .await
        .expect("open");
    loop {
        let r = rep.log().head();
        let c = rep.cursors().expect("cursors");
        if c.targets.iter().all(|t| t.cursor == r) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    rep.shutdown(Duration::ZERO).await.expect("shutdown");
    took
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "async shipping to 2 targets, {VALUE} B, distinct keys, {WINDOW} in flight per target (median of 3)"
    );
    println!(
        "{:>10} {:>9} {:>14} {:>14} {:>7}",
        "store", "entries", "walship obj/s", "raw obj/s", "ratio"
    );
    for (name, kind, base_n) in [
        ("memory", Kind::Memory, 100_000usize),
        ("local dir", Kind::Dir, 10_000),
    ] {
        let n = ((base_n as f64 * scale()) as usize).max(100);
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for _ in 0..3 {
            ours.push(2.0 * n as f64 / rt.block_on(shipped(kind, n)).as_secs_f64());
            base.push(2.0 * n as f64 / rt.block_on(raw(kind, n)).as_secs_f64());
        }
        ours.sort_by(f64::total_cmp);
        base.sort_by(f64::total_cmp);
        let (o, r) = (ours[1], base[1]);
        println!("{name:>10} {n:>9} {o:>14.0} {r:>14.0} {:>7.2}", o / r);
    }
}
