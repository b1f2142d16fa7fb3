//! The binary recording format (version 3; version 2 files, which have no sample blocks and
//! 88-byte event records, still read), the default of `tcptrace record`: the same facts
//! as a JSON Lines recording (`record`), in fixed-size little-endian records compressed in
//! small zstd frames, so that recording costs little CPU next to the traffic it watches and
//! `report` reads millions of events a second.
//!
//! ```text
//! file   = magic version header_len header block* end
//! magic  = 89 'T' 'C' 'P' 0d 0a 1a 0a         8 bytes: tells binary from JSON Lines by content
//! version= u32 LE (3)
//! header = header_len (u32 LE, at most 64 KiB) bytes of JSON: the same Header object as line
//!          one of a JSON Lines recording (host, kernel, start, clock, filter, tool version)
//! block  = tag 'E' (u8), 3 zero bytes, count (u32 LE, 1..=16384), frame_len (u32 LE),
//!          frame: one zstd frame with a content checksum holding count event records
//!          (128 bytes each; 88 in version 2)
//!        | tag 'S', 3 zero bytes, length (u32 LE, 1..=16 MiB), frame_len, one zstd frame
//!          holding one socket-table sample as `length` bytes of JSON (since version 3)
//! end    = tag 'Z', 3 zero bytes, count 1, frame_len, one zstd frame holding the end record
//! ```
//!
//! The header is length-prefixed JSON rather than fixed binary fields: it is written once, its
//! strings (host, kernel) and port lists have no natural fixed size, and sharing the JSON
//! Lines header type keeps the two formats' headers identical field for field. The 128-byte
//! event record (see [`encode`]; version 2's 88-byte record is its first 88 bytes, with none of
//! the socket identity and close counters that follow) is canonical: every unused field must be zero, so a record
//! decodes to exactly one `Event` and back. A frame holds at most [`MAX_BLOCK_EVENTS`]
//! records; the writer closes one every [`BLOCK_EVENTS`] events and whenever the live run
//! flushes its sinks (a quiet ring buffer, every 100 ms tick), so a killed recorder leaves a
//! readable prefix missing at most its last unflushed block. Every length field is checked
//! against a fixed bound before anything is allocated, and every error names the byte offset
//! in the file of the block (and the record index) where reading stopped. Reading runs on a
//! helper thread a batch ahead of the pipeline (`read_blocks`), which is what limits `report`.
//!
//! Socket-table samples (`listeners::Sample`, one namespace at one instant, once a second) are
//! JSON in their own blocks rather than fixed records: their size varies with the number of
//! listeners, they are rare next to events, and JSON keeps them the same object as a JSON
//! Lines recording's `sample` line. The writer closes the open events block before a sample,
//! so the file keeps the order the pipeline took events and samples in.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::{
    counters::Counters,
    decode::{CloseStats, Comm, Event, Family, Ident, Kind, Owner, OwnerSource, TcpState},
    listeners::Sample,
};

/// The first eight bytes of a binary recording (PNG-style: a non-ASCII byte, then line ends
/// and ^Z, so a text-mode copy that mangles them is detected).
pub const MAGIC: [u8; 8] = *b"\x89TCP\r\n\x1a\n";
/// The binary format's version (JSON Lines recordings have their own numbers).
pub const VERSION: u32 = 3;
/// The oldest binary version this build reads (version 2: no sample blocks).
pub const OLDEST_VERSION: u32 = 2;
/// The largest sample (JSON bytes) a reader accepts; the writer refuses larger ones.
pub const MAX_SAMPLE_BYTES: usize = 16 << 20;
/// Size of one event record (version 3).
pub const RECORD_SIZE: usize = 128;
/// Size of one event record in version 2 files: a version 3 record without its last 40 bytes
/// (cgroup, namespace, close counters).
pub const V2_RECORD_SIZE: usize = 88;

/// The event record size of a binary format version.
pub fn record_size(version: u32) -> usize {
    if version <= 2 {
        V2_RECORD_SIZE
    } else {
        RECORD_SIZE
    }
}
/// Size of the end record.
pub const END_SIZE: usize = 56;
/// Size of a block header.
pub const BLOCK_HEADER_SIZE: usize = 12;
/// Events per block the writer aims for (about 88 KiB before compression).
pub const BLOCK_EVENTS: usize = 1024;
/// The most events a reader accepts in one block: bounds what one block may allocate.
pub const MAX_BLOCK_EVENTS: usize = 16384;
/// The largest JSON header a reader accepts.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// zstd level: level 1 costs a fraction of level 3's CPU for these highly repetitive
/// records and compresses them nearly as well.
const LEVEL: i32 = 1;
const TAG_EVENTS: u8 = b'E';
const TAG_END: u8 = b'Z';
const TAG_SAMPLE: u8 = b'S';

/// The largest compressed frame a reader accepts (zstd's bound for the largest block).
pub fn max_frame_bytes() -> usize {
    zstd::zstd_safe::compress_bound(MAX_BLOCK_EVENTS * RECORD_SIZE)
}

/// Why a record did not decode (the caller adds the file and offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("unknown owner source {0}")]
    OwnerSource(u8),
    #[error("non-zero bytes in unused field {0}")]
    NotCanonical(&'static str),
}

