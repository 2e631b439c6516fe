//! Model-based test of the log and the replicator (the model and its
//! invariants are in `walship::model`): random sequences of puts, deletes,
//! target failures, pauses and crash-and-reopen, with a fixed seed; a
//! failure prints the shrunk sequence. `fuzz/fuzz_targets/model.rs` drives
//! the same model from fuzzer input.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use walship::model::{Step, check};

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

#[test]
fn random_operation_sequences_keep_every_invariant() {
    let config = Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runner.run(&proptest::collection::vec(step(), 1..30), |steps| {
        rt.block_on(check(&steps)).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
