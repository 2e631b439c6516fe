//! A test that cannot run here (no emulator, no tool, no root) says so:
//! on its output and in `target/tmp/walship-skipped.txt`, which `.ci/run`
//! counts and prints (and in CI, where everything is installed, a skip is
//! a failure instead).
#![allow(dead_code)]

/// Fails in CI; elsewhere prints `SKIPPED: why` and records it.
pub fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "in CI every tool must be there: {why}"
    );
    println!("SKIPPED: {why}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("walship-skipped.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write;
        let _ = writeln!(f, "{why}");
    }
}
