//! What only a live view needs besides the run's aggregates, kept by one sink: per-second
//! counts of the last minute (opened, established, closed, reset, refused, failed, SYN and
//! SYN-ACK retransmits), handshake histograms of the last 10 s, the ring of recently closed
//! connections (so a connection that came and went between two refreshes is still seen),
//! groups by peer address and per-group connection counts of the last 10 s.
//!
//! Like every stage after `collect`, it takes time from event timestamps only, so a replayed
//! recording shows the same windows the live run showed. It is added to the pipeline only
//! when a front end asks for it (`top`): `watch` and `record` pay nothing for it. The
//! figures are turned into a [`crate::summary::Snapshot`] by `summary`, never by the
//! dashboard.

use std::{
    collections::VecDeque,
    io,
    net::{IpAddr, SocketAddr},
};

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{
    aggregate::{Aggregate, GroupKey, Hist, MAX_GROUPS, Quantiles, side_index},
    decode::{Comm, TcpState},
    sink::Sink,
    track::{CloseKind, Conn, Connection, Fact, Side, phase_index},
};

/// The window of the "last 10 s" figures, in seconds.
pub const WINDOW_SECS: u64 = 10;
/// Seconds of per-second counts kept (the sparkline's minute).
pub const MINUTE_SECS: u64 = 60;
/// Recently closed connections kept.
pub const RECENT_CLOSES: usize = 1000;
/// Slots of the per-second ring: a minute plus the current second, rounded up.
const SLOTS: usize = 64;

/// The per-second counters, in the order [`RATE_NAMES`] names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// A connection started: CLOSE->SYN_SENT (client) or a server child created.
    Opened = 0,
    /// A handshake completed (client or server side).
    Established,
    /// A connection ended, however.
    Closed,
    /// A RST sent or received.
    Reset,
    /// connect() answered with RST.
    Refused,
    /// connect() timed out, or a connection closed without FINs or a reset seen.
    Failed,
    SynRetransmit,
    SynAckRetransmit,
}

/// Names of the per-second counters, as the snapshot's JSON spells them.
pub const RATE_NAMES: [&str; 8] = [
    "opened",
    "established",
    "closed",
    "reset",
    "refused",
    "failed",
    "syn_retransmit",
    "synack_retransmit",
];

#[derive(Clone, Copy, Debug, Default)]
struct Second {
    sec: u64,
    n: [u64; 8],
}

#[derive(Clone, Debug, Default)]
struct HsSecond {
    sec: u64,
    h: [Hist; 2],
}

/// Connection counts of one group over the last seconds, by event time.
#[derive(Clone, Copy, Debug, Default)]
struct GroupWindow {
    /// Per second, indexed by `sec % WINDOW_SECS`, with the second each slot holds.
    sec: [u64; WINDOW_SECS as usize],
    n: [u32; WINDOW_SECS as usize],
}

impl GroupWindow {
    fn bump(&mut self, sec: u64) {
        let i = (sec % WINDOW_SECS) as usize;
        if self.sec[i] < sec {
            self.sec[i] = sec;
            self.n[i] = 0;
        }
        if self.sec[i] == sec {
            self.n[i] += 1;
        }
    }

    /// Connections in the complete seconds `now_sec - WINDOW_SECS .. now_sec`.
    fn sum(&self, now_sec: u64) -> u64 {
        let lo = now_sec.saturating_sub(WINDOW_SECS);
        self.sec
            .iter()
            .zip(self.n)
            .filter(|(s, _)| **s >= lo && **s < now_sec)
            .map(|(_, n)| u64::from(n))
            .sum()
    }
}

/// Who sent the first FIN (or the reset) of a finished connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Closer {
    /// This host (the socket went through FIN_WAIT1, or sent the reset).
    Local,
    /// The peer (the socket went through CLOSE_WAIT, or received the reset).
    Peer,
    /// Both at once (CLOSING).
    Both,
    /// Not known (no teardown seen).
    Unknown,
}

