//! The binary record decoder behind valid frames: the input is the decompressed payload of
//! one block, wrapped into a file with a correct checksum and end record, so mutations reach
//! the record fields rather than dying at the zstd checksum. Whatever decodes must encode
//! back to the same bytes (the format is canonical).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tcptrace_fuzz::{binrec, record};

fuzz_target!(|data: &[u8]| {
    let file = binrec::file_of_records(b"{\"version\":2,\"host\":\"h\",\"kernel\":\"k\",\"start\":\"s\",\"start_unix_ns\":0,\"clock\":{\"realtime_offset_ns\":0,\"utc_offset_secs\":0},\"filter\":{\"ipv4_only\":false,\"ipv6_only\":false,\"lports\":[],\"rports\":[],\"ports\":[]},\"tool_version\":\"0\"}", data);
    let mut events = Vec::new();
    let result = record::replay_bytes(Path::new("fuzzed.tcpt"), &file, false, |e| events.push(e));
    for (ev, raw) in events.iter().zip(data.chunks_exact(binrec::RECORD_SIZE)) {
        let mut rec = [0u8; binrec::RECORD_SIZE];
        binrec::encode(ev, &mut rec);
        assert_eq!(&rec[..], raw, "a record decoded but does not encode back");
    }
    if let Err(e) = result {
        assert!(e.to_string().starts_with("fuzzed.tcpt: byte "), "{e}");
    }
});
