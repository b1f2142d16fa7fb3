//! Recordings: the decoded event stream of a live run, saved so that `tcptrace report` can
//! replay it through the same pipeline later, on another machine, without root.
//!
//! Two formats hold the same facts, and [`replay`] tells them apart by their first bytes,
//! not by the file name:
//!
//! - binary (version 3, `binrec`; version 2 still reads): fixed-size records (with the socket's
//!   cgroup, namespace and close counters since version 3) in checksummed zstd frames, the default
//!   of `tcptrace record` because it is cheap to write and fast to read;
//! - JSON Lines (version 2; version 1 still reads; version 2 events may carry `cgroup_id`,
//!   `netns` and `close` counters, fields version 1 files simply lack), written when the name ends in `.jsonl` or `.jsonl.zst` (zstd),
//!   each line one externally tagged object, so log shippers and `jq` read it as is:
//!
//! ```text
//! {"tcptrace_recording":{"version":1,"host":..,"kernel":..,"start":..,"clock":{..},"filter":{..},"tool_version":..}}
//! {"ev":{"ts_ns":..,"sock":"0xffff..","family":"ipv4","local":"127.0.0.1:40000","remote":..,"kind":"state","old":"CLOSE","new":"SYN_SENT","owner":{..}}}
//! {"sample":{"ts_ns":..,"netns":..,"netns_name":"host","listeners":[..],"time_wait":{..},"netstat":{..}}}
//! ...
//! {"end":{"counters":{"lost":0,"submitted":..,"filtered":..},"undecodable":0,"events":..,"end_unix_ns":..}}
//! ```
//!
//! Events are written in the order the live pipeline's reorder stage released them, i.e. the
//! exact order the tracker consumed, and `report` feeds them to the tracker in that order
//! without a second reorder pass. Socket-table samples (`listeners::Sample`) are written
//! where the pipeline took them in among the events, and replay hands them back there (a
//! sample that did not dump TIME_WAIT has no `time_wait`; older recordings always have it). Replaying the raw arrival order through the reorder stage
//! would not be equivalent: which events a live run releases before a late one depends on
//! when the ring buffer went quiet (a flush), which the event times alone do not record.
//!
//! `tcptrace export` converts between the formats through [`replay`] and [`Recorder`].

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    binrec,
    clock::Clock,
    config::Filter,
    counters::Counters,
    decode::{CloseStats, Comm, Event, Family, Ident, Kind, Owner, OwnerSource, TcpState},
    listeners::Sample,
    sink::Sink,
    track::Fact,
};

/// The JSON Lines recording format version this build writes (and the newest it reads).
/// Version 2 added `sample` lines; version 1 files still read.
pub const VERSION: u32 = 2;
/// The oldest JSON Lines version this build reads.
pub const OLDEST_VERSION: u32 = 1;
/// The binary recording format version this build writes and reads.
pub const BINARY_VERSION: u32 = binrec::VERSION;

/// The two ways a recording can be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordingFormat {
    /// Fixed-size records in zstd frames (`binrec`).
    Binary,
    /// JSON Lines, zstd-compressed when `compressed`.
    Jsonl { compressed: bool },
}

impl RecordingFormat {
    /// The format a file name asks for: JSON Lines for `.jsonl` and `.jsonl.zst`, else binary.
    pub fn for_path(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".jsonl") {
            Self::Jsonl { compressed: false }
        } else if name.ends_with(".jsonl.zst") {
            Self::Jsonl { compressed: true }
        } else {
            Self::Binary
        }
    }
}

/// Refuses an output name that asks for something a recording is not (`run.csv`,
/// `run.json`, ...): any other name gets a binary recording, which under such a name would
/// mislead whoever opens it. The error names what the user probably wanted.
pub fn check_recording_name(path: &Path) -> Result<(), String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let wanted = if name.ends_with(".csv") {
        "CSV lines come from `tcptrace watch --format csv > FILE.csv`, or from a recording \
         with `tcptrace export RECORDING -o FILE.csv`"
    } else if name.ends_with(".json") {
        "a JSON summary comes from `--summary-json FILE.json`; a JSON Lines recording ends \
         in .jsonl or .jsonl.zst"
    } else if name.ends_with(".txt") || name.ends_with(".log") {
        "the text stream comes from `tcptrace watch > FILE`"
    } else if name.ends_with(".svg") || name.ends_with(".html") || name.ends_with(".png") {
        "charts come from a recording with `tcptrace report RECORDING --svg DIR`"
    } else if (name.ends_with(".zst") && !name.ends_with(".jsonl.zst")) || name.ends_with(".gz") {
        "a compressed JSON Lines recording ends in .jsonl.zst; the binary format is compressed \
         already"
    } else {
        return Ok(());
    };
    Err(format!(
        "{}: not a recording's name: a recording is binary (e.g. run.tcpt) or JSON Lines \
         (run.jsonl, run.jsonl.zst); {wanted}",
        path.display()
    ))
}

/// What was recorded, where and how: the first line of a JSON Lines recording, the
/// length-prefixed JSON after the magic number of a binary one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The file's format version: [`VERSION`] (JSON Lines) or [`BINARY_VERSION`].
    pub version: u32,
    pub host: String,
    pub kernel: String,
    /// Wall-clock start of the recording, RFC 3339 UTC (for people; `start_unix_ns` is exact).
    pub start: String,
    pub start_unix_ns: i64,
    /// Turns the events' monotonic timestamps into wall-clock time.
    pub clock: Clock,
    /// The kernel-side filter the run used.
    pub filter: Filter,
    pub tool_version: String,
}

/// The last line: the kernel's counters at the end, which the live summary prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trailer {
    pub counters: Counters,
    /// Ring-buffer records that did not decode during the live run.
    pub undecodable: u64,
    /// Event lines written (a check on the file's completeness).
    pub events: u64,
    pub end_unix_ns: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindName {
    State,
    SynRetransmit,
    SynackRetransmit,
    ResetReceived,
    ResetSent,
    ListenOverflow,
}