impl Closer {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Peer => "peer",
            Self::Both => "both",
            Self::Unknown => "-",
        }
    }

    fn of(c: &Connection) -> Self {
        let had = |s: TcpState| phase_index(s).is_some_and(|i| c.phases[i].is_some());
        if had(TcpState::Closing) {
            Self::Both
        } else if had(TcpState::FinWait1) || had(TcpState::FinWait2) {
            Self::Local
        } else if had(TcpState::CloseWait) || had(TcpState::LastAck) {
            Self::Peer
        } else {
            match c.close {
                CloseKind::ResetSent | CloseKind::FinWait2Timeout => Self::Local,
                CloseKind::ResetReceived | CloseKind::Refused => Self::Peer,
                _ => Self::Unknown,
            }
        }
    }
}

/// One recently closed connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClosedConn {
    /// Monotonic time of the close.
    pub closed_ns: u64,
    pub pid: Option<u32>,
    /// Kept as the kernel's 16 bytes (no allocation per closed connection).
    pub comm: Option<Comm>,
    pub side: Option<Side>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Opened to closed; `None` if the connection was first seen mid-life.
    pub lifetime_ms: Option<f64>,
    pub close: &'static str,
    pub closer: Closer,
}

/// The dimensions of the dashboard's group table, in the order [`group_keys`] returns them.
pub const DIMENSIONS: [&str; 5] = [
    "remote port",
    "local port",
    "process",
    "peer address",
    "workload",
];

/// Index of the workload dimension in [`DIMENSIONS`]: its keys are cgroup ids (0 unknown),
/// which the snapshot names and merges into workloads.
pub const WORKLOAD_DIMENSION: usize = 4;

/// The group keys of a connection in each of [`DIMENSIONS`] (`None` where it has none: a
/// server connection has no remote-port group, a listener no peer).
pub fn group_keys(conn: &Conn) -> [Option<GroupKey>; 5] {
    let peer = conn.remote.ip();
    [
        (conn.side == Some(Side::Client)).then_some(GroupKey::Port(conn.remote.port())),
        (conn.side == Some(Side::Server)).then_some(GroupKey::Port(conn.local.port())),
        Some(GroupKey::Process(
            conn.owner.map_or(Comm::default(), |o| o.comm),
        )),
        (!peer.is_unspecified()).then_some(GroupKey::Addr(peer)),
        Some(GroupKey::Cgroup(conn.ident.cgroup.unwrap_or(0))),
    ]
}

/// What the peer-address table shows of one peer: lighter than the aggregate's per-group
/// `Stats` (no teardown or lifetime histograms), as it is kept per fact only for `top`.
#[derive(Clone, Debug)]
pub struct PeerStats {
    /// Handshake latency: index 0 client, 1 server.
    pub handshake: [Hist; 2],
    /// Finished connections.
    pub connections: u64,
    pub resets: u64,
}

impl Default for PeerStats {
    fn default() -> Self {
        Self {
            handshake: [Hist::with_sigfig(2), Hist::with_sigfig(2)],
            connections: 0,
            resets: 0,
        }
    }
}

/// Per-group connection windows of the dashboard's group table, looked up for every closed
/// connection in each of [`DIMENSIONS`] without hashing on the hot path: a port finds its
/// window through a 64 Ki-entry index per port dimension, a process, peer address or cgroup
/// through the last key seen in its dimension; misses go through the hash index. Up to
/// `5 * MAX_GROUPS` windows; later keys are not counted (as with the plain map this
/// replaces, which the test `windows_match_a_plain_hash_map` holds it to).
#[derive(Debug, Default)]
struct Windows {
    slots: Vec<GroupWindow>,
    index: FxHashMap<(u8, GroupKey), u32>,
    /// Dimensions 0 and 1 (ports): per port 1 + the slot, 0 for none yet (allocated at the
    /// first port).
    by_port: [Vec<u32>; 2],
    /// Dimensions 2, 3 and 4: the last key found and its slot.
    last: [Option<(GroupKey, u32)>; 3],
}