fn source_code(s: OwnerSource) -> u8 {
    match s {
        OwnerSource::Current => 1,
        OwnerSource::Cached => 2,
        OwnerSource::Listener => 3,
        OwnerSource::Proc => 4,
    }
}

fn ip_bytes(a: &SocketAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a.ip() {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

/// Encodes one event as a 128-byte record:
///
/// ```text
///  0 ts_ns u64        8 sock u64        16 local address [16]   32 remote address [16]
/// 48 local port u16  50 remote port u16 52 tgid u32             56 pid u32
/// 60 comm [16]       76 srtt_us u32     80 family u8 (4 or 6)   81 kind u8
/// 82 old u8          83 new u8          84 owner source u8      85 flags u8  86 zero u16
/// 88 cgroup_id u64   96 netns u32       100 close retrans u32   104 close bytes_acked u64
/// 112 close bytes_received u64          120 close srtt_us u32   124 zero u32
/// ```
///
/// kind: 1 state (old -> new), 2 SYN retransmit, 3 SYN-ACK retransmit, 4 reset received,
/// 5 reset sent (old = the state it was sent in, 0 if unknown), 6 listen overflow drop (since
/// version 3; the local address is the listener's, the remote one zero). States are the kernel's
/// numbers, 0 where there is none. Owner source: 0 none (tgid, pid and comm zero), 1 current,
/// 2 cached, 3 listener, 4 proc. Flags: bit 0 says srtt_us is present, bit 1 cgroup_id, bit 2
/// netns, bit 3 the four close counters (bytes 100..124; version 3). An IPv4 address uses the
/// first 4 of its 16 bytes. Every byte a field does not use is zero.
pub fn encode(ev: &Event, out: &mut [u8; RECORD_SIZE]) {
    out[0..8].copy_from_slice(&ev.ts_ns.to_le_bytes());
    out[8..16].copy_from_slice(&ev.sock.to_le_bytes());
    out[16..32].copy_from_slice(&ip_bytes(&ev.local));
    out[32..48].copy_from_slice(&ip_bytes(&ev.remote));
    out[48..50].copy_from_slice(&ev.local.port().to_le_bytes());
    out[50..52].copy_from_slice(&ev.remote.port().to_le_bytes());
    let (tgid, pid, comm, source) = match ev.owner {
        Some(o) => (o.tgid, o.pid, o.comm.0, source_code(o.source)),
        None => (0, 0, [0u8; 16], 0),
    };
    out[52..56].copy_from_slice(&tgid.to_le_bytes());
    out[56..60].copy_from_slice(&pid.to_le_bytes());
    out[60..76].copy_from_slice(&comm);
    out[76..80].copy_from_slice(&ev.srtt_us.unwrap_or(0).to_le_bytes());
    out[80] = match ev.family {
        Family::V4 => 4,
        Family::V6 => 6,
    };
    let (kind, old, new) = match ev.kind {
        Kind::State { old, new } => (1, old as u8, new as u8),
        Kind::SynRetransmit => (2, 0, 0),
        Kind::SynAckRetransmit => (3, 0, 0),
        Kind::ResetReceived => (4, 0, 0),
        Kind::ResetSent { state } => (5, state.map_or(0, |s| s as u8), 0),
        Kind::ListenOverflow => (6, 0, 0),
    };
    out[81] = kind;
    out[82] = old;
    out[83] = new;
    out[84] = source;
    out[85] = u8::from(ev.srtt_us.is_some())
        | u8::from(ev.ident.cgroup.is_some()) << 1
        | u8::from(ev.ident.netns.is_some()) << 2
        | u8::from(ev.close.is_some()) << 3;
    out[86] = 0;
    out[87] = 0;
    out[88..96].copy_from_slice(&ev.ident.cgroup.unwrap_or(0).to_le_bytes());
    out[96..100].copy_from_slice(&ev.ident.netns.unwrap_or(0).to_le_bytes());
    let c = ev.close.unwrap_or_default();
    out[100..104].copy_from_slice(&c.retrans.to_le_bytes());
    out[104..112].copy_from_slice(&c.bytes_acked.to_le_bytes());
    out[112..120].copy_from_slice(&c.bytes_received.to_le_bytes());
    out[120..124].copy_from_slice(&c.srtt_us.to_le_bytes());
    out[124..128].fill(0);
}

/// Decodes one version 2 record (88 bytes): a version 3 record whose flags allow only srtt_us
/// and whose identity and close counters are absent.
pub fn decode_v2(b: &[u8; V2_RECORD_SIZE]) -> Result<Event, RecordError> {
    if b[85] > 1 {
        return Err(RecordError::NotCanonical("flags"));
    }
    let mut full = [0u8; RECORD_SIZE];
    full[..V2_RECORD_SIZE].copy_from_slice(b);
    decode(&full)
}

/// Decodes one record of a file of `version` (its length is [`record_size`]).
fn decode_versioned(version: u32, b: &[u8]) -> Result<Event, RecordError> {
    if version <= 2 {
        let mut r = [0u8; V2_RECORD_SIZE];
        r.copy_from_slice(b);
        decode_v2(&r)
    } else {
        let mut r = [0u8; RECORD_SIZE];
        r.copy_from_slice(b);
        decode(&r)
    }
}

fn u16_at(b: &[u8; RECORD_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn bytes16(b: &[u8; RECORD_SIZE], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

fn state(v: u8) -> Result<TcpState, RecordError> {
    TcpState::from_kernel(v).ok_or(RecordError::State(v))
}

fn zero(ok: bool, field: &'static str) -> Result<(), RecordError> {
    if ok {
        Ok(())
    } else {
        Err(RecordError::NotCanonical(field))
    }
}

fn socket_addr(
    family: Family,
    ip: [u8; 16],
    port: u16,
    field: &'static str,
) -> Result<SocketAddr, RecordError> {
    let ip = match family {
        Family::V4 => {
            zero(ip[4..].iter().all(|&b| b == 0), field)?;
            IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
        }
        Family::V6 => IpAddr::V6(Ipv6Addr::from(ip)),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Decodes one record; the inverse of [`encode`] (anything [`encode`] cannot write is an
/// error, so decoding then encoding gives back the same bytes).
pub fn decode(b: &[u8; RECORD_SIZE]) -> Result<Event, RecordError> {
    let family = match b[80] {
        4 => Family::V4,
        6 => Family::V6,
        f => return Err(RecordError::Family(f)),
    };
    let (old, new) = (b[82], b[83]);
    let kind = match b[81] {
        1 => Kind::State {
            old: state(old)?,
            new: state(new)?,
        },
        k @ (2..=4 | 6) => {
            zero(old == 0 && new == 0, "old/new")?;
            match k {
                2 => Kind::SynRetransmit,
                3 => Kind::SynAckRetransmit,
                6 => Kind::ListenOverflow,
                _ => Kind::ResetReceived,
            }
        }
        5 => {
            zero(new == 0, "new")?;
            Kind::ResetSent {
                state: if old == 0 { None } else { Some(state(old)?) },
            }
        }
        k => return Err(RecordError::Kind(k)),
    };
    let (tgid, pid, comm) = (u32_at(b, 52), u32_at(b, 56), bytes16(b, 60));
    let source = match b[84] {
        0 => None,
        1 => Some(OwnerSource::Current),
        2 => Some(OwnerSource::Cached),
        3 => Some(OwnerSource::Listener),
        4 => Some(OwnerSource::Proc),
        s => return Err(RecordError::OwnerSource(s)),
    };
    let owner = match source {
        Some(source) => Some(Owner {
            tgid,
            pid,
            comm: Comm(comm),
            source,
        }),
        None => {
            zero(tgid == 0 && pid == 0 && comm == [0u8; 16], "owner")?;
            None
        }
    };
    let flags = b[85];
    zero(flags & !0x0f == 0, "flags")?;
    let srtt = u32_at(b, 76);
    let srtt_us = if flags & 1 != 0 {
        Some(srtt)
    } else {
        zero(srtt == 0, "srtt_us")?;
        None
    };
    let cgroup = u64_at(b, 88);
    let cgroup = if flags & 2 != 0 {
        Some(cgroup)
    } else {
        zero(cgroup == 0, "cgroup_id")?;
        None
    };
    let netns = u32_at(b, 96);
    let netns = if flags & 4 != 0 {
        Some(netns)
    } else {
        zero(netns == 0, "netns")?;
        None
    };
    let stats = CloseStats {
        retrans: u32_at(b, 100),
        bytes_acked: u64_at(b, 104),
        bytes_received: u64_at(b, 112),
        srtt_us: u32_at(b, 120),
    };
    let close = if flags & 8 != 0 {
        Some(stats)
    } else {
        zero(stats == CloseStats::default(), "close counters")?;
        None
    };
    zero(b[86] == 0 && b[87] == 0 && u32_at(b, 124) == 0, "padding")?;
    Ok(Event {
        ts_ns: u64_at(b, 0),
        sock: u64_at(b, 8),
        family,
        local: socket_addr(family, bytes16(b, 16), u16_at(b, 48), "local address")?,
        remote: socket_addr(family, bytes16(b, 32), u16_at(b, 50), "remote address")?,
        owner,
        kind,
        srtt_us,
        ident: Ident { cgroup, netns },
        close,
    })
}

/// The end record's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub counters: Counters,
    pub undecodable: u64,
    pub events: u64,
    pub end_unix_ns: i64,
}

/// End record (56 bytes, u64 LE each): lost, submitted, filtered, missed, undecodable,
/// events, end_unix_ns (signed).
fn encode_end(e: &End) -> [u8; END_SIZE] {
    let mut out = [0u8; END_SIZE];
    let c = &e.counters;
    let fields = [
        c.lost,
        c.submitted,
        c.filtered,
        c.missed,
        e.undecodable,
        e.events,
        e.end_unix_ns as u64,
    ];
    for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode_end(b: &[u8]) -> End {
    End {
        counters: Counters {
            lost: u64_at(b, 0),
            submitted: u64_at(b, 8),
            filtered: u64_at(b, 16),
            missed: u64_at(b, 24),
        },
        undecodable: u64_at(b, 32),
        events: u64_at(b, 40),
        end_unix_ns: u64_at(b, 48) as i64,
    }
}

/// Writes a binary recording to `W` (a file behind a `BufWriter`).
pub struct Writer<W: Write> {
    out: W,
    comp: zstd::bulk::Compressor<'static>,
    /// Records of the open block.
    pending: Vec<u8>,
    frame: Vec<u8>,
    events: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the magic, the version and the JSON header.
    pub fn new(mut out: W, header_json: &[u8]) -> io::Result<Self> {
        if header_json.len() > MAX_HEADER_BYTES {
            return Err(io::Error::other(format!(
                "the recording header is {} bytes, more than {MAX_HEADER_BYTES}",
                header_json.len()
            )));
        }
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(header_json.len() as u32).to_le_bytes())?;
        out.write_all(header_json)?;
        let mut comp = zstd::bulk::Compressor::new(LEVEL)?;
        comp.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        Ok(Self {
            out,
            comp,
            pending: Vec::with_capacity(BLOCK_EVENTS * RECORD_SIZE),
            frame: Vec::with_capacity(zstd::zstd_safe::compress_bound(BLOCK_EVENTS * RECORD_SIZE)),
            events: 0,
        })
    }

    /// Appends one event; a full block is compressed and written.
    pub fn event(&mut self, ev: &Event) -> io::Result<()> {
        let mut rec = [0u8; RECORD_SIZE];
        encode(ev, &mut rec);
        self.pending.extend_from_slice(&rec);
        self.events += 1;
        if self.pending.len() >= BLOCK_EVENTS * RECORD_SIZE {
            self.close_block()?;
        }
        Ok(())
    }

    fn write_block(&mut self, tag: u8, count: usize) -> io::Result<()> {
        self.frame.clear();
        self.frame
            .reserve(zstd::zstd_safe::compress_bound(self.pending.len()));
        self.comp
            .compress_to_buffer(&self.pending, &mut self.frame)?;
        let mut head = [0u8; BLOCK_HEADER_SIZE];
        head[0] = tag;
        head[4..8].copy_from_slice(&(count as u32).to_le_bytes());
        head[8..12].copy_from_slice(&(self.frame.len() as u32).to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(&self.frame)?;
        self.pending.clear();
        Ok(())
    }

    /// Appends one socket-table sample in a block of its own (after closing the open events
    /// block, so the order in the file is the order of the calls).
    pub fn sample(&mut self, s: &Sample) -> io::Result<()> {
        self.close_block()?;
        let json = serde_json::to_vec(s)?;
        if json.is_empty() || json.len() > MAX_SAMPLE_BYTES {
            return Err(io::Error::other(format!(
                "a socket-table sample of {} bytes does not fit a recording block (at most {MAX_SAMPLE_BYTES})",
                json.len()
            )));
        }
        self.pending = json;
        let n = self.pending.len();
        let r = self.write_block(TAG_SAMPLE, n);
        self.pending = Vec::with_capacity(BLOCK_EVENTS * RECORD_SIZE);
        r
    }

    /// Compresses and writes the open block, if it holds any events.
    pub fn close_block(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let count = self.pending.len() / RECORD_SIZE;
        self.write_block(TAG_EVENTS, count)
    }

    /// Closes the open block and makes everything written so far readable.
    pub fn flush(&mut self) -> io::Result<()> {
        self.close_block()?;
        self.out.flush()
    }

    /// Writes the end block and returns the writer (flushed).
    pub fn finish(
        mut self,
        counters: Counters,
        undecodable: u64,
        end_unix_ns: i64,
    ) -> io::Result<W> {
        self.close_block()?;
        let end = End {
            counters,
            undecodable,
            events: self.events,
            end_unix_ns,
        };
        self.pending.clear();
        self.pending.extend_from_slice(&encode_end(&end));
        self.write_block(TAG_END, 1)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A whole binary recording around raw record bytes (`raw` need not be whole records): one
/// events block, compressed with a valid checksum, then an end record counting them, so
/// that fuzzers reach the record decoder past the frame checksums.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "used by the tests and the fuzz targets in tcptrace/fuzz"
    )
)]
pub fn file_of_records(header_json: &[u8], raw: &[u8]) -> Vec<u8> {
    file_of_version_records(VERSION, header_json, raw)
}

/// [`file_of_records`] for a file of `version` (records of [`record_size`] bytes).
pub fn file_of_version_records(version: u32, header_json: &[u8], raw: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
    out.extend_from_slice(header_json);
    let mut block = |tag: u8, count: usize, payload: &[u8]| {
        let frame = zstd::bulk::compress(payload, 1).unwrap_or_default();
        out.push(tag);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&(count as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    };
    let count = raw.len().div_ceil(record_size(version));
    if count > 0 {
        block(TAG_EVENTS, count, raw);
    }
    let end = End {
        counters: Counters::default(),
        undecodable: 0,
        events: count as u64,
        end_unix_ns: 0,
    };
    block(TAG_END, 1, &encode_end(&end));
    out
}

/// Where and why reading a binary recording stopped (the caller adds the file name).
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not a binary recording at all.
    NotRecording(String),
    UnknownVersion(u32),
    /// The file ends inside the header.
    HeaderCut {
        offset: u64,
    },
    /// Damaged bytes at `offset` (record `record` of the block there, when it is one record).
    Corrupt {
        offset: u64,
        record: Option<u64>,
        reason: String,
    },
    /// The file ends early: no end block, or a block cut off at `offset`.
    Truncated {
        offset: u64,
        reason: String,
    },
    /// The end record's event count differs from the events read.
    CountMismatch {
        offset: u64,
        expected: u64,
        found: u64,
    },
    Io {
        offset: u64,
        source: io::Error,
    },
}

/// Reads exactly `buf.len()` bytes unless the input ends first; returns how many it got.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads the magic, version and header; returns the version and the header's JSON bytes.
pub fn read_header(r: &mut impl Read) -> Result<(u32, Vec<u8>), ReadError> {
    let mut head = [0u8; 16];
    let got = read_full(r, &mut head).map_err(|source| ReadError::Io { offset: 0, source })?;
    if got < MAGIC.len() || head[..8] != MAGIC {
        return Err(ReadError::NotRecording(
            "the file does not start with the binary recording magic number".to_owned(),
        ));
    }
    if got < 12 {
        return Err(ReadError::HeaderCut { offset: got as u64 });
    }
    let version = u32_at(&head, 8);
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(ReadError::UnknownVersion(version));
    }
    if got < 16 {
        return Err(ReadError::HeaderCut { offset: got as u64 });
    }
    let len = u32_at(&head, 12) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(ReadError::Corrupt {
            offset: 12,
            record: None,
            reason: format!("header length {len} exceeds {MAX_HEADER_BYTES} bytes"),
        });
    }
    let mut json = vec![0u8; len];
    let got = read_full(r, &mut json).map_err(|source| ReadError::Io { offset: 16, source })?;
    if got < len {
        return Err(ReadError::HeaderCut {
            offset: 16 + got as u64,
        });
    }
    Ok((version, json))
}

/// Reads the blocks after the header of a file of `version`, handing each event to `f`;
/// `offset` is where the blocks start in the file. Stops at the end block, at the end of the input (truncated),
/// or at the first damaged byte.
///
/// Reading, decompressing and decoding run on a helper thread, a batch of events ahead of
/// `f` (which runs here, so the pipeline behind it need not be `Send`): on two cores the
/// reader's cost leaves the pipeline's path. [`read_blocks_serial`] is the same reading on
/// one thread, its twin in the tests.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the tests read events only; the tool reads samples too"
    )
)]
pub fn read_blocks(
    r: &mut (impl Read + Send),
    version: u32,
    offset: u64,
    f: &mut dyn FnMut(Event),
) -> (u64, Result<End, ReadError>) {
    read_blocks_with(r, version, offset, f, &mut |_| {})
}

/// [`read_blocks`], handing each socket-table sample to `s` in file order among the events.
pub fn read_blocks_with(
    r: &mut (impl Read + Send),
    version: u32,
    offset: u64,
    f: &mut dyn FnMut(Event),
    s: &mut dyn FnMut(Sample),
) -> (u64, Result<End, ReadError>) {
    /// Events handed over at a time.
    const BATCH: usize = 1024;
    enum Msg {
        Events(Vec<Event>),
        Sample(Box<Sample>),
        Done(Result<End, ReadError>),
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(4);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<Event>>();
        let reader = std::thread::Builder::new()
            .name("tcptrace-reader".to_owned())
            .spawn_scoped(scope, move || {
                let batch = std::cell::RefCell::new(Vec::with_capacity(BATCH));
                // Set when this side hung up (it only does so unwinding): stop handing over.
                let gone = std::cell::Cell::new(false);
                let (_, result) = read_blocks_serial_with(
                    r,
                    version,
                    offset,
                    &mut |ev| {
                        if gone.get() {
                            return;
                        }
                        let mut b = batch.borrow_mut();
                        b.push(ev);
                        if b.len() == BATCH {
                            let next = back_rx
                                .try_recv()
                                .unwrap_or_else(|_| Vec::with_capacity(BATCH));
                            gone.set(
                                tx.send(Msg::Events(std::mem::replace(&mut *b, next)))
                                    .is_err(),
                            );
                        }
                    },
                    &mut |sample| {
                        if gone.get() {
                            return;
                        }
                        // The events before it go first.
                        let b = std::mem::take(&mut *batch.borrow_mut());
                        if !b.is_empty() {
                            gone.set(tx.send(Msg::Events(b)).is_err());
                        }
                        gone.set(gone.get() || tx.send(Msg::Sample(Box::new(sample))).is_err());
                    },
                );
                let batch = batch.into_inner();
                if !batch.is_empty() {
                    let _ = tx.send(Msg::Events(batch));
                }
                let _ = tx.send(Msg::Done(result));
            });
        if let Err(source) = reader {
            return (0, Err(ReadError::Io { offset, source }));
        }
        let mut events = 0u64;
        for msg in rx.iter() {
            match msg {
                Msg::Events(mut batch) => {
                    for ev in batch.drain(..) {
                        events += 1;
                        f(ev);
                    }
                    let _ = back_tx.send(batch);
                }
                Msg::Sample(sample) => s(*sample),
                Msg::Done(result) => return (events, result),
            }
        }
        let stopped = io::Error::other("the reading thread stopped");
        (
            events,
            Err(ReadError::Io {
                offset,
                source: stopped,
            }),
        )
    })
}

/// [`read_blocks`] on the calling thread.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the tests read events only; the tool reads samples too"
    )
)]
pub fn read_blocks_serial(
    r: &mut impl Read,
    version: u32,
    offset: u64,
    f: &mut dyn FnMut(Event),
) -> (u64, Result<End, ReadError>) {
    read_blocks_serial_with(r, version, offset, f, &mut |_| {})
}

