//! SPEC "Conflicts": a replica edited by hand, then written by walship,
//! under each strategy; the manual queue; counters; and what is not a
//! conflict (a write whose answer was lost, on stores with and without
//! metadata).

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Rig, key};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use walship::conflict::Keep;
use walship::faults::{Fault, FaultyStore};
use walship::storage::StateStore as _;
use walship::{Config, Error, Replicator};

async fn rig(strategy: &str) -> Rig {
    Rig::with(
        1,
        "sync",
        1,
        2.0,
        "",
        &format!("conflict_resolution = \"{strategy}\""),
    )
    .await
}

/// Writes `value` under `k` on `target` behind walship's back.
async fn hand_edit(rig: &Rig, target: &str, k: &str, value: &str) {
    rig.stores[target]
        .put(&Path::from(k), PutPayload::from(value.to_string()))
        .await
        .expect("hand edit");
    // Timestamps are in ms: keep the edit and the next write apart.
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// Puts `v` (sync), and returns its seq. A target that keeps another
/// version of `k` does not acknowledge it (guarantee 9), so a 504 naming
/// the others is an answer too; `put_acked` wants every ack.
async fn put(rig: &Rig, k: &str, v: &str) -> u64 {
    match rig.rep.put(&key(k), Bytes::from(v.to_string()), None).await {
        Ok(a) => a.seq,
        Err(Error::QuorumTimeout { seq, acked_by, .. }) => {
            assert!(!acked_by.contains(&"r1".to_string()), "{acked_by:?}");
            seq
        }
        Err(e) => panic!("put: {e}"),
    }
}

async fn put_acked(rig: &Rig, k: &str, v: &str) -> Vec<String> {
    let mut by = rig
        .rep
        .put(&key(k), Bytes::from(v.to_string()), None)
        .await
        .expect("put")
        .acked_by;
    by.sort();
    by
}

async fn value(rig: &Rig, target: &str, k: &str) -> Option<String> {
    rig.object(target, k)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn counts(rig: &Rig) -> (u64, u64) {
    let m = rig.rep.metrics();
    (m.conflicts_detected.get(), m.conflicts_resolved.get())
}

/// Under `manual`: v1, a hand edit of `k` on r1, then v2, which opens a
/// conflict on r1; the rig and the conflict's id.
async fn manual_conflict_on_r1() -> (Rig, u64) {
    let rig = rig("manual").await;
    put(&rig, "k", "v1").await;
    hand_edit(&rig, "r1", "k", "edited").await;
    put(&rig, "k", "v2").await;
    settle(&rig).await;
    let id = rig.rep.conflicts().expect("list")[0].id;
    (rig, id)
}

async fn settle(rig: &Rig) {
    rig.wait_caught_up(Duration::from_secs(10)).await;
}

/// The config of a sidecar under first_write_wins with its data in
/// `dir/data`, a memory primary and replica `r1` in `dir/replica` (created).
fn local_dir_config(dir: &std::path::Path) -> Config {
    let replica_dir = dir.join("replica");
    std::fs::create_dir_all(&replica_dir).expect("mkdir");
    let text = format!(
        "data_dir = {:?}\n[replication]\nmode = \"async\"\nconflict_resolution = \"first_write_wins\"\n\
         [primary]\nname = \"p\"\nurl = \"memory://\"\nretry_delay_seconds = 0.02\n\
         [[targets]]\nname = \"r1\"\nurl = \"file://{}\"\nretry_delay_seconds = 0.02\n",
        dir.join("data").display().to_string(),
        replica_dir.display()
    );
    Config::from_toml(&text).expect("config")
}

/// A sidecar of [`local_dir_config`] whose replica `r1` (a local directory:
/// no metadata, no conditional update) is behind a fault-injecting wrapper:
/// (its temp dir, the replicator, the directory's store unwrapped, the
/// faults of r1).
async fn local_dir_replica() -> (
    tempfile::TempDir,
    Arc<Replicator>,
    Arc<dyn ObjectStore>,
    walship::faults::Faults,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = local_dir_config(dir.path());
    let replica_dir = dir.path().join("replica");
    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(&replica_dir).expect("local"));
    let (faulty, faults) = FaultyStore::wrap(local.clone());
    let mut stores: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
    stores.insert("r1".into(), faulty);
    let rep = Replicator::open_with_stores(cfg, stores)
        .await
        .expect("open");
    (dir, rep, local, faults)
}

/// Until `cond` holds of r1's cursors row (5 s at most); whether it did.
async fn until_r1(rep: &Replicator, cond: impl Fn(&walship::status::TargetRow) -> bool) -> bool {
    for _ in 0..500 {
        if cond(&rep.cursors().expect("cursors").targets[1]) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The bytes of `k` in a local directory's store.
async fn local_bytes(local: &Arc<dyn ObjectStore>, k: &str) -> Vec<u8> {
    local
        .get(&Path::from(k))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes")
        .to_vec()
}

/// The replica is edited by hand, then the key is written: per strategy,
/// and every target ends with the winner (guarantee 9: a kept edit is
/// adopted as a new log entry, and reads serve it with its seq).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_then_a_write_ends_as_each_strategy_says() {
    for (strategy, expect) in [
        ("last_write_wins", "v2"),
        ("first_write_wins", "edited"),
        ("primary_wins", "v2"),
    ] {
        let rig = rig(strategy).await;
        put(&rig, "k", "v1").await;
        hand_edit(&rig, "r1", "k", "edited").await;
        let v2 = put(&rig, "k", "v2").await;
        settle(&rig).await;
        for t in ["r1", "p"] {
            assert_eq!(
                value(&rig, t, "k").await.as_deref(),
                Some(expect),
                "{strategy} {t}"
            );
        }
        assert_eq!(counts(&rig), (1, 1), "{strategy}: one conflict, resolved");
        let read = rig
            .rep
            .get(&key("k"), Some(walship::config::ReadPreference::Any))
            .await
            .expect("get");
        assert_eq!(read.found.as_deref(), Some(expect.as_bytes()), "{strategy}");
        let adopted = strategy == "first_write_wins";
        assert_eq!(
            read.seq,
            Some(if adopted { v2 + 1 } else { v2 }),
            "{strategy}: its seq"
        );
        // Settled: the next write meets no new conflict, and every target
        // acknowledges it.
        assert_eq!(
            put_acked(&rig, "k", "v3").await,
            vec!["p", "r1"],
            "{strategy}"
        );
        settle(&rig).await;
        for t in ["r1", "p"] {
            assert_eq!(
                value(&rig, t, "k").await.as_deref(),
                Some("v3"),
                "{strategy} {t}"
            );
        }
        assert_eq!(counts(&rig), (1, 1), "{strategy}: counted once");
    }
}

/// The edit is newer than the entry (the replica was paused when it was
/// written): last_write_wins keeps the edit, primary_wins does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_newer_than_the_entry_wins_only_under_last_write_wins() {
    for (strategy, expect) in [
        ("last_write_wins", "edited"),
        ("primary_wins", "v2"),
        ("first_write_wins", "v2"),
    ] {
        let rig = Rig::with(
            1,
            "async",
            1,
            2.0,
            "",
            &format!("conflict_resolution = \"{strategy}\""),
        )
        .await;
        put(&rig, "k", "v1").await;
        settle(&rig).await;
        rig.rep.pause("r1").await.expect("pause");
        put(&rig, "k", "v2").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        hand_edit(&rig, "r1", "k", "edited").await;
        rig.rep.resume("r1").await.expect("resume");
        settle(&rig).await;
        // The winner is on every target (a kept edit is adopted).
        for t in ["r1", "p"] {
            assert_eq!(
                value(&rig, t, "k").await.as_deref(),
                Some(expect),
                "{strategy} {t}"
            );
        }
        assert_eq!(counts(&rig), (1, 1), "{strategy}");
        // The targets converged, so verify has nothing to say.
        let report = rig.rep.verify(None).await.expect("verify");
        for t in &report.targets {
            assert!(t.differences.is_empty(), "{strategy}: {:?}", t.differences);
        }
        assert!(report.ok, "{report:?}");
        // A hand edit nobody resolved is still a failure.
        hand_edit(&rig, "r1", "k", "edited again").await;
        let report = rig.rep.verify(Some("r1")).await.expect("verify");
        assert!(!report.ok, "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_combines_json_and_sends_other_bytes_to_the_manual_queue() {
    let rig = rig("merge").await;
    put(&rig, "doc", r#"{"a":1,"nested":{"x":1}}"#).await;
    hand_edit(&rig, "r1", "doc", r#"{"a":1,"hand":true,"nested":{"y":2}}"#).await;
    put(&rig, "doc", r#"{"a":2,"nested":{"x":3}}"#).await;
    settle(&rig).await;
    let merged: serde_json::Value =
        serde_json::from_str(&value(&rig, "r1", "doc").await.expect("doc")).expect("json");
    assert_eq!(
        merged,
        serde_json::json!({"a":2,"hand":true,"nested":{"x":3,"y":2}})
    );
    assert_eq!(counts(&rig), (1, 1));
    assert!(rig.rep.conflicts().expect("list").is_empty());

    put(&rig, "bin", "v1").await;
    hand_edit(&rig, "r1", "bin", "not json").await;
    put(&rig, "bin", "v2").await;
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "bin").await.as_deref(), Some("not json"));
    let open = rig.rep.conflicts().expect("list");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0].key.as_str(), open[0].target.as_str()),
        ("bin", "r1")
    );
    assert_eq!(counts(&rig), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_keeps_the_replica_records_it_and_resolve_clears_it() {
    let rig = rig("manual").await;
    put(&rig, "k", "v1").await;
    hand_edit(&rig, "r1", "k", "edited").await;
    let seq2 = put(&rig, "k", "v2").await;
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("edited"));
    let open = rig.rep.conflicts().expect("list");
    assert_eq!(open.len(), 1);
    let rec = &open[0];
    assert_eq!(
        (rec.key.as_str(), rec.target.as_str(), rec.seq),
        ("k", "r1", seq2)
    );
    assert_eq!(rec.replica.size, 6);
    assert_eq!(rec.primary.size, 2);
    assert!(rec.replica.etag.is_some());
    assert_eq!(counts(&rig), (1, 0));

    // Later writes of the key wait with the conflict; the cursor does not.
    let seq3 = put(&rig, "k", "v3").await;
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("edited"));
    assert_eq!(rig.rep.conflicts().expect("list")[0].seq, seq3);
    put(&rig, "other", "x").await;
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "other").await.as_deref(), Some("x"));

    // It survives a restart, and is listed offline meanwhile.
    let (dir, cfg, stores) = rig.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["conflicts", "--json", "--addr", "127.0.0.1:9", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run walship");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed["conflicts"][0]["key"], "k");
    assert_eq!(listed["conflicts"][0]["seq"], seq3);
    let rig = Rig::open(dir, cfg, stores).await;
    let open = rig.rep.conflicts().expect("list");
    assert_eq!(open.len(), 1);
    let id = open[0].id;
    assert!(matches!(
        rig.rep.resolve_conflict(id + 100, Keep::Primary).await,
        Err(Error::UnknownConflict(_))
    ));
    rig.rep
        .resolve_conflict(id, Keep::Primary)
        .await
        .expect("resolve");
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v3"));
    assert!(rig.rep.conflicts().expect("list").is_empty());
    assert_eq!(rig.rep.metrics().conflicts_resolved.get(), 1);
    // The next write goes straight through.
    put(&rig, "k", "v4").await;
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v4"));
    assert_eq!(
        rig.rep.metrics().conflicts_detected.get(),
        0,
        "none since the restart"
    );
}