impl Windows {
    fn get_mut(&mut self, dim: usize, key: GroupKey) -> Option<&mut GroupWindow> {
        let i = match (dim, &key) {
            (0 | 1, GroupKey::Port(p)) => {
                let p = usize::from(*p);
                match self.by_port[dim].get(p) {
                    Some(&n) if n > 0 => n - 1,
                    _ => {
                        let i = self.slow_index(dim, key)?;
                        let ports = &mut self.by_port[dim];
                        if ports.is_empty() {
                            *ports = vec![0; 1 << 16];
                        }
                        ports[p] = i + 1;
                        i
                    }
                }
            }
            (2..=4, _) => match &self.last[dim - 2] {
                Some((k, i)) if *k == key => *i,
                _ => {
                    let i = self.slow_index(dim, key.clone())?;
                    self.last[dim - 2] = Some((key, i));
                    i
                }
            },
            _ => self.slow_index(dim, key)?,
        };
        self.slots.get_mut(i as usize)
    }

    /// The slot of `key` in dimension `dim` through the hash index, created if it is new and
    /// there is room.
    fn slow_index(&mut self, dim: usize, key: GroupKey) -> Option<u32> {
        let k = (dim as u8, key);
        if let Some(&i) = self.index.get(&k) {
            return Some(i);
        }
        if self.slots.len() >= DIMENSIONS.len() * MAX_GROUPS {
            return None;
        }
        let i = u32::try_from(self.slots.len()).ok()?;
        self.index.insert(k, i);
        self.slots.push(GroupWindow::default());
        Some(i)
    }

    fn get(&self, dim: usize, key: &GroupKey) -> Option<&GroupWindow> {
        let &i = self.index.get(&(dim as u8, key.clone()))?;
        self.slots.get(i as usize)
    }
}

/// The peer-address groups, up to [`MAX_GROUPS`] (later peers are not grouped), found
/// through the last peer seen before the hash index (a churning host mostly talks to a few
/// peers at a time). The test `peers_match_a_plain_hash_map` holds it to the plain map it
/// replaces.
#[derive(Debug, Default)]
struct Peers {
    stats: Vec<(IpAddr, PeerStats)>,
    index: FxHashMap<IpAddr, u32>,
    last: Option<(IpAddr, u32)>,
}

impl Peers {
    /// The figures of `peer`, created if there is room; `None` for the unspecified address.
    fn get_mut(&mut self, peer: IpAddr) -> Option<&mut PeerStats> {
        let i = match self.last {
            Some((last, i)) if last == peer => i,
            _ => {
                let i = match self.index.get(&peer) {
                    Some(&i) => i,
                    None if self.stats.len() >= MAX_GROUPS || peer.is_unspecified() => {
                        return None;
                    }
                    None => {
                        let i = u32::try_from(self.stats.len()).ok()?;
                        self.index.insert(peer, i);
                        self.stats.push((peer, PeerStats::default()));
                        i
                    }
                };
                self.last = Some((peer, i));
                i
            }
        };
        self.stats.get_mut(i as usize).map(|(_, p)| p)
    }
}

/// The sink.
#[derive(Debug)]
pub struct Recent {
    totals: [u64; 8],
    first_ns: Option<u64>,
    seconds: [Second; SLOTS],
    hs: Vec<HsSecond>,
    closed: VecDeque<ClosedConn>,
    /// By peer address, up to [`MAX_GROUPS`] peers (later ones are not grouped).
    by_peer: Peers,
    windows: Windows,
    /// After the dashboard's `r`: the aggregates since then (built by the same
    /// `Aggregate::add` as the run's), and when it happened.
    since_reset: Option<(u64, Box<Aggregate>)>,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            totals: [0; 8],
            first_ns: None,
            seconds: [Second::default(); SLOTS],
            hs: (0..=WINDOW_SECS)
                .map(|_| HsSecond {
                    sec: 0,
                    h: [Hist::with_sigfig(2), Hist::with_sigfig(2)],
                })
                .collect(),
            closed: VecDeque::with_capacity(RECENT_CLOSES),
            by_peer: Peers::default(),
            windows: Windows::default(),
            since_reset: None,
        }
    }
}