#[derive(Serialize, Deserialize)]
struct OwnerLine {
    tgid: u32,
    pid: u32,
    /// The task name when it is plain text padded with NULs, else `comm_hex` holds all 16 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comm_hex: Option<String>,
    source: OwnerSource,
}

#[derive(Serialize, Deserialize)]
struct EventLine {
    ts_ns: u64,
    /// Hex string: kernel addresses exceed what JSON tools that use doubles keep exactly.
    sock: String,
    family: Family,
    local: SocketAddr,
    remote: SocketAddr,
    kind: KindName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    old: Option<TcpState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new: Option<TcpState>,
    /// The state a RST was sent in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<TcpState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<OwnerLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    srtt_us: Option<u32>,
    /// The socket's cgroup v2 id, where the event carried it (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup_id: Option<u64>,
    /// The socket's network namespace inode, where the event carried it (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
    /// The socket's counters at its transition to CLOSE, as the kernel gave them (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    close: Option<CloseStats>,
}

#[derive(Serialize, Deserialize)]
enum Line {
    #[serde(rename = "tcptrace_recording")]
    Header(Header),
    #[serde(rename = "ev")]
    Event(EventLine),
    #[serde(rename = "sample")]
    Sample(Box<Sample>),
    #[serde(rename = "end")]
    End(Trailer),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Whether a comm round-trips through its text form (plain text, NUL padded).
fn comm_is_text(c: &Comm) -> bool {
    let end = c.0.iter().position(|&b| b == 0).unwrap_or(16);
    std::str::from_utf8(&c.0[..end]).is_ok() && c.0[end..].iter().all(|&b| b == 0)
}

fn comm_from_text(s: &str) -> Option<Comm> {
    if s.len() > 16 || s.as_bytes().contains(&0) {
        return None;
    }
    let mut b = [0u8; 16];
    b[..s.len()].copy_from_slice(s.as_bytes());
    Some(Comm(b))
}

impl EventLine {
    fn of(ev: &Event) -> Self {
        let (kind, old, new, state) = match ev.kind {
            Kind::State { old, new } => (KindName::State, Some(old), Some(new), None),
            Kind::SynRetransmit => (KindName::SynRetransmit, None, None, None),
            Kind::SynAckRetransmit => (KindName::SynackRetransmit, None, None, None),
            Kind::ResetReceived => (KindName::ResetReceived, None, None, None),
            Kind::ResetSent { state } => (KindName::ResetSent, None, None, state),
            Kind::ListenOverflow => (KindName::ListenOverflow, None, None, None),
        };
        let owner = ev.owner.map(|o| {
            let text = comm_is_text(&o.comm);
            OwnerLine {
                tgid: o.tgid,
                pid: o.pid,
                comm: text.then(|| o.comm.as_str().into_owned()),
                comm_hex: (!text).then(|| hex(&o.comm.0)),
                source: o.source,
            }
        });
        Self {
            ts_ns: ev.ts_ns,
            sock: format!("{:#x}", ev.sock),
            family: ev.family,
            local: ev.local,
            remote: ev.remote,
            kind,
            old,
            new,
            state,
            owner,
            srtt_us: ev.srtt_us,
            cgroup_id: ev.ident.cgroup,
            netns: ev.ident.netns,
            close: ev.close,
        }
    }

    fn to_event(&self) -> Result<Event, String> {
        let sock = self
            .sock
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("sock {:?} is not a 0x-prefixed hex number", self.sock))?;
        let v4 = self.family == Family::V4;
        if self.local.is_ipv4() != v4 || self.remote.is_ipv4() != v4 {
            return Err(format!(
                "addresses {} and {} do not match family {}",
                self.local,
                self.remote,
                self.family.name()
            ));
        }
        let kind = match self.kind {
            KindName::State => match (self.old, self.new) {
                (Some(old), Some(new)) => Kind::State { old, new },
                _ => return Err("a state event needs \"old\" and \"new\"".to_owned()),
            },
            KindName::SynRetransmit => Kind::SynRetransmit,
            KindName::SynackRetransmit => Kind::SynAckRetransmit,
            KindName::ResetReceived => Kind::ResetReceived,
            KindName::ResetSent => Kind::ResetSent { state: self.state },
            KindName::ListenOverflow => Kind::ListenOverflow,
        };
        let owner = match &self.owner {
            None => None,
            Some(o) => {
                let comm = match (&o.comm, &o.comm_hex) {
                    (Some(s), None) => comm_from_text(s)
                        .ok_or_else(|| format!("comm {s:?} is longer than 16 bytes"))?,
                    (None, Some(h)) => Comm(
                        unhex16(h).ok_or_else(|| format!("comm_hex {h:?} is not 16 hex bytes"))?,
                    ),
                    _ => return Err("an owner needs exactly one of comm and comm_hex".to_owned()),
                };
                Some(Owner {
                    tgid: o.tgid,
                    pid: o.pid,
                    comm,
                    source: o.source,
                })
            }
        };
        Ok(Event {
            ts_ns: self.ts_ns,
            sock,
            family: self.family,
            local: self.local,
            remote: self.remote,
            owner,
            kind,
            srtt_us: self.srtt_us,
            ident: Ident {
                cgroup: self.cgroup_id,
                netns: self.netns,
            },
            close: self.close,
        })
    }
}

