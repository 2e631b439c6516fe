//! Arbitrary bytes as a stored value of the log tree (a frame of records or
//! a lone record): never panics; anything accepted has a matching crc, and
//! its fields encode and decode back to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walship::codec::{decode, encode_with, stored_crc};
use walship::frame;

fuzz_target!(|data: &[u8]| {
    let seq = 1 + (data.len() as u64 % 7);
    let mut n = 0u64;
    for (i, rec) in frame::records(data).enumerate() {
        let Ok(rec) = rec else {
            assert!(frame::count(data).is_err());
            return;
        };
        n += 1;
        if let Ok(e) = decode(seq + i as u64, rec) {
            let len = rec.len();
            assert_eq!(stored_crc(rec), Some(crc32fast::hash(&rec[..len - 4])));
            let again = encode_with(e.seq, e.ts_ms, e.op, &e.key, &e.value, e.meta.as_deref());
            assert_eq!(decode(e.seq, &again).expect("re-encoded entry decodes"), e);
        }
    }
    assert_eq!(frame::count(data).ok(), Some(n));
});
