//! Arbitrary bytes as a stored record: never panics; anything accepted has
//! a matching crc, and its fields encode and decode back to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walship::codec::{decode, encode, stored_crc};

fuzz_target!(|data: &[u8]| {
    let seq = 1 + (data.len() as u64 % 7);
    if let Ok(e) = decode(seq, data) {
        let n = data.len();
        assert_eq!(stored_crc(data), Some(crc32fast::hash(&data[..n - 4])));
        let again = encode(e.seq, e.ts_ms, e.op, &e.key, &e.value);
        assert_eq!(decode(seq, &again).expect("re-encoded entry decodes"), e);
    }
});
