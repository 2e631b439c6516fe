//! Arbitrary strings as keys: never panics; accepted keys follow the rules
//! and map to an object path with the same segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walship::key::Key;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = Key::parse(s) {
            assert!(!s.is_empty() && s.len() <= 1024);
            assert!(!s.starts_with('/'));
            assert!(s.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
            assert!(!s.chars().any(char::is_control));
            assert_eq!(k.object_path().parts().count(), s.split('/').count());
        }
    }
});
