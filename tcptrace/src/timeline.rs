//! What the charts need beyond [`crate::aggregate::Aggregate`]: connections opened, closed
//! and reset per time bucket, sockets per state over time, and handshake latency per peer
//! address. A [`Sink`], fed the same facts as the aggregate, so a live run and the replay of
//! its recording produce the same timeline.

use std::{collections::BTreeMap, io, net::IpAddr};

use rustc_hash::FxHashMap;

use crate::{
    aggregate::{Hist, MAX_GROUPS},
    decode::TcpState,
    sink::Sink,
    track::{Fact, Side},
};

/// Most buckets kept; beyond it neighbouring buckets merge (the bucket width doubles), so a
/// week-long recording stays small while a few seconds' run still shows its shape.
const MAX_BUCKETS: usize = 4096;
/// The finest bucket width.
const BASE_WIDTH_NS: u64 = 10_000_000;

/// One time bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Connection attempts started (CLOSE->SYN_SENT, LISTEN->SYN_RECV).
    pub opened: u64,
    /// Connections finished (any way).
    pub closed: u64,
    /// RSTs sent or received.
    pub resets: u64,
    /// Sockets in each state (indexed like [`TcpState::ALL`]) at the end of the bucket.
    pub population: [u32; 13],
}

/// The timeline and per-peer aggregates.
#[derive(Debug)]
pub struct Timeline {
    /// Bucket width in nanoseconds (10 ms, doubled as often as needed).
    pub width_ns: u64,
    /// Buckets by start (monotonic nanoseconds, a multiple of `width_ns`).
    pub buckets: BTreeMap<u64, Bucket>,
    /// Monotonic time of the first and last fact.
    pub first_ns: Option<u64>,
    pub last_ns: u64,
    state_of: FxHashMap<u64, TcpState>,
    population: [u32; 13],
    current: Option<u64>,
    /// Handshake latency by remote address and side.
    pub peers: FxHashMap<(IpAddr, Side), Hist>,
    /// Handshakes with peers beyond [`MAX_GROUPS`] (not charted per peer).
    pub peers_other: u64,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            width_ns: BASE_WIDTH_NS,
            buckets: BTreeMap::new(),
            first_ns: None,
            last_ns: 0,
            state_of: FxHashMap::default(),
            population: [0; 13],
            current: None,
            peers: FxHashMap::default(),
            peers_other: 0,
        }
    }
}

fn state_index(s: TcpState) -> usize {
    s as usize - 1
}

impl Timeline {
    fn bucket(&mut self, ts_ns: u64) -> &mut Bucket {
        let start = ts_ns / self.width_ns * self.width_ns;
        if self.current != Some(start) {
            // Time moved to another bucket: the one we leave keeps the population as it was.
            if let Some(cur) = self.current
                && let Some(b) = self.buckets.get_mut(&cur)
            {
                b.population = self.population;
            }
            self.current = Some(start);
        }
        if !self.buckets.contains_key(&start) && self.buckets.len() >= MAX_BUCKETS {
            self.coarsen();
            return self.bucket(ts_ns);
        }
        let population = self.population;
        self.buckets.entry(start).or_insert_with(|| Bucket {
            population,
            ..Bucket::default()
        })
    }

    fn coarsen(&mut self) {
        let w = self.width_ns * 2;
        let mut merged: BTreeMap<u64, Bucket> = BTreeMap::new();
        for (start, b) in std::mem::take(&mut self.buckets) {
            let m = merged.entry(start / w * w).or_default();
            m.opened += b.opened;
            m.closed += b.closed;
            m.resets += b.resets;
            // Buckets iterate in time order: the later one's end-of-bucket population wins.
            m.population = b.population;
        }
        self.buckets = merged;
        self.width_ns = w;
        self.current = None;
    }

