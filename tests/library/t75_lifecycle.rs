//! SPEC guarantee 6 and the operator commands: truncation under retention,
//! the size cap and resync, replay, verify.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{Rig, key};
use object_store::ObjectStoreExt;
use walship::faults::Fault;
use walship::replicator::ReplayFrom;
use walship::status::TargetState;

async fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    for _ in 0..secs * 50 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {secs} s: {what}");
}

/// Writes `during/0 .. during/199`, about 100 bytes each: enough to pass
/// an 8 KiB `max_log_bytes` many times over.
async fn put_during(rig: &Rig) {
    for i in 0..200 {
        rig.rep
            .put(
                &key(&format!("during/{i}")),
                Bytes::from(format!("d{i} {}", "y".repeat(100))),
                None,
            )
            .await
            .expect("put");
    }
}

/// Writes `k0 .. k{n-1}`, each the value "v" (no wait for the targets).
async fn put_v(rig: &Rig, n: usize) {
    for i in 0..n {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from("v"), None)
            .await
            .expect("put");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_young_entries_even_when_every_cursor_passed_them() {
    let rig = Rig::with_top(1, "sync", 1, 1.0, "retention_seconds = 3600").await;
    put_v(&rig, 20).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        rig.rep.log().first(),
        1,
        "every entry is younger than retention_seconds"
    );

    let rig = Rig::with_top(1, "sync", 1, 1.0, "retention_seconds = 0").await;
    put_v(&rig, 20).await;
    eventually("truncation without retention", 5, || {
        rig.rep.log().first() == 20
    })
    .await;
    // The head entry is always kept, so seqs continue.
    assert_eq!(
        rig.rep
            .put(&key("next"), Bytes::from("v"), None)
            .await
            .expect("put")
            .seq,
        21
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_waits_for_the_slowest_target() {
    let rig = Rig::with_top(2, "async", 1, 0.5, "retention_seconds = 0").await;
    rig.fault("r2").set(Fault::Fail);
    put_v(&rig, 30).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(rig.rep.log().first(), 1, "r2 still needs every entry");
    assert_eq!(
        rig.rep
            .status()
            .expect("status")
            .truncation_held_by
            .as_deref(),
        Some("r2")
    );
    rig.fault("r2").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    eventually("truncation once r2 caught up", 5, || {
        rig.rep.log().first() == 30
    })
    .await;
    assert_eq!(rig.rep.status().expect("status").truncation_held_by, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_size_cap_the_target_far_behind_is_resynced_and_ends_identical() {
    let rig = Rig::with_top(
        2,
        "async",
        1,
        0.5,
        "retention_seconds = 0\nmax_log_bytes = 8192",
    )
    .await;
    rig.fault("r2").set(Fault::Fail);
    for i in 0..300 {
        let k = key(&format!("k{}", i % 40));
        if i % 17 == 16 {
            rig.rep.delete(&k, None).await.expect("delete");
        } else {
            rig.rep
                .put(
                    &k,
                    Bytes::from(format!("value {i} {}", "x".repeat(i % 50))),
                    None,
                )
                .await
                .expect("put");
        }
    }
    // r2 stops pinning the log: it goes syncing and the log shrinks under the cap.
    eventually("r2 syncing", 10, || {
        rig.rep
            .cursors()
            .expect("cursors")
            .targets
            .iter()
            .any(|t| t.name == "r2" && t.state == TargetState::Syncing)
    })
    .await;
    eventually("log under the cap", 10, || {
        rig.rep.log().retained_bytes() <= 8192
    })
    .await;
    assert!(rig.rep.log().first() > 1);
    // Writes keep flowing during the resync, far past the cap while r2's
    // copy keeps failing: the copy's hand-over point moves up, and the log
    // stays under the cap.
    put_during(&rig).await;
    eventually("log under the cap while the resync fails", 10, || {
        rig.rep.log().retained_bytes() <= 8192
    })
    .await;
    rig.fault("r2").heal();
    eventually("resync done", 20, || {
        rig.rep
            .cursors()
            .expect("cursors")
            .targets
            .iter()
            .all(|t| t.state == TargetState::Active)
    })
    .await;
    rig.wait_caught_up(Duration::from_secs(10)).await;
    let report = rig.rep.verify(None).await.expect("verify");
    assert!(report.ok, "{report:#?}");
    for k in (0..40)
        .map(|k| format!("k{k}"))
        .chain((0..200).map(|i| format!("during/{i}")))
    {
        assert_eq!(rig.object("r2", &k).await, rig.object("p", &k).await, "{k}");
    }
}

/// A copy that finished towards its hand-over point while the point moved
/// (the log passed the cap as the copy deleted what the source lacks) is
/// not handed over at the moved point: the writes between the two were
/// never copied, so it copies again, and the replica ends holding them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_whose_hand_over_point_moves_as_it_ends_copies_again() {
    let rig = Rig::with_top(
        1,
        "async",
        1,
        0.5,
        "retention_seconds = 0\nmax_log_bytes = 8192",
    )
    .await;
    rig.put_keys(5).await;
    // An object the source lacks: the copy's last step deletes it, and
    // that delete is held.
    rig.stores["r1"]
        .put(&"stray".into(), "not the primary's".into())
        .await
        .expect("put");
    rig.fault("r1").hold_deletes("stray");
    let start = rig.rep.start_resync("r1").await.expect("resync");
    eventually("the copy deleting the stray object", 10, || {
        rig.fault("r1").holding() == 1
    })
    .await;
    // Writes pass the cap: the hand-over point moves up to the head, and
    // the log is truncated past the point the copy was made for.
    put_during(&rig).await;
    eventually(
        "the log truncated past the first hand-over point",
        10,
        || rig.rep.log().first() > start + 1,
    )
    .await;
    rig.fault("r1").release_deletes();
    rig.wait_all_active().await;
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(rig.object("r1", "stray").await, None);
    for k in (0..5)
        .map(|k| format!("k{k}"))
        .chain((0..200).map(|i| format!("during/{i}")))
    {
        assert_eq!(rig.object("r1", &k).await, rig.object("p", &k).await, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_hand_edits_and_replay_repairs_them() {
    let rig = Rig::new(1, "sync", 1, 1.0).await;
    for i in 0..10 {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
            .await
            .expect("put");
    }
    rig.rep.delete(&key("k9"), None).await.expect("delete");
    let report = rig.rep.verify(None).await.expect("verify");
    assert!(report.ok, "{report:#?}");

    // Hand edits behind walship's back.
    let r1 = &rig.stores["r1"];
    r1.delete(&"k1".into()).await.expect("delete");
    r1.put(&"k2".into(), "tampered!".into()).await.expect("put");
    r1.put(&"k3".into(), "v9".into()).await.expect("put"); // same size, other bytes
    r1.put(&"k9".into(), "back".into()).await.expect("put");
    let report = rig.rep.verify(Some("r1")).await.expect("verify");
    assert!(!report.ok);
    assert_eq!(report.targets.len(), 1);
    let mut problems: Vec<(String, String)> = report.targets[0]
        .differences
        .iter()
        .map(|d| (d.key.clone(), d.problem.clone()))
        .collect();
    problems.sort();
    assert_eq!(
        problems,
        vec![
            ("k1".into(), "missing".into()),
            ("k2".into(), "different size".into()),
            ("k3".into(), "different content".into()),
            ("k9".into(), "deleted but present".into()),
        ]
    );

    // A plan changes nothing.
    let before = rig.cursor("r1");
    let plan = rig
        .rep
        .replay("r1", ReplayFrom::Seq(1), false)
        .await
        .expect("plan");
    assert_eq!(
        (plan.from, plan.to, plan.entries, plan.keys, plan.executed),
        (1, 11, 11, 10, false)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.cursor("r1"), before);
    assert_eq!(rig.object("r1", "k1").await, None);

    let plan = rig
        .rep
        .replay("r1", ReplayFrom::Seq(1), true)
        .await
        .expect("replay");
    assert!(plan.executed);
    rig.wait_caught_up(Duration::from_secs(10)).await;
    let report = rig.rep.verify(None).await.expect("verify");
    assert!(report.ok, "{report:#?}");

    // --since picks the first entry at or after the time.
    let plan = rig
        .rep
        .replay("r1", ReplayFrom::Since(u64::MAX), false)
        .await;
    assert!(plan.is_err(), "nothing after the end of time");
    let plan = rig
        .rep
        .replay("r1", ReplayFrom::Since(0), false)
        .await
        .expect("since 0");
    assert_eq!(plan.from, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_scanning_the_log_holds_no_other_command_of_its_target() {
    let rig = Rig::new(1, "sync", 1, 1.0).await;
    put_v(&rig, 10).await;
    rig.wait_caught_up(Duration::from_secs(10)).await;
    let calls = rig.fault("r1").calls();
    // The scan of a long log, made to last until the test lets it go.
    let hold = rig.rep.hold_replay_scans().await;
    let rep = rig.rep.clone();
    let replay = tokio::spawn(async move { rep.replay("r1", ReplayFrom::Seq(1), true).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!replay.is_finished(), "the replay's scan was not held");
    // The target's owner still takes commands meanwhile. (The bound is
    // a hang guard: before, these waited for the scan, here for ever.)
    let paused = tokio::time::timeout(Duration::from_secs(30), rig.rep.pause("r1"))
        .await
        .expect("a pause waited behind the replay's scan")
        .expect("pause");
    assert_eq!(paused, TargetState::Paused);
    let resumed = tokio::time::timeout(Duration::from_secs(30), rig.rep.resume("r1"))
        .await
        .expect("a resume waited behind the replay's scan")
        .expect("resume");
    assert_eq!(resumed, TargetState::Active);
    assert!(
        !replay.is_finished(),
        "the replay ended while its scan was held"
    );
    drop(hold);
    let plan = tokio::time::timeout(Duration::from_secs(30), replay)
        .await
        .expect("the replay did not end once its scan was let go")
        .expect("replay task")
        .expect("replay");
    assert!(plan.executed);
    assert_eq!((plan.from, plan.to, plan.entries), (1, 10, 10));
    // Executed: the cursor went back and r1 was written to again.
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert!(
        rig.fault("r1").calls() >= calls + 10,
        "the replay shipped nothing again"
    );
    assert!(rig.rep.verify(Some("r1")).await.expect("verify").ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_below_the_oldest_kept_entry_is_refused_with_a_resync_hint() {
    let rig = Rig::with_top(1, "sync", 1, 1.0, "retention_seconds = 0").await;
    put_v(&rig, 10).await;
    eventually("truncated", 5, || rig.rep.log().first() == 10).await;
    let err = rig
        .rep
        .replay("r1", ReplayFrom::Seq(3), true)
        .await
        .expect_err("truncated");
    let msg = err.to_string();
    assert!(
        msg.contains("truncated") && msg.contains("walship resync r1"),
        "{msg}"
    );
    assert_eq!(rig.cursor("r1"), 10, "a refused replay changes nothing");
    assert!(
        rig.rep
            .replay("nope", ReplayFrom::Seq(10), false)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_corrupt_entry_with_its_seq() {
    let rig = Rig::new(1, "sync", 1, 1.0).await;
    for i in 1..=5 {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
            .await
            .expect("put");
    }
    let rig = rig.corrupt_entry(3, |v| v[4] ^= 0xff).await;
    let report = rig.rep.verify(None).await.expect("verify");
    assert!(!report.ok);
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].seq, 3);
    let rows = walship::log::inspect(rig.rep.log().storage().as_ref(), 1, 10).expect("inspect");
    assert_eq!(
        rows.iter()
            .filter(|r| !r.crc_ok)
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![3]
    );
}

/// Offsets are persisted with the log and the cursors, so a reopen places
/// every cursor without scanning; what it reports must equal a scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_bytes_and_retained_bytes_are_exact_across_restarts_and_truncation() {
    let mut rig = Rig::with_top(2, "async", 1, 1.0, "retention_seconds = 0").await;
    rig.rep.pause("r2").await.expect("pause");
    for round in 0..3 {
        for i in 0..40 {
            rig.rep
                .put(
                    &key(&format!("k{round}/{i}")),
                    Bytes::from(vec![b'x'; 10 + i * 7]),
                    None,
                )
                .await
                .expect("put");
        }
        if round == 1 {
            // Let r1 and the primary pass everything, then resume r2 for a
            // while so truncation moves the first kept entry.
            tokio::time::sleep(Duration::from_millis(300)).await;
            rig.rep.resume("r2").await.expect("resume");
            // Until truncation has moved the first kept entry (polled: a
            // loaded machine may take a while).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while rig.rep.log().first() <= 1 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            rig.rep.pause("r2").await.expect("pause");
        }
        rig = rig.restart().await;
        let report = rig.rep.cursors().expect("cursors");
        let storage = rig.rep.log().storage().clone();
        for t in &report.targets {
            let scanned =
                walship::log::lag_of(storage.as_ref(), t.cursor, report.head).expect("lag by scan");
            assert_eq!(t.lag_bytes, scanned.bytes, "round {round}: {}", t.name);
            assert_eq!(t.lag_entries, scanned.entries, "round {round}: {}", t.name);
        }
        let (first, head) = storage.bounds().expect("bounds").expect("entries");
        let kept = walship::log::lag_of(storage.as_ref(), first - 1, head)
            .expect("scan")
            .bytes;
        assert_eq!(rig.rep.log().retained_bytes(), kept, "round {round}");
        if round == 1 {
            assert!(first > 1, "truncation ran: first {first}");
        }
    }
}

/// The target state machine: a resync is left only by its own hand-over.
/// A pause or resume during a resync is refused (409, naming the resync)
/// and changes nothing; the hand-over then makes the target active and it
/// ships from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_during_a_resync_are_refused_and_the_hand_over_stands() {
    let rig = Rig::new(1, "async", 1, 5.0).await;
    rig.put_keys(10).await;
    // r1's copy of k3 differs, so the resync copies it; that put is held.
    rig.stores["r1"]
        .put(&object_store::path::Path::from("k3"), "edited".into())
        .await
        .expect("edit");
    rig.fault("r1").hold_puts("k3");
    rig.rep.start_resync("r1").await.expect("resync");
    let state = |rig: &Rig| {
        rig.rep
            .cursors()
            .expect("cursors")
            .targets
            .into_iter()
            .find(|t| t.name == "r1")
            .expect("r1")
            .state
    };
    assert_eq!(state(&rig), TargetState::Syncing);
    for (what, r) in [
        ("pause", rig.rep.pause("r1").await),
        ("resume", rig.rep.resume("r1").await),
    ] {
        match r {
            Err(walship::Error::StateRefused(why)) => {
                assert!(why.contains("being resynced"), "{what}: {why}")
            }
            other => panic!("{what} during a resync: {other:?}"),
        }
        assert_eq!(
            state(&rig),
            TargetState::Syncing,
            "{what} changed the state"
        );
    }
    rig.fault("r1").release_puts();
    eventually("resync done", 10, || state(&rig) == TargetState::Active).await;
    rig.rep
        .put(&key("after"), Bytes::from("a"), None)
        .await
        .expect("put");
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(rig.object("r1", "k3").await, Some(Bytes::from("v3")));
    assert_eq!(rig.object("r1", "after").await, Some(Bytes::from("a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_persisted_record_is_damaged_is_resynced_when_walship_opens() {
    let rig = Rig::new(2, "sync", 2, 2.0).await;
    rig.put_keys(10).await;
    // r1 lost an object meanwhile: only a copy from the primary brings it
    // back without a write.
    rig.stores["r1"]
        .delete(&object_store::path::Path::from("k3"))
        .await
        .expect("delete");
    let rig = rig
        .edit_db(|db| {
            let records = db.open_tree("cursors").expect("tree");
            let mut bytes = records
                .get("r1")
                .expect("read")
                .expect("r1's record")
                .to_vec();
            bytes[4] ^= 0x20;
            records.insert("r1", bytes).expect("write");
        })
        .await;
    assert_eq!(rig.cursor("r2"), 10, "r2's record is read as it was");
    eventually("r1 resynced and active", 20, || {
        let c = rig.rep.cursors().expect("cursors");
        c.targets[1].state == TargetState::Active && c.targets[1].cursor == 10
    })
    .await;
    for i in 0..10 {
        assert_eq!(
            rig.object("r1", &format!("k{i}")).await.as_deref(),
            Some(format!("v{i}").as_bytes()),
            "k{i} on r1"
        );
    }
    // Its record is whole again: a restart reads it as it stands.
    let rig = rig.restart().await;
    assert_eq!(rig.cursor("r1"), 10);
}

/// Flips a bit in `name`'s persisted record, as a bad disk would.
fn flip_record(db: &sled::Db, name: &str) {
    let records = db.open_tree("cursors").expect("tree");
    let mut bytes = records.get(name).expect("read").expect("a record").to_vec();
    bytes[4] ^= 0x20;
    records.insert(name, bytes).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_persisted_record_is_damaged_gets_the_kept_log_again_and_writes_go_on() {
    let rig = Rig::with_top(1, "sync", 1, 2.0, "retention_seconds = 0").await;
    put_v(&rig, 20).await;
    eventually("truncated", 5, || rig.rep.log().first() == 20).await;
    let rig = rig.edit_db(|db| flip_record(db, "p")).await;
    let ack = rig
        .rep
        .put(&key("after"), Bytes::from("a"), None)
        .await
        .expect("a sync write after the open");
    assert_eq!(ack.seq, 21);
    let c = rig.rep.cursors().expect("cursors");
    assert_eq!(
        (
            c.targets[0].state,
            c.targets[0].cursor,
            c.targets[0].error.clone()
        ),
        (TargetState::Active, 21, None)
    );
    assert_eq!(rig.object("p", "after").await, Some(Bytes::from("a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_opened_from_a_damaged_record_still_has_a_later_wipe_noticed() {
    let rig = Rig::with(
        1,
        "sync",
        1,
        2.0,
        "",
        "health_check_interval_seconds = 0.1\nenable_failover = false",
    )
    .await;
    rig.put_keys(10).await;
    let marker = object_store::path::Path::from(".walship/target.json");
    for _ in 0..250 {
        if rig.stores["r1"].head(&marker).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rig = rig.edit_db(|db| flip_record(db, "r1")).await;
    eventually("r1 resynced", 20, || {
        let c = rig.rep.cursors().expect("cursors");
        c.targets[1].state == TargetState::Active && c.targets[1].cursor == 10
    })
    .await;
    // Probes see the marker meanwhile; then r1 is wiped, marker and all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    use futures::TryStreamExt;
    use object_store::ObjectStore as _;
    let all: Vec<_> = rig.stores["r1"]
        .list(None)
        .try_collect()
        .await
        .expect("list");
    for m in all {
        rig.stores["r1"].delete(&m.location).await.expect("delete");
    }
    for _ in 0..500 {
        if rig.object("r1", "k3").await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the wipe of r1 was not noticed: k3 is still missing after 10 s");
}

/// A configured primary wiped and failed over from is resynced from the
/// replica that took its place; a restart during that copy (its marker
/// already back) makes it the acting primary again at open, where it
/// cannot be resynced. It must not be taken for whole: not read from, not
/// the source of another replica's resync begun at open (r2's, cut short
/// too), not failed back to; the first probe finds its copy unfinished,
/// fails over again and copies it, so both end holding every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarted_during_its_resync_is_not_served_half_copied() {
    use futures::TryStreamExt;
    use object_store::ObjectStore as _;
    let rig = Rig::with(2, "sync", 1, 2.0, "", "health_check_interval_seconds = 0.1").await;
    rig.put_keys(10).await;
    let marker = object_store::path::Path::from(".walship/target.json");
    for _ in 0..250 {
        if rig.stores["p"].head(&marker).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // p is wiped; its copy from r1 is held on k3 (the marker goes through).
    rig.fault("p").hold_puts("k3");
    let all: Vec<_> = rig.stores["p"]
        .list(None)
        .try_collect()
        .await
        .expect("list");
    for m in all {
        rig.stores["p"].delete(&m.location).await.expect("delete");
    }
    eventually("p syncing from r1, marked again", 20, || {
        let c = rig.rep.cursors().expect("cursors");
        c.targets[0].state == TargetState::Syncing && rig.fault("p").holding() == 1
    })
    .await;
    for _ in 0..250 {
        if rig.stores["p"].head(&marker).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        rig.stores["p"].head(&marker).await.is_ok(),
        "p's marker is back"
    );
    // r2's resync is under way too (its k5 differs; that put is held): at
    // the restart it begins again at open, and must not copy from p.
    rig.stores["r2"]
        .put(&"k5".into(), "edited".into())
        .await
        .expect("edit");
    rig.fault("r2").hold_puts("k5");
    rig.rep.start_resync("r2").await.expect("resync r2");
    eventually("r2's copy held", 10, || rig.fault("r2").holding() == 1).await;
    // The held puts fail (so the shutdown does not wait on them), and the
    // sidecar restarts with both copies unfinished.
    for t in ["p", "r2"] {
        rig.fault(t).set(Fault::Fail);
        rig.fault(t).release_puts();
    }
    let rig = rig.restart().await;
    rig.wait_all_active().await;
    rig.wait_caught_up(Duration::from_secs(20)).await;
    for _ in 0..500 {
        let c = rig.rep.cursors().expect("cursors");
        if c.targets.iter().all(|t| t.state == TargetState::Active) {
            let mut whole = true;
            for i in 0..10 {
                let k = format!("k{i}");
                whole &= rig.object("p", &k).await.is_some();
                whole &= rig.object("r2", &k).await == Some(Bytes::from(format!("v{i}")));
            }
            if whole {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut missing = Vec::new();
    for t in ["p", "r2"] {
        for i in 0..10 {
            let k = format!("k{i}");
            if rig.object(t, &k).await != Some(Bytes::from(format!("v{i}"))) {
                missing.push(format!("{t}/{k}"));
            }
        }
    }
    panic!("a half-copied primary was served or copied from: {missing:?} wrong after 10 s");
}

/// A cursor is persisted now and then while it moves, and once more soon
/// after it stops: a target idle after a burst of writes does not keep an
/// old persisted cursor (which a restart would ship again from) until the
/// next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_that_stops_moving_is_persisted_soon_after() {
    let rig = Rig::new(1, "sync", 1, 5.0).await;
    let storage = rig.rep.log().storage().clone();
    let saved = |name: &str| {
        storage
            .target(name)
            .expect("reading a target record")
            .map(|r| r.cursor)
    };
    let all_at = |head: u64| ["p", "r1"].iter().all(|n| saved(n) == Some(head));
    rig.put_keys(1).await;
    // The first probe marks each target, writing its record as it stands.
    eventually("every target marked", 5, || all_at(1)).await;
    for i in 0..20 {
        rig.rep
            .put(&key(&format!("burst/{i}")), Bytes::from("x"), None)
            .await
            .expect("put");
    }
    let head = rig.rep.log().head();
    eventually("every persisted cursor at the head", 3, || all_at(head)).await;
}

/// Truncation never leaves a persisted cursor below the oldest kept entry:
/// the cursors it goes by are persisted before the entries go (sled keeps
/// writes in order), so a crash after a truncation cannot find a target
/// cut off from the log (which would resync it) where it was not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_persists_the_cursors_it_goes_by_first() {
    let rig = Rig::with_top(1, "sync", 1, 1.0, "retention_seconds = 0").await;
    let storage = rig.rep.log().storage().clone();
    let mut truncations = 0;
    let mut last_first = rig.rep.log().first();
    let mut i = 0;
    // Maintenance truncates every 500 ms: 2000 writes 10 ms apart see many.
    while truncations < 5 && i < 2000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        rig.rep
            .put(&key(&format!("t/{i}")), Bytes::from("v"), None)
            .await
            .expect("put");
        i += 1;
        let first = rig.rep.log().first();
        if first == last_first {
            continue;
        }
        truncations += 1;
        last_first = first;
        for name in ["p", "r1"] {
            let saved = storage
                .target(name)
                .expect("reading a target record")
                .map_or(0, |r| r.cursor);
            assert!(
                saved + 1 >= first,
                "{name}'s persisted cursor {saved} is below the oldest kept entry {first}"
            );
        }
    }
    assert!(
        truncations >= 5,
        "only {truncations} truncations in {i} writes"
    );
}