/// Per-second figures of one counter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateFigures {
    pub name: &'static str,
    /// Mean over the last complete seconds of the window (fewer just after the start).
    pub per_s: f64,
    /// Since the start of the run.
    pub total: u64,
    /// The last minute's complete seconds, oldest first.
    pub last_minute: Vec<u64>,
}

impl Recent {
    /// Starts the since-start figures over at event time `now_ns` (the dashboard's `r`): the
    /// totals, the peer groups, and a fresh aggregate the dashboard shows instead of the
    /// run's. The run's own aggregate, and so the exit summary, are untouched.
    pub fn reset(&mut self, now_ns: u64) {
        self.totals = [0; 8];
        self.by_peer = Peers::default();
        self.since_reset = Some((now_ns, Box::default()));
    }

    /// The aggregate since the last reset, and when that was; `None` before any.
    pub fn since_reset(&self) -> Option<(u64, &Aggregate)> {
        self.since_reset.as_ref().map(|(t, a)| (*t, a.as_ref()))
    }

    fn count(&mut self, r: Rate, ts_ns: u64) {
        self.totals[r as usize] += 1;
        let sec = ts_ns / 1_000_000_000;
        let slot = &mut self.seconds[(sec % SLOTS as u64) as usize];
        if slot.sec < sec {
            *slot = Second { sec, n: [0; 8] };
        }
        if slot.sec == sec {
            slot.n[r as usize] += 1;
        }
    }

    fn handshake(&mut self, side: Side, ts_ns: u64, latency_ns: u64) {
        let sec = ts_ns / 1_000_000_000;
        let n = self.hs.len() as u64;
        let slot = &mut self.hs[(sec % n) as usize];
        if slot.sec < sec {
            slot.sec = sec;
            slot.h.iter_mut().for_each(Hist::clear);
        }
        if slot.sec == sec {
            slot.h[side_index(side)].record_ns(latency_ns);
        }
    }

    fn closed(&mut self, c: &Connection) {
        if self.closed.len() == RECENT_CLOSES {
            self.closed.pop_front();
        }
        self.closed.push_back(ClosedConn {
            closed_ns: c.closed_ns,
            pid: c.conn.owner.map(|o| o.tgid),
            comm: c.conn.owner.map(|o| o.comm),
            side: c.conn.side,
            local: c.conn.local,
            remote: c.conn.remote,
            lifetime_ms: c.lifetime_ns().map(|l| l as f64 / 1e6),
            close: c.close.name(),
            closer: Closer::of(c),
        });
        let sec = c.closed_ns / 1_000_000_000;
        for (dim, key) in group_keys(&c.conn).into_iter().enumerate() {
            let Some(key) = key else { continue };
            if let Some(w) = self.windows.get_mut(dim, key) {
                w.bump(sec);
            }
        }
    }

