//! Line-per-item output: one line per transition (as tcpstates) or per finished connection
//! (as tcplife, with timings), as aligned text, JSON Lines or CSV. Writes to any `io::Write`.
//!
//! CSV has exactly the JSON keys as columns, in the same order ([`TRANSITION_COLUMNS`],
//! [`CONNECTION_COLUMNS`]), a header row, RFC 4180 quoting (a field holding a comma, a quote,
//! CR or LF is quoted, quotes doubled: a process name can hold any of them), an empty field
//! where JSON has `null`, and `\n` line ends (as the other styles; RFC 4180 readers accept
//! them).
//!
//! Every style builds its lines by hand into one reused buffer, without `core::fmt` (but for
//! timings of over 11 days, and the rare ones `fmt` must round) and without allocating: JSON
//! lines are byte-identical to what serde_json wrote for them (same escapes, same float
//! digits, `null` for unknowns), and tests compare the fast lines with that slow version (and
//! text and CSV with `format!`) over many generated lines.
//!
//! Names: with [`Stream::names`], lines carry the socket's cgroup path, its workload's name
//! and container id, and its network namespace's name (`cgroup`, `workload`, `container`,
//! `netns_name`, after every other column; text connection lines end with the workload, or
//! the cgroup path where no workload shows) next to the ids, which stay. Without names, or
//! for an id that cannot be named, they are `null` (empty in CSV, `-` in text).
//!
//! Socket-table samples add a line when a listener comes under pressure (accept-queue
//! overflows or SYN cookies in its namespace; see `listeners::Alerts`), in text and JSON.

use std::{fmt::Write as _, io, net::SocketAddr, rc::Rc};

use serde::Serialize;

use crate::{
    cgroups::Cgroup,
    clock::Clock,
    decode::{Family, Ident, Owner, OwnerSource, printable},
    listeners::{Alert, Alerts, Sample},
    names::Names,
    sink::Sink,
    track::{Conn, Connection, Fact, PHASES},
};

/// Output style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Text,
    Json,
    Csv,
}

/// What a line stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Transition,
    Connection,
}

/// A line-per-item stream into `W`.
pub struct Stream<W: io::Write> {
    out: W,
    clock: Clock,
    style: Style,
    unit: Unit,
    line: String,
    header_done: bool,
    time_of_day: TimeOfDay,
    rfc3339: Rfc3339,
    /// The JSON line's time, reused.
    time: String,
    /// Width of the text address columns (`-w` widens them to fit IPv6).
    addr_width: usize,
    /// Decides when a socket-table sample deserves a listener-pressure line.
    alerts: Alerts,
    alert_buf: Vec<Alert>,
    /// Names for the socket's cgroup and namespace, if asked for.
    names: Option<Names>,
}

/// The names of one line's socket.
#[derive(Default)]
struct Named {
    cgroup: Option<Rc<Cgroup>>,
    netns: Option<Rc<str>>,
}

impl Named {
    fn of(names: Option<&Names>, ident: Ident) -> Self {
        let Some(n) = names else {
            return Self::default();
        };
        Self {
            cgroup: ident.cgroup.and_then(|id| n.cgroup(id)),
            netns: ident.netns.and_then(|ino| n.netns(ino)),
        }
    }
    fn path(&self) -> Option<&str> {
        self.cgroup.as_deref().map(|c| c.path.as_str())
    }
    fn workload(&self) -> Option<&str> {
        self.cgroup
            .as_deref()
            .and_then(|c| c.workload.as_ref())
            .map(|w| w.name.as_str())
    }
    fn container(&self) -> Option<&str> {
        self.cgroup
            .as_deref()
            .and_then(|c| c.workload.as_ref())
            .and_then(|w| w.container.as_deref())
    }
    fn netns_name(&self) -> Option<&str> {
        self.netns.as_deref()
    }
    /// The JSON members `cgroup`, `workload`, `container`, `netns_name`, each after a comma.
    fn push_json(&self, line: &mut String) {
        line.push_str(",\"cgroup\":");
        push_json_opt_str(line, self.path());
        line.push_str(",\"workload\":");
        push_json_opt_str(line, self.workload());
        line.push_str(",\"container\":");
        push_json_opt_str(line, self.container());
        line.push_str(",\"netns_name\":");
        push_json_opt_str(line, self.netns_name());
    }
    /// The CSV columns `cgroup,workload,container,netns_name`, each after a comma.
    fn push_csv(&self, line: &mut String) {
        for v in [
            self.path(),
            self.workload(),
            self.container(),
            self.netns_name(),
        ] {
            line.push(',');
            if let Some(v) = v {
                push_csv_str(line, v);
            }
        }
    }
}

/// Text address column width: fits any IPv4 `addr:port` (21 characters) with room.
pub const ADDR_WIDTH: usize = 26;
/// `-w`: fits any IPv6 `[addr]:port` without a scope (47 characters), as tcpstates `-w`.
pub const WIDE_ADDR_WIDTH: usize = 47;

/// The CSV columns of a transition line: the JSON keys, in the JSON order.
pub const TRANSITION_COLUMNS: [&str; 21] = [
    "time",
    "ts_ns",
    "pid",
    "tid",
    "comm",
    "owner",
    "family",
    "laddr",
    "lport",
    "raddr",
    "rport",
    "old",
    "new",
    "ms",
    "sock",
    "cgroup_id",
    "netns",
    "cgroup",
    "workload",
    "container",
    "netns_name",
];

/// The CSV columns of a connection line: the JSON keys, in the JSON order.
pub const CONNECTION_COLUMNS: [&str; 30] = [
    "time",
    "ts_ns",
    "pid",
    "comm",
    "side",
    "family",
    "laddr",
    "lport",
    "raddr",
    "rport",
    "handshake_ms",
    "retransmits",
    "fin_wait1_ms",
    "fin_wait2_ms",
    "closing_ms",
    "close_wait_ms",
    "last_ack_ms",
    "time_wait",
    "close",
    "lifetime_ms",
    "cgroup_id",
    "netns",
    "bytes_sent",
    "bytes_received",
    "retrans_segs",
    "srtt_us",
    "cgroup",
    "workload",
    "container",
    "netns_name",
];

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

// Line formatting without `core::fmt` on the hot path: the live stream writes up to
// ~300,000 lines/s, and `fmt`'s padding (one `write_char` per fill character), float and
// socket-address formatting cost more than the rest of the pipeline together (serde_json's
// lines, through `Display` and a String per line, cost three times what they do now). The
// output is byte-identical to the `write!` forms (for JSON, to serde_json's output) named
// in each comment; tests compare them, and `tests::line_cost` times every style.

const SPACES: &str = "                                                                ";

fn push_spaces(line: &mut String, mut n: usize) {
    while n > 0 {
        let k = n.min(SPACES.len());
        line.push_str(&SPACES[..k]);
        n -= k;
    }
}

/// Characters in `s` (what `fmt` pads by).
fn chars(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// `{s:<width$}`.
fn push_left(line: &mut String, s: &str, width: usize) {
    line.push_str(s);
    push_spaces(line, width.saturating_sub(chars(s)));
}

/// `{s:>width$}`.
fn push_right(line: &mut String, s: &str, width: usize) {
    push_spaces(line, width.saturating_sub(chars(s)));
    line.push_str(s);
}

/// `{v}`, optionally right-aligned in `width`; returns the number of digits.
fn push_u64(line: &mut String, v: u64, width: usize) -> usize {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v);
    push_spaces(line, width.saturating_sub(digits.len()));
    line.push_str(digits);
    digits.len()
}

/// `{v:>width$}`.
fn push_u64_right(line: &mut String, v: u64, width: usize) {
    push_u64(line, v, width);
}

/// The decimal digits of each octet value (then NULs) and how many there are.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut v = 0;
    while v < 256 {
        let (h, t, o) = ((v / 100) as u8, (v / 10 % 10) as u8, (v % 10) as u8);
        table[v] = if v >= 100 {
            ([b'0' + h, b'0' + t, b'0' + o], 3)
        } else if v >= 10 {
            ([b'0' + t, b'0' + o, 0], 2)
        } else {
            ([b'0' + o, 0, 0], 1)
        };
        v += 1;
    }
    table
};

/// `{ip}` or, with a port, `{ip}:{port}` of an IPv4 address (at most 21 bytes), built in a
/// stack buffer and pushed at once: the stream writes two per line.
fn push_v4(line: &mut String, ip: std::net::Ipv4Addr, port: Option<u16>) -> usize {
    let mut buf = [0u8; 21];
    let mut n = 0;
    for (k, octet) in ip.octets().into_iter().enumerate() {
        if k > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let (digits, len) = OCTETS[usize::from(octet)];
        buf[n..n + 3].copy_from_slice(&digits);
        n += usize::from(len);
    }
    if let Some(port) = port {
        buf[n] = b':';
        n += 1;
        let len = match port {
            0..=9 => 1,
            10..=99 => 2,
            100..=999 => 3,
            1000..=9999 => 4,
            _ => 5,
        };
        let mut p = port;
        for at in (n..n + len).rev() {
            buf[at] = b'0' + (p % 10) as u8;
            p /= 10;
        }
        n += len;
    }
    // Only ASCII digits, dots and a colon were written.
    if let Ok(s) = std::str::from_utf8(&buf[..n]) {
        line.push_str(s);
    }
    n
}

/// `{ip}` of an IPv6 address as std writes it (RFC 5952: lower-case hex without leading
/// zeros, the first longest run of two or more zero groups as `::`, an IPv4-mapped address
/// as `::ffff:a.b.c.d`); returns its length. A test compares it with `Display`.
fn push_v6(line: &mut String, ip: std::net::Ipv6Addr) -> usize {
    let start = line.len();
    if let Some(v4) = ip.to_ipv4_mapped() {
        line.push_str("::ffff:");
        push_v4(line, v4, None);
        return line.len() - start;
    }
    let groups = ip.segments();
    let (mut run_at, mut run_len) = (0, 0);
    let mut at = 0;
    while at < 8 {
        let len = groups[at..].iter().take_while(|&&g| g == 0).count();
        if len > run_len {
            (run_at, run_len) = (at, len);
        }
        at += len.max(1);
    }
    let push_groups = |line: &mut String, groups: &[u16]| {
        for (k, &g) in groups.iter().enumerate() {
            if k > 0 {
                line.push(':');
            }
            let nibbles = (16 - g.leading_zeros()).div_ceil(4).max(1);
            for n in (0..nibbles).rev() {
                let d = ((g >> (n * 4)) & 0xf) as u8;
                line.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
            }
        }
    };
    if run_len > 1 {
        push_groups(line, &groups[..run_at]);
        line.push_str("::");
        push_groups(line, &groups[run_at + run_len..]);
    } else {
        push_groups(line, &groups);
    }
    line.len() - start
}

