//! SPEC guarantees 2 and 3: what each mode waits for, and the timeout answer.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{Rig, key};
use walship::faults::Fault;
use walship::{Error, Mode};

#[tokio::test]
async fn sync_waits_for_every_replica_and_times_out_with_seq_and_acks() {
    let rig = Rig::new(2, "sync", 1, 0.5).await;
    let ack = rig
        .rep
        .put(&key("a"), Bytes::from("1"), None)
        .await
        .expect("all healthy");
    assert_eq!(ack.mode, "sync");
    let mut by = ack.acked_by.clone();
    by.sort();
    assert_eq!(by, vec!["p", "r1", "r2"]);

    rig.fault("r2").set(Fault::Hang);
    let err = rig
        .rep
        .put(&key("a"), Bytes::from("2"), None)
        .await
        .expect_err("r2 hangs");
    match &err {
        Error::QuorumTimeout {
            seq,
            acked,
            required,
            acked_by,
        } => {
            assert_eq!(*seq, 2);
            assert_eq!((*acked, *required), (2, 3));
            assert!(acked_by.contains(&"p".to_string()) && acked_by.contains(&"r1".to_string()));
            assert!(!acked_by.contains(&"r2".to_string()));
        }
        other => panic!("expected a quorum timeout, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("durable locally at seq 2")
            && msg.contains("2 of 3")
            && msg.contains("will still be replicated"),
        "{msg}"
    );

    // Nothing is rolled back: once r2 heals it receives seq 2.
    rig.fault("r2").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(rig.object("r2", "a").await.as_deref(), Some(&b"2"[..]));
}

/// Guarantee 3: each target has its own deadline. With the primary and
/// one replica at 30 s and a hung replica at 0.5 s, a sync write answers
/// once the hung one's deadline passes, not after the others' 30 s.
#[tokio::test]
async fn a_sync_write_answers_at_the_hung_replicas_own_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = common::config_text(dir.path(), 2, "sync", 1, 30.0).replacen(
        "name = \"r1\"\nurl = \"memory://\"\nsync_timeout_seconds = 30\n",
        "name = \"r1\"\nurl = \"memory://\"\nsync_timeout_seconds = 0.5\n",
        1,
    );
    assert!(text.contains("sync_timeout_seconds = 0.5"), "{text}");
    let cfg = walship::Config::from_toml(&text).expect("config");
    let rig = Rig::open(dir, cfg, std::collections::HashMap::new()).await;
    rig.fault("r1").set(Fault::Hang);
    for round in 0..3 {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            rig.rep
                .put(&key("k"), Bytes::from(format!("v{round}")), None),
        )
        .await
        .expect("answered at r1's own 0.5 s deadline, not the others' 30 s");
        match answer {
            Err(Error::QuorumTimeout {
                seq,
                acked,
                required,
                acked_by,
            }) => {
                assert_eq!(seq, round + 1);
                if round == 0 {
                    // At r1's deadline the others had long acknowledged.
                    assert_eq!((acked, required), (2, 3));
                } else {
                    // Once r1 is unhealthy it is past its deadline from the
                    // start, and the write answers at once (guarantee 3).
                    assert!(acked <= 2 && required == 3, "{acked} of {required}");
                }
                assert!(!acked_by.contains(&"r1".to_string()), "{acked_by:?}");
            }
            other => panic!("expected a quorum timeout, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn semi_sync_returns_after_exactly_min_sync_replicas() {
    let rig = Rig::new(3, "semi_sync", 2, 1.0).await;
    rig.fault("r3").set(Fault::Hang);
    let ack = rig
        .rep
        .put(&key("k"), Bytes::from("v"), None)
        .await
        .expect("two of three replicas suffice");
    assert_eq!(ack.mode, "semi_sync");
    assert!(ack.acked_by.contains(&"p".into()));
    assert!(!ack.acked_by.contains(&"r3".into()));

    rig.fault("r2").set(Fault::Hang);
    let err = rig
        .rep
        .put(&key("k"), Bytes::from("w"), None)
        .await
        .expect_err("only one replica answers");
    assert!(
        matches!(
            err,
            Error::QuorumTimeout {
                acked: 2,
                required: 3,
                ..
            }
        ),
        "{err}"
    );
    rig.fault("r2").heal();
    rig.fault("r3").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn async_returns_after_the_durable_append_with_every_replica_hung() {
    let rig = Rig::new(2, "async", 1, 30.0).await;
    rig.fault("r1").set(Fault::Hang);
    rig.fault("r2").set(Fault::Hang);
    for i in 0..20 {
        let ack = rig
            .rep
            .put(&key(&format!("k{i}")), Bytes::from(format!("v{i}")), None)
            .await
            .expect("async does not wait for replicas");
        assert_eq!(ack.acked_by, vec!["p"]);
    }
    assert_eq!(rig.cursor("r1"), 0);
    // A per-write override makes the next one wait, and time out quickly
    // because the replicas' timeout is what bounds it: use a 1-replica rig.
    rig.fault("r1").heal();
    rig.fault("r2").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..20 {
        assert_eq!(
            rig.object("r2", &format!("k{i}")).await,
            Some(Bytes::from(format!("v{i}")))
        );
    }
}

#[tokio::test]
async fn per_write_mode_override() {
    let rig = Rig::new(1, "async", 1, 0.3).await;
    rig.fault("r1").set(Fault::Hang);
    rig.rep
        .put(&key("x"), Bytes::from("1"), Some(Mode::Async))
        .await
        .expect("async");
    let err = rig
        .rep
        .put(&key("x"), Bytes::from("2"), Some(Mode::Sync))
        .await
        .expect_err("sync override waits for r1");
    assert!(matches!(err, Error::QuorumTimeout { seq: 2, .. }), "{err}");
}

#[tokio::test]
async fn without_failover_a_failing_primary_blocks_every_mode() {
    let rig = Rig::with(1, "async", 1, 0.3, "", "enable_failover = false").await;
    rig.fault("p").set(Fault::Fail);
    let err = rig
        .rep
        .put(&key("x"), Bytes::from("1"), None)
        .await
        .expect_err("primary must ack");
    assert!(
        matches!(
            err,
            Error::QuorumTimeout {
                acked: 0,
                required: 1,
                ..
            }
        ),
        "{err}"
    );
    let report = rig.rep.cursors().expect("cursors");
    let p = &report.targets[0];
    assert_eq!(p.lag_entries, 1);
    assert!(
        p.error
            .as_deref()
            .unwrap_or("")
            .contains("injected failure"),
        "{p:?}"
    );
}

#[tokio::test]
async fn a_failing_replica_catches_up_to_head_in_order_once_healed() {
    let rig = Rig::new(1, "async", 1, 0.5).await;
    rig.fault("r1").set(Fault::Fail);
    for i in 0..100u32 {
        rig.rep
            .put(
                &key(&format!("k{}", i % 7)),
                Bytes::from(i.to_string()),
                None,
            )
            .await
            .expect("async");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = rig.rep.cursors().expect("cursors");
    let r1 = report.targets.iter().find(|t| t.name == "r1").expect("r1");
    assert_eq!(r1.cursor, 0);
    assert_eq!(r1.lag_entries, 100);
    assert!(r1.lag_bytes > 0);
    assert_eq!(serde_json::to_value(r1.health).expect("json"), "unhealthy");

    rig.fault("r1").record_puts();
    rig.fault("r1").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    // Every key ends on its newest version.
    for k in 0..7u32 {
        let newest = (0..100u32).filter(|i| i % 7 == k).max().expect("some");
        assert_eq!(
            rig.object("r1", &format!("k{k}")).await,
            Some(Bytes::from(newest.to_string()))
        );
    }
    let report = rig.rep.cursors().expect("cursors");
    let r1 = report.targets.iter().find(|t| t.name == "r1").expect("r1");
    assert_eq!((r1.lag_entries, r1.lag_bytes, r1.lag_ms), (0, 0, 0));
    assert_eq!(serde_json::to_value(r1.health).expect("json"), "healthy");
    assert!(r1.error.is_none());
    // Catch-up coalesced the backlog: 7 keys, not 100 puts.
    let puts = rig.fault("r1").recorded_puts();
    assert!(puts.len() <= 14, "{} puts for 7 keys", puts.len());
}
