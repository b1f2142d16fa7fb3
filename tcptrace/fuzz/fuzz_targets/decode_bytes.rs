//! The ring-buffer record decoder on arbitrary bytes: it must never panic, and whatever it
//! accepts must survive the recording format unchanged (binary encode, then decode).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace_fuzz::{binrec, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = decode::decode_bytes(data) {
        let mut rec = [0u8; binrec::RECORD_SIZE];
        binrec::encode(&ev, &mut rec);
        assert_eq!(
            binrec::decode(&rec),
            Ok(ev),
            "a decoded event does not round-trip"
        );
    }
});