/// What went wrong reading a recording; every variant names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The OS error is in the message, not a `source` (a source is printed again after
    /// the message in `main`'s chain, which said the OS error twice).
    #[error("{}: cannot read the recording: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: the file is empty: a tcptrace recording starts with a header line (was `tcptrace record` stopped before it started?)", path.display())]
    Empty { path: PathBuf },
    #[error("{}:1: not a tcptrace recording: {reason}", path.display())]
    NotRecording { path: PathBuf, reason: String },
    #[error("{}:1: recording format version {found} is not supported: this tcptrace ({}) reads versions {OLDEST_VERSION} to {VERSION}; use the tcptrace version that wrote it or a newer one", path.display(), env!("CARGO_PKG_VERSION"))]
    UnknownVersion { path: PathBuf, found: u64 },
    #[error("{}:{line}: corrupt line: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{}:{line}: the recording is truncated ({reason}) after {events} events; pass --allow-truncated to report on the valid part", path.display())]
    Truncated {
        path: PathBuf,
        line: u64,
        events: u64,
        reason: String,
    },
    #[error("{}:{line}: the end line says {expected} events but the file holds {found}", path.display())]
    CountMismatch {
        path: PathBuf,
        line: u64,
        expected: u64,
        found: u64,
    },
    #[error("{}:{line}: data after the end line", path.display())]
    AfterEnd { path: PathBuf, line: u64 },
    #[error("{}: byte {offset}{}: damaged recording: {reason}; if the file was copied, copy it again from the recording host ({} cannot report past damaged data)", path.display(), record_suffix(*.record), "`tcptrace report`")]
    CorruptAt {
        path: PathBuf,
        /// Byte offset in the file of the damaged block (or field).
        offset: u64,
        /// The record's index within that block, when one record is bad.
        record: Option<u64>,
        reason: String,
    },
    #[error("{}: byte {offset}: the recording is truncated ({reason}) after {events} events; pass --allow-truncated to report on the valid part", path.display())]
    TruncatedAt {
        path: PathBuf,
        offset: u64,
        events: u64,
        reason: String,
    },
    #[error("{}: byte 8: binary recording format version {found} is not supported: this tcptrace ({}) reads binary versions {} to {BINARY_VERSION} and JSON Lines versions {OLDEST_VERSION} to {VERSION}; use the tcptrace version that wrote it or a newer one", path.display(), env!("CARGO_PKG_VERSION"), binrec::OLDEST_VERSION)]
    UnknownBinaryVersion { path: PathBuf, found: u32 },
    #[error("{}: byte {offset}: the end record says {expected} events but the file holds {found}; if the file was copied, copy it again from the recording host", path.display())]
    CountMismatchAt {
        path: PathBuf,
        offset: u64,
        expected: u64,
        found: u64,
    },
}

fn record_suffix(record: Option<u64>) -> String {
    record.map_or_else(String::new, |i| format!(" (record {i} of the block there)"))
}

impl RecordingError {
    /// Where and why the file ended early, for a warning (`file:line` or `file: byte N`),
    /// when this is a truncation.
    pub fn truncation(&self) -> Option<(String, &str)> {
        match self {
            Self::Truncated {
                path, line, reason, ..
            } => Some((format!("{}:{line}", path.display()), reason)),
            Self::TruncatedAt {
                path,
                offset,
                reason,
                ..
            } => Some((format!("{}: byte {offset}", path.display()), reason)),
            _ => None,
        }
    }
}

/// What a replay found besides the events.
#[derive(Debug)]
pub struct Replay {
    pub header: Header,
    /// `None` when the file was truncated and that was allowed.
    pub trailer: Option<Trailer>,
    pub events: u64,
    /// Why the file ended early, when that was allowed.
    pub truncated: Option<RecordingError>,
}

