//! The per-socket TCP state machine: events in, lifecycle facts out.
//!
//! Pure: no I/O, no clock, no root. Time comes only from event timestamps, so a recording
//! replays to exactly the same facts as the live run that made it.
//!
//! Identity: the kernel reuses socket addresses, so a socket's history restarts at
//! CLOSE->SYN_SENT, CLOSE->LISTEN and LISTEN->SYN_RECV (child creation). A socket first seen
//! in the middle of its life (the tracer started late) is tracked from there, with the facts
//! that need its beginning left unknown rather than guessed.

use std::{collections::VecDeque, net::SocketAddr};

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{
    decode::{CloseStats, Event, Ident, Kind, Owner, OwnerSource, TcpState},
    intern::Interner,
};

// A path, so that the fuzz crate, which compiles this file through `#[path]`, finds it too.
#[path = "track/table.rs"]
mod table;
use table::Table;

/// Which end opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Active open: connect().
    Client,
    /// Passive open: a child of a listener.
    Server,
}

impl Side {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseKind {
    /// Both FINs exchanged: the active closer handed over to TIME_WAIT, or the passive closer
    /// got the last ACK.
    Fin,
    /// This host sent a RST (e.g. close with SO_LINGER 0, or unread data at close).
    ResetSent,
    /// The peer sent a RST.
    ResetReceived,
    /// connect() answered with RST: nothing listened on the port.
    Refused,
    /// connect() never completed: SYNs went unanswered until the kernel or the application
    /// gave up.
    ConnectTimeout,
    /// The socket left FIN_WAIT2 by timeout without the peer's FIN.
    FinWait2Timeout,
    /// Closed without a FIN exchange or a reset this tracer saw (e.g. aborted in SYN_RECV).
    Aborted,
}

impl CloseKind {
    pub const ALL: [CloseKind; 7] = [
        Self::Fin,
        Self::ResetSent,
        Self::ResetReceived,
        Self::Refused,
        Self::ConnectTimeout,
        Self::FinWait2Timeout,
        Self::Aborted,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::ResetSent => "reset_sent",
            Self::ResetReceived => "reset_received",
            Self::Refused => "refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::FinWait2Timeout => "fin_wait2_timeout",
            Self::Aborted => "aborted",
        }
    }
}

/// The teardown phases whose dwell the tracker measures, in the order tables show them.
pub const PHASES: [TcpState; 5] = [
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Closing,
    TcpState::CloseWait,
    TcpState::LastAck,
];

/// Index of a teardown phase in [`PHASES`].
pub fn phase_index(s: TcpState) -> Option<usize> {
    PHASES.iter().position(|p| *p == s)
}

/// Who a connection is: its addresses and owner, copied into every fact about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub sock: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub owner: Option<Owner>,
    pub side: Option<Side>,
    /// The socket's cgroup and network namespace, where known.
    pub ident: Ident,
}

/// A finished connection, as `watch --per connection` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub conn: Conn,
    /// When it opened (CLOSE->SYN_SENT or child creation); `None` if first seen mid-life.
    pub opened_ns: Option<u64>,
    pub closed_ns: u64,
    /// Handshake latency: client side SYN_SENT until ESTABLISHED; server side the SYN-ACK
    /// round trip. `None` when not observed.
    pub handshake_ns: Option<u64>,
    /// SYNs (client) or SYN-ACKs (server) retransmitted.
    pub retransmits: u32,
    /// Dwell of each of [`PHASES`] the connection went through.
    pub phases: [Option<u64>; 5],
    pub close: CloseKind,
    /// The socket handed over to a TIME_WAIT mini-socket.
    pub time_wait: bool,
    /// Bytes, retransmitted segments and the last smoothed RTT, read from the socket at its
    /// close; `None` when the kernel program could not read them.
    pub stats: Option<CloseStats>,
}

impl Connection {
    pub fn lifetime_ns(&self) -> Option<u64> {
        self.opened_ns.map(|o| self.closed_ns.saturating_sub(o))
    }
}

