//! `tcptrace generate-recording` (hidden): a deterministic synthetic recording with a
//! realistic mix of client and server connections, every teardown path, SYN retransmits,
//! resets and refused connects, for benchmarks (`cargo xtask bench` times `report` on a
//! 1,000,000-transition file) and for looking at charts without a production host.

use std::{cmp::Reverse, collections::BinaryHeap, net::SocketAddr};

use anyhow::{Context as _, Result};

use crate::{
    cli::GenerateArgs,
    clock::Clock,
    config::Filter,
    counters::Counters,
    decode::{Comm, Event, Family, Kind, Owner, OwnerSource, TcpState},
    record::{Header, Recorder, VERSION},
};

/// xorshift64*: small, fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Log-normal with the given median (ns) and spread (sigma of the log).
    fn lognormal_ns(&mut self, median_ns: f64, sigma: f64) -> u64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (median_ns * (sigma * z).exp()).clamp(1_000.0, 3.6e12) as u64
    }
}

fn comm(s: &str) -> Comm {
    let mut b = [0u8; 16];
    let n = s.len().min(15);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    Comm(b)
}

/// A service this host calls: remote port, median handshake (ms), process.
const SERVICES: [(u16, f64, &str); 5] = [
    (443, 12.0, "curl"),
    (5432, 0.4, "api-server"),
    (6379, 0.15, "api-server"),
    (9092, 2.5, "kafka-client"),
    (80, 30.0, "python3"),
];
/// Services this host offers: local port, median SYN-ACK RTT (ms), process.
const LISTENERS: [(u16, f64, &str); 2] = [(8080, 1.5, "api-server"), (22, 25.0, "sshd")];

const MS: f64 = 1e6;

struct Gen {
    rng: Rng,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    next_sock: u64,
    transitions: u64,
}

/// An event waiting for its time (ordered by time, then creation).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ev(EventKey);