impl Replay {
    /// When the recorded run ended, in event time (its end record's time through the
    /// header's clock); 0 for a truncated file, whose end is its last event.
    pub fn end_ns(&self) -> u64 {
        self.trailer
            .as_ref()
            .map_or(0, |t| self.header.clock.mono_ns(t.end_unix_ns))
    }
}

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Reads up to `N` bytes (fewer only at the end of the input).
fn peek<const N: usize>(r: &mut impl Read) -> io::Result<([u8; N], usize)> {
    let mut b = [0u8; N];
    let mut got = 0;
    while got < N {
        match r.read(&mut b[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((b, got))
}

/// An opened recording, its format told by its first bytes.
enum Source<'a> {
    Binary(Box<dyn Read + Send + 'a>),
    Lines(Box<dyn BufRead + 'a>),
}

/// Opens a recording: the binary magic number, a zstd frame (JSON Lines compressed, or a
/// binary recording someone compressed whole), or else JSON Lines.
fn open(path: &Path) -> Result<Source<'static>, RecordingError> {
    let file = File::open(path).map_err(|source| RecordingError::Io {
        path: path.to_owned(),
        error: source,
    })?;
    detect(path, BufReader::with_capacity(256 * 1024, file))
}

/// Tells the format of `file` by its first bytes (`path` only names it in errors).
fn detect<'a>(
    path: &Path,
    mut file: impl BufRead + Send + 'a,
) -> Result<Source<'a>, RecordingError> {
    let io_err = |source| RecordingError::Io {
        path: path.to_owned(),
        error: source,
    };
    let (head, n) = peek::<8>(&mut file).map_err(io_err)?;
    let head = &head[..n];
    let src = io::Cursor::new(head.to_vec()).chain(file);
    if head == binrec::MAGIC {
        return Ok(Source::Binary(Box::new(src)));
    }
    if !head.starts_with(&ZSTD_MAGIC) {
        return Ok(Source::Lines(Box::new(src)));
    }
    let mut z = zstd::stream::read::Decoder::new(src).map_err(io_err)?;
    let (head, n) = peek::<8>(&mut z).map_err(|e| RecordingError::CorruptAt {
        path: path.to_owned(),
        offset: 0,
        record: None,
        reason: format!("the file starts as zstd-compressed data that does not decompress ({e})"),
    })?;
    let head = &head[..n];
    let src = io::Cursor::new(head.to_vec()).chain(z);
    if head == binrec::MAGIC {
        // Offsets in errors then count bytes of the decompressed stream.
        return Ok(Source::Binary(Box::new(src)));
    }
    Ok(Source::Lines(Box::new(BufReader::with_capacity(
        256 * 1024,
        src,
    ))))
}

/// Reads only the header of a recording (either format).
pub fn read_header(path: &Path) -> Result<Header, RecordingError> {
    match open(path)? {
        Source::Binary(mut r) => binary_header(path, &mut r).map(|(h, _, _)| h),
        Source::Lines(mut r) => {
            let mut buf = Vec::new();
            r.read_until(b'\n', &mut buf)
                .map_err(|source| RecordingError::Io {
                    path: path.to_owned(),
                    error: source,
                })?;
            let text = String::from_utf8_lossy(&buf);
            if text.trim().is_empty() {
                return Err(RecordingError::Empty {
                    path: path.to_owned(),
                });
            }
            parse_header(path, text.trim_end())
        }
    }
}

/// Reads a recording and hands each event to `f` in recorded order. The format (binary or
/// JSON Lines, compressed or not) is told by the first bytes, never by the file name.
///
/// With `allow_truncated`, a file that ends early (no end line or record, a cut-off last
/// line or block, an incomplete zstd frame) yields its valid prefix and the reason in
/// [`Replay::truncated`]; damaged data followed by more data is an error either way.
pub fn replay(
    path: &Path,
    allow_truncated: bool,
    mut f: impl FnMut(Event),
) -> Result<Replay, RecordingError> {
    read_source(
        path,
        open(path)?,
        allow_truncated,
        true,
        &mut f,
        &mut |_| {},
    )
}

/// [`replay`], also handing each socket-table sample to `s`, in recorded order among the
/// events.
pub fn replay_with(
    path: &Path,
    allow_truncated: bool,
    f: impl FnMut(Event),
    s: impl FnMut(Sample),
) -> Result<Replay, RecordingError> {
    replay_opened(path, allow_truncated, || {}, f, s)
}

/// [`replay_with`], calling `opened` once the file is open and its format told from its
/// first bytes, before any record is read (a reader thread gives up its capabilities there).
pub fn replay_opened(
    path: &Path,
    allow_truncated: bool,
    opened: impl FnOnce(),
    mut f: impl FnMut(Event),
    mut s: impl FnMut(Sample),
) -> Result<Replay, RecordingError> {
    let src = open(path)?;
    opened();
    read_source(path, src, allow_truncated, true, &mut f, &mut s)
}

/// [`replay`] of bytes in memory, `name` standing for the file in errors (fuzzing, tests).
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "used by the tests and the fuzz targets in tcptrace/fuzz"
    )
)]
pub fn replay_bytes(
    name: &Path,
    bytes: &[u8],
    allow_truncated: bool,
    mut f: impl FnMut(Event),
) -> Result<Replay, RecordingError> {
    // Serial: small inputs gain nothing from the reader thread (the twin test in `binrec`
    // checks both read alike), and fuzzing's leak check sees no exiting thread.
    read_source(
        name,
        detect(name, bytes)?,
        allow_truncated,
        false,
        &mut f,
        &mut |_| {},
    )
}

fn read_source(
    path: &Path,
    src: Source<'_>,
    allow_truncated: bool,
    threaded: bool,
    f: &mut dyn FnMut(Event),
    s: &mut dyn FnMut(Sample),
) -> Result<Replay, RecordingError> {
    match src {
        Source::Binary(r) => read_binary(path, r, allow_truncated, threaded, f, s),
        Source::Lines(r) => read_lines(path, r, allow_truncated, f, s),
    }
}

/// Reads a binary recording's magic number, version and header; returns the header, the
/// file's format version and the offset where the blocks start.
fn binary_header(path: &Path, r: &mut impl Read) -> Result<(Header, u32, u64), RecordingError> {
    let p = || path.to_owned();
    let corrupt = |offset: u64, reason: String| RecordingError::CorruptAt {
        path: p(),
        offset,
        record: None,
        reason,
    };
    let (version, json) = binrec::read_header(r).map_err(|e| match e {
        binrec::ReadError::HeaderCut { offset } => corrupt(
            offset,
            "the file ends inside the header (was `tcptrace record` stopped before it started?)"
                .to_owned(),
        ),
        other => binary_error(path, other, 0),
    })?;
    let header: Header = serde_json::from_slice(&json).map_err(|e| {
        corrupt(
            16,
            format!("the header is not a tcptrace recording header: {e}"),
        )
    })?;
    if !(binrec::OLDEST_VERSION..=BINARY_VERSION).contains(&header.version) {
        return Err(corrupt(
            16,
            format!(
                "the header says version {} inside a version {BINARY_VERSION} file",
                header.version
            ),
        ));
    }
    Ok((header, version, 16 + json.len() as u64))
}

fn read_binary(
    path: &Path,
    mut r: impl Read + Send,
    allow_truncated: bool,
    threaded: bool,
    f: &mut dyn FnMut(Event),
    s: &mut dyn FnMut(Sample),
) -> Result<Replay, RecordingError> {
    let (header, version, start) = binary_header(path, &mut r)?;
    let (events, end) = if threaded {
        binrec::read_blocks_with(&mut r, version, start, f, s)
    } else {
        binrec::read_blocks_serial_with(&mut r, version, start, f, s)
    };
    match end {
        Ok(end) => Ok(Replay {
            header,
            trailer: Some(Trailer {
                counters: end.counters,
                undecodable: end.undecodable,
                events: end.events,
                end_unix_ns: end.end_unix_ns,
            }),
            events,
            truncated: None,
        }),
        Err(e @ (binrec::ReadError::Truncated { .. } | binrec::ReadError::Io { .. })) => {
            let err = binary_error(path, e, events);
            if !allow_truncated {
                return Err(err);
            }
            Ok(Replay {
                header,
                trailer: None,
                events,
                truncated: Some(err),
            })
        }
        Err(e) => Err(binary_error(path, e, events)),
    }
}