/// What the tracker concluded from one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    /// A state transition, with the time spent in the old state when it is known.
    Transition {
        ts_ns: u64,
        conn: Conn,
        old: TcpState,
        new: TcpState,
        dwell_ns: Option<u64>,
    },
    /// A handshake finished. `latency_ns` is `None` where it cannot be known (a server child
    /// whose SYN-ACK RTT the kernel program could not read).
    Handshake {
        ts_ns: u64,
        conn: Conn,
        side: Side,
        latency_ns: Option<u64>,
        retransmits: u32,
    },
    /// A teardown phase ended after `dwell_ns`.
    Phase {
        ts_ns: u64,
        conn: Conn,
        phase: TcpState,
        dwell_ns: u64,
    },
    /// The socket handed over to a TIME_WAIT mini-socket (no tracepoint reports its end).
    TimeWait { ts_ns: u64, conn: Conn },
    /// A connection ended.
    Closed(Connection),
    /// A SYN was retransmitted while connecting.
    SynRetransmit { ts_ns: u64, conn: Conn },
    /// A SYN-ACK was retransmitted by a listener.
    SynAckRetransmit { ts_ns: u64, conn: Conn },
    /// A RST was received or sent.
    Reset { ts_ns: u64, conn: Conn, sent: bool },
}

impl Fact {
    /// When it happened (event time).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Fact::Transition { ts_ns, .. }
            | Fact::Handshake { ts_ns, .. }
            | Fact::Phase { ts_ns, .. }
            | Fact::TimeWait { ts_ns, .. }
            | Fact::SynRetransmit { ts_ns, .. }
            | Fact::SynAckRetransmit { ts_ns, .. }
            | Fact::Reset { ts_ns, .. } => *ts_ns,
            Fact::Closed(c) => c.closed_ns,
        }
    }

    /// The connection it is about.
    pub fn conn(&self) -> &Conn {
        match self {
            Fact::Transition { conn, .. }
            | Fact::Handshake { conn, .. }
            | Fact::Phase { conn, .. }
            | Fact::TimeWait { conn, .. }
            | Fact::SynRetransmit { conn, .. }
            | Fact::SynAckRetransmit { conn, .. }
            | Fact::Reset { conn, .. } => conn,
            Fact::Closed(c) => &c.conn,
        }
    }
}

/// Counters about the stream itself: how complete and consistent it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackStats {
    /// Events consumed.
    pub events: u64,
    /// Sockets first seen mid-life (the tracer started after they opened).
    pub joined_mid_life: u64,
    /// Transitions whose old state differed from the state the tracker held (a missed event).
    pub gaps: u64,
    /// Events older than the socket's previous event (cross-CPU reordering the reorder stage
    /// did not absorb); their dwell is taken as zero.
    pub out_of_order: u64,
    /// Sockets dropped for idleness or to respect the memory bound.
    pub evicted: u64,
    /// A socket address started a new life while the old one was never seen closing.
    pub reused_unclosed: u64,
}

/// An optional time or duration in nanoseconds, in 8 bytes where `Option<u64>` takes 16:
/// `u64::MAX` stands for none. A tracked socket holds eight of them, so this saves 64 bytes
/// per socket. `u64::MAX` ns (584 years) cannot occur as a real value; a crafted recording
/// that carries it gets `u64::MAX - 1` instead of losing the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OptNs(u64);

impl OptNs {
    const NONE: OptNs = OptNs(u64::MAX);

    fn new(v: Option<u64>) -> Self {
        match v {
            Some(ns) => OptNs(ns.min(u64::MAX - 1)),
            None => Self::NONE,
        }
    }

    fn get(self) -> Option<u64> {
        (self != Self::NONE).then_some(self.0)
    }
}

