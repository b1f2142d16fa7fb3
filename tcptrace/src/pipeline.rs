//! Everything after `collect`, wired in one place: decode -> reorder -> owners (owner, name,
//! identity) -> track -> aggregate -> sinks; socket-table samples (`sockdiag`) go straight to
//! the sinks and the aggregate. Pure apart from the sinks' writers, so a recording replays through exactly the
//! same code as a live run.

use std::{io, net::SocketAddr};

use rustc_hash::FxHashMap;

use crate::{
    aggregate::Aggregate,
    decode::{Event, Kind, Owner, TcpState, decode_bytes},
    listeners::Sample,
    owners::Owners,
    reorder::{Reorder, WINDOW_NS},
    sink::{Sink, guarded},
    track::{Fact, Limits, Tracker},
};

/// How often (in event time) idle sockets are swept from the tracker.
const SWEEP_EVERY_NS: u64 = 60_000_000_000;

/// Sockets that predate the run, by (local, remote): a map that only shrinks, with a bitmap
/// of its keys' port pairs in front. Every event's addresses are looked up in it and almost
/// none is there: the bitmap rules those out without hashing two socket addresses (a few
/// dozen instructions per event). The test `prior_maps_answer_as_plain_maps` holds it to
/// the plain map.
struct PriorMap<V> {
    map: FxHashMap<(SocketAddr, SocketAddr), V>,
    /// One bit per [`pair_slot`], set for every key the map was made with.
    ports: Vec<u64>,
}

impl<V> Default for PriorMap<V> {
    fn default() -> Self {
        Self {
            map: FxHashMap::default(),
            ports: Vec::new(),
        }
    }
}

impl<V> PriorMap<V> {
    fn new(entries: impl IntoIterator<Item = ((SocketAddr, SocketAddr), V)>) -> Self {
        let map: FxHashMap<_, _> = entries.into_iter().collect();
        let mut ports = vec![0u64; if map.is_empty() { 0 } else { 1 << 10 }];
        for (l, r) in map.keys() {
            let i = pair_slot(l.port(), r.port());
            ports[i / 64] |= 1 << (i % 64);
        }
        Self { map, ports }
    }

    /// Whether the map may hold (local, remote): false only if it surely does not.
    fn may_hold(&self, local: &SocketAddr, remote: &SocketAddr) -> bool {
        let i = pair_slot(local.port(), remote.port());
        !self.map.is_empty()
            && self
                .ports
                .get(i / 64)
                .is_some_and(|w| (w >> (i % 64)) & 1 != 0)
    }

    fn get(&self, key: &(SocketAddr, SocketAddr)) -> Option<&V> {
        self.map.get(key)
    }

    fn remove(&mut self, key: &(SocketAddr, SocketAddr)) -> Option<V> {
        self.map.remove(key)
    }
}

/// A (local port, remote port) pair's bit in [`PriorMap::ports`] (a listener's remote port
/// is 0, so its children, with the same local port, mostly fall elsewhere).
fn pair_slot(local: u16, remote: u16) -> usize {
    ((u32::from(local).wrapping_mul(0x9e37) ^ u32::from(remote)) & 0xffff) as usize
}

struct Core {
    /// Fills in the owners of softirq-context events (see `owners`).
    owners: Owners,
    /// Owners of sockets that predate the run, by (local, remote), applied to events that
    /// still have no owner after `owners` (before any sink sees them, so recordings carry
    /// them too).
    prior_owners: PriorMap<Owner>,
    tracker: Tracker,
    agg: Aggregate,
    facts: Vec<Fact>,
    sinks: Vec<Box<dyn Sink>>,
    /// Per sink: the error that stopped it. A failed sink (e.g. stdout closed by `| head`, or
    /// a sink that panicked: see `sink::guarded`) is skipped from then on; the others
    /// (recording, charts) keep going.
    sink_errors: Vec<Option<io::Error>>,
    last_sweep_ns: u64,
}