/// Guarantee 5 across a resolve: a later write of the key, arriving while
/// its conflict is being resolved, waits for the resolution and then lands
/// over it; the target does not end on the resolved (older) version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_arriving_during_a_resolve_lands_after_it() {
    let (rig, id) = manual_conflict_on_r1().await;
    // r1 answers slowly: the resolve reads r1 (0.8 s), then writes the
    // primary's v2 to it (0.8 s more); v3 is written meanwhile.
    rig.fault("r1")
        .set(Fault::Delay(Duration::from_millis(800)));
    let resolving = {
        let rep = rig.rep.clone();
        tokio::spawn(async move { rep.resolve_conflict(id, Keep::Primary).await })
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    put(&rig, "k", "v3").await;
    resolving.await.expect("resolve task").expect("resolve");
    rig.fault("r1").heal();
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v3"));
    assert!(rig.rep.conflicts().expect("list").is_empty());
}

/// A resolve waits on its own conflict only: while the resolve's write to
/// r1 goes unanswered, a later write of a key held by another conflict, on
/// r2, is still taken in by that conflict and passed by r2's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_waiting_on_its_target_does_not_stall_another_conflict() {
    let rig = Rig::with(
        2,
        "semi_sync",
        1,
        2.0,
        "",
        "conflict_resolution = \"manual\"",
    )
    .await;
    put(&rig, "a", "v1").await;
    hand_edit(&rig, "r1", "a", "edited").await;
    put(&rig, "a", "v2").await;
    put(&rig, "b", "v1").await;
    hand_edit(&rig, "r2", "b", "edited").await;
    put(&rig, "b", "v2").await;
    settle(&rig).await;
    let open = rig.rep.conflicts().expect("list");
    let id_of = |k: &str, t: &str| {
        open.iter()
            .find(|c| c.key == k && c.target == t)
            .unwrap_or_else(|| panic!("a conflict on {k} at {t}: {open:?}"))
            .id
    };
    let (a, b) = (id_of("a", "r1"), id_of("b", "r2"));
    rig.fault("r1").hold_puts("a");
    let resolving = {
        let rep = rig.rep.clone();
        tokio::spawn(async move { rep.resolve_conflict(a, Keep::Primary).await })
    };
    for _ in 0..500 {
        if rig.fault("r1").holding() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.fault("r1").holding(), 1, "the resolve's write waits");
    let seq = put(&rig, "b", "v3").await;
    let mut passed = false;
    for _ in 0..500 {
        let r2 = rig.rep.cursors().expect("cursors").targets[2].clone();
        assert_eq!(r2.name, "r2");
        if r2.cursor >= seq {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        passed,
        "r2 stalled behind a resolve on r1 that waits for its store"
    );
    let held = rig.rep.conflicts().expect("list");
    let rec = held.iter().find(|c| c.id == b).expect("b's conflict");
    assert_eq!(rec.seq, seq, "the conflict now stands for the later write");
    rig.fault("r1").release_puts();
    resolving.await.expect("resolve task").expect("resolve");
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "a").await.as_deref(), Some("v2"));
    let left: Vec<u64> = rig
        .rep
        .conflicts()
        .expect("list")
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, vec![b]);
}