/// A binary reading error with the file name; a read error after the header counts as the
/// file ending there (as a JSON Lines read error does).
fn binary_error(path: &Path, e: binrec::ReadError, events: u64) -> RecordingError {
    let path = path.to_owned();
    match e {
        binrec::ReadError::NotRecording(reason) => RecordingError::NotRecording { path, reason },
        binrec::ReadError::UnknownVersion(found) => {
            RecordingError::UnknownBinaryVersion { path, found }
        }
        binrec::ReadError::HeaderCut { offset } => RecordingError::CorruptAt {
            path,
            offset,
            record: None,
            reason: "the file ends inside the header".to_owned(),
        },
        binrec::ReadError::Corrupt {
            offset,
            record,
            reason,
        } => RecordingError::CorruptAt {
            path,
            offset,
            record,
            reason,
        },
        binrec::ReadError::Truncated { offset, reason } => RecordingError::TruncatedAt {
            path,
            offset,
            events,
            reason,
        },
        binrec::ReadError::CountMismatch {
            offset,
            expected,
            found,
        } => RecordingError::CountMismatchAt {
            path,
            offset,
            expected,
            found,
        },
        binrec::ReadError::Io { offset, source } => RecordingError::TruncatedAt {
            path,
            offset,
            events,
            reason: format!("read error: {source}"),
        },
    }
}

fn read_lines(
    path: &Path,
    mut r: Box<dyn BufRead + '_>,
    allow_truncated: bool,
    f: &mut dyn FnMut(Event),
    s: &mut dyn FnMut(Sample),
) -> Result<Replay, RecordingError> {
    let p = || path.to_owned();
    let mut buf = Vec::with_capacity(512);
    let mut lineno = 0u64;
    let mut header: Option<Header> = None;
    let mut events = 0u64;
    // A line that failed to parse is only "truncation" if nothing follows it.
    let mut bad: Option<(u64, String)> = None;
    let truncated = |line: u64, events: u64, reason: String| RecordingError::Truncated {
        path: path.to_owned(),
        line,
        events,
        reason,
    };
    let end_reason = loop {
        buf.clear();
        let n = match r.read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) if header.is_some() => break Some((lineno + 1, format!("read error: {e}"))),
            // Before the header: a damaged (e.g. zstd) stream, placed at its first line.
            Err(e) => {
                return Err(RecordingError::Corrupt {
                    path: p(),
                    line: lineno + 1,
                    reason: format!("cannot be read: {e}"),
                });
            }
        };
        if n == 0 {
            break None;
        }
        lineno += 1;
        if let Some((line, reason)) = bad.take() {
            return Err(RecordingError::Corrupt {
                path: p(),
                line,
                reason,
            });
        }
        let complete = buf.last() == Some(&b'\n');
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim_end(),
            Err(_) if !complete => break Some((lineno, "the last line is cut off".to_owned())),
            Err(e) => {
                bad = Some((lineno, format!("not UTF-8: {e}")));
                continue;
            }
        };
        let Some(h) = &header else {
            if text.is_empty() && lineno == 1 && !complete {
                return Err(RecordingError::Empty { path: p() });
            }
            header = Some(parse_header(path, text)?);
            continue;
        };
        let _ = h;
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(text) {
            Ok(Line::Event(e)) => match e.to_event() {
                Ok(ev) => {
                    events += 1;
                    f(ev);
                }
                Err(reason) => bad = Some((lineno, reason)),
            },
            Ok(Line::End(t)) => {
                if t.events != events {
                    return Err(RecordingError::CountMismatch {
                        path: p(),
                        line: lineno,
                        expected: t.events,
                        found: events,
                    });
                }
                buf.clear();
                let more = r.read_until(b'\n', &mut buf);
                if matches!(more, Ok(n) if n > 0) && !buf.iter().all(u8::is_ascii_whitespace) {
                    return Err(RecordingError::AfterEnd {
                        path: p(),
                        line: lineno + 1,
                    });
                }
                if let Err(e) = more {
                    // The end line parsed, so only the compressed stream's framing is damaged.
                    log::warn!("{}: after the end line: {e}", path.display());
                }
                return Ok(Replay {
                    header: header.unwrap_or_else(|| unreachable!("checked above")),
                    trailer: Some(t),
                    events,
                    truncated: None,
                });
            }
            Ok(Line::Sample(sample)) => s(*sample),
            Ok(Line::Header(_)) => bad = Some((lineno, "a second header line".to_owned())),
            Err(e) if !complete => break Some((lineno, format!("the last line is cut off: {e}"))),
            Err(e) => bad = Some((lineno, e.to_string())),
        }
    };
    let Some(header) = header else {
        return Err(RecordingError::Empty { path: p() });
    };
    // The file ended without an end line: truncated. A bad last line counts as the cut.
    let (line, reason) = match (end_reason, bad) {
        (Some(r), _) => r,
        (None, Some((line, reason))) => (line, format!("the last line is damaged: {reason}")),
        (None, None) => (lineno + 1, "no end line".to_owned()),
    };
    let err = truncated(line, events, reason);
    if !allow_truncated {
        return Err(err);
    }
    Ok(Replay {
        header,
        trailer: None,
        events,
        truncated: Some(err),
    })
}