impl Core {
    /// Takes one event through owners, tracker, aggregate and sinks; `ev` is the caller's
    /// own copy (the reorder stage's), filled in where it is.
    fn process(&mut self, ev: &mut Event) {
        self.owners.fill(ev);
        if self.prior_owners.may_hold(&ev.local, &ev.remote) {
            let key = (ev.local, ev.remote);
            if ev.owner.is_none() {
                ev.owner = self.prior_owners.get(&key).copied();
            }
            if let Kind::State {
                new: TcpState::Close,
                ..
            } = ev.kind
            {
                self.prior_owners.remove(&key);
            }
        }
        for (s, err) in self.sinks.iter_mut().zip(&mut self.sink_errors) {
            if err.is_none()
                && let Err(e) = guarded(|| s.event(ev))
            {
                *err = Some(e);
            }
        }
        if ev.kind == Kind::ListenOverflow {
            self.agg.listeners.overflow_drop(&ev.local);
        }
        self.facts.clear();
        self.tracker.process(ev, &mut self.facts);
        self.dispatch();
        if ev.ts_ns.saturating_sub(self.last_sweep_ns) > SWEEP_EVERY_NS {
            self.last_sweep_ns = ev.ts_ns;
            self.tracker.sweep(ev.ts_ns);
        }
    }

    /// Hands a socket-table sample to the sinks and the aggregate.
    fn sample(&mut self, s: &Sample) {
        for (sink, err) in self.sinks.iter_mut().zip(&mut self.sink_errors) {
            if err.is_none()
                && let Err(e) = sink.sample(s)
            {
                *err = Some(e);
            }
        }
        self.agg.add_sample(s);
    }

    /// Releases what the tracker still holds (closes waiting for a late reset).
    fn flush_tracker(&mut self) {
        self.facts.clear();
        self.tracker.flush(&mut self.facts);
        self.dispatch();
    }

    /// Hands `self.facts` to the aggregate and the sinks.
    fn dispatch(&mut self) {
        for f in &self.facts {
            self.agg.add(f);
            for (s, err) in self.sinks.iter_mut().zip(&mut self.sink_errors) {
                if err.is_none()
                    && let Err(e) = guarded(|| s.fact(f))
                {
                    *err = Some(e);
                }
            }
        }
    }
}

/// The userspace pipeline.
pub struct Pipeline {
    /// Sockets that predate the run, by (local, remote), with their state and holder as /proc
    /// showed them at start, until their first event arrives (from then on the tracker counts
    /// them: the tracker keys sockets by kernel address, which /proc does not show).
    prior_sockets: PriorMap<(TcpState, Option<Owner>)>,
    reorder: Reorder,
    core: Core,
    undecodable: u64,
    first_decode_error: Option<String>,
}