/// `{addr:<width$}`: `a.b.c.d:port`, or `[ipv6]:port` / `[ipv6%scope]:port`.
fn push_addr_left(line: &mut String, addr: &SocketAddr, width: usize) {
    let n = match addr {
        SocketAddr::V4(a) => push_v4(line, *a.ip(), Some(a.port())),
        SocketAddr::V6(a) => {
            let start = line.len();
            line.push('[');
            push_v6(line, *a.ip());
            if a.scope_id() != 0 {
                line.push('%');
                push_u64(line, u64::from(a.scope_id()), 0);
            }
            line.push_str("]:");
            push_u64(line, u64::from(a.port()), 0);
            line.len() - start
        }
    };
    push_spaces(line, width.saturating_sub(n));
}

/// `{ms(ns):>width$.3}`, or `-` right-aligned. Milliseconds with 3 decimals are the
/// nanoseconds rounded to microseconds; below 2^50 ns the f64 quotient cannot cross a
/// rounding boundary unless the remainder is exactly 500 ns, where (as for huge values)
/// `fmt` decides, so the output stays identical.
fn push_ms(line: &mut String, ns: Option<u64>, width: usize) {
    let Some(ns) = ns else {
        push_right(line, "-", width);
        return;
    };
    let rem = ns % 1000;
    if rem == 500 || ns >= 1 << 50 {
        let _ = write!(line, "{:>width$.3}", ms(ns));
        return;
    }
    let us = ns / 1000 + u64::from(rem > 500);
    let int = us / 1000;
    let frac = us % 1000;
    push_u64(line, int, width.saturating_sub(4));
    line.push('.');
    line.push(char::from(b'0' + (frac / 100) as u8));
    line.push(char::from(b'0' + (frac / 10 % 10) as u8));
    line.push(char::from(b'0' + (frac % 10) as u8));
}

/// `{tgid:>7} {comm:<15}` (or dashes).
fn owner_cols(line: &mut String, owner: Option<Owner>) {
    match owner {
        Some(o) => {
            push_u64_right(line, u64::from(o.tgid), 7);
            line.push(' ');
            let name = o.comm.as_str();
            push_left(line, &printable(&name), 15);
        }
        None => {
            push_right(line, "-", 7);
            line.push(' ');
            push_left(line, "-", 15);
        }
    }
}

/// One CSV field (RFC 4180): as is, or in double quotes with quotes doubled when it holds a
/// comma, a double quote, CR or LF. A test checks it against a plain version.
fn push_csv_str(line: &mut String, s: &str) {
    if !s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        line.push_str(s);
        return;
    }
    line.push('"');
    for (i, part) in s.split('"').enumerate() {
        if i > 0 {
            line.push_str("\"\"");
        }
        line.push_str(part);
    }
    line.push('"');
}

/// `{ip}`.
fn push_ip(line: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(a) => push_v4(line, a, None),
        std::net::IpAddr::V6(a) => push_v6(line, a),
    };
}

/// `{}` of `ns as f64 / 1e6` (the JSON's value, shortest form, no exponent), or nothing for
/// `None`. Below 10^15 ns the exact decimal has at most 15 significant digits, so it is the
/// shortest decimal that reads back as that f64: integer part, then the nanoseconds without
/// trailing zeros. Beyond that `fmt` decides.
fn push_ms_csv(line: &mut String, ns: Option<u64>) {
    let Some(ns) = ns else { return };
    if ns >= 1_000_000_000_000_000 {
        let _ = write!(line, "{}", ms(ns));
        return;
    }
    push_u64(line, ns / 1_000_000, 0);
    let mut frac = ns % 1_000_000;
    if frac == 0 {
        return;
    }
    line.push('.');
    let mut div = 100_000;
    while frac > 0 {
        line.push(char::from(b'0' + (frac / div) as u8));
        frac %= div;
        div /= 10;
    }
}

/// `{v:#x}`.
fn push_hex(line: &mut String, v: u64) {
    line.push_str("0x");
    let nibbles = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for k in (0..nibbles).rev() {
        let d = ((v >> (k * 4)) & 0xf) as u8;
        line.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
}

/// The `family,laddr,lport,raddr,rport` CSV columns (the same in transition and connection
/// lines).
fn push_csv_endpoints(line: &mut String, conn: &Conn) {
    line.push_str(family(conn).name());
    line.push(',');
    push_ip(line, conn.local.ip());
    push_csv_u64(line, Some(u64::from(conn.local.port())));
    line.push(',');
    push_ip(line, conn.remote.ip());
    push_csv_u64(line, Some(u64::from(conn.remote.port())));
}

/// `,` then `{v}`, or only `,` for `None`.
fn push_csv_u64(line: &mut String, v: Option<u64>) {
    line.push(',');
    if let Some(v) = v {
        push_u64(line, v, 0);
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it: `"` and `\\` by a backslash,
/// control characters as `\\b \\t \\n \\f \\r` or `\\u00xx`, everything else (DEL and
/// non-ASCII included) as is. A test checks it against serde_json.
fn push_json_str(line: &mut String, s: &str) {
    line.push('"');
    if !needs_json_escape(s.as_bytes()) {
        line.push_str(s);
        line.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'\n' => 'n',
            b'\r' => 'r',
            b'\t' => 't',
            0x08 => 'b',
            0x0c => 'f',
            0..=0x1f => 'u',
            _ => continue,
        };
        // `b` is ASCII, so `i` is a character boundary.
        line.push_str(&s[start..i]);
        start = i + 1;
        line.push('\\');
        line.push(short);
        if short == 'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line.push_str("00");
            line.push(char::from(HEX[usize::from(b >> 4)]));
            line.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    line.push_str(&s[start..]);
    line.push('"');
}

/// Whether `s` holds a byte JSON escapes: checked 16 bytes at a time without branching
/// inside a block, so the compiler can vectorise it (cgroup paths are long and clean).
fn needs_json_escape(s: &[u8]) -> bool {
    let bad = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let mut blocks = s.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &b| any | bad(b)) {
            return true;
        }
    }
    blocks
        .remainder()
        .iter()
        .fold(false, |any, &b| any | bad(b))
}

/// One of the tool's own names (a state, side, close kind or owner source) as a JSON string:
/// they hold nothing to escape (a test checks every one), so they are not scanned.
fn push_json_name(line: &mut String, name: &'static str) {
    debug_assert!(!needs_json_escape(name.as_bytes()), "{name}");
    line.push('"');
    line.push_str(name);
    line.push('"');
}

/// [`push_json_name`] or `null`.
fn push_json_opt_name(line: &mut String, name: Option<&'static str>) {
    match name {
        Some(name) => push_json_name(line, name),
        None => line.push_str("null"),
    }
}

/// A JSON string or `null`.
fn push_json_opt_str(line: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(line, s),
        None => line.push_str("null"),
    }
}

/// A JSON integer or `null`.
/// The start every JSON line shares: `{"time":..,"ts_ns":..,"pid":..`.
fn push_json_head(line: &mut String, time: &str, ts_ns: u64, owner: Option<Owner>) {
    line.push_str("{\"time\":");
    push_json_str(line, time);
    line.push_str(",\"ts_ns\":");
    push_u64(line, ts_ns, 0);
    line.push_str(",\"pid\":");
    push_json_u64(line, owner.map(|o| u64::from(o.tgid)));
}

/// `,"comm":` and the owner's process name, or `null`.
fn push_json_comm(line: &mut String, owner: Option<Owner>) {
    line.push_str(",\"comm\":");
    match &owner {
        Some(o) => push_json_str(line, &o.comm.as_str()),
        None => line.push_str("null"),
    }
}

fn push_json_u64(line: &mut String, v: Option<u64>) {
    match v {
        Some(v) => {
            push_u64(line, v, 0);
        }
        None => line.push_str("null"),
    }
}

/// `ns as f64 / 1e6` as serde_json writes an f64 (shortest round-trip digits, `.0` on whole
/// numbers, an exponent below 1e-5 and from 1e16), or `null`. From 10 ns to 10^15 ns the
/// shortest digits are the exact decimal (as in [`push_ms_csv`]) and no exponent is written,
/// so those are built by hand; the rest (under 10 ns, over 11 days) go through serde_json
/// itself. A test compares both over many values.
fn push_json_ms(line: &mut String, ns: Option<u64>) {
    let Some(ns) = ns else {
        line.push_str("null");
        return;
    };
    if (1..10).contains(&ns) || ns >= 1_000_000_000_000_000 {
        let mut buf = [0u8; 40];
        let mut w = &mut buf[..];
        if serde_json::to_writer(&mut w, &ms(ns)).is_ok() {
            let n = 40 - w.len();
            if let Ok(s) = std::str::from_utf8(&buf[..n]) {
                line.push_str(s);
                return;
            }
        }
        let _ = write!(line, "{}", ms(ns));
        return;
    }
    push_u64(line, ns / 1_000_000, 0);
    let mut frac = ns % 1_000_000;
    line.push('.');
    if frac == 0 {
        line.push('0');
        return;
    }
    let mut div = 100_000;
    while frac > 0 {
        line.push(char::from(b'0' + (frac / div) as u8));
        frac %= div;
        div /= 10;
    }
}

/// The `"family":...,"laddr":...,"lport":...,"raddr":...,"rport":...` members (the same in
/// transition and connection lines), each after a comma.
fn push_json_endpoints(line: &mut String, conn: &Conn) {
    line.push_str(",\"family\":\"");
    line.push_str(family(conn).name());
    line.push_str("\",\"laddr\":\"");
    push_ip(line, conn.local.ip());
    line.push_str("\",\"lport\":");
    push_u64(line, u64::from(conn.local.port()), 0);
    line.push_str(",\"raddr\":\"");
    push_ip(line, conn.remote.ip());
    line.push_str("\",\"rport\":");
    push_u64(line, u64::from(conn.remote.port()), 0);
}

/// The owner source as JSON spells it.
fn owner_source_name(s: OwnerSource) -> &'static str {
    match s {
        OwnerSource::Current => "current",
        OwnerSource::Cached => "cached",
        OwnerSource::Listener => "listener",
        OwnerSource::Proc => "proc",
    }
}

/// Local time of day as [`Clock::write_time_of_day`] writes it, with the `HH:MM:SS.` part
/// formatted once per second.
#[derive(Default)]
struct TimeOfDay {
    secs: Option<i64>,
    prefix: String,
}