/// A tracked socket. Kept small: the tracker holds one per open socket (162,000 in the
/// bench's mass close), so its size is most of the tool's memory.
#[derive(Clone, Copy, Debug)]
struct Sock {
    local: SocketAddr,
    remote: SocketAddr,
    /// The owner's id in the tracker's [`Interner`], or [`NO_OWNER`]. The table holds owners
    /// without their source, so that a socket's events, whose owners alternate between
    /// `current` (its system calls) and `cached` (softirq), name one entry in it.
    owner: u32,
    /// How the event that named the owner knew it.
    owner_source: OwnerSource,
    side: Option<Side>,
    state: TcpState,
    /// When the current state was entered; `None` if first seen mid-life in this state.
    since_ns: OptNs,
    last_ns: u64,
    opened_ns: OptNs,
    handshake_ns: OptNs,
    retransmits: u32,
    phases: [OptNs; 5],
    reset_received: bool,
    reset_sent: bool,
}

/// Tracker limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most sockets held at once; beyond it the least recently seen are evicted.
    pub max_sockets: usize,
    /// A socket with no event for this long is evicted on the next sweep.
    pub max_idle_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sockets: 262_144,
            max_idle_ns: 24 * 3600 * 1_000_000_000,
        }
    }
}

/// SYN-ACK retransmits seen for a connection whose child socket does not exist yet, keyed by
/// (local, remote); consumed when the child appears.
#[derive(Clone, Copy, Debug)]
struct PendingSynAck {
    count: u32,
    last_ns: u64,
}

/// How long (event time) a close without a FIN exchange or reset waits for a reset event of
/// the same socket: an abortive close (SO_LINGER 0, unread data) moves the socket to CLOSE
/// *before* it sends the RST, so `tcp:tcp_send_reset` comes just after the transition.
const PARK_NS: u64 = 1_000_000;

/// The state machine over all sockets.
#[derive(Debug, Default)]
pub struct Tracker {
    socks: Table<Sock>,
    /// The distinct owners the tracked sockets refer to (see `intern`).
    owners: Interner<Owner>,
    /// Closed connections waiting [`PARK_NS`] for a late reset event, oldest first.
    parked: VecDeque<(u64, Connection)>,
    pending_synack: FxHashMap<(SocketAddr, SocketAddr), PendingSynAck>,
    limits: Limits,
    stats: TrackStats,
    newest_ns: u64,
}

impl Tracker {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn stats(&self) -> TrackStats {
        self.stats
    }

    /// Sockets currently in `state`, with the time they entered it (if known) and their
    /// connection, for "who is stuck in CLOSE_WAIT" views.
    pub fn sockets_in(&self, state: TcpState) -> Vec<(Option<u64>, Conn)> {
        let mut v: Vec<_> = self
            .socks
            .iter()
            .filter(|(_, s)| s.state == state)
            .map(|(k, s)| (s.since_ns.get(), s.conn(k, &self.owners)))
            .collect();
        v.sort_by_key(|(since, c)| (since.unwrap_or(0), c.sock));
        v
    }

    /// How many tracked sockets are in each state now, indexed like [`TcpState::ALL`].
    pub fn state_counts(&self) -> [u64; 13] {
        let mut n = [0u64; 13];
        for s in self.socks.values() {
            n[usize::from(s.state as u8) - 1] += 1;
        }
        n
    }

    /// Newest event time seen.
    pub fn newest_ns(&self) -> u64 {
        self.newest_ns
    }

