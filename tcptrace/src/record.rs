//! Recordings: the decoded event stream of a live run, saved so that `tcptrace report` can
//! replay it through the same pipeline later, on another machine, without root.
//!
//! Format (version 1): JSON Lines, each line one externally tagged object, so log shippers
//! and `jq` read it as is:
//!
//! ```text
//! {"tcptrace_recording":{"version":1,"host":..,"kernel":..,"start":..,"clock":{..},"filter":{..},"tool_version":..}}
//! {"ev":{"ts_ns":..,"sock":"0xffff..","family":"ipv4","local":"127.0.0.1:40000","remote":..,"kind":"state","old":"CLOSE","new":"SYN_SENT","owner":{..}}}
//! ...
//! {"end":{"counters":{"lost":0,"submitted":..,"filtered":..},"undecodable":0,"events":..,"end_unix_ns":..}}
//! ```
//!
//! Events are written in the order the live pipeline's reorder stage released them, i.e. the
//! exact order the tracker consumed, and `report` feeds them to the tracker in that order
//! without a second reorder pass. Replaying the raw arrival order through the reorder stage
//! would not be equivalent: which events a live run releases before a late one depends on
//! when the ring buffer went quiet (a flush), which the event times alone do not record.
//!
//! A name ending in `.zst` is written and read through zstd.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::Clock,
    config::Filter,
    counters::Counters,
    decode::{Comm, Event, Family, Kind, Owner, OwnerSource, TcpState},
    sink::Sink,
    track::Fact,
};

/// The recording format version this build writes and reads.
pub const VERSION: u32 = 1;

/// The first line: what was recorded, where and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
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
}

#[derive(Serialize, Deserialize)]
enum Line {
    #[serde(rename = "tcptrace_recording")]
    Header(Header),
    #[serde(rename = "ev")]
    Event(EventLine),
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
        })
    }
}

/// What went wrong reading a recording; every variant names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{}: cannot read the recording: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: the file is empty: a tcptrace recording starts with a header line (was `tcptrace record` stopped before it started?)", path.display())]
    Empty { path: PathBuf },
    #[error("{}:1: not a tcptrace recording: {reason}", path.display())]
    NotRecording { path: PathBuf, reason: String },
    #[error("{}:1: recording format version {found} is not supported: this tcptrace ({}) reads version {VERSION}; use the tcptrace version that wrote it or a newer one", path.display(), env!("CARGO_PKG_VERSION"))]
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

fn is_zst(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

/// Reads a recording and hands each event to `f` in recorded order.
///
/// With `allow_truncated`, a file that ends early (no end line, a cut-off last line, an
/// incomplete zstd frame) yields its valid prefix and the reason in [`Replay::truncated`];
/// a corrupt line followed by more lines is an error either way.
pub fn replay(
    path: &Path,
    allow_truncated: bool,
    mut f: impl FnMut(Event),
) -> Result<Replay, RecordingError> {
    let io_err = |source| RecordingError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let reader: Box<dyn BufRead> = if is_zst(path) {
        Box::new(BufReader::with_capacity(
            256 * 1024,
            zstd::stream::read::Decoder::new(file).map_err(io_err)?,
        ))
    } else {
        Box::new(BufReader::with_capacity(256 * 1024, file))
    };
    read_lines(path, reader, allow_truncated, &mut f)
}

/// Reads only the header line of a recording (e.g. to show its clock and filter before a
/// paced replay starts).
pub fn read_header(path: &Path) -> Result<Header, RecordingError> {
    let io_err = |source| RecordingError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut reader: Box<dyn BufRead> = if is_zst(path) {
        Box::new(BufReader::new(
            zstd::stream::read::Decoder::new(file).map_err(io_err)?,
        ))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut line = String::new();
    reader.read_line(&mut line).map_err(io_err)?;
    if line.trim().is_empty() {
        return Err(RecordingError::Empty {
            path: path.to_owned(),
        });
    }
    parse_header(path, line.trim_end())
}

fn read_lines(
    path: &Path,
    mut r: Box<dyn BufRead>,
    allow_truncated: bool,
    f: &mut dyn FnMut(Event),
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
            Err(e) => {
                return Err(RecordingError::Io {
                    path: p(),
                    source: e,
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
    if version != u64::from(VERSION) {
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

/// Writes a recording. Use it as a pipeline sink through [`Shared`], then [`Recorder::finish`].
pub struct Recorder {
    out: Option<Out>,
    events: u64,
    last_ts_ns: u64,
    line: Vec<u8>,
}

impl Recorder {
    /// Creates the file and writes the header.
    pub fn create(path: &Path, header: &Header) -> io::Result<Self> {
        let file = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        let out = if is_zst(path) {
            Out::Zstd(zstd::stream::write::Encoder::new(file, 3)?)
        } else {
            Out::Plain(file)
        };
        let mut r = Self {
            out: Some(out),
            events: 0,
            last_ts_ns: 0,
            line: Vec::with_capacity(512),
        };
        r.write_line(&Line::Header(header.clone()))?;
        Ok(r)
    }

    fn write_line(&mut self, l: &Line) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, l)?;
        self.line.push(b'\n');
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("the recording is already finished"))?;
        out.w().write_all(&self.line)
    }

    /// Writes one event.
    pub fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.events += 1;
        self.last_ts_ns = ev.ts_ns;
        self.write_line(&Line::Event(EventLine::of(ev)))
    }

    /// Writes the end line and closes the file (finishing the zstd frame).
    pub fn finish(&mut self, counters: Counters, undecodable: u64) -> io::Result<()> {
        self.finish_at(counters, undecodable, unix_now_ns())
    }

    /// [`Recorder::finish`] with a given end time (reproducible synthetic recordings).
    pub fn finish_at(
        &mut self,
        counters: Counters,
        undecodable: u64,
        end_unix_ns: i64,
    ) -> io::Result<()> {
        let t = Trailer {
            counters,
            undecodable,
            events: self.events,
            end_unix_ns,
        };
        self.write_line(&Line::End(t))?;
        match self.out.take() {
            Some(Out::Plain(mut w)) => w.flush(),
            Some(Out::Zstd(w)) => w.finish()?.flush(),
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
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(o) => o.w().flush(),
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
    fn events_round_trip_exactly_plain_and_zstd() {
        for name in ["rt.jsonl", "rt.jsonl.zst"] {
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
            r.finish(counters, 4).expect("finish");
            let mut back = Vec::new();
            let rep = replay(&path, false, |e| back.push(e)).expect("replay");
            assert_eq!(back, evs);
            let t = rep.trailer.expect("trailer");
            assert_eq!((t.counters, t.undecodable, t.events), (counters, 4, 7));
            assert_eq!(rep.header.filter, Filter::default());
            let _ = std::fs::remove_file(&path);
        }
    }
}
