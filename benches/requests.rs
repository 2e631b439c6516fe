//! Requests per write, per target store kind and mode: what the stores
//! will bill, counted by `walship_target_requests_total{target,op}`.
//!
//! `cargo bench --bench requests` starts moto and azurite (as the tests
//! do: `WALSHIP_MOTO_SERVER` / `WALSHIP_AZURITE_BLOB` or the PATH; a kind
//! whose emulator is missing is skipped), then, for a replica on a local
//! directory, S3 and Azure (the primary a local directory):
//! - steady state: 200 writes of distinct keys, one writer, in `sync` and
//!   in `async`, then (sync) 200 overwrites of 20 keys the target holds;
//! - catch-up: the replica paused while 1000 writes go to 100 distinct keys
//!   (10%), then resumed.
//!
//! and prints the replica's requests per write by op.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use walship::key::Key;
use walship::{Config, Replicator};

#[path = "../tests/common/emulators.rs"]
mod emulators;
#[path = "../tests/common/skip.rs"]
mod skip;

use emulators::{Emulator, Kind};

const OPS: [&str; 6] = ["put", "get", "head", "delete", "list", "copy"];

fn counts(rep: &Replicator, target: &str) -> BTreeMap<&'static str, f64> {
    let text = rep.metrics_text();
    OPS.iter()
        .map(|op| {
            let want = format!("walship_target_requests_total{{target=\"{target}\",op=\"{op}\"}} ");
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(want.as_str()))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            (*op, v)
        })
        .collect()
}

async fn caught_up(rep: &Replicator) {
    for _ in 0..3000 {
        let c = rep.cursors().expect("cursors");
        if c.targets.iter().all(|t| t.cursor == c.head) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("targets did not catch up");
}

fn config(dir: &std::path::Path, mode: &str, replica_url: &str, opts: &str) -> Config {
    let text = format!(
        "data_dir = {:?}\nshutdown_grace_seconds = 1\n[replication]\nmode = \"{mode}\"\n\
         [primary]\nname = \"p\"\nurl = {:?}\n\
         [[targets]]\nname = \"r\"\nurl = {replica_url:?}\nretry_delay_seconds = 0.05\n{opts}",
        dir.join("data").display().to_string(),
        walship::config::file_url(&dir.join("primary")),
    );
    Config::from_toml(&text).expect("config")
}

fn row(
    store: &str,
    phase: &str,
    n: u64,
    before: &BTreeMap<&str, f64>,
    after: &BTreeMap<&str, f64>,
) {
    let per = |op: &str| (after[op] - before[op]) / n as f64;
    let total: f64 = OPS.iter().map(|op| per(op)).sum();
    println!(
        "{store:>10} {phase:>22} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>7.2}",
        per("put"),
        per("get"),
        per("head"),
        per("delete"),
        per("list"),
        per("copy"),
        total
    );
}

async fn measure(store: &str, replica_url: &str, opts: &str) {
    for mode in ["sync", "async"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let rep = Replicator::open(config(dir.path(), mode, replica_url, opts))
            .await
            .expect("open");
        // Let the first probe (and the marker write) pass before counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = counts(&rep, "r");
        let n = 200;
        for i in 0..n {
            let key = Key::parse(&format!("steady/{mode}/{i}")).expect("key");
            rep.put(&key, Bytes::from(vec![b'x'; 256]), None).await.ok();
        }
        caught_up(&rep).await;
        row(
            store,
            &format!("{mode}, steady"),
            n,
            &before,
            &counts(&rep, "r"),
        );
        if mode == "sync" {
            // Overwrites of keys the target holds (20 keys, 10 times each).
            let before = counts(&rep, "r");
            for i in 0..n {
                let key = Key::parse(&format!("steady/{mode}/{}", i % 20)).expect("key");
                rep.put(&key, Bytes::from(vec![b'z'; 256]), None).await.ok();
            }
            caught_up(&rep).await;
            row(store, "sync, overwrites", n, &before, &counts(&rep, "r"));
            rep.pause("r").await.expect("pause");
            let n = 1000;
            for i in 0..n {
                let key = Key::parse(&format!("catchup/{}", i % 100)).expect("key");
                rep.put(&key, Bytes::from(vec![b'y'; 256]), None).await.ok();
            }
            let before = counts(&rep, "r");
            rep.resume("r").await.expect("resume");
            caught_up(&rep).await;
            row(
                store,
                "catch-up, 10% distinct",
                n,
                &before,
                &counts(&rep, "r"),
            );
        }
        rep.shutdown(Duration::from_secs(1)).await.ok();
        drop(rep);
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("replica requests per write (primary a local directory), 256 B values");
        println!(
            "{:>10} {:>22} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
            "store", "phase", "put", "get", "head", "delete", "list", "copy", "total"
        );
        let local = tempfile::tempdir().expect("tempdir");
        measure(
            "local dir",
            &walship::config::file_url(&local.path().join("replica")),
            "",
        )
        .await;
        if let Some(moto) = Emulator::start(Kind::Moto).await {
            moto.create_bucket("replica").await;
            let opts = format!("[targets.options]\n{}", moto.options_toml());
            measure("S3 (moto)", &moto.url("replica", "r"), &opts).await;
        }
        if let Some(az) = Emulator::start(Kind::Azurite).await {
            az.create_bucket("replica").await;
            let opts = format!("[targets.options]\n{}", az.options_toml());
            measure("Azure", &az.url("replica", "r"), &opts).await;
        }
    });
}