    /// Consumes one event and appends the facts it yields to `out`.
    pub fn process(&mut self, ev: &Event, out: &mut Vec<Fact>) {
        self.stats.events += 1;
        self.newest_ns = self.newest_ns.max(ev.ts_ns);
        while let Some((ts, _)) = self.parked.front()
            && ts.saturating_add(PARK_NS) < ev.ts_ns
        {
            if let Some((_, c)) = self.parked.pop_front() {
                out.push(Fact::Closed(c));
            }
        }
        match ev.kind {
            Kind::State { old, new } => self.transition(ev, old, new, out),
            Kind::SynRetransmit => {
                let s = self.sock_mut(ev, TcpState::SynSent);
                s.retransmits += 1;
                let s = *s;
                let conn = s.conn(ev.sock, &self.owners).with_ident(ev.ident);
                out.push(Fact::SynRetransmit {
                    ts_ns: ev.ts_ns,
                    conn,
                });
            }
            Kind::SynAckRetransmit => {
                let key = (ev.local, ev.remote);
                let p = self.pending_synack.entry(key).or_insert(PendingSynAck {
                    count: 0,
                    last_ns: ev.ts_ns,
                });
                p.count += 1;
                p.last_ns = ev.ts_ns;
                // The server side of a pending connection: it counts in its local port's
                // group, as the connection's other server-side facts do.
                out.push(Fact::SynAckRetransmit {
                    ts_ns: ev.ts_ns,
                    conn: conn_of(ev, Some(Side::Server)),
                });
            }
            // Not about a connection: the listener figures count it (`listeners`).
            Kind::ListenOverflow => {}
            Kind::ResetReceived | Kind::ResetSent { .. } => {
                let sent = matches!(ev.kind, Kind::ResetSent { .. });
                let parked = self
                    .parked
                    .iter_mut()
                    .find(|(_, c)| c.conn.sock == ev.sock)
                    .map(|(_, c)| c);
                let conn = match (self.socks.get_mut(&ev.sock), parked) {
                    (Some(s), _) => {
                        if sent {
                            s.reset_sent = true;
                        } else {
                            s.reset_received = true;
                        }
                        s.conn(ev.sock, &self.owners).with_ident(ev.ident)
                    }
                    (None, Some(c)) => {
                        c.close = if sent {
                            CloseKind::ResetSent
                        } else {
                            CloseKind::ResetReceived
                        };
                        c.conn
                    }
                    (None, None) => conn_of(ev, None),
                };
                out.push(Fact::Reset {
                    ts_ns: ev.ts_ns,
                    conn,
                    sent,
                });
            }
        }
    }

    /// The tracked socket for `ev`, created (as first seen mid-life in `state`) if unknown.
    fn sock_mut(&mut self, ev: &Event, state: TcpState) -> &mut Sock {
        let owner = self.owner_id(ev.owner);
        let stats = &mut self.stats;
        self.socks.get_or_insert_with(ev.sock, || {
            stats.joined_mid_life += 1;
            Sock::new(ev, owner, side_from_state(state), state, None, ev.ts_ns)
        })
    }

    /// The interned id of an event's owner (its source aside, see [`Sock::owner`]); first
    /// forgets owners no tracked socket refers to, when there are many of them.
    fn owner_id(&mut self, owner: Option<Owner>) -> u32 {
        let Some(o) = owner else {
            return NO_OWNER;
        };
        self.compact_owners();
        self.owners.id(sourceless(o))
    }

    /// Forgets owners no tracked socket refers to, when there are many of them.
    fn compact_owners(&mut self) {
        if self.owners.wants_compaction(self.socks.len()) {
            self.owners.compact(
                self.socks
                    .values_mut()
                    .map(|s| &mut s.owner)
                    .filter(|id| **id != NO_OWNER),
            );
        }
    }