    fn transition(&mut self, sock: u64, old: TcpState, new: TcpState) {
        let _ = old;
        if let Some(prev) = self.state_of.remove(&sock) {
            let p = &mut self.population[state_index(prev)];
            *p = p.saturating_sub(1);
        }
        if new != TcpState::Close {
            self.state_of.insert(sock, new);
            self.population[state_index(new)] += 1;
        }
    }

    fn add(&mut self, fact: &Fact) {
        let ts = fact.ts_ns();
        self.first_ns = Some(self.first_ns.map_or(ts, |f| f.min(ts)));
        self.last_ns = self.last_ns.max(ts);
        match fact {
            Fact::Transition { conn, old, new, .. } => {
                let opened = matches!(
                    (old, new),
                    (TcpState::Close, TcpState::SynSent) | (TcpState::Listen, TcpState::SynRecv)
                );
                self.transition(conn.sock, *old, *new);
                let population = self.population;
                let b = self.bucket(ts);
                b.population = population;
                if opened {
                    b.opened += 1;
                }
            }
            Fact::Closed(_) => self.bucket(ts).closed += 1,
            Fact::Reset { .. } => self.bucket(ts).resets += 1,
            Fact::Handshake {
                conn,
                side,
                latency_ns: Some(ns),
                ..
            } => {
                let key = (conn.remote.ip(), *side);
                if self.peers.len() >= MAX_GROUPS && !self.peers.contains_key(&key) {
                    self.peers_other += 1;
                } else {
                    self.peers
                        .entry(key)
                        .or_insert_with(|| Hist::with_sigfig(2))
                        .record_ns(*ns);
                }
            }
            _ => {}
        }
    }

    /// Sockets the timeline currently believes are in `state`.
    #[cfg(test)]
    pub fn population(&self, state: TcpState) -> u32 {
        self.population[state_index(state)]
    }
}

impl Sink for Timeline {
    fn fact(&mut self, fact: &Fact) -> io::Result<()> {
        self.add(fact);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::Conn;

    fn conn(sock: u64) -> Conn {
        Conn {
            sock,
            local: "127.0.0.1:1".parse().expect("addr"),
            remote: "127.0.0.1:2".parse().expect("addr"),
            owner: None,
            side: Some(Side::Client),
            ident: Default::default(),
        }
    }

    fn tr(ts: u64, sock: u64, old: TcpState, new: TcpState) -> Fact {
        Fact::Transition {
            ts_ns: ts,
            conn: conn(sock),
            old,
            new,
            dwell_ns: None,
        }
    }

    #[test]
    fn counts_opens_and_populations_per_second() {
        use TcpState::*;
        let mut t = Timeline::default();
        let s = 1_000_000_000;
        for f in [
            tr(s, 1, Close, SynSent),
            tr(s + 1, 1, SynSent, Established),
            tr(2 * s, 2, Close, SynSent),
            tr(3 * s, 1, Established, FinWait1),
            tr(3 * s + 5, 9, Established, CloseWait), // first seen mid-life
        ] {
            t.add(&f);
        }
        assert_eq!(t.buckets[&s].opened, 1);
        assert_eq!(t.buckets[&s].population[state_index(Established)], 1);
        assert_eq!(t.buckets[&(2 * s)].population[state_index(SynSent)], 1);
        assert_eq!(t.population(FinWait1), 1);
        assert_eq!(t.population(CloseWait), 1);
        assert_eq!(t.population(Established), 0);
    }

    #[test]
    fn coarsens_beyond_the_bucket_cap() {
        let mut t = Timeline::default();
        for i in 0..(MAX_BUCKETS as u64 + 10) {
            t.add(&tr(
                i * 1_000_000_000,
                i,
                TcpState::Close,
                TcpState::SynSent,
            ));
        }
        assert!(t.width_ns > 1_000_000_000, "width {}", t.width_ns);
        assert!(t.buckets.len() <= MAX_BUCKETS);
        let opened: u64 = t.buckets.values().map(|b| b.opened).sum();
        assert_eq!(opened, MAX_BUCKETS as u64 + 10);
    }
}
