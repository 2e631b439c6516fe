//! SPEC guarantees 4 and 7 inside one process: restart resumes cursors,
//! a corrupt entry stops shipping naming its seq, a hung target is bounded.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{Rig, key};
use walship::faults::Fault;
use walship::status::TargetState;

#[tokio::test]
async fn restart_resumes_every_cursor_and_catches_up() {
    let rig = Rig::new(2, "async", 1, 0.5).await;
    rig.fault("r2").set(Fault::Fail);
    for i in 0..30 {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
            .await
            .expect("put");
    }
    rig.wait_until(|r| {
        r.targets
            .iter()
            .find(|t| t.name == "r1")
            .is_some_and(|t| t.cursor == 30)
    })
    .await;
    let rig = rig.restart().await;
    // r1's cursor was persisted; r2 starts where it was and catches up.
    assert_eq!(rig.cursor("r1"), 30);
    assert_eq!(rig.cursor("r2"), 0);
    rig.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..30 {
        assert_eq!(
            rig.object("r2", &format!("k{i}")).await,
            Some(Bytes::from(format!("v{i}")))
        );
    }
    // New writes continue the seq.
    assert_eq!(
        rig.rep
            .put(&key("after"), Bytes::from("x"), None)
            .await
            .expect("put")
            .seq,
        31
    );
}

#[tokio::test]
async fn a_corrupt_entry_stops_shipping_before_it_and_is_named() {
    let rig = Rig::new(1, "async", 1, 0.5).await;
    rig.fault("r1").set(Fault::Fail);
    for i in 1..=10 {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
            .await
            .expect("put");
    }
    // Flip one byte of entry 6 in the sled database, as a bad disk would.
    let rig = rig
        .corrupt_entry(6, |v| {
            let n = v.len();
            v[n - 6] ^= 0x20;
        })
        .await;
    rig.wait_until(|r| {
        r.targets
            .iter()
            .any(|t| t.name == "r1" && t.state == TargetState::Failed)
    })
    .await;
    let report = rig.rep.cursors().expect("cursors");
    let r1 = report.targets.iter().find(|t| t.name == "r1").expect("r1");
    assert_eq!(r1.cursor, 5, "entries before the corrupt one are shipped");
    let err = r1.error.as_deref().expect("error shown");
    assert!(err.contains("seq 6") && err.contains("crc32"), "{err}");
    let table = walship::cli::cursors_table(&report);
    assert!(
        table.contains("failed") && table.contains("seq 6"),
        "{table}"
    );
    for i in 1..=5 {
        assert!(rig.object("r1", &format!("k{i}")).await.is_some());
    }
    // Never ships wrong bytes, nor anything past the corrupt entry.
    for i in 6..=10 {
        assert_eq!(rig.object("r1", &format!("k{i}")).await, None, "k{i}");
    }
}