    fn transition(&mut self, ev: &Event, old: TcpState, new: TcpState, out: &mut Vec<Fact>) {
        let ts = ev.ts_ns;
        let restart = matches!(
            (old, new),
            (TcpState::Close, TcpState::SynSent)
                | (TcpState::Close, TcpState::Listen)
                | (TcpState::Listen, TcpState::SynRecv)
        );
        if restart {
            let owner = self.owner_id(ev.owner);
            // A parked close of this address must come out before its successor's facts.
            while let Some(i) = self.parked.iter().position(|(_, c)| c.conn.sock == ev.sock) {
                if let Some((_, c)) = self.parked.remove(i) {
                    out.push(Fact::Closed(c));
                }
            }
            if self.socks.remove(&ev.sock).is_some() {
                self.stats.reused_unclosed += 1;
            }
            let side = match new {
                TcpState::SynSent => Some(Side::Client),
                TcpState::SynRecv => Some(Side::Server),
                _ => None,
            };
            let mut s = Sock::new(ev, owner, side, new, Some(ts), ts);
            if side.is_some() {
                s.opened_ns = OptNs::new(Some(ts));
            }
            if new == TcpState::SynRecv
                && let Some(p) = self.pending_synack.remove(&(ev.local, ev.remote))
            {
                s.retransmits = p.count;
            }
            out.push(Fact::Transition {
                ts_ns: ts,
                conn: s.conn(ev.sock, &self.owners).with_ident(ev.ident),
                old,
                new,
                dwell_ns: None,
            });
            self.socks.insert(ev.sock, s);
            self.maybe_sweep(ts);
            return;
        }

        if ev.owner.is_some() {
            self.compact_owners();
        }
        let stats = &mut self.stats;
        let s = self.socks.get_or_insert_with(ev.sock, || {
            stats.joined_mid_life += 1;
            Sock::new(ev, NO_OWNER, side_from_state(old), old, None, ts)
        });
        // Keep the newest addresses and owner: a client's local port is 0 at CLOSE->SYN_SENT
        // (connect() sets the state before it picks the port). Most events name the process
        // the socket already has: no need to intern it again.
        s.local = ev.local;
        s.remote = ev.remote;
        if let Some(o) = ev.owner {
            let (source, o) = (o.source, sourceless(o));
            if s.owner == NO_OWNER || self.owners.get(s.owner) != o {
                s.owner = self.owners.id(o);
            }
            s.owner_source = source;
        }
        let conn = s.conn(ev.sock, &self.owners).with_ident(ev.ident);
        let consistent = s.state == old;
        if !consistent {
            stats.gaps += 1;
        }
        // The kernel reports some transitions to the state a socket is already in (closing a
        // socket after shutdown(SHUT_WR) gives FIN_WAIT1 -> FIN_WAIT1). Such a repeat is
        // passed on as the kernel sent it, but it does not end the socket's time in that
        // state: the phase is timed once, from entering the state to leaving it.
        let repeat = consistent && old == new;
        let dwell = match s.since_ns.get() {
            Some(since) if ts >= since => Some(ts - since),
            Some(_) => {
                stats.out_of_order += 1;
                Some(0)
            }
            None => None,
        };
        s.last_ns = s.last_ns.max(ts);
        out.push(Fact::Transition {
            ts_ns: ts,
            conn,
            old,
            new,
            dwell_ns: if consistent { dwell } else { None },
        });

        if consistent
            && !repeat
            && let Some(d) = dwell
            && let Some(i) = phase_index(old)
        {
            s.phases[i] = OptNs::new(Some(d));
            out.push(Fact::Phase {
                ts_ns: ts,
                conn,
                phase: old,
                dwell_ns: d,
            });
        }

        // Handshakes.
        if new == TcpState::Established {
            let handshake = match (s.side, old) {
                (Some(Side::Client), TcpState::SynSent | TcpState::SynRecv) => Some((
                    Side::Client,
                    s.opened_ns.get().map(|o| ts.saturating_sub(o)),
                )),
                (Some(Side::Server), TcpState::SynRecv) => Some((
                    Side::Server,
                    ev.srtt_us.filter(|&r| r > 0).map(|r| u64::from(r) * 1000),
                )),
                _ => None,
            };
            if let Some((side, latency)) = handshake {
                s.handshake_ns = OptNs::new(latency);
                out.push(Fact::Handshake {
                    ts_ns: ts,
                    conn,
                    side,
                    latency_ns: latency,
                    retransmits: s.retransmits,
                });
            }
        }

        s.state = new;
        if !repeat {
            s.since_ns = OptNs::new(Some(ts));
        }

        if new == TcpState::Close {
            let s = *s;
            self.socks.remove(&ev.sock);
            if old == TcpState::Listen {
                return;
            }
            let time_wait = !s.reset_received
                && !s.reset_sent
                && matches!(
                    old,
                    TcpState::FinWait2 | TcpState::Closing | TcpState::TimeWait
                );
            if time_wait {
                out.push(Fact::TimeWait { ts_ns: ts, conn });
            }
            let close = classify_close(&s, old);
            let c = Connection {
                conn,
                opened_ns: s.opened_ns.get(),
                closed_ns: ts,
                handshake_ns: s.handshake_ns.get(),
                retransmits: s.retransmits,
                phases: s.phases.map(OptNs::get),
                close,
                time_wait,
                stats: ev
                    .close
                    .map(|c| payload(c, s.side, old, &s.phases.map(OptNs::get), close, time_wait)),
            };
            if close == CloseKind::Aborted {
                self.parked.push_back((ts, c));
            } else {
                out.push(Fact::Closed(c));
            }
        }
    }