    /// Each counter's rate, total and last minute, as of event time `now_ns`.
    pub fn rates(&self, now_ns: u64) -> Vec<RateFigures> {
        let now_sec = now_ns / 1_000_000_000;
        let per = |i: usize, sec: u64| {
            let s = &self.seconds[(sec % SLOTS as u64) as usize];
            if s.sec == sec { s.n[i] } else { 0 }
        };
        let first_sec = self.first_ns.map_or(now_sec, |f| f / 1_000_000_000);
        let window = now_sec.saturating_sub(first_sec).clamp(1, WINDOW_SECS);
        RATE_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let last_minute: Vec<u64> = (now_sec.saturating_sub(MINUTE_SECS)..now_sec)
                    .map(|s| per(i, s))
                    .collect();
                let recent: u64 = last_minute.iter().rev().take(window as usize).sum();
                RateFigures {
                    name,
                    per_s: recent as f64 / window as f64,
                    total: self.totals[i],
                    last_minute,
                }
            })
            .collect()
    }

    /// Handshake latency quantiles (client, server) over the last [`WINDOW_SECS`] seconds up
    /// to `now_ns`, the current second included.
    pub fn handshake_window(&self, now_ns: u64) -> [Option<Quantiles>; 2] {
        let now_sec = now_ns / 1_000_000_000;
        let lo = now_sec.saturating_sub(WINDOW_SECS - 1);
        let mut out = [Hist::with_sigfig(2), Hist::with_sigfig(2)];
        for s in self.hs.iter().filter(|s| s.sec >= lo && s.sec <= now_sec) {
            for (o, h) in out.iter_mut().zip(&s.h) {
                o.merge(h);
            }
        }
        [out[0].quantiles(), out[1].quantiles()]
    }

    /// The recently closed connections, newest first.
    pub fn closed_newest_first(&self) -> impl Iterator<Item = &ClosedConn> {
        self.closed.iter().rev()
    }

    /// Groups by peer address, since the start.
    pub fn by_peer(&self) -> impl Iterator<Item = (&IpAddr, &PeerStats)> {
        self.by_peer.stats.iter().map(|(ip, p)| (ip, p))
    }

    /// Connections of group `key` in dimension `dim` per second over the last complete
    /// seconds of the window.
    pub fn group_rate(&self, dim: usize, key: &GroupKey, now_ns: u64) -> f64 {
        let now_sec = now_ns / 1_000_000_000;
        let first_sec = self.first_ns.map_or(now_sec, |f| f / 1_000_000_000);
        let window = now_sec.saturating_sub(first_sec).clamp(1, WINDOW_SECS);
        self.windows
            .get(dim, key)
            .map_or(0.0, |w| w.sum(now_sec) as f64 / window as f64)
    }
}