/// Guarantee 7 on a long backlog: a target catching up on more entries
/// than one read holds, one of them with a good crc32 but metadata that does
/// not decode, ships everything before it and then goes `failed` naming it,
/// instead of planning the stretch again forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_deep_in_a_long_backlog_fails_the_target_naming_it() {
    use futures::StreamExt;
    let rig = Rig::new(1, "async", 1, 5.0).await;
    rig.rep.pause("r1").await.expect("pause");
    let n = 6000u64;
    let bad = 5000u64;
    futures::stream::iter(1..=n)
        .map(|i| {
            let rep = &rig.rep;
            async move {
                rep.put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
                    .await
                    .expect("put");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    // Entry `bad` gets one byte of metadata that does not decode, and a crc32
    // that matches it: the frame is whole, only the entry is wrong.
    let rig = rig
        .corrupt_entry(bad, |v| {
            let body = v.len() - 4;
            assert_eq!(
                v[body - 1],
                0,
                "an entry without metadata ends in its empty length"
            );
            v.truncate(body - 1);
            v.extend_from_slice(&[1, 0xee]);
            let crc = crc32fast::hash(v);
            v.extend_from_slice(&crc.to_le_bytes());
        })
        .await;
    rig.rep.resume("r1").await.expect("resume");
    rig.wait_until(|r| {
        r.targets
            .iter()
            .any(|t| t.name == "r1" && t.state == TargetState::Failed)
    })
    .await;
    let report = rig.rep.cursors().expect("cursors");
    let r1 = report.targets.iter().find(|t| t.name == "r1").expect("r1");
    assert_eq!(
        r1.cursor,
        bad - 1,
        "entries before the corrupt one are shipped"
    );
    let err = r1.error.as_deref().expect("error shown");
    assert!(err.contains(&format!("seq {bad}")), "{err}");
    assert_eq!(
        rig.object("r1", &format!("k{}", bad - 1)).await,
        Some(Bytes::from(format!("v{}", bad - 1)))
    );
    assert_eq!(rig.object("r1", &format!("k{bad}")).await, None);
}

#[tokio::test]
async fn a_hung_request_is_bounded_by_sync_timeout_and_retried() {
    let rig = Rig::new(1, "async", 1, 0.2).await;
    rig.fault("r1").set(Fault::Hang);
    rig.rep
        .put(&key("a"), Bytes::from("1"), None)
        .await
        .expect("async");
    // The hung attempt times out and counts as a failure.
    rig.wait_until(|r| {
        r.targets.iter().any(|t| {
            t.name == "r1"
                && t.error
                    .as_deref()
                    .unwrap_or("")
                    .contains("sync_timeout_seconds")
        })
    })
    .await;
    rig.fault("r1").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(rig.object("r1", "a").await, Some(Bytes::from("1")));
}

/// A resync whose store client panics is a failed attempt, retried, not a
/// target left `syncing` for good: once the store stops panicking the copy
/// completes and the target ships again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_that_panics_is_retried_and_completes() {
    let rig = Rig::new(1, "async", 1, 5.0).await;
    for i in 0..5 {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
            .await
            .expect("async put");
    }
    rig.wait_caught_up(Duration::from_secs(10)).await;
    rig.fault("r1").set(Fault::Panic);
    rig.rep.start_resync("r1").await.expect("resync starts");
    rig.wait_until(|r| {
        r.targets
            .iter()
            .any(|t| t.name == "r1" && t.progress.as_deref().unwrap_or("").contains("panicked"))
    })
    .await;
    rig.fault("r1").heal();
    rig.wait_all_active().await;
    rig.rep
        .put(&key("after"), Bytes::from("a"), None)
        .await
        .expect("async put");
    rig.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..5 {
        assert_eq!(
            rig.object("r1", &format!("k{i}")).await,
            Some(Bytes::from(format!("v{i}"))),
            "k{i}"
        );
    }
    assert_eq!(rig.object("r1", "after").await, Some(Bytes::from("a")));
}

/// A shipper that panics (here a store client's bug, through the fault
/// wrapper) is restarted: its target does not silently stop. The panic is
/// the target's error until shipping succeeds again, and every write
/// reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipper_that_panics_is_restarted_and_its_target_catches_up() {
    let rig = Rig::new(1, "async", 1, 5.0).await;
    rig.fault("r1").set(Fault::Panic);
    for i in 0..3 {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
            .await
            .expect("async put");
    }
    rig.wait_until(|r| {
        r.targets
            .iter()
            .any(|t| t.name == "r1" && t.error.as_deref().unwrap_or("").contains("panicked"))
    })
    .await;
    // It keeps being restarted while the store panics, and ships once it
    // stops.
    let calls = rig.fault("r1").calls();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rig.fault("r1").calls() > calls,
        "the shipper was not restarted"
    );
    rig.fault("r1").heal();
    rig.rep
        .put(&key("after"), Bytes::from("a"), None)
        .await
        .expect("async put");
    rig.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..3 {
        assert_eq!(
            rig.object("r1", &format!("k{i}")).await,
            Some(Bytes::from(format!("v{i}"))),
            "k{i}"
        );
    }
    assert_eq!(rig.object("r1", "after").await, Some(Bytes::from("a")));
    let r = rig.rep.cursors().expect("cursors");
    let r1 = r.targets.iter().find(|t| t.name == "r1").expect("r1");
    assert_eq!(r1.error, None, "the error clears once shipping succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_panics_is_reported_and_the_targets_owner_goes_on() {
    let rig = Rig::new(1, "async", 1, 5.0).await;
    let err = rig
        .rep
        .panic_in_owner("r1")
        .await
        .expect_err("a command that panicked cannot answer Ok");
    let text = err.to_string();
    assert!(
        !matches!(err, walship::Error::ShuttingDown)
            && text.contains("r1")
            && text.contains("try again"),
        "the answer must say the command failed, not that walship is shutting down: {text}"
    );
    // The owner lives on: its commands are carried out and the shipper ships.
    assert_eq!(
        rig.rep.pause("r1").await.expect("pause"),
        TargetState::Paused
    );
    rig.rep
        .put(&key("while-paused"), Bytes::from("p"), None)
        .await
        .expect("async put");
    assert_eq!(
        rig.rep.resume("r1").await.expect("resume"),
        TargetState::Active
    );
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(
        rig.object("r1", "while-paused").await,
        Some(Bytes::from("p"))
    );
}
