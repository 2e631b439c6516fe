//! SPEC guarantee 5: per key, a target never ends on an older version.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Rig, key};
use walship::codec::Op;
use walship::faults::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_versions_of_few_keys_under_concurrency_and_delays_end_on_the_newest() {
    let rig = Rig::new(3, "async", 1, 5.0).await;
    // Each replica answers with a different, changing delay.
    let faults: Vec<_> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| rig.fault(n).clone())
        .collect();
    let jitter = tokio::spawn(async move {
        for round in 0..40u64 {
            for (i, f) in faults.iter().enumerate() {
                let ms = (round * 7 + i as u64 * 13) % 9;
                f.set(Fault::Delay(Duration::from_millis(ms)));
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        for f in &faults {
            f.heal();
        }
    });
    let mut writers = Vec::new();
    for w in 0..8 {
        let rep = rig.rep.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..60 {
                let k = key(&format!("hot/{}", i % 4));
                if i % 11 == 10 {
                    rep.delete(&k, None).await.expect("delete");
                } else {
                    rep.put(&k, Bytes::from(format!("w{w}-{i}")), None)
                        .await
                        .expect("put");
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    jitter.await.expect("jitter");
    rig.wait_caught_up(Duration::from_secs(20)).await;

    let log = rig.rep.log();
    let batch = log.read(1, 100_000, usize::MAX);
    assert!(batch.error.is_none());
    assert_eq!(batch.entries.len(), 480);
    let mut newest: HashMap<String, Option<Bytes>> = HashMap::new();
    for e in &batch.entries {
        newest.insert(e.key.clone(), (e.op == Op::Put).then(|| e.value.clone()));
    }
    for target in ["p", "r1", "r2", "r3"] {
        for (k, v) in &newest {
            assert_eq!(&rig.object(target, k).await, v, "{target} {k}");
        }
    }
}

/// A target catching up on a backlog ships each key's newest version, not
/// every version: coalescing spans the whole backlog (up to 256k entries),
/// not one read batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_ships_each_key_once_across_a_long_backlog() {
    let rig = Rig::new(1, "async", 1, 2.0).await;
    rig.rep.pause("r1").await.expect("pause");
    let keys = 50;
    let versions = 200; // 10,000 entries: more than two read batches
    // One writer per key, all at once.
    let mut tasks = Vec::new();
    for k in 0..keys {
        let rep = rig.rep.clone();
        tasks.push(tokio::spawn(async move {
            for v in 0..versions {
                rep.put(&key(&format!("k{k}")), Bytes::from(format!("v{v}")), None)
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let last: HashMap<String, String> = (0..keys)
        .map(|k| (format!("k{k}"), format!("v{}", versions - 1)))
        .collect();
    let before = rig.fault("r1").puts();
    rig.rep.resume("r1").await.expect("resume");
    rig.wait_caught_up(Duration::from_secs(30)).await;
    let shipped = rig.fault("r1").puts() - before;
    assert!(
        shipped <= 2 * keys as u64,
        "{shipped} puts for {keys} keys and {} entries",
        keys * versions
    );
    for (k, v) in &last {
        assert_eq!(
            rig.object("r1", k).await.as_deref(),
            Some(v.as_bytes()),
            "{k}"
        );
    }
}

/// SPEC "S3 API": a conditional put is decided against the log's newest
/// version at append time, atomically with every other writer. Sixteen
/// writers race `If-None-Match: *` on one key: exactly one wins. Then
/// `If-Match` chains: each round, of the writers holding the same ETag,
/// exactly one moves the key on, and the log ends on a chain of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts_are_decided_at_append_time_one_winner_per_race() {
    use walship::object::{ObjectMeta, Precondition};
    let rig = Rig::new(2, "async", 1, 5.0).await;
    let k = key("race/one");
    let mut tasks = Vec::new();
    for w in 0..16u8 {
        let (rep, k) = (rig.rep.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let v = Bytes::from(vec![w; 8]);
            rep.put_object(
                &k,
                v.clone(),
                ObjectMeta::of(&v),
                Some(Precondition::Absent),
                None,
            )
            .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(walship::Error::PreconditionFailed { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one If-None-Match: * wins");
    for round in 0..5u8 {
        let cur = rig
            .rep
            .log()
            .key_info(k.as_str())
            .await
            .expect("info")
            .expect("exists");
        let etag = cur.etag().expect("etag").to_string();
        let mut tasks = Vec::new();
        for w in 0..8u8 {
            let (rep, k, etag) = (rig.rep.clone(), k.clone(), etag.clone());
            tasks.push(tokio::spawn(async move {
                let v = Bytes::from(vec![round, w, 1, 2]);
                rep.put_object(
                    &k,
                    v.clone(),
                    ObjectMeta::of(&v),
                    Some(Precondition::EtagIs(etag)),
                    None,
                )
                .await
            }));
        }
        let wins = futures::future::join_all(tasks)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(_))))
            .count();
        assert_eq!(wins, 1, "round {round}: one If-Match per ETag wins");
    }
    // A stale ETag, and If-Match on a deleted key, change nothing.
    let head = rig.rep.log().head();
    let v = Bytes::from_static(b"late");
    let stale = rig
        .rep
        .put_object(
            &k,
            v.clone(),
            ObjectMeta::of(&v),
            Some(Precondition::EtagIs(ObjectMeta::of(b"x").etag)),
            None,
        )
        .await;
    assert!(
        matches!(stale, Err(walship::Error::PreconditionFailed { .. })),
        "{stale:?}"
    );
    rig.rep.delete(&k, None).await.expect("delete");
    let gone = rig
        .rep
        .put_object(
            &k,
            v.clone(),
            ObjectMeta::of(&v),
            Some(Precondition::Exists),
            None,
        )
        .await;
    assert!(
        matches!(gone, Err(walship::Error::PreconditionFailed { .. })),
        "{gone:?}"
    );
    assert_eq!(
        rig.rep.log().head(),
        head + 1,
        "only the delete was appended"
    );
}

/// Shipping pipelines: a write that lands while an earlier one is still in
/// flight to a target is sent at once, not after it. One put to r1 is held
/// unanswered; writes after it still reach r1, while r1's cursor stays just
/// before the held entry (it passes only applied entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_in_flight_holds_back_no_later_write_only_the_cursor() {
    let rig = Rig::new(1, "async", 1, 30.0).await;
    rig.fault("r1").hold_puts("slow");
    let held = rig
        .rep
        .put(&key("slow"), Bytes::from_static(b"s"), None)
        .await
        .expect("put slow")
        .seq;
    for i in 0..5 {
        rig.rep
            .put(
                &key(&format!("fast/{i}")),
                Bytes::from(format!("f{i}")),
                None,
            )
            .await
            .expect("put fast");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for i in 0..5 {
        let k = format!("fast/{i}");
        while rig.object("r1", &k).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{k} did not reach r1 while the put of `slow` was in flight"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(rig.object("r1", "slow").await, None);
    assert_eq!(rig.cursor("r1"), held - 1, "the cursor passed a held entry");
    rig.fault("r1").release_puts();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(rig.object("r1", "slow").await.as_deref(), Some(&b"s"[..]));
}

/// Guarantee 5 with a version in flight: the versions of a key written
/// while one of its puts is in flight wait for it, and only the newest of
/// them is sent after it. The target ends on the newest. (A shipper that
/// has not planned all of them yet when the held put lands sends the newest
/// it has, then the newest after that: a busy machine may see a put or two
/// more, never one per version.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_written_while_one_is_in_flight_wait_and_only_the_newest_follows() {
    let rig = Rig::new(1, "async", 1, 30.0).await;
    let r1 = rig.fault("r1");
    r1.record_puts();
    r1.hold_puts("hot");
    let k = key("hot");
    rig.rep
        .put(&k, Bytes::from_static(b"v0"), None)
        .await
        .expect("put");
    // v0 is in flight (held) before the next versions are written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r1.holding() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "v0 was never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for v in 1..=20 {
        rig.rep
            .put(&k, Bytes::from(format!("v{v}")), None)
            .await
            .expect("put");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    r1.release_puts();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(rig.object("r1", "hot").await.as_deref(), Some(&b"v20"[..]));
    let puts = r1
        .recorded_puts()
        .iter()
        .filter(|p| p.ends_with("hot"))
        .count();
    assert!(
        (2..=4).contains(&puts),
        "{puts} puts: v0, then only the newest waiting version (not one per version)"
    );
}

/// Guarantee 5 on a local directory, whose writes run on blocking threads
/// and have no conditional overwrite: a write the shipper stopped waiting
/// for (it outlived `sync_timeout_seconds`) still lands, and must not land
/// after the key's next version. The fault wrapper makes each put happen
/// late, on a task of its own, as a stalled disk would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_given_up_on_never_lands_after_the_next_version() {
    use std::sync::Arc;
    use walship::faults::FaultyStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let r1_dir = dir.path().join("r1");
    std::fs::create_dir_all(&r1_dir).expect("dir");
    let text = format!(
        "data_dir = {:?}\nshutdown_grace_seconds = 1\n[replication]\nmode = \"async\"\n\
         enable_health_checks = false\nenable_failover = false\n\
         [primary]\nname = \"p\"\nurl = \"memory://\"\n\
         [[targets]]\nname = \"r1\"\nurl = {:?}\nsync_timeout_seconds = 0.3\nretry_delay_seconds = 0.05\n",
        dir.path().join("data"),
        walship::config::file_url(&r1_dir),
    );
    let local = object_store::local::LocalFileSystem::new_with_prefix(&r1_dir).expect("local");
    let (r1, faults) = FaultyStore::wrap(Arc::new(local));
    let mut stores: HashMap<String, Arc<dyn object_store::ObjectStore>> = HashMap::new();
    stores.insert("r1".into(), r1);
    stores.insert("p".into(), Arc::new(object_store::memory::InMemory::new()));
    let rep = walship::Replicator::open_with_stores(
        walship::Config::from_toml(&text).expect("config"),
        stores,
    )
    .await
    .expect("open");
    let k = key("k");
    let caught_up = |rep: &walship::Replicator| {
        let c = rep.cursors().expect("cursors");
        c.targets.iter().all(|t| t.cursor == c.head)
    };
    // A create, then an overwrite: walship learns the directory has no
    // conditional overwrite, so later versions go as HEAD + plain put.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for v in ["v0", "v0b"] {
        rep.put(&k, Bytes::from(v), None).await.expect("put");
        while !caught_up(&rep) {
            assert!(tokio::time::Instant::now() < deadline, "{v} not shipped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    faults.set(Fault::DetachedPuts(Duration::from_millis(1500)));
    rep.put(&k, Bytes::from("v1"), None).await.expect("put");
    // The shipper gives up on that put (0.3 s) and retries.
    while !rep.cursors().expect("cursors").targets.iter().any(|t| {
        t.name == "r1"
            && t.error
                .as_deref()
                .unwrap_or("")
                .contains("sync_timeout_seconds")
    }) {
        assert!(tokio::time::Instant::now() < deadline, "no timeout seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    faults.heal();
    rep.put(&k, Bytes::from("v2"), None).await.expect("put");
    while !caught_up(&rep) {
        assert!(tokio::time::Instant::now() < deadline, "not caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every late write has landed by now.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        std::fs::read_to_string(r1_dir.join("k")).expect("k on r1"),
        "v2",
        "an abandoned write of an older version landed last"
    );
    rep.shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
}
