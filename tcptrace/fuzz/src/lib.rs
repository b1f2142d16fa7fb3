//! The pure modules of tcptrace that the fuzz targets exercise, compiled from the tool's own
//! sources (`tcptrace` is a binary crate with no library to link against): the ring-buffer
//! record decoder and the recording reader with what they depend on. Nothing here is
//! fuzz-specific; the targets in `fuzz_targets/` are.
#![allow(dead_code, unfulfilled_lint_expectations, unused_imports)]

#[path = "../../src/binrec.rs"]
pub mod binrec;
#[path = "../../src/cgroups.rs"]
pub mod cgroups;
#[path = "../../src/cli.rs"]
pub mod cli;
#[path = "../../src/clock.rs"]
pub mod clock;
#[path = "../../src/config.rs"]
pub mod config;
#[path = "../../src/counters.rs"]
pub mod counters;
#[path = "../../src/decode.rs"]
pub mod decode;
#[path = "../../src/host.rs"]
pub mod host;
#[path = "../../src/intern.rs"]
pub mod intern;
#[path = "../../src/listeners.rs"]
pub mod listeners;
#[path = "../../src/outfile.rs"]
pub mod outfile;
#[path = "../../src/record.rs"]
pub mod record;
#[path = "../../src/sink.rs"]
pub mod sink;
#[path = "../../src/track.rs"]
pub mod track;
