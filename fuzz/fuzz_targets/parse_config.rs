//! Arbitrary text as a config: never panics; accepted configs have no problems.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = walship::Config::from_toml(text) {
            assert!(cfg.problems().is_empty());
        }
    }
});