#[derive(Clone, Copy, PartialEq, Eq)]
struct EventKey {
    sock: u64,
    local: SocketAddr,
    remote: SocketAddr,
    owner: Option<(u32, Comm, OwnerSource)>,
    kind: KindKey,
    srtt_us: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KindKey {
    State(TcpState, TcpState),
    SynRetransmit,
    ResetReceived,
    ResetSent(TcpState),
}

impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Gen {
    fn push(&mut self, ts: u64, k: EventKey) {
        if matches!(k.kind, KindKey::State(..)) {
            self.transitions += 1;
        }
        self.seq += 1;
        self.heap.push(Reverse((ts, self.seq, Ev(k))));
    }

    fn sock(&mut self) -> u64 {
        self.next_sock += 1;
        0xffff_8880_0000_0000 + self.next_sock * 0x940
    }

    /// One connection starting at `t`.
    fn connection(&mut self, t: u64) {
        use TcpState::*;
        let r = self.rng.unit();
        let peer = 1 + self.rng.below(40) as u8;
        let sock = self.sock();
        let ephemeral = 32768 + self.rng.below(28000) as u16;
        if r < 0.72 {
            // Client side.
            let (rport, median_ms, proc_name) = SERVICES[self.rng.below(5) as usize];
            let pid = 1000 + u32::from(peer % 4);
            let owner = Some((pid, comm(proc_name), OwnerSource::Current));
            let cached = Some((pid, comm(proc_name), OwnerSource::Cached));
            let remote: SocketAddr = ([10, 0, peer % 8, peer], rport).into();
            let local: SocketAddr = ([10, 0, 0, 100], ephemeral).into();
            let k = |kind, owner, local| EventKey {
                sock,
                local,
                remote,
                owner,
                kind,
                srtt_us: None,
            };
            // connect(): the local port is still 0 at CLOSE->SYN_SENT.
            let unbound: SocketAddr = ([10, 0, 0, 100], 0).into();
            self.push(t, k(KindKey::State(Close, SynSent), owner, unbound));
            let mut hs = self.rng.lognormal_ns(median_ms * MS, 0.6);
            let r2 = self.rng.unit();
            if r2 < 0.01 {
                // Refused: RST answers the SYN.
                self.push(t + hs, k(KindKey::ResetReceived, None, local));
                self.push(t + hs, k(KindKey::State(SynSent, Close), None, local));
                return;
            }
            if r2 < 0.03 {
                // The first SYN was lost: retransmitted after the 1 s initial RTO.
                self.push(t + 1_000_000_000, k(KindKey::SynRetransmit, None, local));
                hs += 1_000_000_000;
            }
            let est = t + hs;
            self.push(est, k(KindKey::State(SynSent, Established), None, local));
            let life = self.rng.lognormal_ns(200.0 * MS, 1.5);
            let end = est + life;
            let r3 = self.rng.unit();
            if r3 < 0.70 {
                // Active close.
                self.push(end, k(KindKey::State(Established, FinWait1), cached, local));
                let fw1 = self.rng.lognormal_ns(median_ms * MS, 0.5);
                self.push(
                    end + fw1,
                    k(KindKey::State(FinWait1, FinWait2), None, local),
                );
                let fw2 = self.rng.lognormal_ns(median_ms * 0.8 * MS, 0.5);
                self.push(
                    end + fw1 + fw2,
                    k(KindKey::State(FinWait2, Close), None, local),
                );
            } else if r3 < 0.92 {
                // Passive close: the peer's FIN, then the application's close().
                self.push(end, k(KindKey::State(Established, CloseWait), None, local));
                let cw = self.rng.lognormal_ns(5.0 * MS, 2.0);
                self.push(
                    end + cw,
                    k(KindKey::State(CloseWait, LastAck), cached, local),
                );
                let la = self.rng.lognormal_ns(median_ms * MS, 0.5);
                self.push(
                    end + cw + la,
                    k(KindKey::State(LastAck, Close), None, local),
                );
            } else if r3 < 0.94 {
                // Simultaneous close.
                self.push(end, k(KindKey::State(Established, FinWait1), cached, local));
                let a = self.rng.lognormal_ns(0.05 * MS, 0.3);
                self.push(end + a, k(KindKey::State(FinWait1, Closing), None, local));
                let b = self.rng.lognormal_ns(median_ms * MS, 0.5);
                self.push(end + a + b, k(KindKey::State(Closing, Close), None, local));
            } else if r3 < 0.98 {
                // The peer resets.
                self.push(end, k(KindKey::ResetReceived, None, local));
                self.push(end, k(KindKey::State(Established, Close), None, local));
            } else {
                // We abort (SO_LINGER 0).
                self.push(end, k(KindKey::ResetSent(Established), cached, local));
                self.push(end, k(KindKey::State(Established, Close), cached, local));
            }
        } else {
            // Server side: a child of a listener appears at the final ACK.
            let (lport, median_ms, proc_name) = LISTENERS[self.rng.below(2) as usize];
            let owner = Some((900, comm(proc_name), OwnerSource::Listener));
            let cached = Some((900, comm(proc_name), OwnerSource::Cached));
            let local: SocketAddr = ([10, 0, 0, 100], lport).into();
            let remote: SocketAddr = ([10, 1, peer % 8, peer], ephemeral).into();
            let srtt = self.rng.lognormal_ns(median_ms * MS, 0.5);
            let k = |kind, owner, srtt_us| EventKey {
                sock,
                local,
                remote,
                owner,
                kind,
                srtt_us,
            };
            self.push(t, k(KindKey::State(Listen, SynRecv), owner, None));
            self.push(
                t,
                k(
                    KindKey::State(SynRecv, Established),
                    owner,
                    Some((srtt / 1000) as u32),
                ),
            );
            let life = self.rng.lognormal_ns(500.0 * MS, 1.5);
            let end = t + life;
            if self.rng.unit() < 0.6 {
                // The client closes first: CLOSE_WAIT until the server application closes.
                self.push(end, k(KindKey::State(Established, CloseWait), None, None));
                let cw = self.rng.lognormal_ns(0.3 * MS, 1.0);
                self.push(
                    end + cw,
                    k(KindKey::State(CloseWait, LastAck), cached, None),
                );
                let la = self.rng.lognormal_ns(median_ms * MS, 0.5);
                self.push(end + cw + la, k(KindKey::State(LastAck, Close), None, None));
            } else {
                self.push(end, k(KindKey::State(Established, FinWait1), cached, None));
                let fw1 = self.rng.lognormal_ns(median_ms * MS, 0.5);
                self.push(end + fw1, k(KindKey::State(FinWait1, FinWait2), None, None));
                let fw2 = self.rng.lognormal_ns(median_ms * MS, 0.5);
                self.push(
                    end + fw1 + fw2,
                    k(KindKey::State(FinWait2, Close), None, None),
                );
            }
        }
    }
}

fn to_event(ts_ns: u64, k: &EventKey) -> Event {
    Event {
        ts_ns,
        sock: k.sock,
        family: Family::V4,
        local: k.local,
        remote: k.remote,
        owner: k.owner.map(|(tgid, comm, source)| Owner {
            tgid,
            pid: tgid,
            comm,
            source,
        }),
        kind: match k.kind {
            KindKey::State(old, new) => Kind::State { old, new },
            KindKey::SynRetransmit => Kind::SynRetransmit,
            KindKey::ResetReceived => Kind::ResetReceived,
            KindKey::ResetSent(s) => Kind::ResetSent { state: Some(s) },
        },
        srtt_us: k.srtt_us,
        ident: Default::default(),
        close: None,
    }
}

/// The fixed header of a synthetic recording (no host facts, so the file is reproducible).
fn header() -> Header {
    let start_unix_ns = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
    Header {
        version: VERSION,
        host: "synthetic".to_owned(),
        kernel: "6.18.0-synthetic".to_owned(),
        start: "2026-01-01T00:00:00Z".to_owned(),
        start_unix_ns,
        clock: Clock {
            realtime_offset_ns: start_unix_ns - T0_NS as i64,
            utc_offset_secs: 0,
        },
        filter: Filter::default(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Monotonic time of the first event.
const T0_NS: u64 = 1_000_000_000_000;

/// Writes a synthetic recording of about `transitions` transitions to `rec`.
pub fn generate(rec: &mut Recorder, transitions: u64, seed: u64) -> std::io::Result<u64> {
    let mut g = Gen {
        rng: Rng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        heap: BinaryHeap::new(),
        seq: 0,
        next_sock: 0,
        transitions: 0,
    };
    // Listeners exist from the start.
    for (i, (port, _, name)) in LISTENERS.iter().enumerate() {
        let sock = 0xffff_8881_0000_0000 + i as u64 * 0x940;
        g.push(
            T0_NS,
            EventKey {
                sock,
                local: ([0, 0, 0, 0], *port).into(),
                remote: ([0, 0, 0, 0], 0).into(),
                owner: Some((900, comm(name), OwnerSource::Current)),
                kind: KindKey::State(TcpState::Close, TcpState::Listen),
                srtt_us: None,
            },
        );
    }
    // About 240 new connections a second, in bursts: a recording of ~10 minutes per million.
    let mut t = T0_NS;
    let mut events = 0u64;
    while g.transitions < transitions {
        let phase = ((t - T0_NS) / 1_000_000_000) % 60;
        let rate = if phase < 10 { 600.0 } else { 200.0 };
        let gap = (-(g.rng.unit().max(1e-12)).ln() / rate * 1e9) as u64;
        t += gap.max(1);
        while let Some(Reverse((ts, _, _))) = g.heap.peek() {
            if *ts > t {
                break;
            }
            if let Some(Reverse((ts, _, Ev(k)))) = g.heap.pop() {
                rec.write_event(&to_event(ts, &k))?;
                events += 1;
            }
        }
        g.connection(t);
    }
    while let Some(Reverse((ts, _, Ev(k)))) = g.heap.pop() {
        rec.write_event(&to_event(ts, &k))?;
        events += 1;
    }
    Ok(events)
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    crate::record::check_recording_name(&args.output).map_err(crate::exit::usage)?;
    let mut rec = Recorder::create(&args.output, &header())
        .with_context(|| format!("creating {}", args.output.display()))?;
    let events = generate(&mut rec, args.transitions, args.seed)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let counters = Counters {
        lost: 0,
        submitted: events,
        filtered: 0,
        missed: 0,
    };
    let end_unix_ns = header().clock.unix_ns(rec.last_ts_ns());
    rec.finish_at(counters, 0, end_unix_ns)
        .with_context(|| format!("finishing {}", args.output.display()))?;
    eprintln!(
        "tcptrace: wrote {events} events to {}",
        args.output.display()
    );
    Ok(())
}