impl TimeOfDay {
    fn push(&mut self, line: &mut String, clock: &Clock, ts_ns: u64) {
        // The same split as `Clock::write_time_of_day` (a test keeps the two equal).
        let local = clock.unix_ns(ts_ns) + i64::from(clock.utc_offset_secs) * 1_000_000_000;
        let secs = local.div_euclid(1_000_000_000);
        let micros = local.rem_euclid(1_000_000_000) / 1000;
        if self.secs != Some(secs) {
            let mut full = String::with_capacity(16);
            clock.write_time_of_day(&mut full, ts_ns);
            match full.rfind('.') {
                Some(dot) => {
                    self.prefix.clear();
                    self.prefix.push_str(&full[..=dot]);
                    self.secs = Some(secs);
                }
                None => {
                    line.push_str(&full);
                    return;
                }
            }
        }
        line.push_str(&self.prefix);
        let micros = micros as u64;
        for div in [100_000, 10_000, 1_000, 100, 10, 1] {
            line.push(char::from(b'0' + (micros / div % 10) as u8));
        }
    }
}

/// UTC time as [`Clock::write_rfc3339`] writes it, with everything up to the seconds
/// formatted once per second (chrono's formatter parses its pattern on every call).
#[derive(Default)]
struct Rfc3339 {
    secs: Option<i64>,
    prefix: String,
}

impl Rfc3339 {
    fn push(&mut self, out: &mut String, clock: &Clock, ts_ns: u64) {
        // The same split as `Clock::write_rfc3339` (a test keeps the two equal).
        let ns = clock.unix_ns(ts_ns);
        let secs = ns.div_euclid(1_000_000_000);
        let micros = (ns.rem_euclid(1_000_000_000) / 1000) as u64;
        if self.secs != Some(secs) {
            let mut full = String::with_capacity(32);
            clock.write_rfc3339(&mut full, ts_ns);
            match full.rfind('.').filter(|_| full.ends_with('Z')) {
                Some(dot) => {
                    self.prefix.clear();
                    self.prefix.push_str(&full[..=dot]);
                    self.secs = Some(secs);
                }
                None => {
                    out.push_str(&full);
                    return;
                }
            }
        }
        out.push_str(&self.prefix);
        for div in [100_000, 10_000, 1_000, 100, 10, 1] {
            out.push(char::from(b'0' + (micros / div % 10) as u8));
        }
        out.push('Z');
    }
}