impl Pipeline {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        let sink_errors = sinks.iter().map(|_| None).collect();
        Self {
            prior_sockets: PriorMap::default(),
            reorder: Reorder::new(WINDOW_NS),
            core: Core {
                owners: Owners::default(),
                prior_owners: PriorMap::default(),
                tracker: Tracker::new(Limits::default()),
                agg: Aggregate::default(),
                facts: Vec::with_capacity(8),
                sinks,
                sink_errors,
                last_sweep_ns: 0,
            },
            undecodable: 0,
            first_decode_error: None,
        }
    }

    /// Decodes one ring-buffer record and feeds it in; bad records are counted.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        match decode_bytes(bytes) {
            Ok(ev) => self.push(ev),
            Err(e) => {
                self.undecodable += 1;
                if self.first_decode_error.is_none() {
                    log::warn!("skipping an undecodable record: {e}");
                    self.first_decode_error = Some(e.to_string());
                }
            }
        }
    }

    /// Remembers who held sockets that existed before the run (see `procfs`): by kernel
    /// socket address where /proc showed it (then events name them `cached`, as if an earlier
    /// event had), and by (local, remote) for every connected socket (`proc`).
    pub fn set_prior_owners(
        &mut self,
        by_sock: impl IntoIterator<Item = (u64, Owner)>,
        by_addr: impl IntoIterator<Item = (SocketAddr, SocketAddr, Owner)>,
    ) {
        self.core.owners.seed(by_sock);
        self.core.prior_owners = PriorMap::new(by_addr.into_iter().map(|(l, r, o)| ((l, r), o)));
    }

    /// Installs the lookup of process names the kernel did not send (see `owners`).
    pub fn set_comm_resolver(&mut self, r: crate::owners::CommResolver) {
        self.core.owners.set_resolver(r);
    }

    /// Remembers the sockets that existed before the run, with their state (see
    /// [`Pipeline::prior_sockets`]).
    pub fn set_prior_sockets(
        &mut self,
        socks: impl IntoIterator<Item = (SocketAddr, SocketAddr, TcpState, Option<Owner>)>,
    ) {
        self.prior_sockets =
            PriorMap::new(socks.into_iter().map(|(l, r, st, o)| ((l, r), (st, o))));
    }

    /// Sockets that existed before the run and have had no event since: (local, remote),
    /// state at start, holder.
    pub fn prior_sockets(
        &self,
    ) -> impl Iterator<Item = (&(SocketAddr, SocketAddr), &(TcpState, Option<Owner>))> {
        self.prior_sockets.map.iter()
    }

    /// The identity (cgroup, network namespace) the owner cache holds for a socket that has
    /// not closed: what per-workload counts of open sockets go by (the tracker keeps none).
    pub fn ident_of(&self, sock: u64) -> crate::decode::Ident {
        self.core.owners.ident(sock)
    }

    /// Feeds one decoded event in.
    pub fn push(&mut self, ev: Event) {
        if self.prior_sockets.may_hold(&ev.local, &ev.remote) {
            self.prior_sockets.remove(&(ev.local, ev.remote));
        }
        let core = &mut self.core;
        self.reorder.push(ev, |ev| core.process(ev));
    }

    /// Holds events until the reader says what it has read ([`Pipeline::read_all_before`]):
    /// for the kernel's rings, read in drains (see `reorder`). Call it before the first push.
    pub fn hold_until_read(&mut self) {
        self.reorder.hold_until_read();
    }

    /// The reader has fed in every record the kernel committed before `ns` (its clock):
    /// releases the events that nothing still unread can precede.
    pub fn read_all_before(&mut self, ns: u64) {
        let core = &mut self.core;
        self.reorder.read_all_before(ns, |ev| core.process(ev));
    }

    /// Feeds an event that is already in the order the tracker must see it, bypassing the
    /// reorder window: a recording holds the order the live run's reorder stage released.
    pub fn push_ordered(&mut self, mut ev: Event) {
        self.core.process(&mut ev);
    }

    /// Feeds one socket-table sample in. Samples skip the reorder window (they are taken once
    /// a second, not raced by other CPUs); the sinks see them in the order they arrive
    /// among the released events, and a recording keeps that order, so a replay (through
    /// [`Pipeline::push_ordered`] and this) gives the same figures.
    pub fn push_sample(&mut self, s: &Sample) {
        self.core.sample(s);
    }

    /// The end of the input: releases everything, including closes the tracker still holds
    /// for a late reset. Only here, never on a quiet tick, so that a recording (which knows
    /// nothing of ticks) replays to exactly the same facts.
    pub fn finish(&mut self) {
        let core = &mut self.core;
        self.reorder.flush(|ev| core.process(ev));
        self.core.flush_tracker();
        self.flush_sinks();
    }

    /// Flushes the sinks' writers without releasing held events (a steady trickle of events
    /// must still reach a terminal promptly).
    pub fn flush_sinks(&mut self) {
        let core = &mut self.core;
        for (s, err) in core.sinks.iter_mut().zip(&mut core.sink_errors) {
            if err.is_none()
                && let Err(e) = guarded(|| s.flush())
            {
                *err = Some(e);
            }
        }
    }

    /// The first error a sink returned, if any (e.g. a closed pipe).
    pub fn sink_error(&self) -> Option<&io::Error> {
        self.core.sink_errors.iter().flatten().next()
    }

    pub fn aggregate(&self) -> &Aggregate {
        &self.core.agg
    }

    /// Shows only the listeners `filter` traces (see `Listeners::in_scope`).
    pub fn listener_scope(&mut self, filter: &crate::config::Filter) {
        self.core.agg.listeners.set_scope(filter);
    }

    /// Keeps each edge's dwell histogram, which only the state-machine chart shows (see
    /// `aggregate::Edges`).
    pub fn keep_edge_dwells(&mut self) {
        self.core.agg.keep_edge_dwells();
    }

    pub fn tracker(&self) -> &Tracker {
        &self.core.tracker
    }

    /// Counts records that did not decode elsewhere (a replayed recording's live run).
    pub fn add_undecodable(&mut self, n: u64) {
        self.undecodable += n;
    }

    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab failure, replayed: a drain that started just before a burst of handshake
    /// events on one CPU read that CPU's ring empty, stalled, and read the other CPU's ring
    /// after the connection's teardown was committed there; the burst came in the next
    /// drain. Going by the newest event, the teardown was released first and the tracker saw
    /// both ends close before they opened; held until the reader says what it has read, the
    /// connection is whole.
    #[test]
    fn a_drain_stalled_between_rings_does_not_split_a_connection() {
        use crate::{
            aggregate::Hist,
            decode::{decode, tests::raw_state},
        };
        // TCP states as the kernel numbers them.
        let (est, syn_sent, syn_recv, fw1, fw2, tw) = (1, 2, 3, 4, 5, 6);
        let (close, cw, lack, listen) = (7, 8, 9, 10);
        let (client, server, ms) = (0xc1, 0x5e, 1_000_000u64);
        let t0 = 1_000 * ms;
        let t1 = t0 + 1_030 * ms;
        let ev = |ts, sk, old, new| decode(&raw_state(ts, sk, old, new)).expect("decodes");
        // (records of one drain, when it started)
        let drains = [
            (vec![ev(t0, client, close, syn_sent)], t0 + ms / 1000),
            (
                vec![
                    ev(t1 + ms, client, est, fw1),
                    ev(t1 + ms + 1_000, server, est, cw),
                    ev(t1 + 3 * ms, server, cw, lack),
                    ev(t1 + 3 * ms + 1_000, client, fw1, fw2),
                    ev(t1 + 4 * ms, server, lack, close),
                    ev(t1 + 5 * ms, client, fw2, tw),
                ],
                t1 - 1_000,
            ),
            (
                vec![
                    ev(t1, client, syn_sent, est),
                    ev(t1 + 10_000, server, listen, syn_recv),
                    ev(t1 + 20_000, server, syn_recv, est),
                ],
                t1 + 6 * ms,
            ),
        ];
        let run = |told: bool| {
            let mut p = Pipeline::new(Vec::new());
            if told {
                p.hold_until_read();
            }
            for (records, started) in drains.clone() {
                for e in records {
                    p.push(e);
                }
                if told {
                    p.read_all_before(started);
                }
            }
            p.finish();
            let o = &p.aggregate().overall;
            let handshakes = o.handshake.iter().map(Hist::count).sum::<u64>()
                + o.handshake_unmeasured.iter().sum::<u64>();
            (p.tracker().stats(), handshakes)
        };
        let (stats, handshakes) = run(true);
        assert_eq!((stats.gaps, stats.joined_mid_life), (0, 0), "{stats:?}");
        assert_eq!(stats.out_of_order, 0, "{stats:?}");
        assert_eq!(handshakes, 2, "both ends' handshakes");
        // The same drains without the reader's word: what the lab run saw.
        let (stats, _) = run(false);
        assert!(stats.gaps > 0 && stats.joined_mid_life > 0, "{stats:?}");
    }

    #[test]
    fn prior_maps_answer_as_plain_maps() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let addr = |n: u64, port: u16| -> SocketAddr {
            if n.is_multiple_of(3) {
                ([0u16, 0, 0, 0, 0, 0, 0, n as u16 % 4], port).into()
            } else {
                ([10, 0, 0, (n % 4) as u8], port).into()
            }
        };
        // Listeners (remote port 0) and connections, few ports so that keys share slots.
        let keys: Vec<(SocketAddr, SocketAddr)> = (0..300u64)
            .map(|i| {
                let lp = (next() % 400) as u16;
                let rp = if i.is_multiple_of(4) {
                    0
                } else {
                    (next() % 400) as u16
                };
                (addr(next(), lp), addr(next(), rp))
            })
            .collect();
        let mut plain: FxHashMap<_, _> = keys.iter().map(|k| (*k, k.0.port())).collect();
        let mut fast = PriorMap::new(plain.iter().map(|(k, v)| (*k, *v)));
        for _ in 0..200_000 {
            let key = if next().is_multiple_of(4) {
                keys[(next() % keys.len() as u64) as usize]
            } else {
                (
                    addr(next(), (next() % 400) as u16),
                    addr(next(), (next() % 400) as u16),
                )
            };
            let fast_hit = if fast.may_hold(&key.0, &key.1) {
                fast.get(&key).copied()
            } else {
                None
            };
            assert_eq!(fast_hit, plain.get(&key).copied(), "{key:?}");
            if next().is_multiple_of(2) && fast.may_hold(&key.0, &key.1) {
                assert_eq!(fast.remove(&key), plain.remove(&key), "{key:?}");
            } else if next().is_multiple_of(2) {
                plain.remove(&key);
                fast.remove(&key);
            }
        }
        assert!(plain.len() < 200, "too few removals: {} left", plain.len());
        assert_eq!(fast.map, plain);
        let empty = PriorMap::<u16>::default();
        assert!(!empty.may_hold(&keys[0].0, &keys[0].1));
    }
}