    /// Evicts idle sockets, and the least recently seen ones beyond the size bound.
    fn maybe_sweep(&mut self, now_ns: u64) {
        if self.socks.len() <= self.limits.max_sockets {
            return;
        }
        self.sweep(now_ns);
        if self.socks.len() > self.limits.max_sockets {
            // Drop the oldest tenth (by last event) to make room for a while.
            // Listeners last: they are the oldest sockets but few, and children need them.
            let mut ages: Vec<(bool, u64, u64)> = self
                .socks
                .iter()
                .map(|(k, s)| (s.state == TcpState::Listen, s.last_ns, k))
                .collect();
            ages.sort_unstable();
            let n = self.socks.len() / 10 + 1;
            for (_, _, k) in ages.into_iter().take(n) {
                self.socks.remove(&k);
                self.stats.evicted += 1;
            }
        }
    }

    /// Releases closes still waiting for a possible reset. Only at the end of the input: a
    /// live quiet tick must not release them, or replay would differ from the live run.
    pub fn flush(&mut self, out: &mut Vec<Fact>) {
        out.extend(self.parked.drain(..).map(|(_, c)| Fact::Closed(c)));
    }

    /// Evicts sockets (other than listeners) idle for longer than the limit, and SYN-ACK
    /// retransmit records older than a minute. Call now and then with the newest event time.
    pub fn sweep(&mut self, now_ns: u64) {
        let max_idle = self.limits.max_idle_ns;
        let before = self.socks.len();
        // Listeners, open connections and sockets waiting in CLOSE_WAIT emit nothing while
        // they sit, however long: only the size bound may evict them (a CLOSE_WAIT leak is
        // exactly what must not age out).
        self.socks.retain(|s| {
            matches!(
                s.state,
                TcpState::Listen | TcpState::Established | TcpState::CloseWait
            ) || now_ns.saturating_sub(s.last_ns) <= max_idle
        });
        self.stats.evicted += (before - self.socks.len()) as u64;
        self.pending_synack
            .retain(|_, p| now_ns.saturating_sub(p.last_ns) <= 60_000_000_000);
    }
}

/// A tracked socket without an owner.
const NO_OWNER: u32 = u32::MAX;

/// An owner as the tracker's table holds it: the source is kept per socket.
fn sourceless(o: Owner) -> Owner {
    Owner {
        source: OwnerSource::Cached,
        ..o
    }
}

impl Sock {
    /// A socket as event `ev` shows it, its owner already interned as `owner`.
    fn new(
        ev: &Event,
        owner: u32,
        side: Option<Side>,
        state: TcpState,
        since_ns: Option<u64>,
        ts: u64,
    ) -> Self {
        Self {
            local: ev.local,
            remote: ev.remote,
            owner,
            owner_source: ev.owner.map_or(OwnerSource::Cached, |o| o.source),
            side,
            state,
            since_ns: OptNs::new(since_ns),
            last_ns: ts,
            opened_ns: OptNs::NONE,
            handshake_ns: OptNs::NONE,
            retransmits: 0,
            phases: [OptNs::NONE; 5],
            reset_received: false,
            reset_sent: false,
        }
    }

