//! Arbitrary bytes as a stored record: never panics, and anything accepted
//! has a matching crc and re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walship::codec::{decode, encode, stored_crc};

fuzz_target!(|data: &[u8]| {
    let seq = 1 + (data.len() as u64 % 7);
    if let Ok(e) = decode(seq, data) {
        let n = data.len();
        assert_eq!(stored_crc(data), Some(crc32fast::hash(&data[..n - 4])));
        assert_eq!(encode(e.seq, e.ts_ms, e.op, &e.key, &e.value), data);
    }
});