/// A resync settles the target's conflicts when its copy ends: a resolve
/// meanwhile is refused (it could land over the copy), and the conflict is
/// gone once the resync is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_is_refused_while_the_target_is_resynced_which_settles_it() {
    let (rig, id) = manual_conflict_on_r1().await;
    rig.fault("r1").set(Fault::Fail);
    rig.rep.start_resync("r1").await.expect("resync starts");
    let err = rig
        .rep
        .resolve_conflict(id, Keep::Primary)
        .await
        .expect_err("refused while syncing");
    assert!(
        matches!(err, Error::ResolveRefused(_)) && err.to_string().contains("being resynced"),
        "{err}"
    );
    rig.fault("r1").heal();
    rig.wait_all_active().await;
    settle(&rig).await;
    assert!(rig.rep.conflicts().expect("list").is_empty());
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_catches_a_second_edit_instead_of_overwriting_it() {
    let (rig, id) = manual_conflict_on_r1().await;
    hand_edit(&rig, "r1", "k", "second edit").await;
    let err = rig
        .rep
        .resolve_conflict(id, Keep::Primary)
        .await
        .expect_err("the target changed since the record");
    assert!(matches!(err, Error::ResolveRefused(_)), "{err}");
    assert!(err.to_string().contains("changed since"), "{err}");
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("second edit"));
    let rec = &rig.rep.conflicts().expect("list")[0];
    assert_eq!(
        rec.replica.size,
        "second edit".len() as u64,
        "the record shows the new version"
    );
    // Now that it has been looked at: keep the replica's version.
    rig.rep
        .resolve_conflict(id, Keep::Replica)
        .await
        .expect("resolve");
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("second edit"));
    assert_eq!(counts(&rig), (1, 1));
    // A new write after the resolution is a new intent: it goes through.
    put(&rig, "k", "v3").await;
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v3"));
    assert_eq!(counts(&rig), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_the_conflicts_made() {
    let rig = rig("last_write_wins").await;
    for i in 0..10 {
        put(&rig, &format!("k{i}"), "v1").await;
    }
    for i in 0..7 {
        hand_edit(&rig, "r1", &format!("k{i}"), "edited").await;
    }
    for i in 0..10 {
        put(&rig, &format!("k{i}"), "v2").await;
    }
    settle(&rig).await;
    assert_eq!(counts(&rig), (7, 7));
    for i in 0..10 {
        assert_eq!(
            value(&rig, "r1", &format!("k{i}")).await.as_deref(),
            Some("v2")
        );
    }
    // A target that keeps failing does not count a conflict per retry.
    hand_edit(&rig, "r1", "k0", "edited again").await;
    rig.fault("r1").set(Fault::Fail);
    let _ = rig
        .rep
        .put(&key("k0"), Bytes::from("v3"), Some(walship::Mode::Async))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.fault("r1").heal();
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k0").await.as_deref(), Some("v3"));
    assert_eq!(counts(&rig), (8, 8));
    let text = rig.rep.metrics_text();
    assert!(
        text.contains("walship_conflicts_detected_total 8"),
        "{text}"
    );
    assert!(
        text.contains("walship_conflicts_resolved_total 8"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_meets_a_hand_edit_like_a_put() {
    for (strategy, expect) in [
        ("last_write_wins", None),
        ("first_write_wins", Some("edited")),
    ] {
        let rig = rig(strategy).await;
        put(&rig, "k", "v1").await;
        hand_edit(&rig, "r1", "k", "edited").await;
        match rig.rep.delete(&key("k"), None).await {
            Ok(_) => assert!(expect.is_none(), "{strategy}"),
            // The edit wins: r1 does not acknowledge the delete.
            Err(Error::QuorumTimeout { .. }) => assert!(expect.is_some(), "{strategy}"),
            Err(e) => panic!("delete: {e}"),
        }
        settle(&rig).await;
        // The winner is on every target: a kept edit is adopted (guarantee 9).
        for t in ["r1", "p"] {
            assert_eq!(
                value(&rig, t, "k").await.as_deref(),
                expect,
                "{strategy} {t}"
            );
        }
        assert_eq!(counts(&rig), (1, 1), "{strategy}");
    }
}

/// A write that was done but whose answer was lost is shipped again; the
/// target then holds this sidecar's own version: not a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_not_a_conflict_with_or_without_metadata() {
    // Memory store: metadata says whose version it is.
    let rig = Rig::with(
        1,
        "async",
        1,
        2.0,
        "",
        "conflict_resolution = \"first_write_wins\"",
    )
    .await;
    rig.fault("r1").set(Fault::LoseAcks);
    for i in 0..20 {
        put(&rig, &format!("k{}", i % 5), &format!("v{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.fault("r1").heal();
    settle(&rig).await;
    assert!(rig.fault("r1").failed_writes() > 0, "answers were lost");
    for i in 15..20 {
        assert_eq!(
            value(&rig, "r1", &format!("k{}", i % 5)).await.as_deref(),
            Some(format!("v{i}").as_str())
        );
    }
    assert_eq!(counts(&rig), (0, 0));

    // Local directory: no metadata, no conditional update; compared by HEAD.
    let (_dir, rep, local, faults) = local_dir_replica().await;
    faults.set(Fault::LoseAcks);
    let mut last = HashMap::new();
    for i in 0..20 {
        let k = format!("k{}", i % 5);
        let v = format!("v{i}");
        rep.put(&key(&k), Bytes::from(v.clone()), None)
            .await
            .expect("put");
        last.insert(k, v);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    faults.heal();
    let head = rep.log().head();
    for _ in 0..500 {
        if rep
            .cursors()
            .expect("cursors")
            .targets
            .iter()
            .all(|t| t.cursor == head)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(faults.failed_writes() > 0);
    for (k, v) in &last {
        assert_eq!(local_bytes(&local, k).await, v.as_bytes(), "{k}");
    }
    assert_eq!(rep.metrics().conflicts_detected.get(), 0);

    // And a real hand edit there is one.
    local
        .put(&Path::from("k0"), PutPayload::from("edited"))
        .await
        .expect("edit");
    tokio::time::sleep(Duration::from_millis(5)).await;
    rep.put(&key("k0"), Bytes::from("newer"), None)
        .await
        .expect("put");
    for _ in 0..500 {
        if rep.metrics().conflicts_resolved.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rep.metrics().conflicts_detected.get(), 1);
    assert_eq!(
        local_bytes(&local, "k0").await,
        b"edited",
        "first_write_wins keeps the edit"
    );
    rep.shutdown(Duration::from_millis(200))
        .await
        .expect("shutdown");
}

/// On a store without metadata, an older version of this sidecar's own
/// (written, answer lost, never recorded; the key's next entry is what
/// ships next) is recognised by its bytes in the log, not taken for a hand
/// edit: under first_write_wins a hand edit would be kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_of_ours_left_by_a_lost_answer_is_not_a_conflict() {
    let (_dir, rep, local, faults) = local_dir_replica().await;
    // v1 lands on r1, its answer is lost: walship never records it.
    faults.set(Fault::LoseAcks);
    rep.put(&key("k"), Bytes::from("v1"), None)
        .await
        .expect("put");
    for _ in 0..500 {
        if faults.failed_writes() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(faults.failed_writes() > 0, "v1's answer was lost");
    // Stop shipping to r1, write v2, heal: on resume the stretch holds v1
    // and v2, and only v2 (the key's newest) is written over v1.
    rep.pause("r1").await.expect("pause");
    rep.put(&key("k"), Bytes::from("v2"), None)
        .await
        .expect("put");
    faults.heal();
    rep.resume("r1").await.expect("resume");
    let head = rep.log().head();
    assert!(until_r1(&rep, |r| r.cursor == head).await, "r1 caught up");
    assert_eq!(local_bytes(&local, "k").await, b"v2");
    assert_eq!(rep.metrics().conflicts_detected.get(), 0);
    rep.shutdown(Duration::from_millis(200))
        .await
        .expect("shutdown");
}

/// Replay is a repair: it writes this log's versions over whatever is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_overwrites_hand_edits() {
    let rig = rig("first_write_wins").await;
    let first = put(&rig, "k", "v1").await;
    hand_edit(&rig, "r1", "k", "edited").await;
    rig.rep
        .replay("r1", walship::replicator::ReplayFrom::Seq(first), true)
        .await
        .expect("replay");
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v1"));
    assert_eq!(counts(&rig), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conflict_queue_over_http() {
    let rig = rig("manual").await;
    let base = rig.serve_http(None).await;
    let c = reqwest::Client::new();
    put(&rig, "k", "v1").await;
    hand_edit(&rig, "r1", "k", "edited").await;
    put(&rig, "k", "v2").await;
    settle(&rig).await;

    let list: serde_json::Value = c
        .get(format!("{base}/v1/conflicts"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let open = list["conflicts"].as_array().expect("array");
    assert_eq!(open.len(), 1, "{list}");
    assert_eq!(open[0]["key"], "k");
    assert_eq!(open[0]["target"], "r1");
    assert_eq!(open[0]["replica"]["size"], 6);
    let id = open[0]["id"].as_u64().expect("id");

    // Bad requests name the problem and change nothing.
    for (url, body, status, says) in [
        (format!("{base}/v1/conflicts/{id}/resolve"), "", 400, "keep"),
        (
            format!("{base}/v1/conflicts/{id}/resolve?keep=both"),
            "",
            400,
            "primary",
        ),
        (
            format!("{base}/v1/conflicts/x/resolve?keep=primary"),
            "",
            400,
            "not a number",
        ),
        (
            format!("{base}/v1/conflicts/{id}/resolve"),
            "{\"keep\":",
            400,
            "body",
        ),
        (
            format!("{base}/v1/conflicts/{id}/resolve?keep=primary"),
            "{\"keep\":\"replica\"}",
            400,
            "twice",
        ),
        (
            format!("{base}/v1/conflicts/{id}/ignore?keep=primary"),
            "",
            404,
            "resolve",
        ),
        (
            format!("{base}/v1/conflicts/{}/resolve?keep=primary", id + 7),
            "",
            404,
            "no open conflict",
        ),
    ] {
        let r = c.post(&url).body(body).send().await.expect("post");
        assert_eq!(r.status().as_u16(), status, "{url}");
        let err: serde_json::Value = r.json().await.expect("json error");
        let msg = err["error"].as_str().expect("error");
        assert!(msg.contains(says), "{url}: {msg}");
    }
    assert_eq!(rig.rep.conflicts().expect("list").len(), 1);
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("edited"));

    let r = c
        .post(format!("{base}/v1/conflicts/{id}/resolve"))
        .json(&serde_json::json!({"keep": "primary"}))
        .send()
        .await
        .expect("post");
    assert!(r.status().is_success());
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["kept"], "primary");
    assert_eq!(v["resolved"]["id"], id);
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v2"));
    let status: serde_json::Value = c
        .get(format!("{base}/v1/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["open_conflicts"], 0);
    assert_eq!(status["metrics"]["conflicts_detected"], 1);
    assert_eq!(status["metrics"]["conflicts_resolved"], 1);
    // Resolved once: a second resolve finds nothing.
    let r = c
        .post(format!("{base}/v1/conflicts/{id}/resolve?keep=primary"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 404);
}

/// `--keep primary` on a replica copies the acting primary's version: it
/// refuses (and changes nothing) while the primary lacks the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_primary_waits_for_the_primary_to_have_the_entry() {
    let rig = Rig::with(1, "async", 1, 0.5, "", "conflict_resolution = \"manual\"").await;
    put(&rig, "k", "v1").await;
    settle(&rig).await;
    hand_edit(&rig, "r1", "k", "edited").await;
    rig.fault("p").set(Fault::Hang);
    // The primary hangs: the write is durable, not acknowledged in time.
    let err = rig
        .rep
        .put(&key("k"), Bytes::from("v2"), None)
        .await
        .expect_err("the primary hangs");
    assert!(matches!(err, Error::QuorumTimeout { .. }), "{err}");
    let mut open = Vec::new();
    for _ in 0..250 {
        open = rig.rep.conflicts().expect("list");
        if !open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open.len(), 1, "r1 met the edit");
    let id = open[0].id;
    let err = rig
        .rep
        .resolve_conflict(id, Keep::Primary)
        .await
        .expect_err("the primary has not applied it");
    assert!(err.to_string().contains("has not applied"), "{err}");
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("edited"));
    assert_eq!(rig.rep.conflicts().expect("list").len(), 1);
    rig.fault("p").heal();
    settle(&rig).await;
    rig.rep
        .resolve_conflict(id, Keep::Primary)
        .await
        .expect("resolve");
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v2"));
    assert_eq!(counts(&rig), (1, 1));
}

/// A resync copies the acting primary over the target: its open conflicts
/// are settled, and counted resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_settles_the_targets_open_conflicts() {
    let rig = rig("manual").await;
    put(&rig, "k", "v1").await;
    hand_edit(&rig, "r1", "k", "edited").await;
    put(&rig, "k", "v2").await;
    settle(&rig).await;
    assert_eq!(rig.rep.conflicts().expect("list").len(), 1);
    rig.rep.start_resync("r1").await.expect("resync");
    for _ in 0..250 {
        if rig.rep.conflicts().expect("list").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(&rig).await;
    assert!(rig.rep.conflicts().expect("list").is_empty());
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v2"));
    assert_eq!(counts(&rig), (1, 1));
    // Settled: the next write goes straight through.
    put(&rig, "k", "v3").await;
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("v3"));
    assert_eq!(counts(&rig), (1, 1));
}

/// A damaged record of what a target holds (bad bytes in the data dir)
/// stops shipping to that target with an error naming the key, the target
/// and the way out, and writes nothing there; `replay` writes the log's
/// version over the target and records it anew. (The replica is a
/// directory through object_store's `LocalFileSystem`, which keeps no
/// attributes: walship records its versions there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_version_record_stops_its_target_until_a_replay() {
    use walship::storage::{LogStore as _, Side, SledStorage};
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = local_dir_config(dir.path());
    let file = |k: &str| std::fs::read(dir.path().join("replica").join(k)).expect("read");
    let open = || {
        let local: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path().join("replica")).expect("local"));
        Replicator::open_with_stores(cfg.clone(), HashMap::from([("r1".to_string(), local)]))
    };
    let rep = open().await.expect("open");
    rep.put(&key("k"), Bytes::from("v1"), None)
        .await
        .expect("put");
    assert!(until_r1(&rep, |r| r.cursor == 1).await, "v1 reached r1");
    rep.shutdown(Duration::from_millis(200))
        .await
        .expect("shutdown");
    drop(rep);
    {
        let s = SledStorage::open(&dir.path().join("data"), 8 << 20).expect("storage");
        assert!(
            s.side(Side::Versions, b"r1\0k").expect("side").is_some(),
            "a local directory's versions are recorded"
        );
        s.set_side(Side::Versions, b"r1\0k", Some(b"{not json"))
            .expect("damage");
        s.sync().expect("sync");
    }
    let rep = open().await.expect("reopen");
    let v2 = rep
        .put(&key("k"), Bytes::from("v2"), None)
        .await
        .expect("put")
        .seq;
    assert!(
        until_r1(&rep, |r| r.error.is_some()).await,
        "r1 reports the damage"
    );
    let row = rep.cursors().expect("cursors").targets[1].clone();
    let err = row.error.expect("error");
    for needed in ["\"k\"", "r1", "does not decode", "walship replay r1"] {
        assert!(err.contains(needed), "{needed:?} missing from {err}");
    }
    assert_eq!(row.cursor, 1, "the cursor waits before the entry");
    assert_eq!(file("k"), b"v1", "nothing written over the target");
    rep.replay("r1", walship::replicator::ReplayFrom::Seq(v2), true)
        .await
        .expect("replay");
    assert!(until_r1(&rep, |r| r.cursor == v2).await, "r1 caught up");
    assert_eq!(file("k"), b"v2");
    // The record is whole again: the next write ships as usual.
    let v3 = rep
        .put(&key("k"), Bytes::from("v3"), None)
        .await
        .expect("put")
        .seq;
    assert!(
        until_r1(&rep, |r| r.cursor == v3 && r.error.is_none()).await,
        "v3 reached r1"
    );
    assert_eq!(file("k"), b"v3");
    assert_eq!(rep.metrics().conflicts_detected.get(), 0);
    rep.shutdown(Duration::from_millis(200))
        .await
        .expect("shutdown");
}

/// Guarantee 9 under `manual`: the target that keeps its hand edit does not
/// acknowledge the key's writes, and no read ever serves the edit as the
/// log's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicted_target_neither_acknowledges_nor_serves_the_key() {
    let rig = rig("manual").await;
    put_acked(&rig, "k", "v1").await;
    hand_edit(&rig, "r1", "k", "edited").await;
    match rig.rep.put(&key("k"), Bytes::from("v2"), None).await {
        Err(Error::QuorumTimeout { seq, acked_by, .. }) => {
            assert_eq!(seq, 2);
            assert!(!acked_by.contains(&"r1".to_string()), "{acked_by:?}");
        }
        other => panic!("r1 holds the edit, yet: {other:?}"),
    }
    settle(&rig).await;
    assert_eq!(value(&rig, "r1", "k").await.as_deref(), Some("edited"));
    for _ in 0..40 {
        let read = rig
            .rep
            .get(&key("k"), Some(walship::config::ReadPreference::Any))
            .await
            .expect("get");
        assert_eq!(read.served_by, "p", "r1 must not serve k");
        assert_eq!(read.found.as_deref(), Some(&b"v2"[..]));
        assert_eq!(read.seq, Some(2));
    }
    // Other keys are not held back: r1 acknowledges them.
    assert_eq!(put_acked(&rig, "other", "x").await, vec!["p", "r1"]);
    // Once resolved for the primary's version, r1 acknowledges k again.
    let id = rig.rep.conflicts().expect("list")[0].id;
    rig.rep
        .resolve_conflict(id, Keep::Primary)
        .await
        .expect("resolve");
    assert_eq!(put_acked(&rig, "k", "v3").await, vec!["p", "r1"]);
}

/// A sidecar under first_write_wins in `sync`, its data in `dir/data`, a
/// primary in `dir/primary` and replica `r1` in `replica`: local
/// directories as the config makes them (walship's own, keeping a write's
/// attributes in an extended attribute where the file system can).
async fn open_on_local_dirs(dir: &std::path::Path, replica: &std::path::Path) -> Arc<Replicator> {
    for d in [dir.join("primary"), replica.to_path_buf()] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let text = format!(
        "data_dir = {:?}\n[replication]\nmode = \"sync\"\nconflict_resolution = \"first_write_wins\"\n\
         [primary]\nname = \"p\"\nurl = \"file://{}\"\nretry_delay_seconds = 0.02\n\
         [[targets]]\nname = \"r1\"\nurl = \"file://{}\"\nretry_delay_seconds = 0.02\n",
        dir.join("data").display().to_string(),
        dir.join("primary").display(),
        replica.display()
    );
    Replicator::open(Config::from_toml(&text).expect("config"))
        .await
        .expect("open")
}

/// v1 on every target; a restart (nothing of this process's memory left);
/// then v2, which finds v1 on r1: whose it is decides what r1 ends with
/// (first_write_wins keeps another writer's version).
async fn v1_restart_v2(dir: &std::path::Path, replica: &std::path::Path) -> Arc<Replicator> {
    let rep = open_on_local_dirs(dir, replica).await;
    let acked = rep
        .put(&key("k"), Bytes::from("v1"), None)
        .await
        .expect("v1");
    assert_eq!(acked.acked_by.len(), 2, "{:?}", acked.acked_by);
    rep.shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
    drop(rep);
    let rep = open_on_local_dirs(dir, replica).await;
    rep.put(&key("k"), Bytes::from("v2"), None)
        .await
        .expect("v2, acknowledged by both");
    rep
}

/// A local directory keeps walship's origin on each file it writes, so
/// after a restart its own version is told from someone else's by that
/// alone: nothing is recorded next to the log for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_local_directory_holds_our_version_by_its_attribute() {
    let dir = tempfile::tempdir().expect("tempdir");
    if !keeps_extended_attributes(dir.path()) {
        return;
    }
    let replica = dir.path().join("replica");
    let rep = v1_restart_v2(dir.path(), &replica).await;
    assert_eq!(std::fs::read(replica.join("k")).expect("k"), b"v2");
    assert_eq!(rep.metrics().conflicts_detected.get(), 0);
    let recorded = rep
        .log()
        .storage()
        .side_scan(walship::storage::Side::Versions, b"")
        .expect("scan");
    assert!(recorded.is_empty(), "no version recorded: {recorded:?}");
    rep.shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
}

/// Whether the file system of `dir` keeps extended attributes (a SKIPPED
/// line, or a failure in CI, where it does not).
fn keeps_extended_attributes(dir: &std::path::Path) -> bool {
    let probe = dir.join("xattr-probe");
    std::fs::write(&probe, b"").expect("probe");
    let kept = xattr::set(&probe, "user.walship-probe", b"1");
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = kept {
        crate::skip::skip(&format!(
            "{} keeps no extended attributes ({e}); the test of a local directory keeping walship's origin did not run",
            dir.display()
        ));
        return false;
    }
    true
}

/// The origin stays with the file's inode: a hand edit in place keeps it.
/// Such a file is still someone else's version (a conflict), not ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_file_edited_in_place_is_a_conflict_though_it_keeps_our_origin() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tempdir");
    if !keeps_extended_attributes(dir.path()) {
        return;
    }
    let replica = dir.path().join("replica");
    let rep = open_on_local_dirs(dir.path(), &replica).await;
    rep.put(&key("k"), Bytes::from("v1"), None)
        .await
        .expect("v1");
    tokio::time::sleep(Duration::from_millis(5)).await;
    std::fs::OpenOptions::new()
        .append(true)
        .open(replica.join("k"))
        .and_then(|mut f| f.write_all(b" edited"))
        .expect("edit in place");
    v2_meets_someone_elses_version(&rep, &replica, b"v1 edited").await;
}

/// v2 of `k` finds on r1 a file changed by hand, holding `kept`: not
/// acknowledged there, one conflict, and first_write_wins keeps the file.
async fn v2_meets_someone_elses_version(rep: &Replicator, replica: &std::path::Path, kept: &[u8]) {
    match rep.put(&key("k"), Bytes::from("v2"), None).await {
        Ok(a) => panic!("r1 holds a hand change, yet acknowledged: {:?}", a.acked_by),
        Err(Error::QuorumTimeout { acked_by, .. }) => {
            assert!(!acked_by.contains(&"r1".to_string()), "{acked_by:?}");
        }
        Err(e) => panic!("v2: {e}"),
    }
    assert_eq!(rep.metrics().conflicts_detected.get(), 1);
    assert_eq!(
        std::fs::read(replica.join("k")).expect("k"),
        kept,
        "first_write_wins keeps the hand change"
    );
    rep.shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
}

/// A file moved by hand from another key keeps that key's attribute (and
/// our origin in it): here it is still someone else's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_file_moved_from_another_key_is_a_conflict_though_it_keeps_our_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    if !keeps_extended_attributes(dir.path()) {
        return;
    }
    let replica = dir.path().join("replica");
    let rep = open_on_local_dirs(dir.path(), &replica).await;
    for (k, v) in [("k", "v1"), ("other", "moved")] {
        rep.put(&key(k), Bytes::from(v), None).await.expect("put");
    }
    std::fs::rename(replica.join("other"), replica.join("k")).expect("mv");
    v2_meets_someone_elses_version(&rep, &replica, b"moved").await;
}

/// A ramfs mounted at a directory for one test (it keeps no extended
/// attributes), unmounted on drop; `None` (a SKIPPED line, or a failure in
/// CI) where mounting is not allowed.
struct Ramfs(std::path::PathBuf);

impl Ramfs {
    fn mount(dir: &std::path::Path) -> Option<Ramfs> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            crate::skip::skip(
                "cannot mount a ramfs here (needs root); the test of a directory without extended attributes did not run",
            );
            return None;
        }
        Some(Ramfs(dir.to_path_buf()))
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A replica on a file system without extended attributes gets every
/// write all the same, and walship records its versions next to the log
/// instead: after a restart its own version there is still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_directory_without_extended_attributes_is_written_and_known_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = dir.path().join("replica");
    let Some(_ramfs) = Ramfs::mount(&replica) else {
        return;
    };
    let rep = v1_restart_v2(dir.path(), &replica).await;
    assert_eq!(std::fs::read(replica.join("k")).expect("k"), b"v2");
    assert_eq!(rep.metrics().conflicts_detected.get(), 0);
    rep.shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
}