    /// The connection as facts name it.
    fn conn(&self, sock: u64, owners: &Interner<Owner>) -> Conn {
        Conn {
            sock,
            local: self.local,
            remote: self.remote,
            owner: (self.owner != NO_OWNER).then(|| Owner {
                source: self.owner_source,
                ..owners.get(self.owner)
            }),
            side: self.side,
            ident: Ident::default(),
        }
    }
}

impl Conn {
    /// This connection with the identity its latest event carries. The tracker does not
    /// keep identities (a tracked socket stays small): `owners` fills every event of a
    /// socket with the identity read at its first event.
    fn with_ident(self, ident: Ident) -> Self {
        Self { ident, ..self }
    }
}

fn side_from_state(s: TcpState) -> Option<Side> {
    match s {
        TcpState::SynSent => Some(Side::Client),
        TcpState::SynRecv => Some(Side::Server),
        _ => None,
    }
}

fn conn_of(ev: &Event, side: Option<Side>) -> Conn {
    Conn {
        sock: ev.sock,
        local: ev.local,
        remote: ev.remote,
        owner: ev.owner,
        side,
        ident: ev.ident,
    }
}

/// The socket's counters count sequence space, where a SYN and a FIN take one number each:
/// a client's `bytes_acked` includes its SYN (acked by the SYN-ACK; a server child starts
/// after it), and either side counts its FIN in `bytes_acked` once the peer acked it, and
/// the peer's FIN in `bytes_received`. The socket's path through the teardown states says
/// which of these happened, so the payload bytes are exact: what the application wrote and
/// read.
fn payload(
    c: CloseStats,
    side: Option<Side>,
    old: TcpState,
    phases: &[Option<u64>; 5],
    close: CloseKind,
    time_wait: bool,
) -> CloseStats {
    let went = |p: TcpState| {
        PHASES
            .iter()
            .position(|&q| q == p)
            .is_some_and(|i| phases[i].is_some())
    };
    let fin = close == CloseKind::Fin;
    let syn_acked = side == Some(Side::Client) && old != TcpState::SynSent;
    // FIN_WAIT1 -> FIN_WAIT2 and CLOSING -> TIME_WAIT are the ACK of our FIN; so is
    // LAST_ACK -> CLOSE when it closed cleanly.
    let our_fin_acked = went(TcpState::FinWait2)
        || (went(TcpState::Closing) && time_wait)
        || (old == TcpState::LastAck && fin);
    // ESTABLISHED -> CLOSE_WAIT and FIN_WAIT1 -> CLOSING are the peer's FIN arriving; so is
    // FIN_WAIT2 -> TIME_WAIT.
    let peer_fin = went(TcpState::CloseWait)
        || went(TcpState::Closing)
        || (old == TcpState::FinWait2 && time_wait);
    CloseStats {
        bytes_acked: c
            .bytes_acked
            .saturating_sub(u64::from(syn_acked) + u64::from(our_fin_acked)),
        bytes_received: c.bytes_received.saturating_sub(u64::from(peer_fin)),
        ..c
    }
}

fn classify_close(s: &Sock, old: TcpState) -> CloseKind {
    match old {
        TcpState::SynSent if s.reset_received => CloseKind::Refused,
        TcpState::SynSent => CloseKind::ConnectTimeout,
        _ if s.reset_received => CloseKind::ResetReceived,
        TcpState::FinWait2 if s.reset_sent => CloseKind::FinWait2Timeout,
        _ if s.reset_sent => CloseKind::ResetSent,
        TcpState::FinWait2 | TcpState::Closing | TcpState::TimeWait | TcpState::LastAck => {
            CloseKind::Fin
        }
        _ => CloseKind::Aborted,
    }
}

#[cfg(test)]
mod tests;