fn family(conn: &Conn) -> Family {
    if conn.local.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

impl<W: io::Write> Stream<W> {
    pub fn new(out: W, clock: Clock, style: Style, unit: Unit) -> Self {
        Self {
            out,
            clock,
            style,
            unit,
            line: String::with_capacity(256),
            header_done: false,
            time_of_day: TimeOfDay::default(),
            rfc3339: Rfc3339::default(),
            time: String::with_capacity(32),
            addr_width: ADDR_WIDTH,
            alerts: Alerts::default(),
            alert_buf: Vec::new(),
            names: None,
        }
    }

    /// Names sockets' cgroups and namespaces through `names` (see the module doc).
    pub fn names(mut self, names: Names) -> Self {
        self.names = Some(names);
        self
    }

    /// `-w`: address columns wide enough for IPv6 (text only; JSON and CSV have no columns
    /// to align).
    pub fn wide(mut self, wide: bool) -> Self {
        self.addr_width = if wide { WIDE_ADDR_WIDTH } else { ADDR_WIDTH };
        self
    }

    /// The text header line for this stream's unit, with address columns `aw` wide.
    pub fn header(unit: Unit, aw: usize) -> String {
        match unit {
            Unit::Transition => format!(
                "{:<15} {:>7} {:<15} {:<aw$} {:<aw$} {:>11}    {:<11} {:>10}",
                "TIME", "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLD", "NEW", "MS"
            ),
            Unit::Connection => format!(
                "{:<15} {:>7} {:<15} {:<6} {:<aw$} {:<aw$} {:>9} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:<15} {:>10} {:>12} {:>12} {}",
                "TIME",
                "PID",
                "COMM",
                "SIDE",
                "LADDR:LPORT",
                "RADDR:RPORT",
                "HS_MS",
                "RTX",
                "FW1_MS",
                "FW2_MS",
                "CLSNG_MS",
                "CW_MS",
                "LA_MS",
                "CLOSE",
                "LIFE_MS",
                "SENT",
                "RECV",
                "WORKLOAD"
            ),
        }
    }

    fn transition_line(
        &mut self,
        ts_ns: u64,
        conn: &Conn,
        old: &'static str,
        new: &'static str,
        dwell: Option<u64>,
    ) {
        let named = match self.style {
            Style::Text => Named::default(),
            _ => Named::of(self.names.as_ref(), conn.ident),
        };
        let line = &mut self.line;
        match self.style {
            Style::Text => {
                self.time_of_day.push(line, &self.clock, ts_ns);
                line.push(' ');
                owner_cols(line, conn.owner);
                // " {:<aw$} {:<aw$} {:>11} -> {:<11} "
                line.push(' ');
                push_addr_left(line, &conn.local, self.addr_width);
                line.push(' ');
                push_addr_left(line, &conn.remote, self.addr_width);
                line.push(' ');
                push_right(line, old, 11);
                line.push_str(" -> ");
                push_left(line, new, 11);
                line.push(' ');
                push_ms(line, dwell, 10);
            }
            Style::Json => {
                let time = &mut self.time;
                time.clear();
                self.rfc3339.push(time, &self.clock, ts_ns);
                let o = conn.owner;
                push_json_head(line, time, ts_ns, o);
                line.push_str(",\"tid\":");
                push_json_u64(line, o.map(|o| u64::from(o.pid)));
                push_json_comm(line, o);
                line.push_str(",\"owner\":");
                push_json_opt_name(line, o.map(|o| owner_source_name(o.source)));
                push_json_endpoints(line, conn);
                line.push_str(",\"old\":");
                push_json_name(line, old);
                line.push_str(",\"new\":");
                push_json_name(line, new);
                line.push_str(",\"ms\":");
                push_json_ms(line, dwell);
                line.push_str(",\"sock\":\"");
                push_hex(line, conn.sock);
                line.push_str("\",\"cgroup_id\":");
                push_json_u64(line, conn.ident.cgroup);
                line.push_str(",\"netns\":");
                push_json_u64(line, conn.ident.netns.map(u64::from));
                named.push_json(line);
                line.push('}');
            }
            Style::Csv => {
                self.rfc3339.push(line, &self.clock, ts_ns);
                push_csv_u64(line, Some(ts_ns));
                push_csv_u64(line, conn.owner.map(|o| u64::from(o.tgid)));
                push_csv_u64(line, conn.owner.map(|o| u64::from(o.pid)));
                line.push(',');
                if let Some(o) = conn.owner {
                    push_csv_str(line, &o.comm.as_str());
                    line.push(',');
                    line.push_str(owner_source_name(o.source));
                } else {
                    line.push(',');
                }
                line.push(',');
                push_csv_endpoints(line, conn);
                line.push(',');
                line.push_str(old);
                line.push(',');
                line.push_str(new);
                line.push(',');
                push_ms_csv(line, dwell);
                line.push(',');
                push_hex(line, conn.sock);
                push_csv_u64(line, conn.ident.cgroup);
                push_csv_u64(line, conn.ident.netns.map(u64::from));
                named.push_csv(line);
            }
        }
    }

    fn connection_line(&mut self, c: &Connection) {
        let conn = &c.conn;
        let named = Named::of(self.names.as_ref(), conn.ident);
        let line = &mut self.line;
        match self.style {
            Style::Text => {
                self.time_of_day.push(line, &self.clock, c.closed_ns);
                line.push(' ');
                owner_cols(line, conn.owner);
                // " {side:<6} {local:<aw$} {remote:<aw$} "
                line.push(' ');
                push_left(line, conn.side.map_or("?", |s| s.name()), 6);
                line.push(' ');
                push_addr_left(line, &conn.local, self.addr_width);
                line.push(' ');
                push_addr_left(line, &conn.remote, self.addr_width);
                line.push(' ');
                push_ms(line, c.handshake_ns, 9);
                line.push(' ');
                push_u64_right(line, u64::from(c.retransmits), 4);
                for p in c.phases {
                    line.push(' ');
                    push_ms(line, p, 9);
                }
                let close = if c.time_wait {
                    "fin+time_wait"
                } else {
                    c.close.name()
                };
                line.push(' ');
                push_left(line, close, 15);
                line.push(' ');
                push_ms(line, c.lifetime_ns(), 10);
                for v in [
                    c.stats.map(|s| s.bytes_acked),
                    c.stats.map(|s| s.bytes_received),
                ] {
                    line.push(' ');
                    match v {
                        Some(v) => push_u64_right(line, v, 12),
                        None => push_right(line, "-", 12),
                    }
                }
                line.push(' ');
                let label = named.cgroup.as_deref().map_or("-", |c| c.label());
                // One line per connection even for a path with a newline in it.
                line.push_str(&printable(label));
            }
            Style::Json => {
                let time = &mut self.time;
                time.clear();
                self.rfc3339.push(time, &self.clock, c.closed_ns);
                let o = conn.owner;
                push_json_head(line, time, c.closed_ns, o);
                push_json_comm(line, o);
                line.push_str(",\"side\":");
                push_json_opt_name(line, conn.side.map(|s| s.name()));
                push_json_endpoints(line, conn);
                line.push_str(",\"handshake_ms\":");
                push_json_ms(line, c.handshake_ns);
                line.push_str(",\"retransmits\":");
                push_u64(line, u64::from(c.retransmits), 0);
                debug_assert_eq!(PHASES.len(), 5);
                for (key, p) in [
                    ",\"fin_wait1_ms\":",
                    ",\"fin_wait2_ms\":",
                    ",\"closing_ms\":",
                    ",\"close_wait_ms\":",
                    ",\"last_ack_ms\":",
                ]
                .into_iter()
                .zip(c.phases)
                {
                    line.push_str(key);
                    push_json_ms(line, p);
                }
                line.push_str(",\"time_wait\":");
                line.push_str(if c.time_wait { "true" } else { "false" });
                line.push_str(",\"close\":");
                push_json_name(line, c.close.name());
                line.push_str(",\"lifetime_ms\":");
                push_json_ms(line, c.lifetime_ns());
                line.push_str(",\"cgroup_id\":");
                push_json_u64(line, conn.ident.cgroup);
                line.push_str(",\"netns\":");
                push_json_u64(line, conn.ident.netns.map(u64::from));
                line.push_str(",\"bytes_sent\":");
                push_json_u64(line, c.stats.map(|s| s.bytes_acked));
                line.push_str(",\"bytes_received\":");
                push_json_u64(line, c.stats.map(|s| s.bytes_received));
                line.push_str(",\"retrans_segs\":");
                push_json_u64(line, c.stats.map(|s| u64::from(s.retrans)));
                line.push_str(",\"srtt_us\":");
                push_json_u64(line, c.stats.map(|s| u64::from(s.srtt_us)));
                named.push_json(line);
                line.push('}');
            }
            Style::Csv => {
                self.rfc3339.push(line, &self.clock, c.closed_ns);
                push_csv_u64(line, Some(c.closed_ns));
                push_csv_u64(line, conn.owner.map(|o| u64::from(o.tgid)));
                line.push(',');
                if let Some(o) = conn.owner {
                    push_csv_str(line, &o.comm.as_str());
                }
                line.push(',');
                if let Some(side) = conn.side {
                    line.push_str(side.name());
                }
                line.push(',');
                push_csv_endpoints(line, conn);
                line.push(',');
                push_ms_csv(line, c.handshake_ns);
                push_csv_u64(line, Some(u64::from(c.retransmits)));
                debug_assert_eq!(PHASES.len(), 5);
                for p in c.phases {
                    line.push(',');
                    push_ms_csv(line, p);
                }
                line.push(',');
                line.push_str(if c.time_wait { "true" } else { "false" });
                line.push(',');
                line.push_str(c.close.name());
                line.push(',');
                push_ms_csv(line, c.lifetime_ns());
                push_csv_u64(line, conn.ident.cgroup);
                push_csv_u64(line, conn.ident.netns.map(u64::from));
                push_csv_u64(line, c.stats.map(|s| s.bytes_acked));
                push_csv_u64(line, c.stats.map(|s| s.bytes_received));
                push_csv_u64(line, c.stats.map(|s| u64::from(s.retrans)));
                push_csv_u64(line, c.stats.map(|s| u64::from(s.srtt_us)));
                named.push_csv(line);
            }
        }
    }
}

impl<W: io::Write> Sink for Stream<W> {
    fn fact(&mut self, fact: &Fact) -> io::Result<()> {
        if !self.header_done {
            self.write_header()?;
        }
        self.line.clear();
        match (self.unit, fact) {
            (
                Unit::Transition,
                Fact::Transition {
                    ts_ns,
                    conn,
                    old,
                    new,
                    dwell_ns,
                },
            ) => self.transition_line(*ts_ns, conn, old.name(), new.name(), *dwell_ns),
            (Unit::Connection, Fact::Closed(c)) => self.connection_line(c),
            _ => return Ok(()),
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    /// A listener-pressure line (text and JSON; the CSV table has fixed columns and gets
    /// none): when a namespace's ListenOverflows or SyncookiesSent grew since its previous
    /// sample, naming the listener the overflows are inferred to (the only one seen full; no
    /// line when none or several were) or the busiest one, at most once per 10 s each.
    fn sample(&mut self, sample: &Sample) -> io::Result<()> {
        if self.style == Style::Csv {
            return Ok(());
        }
        self.alert_buf.clear();
        self.alerts.check(sample, &mut self.alert_buf);
        if self.alert_buf.is_empty() {
            return Ok(());
        }
        if !self.header_done {
            self.write_header()?;
        }
        for a in std::mem::take(&mut self.alert_buf) {
            self.line.clear();
            match self.style {
                Style::Text => {
                    self.clock.write_time_of_day(&mut self.line, a.ts_ns);
                    let what = match a.what {
                        "listen_overflow" => "inferred (only listener seen full): ListenOverflows",
                        _ => "SyncookiesSent",
                    };
                    let _ = write!(
                        self.line,
                        " {} {} netns {}: accept queue {}/{}, SYN_RECV {}, {what} +{}",
                        a.what.to_ascii_uppercase(),
                        a.local,
                        a.netns,
                        a.accept_queue,
                        a.backlog,
                        a.syn_recv,
                        a.delta
                    );
                }
                _ => {
                    self.time.clear();
                    self.clock.write_rfc3339(&mut self.time, a.ts_ns);
                    #[derive(Serialize)]
                    struct Line<'a> {
                        time: &'a str,
                        #[serde(flatten)]
                        alert: &'a Alert,
                    }
                    let json = serde_json::to_string(&Line {
                        time: &self.time,
                        alert: &a,
                    })
                    .map_err(io::Error::other)?;
                    self.line.push_str(&json);
                }
            }
            self.line.push('\n');
            self.out.write_all(self.line.as_bytes())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // A quiet host still gets the column header promptly (the first flush is one tick
        // after start).
        if !self.header_done {
            self.write_header()?;
        }
        self.out.flush()
    }
}

impl<W: io::Write> Stream<W> {
    fn write_header(&mut self) -> io::Result<()> {
        self.header_done = true;
        match self.style {
            Style::Text => writeln!(self.out, "{}", Self::header(self.unit, self.addr_width)),
            Style::Json => Ok(()),
            Style::Csv => {
                let columns: &[&str] = match self.unit {
                    Unit::Transition => &TRANSITION_COLUMNS,
                    Unit::Connection => &CONNECTION_COLUMNS,
                };
                writeln!(self.out, "{}", columns.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{Comm, OwnerSource, TcpState},
        track::{CloseKind, Side},
    };

    fn conn() -> Conn {
        Conn {
            sock: 0xffff_0001,
            local: "127.0.0.1:40000".parse().expect("addr"),
            remote: "127.0.0.1:8080".parse().expect("addr"),
            owner: Some(Owner {
                tgid: 4242,
                pid: 4243,
                comm: Comm::from_str_lossy("client"),
                source: OwnerSource::Cached,
            }),
            side: Some(Side::Client),
            ident: Default::default(),
        }
    }

    const CLOCK: Clock = Clock {
        realtime_offset_ns: 1_764_082_501_000_000_000,
        utc_offset_secs: 0,
    };

    /// Names for the tests' cgroup ids 11-15 and namespaces 7 and 9 (11 and 13 need CSV
    /// quoting; 13, 14 and 9 JSON escapes).
    fn names() -> Names {
        Names::fixed(
            &[
                (11, "/system.slice/a,b.service"),
                (
                    12,
                    "/system.slice/docker-4f2c9a0b7e1d3c5a6b8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b.scope",
                ),
                (13, "/odd \"dir\"\nname"),
                (14, "/back\\slash/\u{1}ctl\t\u{7f}/p\u{e4}iv\u{e4}/\u{fffd}"),
                (
                    15,
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-4f2c9a0b7e1d3c5a6b8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b.scope",
                ),
            ],
            &[(7, "blue"), (9, "odd\"ns\\\n\u{1f}")],
        )
    }

    fn render(style: Style, unit: Unit, facts: &[Fact]) -> String {
        let mut s = Stream::new(Vec::new(), CLOCK, style, unit).names(names());
        for f in facts {
            s.fact(f).expect("write");
        }
        String::from_utf8(s.out).expect("utf8")
    }

    fn transition(dwell: Option<u64>) -> Fact {
        Fact::Transition {
            ts_ns: 1_500_000,
            conn: conn(),
            old: TcpState::SynSent,
            new: TcpState::Established,
            dwell_ns: dwell,
        }
    }

    /// A process may name itself anything (`prctl(PR_SET_NAME)`): in text its control
    /// characters show as `?`, so the name neither breaks the line nor reaches the terminal
    /// as an escape sequence; JSON keeps it, escaped.
    #[test]
    fn text_lines_show_control_characters_in_names_as_question_marks() {
        let name = "a\nb\x1b[31mX";
        let mut t = transition(Some(1_000));
        if let Fact::Transition { conn, .. } = &mut t {
            *conn = owned_by(name);
        }
        let text = render(Style::Text, Unit::Transition, std::slice::from_ref(&t));
        assert_eq!(text.lines().count(), 2, "header and one line: {text}");
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains("a?b?[31mX"), "{text:?}");
        let conn_text = render(Style::Text, Unit::Connection, &[closed(owned_by(name))]);
        assert_eq!(conn_text.lines().count(), 2, "{conn_text}");
        assert!(conn_text.contains("a?b?[31mX"), "{conn_text:?}");
        let json = render(Style::Json, Unit::Transition, &[t]);
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
        assert_eq!(v["comm"], name);
    }

    #[test]
    fn text_transition_line() {
        let out = render(
            Style::Text,
            Unit::Transition,
            &[transition(Some(1_234_567)), transition(None)],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIME"));
        assert_eq!(
            lines[1],
            "14:55:01.001500    4242 client          127.0.0.1:40000            127.0.0.1:8080                SYN_SENT -> ESTABLISHED      1.235"
        );
        assert!(lines[2].ends_with(" -"));
    }

    #[test]
    fn fast_text_formatting_matches_fmt() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut values: Vec<u64> = vec![0, 1, 499, 500, 501, 999_499, 999_500, 999_501];
        values.extend([1 << 50, (1 << 50) - 1, u64::MAX, 86_400_000_000_000_000]);
        for _ in 0..20_000 {
            let v = rand();
            values.push(v >> (v % 64));
            values.push((v % 10_000_000) / 1000 * 1000 + 500);
        }
        for &ns in &values {
            for width in [0, 9, 10] {
                let mut fast = String::new();
                push_ms(&mut fast, Some(ns), width);
                assert_eq!(fast, format!("{:>width$.3}", ms(ns)), "ns {ns}");
            }
            let mut fast = String::new();
            push_u64_right(&mut fast, ns, 7);
            assert_eq!(fast, format!("{ns:>7}"));
        }
        let mut dash = String::new();
        push_ms(&mut dash, None, 10);
        assert_eq!(dash, format!("{:>10}", "-"));

        let mut addrs: Vec<SocketAddr> = [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "[::1]:443",
            "[fe80::1%2]:22",
            "[2001:db8::1234:5678]:40000",
        ]
        .iter()
        .map(|a| a.parse().expect("addr"))
        .collect();
        for _ in 0..2000 {
            let v = rand();
            addrs.push(SocketAddr::from((
                (v as u32).to_be_bytes(),
                (v >> 32) as u16,
            )));
        }
        for v in 0..=255u8 {
            for (k, port) in [0u16, 9, 10, 99, 100, 999, 1000, 9999, 10_000, 65_535]
                .into_iter()
                .enumerate()
            {
                let mut octets = [1, 22, 133, 244];
                octets[k % 4] = v;
                addrs.push(SocketAddr::from((octets, port)));
            }
        }
        // IPv6 with every pattern of zero groups (runs of each length at each place, ties),
        // IPv4-mapped and -compatible addresses, scopes.
        for pattern in 0..256u32 {
            let v = rand();
            let groups: [u16; 8] = std::array::from_fn(|k| {
                if pattern & (1 << k) == 0 {
                    0
                } else {
                    (v >> (k * 8)) as u16 >> (v % 16)
                }
            });
            let ip = std::net::Ipv6Addr::from(groups);
            let scope = if v % 3 == 0 {
                0
            } else {
                (v >> 40) as u32 % 70_000
            };
            addrs.push(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                (v >> 20) as u16,
                0,
                scope,
            )));
        }
        for v4 in ["0.0.0.0", "1.2.3.4", "255.255.255.255"] {
            let v4: std::net::Ipv4Addr = v4.parse().expect("ip");
            for ip in [v4.to_ipv6_mapped(), v4.to_ipv6_compatible()] {
                addrs.push(SocketAddr::from((ip, 80)));
            }
        }
        for a in &addrs {
            let mut fast = String::new();
            push_ip(&mut fast, a.ip());
            assert_eq!(fast, a.ip().to_string());
            for width in [0, 26, 47] {
                let mut fast = String::new();
                push_addr_left(&mut fast, a, width);
                assert_eq!(fast, format!("{a:<width$}"));
            }
        }
        for comm in [
            "",
            "a",
            "client",
            "päivä-ä",
            "exactly15chars_",
            "x".repeat(40).as_str(),
        ] {
            let mut fast = String::new();
            push_left(&mut fast, comm, 15);
            assert_eq!(fast, format!("{comm:<15}"));
            fast.clear();
            push_right(&mut fast, comm, 11);
            assert_eq!(fast, format!("{comm:>11}"));
        }
    }

    #[test]
    fn time_of_day_cache_matches_the_clock() {
        let mut tod = TimeOfDay::default();
        let mut utc = Rfc3339::default();
        for clock in [
            CLOCK,
            Clock {
                realtime_offset_ns: -5_000_000_123,
                utc_offset_secs: -7 * 3600,
            },
        ] {
            let mut ts = 0u64;
            for step in [
                1u64,
                999_999,
                1_000_000_001,
                7,
                3_599_999_999_999,
                86_399_999_999_999,
            ]
            .iter()
            .cycle()
            .take(500)
            {
                ts = ts.wrapping_add(*step) % (1 << 62);
                let mut fast = String::new();
                tod.push(&mut fast, &clock, ts);
                let mut slow = String::new();
                clock.write_time_of_day(&mut slow, ts);
                assert_eq!(fast, slow, "ts {ts}");
                fast.clear();
                utc.push(&mut fast, &clock, ts);
                slow.clear();
                clock.write_rfc3339(&mut slow, ts);
                assert_eq!(fast, slow, "ts {ts}");
            }
            tod = TimeOfDay::default();
            utc = Rfc3339::default();
        }
    }

    #[test]
    fn json_transition_has_the_documented_keys() {
        let out = render(
            Style::Json,
            Unit::Transition,
            &[transition(Some(2_000_000))],
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        for k in [
            "time", "pid", "comm", "family", "laddr", "lport", "raddr", "rport", "old", "new", "ms",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "client");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["old"], "SYN_SENT");
        assert_eq!(v["new"], "ESTABLISHED");
        assert_eq!(v["ms"], 2.0);
        assert_eq!(v["lport"], 40000);
        assert_eq!(v["time"], "2025-11-25T14:55:01.001500Z");
        assert_eq!(v["laddr"], "127.0.0.1");
        assert_eq!(v["raddr"], "127.0.0.1");
        assert_eq!(v["sock"], "0xffff0001");
    }

    #[test]
    fn connection_lines_text_and_json() {
        let c = Fact::Closed(Connection {
            conn: conn(),
            opened_ns: Some(1_000_000),
            closed_ns: 11_000_000,
            handshake_ns: Some(50_000),
            retransmits: 1,
            phases: [Some(100_000), Some(200_000), None, None, None],
            close: CloseKind::Fin,
            time_wait: true,
            stats: None,
        });
        let text = render(Style::Text, Unit::Connection, &[c, transition(None)]);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("fin+time_wait"), "{text}");
        let json = render(Style::Json, Unit::Connection, &[c]);
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
        assert_eq!(v["side"], "client");
        assert_eq!(v["handshake_ms"], 0.05);
        assert_eq!(v["fin_wait2_ms"], 0.2);
        assert_eq!(v["close_wait_ms"], serde_json::Value::Null);
        assert_eq!(v["lifetime_ms"], 10.0);
        assert_eq!(v["close"], "fin");
    }

    /// Bytes, retransmits, RTT, cgroup and namespace that were not measured (e.g. members
    /// missing from the kernel's BTF) print as unknown: `null` in JSON, an empty CSV field,
    /// `-` in text; measured zeros print as 0.
    #[test]
    fn unmeasured_fields_print_as_unknown_never_zero() {
        let closed_with = |stats: Option<crate::decode::CloseStats>, ident| {
            Fact::Closed(Connection {
                conn: Conn { ident, ..conn() },
                opened_ns: Some(1_000_000),
                closed_ns: 11_000_000,
                handshake_ns: Some(50_000),
                retransmits: 0,
                phases: [None; 5],
                close: CloseKind::Fin,
                time_wait: true,
                stats,
            })
        };
        let keys = [
            "cgroup_id",
            "netns",
            "bytes_sent",
            "bytes_received",
            "retrans_segs",
            "srtt_us",
        ];
        let zeros = crate::decode::CloseStats {
            bytes_acked: 0,
            bytes_received: 0,
            retrans: 0,
            srtt_us: 0,
        };
        let zero_ident = crate::decode::Ident {
            cgroup: Some(0),
            netns: Some(0),
        };
        for (fact, want_json, want_text, want_csv) in [
            (
                closed_with(None, crate::decode::Ident::default()),
                serde_json::Value::Null,
                "-",
                "",
            ),
            (
                closed_with(Some(zeros), zero_ident),
                serde_json::json!(0),
                "0",
                "0",
            ),
        ] {
            let json = render(Style::Json, Unit::Connection, &[fact]);
            let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
            for k in keys {
                assert_eq!(v[k], want_json, "{k} in {json}");
            }
            let text = render(Style::Text, Unit::Connection, &[fact]);
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
            let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
            assert_eq!(header.len(), row.len(), "{text}");
            for col in ["SENT", "RECV"] {
                let i = header.iter().position(|h| *h == col).expect(col);
                assert_eq!(row[i], want_text, "{col} in {text}");
            }
            let csv = render(Style::Csv, Unit::Connection, &[fact]);
            let row = csv.lines().last().expect("a row");
            let fields = parse_csv_record(row);
            assert_eq!(fields.len(), CONNECTION_COLUMNS.len(), "{row}");
            for k in keys {
                let i = CONNECTION_COLUMNS.iter().position(|c| *c == k).expect(k);
                assert_eq!(fields[i], want_csv, "{k} in {row}");
            }
        }
    }

    fn with_ident(mut f: Fact, cgroup: Option<u64>, netns: Option<u32>) -> Fact {
        let ident = Ident { cgroup, netns };
        match &mut f {
            Fact::Transition { conn, .. } => conn.ident = ident,
            Fact::Closed(c) => c.conn.ident = ident,
            _ => {}
        }
        f
    }

    #[test]
    fn lines_name_the_cgroup_workload_and_namespace_next_to_the_ids() {
        let docker = "/system.slice/docker-4f2c9a0b7e1d3c5a6b8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b.scope";
        for (unit, fact) in [
            (Unit::Connection, closed(conn())),
            (Unit::Transition, transition(Some(1))),
        ] {
            let json = render(Style::Json, unit, &[with_ident(fact, Some(12), Some(7))]);
            let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
            assert_eq!(v["cgroup_id"], 12);
            assert_eq!(v["netns"], 7);
            assert_eq!(v["cgroup"], docker);
            assert_eq!(v["workload"], "docker/4f2c9a0b7e1d");
            assert_eq!(v["container"], &docker[21..85]);
            assert_eq!(v["netns_name"], "blue");
            // An id names cannot name: ids stay, names are null.
            let json = render(Style::Json, unit, &[with_ident(fact, Some(99), Some(8))]);
            let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
            assert_eq!(v["cgroup_id"], 99);
            for k in ["cgroup", "workload", "container", "netns_name"] {
                assert_eq!(v[k], serde_json::Value::Null, "{k} in {v}");
            }
        }
        // Text connection lines end with the workload, else the path, else "-".
        let text = render(
            Style::Text,
            Unit::Connection,
            &[
                with_ident(closed(conn()), Some(11), None),
                with_ident(closed(conn()), Some(12), None),
                with_ident(closed(conn()), Some(13), None),
                with_ident(closed(conn()), Some(99), None),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            5,
            "one line each, a newline in a path included: {text}"
        );
        assert!(lines[0].ends_with(" WORKLOAD"), "{text}");
        assert!(lines[1].ends_with(" a,b.service"), "{text}");
        assert!(lines[2].ends_with(" docker/4f2c9a0b7e1d"), "{text}");
        assert!(lines[3].ends_with(" /odd \"dir\"?name"), "{text}");
        assert!(lines[4].ends_with(" -"), "{text}");
    }

    fn closed(conn: Conn) -> Fact {
        Fact::Closed(Connection {
            conn,
            opened_ns: Some(1_000_000),
            closed_ns: 11_000_000,
            handshake_ns: Some(50_000),
            retransmits: 1,
            phases: [Some(100_000), Some(200_000), None, None, Some(1_234_567)],
            close: CloseKind::Fin,
            time_wait: true,
            stats: None,
        })
    }

    fn v6_unowned() -> Conn {
        Conn {
            sock: 0xffff_8880_dead_beef,
            local: "[2001:db8::1]:443".parse().expect("addr"),
            remote: "[2001:db8::1234:5678]:40000".parse().expect("addr"),
            owner: None,
            side: None,
            ident: Default::default(),
        }
    }

    fn owned_by(comm: &str) -> Conn {
        let mut c = conn();
        if let Some(o) = c.owner.as_mut() {
            o.comm = Comm::from_str_lossy(comm);
            o.source = OwnerSource::Listener;
        }
        c
    }

    /// One CSV field, the obvious way.
    fn csv_field_plain(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }

    fn ms_plain(ns: Option<u64>) -> String {
        ns.map(|ns| format!("{}", ms(ns))).unwrap_or_default()
    }

    fn opt_plain<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }

    /// The owner source as serde names it in the JSON stream.
    fn source_plain(s: OwnerSource) -> String {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// A CSV line built with `format!` and `to_string`, field by field in column order.
    fn csv_plain(fact: &Fact, names: &Names) -> String {
        let (ts, conn) = match fact {
            Fact::Transition { ts_ns, conn, .. } => (*ts_ns, conn),
            Fact::Closed(c) => (c.closed_ns, &c.conn),
            _ => return String::new(),
        };
        let mut time = String::new();
        CLOCK.write_rfc3339(&mut time, ts);
        let o = conn.owner;
        let comm = o.map(|o| csv_field_plain(&o.comm.as_str()));
        let family = if conn.local.is_ipv4() { "ipv4" } else { "ipv6" };
        let fields: Vec<String> = match fact {
            Fact::Transition {
                old, new, dwell_ns, ..
            } => vec![
                time,
                ts.to_string(),
                opt_plain(o.map(|o| o.tgid)),
                opt_plain(o.map(|o| o.pid)),
                comm.unwrap_or_default(),
                opt_plain(o.map(|o| source_plain(o.source))),
                family.to_owned(),
                conn.local.ip().to_string(),
                conn.local.port().to_string(),
                conn.remote.ip().to_string(),
                conn.remote.port().to_string(),
                old.name().to_owned(),
                new.name().to_owned(),
                ms_plain(*dwell_ns),
                format!("{:#x}", conn.sock),
                opt_plain(conn.ident.cgroup),
                opt_plain(conn.ident.netns),
            ],
            Fact::Closed(c) => {
                let mut f = vec![
                    time,
                    ts.to_string(),
                    opt_plain(o.map(|o| o.tgid)),
                    comm.unwrap_or_default(),
                    opt_plain(conn.side.map(|s| s.name())),
                    family.to_owned(),
                    conn.local.ip().to_string(),
                    conn.local.port().to_string(),
                    conn.remote.ip().to_string(),
                    conn.remote.port().to_string(),
                    ms_plain(c.handshake_ns),
                    c.retransmits.to_string(),
                ];
                f.extend(c.phases.iter().map(|p| ms_plain(*p)));
                f.push(c.time_wait.to_string());
                f.push(c.close.name().to_owned());
                f.push(ms_plain(c.lifetime_ns()));
                f.push(opt_plain(conn.ident.cgroup));
                f.push(opt_plain(conn.ident.netns));
                f.push(opt_plain(c.stats.map(|s| s.bytes_acked)));
                f.push(opt_plain(c.stats.map(|s| s.bytes_received)));
                f.push(opt_plain(c.stats.map(|s| s.retrans)));
                f.push(opt_plain(c.stats.map(|s| s.srtt_us)));
                f
            }
            _ => Vec::new(),
        };
        let cg = conn.ident.cgroup.and_then(|id| names.cgroup(id));
        let wl = cg.as_ref().and_then(|c| c.workload.clone());
        let mut fields = fields;
        fields.push(cg.map(|c| csv_field_plain(&c.path)).unwrap_or_default());
        fields.push(
            wl.as_ref()
                .map(|w| csv_field_plain(&w.name))
                .unwrap_or_default(),
        );
        fields.push(
            wl.and_then(|w| w.container)
                .map(|c| csv_field_plain(&c))
                .unwrap_or_default(),
        );
        fields.push(
            conn.ident
                .netns
                .and_then(|ino| names.netns(ino))
                .map(|n| csv_field_plain(&n))
                .unwrap_or_default(),
        );
        fields.join(",")
    }

    /// Splits one CSV record (RFC 4180) into its fields, for checking the quoting.
    fn parse_csv_record(line: &str) -> Vec<String> {
        let mut fields = vec![String::new()];
        let mut chars = line.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            let field = fields.last_mut().expect("a field");
            match (quoted, c) {
                (false, ',') => fields.push(String::new()),
                (false, '"') if field.is_empty() => quoted = true,
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (_, c) => field.push(c),
            }
        }
        assert!(!quoted, "unterminated quoted field in {line:?}");
        fields
    }

    #[test]
    fn csv_snapshot_transitions_and_connections() {
        let mut dwell_v6 = transition(Some(2_000_000_001));
        if let Fact::Transition { conn, .. } = &mut dwell_v6 {
            *conn = v6_unowned();
        }
        let mut quoted = transition(Some(7));
        if let Fact::Transition { conn, .. } = &mut quoted {
            *conn = owned_by("a,\"b\"");
        }
        let transitions = render(
            Style::Csv,
            Unit::Transition,
            &[
                with_ident(transition(Some(1_234_567)), Some(12), Some(7)),
                transition(None),
                with_ident(dwell_v6, Some(13), Some(8)),
                with_ident(quoted, Some(11), None),
            ],
        );
        insta::assert_snapshot!("csv_transitions", transitions);
        let mut v6 = closed(v6_unowned());
        if let Fact::Closed(c) = &mut v6 {
            c.opened_ns = None;
            c.handshake_ns = None;
            c.time_wait = false;
            c.close = CloseKind::ResetReceived;
        }
        let connections = render(
            Style::Csv,
            Unit::Connection,
            &[
                with_ident(closed(conn()), Some(12), Some(7)),
                with_ident(v6, Some(11), None),
                transition(None),
            ],
        );
        insta::assert_snapshot!("csv_connections", connections);
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines_in_process_names() {
        for (comm, field) in [
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("cr\rhere", "\"cr\rhere\""),
            ("plain name", "plain name"),
        ] {
            for unit in [Unit::Transition, Unit::Connection] {
                let fact = match unit {
                    Unit::Transition => {
                        let mut t = transition(Some(1));
                        if let Fact::Transition { conn, .. } = &mut t {
                            *conn = owned_by(comm);
                        }
                        t
                    }
                    Unit::Connection => closed(owned_by(comm)),
                };
                let out = render(Style::Csv, unit, &[fact]);
                let (header, record) = out.split_once('\n').expect("header row");
                let record = record.strip_suffix('\n').expect("line end");
                let comm_col = header
                    .split(',')
                    .position(|c| c == "comm")
                    .expect("comm column");
                assert!(
                    record.contains(&format!(",{field},")),
                    "{comm:?} not written as {field:?}: {record:?}"
                );
                let fields = parse_csv_record(record);
                assert_eq!(fields.len(), header.split(',').count(), "{record:?}");
                assert_eq!(fields[comm_col], comm, "{record:?}");
            }
        }
    }

    #[test]
    fn csv_columns_are_the_json_keys_in_order() {
        for (unit, fact, columns) in [
            (
                Unit::Transition,
                transition(Some(5)),
                &TRANSITION_COLUMNS[..],
            ),
            (Unit::Connection, closed(conn()), &CONNECTION_COLUMNS[..]),
        ] {
            let json = render(Style::Json, unit, &[fact]);
            let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
            let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
            assert_eq!(keys.len(), columns.len(), "{keys:?}");
            let mut at = 0;
            for c in columns {
                let pos = json[at..]
                    .find(&format!("\"{c}\":"))
                    .unwrap_or_else(|| panic!("column {c} is not next in {json}"));
                at += pos;
            }
            let csv = render(Style::Csv, unit, &[fact]);
            assert_eq!(csv.lines().next(), Some(columns.join(",").as_str()));
        }
    }

    /// A xorshift generator: the same varied lines on every run.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Process names as the kernel hands them over: 16 bytes, NUL-padded or not, any byte
    /// (quotes, backslashes, control characters, commas, non-UTF-8, a UTF-8 character cut at
    /// the end).
    const COMMS: [&[u8]; 12] = [
        b"client",
        b"a,b",
        b"q\"uote",
        b"nl\nx",
        "p\u{e4}iv\u{e4}".as_bytes(),
        b"",
        b"x,\"y\"\r\n",
        b"back\\slash\\",
        b"\x01\x08\x09\x0b\x0c\x1f\x7f<>&",
        b"bad\xff\xfeutf8\xc3",
        b"sixteen_bytes_xx",
        "cut\u{1f600}\u{1f600}\u{1f600}".as_bytes(),
    ];

    fn comm_of(bytes: &[u8]) -> Comm {
        let mut b = [0u8; 16];
        let n = bytes.len().min(16);
        b[..n].copy_from_slice(&bytes[..n]);
        Comm(b)
    }

    /// Dwell times in ns: unknown, tiny, exact rounding midpoints, and anything up to 2^64.
    fn varied_ns(r: u64) -> Option<u64> {
        (!r.is_multiple_of(6)).then(|| match r % 5 {
            0 => r >> (r % 64),
            1 => (r % 10_000_000) / 1000 * 1000 + 500,
            2 => r % 5_000_000,
            3 => (r >> 8) % 20,
            _ => [
                0,
                10,
                999_999,
                1_000_000,
                1 << 50,
                999_999_999_999_999,
                1_000_000_000_000_000,
                u64::MAX,
            ][(r >> 8) as usize % 8],
        })
    }

    /// One generated line's fact: a transition for even `i`, a finished connection for odd,
    /// over IPv4 and IPv6, with and without an owner, odd process names, named and unnamed
    /// cgroups and namespaces, huge and unknown timings.
    fn varied_fact(rand: &mut impl FnMut() -> u64, i: u64) -> Fact {
        let sources = [
            OwnerSource::Current,
            OwnerSource::Cached,
            OwnerSource::Listener,
            OwnerSource::Proc,
        ];
        let states = [
            TcpState::SynSent,
            TcpState::Established,
            TcpState::CloseWait,
            TcpState::FinWait1,
            TcpState::Close,
        ];
        let v = rand();
        let (local, remote): (SocketAddr, SocketAddr) = match v % 8 {
            0 => {
                let a = std::net::Ipv6Addr::from(u128::from(rand()) << 64 | u128::from(v));
                (
                    SocketAddr::from((a, (v >> 8) as u16)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, (v >> 24) as u16)),
                )
            }
            4 => (
                SocketAddr::V6(std::net::SocketAddrV6::new(
                    std::net::Ipv4Addr::from(v as u32).to_ipv6_mapped(),
                    (v >> 32) as u16,
                    0,
                    (v >> 50) as u32 % 3,
                )),
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            ),
            _ => (
                SocketAddr::from(((v as u32).to_be_bytes(), (v >> 32) as u16)),
                SocketAddr::from((((v >> 16) as u32).to_be_bytes(), (v >> 48) as u16)),
            ),
        };
        let owner = (!v.is_multiple_of(5)).then(|| Owner {
            tgid: if v.is_multiple_of(11) {
                u32::MAX
            } else {
                (v >> 3) as u32
            },
            pid: (v >> 5) as u32,
            comm: comm_of(COMMS[(v >> 12) as usize % COMMS.len()]),
            source: sources[(v % 4) as usize],
        });
        let conn = Conn {
            sock: rand() >> (v % 64),
            local,
            remote,
            owner,
            side: [None, Some(Side::Client), Some(Side::Server)][(v % 3) as usize],
            ident: crate::decode::Ident {
                cgroup: (v % 3 != 1).then(|| match v % 7 {
                    0..=4 => 11 + v % 7,
                    5 => u64::MAX,
                    _ => rand() >> (v % 64),
                }),
                netns: (v % 5 != 2).then_some(match v % 4 {
                    0 => 7,
                    1 => 9,
                    2 => u32::MAX,
                    _ => (v >> 7) as u32,
                }),
            },
        };
        let ts = rand() % (1 << 62);
        if i.is_multiple_of(2) {
            Fact::Transition {
                ts_ns: ts,
                conn,
                old: states[(v % 5) as usize],
                new: states[(v / 5 % 5) as usize],
                dwell_ns: varied_ns(rand()),
            }
        } else {
            let opened = ts.checked_sub(rand() % (1 << 40));
            Fact::Closed(Connection {
                conn,
                opened_ns: opened.filter(|_| !v.is_multiple_of(7)),
                closed_ns: ts,
                handshake_ns: varied_ns(rand()),
                retransmits: if v.is_multiple_of(13) {
                    u32::MAX
                } else {
                    (v % 4) as u32
                },
                phases: [
                    varied_ns(rand()),
                    varied_ns(rand()),
                    varied_ns(rand()),
                    varied_ns(rand()),
                    varied_ns(rand()),
                ],
                close: CloseKind::ALL[(v % 7) as usize],
                time_wait: v.is_multiple_of(2),
                stats: (v % 4 != 3).then(|| crate::decode::CloseStats {
                    bytes_acked: if v.is_multiple_of(17) {
                        u64::MAX
                    } else {
                        rand() >> (v % 64)
                    },
                    bytes_received: v >> 9,
                    retrans: (v >> 40) as u32 % 1000,
                    srtt_us: (v >> 20) as u32,
                }),
            })
        }
    }

    fn unit_of(fact: &Fact) -> Unit {
        match fact {
            Fact::Closed(_) => Unit::Connection,
            _ => Unit::Transition,
        }
    }

    #[test]
    fn fast_csv_lines_match_plain_formatting() {
        let mut rand = xorshift(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000u64 {
            let fact = varied_fact(&mut rand, i);
            let out = render(Style::Csv, unit_of(&fact), &[fact]);
            let record = out.split_once('\n').map(|(_, r)| r).expect("header");
            assert_eq!(record, format!("{}\n", csv_plain(&fact, &names())));
        }
    }

    /// The line a bench run writes most: an IPv4 loopback transition of a named process in
    /// a named cgroup and namespace, or its connection.
    fn typical_fact(rand: &mut impl FnMut() -> u64, i: u64) -> Fact {
        let v = rand();
        let conn = Conn {
            sock: 0xffff_8880_0000_0000 | (v & 0xff_ffff_fff8),
            local: SocketAddr::from(([127, 0, 0, 1], 40_000 + (v % 20_000) as u16)),
            remote: SocketAddr::from(([127, 0, 0, 1], 8080 + (v >> 20) as u16 % 4)),
            owner: (!v.is_multiple_of(4)).then(|| Owner {
                tgid: 4242,
                pid: 4243 + (v >> 30) as u32 % 4,
                comm: Comm::from_str_lossy("churn"),
                source: OwnerSource::Cached,
            }),
            side: Some(if v.is_multiple_of(2) {
                Side::Client
            } else {
                Side::Server
            }),
            ident: Ident {
                cgroup: Some(12),
                netns: Some(7),
            },
        };
        let ts = 3_600_000_000_000 + i * 4_000;
        if i % 8 != 7 {
            Fact::Transition {
                ts_ns: ts,
                conn,
                old: TcpState::Established,
                new: TcpState::FinWait1,
                dwell_ns: (!v.is_multiple_of(3)).then_some(v % 300_000),
            }
        } else {
            Fact::Closed(Connection {
                conn,
                opened_ns: Some(ts - 80_000),
                closed_ns: ts,
                handshake_ns: Some(v % 60_000),
                retransmits: 0,
                phases: [Some(v % 9_000), Some(v % 7_000), None, None, None],
                close: CloseKind::Fin,
                time_wait: true,
                stats: Some(crate::decode::CloseStats {
                    bytes_acked: 100,
                    bytes_received: 200,
                    retrans: 0,
                    srtt_us: 20,
                }),
            })
        }
    }

    /// User+system CPU time of this thread, in ns.
    fn thread_cpu_ns() -> u64 {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
        let ru = unsafe {
            libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr());
            ru.assume_init()
        };
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    /// CPU ns per line of `f` over `facts` (the best of three passes).
    fn ns_per_line(facts: &[Fact], mut f: impl FnMut(&Fact)) -> f64 {
        (0..3)
            .map(|_| {
                let t0 = thread_cpu_ns();
                for fact in facts {
                    f(fact);
                }
                (thread_cpu_ns() - t0) as f64 / facts.len() as f64
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// Timing harness, not a check: CPU ns per line for each style and unit, on typical
    /// and on varied lines. Run it with
    /// `cargo test -p tcptrace --release --bin tcptrace stream::tests::line_cost -- --ignored
    /// --nocapture` (`LINE_COST="typical Json"` for only some of them, and
    /// `LINE_COST_NO_BEFORE=1` without the serde_json lines, e.g. under `perf`). "unnamed" is
    /// the typical lines without [`Stream::names`].
    #[test]
    #[ignore = "a timing harness; prints figures, asserts nothing"]
    fn line_cost() {
        const N: u64 = 1_000_000;
        // LINE_COST="typical Json" times only the lines whose label has all those words.
        let only: Vec<String> = std::env::var("LINE_COST")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        for (what, gen_fact, named) in [
            ("typical", typical_fact as fn(&mut _, u64) -> Fact, true),
            ("unnamed", typical_fact, false),
            ("varied", varied_fact, true),
        ] {
            let names = || if named { names() } else { Names::none() };
            let mut rand = xorshift(0x2545_f491_4f6c_dd1d);
            let facts: Vec<Fact> = (0..N).map(|i| gen_fact(&mut rand, i)).collect();
            for unit in [Unit::Transition, Unit::Connection] {
                let facts: Vec<Fact> = facts
                    .iter()
                    .copied()
                    .filter(|f| unit_of(f) == unit)
                    .collect();
                for style in [Style::Text, Style::Json, Style::Csv] {
                    let label = format!("{what:8} {unit:?} {style:?}");
                    if !only.iter().all(|w| label.contains(w.as_str())) {
                        continue;
                    }
                    let mut s =
                        Stream::new(Vec::with_capacity(1 << 20), CLOCK, style, unit).names(names());
                    let ns = ns_per_line(&facts, |f| {
                        s.fact(f).expect("write");
                        if s.out.len() > 1 << 19 {
                            s.out.clear();
                        }
                    });
                    println!("{label}: {ns:.0} ns/line ({} lines)", facts.len());
                    if style == Style::Json && std::env::var_os("LINE_COST_NO_BEFORE").is_none() {
                        // The serde_json line the stream wrote before, for comparison.
                        let names = names();
                        let mut rfc3339 = Rfc3339::default();
                        let mut time = String::new();
                        let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
                        let ns = ns_per_line(&facts, |f| {
                            time.clear();
                            rfc3339.push(&mut time, &CLOCK, fact_ts(f));
                            let mut line = json_plain(f, &names, &time);
                            line.push('\n');
                            out.extend_from_slice(line.as_bytes());
                            if out.len() > 1 << 19 {
                                out.clear();
                            }
                        });
                        println!("{label} (serde_json, before): {ns:.0} ns/line");
                    }
                }
            }
        }
    }

    /// `{ns:>width$.3}` of the milliseconds, or `-` right-aligned.
    fn ms_text_plain(ns: Option<u64>, width: usize) -> String {
        ns.map_or_else(
            || format!("{:>width$}", "-"),
            |ns| format!("{:>width$.3}", ms(ns)),
        )
    }

    /// A text line (without its newline) built with `format!`, addresses `aw` wide.
    fn text_plain(fact: &Fact, names: &Names, aw: usize) -> String {
        let (ts, conn) = match fact {
            Fact::Transition { ts_ns, conn, .. } => (*ts_ns, conn),
            Fact::Closed(c) => (c.closed_ns, &c.conn),
            _ => return String::new(),
        };
        let mut time = String::new();
        CLOCK.write_time_of_day(&mut time, ts);
        let owner = match conn.owner {
            Some(o) => format!("{:>7} {:<15}", o.tgid, o.comm.printable()),
            None => format!("{:>7} {:<15}", "-", "-"),
        };
        let (local, remote) = (conn.local, conn.remote);
        match fact {
            Fact::Transition {
                old, new, dwell_ns, ..
            } => format!(
                "{time} {owner} {local:<aw$} {remote:<aw$} {:>11} -> {:<11} {}",
                old.name(),
                new.name(),
                ms_text_plain(*dwell_ns, 10)
            ),
            Fact::Closed(c) => {
                let side = conn.side.map_or("?", |s| s.name());
                let phases: Vec<String> = c.phases.iter().map(|p| ms_text_plain(*p, 9)).collect();
                let close = if c.time_wait {
                    "fin+time_wait"
                } else {
                    c.close.name()
                };
                let bytes = |v: Option<u64>| {
                    v.map_or_else(|| format!("{:>12}", "-"), |v| format!("{v:>12}"))
                };
                let label = printable(
                    Named::of(Some(names), conn.ident)
                        .cgroup
                        .as_deref()
                        .map_or("-", |c| c.label()),
                )
                .into_owned();
                format!(
                    "{time} {owner} {side:<6} {local:<aw$} {remote:<aw$} {} {:>4} {} {close:<15} {} {} {} {label}",
                    ms_text_plain(c.handshake_ns, 9),
                    c.retransmits,
                    phases.join(" "),
                    ms_text_plain(c.lifetime_ns(), 10),
                    bytes(c.stats.map(|s| s.bytes_acked)),
                    bytes(c.stats.map(|s| s.bytes_received)),
                )
            }
            _ => String::new(),
        }
    }

    #[test]
    fn fast_text_lines_match_format() {
        let names = names();
        let mut rand = xorshift(0x5851_f42d_4c95_7f2d);
        for i in 0..20_000u64 {
            let fact = if i % 4 == 3 {
                typical_fact(&mut rand, i)
            } else {
                varied_fact(&mut rand, i)
            };
            for wide in [false, true] {
                let unit = unit_of(&fact);
                let mut s = Stream::new(Vec::new(), CLOCK, Style::Text, unit)
                    .names(names.clone())
                    .wide(wide);
                s.fact(&fact).expect("write");
                let out = String::from_utf8(s.out).expect("utf8");
                let row = out.split_once('\n').map(|(_, r)| r).expect("header");
                let aw = if wide { WIDE_ADDR_WIDTH } else { ADDR_WIDTH };
                assert_eq!(row, format!("{}\n", text_plain(&fact, &names, aw)));
            }
        }
    }

    // The slow reference for the JSON lines: serde_json over structs with `Display`-wrapping
    // fields, as the stream built them before they were built by hand.

    /// Serialises any `Display` as a JSON string without allocating it first.
    struct Shown<T>(T);

    impl<T: std::fmt::Display> Serialize for Shown<T> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&self.0)
        }
    }

    /// A socket address as `0x...` (as `{:#x}`).
    struct Hex(u64);

    impl std::fmt::Display for Hex {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:#x}", self.0)
        }
    }

    #[derive(Serialize)]
    struct TransitionJson<'a> {
        time: &'a str,
        ts_ns: u64,
        pid: Option<u32>,
        tid: Option<u32>,
        comm: Option<Comm>,
        owner: Option<crate::decode::OwnerSource>,
        family: &'static str,
        laddr: Shown<std::net::IpAddr>,
        lport: u16,
        raddr: Shown<std::net::IpAddr>,
        rport: u16,
        old: &'static str,
        new: &'static str,
        ms: Option<f64>,
        sock: Shown<Hex>,
        cgroup_id: Option<u64>,
        netns: Option<u32>,
        cgroup: Option<&'a str>,
        workload: Option<&'a str>,
        container: Option<&'a str>,
        netns_name: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct ConnectionJson<'a> {
        time: &'a str,
        ts_ns: u64,
        pid: Option<u32>,
        comm: Option<Comm>,
        side: Option<&'static str>,
        family: &'static str,
        laddr: Shown<std::net::IpAddr>,
        lport: u16,
        raddr: Shown<std::net::IpAddr>,
        rport: u16,
        handshake_ms: Option<f64>,
        retransmits: u32,
        fin_wait1_ms: Option<f64>,
        fin_wait2_ms: Option<f64>,
        closing_ms: Option<f64>,
        close_wait_ms: Option<f64>,
        last_ack_ms: Option<f64>,
        time_wait: bool,
        close: &'static str,
        lifetime_ms: Option<f64>,
        cgroup_id: Option<u64>,
        netns: Option<u32>,
        bytes_sent: Option<u64>,
        bytes_received: Option<u64>,
        retrans_segs: Option<u32>,
        srtt_us: Option<u32>,
        cgroup: Option<&'a str>,
        workload: Option<&'a str>,
        container: Option<&'a str>,
        netns_name: Option<&'a str>,
    }

    /// A JSON line (without its newline) built by serde_json, with `time` as its time.
    fn json_plain(fact: &Fact, names: &Names, time: &str) -> String {
        fn ser<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).expect("serialisable")
        }
        match fact {
            Fact::Transition {
                ts_ns,
                conn,
                old,
                new,
                dwell_ns,
            } => {
                let named = Named::of(Some(names), conn.ident);
                ser(&TransitionJson {
                    time,
                    ts_ns: *ts_ns,
                    pid: conn.owner.map(|o| o.tgid),
                    tid: conn.owner.map(|o| o.pid),
                    comm: conn.owner.map(|o| o.comm),
                    owner: conn.owner.map(|o| o.source),
                    family: family(conn).name(),
                    laddr: Shown(conn.local.ip()),
                    lport: conn.local.port(),
                    raddr: Shown(conn.remote.ip()),
                    rport: conn.remote.port(),
                    old: old.name(),
                    new: new.name(),
                    ms: dwell_ns.map(ms),
                    sock: Shown(Hex(conn.sock)),
                    cgroup_id: conn.ident.cgroup,
                    netns: conn.ident.netns,
                    cgroup: named.path(),
                    workload: named.workload(),
                    container: named.container(),
                    netns_name: named.netns_name(),
                })
            }
            Fact::Closed(c) => {
                let conn = &c.conn;
                let named = Named::of(Some(names), conn.ident);
                let p = c.phases.map(|p| p.map(ms));
                ser(&ConnectionJson {
                    time,
                    ts_ns: c.closed_ns,
                    pid: conn.owner.map(|o| o.tgid),
                    comm: conn.owner.map(|o| o.comm),
                    side: conn.side.map(|s| s.name()),
                    family: family(conn).name(),
                    laddr: Shown(conn.local.ip()),
                    lport: conn.local.port(),
                    raddr: Shown(conn.remote.ip()),
                    rport: conn.remote.port(),
                    handshake_ms: c.handshake_ns.map(ms),
                    retransmits: c.retransmits,
                    fin_wait1_ms: p[0],
                    fin_wait2_ms: p[1],
                    closing_ms: p[2],
                    close_wait_ms: p[3],
                    last_ack_ms: p[4],
                    time_wait: c.time_wait,
                    close: c.close.name(),
                    lifetime_ms: c.lifetime_ns().map(ms),
                    cgroup_id: conn.ident.cgroup,
                    netns: conn.ident.netns,
                    bytes_sent: c.stats.map(|s| s.bytes_acked),
                    bytes_received: c.stats.map(|s| s.bytes_received),
                    retrans_segs: c.stats.map(|s| s.retrans),
                    srtt_us: c.stats.map(|s| s.srtt_us),
                    cgroup: named.path(),
                    workload: named.workload(),
                    container: named.container(),
                    netns_name: named.netns_name(),
                })
            }
            _ => String::new(),
        }
    }

    /// The time a fact's line shows.
    fn fact_ts(fact: &Fact) -> u64 {
        match fact {
            Fact::Transition { ts_ns, .. } => *ts_ns,
            Fact::Closed(c) => c.closed_ns,
            _ => 0,
        }
    }

    #[test]
    fn fast_json_lines_match_serde() {
        let names = names();
        let mut rand = xorshift(0x1234_5678_9abc_def1);
        let mut time = String::new();
        let mut check = |fact: Fact| {
            let out = render(Style::Json, unit_of(&fact), &[fact]);
            time.clear();
            CLOCK.write_rfc3339(&mut time, fact_ts(&fact));
            assert_eq!(out, format!("{}\n", json_plain(&fact, &names, &time)));
            let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
            assert!(v.is_object());
        };
        for i in 0..30_000u64 {
            check(varied_fact(&mut rand, i));
        }
        for i in 0..2_000u64 {
            check(typical_fact(&mut rand, i));
        }
        // Every named cgroup and namespace, with and without ids and owners.
        for cgroup in [
            None,
            Some(0),
            Some(11),
            Some(12),
            Some(13),
            Some(14),
            Some(15),
            Some(99),
        ] {
            for netns in [None, Some(0), Some(7), Some(8), Some(9)] {
                check(with_ident(transition(Some(1)), cgroup, netns));
                check(with_ident(closed(v6_unowned()), cgroup, netns));
            }
        }
    }

    #[test]
    fn fast_json_strings_and_numbers_match_serde() {
        let mut rand = xorshift(0x0dd_ba11_cafe_f00d);
        let mut strings: Vec<String> = (0u32..0x100)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b"))
            .collect();
        strings.extend(
            [
                "",
                "\"",
                "\\",
                "\\\"",
                "\u{2028}\u{2029}",
                "\u{fffd}",
                "p\u{e4}iv\u{e4}",
            ]
            .map(String::from),
        );
        for _ in 0..5_000 {
            let bytes: Vec<u8> = (0..rand() % 24).map(|_| rand() as u8 % 0x90).collect();
            strings.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        for s in &strings {
            let mut fast = String::new();
            push_json_str(&mut fast, s);
            assert_eq!(fast, serde_json::to_string(s).expect("json"), "{s:?}");
        }
        for bytes in COMMS {
            let comm = comm_of(bytes);
            let mut fast = String::new();
            push_json_str(&mut fast, &comm.as_str());
            assert_eq!(
                fast,
                serde_json::to_string(&comm).expect("json"),
                "{bytes:?}"
            );
        }
        let mut values: Vec<u64> = (0..2_000).collect();
        values.extend([
            999_999,
            1_000_000,
            1_000_001,
            1 << 50,
            (1 << 53) + 1,
            999_999_999_999_999,
            1_000_000_000_000_000,
            1_000_000_000_000_001,
            9_999_999_999_999_999,
            10_000_000_000_000_000,
            u64::MAX,
        ]);
        for _ in 0..50_000 {
            let v = rand();
            values.push(v >> (v % 64));
            values.push((v % 10_000_000) / 1000 * 1000 + 500);
            values.push(v % 100 * 10u64.pow((v >> 8) as u32 % 18));
        }
        for &ns in &values {
            let mut fast = String::new();
            push_json_ms(&mut fast, Some(ns));
            assert_eq!(
                fast,
                serde_json::to_string(&ms(ns)).expect("json"),
                "ns {ns}"
            );
            fast.clear();
            push_json_u64(&mut fast, Some(ns));
            assert_eq!(fast, serde_json::to_string(&ns).expect("json"));
        }
        // The names pushed without a scan need none.
        let names = TcpState::ALL
            .map(TcpState::name)
            .into_iter()
            .chain(CloseKind::ALL.map(CloseKind::name))
            .chain([Side::Client, Side::Server].map(Side::name))
            .chain([Family::V4, Family::V6].map(Family::name))
            .chain(
                [
                    OwnerSource::Current,
                    OwnerSource::Cached,
                    OwnerSource::Listener,
                    OwnerSource::Proc,
                ]
                .map(owner_source_name),
            );
        for name in names {
            let mut fast = String::new();
            push_json_name(&mut fast, name);
            assert_eq!(fast, serde_json::to_string(name).expect("json"));
        }
        let mut null = String::new();
        push_json_ms(&mut null, None);
        push_json_u64(&mut null, None);
        push_json_opt_str(&mut null, None);
        assert_eq!(null, "nullnullnull");
    }

    #[test]
    fn wide_text_aligns_ipv6_addresses() {
        let mut t = transition(Some(1_000));
        if let Fact::Transition { conn, .. } = &mut t {
            *conn = v6_unowned();
        }
        let mut s = Stream::new(Vec::new(), CLOCK, Style::Text, Unit::Transition).wide(true);
        s.fact(&t).expect("write");
        s.fact(&transition(None)).expect("write");
        let out = String::from_utf8(s.out).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        let arrow = |l: &str| l.find(" -> ").expect("arrow");
        assert_eq!(arrow(lines[1]), arrow(lines[2]), "{out}");
        assert!(lines[0].starts_with("TIME"));
        let old_end = lines[0].find("OLD").expect("OLD") + 3;
        assert_eq!(old_end, arrow(lines[1]), "{out}");
        let narrow = render(Style::Text, Unit::Transition, &[t, transition(None)]);
        let narrow: Vec<&str> = narrow.lines().collect();
        assert_ne!(
            arrow(narrow[1]),
            arrow(narrow[2]),
            "without -w a long IPv6 address shifts the columns"
        );
        let mut c = Stream::new(Vec::new(), CLOCK, Style::Text, Unit::Connection).wide(true);
        c.fact(&closed(v6_unowned())).expect("write");
        c.fact(&closed(conn())).expect("write");
        let out = String::from_utf8(c.out).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        let hs = |l: &str| l.find("0.050").expect("handshake");
        assert_eq!(hs(lines[1]), hs(lines[2]), "{out}");
    }
}
