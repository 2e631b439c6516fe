//! Model-based test: random sequences of puts, deletes, target failures and
//! heals, pauses and resumes, and crash-and-reopen, applied to the real log
//! and replicator over in-memory and fault-injecting stores, checked against
//! a plain model after every step (fixed seed; failures print the shrunk
//! case). The invariants, as in the README:
//!
//! - every acknowledged seq is in the log after any crash; seqs are gapless;
//! - per target, cursor ≤ head, and the target never holds an older version
//!   of a key than the newest entry at or below its cursor;
//! - after faults heal and the log drains, every target equals the model.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Rig, key};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use walship::codec::Op as LogOp;
use walship::faults::Fault;

#[derive(Debug, Clone)]
enum Step {
    Put(u8),
    Delete(u8),
    Fail(u8),
    Heal(u8),
    Pause(u8),
    Resume(u8),
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..4).prop_map(Step::Put),
        2 => (0u8..4).prop_map(Step::Delete),
        1 => (0u8..2).prop_map(Step::Fail),
        1 => (0u8..2).prop_map(Step::Heal),
        1 => (0u8..2).prop_map(Step::Pause),
        1 => (0u8..2).prop_map(Step::Resume),
        1 => Just(Step::Crash),
    ]
}

const REPLICAS: [&str; 2] = ["r1", "r2"];

/// Per key and target: the target's state is at least as new as the newest
/// entry at or below the target's cursor.
async fn check_no_older_version(rig: &Rig) -> Result<(), TestCaseError> {
    let report = rig
        .rep
        .cursors()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let batch = rig.rep.log().read(1, usize::MAX, usize::MAX);
    prop_assert!(batch.error.is_none(), "log unreadable: {:?}", batch.error);
    let entries = batch.entries;
    prop_assert_eq!(entries.len() as u64, report.head, "seqs are gapless from 1");
    for t in &report.targets {
        prop_assert!(t.cursor <= report.head);
        for k in 0..4u8 {
            let name = format!("k{k}");
            let versions: Vec<_> = entries.iter().filter(|e| e.key == name).collect();
            let Some(base) = versions.iter().rposition(|e| e.seq <= t.cursor) else {
                continue;
            };
            let allowed: Vec<Option<Bytes>> = versions[base..]
                .iter()
                .map(|e| (e.op == LogOp::Put).then(|| e.value.clone()))
                .collect();
            let got = rig.object(&t.name, &name).await;
            prop_assert!(
                allowed.contains(&got),
                "{} holds {:?} for {}, older than seq {}",
                t.name,
                got,
                name,
                versions[base].seq
            );
        }
    }
    Ok(())
}

async fn run_case(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut rig = Rig::with(
        2,
        "async",
        1,
        0.3,
        "",
        "enable_failover = false\nhealth_check_interval_seconds = 0.2",
    )
    .await;
    let mut model: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    let mut acked: Vec<u64> = Vec::new();
    let mut paused = [false; 2];
    for (n, s) in steps.into_iter().enumerate() {
        match s {
            Step::Put(k) => {
                let v = Bytes::from(format!("v{n}"));
                let ack = rig.rep.put(&key(&format!("k{k}")), v.clone(), None).await;
                let ack = ack.map_err(|e| TestCaseError::fail(format!("put: {e}")))?;
                acked.push(ack.seq);
                model.insert(format!("k{k}"), Some(v));
            }
            Step::Delete(k) => {
                let ack = rig.rep.delete(&key(&format!("k{k}")), None).await;
                let ack = ack.map_err(|e| TestCaseError::fail(format!("delete: {e}")))?;
                acked.push(ack.seq);
                model.insert(format!("k{k}"), None);
            }
            Step::Fail(t) => rig.fault(REPLICAS[t as usize]).set(Fault::Fail),
            Step::Heal(t) => rig.fault(REPLICAS[t as usize]).heal(),
            Step::Pause(t) => {
                rig.rep
                    .pause(REPLICAS[t as usize])
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                paused[t as usize] = true;
            }
            Step::Resume(t) => {
                rig.rep
                    .resume(REPLICAS[t as usize])
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                paused[t as usize] = false;
            }
            Step::Crash => {
                let faults: Vec<_> = REPLICAS.iter().map(|r| rig.fault(r).current()).collect();
                rig = rig.restart().await;
                for (r, f) in REPLICAS.iter().zip(faults) {
                    rig.fault(r).set(f);
                }
                let head = rig.rep.log().head();
                prop_assert!(
                    acked.iter().all(|s| *s <= head),
                    "an acknowledged seq was lost across a crash"
                );
            }
        }
        check_no_older_version(&rig).await?;
    }
    for (i, r) in REPLICAS.iter().enumerate() {
        rig.fault(r).heal();
        if paused[i] {
            rig.rep
                .resume(r)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
    rig.wait_caught_up(Duration::from_secs(15)).await;
    for t in ["p", "r1", "r2"] {
        for (k, v) in &model {
            prop_assert_eq!(&rig.object(t, k).await, v, "{} {}", t, k);
        }
    }
    Ok(())
}

#[test]
fn random_operation_sequences_keep_every_invariant() {
    let config = Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    };
    let seed = [7u8; 32];
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runner.run(&proptest::collection::vec(step(), 1..30), |steps| {
        rt.block_on(run_case(steps))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
