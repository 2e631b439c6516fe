//! SPEC "Health, failover, reads" and "Metrics": failover and failback,
//! read freshness and preferences, pause/resume, counters that are true.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{Rig, key};
use walship::config::ReadPreference;
use walship::faults::Fault;
use walship::status::TargetState;

/// Health checks every 100 ms, two failed requests make a target unhealthy.
const FAST_HEALTH: &str = "health_check_interval_seconds = 0.1";

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 6 s: {what}");
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_fails_over_and_fails_back_once_caught_up() {
    let rig = Rig::with(2, "async", 1, 0.3, "", FAST_HEALTH).await;
    for i in 0..10 {
        rig.rep
            .put(&key(&format!("before/{i}")), Bytes::from("v"), None)
            .await
            .expect("put");
    }
    rig.fault("p").set(Fault::Hang);
    // Within a few health intervals a replica is acting primary...
    eventually("failover", || rig.rep.acting_primary_name() != "p").await;
    let acting = rig.rep.acting_primary_name().to_string();
    assert!(acting == "r1" || acting == "r2");
    // ... and writes are acknowledged again, by it.
    let mut acked = 0;
    for i in 0..20 {
        let ack = rig
            .rep
            .put(
                &key(&format!("during/{i}")),
                Bytes::from(format!("d{i}")),
                None,
            )
            .await
            .expect("acknowledged while the primary hangs");
        assert!(ack.acked_by.contains(&acting), "{ack:?}");
        acked += 1;
    }
    assert_eq!(acked, 20);
    // Reads with the primary preference follow the acting primary.
    let read = rig
        .rep
        .get(&key("during/3"), Some(ReadPreference::Primary))
        .await
        .expect("read");
    assert_eq!(read.served_by, acting);
    assert_eq!(read.found, Some(Bytes::from("d3")));
    let status = rig.rep.status().expect("status");
    assert_eq!(status.failover.acting_primary, acting);
    assert_eq!(status.failover.failovers, 1);
    assert_eq!(status.metrics.failovers, 1);
    let p_row = status.targets.iter().find(|t| t.name == "p").expect("p");
    assert_eq!(
        serde_json::to_value(p_row.health).expect("json"),
        "unhealthy"
    );
    assert_eq!(serde_json::to_value(p_row.role).expect("json"), "replica");

    // Heal: the old primary catches up from the log and takes its place back.
    rig.fault("p").heal();
    eventually("failback", || rig.rep.acting_primary_name() == "p").await;
    rig.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..20 {
        assert_eq!(
            rig.object("p", &format!("during/{i}")).await,
            Some(Bytes::from(format!("d{i}")))
        );
    }
    let status = rig.rep.status().expect("status");
    assert_eq!(
        (status.failover.failovers, status.failover.failbacks),
        (1, 1)
    );
    let text = rig.rep.metrics_text();
    assert_eq!(
        metric(&text, "walship_failovers_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "walship_failbacks_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failover_to_a_replica_missing_acknowledged_writes() {
    let rig = Rig::with(1, "async", 1, 0.3, "", FAST_HEALTH).await;
    rig.fault("r1").set(Fault::Fail);
    for i in 0..5 {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from("v"), None)
            .await
            .expect("put");
    }
    rig.fault("p").set(Fault::Hang);
    tokio::time::sleep(Duration::from_millis(800)).await;
    // r1 is unhealthy and behind: it must not become acting primary.
    assert_eq!(rig.rep.acting_primary_name(), "p");
    // Once r1 heals it catches up from the log, and only then takes over.
    rig.fault("r1").heal();
    eventually("failover after catch-up", || {
        rig.rep.acting_primary_name() == "r1"
    })
    .await;
    for i in 0..5 {
        assert!(
            rig.object("r1", &format!("k{i}")).await.is_some(),
            "k{i} on r1 before promotion"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_back_in_time_and_skip_a_replica_while_it_is_behind() {
    let rig = Rig::with(
        2,
        "async",
        1,
        2.0,
        "",
        "health_check_interval_seconds = 0.05\nenable_failover = false",
    )
    .await;
    rig.fault("r2").set(Fault::Delay(Duration::from_millis(80)));
    let mut served_by_r2_while_behind = 0;
    let mut skipped_r2 = 0;
    for i in 0..40 {
        let value = Bytes::from(format!("v{i}"));
        let ack = rig
            .rep
            .put(&key("hot"), value.clone(), None)
            .await
            .expect("put");
        for pref in [
            ReadPreference::Primary,
            ReadPreference::Secondary,
            ReadPreference::Nearest,
            ReadPreference::Any,
        ] {
            let r2_behind = rig.cursor("r2") < ack.seq;
            let read = rig.rep.get(&key("hot"), Some(pref)).await.expect("read");
            assert_eq!(
                read.found.as_ref(),
                Some(&value),
                "{pref:?} returned an older version from {}",
                read.served_by
            );
            assert_eq!(read.seq, Some(ack.seq));
            if r2_behind {
                if read.served_by == "r2" {
                    served_by_r2_while_behind += 1;
                } else {
                    skipped_r2 += 1;
                }
            }
        }
    }
    assert!(
        skipped_r2 > 0,
        "the slow replica was never behind: the test proves nothing"
    );
    let _ = served_by_r2_while_behind; // r2 may catch up between the check and the read
    // Once caught up, r2 serves again.
    rig.fault("r2").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..60 {
        served.insert(
            rig.rep
                .get(&key("hot"), Some(ReadPreference::Any))
                .await
                .expect("read")
                .served_by,
        );
    }
    assert!(served.contains("r2"), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearest_picks_the_lowest_rtt_and_secondary_prefers_read_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = common::config_text(dir.path(), 3, "async", 1, 2.0)
        .replacen(
            "[replication]\n",
            "[replication]\nhealth_check_interval_seconds = 0.05\nenable_failover = false\n",
            1,
        )
        .replacen(
            "name = \"r3\"\n",
            "name = \"r3\"\nis_read_replica = true\n",
            1,
        );
    let cfg = walship::Config::from_toml(&text).expect("config");
    let rig = Rig::open(dir, cfg, Default::default()).await;
    rig.rep
        .put(&key("k"), Bytes::from("v"), None)
        .await
        .expect("put");
    rig.wait_caught_up(Duration::from_secs(5)).await;
    rig.fault("p").set(Fault::Delay(Duration::from_millis(60)));
    rig.fault("r1")
        .set(Fault::Delay(Duration::from_millis(120)));
    rig.fault("r3").set(Fault::Delay(Duration::from_millis(90)));
    // Let the moving averages settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..20 {
        let read = rig
            .rep
            .get(&key("k"), Some(ReadPreference::Nearest))
            .await
            .expect("read");
        assert_eq!(read.served_by, "r2", "r2 has no delay");
    }
    for _ in 0..20 {
        let read = rig
            .rep
            .get(&key("k"), Some(ReadPreference::Secondary))
            .await
            .expect("read");
        assert_eq!(read.served_by, "r3", "the read replica comes first");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_survives_restart_sync_skips_it_and_resume_replays() {
    let rig = Rig::new(2, "sync", 1, 0.5).await;
    rig.rep
        .put(&key("a"), Bytes::from("1"), None)
        .await
        .expect("put");
    assert_eq!(
        rig.rep.pause("r2").await.expect("pause"),
        TargetState::Paused
    );
    let err = rig
        .rep
        .pause("p")
        .await
        .expect_err("the acting primary cannot be paused");
    assert!(err.to_string().contains("acting primary"), "{err}");
    assert!(rig.rep.pause("nope").await.is_err());
    // sync no longer waits for r2.
    for i in 0..5 {
        let ack = rig
            .rep
            .put(&key(&format!("p{i}")), Bytes::from("x"), None)
            .await
            .expect("sync without r2");
        assert!(!ack.acked_by.contains(&"r2".to_string()));
    }
    let rig = rig.restart().await;
    let report = rig.rep.cursors().expect("cursors");
    let r2 = report.targets.iter().find(|t| t.name == "r2").expect("r2");
    assert_eq!(r2.state, TargetState::Paused, "pause is durable");
    assert_eq!(r2.cursor, 1);
    assert_eq!(r2.lag_entries, 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.cursor("r2"), 1, "a paused target does not ship");
    assert_eq!(rig.object("r2", "p0").await, None);
    rig.rep.resume("r2").await.expect("resume");
    rig.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..5 {
        assert_eq!(
            rig.object("r2", &format!("p{i}")).await,
            Some(Bytes::from("x"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_what_happened() {
    let rig = Rig::with(2, "async", 1, 0.5, "", "enable_failover = false").await;
    let n = 30u64;
    for i in 0..10 {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from("v"), None)
            .await
            .expect("put");
    }
    rig.wait_caught_up(Duration::from_secs(5)).await;
    // The marker's put is a write too: under load the first probe can
    // come after the fault, and fail once more than shipping does.
    rig.wait_marked("r1").await;
    rig.fault("r1").set(Fault::Fail);
    for i in 10..n {
        rig.rep
            .put(&key(&format!("k{i}")), Bytes::from("v"), None)
            .await
            .expect("put");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = rig.rep.metrics_text();
    assert_eq!(
        metric(&text, "walship_replication_success_total{target=\"r1\"}"),
        Some(10.0),
        "queued behind a down target is not a success"
    );
    assert!(metric(&text, "walship_lag_entries{target=\"r1\"}").unwrap_or(0.0) > 0.0);
    rig.fault("r1").heal();
    rig.wait_caught_up(Duration::from_secs(10)).await;
    let failed = rig.fault("r1").failed_writes() as f64;
    assert!(failed > 0.0);
    let text = rig.rep.metrics_text();
    assert_eq!(metric(&text, "walship_writes_total"), Some(n as f64));
    for t in ["p", "r1", "r2"] {
        assert_eq!(
            metric(
                &text,
                &format!("walship_replication_success_total{{target=\"{t}\"}}")
            ),
            Some(n as f64),
            "{t}: each entry once, a retry is not a second success\n{text}"
        );
        assert_eq!(
            metric(&text, &format!("walship_lag_entries{{target=\"{t}\"}}")),
            Some(0.0)
        );
        assert_eq!(
            metric(&text, &format!("walship_cursor_seq{{target=\"{t}\"}}")),
            Some(n as f64)
        );
    }
    assert_eq!(
        metric(&text, "walship_replication_failure_total{target=\"r1\"}"),
        Some(failed)
    );
    assert_eq!(
        metric(&text, "walship_replication_failure_total{target=\"r2\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&text, "walship_head_seq"), Some(n as f64));
    assert_eq!(
        metric(
            &text,
            "walship_target_health{target=\"r1\",health=\"healthy\"}"
        ),
        Some(1.0)
    );
    let status = rig.rep.status().expect("status");
    assert_eq!(status.metrics.writes_to_primary, n);
    assert_eq!(status.metrics.writes_replicated, 2 * n);
    assert_eq!(status.metrics.writes_failed, 0);
    let rate = status.metrics.success_rate["r1"];
    assert!(
        (rate - n as f64 / (n as f64 + failed)).abs() < 1e-9,
        "{rate}"
    );
    assert_eq!(status.metrics.success_rate["r2"], 1.0);
    assert_eq!(status.truncation_held_by, None);

    // A replay ships everything to r2 again: the counts stay true (each
    // entry once per target), and so does the average replication time.
    let before = status.metrics.average_replication_time_ms["r2"];
    rig.rep
        .replay("r2", walship::replicator::ReplayFrom::Seq(1), true)
        .await
        .expect("replay");
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.wait_caught_up(Duration::from_secs(10)).await;
    let text = rig.rep.metrics_text();
    assert_eq!(
        metric(&text, "walship_replication_success_total{target=\"r2\"}"),
        Some(n as f64),
        "a replay is not a second success\n{text}"
    );
    let status = rig.rep.status().expect("status");
    assert_eq!(status.metrics.writes_replicated, 2 * n);
    assert_eq!(status.metrics.average_replication_time_ms["r2"], before);
}

/// A store client that panics (through the fault wrapper, on every request
/// to the primary) is a failing target, not a dead sidecar: its health
/// probes count as failed, the manager keeps running, and a replica takes
/// over; the primary's shipper keeps being restarted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_store_panics_is_failed_over() {
    let rig = Rig::with(2, "async", 1, 0.3, "", FAST_HEALTH).await;
    for i in 0..5 {
        rig.rep
            .put(&key(&format!("before/{i}")), Bytes::from("v"), None)
            .await
            .expect("put");
    }
    rig.wait_caught_up(Duration::from_secs(10)).await;
    rig.fault("p").set(Fault::Panic);
    eventually("failover", || rig.rep.acting_primary_name() != "p").await;
    let ack = rig
        .rep
        .put(&key("during"), Bytes::from("d"), None)
        .await
        .expect("acknowledged by the new acting primary");
    assert!(!ack.acked_by.contains(&"p".to_string()), "{ack:?}");
    rig.fault("p").heal();
    rig.wait_caught_up(Duration::from_secs(20)).await;
    assert_eq!(rig.object("p", "during").await, Some(Bytes::from("d")));
}