fn parse_header(path: &Path, text: &str) -> Result<Header, RecordingError> {
    let not = |reason: String| RecordingError::NotRecording {
        path: path.to_owned(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| not(format!("the first line is not JSON ({e})")))?;
    let h = v
        .get("tcptrace_recording")
        .ok_or_else(|| not("the first line has no \"tcptrace_recording\" header".to_owned()))?;
    let version = h
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| not("the header has no version number".to_owned()))?;
    if !(u64::from(OLDEST_VERSION)..=u64::from(VERSION)).contains(&version) {
        return Err(RecordingError::UnknownVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    Header::deserialize(h).map_err(|e| not(format!("bad header: {e}")))
}

enum Out {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Out {
    fn w(&mut self) -> &mut dyn Write {
        match self {
            Self::Plain(w) => w,
            Self::Zstd(w) => w,
        }
    }
}

enum Writer {
    Jsonl { out: Out, line: Vec<u8> },
    Binary(binrec::Writer<BufWriter<File>>),
}

impl Writer {
    fn jsonl_line(out: &mut Out, line: &mut Vec<u8>, l: &Line) -> io::Result<()> {
        line.clear();
        serde_json::to_writer(&mut *line, l)?;
        line.push(b'\n');
        out.w().write_all(line)
    }
}

/// Writes a recording. Use it as a pipeline sink through [`Shared`], then [`Recorder::finish_at`].
///
/// [`Shared`]: crate::sink::Shared
pub struct Recorder {
    /// `None` once finished.
    out: Option<Writer>,
    events: u64,
    last_ts_ns: u64,
}

impl Recorder {
    /// Creates the file and writes the header, in the format the name asks for
    /// ([`RecordingFormat::for_path`]).
    pub fn create(path: &Path, header: &Header) -> io::Result<Self> {
        Self::create_as(path, header, RecordingFormat::for_path(path))
    }

    /// Creates the file in `format` and writes the header (its version set to the format's).
    pub fn create_as(path: &Path, header: &Header, format: RecordingFormat) -> io::Result<Self> {
        let file = BufWriter::with_capacity(256 * 1024, crate::outfile::create(path)?);
        let mut header = header.clone();
        let out = match format {
            RecordingFormat::Binary => {
                header.version = BINARY_VERSION;
                let json = serde_json::to_vec(&header)?;
                Writer::Binary(binrec::Writer::new(file, &json)?)
            }
            RecordingFormat::Jsonl { compressed } => {
                header.version = VERSION;
                let mut out = if compressed {
                    Out::Zstd(zstd::stream::write::Encoder::new(file, 3)?)
                } else {
                    Out::Plain(file)
                };
                let mut line = Vec::with_capacity(512);
                Writer::jsonl_line(&mut out, &mut line, &Line::Header(header))?;
                Writer::Jsonl { out, line }
            }
        };
        Ok(Self {
            out: Some(out),
            events: 0,
            last_ts_ns: 0,
        })
    }

    fn writer(&mut self) -> io::Result<&mut Writer> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("the recording is already finished"))
    }

    /// Writes one event.
    pub fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.events += 1;
        self.last_ts_ns = ev.ts_ns;
        match self.writer()? {
            Writer::Jsonl { out, line } => {
                Writer::jsonl_line(out, line, &Line::Event(EventLine::of(ev)))
            }
            Writer::Binary(w) => w.event(ev),
        }
    }

    /// Writes one socket-table sample.
    pub fn write_sample(&mut self, s: &Sample) -> io::Result<()> {
        match self.writer()? {
            Writer::Jsonl { out, line } => {
                Writer::jsonl_line(out, line, &Line::Sample(Box::new(s.clone())))
            }
            Writer::Binary(w) => w.sample(s),
        }
    }

    /// Writes the end line or record, with the run's end time (a live run's end, the one its
    /// exit summary's ages run to; a synthetic recording's last event), and closes the file
    /// (finishing the zstd frame).
    pub fn finish_at(
        &mut self,
        counters: Counters,
        undecodable: u64,
        end_unix_ns: i64,
    ) -> io::Result<()> {
        match self.out.take() {
            Some(Writer::Jsonl { mut out, mut line }) => {
                let t = Trailer {
                    counters,
                    undecodable,
                    events: self.events,
                    end_unix_ns,
                };
                Writer::jsonl_line(&mut out, &mut line, &Line::End(t))?;
                match out {
                    Out::Plain(mut w) => w.flush(),
                    Out::Zstd(w) => w.finish()?.flush(),
                }
            }
            Some(Writer::Binary(w)) => w.finish(counters, undecodable, end_unix_ns).map(|_file| ()),
            None => Ok(()),
        }
    }

    /// Timestamp of the last event written.
    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts_ns
    }
}

impl Sink for Recorder {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.write_event(ev)
    }
    fn fact(&mut self, _fact: &Fact) -> io::Result<()> {
        Ok(())
    }
    fn sample(&mut self, s: &Sample) -> io::Result<()> {
        self.write_sample(s)
    }
    /// Makes what was written so far readable: a binary recording closes its open block.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(Writer::Jsonl { out, .. }) => out.w().flush(),
            Some(Writer::Binary(w)) => w.flush(),
            None => Ok(()),
        }
    }
}