/// [`read_blocks_with`] on the calling thread.
pub fn read_blocks_serial_with(
    r: &mut impl Read,
    version: u32,
    mut offset: u64,
    f: &mut dyn FnMut(Event),
    s: &mut dyn FnMut(Sample),
) -> (u64, Result<End, ReadError>) {
    let mut events = 0u64;
    let result = (|| {
        let mut dec =
            zstd::bulk::Decompressor::new().map_err(|source| ReadError::Io { offset, source })?;
        let max_frame = max_frame_bytes();
        let size = record_size(version);
        let mut frame: Vec<u8> = Vec::new();
        // Grown to the largest block seen (at most MAX_BLOCK_EVENTS records).
        let mut out: Vec<u8> = Vec::new();
        loop {
            let mut head = [0u8; BLOCK_HEADER_SIZE];
            let got = read_full(r, &mut head).map_err(|source| ReadError::Io { offset, source })?;
            if got == 0 {
                return Err(ReadError::Truncated {
                    offset,
                    reason: "no end record".to_owned(),
                });
            }
            if got < BLOCK_HEADER_SIZE {
                return Err(ReadError::Truncated {
                    offset,
                    reason: format!(
                        "a block header cut off after {got} of {BLOCK_HEADER_SIZE} bytes"
                    ),
                });
            }
            let corrupt = |reason: String| ReadError::Corrupt {
                offset,
                record: None,
                reason,
            };
            let (tag, count, len) = (
                head[0],
                u32_at(&head, 4) as usize,
                u32_at(&head, 8) as usize,
            );
            if head[1..4] != [0, 0, 0] {
                return Err(corrupt(
                    "non-zero reserved bytes in a block header".to_owned(),
                ));
            }
            let expect = match tag {
                TAG_EVENTS if (1..=MAX_BLOCK_EVENTS).contains(&count) => count * size,
                TAG_EVENTS => {
                    return Err(corrupt(format!(
                        "a block of {count} events (1 to {MAX_BLOCK_EVENTS} allowed)"
                    )));
                }
                TAG_END if count == 1 => END_SIZE,
                TAG_SAMPLE if (1..=MAX_SAMPLE_BYTES).contains(&count) => count,
                TAG_SAMPLE => {
                    return Err(corrupt(format!(
                        "a sample block of {count} bytes (1 to {MAX_SAMPLE_BYTES} allowed)"
                    )));
                }
                TAG_END => return Err(corrupt(format!("an end block counting {count} records"))),
                t => return Err(corrupt(format!("unknown block tag 0x{t:02x}"))),
            };
            let max_frame = if tag == TAG_SAMPLE {
                zstd::zstd_safe::compress_bound(MAX_SAMPLE_BYTES)
            } else {
                max_frame
            };
            if len == 0 || len > max_frame {
                return Err(corrupt(format!(
                    "a block frame of {len} bytes (1 to {max_frame} allowed)"
                )));
            }
            frame.resize(len, 0);
            let got =
                read_full(r, &mut frame).map_err(|source| ReadError::Io { offset, source })?;
            if got < len {
                return Err(ReadError::Truncated {
                    offset,
                    reason: format!("a block cut off after {got} of {len} compressed bytes"),
                });
            }
            if out.len() < expect {
                out.resize(expect, 0);
            }
            // `out[..expect]` bounds what zstd may write: a frame holding more fails here.
            let n = dec
                .decompress_to_buffer(&frame, &mut out[..expect])
                .map_err(|e| corrupt(format!("the compressed block does not decompress: {e}")))?;
            if n != expect {
                return Err(corrupt(format!(
                    "the block decompresses to {n} bytes, its header says {expect}"
                )));
            }
            if tag == TAG_END {
                let end = decode_end(&out[..END_SIZE]);
                if end.events != events {
                    return Err(ReadError::CountMismatch {
                        offset,
                        expected: end.events,
                        found: events,
                    });
                }
                let block_end = offset + (BLOCK_HEADER_SIZE + len) as u64;
                let mut one = [0u8; 1];
                let more = read_full(r, &mut one).map_err(|source| ReadError::Io {
                    offset: block_end,
                    source,
                })?;
                if more > 0 {
                    return Err(ReadError::Corrupt {
                        offset: block_end,
                        record: None,
                        reason: "data after the end record".to_owned(),
                    });
                }
                return Ok(end);
            }
            if tag == TAG_SAMPLE {
                let sample = serde_json::from_slice::<Sample>(&out[..expect])
                    .map_err(|e| corrupt(format!("a sample block that does not parse: {e}")))?;
                s(sample);
                offset += (BLOCK_HEADER_SIZE + len) as u64;
                continue;
            }
            for (i, rec) in out[..expect].chunks_exact(size).enumerate() {
                match decode_versioned(version, rec) {
                    Ok(ev) => {
                        events += 1;
                        f(ev);
                    }
                    Err(e) => {
                        return Err(ReadError::Corrupt {
                            offset,
                            record: Some(i as u64),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            offset += (BLOCK_HEADER_SIZE + len) as u64;
        }
    })();
    (events, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode as decode_raw, tests::raw_state};

    fn events() -> Vec<Event> {
        let mut v = Vec::new();
        let mut a = decode_raw(&raw_state(10, 0xffff_8880_1234_5678, 7, 2)).expect("decodes");
        v.push(a);
        a.owner = None;
        a.kind = Kind::ResetSent { state: None };
        v.push(a);
        a.kind = Kind::ResetSent {
            state: Some(TcpState::Established),
        };
        a.srtt_us = Some(0);
        a.family = Family::V6;
        a.local = "[::1]:5".parse().expect("addr");
        a.remote = "[fe80::1]:6".parse().expect("addr");
        v.push(a);
        for kind in [
            Kind::SynRetransmit,
            Kind::SynAckRetransmit,
            Kind::ResetReceived,
            Kind::ListenOverflow,
        ] {
            a.kind = kind;
            v.push(a);
        }
        let mut b = decode_raw(&raw_state(11, 1, 10, 3)).expect("decodes");
        for source in [
            OwnerSource::Current,
            OwnerSource::Cached,
            OwnerSource::Listener,
            OwnerSource::Proc,
        ] {
            if let Some(o) = &mut b.owner {
                o.source = source;
                o.comm.0 = *b"ab\0garbage\xff\xfe\0\0\0\0";
            }
            v.push(b);
        }
        // Live-like identity and close counters, alone and together, extreme values included.
        b.ident.cgroup = Some(u64::MAX);
        v.push(b);
        b.ident.netns = Some(4_026_531_840);
        b.kind = Kind::State {
            old: TcpState::LastAck,
            new: TcpState::Close,
        };
        b.close = Some(CloseStats {
            bytes_acked: 1 << 20,
            bytes_received: u64::MAX,
            retrans: 3,
            srtt_us: 0,
        });
        v.push(b);
        b.ident = Ident {
            cgroup: None,
            netns: Some(0),
        };
        v.push(b);
        v
    }

    #[test]
    fn records_round_trip_and_are_canonical() {
        for ev in events() {
            let mut b = [0u8; RECORD_SIZE];
            encode(&ev, &mut b);
            assert_eq!(decode(&b), Ok(ev));
        }
    }

    #[test]
    fn non_canonical_records_are_rejected() {
        let mut good = [0u8; RECORD_SIZE];
        encode(&events()[0], &mut good);
        let mut b = good;
        b[80] = 2;
        assert_eq!(decode(&b), Err(RecordError::Family(2)));
        b = good;
        b[81] = 9;
        assert_eq!(decode(&b), Err(RecordError::Kind(9)));
        b = good;
        b[83] = 14;
        assert_eq!(decode(&b), Err(RecordError::State(14)));
        b = good;
        b[84] = 5;
        assert_eq!(decode(&b), Err(RecordError::OwnerSource(5)));
        b = good;
        b[20] = 1; // byte 5 of an IPv4 local address
        assert!(matches!(decode(&b), Err(RecordError::NotCanonical(_))));
        b = good;
        b[76] = 1; // srtt without its flag
        assert!(matches!(decode(&b), Err(RecordError::NotCanonical(_))));
        b = good;
        b[87] = 1;
        assert!(matches!(decode(&b), Err(RecordError::NotCanonical(_))));
        // The version 3 fields: a value without its flag, an unknown flag, the padding.
        for at in [88, 96, 100, 104, 112, 120, 124, 127] {
            b = good;
            b[at] = 1;
            assert!(
                matches!(decode(&b), Err(RecordError::NotCanonical(_))),
                "byte {at}"
            );
        }
        b = good;
        b[85] |= 0x10;
        assert!(matches!(decode(&b), Err(RecordError::NotCanonical(_))));
    }

    fn file(evs: &[Event]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), b"{}").expect("writer");
        for e in evs {
            w.event(e).expect("event");
            if e.ts_ns % 3 == 0 {
                w.flush().expect("flush");
            }
        }
        w.finish(Counters::default(), 2, 7).expect("finish")
    }

    fn read(bytes: &[u8]) -> (Vec<Event>, Result<End, ReadError>) {
        let mut r = bytes;
        let (version, json) = read_header(&mut r).expect("header");
        let mut evs = Vec::new();
        let (n, end) = read_blocks(&mut r, version, 16 + json.len() as u64, &mut |e| {
            evs.push(e)
        });
        assert_eq!(n, evs.len() as u64);
        (evs, end)
    }

    #[test]
    fn blocks_and_end_round_trip() {
        let mut evs = Vec::new();
        for i in 0..(BLOCK_EVENTS as u64 * 2 + 5) {
            let mut e = events()[i as usize % events().len()];
            e.ts_ns = i;
            evs.push(e);
        }
        let (back, end) = read(&file(&evs));
        assert_eq!(back, evs);
        let end = end.expect("end");
        assert_eq!(
            (end.events, end.undecodable, end.end_unix_ns),
            (evs.len() as u64, 2, 7)
        );
    }

    #[test]
    fn every_cut_is_truncation_and_keeps_whole_blocks() {
        let evs: Vec<Event> = events();
        let bytes = file(&evs);
        let header_end = 16 + 2;
        for cut in header_end..bytes.len() {
            let (back, end) = read(&bytes[..cut]);
            match end {
                Err(ReadError::Truncated { offset, .. }) => {
                    assert!(offset as usize <= cut, "cut {cut}: offset {offset}");
                    assert_eq!(back[..], evs[..back.len()]);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_threaded_reader_gives_what_the_serial_one_does() {
        let mut evs = Vec::new();
        for i in 0..(BLOCK_EVENTS as u64 * 3 + 7) {
            let mut e = events()[i as usize % events().len()];
            e.ts_ns = i;
            evs.push(e);
        }
        let bytes = file(&evs);
        let mut damaged = bytes.clone();
        let at = bytes.len() / 2;
        damaged[at] ^= 0x40;
        let cuts = [bytes.len(), bytes.len() - 1, bytes.len() / 3, 19];
        let inputs = cuts
            .iter()
            .map(|&c| &bytes[..c])
            .chain([&damaged[..]])
            .collect::<Vec<_>>();
        for input in inputs {
            let mut r = input;
            let (version, json) = read_header(&mut r).expect("header");
            let start = 16 + json.len() as u64;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let (na, ra) = read_blocks(&mut { r }, version, start, &mut |e| a.push(e));
            let (nb, rb) = read_blocks_serial(&mut { r }, version, start, &mut |e| b.push(e));
            assert_eq!((na, &a), (nb, &b));
            assert_eq!(format!("{ra:?}"), format!("{rb:?}"));
        }
    }

    #[test]
    fn version_2_files_still_read_and_sample_blocks_are_bounded() {
        // A version 2 file has no sample blocks and 88-byte records: a version 3 record's
        // first 88 bytes, without identity and close counters.
        let evs: Vec<Event> = events()
            .into_iter()
            .map(|mut e| {
                e.ident = Ident::default();
                e.close = None;
                e
            })
            .collect();
        let mut raw = Vec::new();
        for e in &evs {
            let mut b = [0u8; RECORD_SIZE];
            encode(e, &mut b);
            raw.extend_from_slice(&b[..V2_RECORD_SIZE]);
        }
        let v2 = file_of_version_records(2, b"{}", &raw);
        let (back, end) = read(&v2);
        assert_eq!(back, evs);
        assert!(end.is_ok(), "{end:?}");
        // A version 2 record cannot claim the version 3 fields.
        raw[85] |= 2;
        let (back, end) = read(&file_of_version_records(2, b"{}", &raw));
        assert!(back.is_empty());
        assert!(
            matches!(&end, Err(ReadError::Corrupt { record: Some(0), reason, .. }) if reason.contains("flags")),
            "{end:?}"
        );
        // A sample block claiming more than MAX_SAMPLE_BYTES is refused before allocating.
        let mut w = Writer::new(Vec::new(), b"{}").expect("writer");
        let s = crate::listeners::tests::sample(1, Vec::new(), Default::default());
        w.sample(&s).expect("sample");
        let mut bytes = w.finish(Counters::default(), 0, 0).expect("finish");
        let first_block = 16 + 2;
        assert_eq!(bytes[first_block], TAG_SAMPLE);
        let mut samples = Vec::new();
        let (_, end) = read_blocks_with(
            &mut &bytes[first_block..],
            VERSION,
            first_block as u64,
            &mut |_| {},
            &mut |s| samples.push(s),
        );
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(samples, vec![s]);
        bytes[first_block + 4..first_block + 8]
            .copy_from_slice(&((MAX_SAMPLE_BYTES + 1) as u32).to_le_bytes());
        let (_, end) = read(&bytes);
        assert!(
            matches!(&end, Err(ReadError::Corrupt { offset: 18, reason, .. }) if reason.contains("sample block")),
            "{end:?}"
        );
    }

    #[test]
    fn sample_blocks_written_before_time_wait_was_optional_still_read() {
        let old = crate::listeners::tests::OLD_SAMPLE_JSON.as_bytes();
        let mut w = Writer::new(Vec::new(), b"{}").expect("writer");
        // The block as the previous writer laid it out: the sample's JSON bytes.
        w.pending = old.to_vec();
        w.write_block(TAG_SAMPLE, old.len()).expect("block");
        w.pending = Vec::new();
        let bytes = w.finish(Counters::default(), 0, 0).expect("finish");
        let first_block = 16 + 2;
        let mut samples = Vec::new();
        let (_, end) = read_blocks_with(
            &mut &bytes[first_block..],
            VERSION,
            first_block as u64,
            &mut |_| {},
            &mut |s| samples.push(s),
        );
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].time_wait.as_ref().map(|t| t.count), Some(2));
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut bytes = file(&events());
        let first_block = 16 + 2;
        bytes[first_block + 8..first_block + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let (_, end) = read(&bytes);
        assert!(
            matches!(end, Err(ReadError::Corrupt { offset: 18, .. })),
            "{end:?}"
        );
        bytes[first_block + 4..first_block + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let (_, end) = read(&bytes);
        assert!(
            matches!(end, Err(ReadError::Corrupt { offset: 18, .. })),
            "{end:?}"
        );
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_header(&mut &h[..]),
            Err(ReadError::Corrupt { offset: 12, .. })
        ));
    }
}