impl Sink for Recent {
    fn fact(&mut self, fact: &Fact) -> io::Result<()> {
        let ts = fact.ts_ns();
        if let Some((_, a)) = &mut self.since_reset {
            a.add(fact);
        }
        self.first_ns.get_or_insert(ts);
        match fact {
            Fact::Transition { old, new, .. } => {
                if matches!(
                    (old, new),
                    (TcpState::Close, TcpState::SynSent) | (TcpState::Listen, TcpState::SynRecv)
                ) {
                    self.count(Rate::Opened, ts);
                }
                return Ok(());
            }
            Fact::Handshake {
                side, latency_ns, ..
            } => {
                self.count(Rate::Established, ts);
                if let Some(l) = latency_ns {
                    self.handshake(*side, ts, *l);
                }
            }
            Fact::Closed(c) => {
                self.count(Rate::Closed, ts);
                match c.close {
                    CloseKind::Refused => self.count(Rate::Refused, ts),
                    CloseKind::ConnectTimeout | CloseKind::Aborted => self.count(Rate::Failed, ts),
                    _ => {}
                }
                self.closed(c);
            }
            Fact::Reset { .. } => self.count(Rate::Reset, ts),
            Fact::SynRetransmit { .. } => self.count(Rate::SynRetransmit, ts),
            Fact::SynAckRetransmit { .. } => self.count(Rate::SynAckRetransmit, ts),
            Fact::Phase { .. } | Fact::TimeWait { .. } => {}
        }
        // The peer table shows connections, handshakes and resets only.
        if matches!(
            fact,
            Fact::Handshake { .. } | Fact::Closed(_) | Fact::Reset { .. }
        ) {
            let peer: IpAddr = fact.conn().remote.ip();
            if let Some(p) = self.by_peer.get_mut(peer) {
                match fact {
                    Fact::Handshake {
                        side,
                        latency_ns: Some(l),
                        ..
                    } => p.handshake[side_index(*side)].record_ns(*l),
                    Fact::Closed(_) => p.connections += 1,
                    Fact::Reset { .. } => p.resets += 1,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(side: Side, rport: u16) -> Conn {
        Conn {
            sock: 1,
            local: "127.0.0.1:40000".parse().expect("addr"),
            remote: SocketAddr::new([127, 0, 0, 2].into(), rport),
            owner: None,
            side: Some(side),
            ident: Default::default(),
        }
    }

    const S: u64 = 1_000_000_000;

    /// xorshift64 for the lookup tests: runs of repeated keys and switches, the same every run.
    fn rng() -> impl FnMut() -> u64 {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    fn windows_match_a_plain_hash_map() {
        // The plain version `Windows` replaces, capped as it was.
        let mut plain: FxHashMap<(u8, GroupKey), GroupWindow> = FxHashMap::default();
        let mut fast = Windows::default();
        let mut next = rng();
        let mut keys = Vec::new();
        for i in 0..60_000u64 {
            let r = next();
            let dim = (r % 5) as usize;
            let key = match (dim, (r >> 8) % 4) {
                (0 | 1, 0..=2) => GroupKey::Port((r >> 16) as u16 % 4 + 8080),
                (0 | 1, _) => GroupKey::Port((r >> 16) as u16),
                (2, 0..=2) => GroupKey::Process(Comm::from_str_lossy(&format!("p{}", r % 5))),
                (2, _) => GroupKey::Process(Comm::from_str_lossy(&format!("q{}", r >> 40))),
                (4, 0..=2) => GroupKey::Cgroup((r >> 16) % 3),
                (4, _) => GroupKey::Cgroup(r >> 20),
                (_, 0..=2) => GroupKey::Addr(IpAddr::from([10, 0, 0, (r >> 16) as u8 % 3])),
                _ => GroupKey::Addr(IpAddr::from([10, 1, (r >> 16) as u8, (r >> 24) as u8])),
            };
            let sec = i / 500;
            for _ in 0..1 + (r >> 32) % 3 {
                let k = (dim as u8, key.clone());
                if let Some(w) = plain.get_mut(&k) {
                    w.bump(sec);
                } else if plain.len() < 5 * MAX_GROUPS {
                    plain.entry(k).or_default().bump(sec);
                }
                if let Some(w) = fast.get_mut(dim, key.clone()) {
                    w.bump(sec);
                }
            }
            keys.push((dim, key));
        }
        assert_eq!(plain.len(), 5 * MAX_GROUPS, "the cap was not reached");
        assert_eq!(fast.slots.len(), plain.len());
        for (dim, key) in &keys {
            let p = plain.get(&(*dim as u8, key.clone()));
            let f = fast.get(*dim, key);
            assert_eq!(p.is_some(), f.is_some(), "{dim} {key:?}");
            if let (Some(p), Some(f)) = (p, f) {
                assert_eq!((p.sec, p.n), (f.sec, f.n), "{dim} {key:?}");
            }
        }
    }

    #[test]
    fn peers_match_a_plain_hash_map() {
        let mut plain: FxHashMap<IpAddr, PeerStats> = FxHashMap::default();
        let mut fast = Peers::default();
        let mut next = rng();
        for _ in 0..20_000u64 {
            let r = next();
            let peer = match r % 8 {
                0..=4 => IpAddr::from([10, 0, 0, (r >> 8) as u8 % 3]),
                5 => IpAddr::from([0, 0, 0, 0]),
                _ => IpAddr::from([10, 1, (r >> 8) as u8, (r >> 16) as u8]),
            };
            for _ in 0..1 + (r >> 32) % 3 {
                let full = plain.len() >= MAX_GROUPS;
                let p = match plain.get_mut(&peer) {
                    Some(p) => Some(p),
                    None if full || peer.is_unspecified() => None,
                    None => Some(plain.entry(peer).or_default()),
                };
                let v = (r >> 24) % 1_000_000_000;
                if let Some(p) = p {
                    p.connections += 1;
                    p.handshake[0].record_ns(v);
                }
                if let Some(f) = fast.get_mut(peer) {
                    f.connections += 1;
                    f.handshake[0].record_ns(v);
                }
            }
        }
        assert_eq!(plain.len(), MAX_GROUPS, "the cap was not reached");
        assert_eq!(fast.stats.len(), plain.len());
        for (ip, f) in &fast.stats {
            let p = &plain[ip];
            assert_eq!(f.connections, p.connections, "{ip}");
            assert_eq!(
                f.handshake[0].quantiles(),
                p.handshake[0].quantiles(),
                "{ip}"
            );
        }
    }

    #[test]
    fn rates_count_per_second_by_event_time() {
        let mut r = Recent::default();
        for i in 0..30u64 {
            let ts = 100 * S + i * (S / 10); // 10 per second for 3 s
            r.fact(&Fact::Transition {
                ts_ns: ts,
                conn: conn(Side::Client, 80),
                old: TcpState::Close,
                new: TcpState::SynSent,
                dwell_ns: None,
            })
            .expect("sink");
        }
        let rates = r.rates(103 * S + 1);
        let opened = &rates[Rate::Opened as usize];
        assert_eq!(opened.total, 30);
        assert_eq!(opened.last_minute.len(), 60);
        assert_eq!(opened.last_minute[57..], [10, 10, 10]);
        assert!((opened.per_s - 10.0).abs() < 1e-9, "{}", opened.per_s);
        // A minute later the window is empty but the total stays.
        let later = r.rates(200 * S);
        assert_eq!(later[0].per_s, 0.0);
        assert_eq!(later[0].total, 30);
    }

    #[test]
    fn reset_starts_the_totals_and_a_fresh_aggregate() {
        let mut r = Recent::default();
        let hs = |ts: u64| Fact::Handshake {
            ts_ns: ts,
            conn: conn(Side::Client, 80),
            side: Side::Client,
            latency_ns: Some(1_000_000),
            retransmits: 0,
        };
        r.fact(&hs(S)).expect("sink");
        assert!(r.since_reset().is_none());
        r.reset(2 * S);
        assert_eq!(r.rates(3 * S)[Rate::Established as usize].total, 0);
        r.fact(&hs(3 * S)).expect("sink");
        r.fact(&hs(4 * S)).expect("sink");
        let (at, agg) = r.since_reset().expect("reset");
        assert_eq!(at, 2 * S);
        assert_eq!(agg.overall.handshake[0].count(), 2);
        assert_eq!(r.rates(5 * S)[Rate::Established as usize].total, 2);
    }

    #[test]
    fn handshake_window_forgets_old_seconds() {
        let mut r = Recent::default();
        let hs = |ts: u64, ms: u64| Fact::Handshake {
            ts_ns: ts,
            conn: conn(Side::Client, 80),
            side: Side::Client,
            latency_ns: Some(ms * 1_000_000),
            retransmits: 0,
        };
        r.fact(&hs(10 * S, 100)).expect("sink");
        r.fact(&hs(25 * S, 2)).expect("sink");
        let [client, server] = r.handshake_window(26 * S);
        let q = client.expect("client window");
        assert_eq!(q.count, 1);
        assert!(q.max_us < 3000, "the 100 ms handshake is older than 10 s");
        assert!(server.is_none());
    }

    #[test]
    fn ring_keeps_the_newest_closes_with_their_closer() {
        let mut r = Recent::default();
        for i in 0..(RECENT_CLOSES as u64 + 5) {
            let mut phases = [None; 5];
            phases[3] = Some(1000); // CLOSE_WAIT: the peer closed first
            r.fact(&Fact::Closed(Connection {
                conn: conn(Side::Server, 80),
                opened_ns: Some(i * S),
                closed_ns: i * S + 5_000_000,
                handshake_ns: None,
                retransmits: 0,
                phases,
                close: CloseKind::Fin,
                time_wait: false,
                stats: None,
            }))
            .expect("sink");
        }
        let v: Vec<_> = r.closed_newest_first().collect();
        assert_eq!(v.len(), RECENT_CLOSES);
        assert_eq!(v[0].closed_ns, (RECENT_CLOSES as u64 + 4) * S + 5_000_000);
        assert_eq!(v[0].closer, Closer::Peer);
        assert_eq!(v[0].lifetime_ms, Some(5.0));
        let key = GroupKey::Port(40000);
        let rate = r.group_rate(1, &key, (RECENT_CLOSES as u64 + 5) * S);
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
    }
}
