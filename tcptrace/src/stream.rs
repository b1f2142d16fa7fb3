//! Line-per-item output: one line per transition (as tcpstates) or per finished connection
//! (as tcplife, with timings), as aligned text or JSON Lines. Writes to any `io::Write`.

use std::{fmt::Write as _, io, net::SocketAddr};

use serde::Serialize;

use crate::{
    clock::Clock,
    decode::{Comm, Family, Owner},
    sink::Sink,
    track::{Conn, Connection, Fact, PHASES},
};

/// Output style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Text,
    Json,
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
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

// Text formatting without `core::fmt` on the hot path: the live stream writes up to
// ~135,000 lines/s, and `fmt`'s padding (one `write_char` per fill character), float and
// socket-address formatting cost more than the rest of the pipeline together. The output
// is byte-identical to the `write!` forms named in each comment (tests compare them).

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

/// Decimal digits of `v` at the end of `buf`; returns where they start.
fn digits(buf: &mut [u8; 20], mut v: u64) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return i;
        }
    }
}

/// `{v}`, optionally right-aligned in `width`; returns the number of digits.
fn push_u64(line: &mut String, v: u64, width: usize) -> usize {
    let mut buf = [0u8; 20];
    let i = digits(&mut buf, v);
    let n = buf.len() - i;
    push_spaces(line, width.saturating_sub(n));
    for &b in &buf[i..] {
        line.push(char::from(b));
    }
    n
}

/// `{v:>width$}`.
fn push_u64_right(line: &mut String, v: u64, width: usize) {
    push_u64(line, v, width);
}

/// `{addr:<width$}`; IPv4 by hand, IPv6 (rare, and with scopes) through `fmt`.
fn push_addr_left(line: &mut String, addr: &SocketAddr, width: usize) {
    let SocketAddr::V4(a) = addr else {
        let _ = write!(line, "{addr:<width$}");
        return;
    };
    let mut n = 0;
    for (k, octet) in a.ip().octets().into_iter().enumerate() {
        if k > 0 {
            line.push('.');
            n += 1;
        }
        n += push_u64(line, u64::from(octet), 0);
    }
    line.push(':');
    n += 1 + push_u64(line, u64::from(a.port()), 0);
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
    let mut buf = [0u8; 20];
    let int_digits = buf.len() - digits(&mut buf, int);
    push_u64(line, int, width.saturating_sub(4).max(int_digits));
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
            push_left(line, &o.comm.as_str(), 15);
        }
        None => {
            push_right(line, "-", 7);
            line.push(' ');
            push_left(line, "-", 15);
        }
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

fn family(conn: &Conn) -> Family {
    if conn.local.is_ipv4() {
        Family::V4
    } else {
        Family::V6
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
        }
    }

    /// The text header line for this stream's unit.
    pub fn header(unit: Unit) -> String {
        match unit {
            Unit::Transition => format!(
                "{:<15} {:>7} {:<15} {:<26} {:<26} {:>11}    {:<11} {:>10}",
                "TIME", "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLD", "NEW", "MS"
            ),
            Unit::Connection => format!(
                "{:<15} {:>7} {:<15} {:<6} {:<26} {:<26} {:>9} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:<15} {:>10}",
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
                "LIFE_MS"
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
        let line = &mut self.line;
        match self.style {
            Style::Text => {
                self.time_of_day.push(line, &self.clock, ts_ns);
                line.push(' ');
                owner_cols(line, conn.owner);
                // " {:<26} {:<26} {:>11} -> {:<11} "
                line.push(' ');
                push_addr_left(line, &conn.local, 26);
                line.push(' ');
                push_addr_left(line, &conn.remote, 26);
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
                let j = TransitionJson {
                    time,
                    ts_ns,
                    pid: conn.owner.map(|o| o.tgid),
                    tid: conn.owner.map(|o| o.pid),
                    comm: conn.owner.map(|o| o.comm),
                    owner: conn.owner.map(|o| o.source),
                    family: family(conn).name(),
                    laddr: Shown(conn.local.ip()),
                    lport: conn.local.port(),
                    raddr: Shown(conn.remote.ip()),
                    rport: conn.remote.port(),
                    old,
                    new,
                    ms: dwell.map(ms),
                    sock: Shown(Hex(conn.sock)),
                }
                .serialize_to_string();
                line.push_str(&j);
            }
        }
    }

    fn connection_line(&mut self, c: &Connection) {
        let line = &mut self.line;
        let conn = &c.conn;
        match self.style {
            Style::Text => {
                self.clock.write_time_of_day(line, c.closed_ns);
                line.push(' ');
                owner_cols(line, conn.owner);
                let _ = write!(
                    line,
                    " {:<6} {:<26} {:<26} ",
                    conn.side.map_or("?", |s| s.name()),
                    conn.local,
                    conn.remote
                );
                push_ms(line, c.handshake_ns, 9);
                let _ = write!(line, " {:>4}", c.retransmits);
                for p in c.phases {
                    line.push(' ');
                    push_ms(line, p, 9);
                }
                let close = if c.time_wait {
                    "fin+time_wait"
                } else {
                    c.close.name()
                };
                let _ = write!(line, " {close:<15} ");
                push_ms(line, c.lifetime_ns(), 10);
            }
            Style::Json => {
                let time = &mut self.time;
                time.clear();
                self.rfc3339.push(time, &self.clock, c.closed_ns);
                let p = c.phases.map(|p| p.map(ms));
                debug_assert_eq!(PHASES.len(), 5);
                let j = ConnectionJson {
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
                }
                .serialize_to_string();
                line.push_str(&j);
            }
        }
    }
}

trait ToJsonString {
    fn serialize_to_string(&self) -> String;
}

impl<T: Serialize> ToJsonString for T {
    fn serialize_to_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
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
        if self.style == Style::Text {
            writeln!(self.out, "{}", Self::header(self.unit))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{OwnerSource, TcpState},
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
        }
    }

    const CLOCK: Clock = Clock {
        realtime_offset_ns: 1_764_082_501_000_000_000,
        utc_offset_secs: 0,
    };

    fn render(style: Style, unit: Unit, facts: &[Fact]) -> String {
        let mut s = Stream::new(Vec::new(), CLOCK, style, unit);
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
        for a in &addrs {
            for width in [0, 26] {
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
}