/// Current wall-clock time in Unix nanoseconds.
pub fn unix_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl Header {
    /// The header for a recording starting now on this machine.
    pub fn now(clock: Clock, filter: &Filter) -> Self {
        let start_unix_ns = unix_now_ns();
        let secs = start_unix_ns.div_euclid(1_000_000_000);
        let start = chrono::DateTime::from_timestamp(secs, 0)
            .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        Self {
            version: VERSION,
            host: crate::host::host_name(),
            kernel: crate::host::kernel_release(),
            start,
            start_unix_ns,
            clock,
            filter: filter.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, tests::raw_state};

    fn sample_events() -> Vec<Event> {
        let mut v = Vec::new();
        let mut a = decode(&raw_state(10, 0xffff_8880_1234_5678, 7, 2)).expect("decodes");
        v.push(a);
        a.kind = Kind::ResetSent { state: None };
        a.owner = None;
        v.push(a);
        a.kind = Kind::ResetSent {
            state: Some(TcpState::Established),
        };
        a.srtt_us = Some(77);
        a.family = Family::V6;
        a.local = "[::1]:5".parse().expect("addr");
        a.remote = "[fe80::1]:6".parse().expect("addr");
        v.push(a);
        let mut b = decode(&raw_state(11, 1, 10, 3)).expect("decodes");
        if let Some(o) = &mut b.owner {
            o.comm.0 = *b"ab\0garbage\xff\xfe\0\0\0\0";
            o.source = OwnerSource::Listener;
        }
        v.push(b);
        for k in [
            Kind::SynRetransmit,
            Kind::SynAckRetransmit,
            Kind::ResetReceived,
        ] {
            b.kind = k;
            v.push(b);
        }
        // A live run's identity and close counters.
        b.ident = Ident {
            cgroup: Some(12_345),
            netns: Some(4_026_531_840),
        };
        b.kind = Kind::State {
            old: TcpState::FinWait2,
            new: TcpState::Close,
        };
        b.close = Some(CloseStats {
            bytes_acked: 1_048_578,
            bytes_received: 65_537,
            retrans: 2,
            srtt_us: 45,
        });
        v.push(b);
        v
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tcptrace-rec-{}-{name}", std::process::id()))
    }

    fn header() -> Header {
        Header::now(
            Clock {
                realtime_offset_ns: 5,
                utc_offset_secs: 0,
            },
            &Filter::default(),
        )
    }

    #[test]
    fn sample_lines_written_before_time_wait_was_optional_still_read() {
        let line = format!(
            "{{\"sample\":{}}}",
            crate::listeners::tests::OLD_SAMPLE_JSON
        );
        match serde_json::from_str::<Line>(&line).expect("an old sample line reads") {
            Line::Sample(s) => assert_eq!(s.time_wait.map(|t| t.count), Some(2)),
            _ => panic!("not read as a sample"),
        }
    }

    #[test]
    fn samples_round_trip_in_place_among_events_in_every_format() {
        use crate::listeners::tests::{listener, sample};
        let s1 = sample(
            3,
            vec![listener("10.0.0.1:8080", 2, 1, 5)],
            crate::listeners::Netstat {
                listen_overflows: 4,
                ..Default::default()
            },
        );
        let mut s2 = s1.clone();
        s2.netns_name = "/run/netns/x".to_owned();
        s2.netstat = None;
        s2.listeners.clear();
        // A sample outside the TIME_WAIT cadence: none, and it stays none.
        s2.time_wait = None;
        #[derive(Debug, PartialEq)]
        enum It {
            E(Event),
            S(Sample),
        }
        for name in ["smp.jsonl", "smp.jsonl.zst", "smp.tcpt"] {
            let path = tmp(name);
            let evs = sample_events();
            let mut want = Vec::new();
            let mut r = Recorder::create(&path, &header()).expect("create");
            for (i, e) in evs.iter().enumerate() {
                r.write_event(e).expect("write");
                want.push(It::E(*e));
                if i == 2 {
                    r.write_sample(&s1).expect("sample");
                    want.push(It::S(s1.clone()));
                    r.write_sample(&s2).expect("sample");
                    want.push(It::S(s2.clone()));
                }
            }
            r.finish_at(Counters::default(), 0, unix_now_ns())
                .expect("finish");
            let got = std::cell::RefCell::new(Vec::new());
            let rep = replay_with(
                &path,
                false,
                |e| got.borrow_mut().push(It::E(e)),
                |s| got.borrow_mut().push(It::S(s)),
            )
            .expect("replay");
            assert_eq!(got.into_inner(), want, "{name}");
            assert_eq!(rep.events, evs.len() as u64);
            // Readers that want events only still get every event.
            let mut n = 0;
            replay(&path, false, |_| n += 1).expect("replay");
            assert_eq!(n, evs.len());
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn events_round_trip_exactly_in_every_format() {
        for name in ["rt.jsonl", "rt.jsonl.zst", "rt.tcpt"] {
            let path = tmp(name);
            let evs = sample_events();
            let mut r = Recorder::create(&path, &header()).expect("create");
            for e in &evs {
                r.write_event(e).expect("write");
            }
            let counters = Counters {
                lost: 3,
                submitted: 9,
                filtered: 2,
                missed: 1,
            };
            r.finish_at(counters, 4, unix_now_ns()).expect("finish");
            let mut back = Vec::new();
            let rep = replay(&path, false, |e| back.push(e)).expect("replay");
            assert_eq!(back, evs);
            let t = rep.trailer.expect("trailer");
            assert_eq!(
                (t.counters, t.undecodable, t.events),
                (counters, 4, evs.len() as u64)
            );
            assert_eq!(rep.header.filter, Filter::default());
            assert_eq!(read_header(&path).expect("header"), rep.header);
            let want = match RecordingFormat::for_path(&path) {
                RecordingFormat::Binary => BINARY_VERSION,
                RecordingFormat::Jsonl { .. } => VERSION,
            };
            assert_eq!(rep.header.version, want, "{name}");
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn the_name_picks_the_written_format() {
        let f = |n: &str| RecordingFormat::for_path(Path::new(n));
        assert_eq!(f("/tmp/x.tcpt"), RecordingFormat::Binary);
        assert_eq!(f("x"), RecordingFormat::Binary);
        assert_eq!(f("x.zst"), RecordingFormat::Binary);
        assert_eq!(f("x.jsonl"), RecordingFormat::Jsonl { compressed: false });
        assert_eq!(
            f("X.JSONL.ZST"),
            RecordingFormat::Jsonl { compressed: true }
        );
    }

    #[test]
    fn a_binary_recording_compressed_whole_still_reads() {
        let path = tmp("whole.tcpt");
        let mut r = Recorder::create(&path, &header()).expect("create");
        for e in &sample_events() {
            r.write_event(e).expect("write");
        }
        r.finish_at(Counters::default(), 0, unix_now_ns())
            .expect("finish");
        let z = tmp("whole.tcpt.zst");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&z, zstd::encode_all(&bytes[..], 3).expect("zstd")).expect("write");
        let mut back = Vec::new();
        replay(&z, false, |e| back.push(e)).expect("replay");
        assert_eq!(back, sample_events());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&z);
    }

    /// xorshift64*: the same mutations on every machine.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// One to four random edits: bit flips, interesting bytes and lengths, cuts, repeats.
    fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
        const WORDS: [u32; 7] = [0, 1, 88, 16384, 16385, 0x7fff_ffff, u32::MAX];
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(data.len());
            match rng.below(7) {
                0 if !data.is_empty() => data[at] ^= 1 << rng.below(8),
                1 if !data.is_empty() => {
                    data[at] = [0, 0xff, 0x7f, 0x80, b'"', b'\n'][rng.below(6)]
                }
                2 if data.len() >= at + 4 => {
                    let w = WORDS[rng.below(WORDS.len())];
                    data[at..at + 4].copy_from_slice(&w.to_le_bytes());
                }
                3 => data.truncate(at),
                4 => {
                    let len = rng.below(64).min(data.len() - at);
                    let piece = data[at..at + len].to_vec();
                    let to = rng.below(data.len());
                    data.splice(to..to, piece);
                }
                5 => data.insert(at, rng.next() as u8),
                _ if !data.is_empty() => {
                    data.remove(at);
                }
                _ => data.push(rng.next() as u8),
            }
        }
    }

    /// Every fixture, as JSON Lines and converted to binary, plus binary files built from
    /// their raw records so that mutations reach the record decoder past the checksums.
    fn seeds() -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut out = Vec::new();
        for name in ["one-connection", "loopback", "no-events", "truncated"] {
            let src = dir.join(format!("{name}.jsonl"));
            out.push(std::fs::read(&src).expect("fixture"));
            let bin = tmp(&format!("seed-{name}.tcpt"));
            let mut rec = Recorder::create(&bin, &header()).expect("create");
            let rep = replay(&src, true, |e| rec.write_event(&e).expect("write")).expect("read");
            let t = rep.trailer.unwrap_or(Trailer {
                counters: Counters::default(),
                undecodable: 0,
                events: rep.events,
                end_unix_ns: 0,
            });
            rec.finish_at(t.counters, t.undecodable, t.end_unix_ns)
                .expect("finish");
            out.push(std::fs::read(&bin).expect("read"));
            let _ = std::fs::remove_file(&bin);
        }
        out
    }

    /// The stable, always-run twin of the cargo-fuzz targets in `tcptrace/fuzz` (which need a
    /// nightly toolchain): a bounded, deterministic mutation run over the fixtures in both
    /// formats. No input may panic or hang the reader, and every error names the file and a
    /// line or a byte offset.
    #[test]
    fn mutated_recordings_never_panic_and_errors_say_where() {
        let seeds = seeds();
        let name = Path::new("fuzzed.rec");
        let mut rng = Rng(0x5eed);
        let started = std::time::Instant::now();
        let mut cases = 0u64;
        while cases < 30_000 && started.elapsed() < std::time::Duration::from_secs(20) {
            let mut data = seeds[rng.below(seeds.len())].clone();
            if rng.below(3) == 0 && data.starts_with(&binrec::MAGIC) {
                // Edit the raw records, then compress them again so the checksum holds.
                let mut evs = Vec::new();
                if replay_bytes(name, &data, true, |e| evs.push(e)).is_ok() {
                    let mut raw = Vec::new();
                    for e in &evs {
                        let mut b = [0u8; binrec::RECORD_SIZE];
                        binrec::encode(e, &mut b);
                        raw.extend_from_slice(&b);
                    }
                    mutate(&mut rng, &mut raw);
                    data = binrec::file_of_records(b"{}", &raw);
                }
            } else {
                mutate(&mut rng, &mut data);
            }
            cases += 1;
            let allow = rng.below(2) == 0;
            if let Err(e) = replay_bytes(name, &data, allow, |_| {}) {
                let msg = e.to_string();
                let placed = msg.starts_with("fuzzed.rec:")
                    && (msg.contains(": byte ")
                        || msg["fuzzed.rec:".len()..].starts_with(|c: char| c.is_ascii_digit())
                        || matches!(e, RecordingError::Empty { .. }));
                assert!(placed, "case {cases}: the error does not say where: {msg}");
            }
        }
        assert!(cases >= 1000, "only {cases} cases in the time allowed");
    }

    /// CPU time of the whole process (the binary reader has a helper thread), so the
    /// microbenchmark below is run alone.
    fn process_cpu_secs() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the valid timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }

    /// What writing and reading cost per million events in each format, on the generated
    /// recording `cargo xtask bench` reports on; reading here is the reader alone, without
    /// the pipeline behind it.
    #[test]
    #[ignore = "a microbenchmark: cargo test --release -p tcptrace -- --ignored write_and_read_cost --nocapture"]
    fn write_and_read_cost() {
        let src = tmp("cost-src.tcpt");
        let mut rec = Recorder::create(&src, &header()).expect("create");
        crate::generate::generate(&mut rec, 1_000_000, 1).expect("generate");
        rec.finish_at(Counters::default(), 0, unix_now_ns())
            .expect("finish");
        let mut evs = Vec::new();
        replay(&src, false, |e| evs.push(e)).expect("replay");
        let _ = std::fs::remove_file(&src);
        let m = evs.len() as f64 / 1e6;
        for name in ["cost.tcpt", "cost.jsonl.zst", "cost.jsonl"] {
            let path = tmp(name);
            let t = process_cpu_secs();
            let mut r = Recorder::create(&path, &header()).expect("create");
            for e in &evs {
                r.write_event(e).expect("write");
            }
            r.finish_at(Counters::default(), 0, unix_now_ns())
                .expect("finish");
            let write = process_cpu_secs() - t;
            let t = process_cpu_secs();
            let mut n = 0u64;
            replay(&path, false, |_| n += 1).expect("replay");
            let read = process_cpu_secs() - t;
            assert_eq!(n, evs.len() as u64);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            println!(
                "{name:>15}: write {:.3} CPU-s per million events, read {:.3} CPU-s per million \
                 ({:.1} M events/s), {:.1} bytes per event",
                write / m,
                read / m,
                m / read,
                size as f64 / evs.len() as f64
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}
