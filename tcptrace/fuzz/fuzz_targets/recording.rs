//! The recording reader on arbitrary file contents, binary or JSON Lines (told by the first
//! bytes, as `report` does), with and without --allow-truncated: it must never panic, hang
//! or allocate without bound, and every error must name the file and a line or byte offset.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tcptrace_fuzz::record::{self, RecordingError};

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzzed.rec");
    // One reading per input (half of them with --allow-truncated), for throughput.
    let allow = data.len() % 2 == 0;
    {
        if let Err(e) = record::replay_bytes(name, data, allow, |_| {}) {
            let msg = e.to_string();
            let placed = msg.starts_with("fuzzed.rec:")
                && (msg.contains(": byte ")
                    || msg["fuzzed.rec:".len()..].starts_with(|c: char| c.is_ascii_digit())
                    || matches!(e, RecordingError::Empty { .. }));
            assert!(placed, "the error does not say where: {msg}");
        }
    }
});
