//! Line-per-item output: one line per transition (as tcpstates) or per finished connection
//! (as tcplife, with timings), as aligned text or JSON Lines. Writes to any `io::Write`.

use std::{fmt::Write as _, io};

use serde::Serialize;

use crate::{
    clock::Clock,
    decode::{Comm, Family, Owner},
    track::{Conn, Connection, Fact, PHASES},
};

/// Where facts go after the tracker.
pub trait Sink {
    /// Called for every decoded event, in time order, before its facts.
    fn event(&mut self, _event: &crate::decode::Event) -> io::Result<()> {
        Ok(())
    }
    /// Called for every fact, in time order.
    fn fact(&mut self, fact: &Fact) -> io::Result<()>;
    /// Called when the input has gone quiet and at exit.
    fn flush(&mut self) -> io::Result<()>;
}

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
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn push_ms(line: &mut String, ns: Option<u64>, width: usize) {
    match ns {
        Some(ns) => {
            let _ = write!(line, "{:>width$.3}", ms(ns));
        }
        None => {
            let _ = write!(line, "{:>width$}", "-");
        }
    }
}

fn owner_cols(line: &mut String, owner: Option<Owner>) {
    match owner {
        Some(o) => {
            let _ = write!(line, "{:>7} {:<15}", o.tgid, o.comm.as_str());
        }
        None => {
            let _ = write!(line, "{:>7} {:<15}", "-", "-");
        }
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
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    old: &'static str,
    new: &'static str,
    ms: Option<f64>,
    sock: String,
}

#[derive(Serialize)]
struct ConnectionJson<'a> {
    time: &'a str,
    ts_ns: u64,
    pid: Option<u32>,
    comm: Option<Comm>,
    side: Option<&'static str>,
    family: &'static str,
    laddr: String,
    lport: u16,
    raddr: String,
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
                self.clock.write_time_of_day(line, ts_ns);
                line.push(' ');
                owner_cols(line, conn.owner);
                let _ = write!(
                    line,
                    " {:<26} {:<26} {:>11} -> {:<11} ",
                    conn.local, conn.remote, old, new
                );
                push_ms(line, dwell, 10);
            }
            Style::Json => {
                let mut time = String::with_capacity(32);
                self.clock.write_rfc3339(&mut time, ts_ns);
                let j = TransitionJson {
                    time: &time,
                    ts_ns,
                    pid: conn.owner.map(|o| o.tgid),
                    tid: conn.owner.map(|o| o.pid),
                    comm: conn.owner.map(|o| o.comm),
                    owner: conn.owner.map(|o| o.source),
                    family: family(conn).name(),
                    laddr: conn.local.ip().to_string(),
                    lport: conn.local.port(),
                    raddr: conn.remote.ip().to_string(),
                    rport: conn.remote.port(),
                    old,
                    new,
                    ms: dwell.map(ms),
                    sock: format!("{:#x}", conn.sock),
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
                let mut time = String::with_capacity(32);
                self.clock.write_rfc3339(&mut time, c.closed_ns);
                let p = c.phases.map(|p| p.map(ms));
                debug_assert_eq!(PHASES.len(), 5);
                let j = ConnectionJson {
                    time: &time,
                    ts_ns: c.closed_ns,
                    pid: conn.owner.map(|o| o.tgid),
                    comm: conn.owner.map(|o| o.comm),
                    side: conn.side.map(|s| s.name()),
                    family: family(conn).name(),
                    laddr: conn.local.ip().to_string(),
                    lport: conn.local.port(),
                    raddr: conn.remote.ip().to_string(),
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
            self.header_done = true;
            if self.style == Style::Text {
                writeln!(self.out, "{}", Self::header(self.unit))?;
            }
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
        self.out.flush()
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
