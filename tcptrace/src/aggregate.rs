//! Facts to distributions: HDR histograms and counters, overall and by group.
//!
//! Values are recorded in microseconds. The overall histograms keep 3 significant digits; the
//! per-group ones keep 2 (1% resolution) so that hundreds of groups stay within a few MiB.
//! Groups are capped per dimension; what does not fit is counted under "other". Each fact is
//! read once (an `Update`) and added to the four places it counts in: overall, its port,
//! its process and its cgroup (the test `aggregate_adds_facts_as_the_plain_version_did` holds
//! this to matching the fact again for each).
//!
//! One dimension is the socket's cgroup id, unnamed: naming cgroups (and merging those of one
//! workload) is the summary's business, so the aggregates stay a pure function of the events.

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{
    decode::{Comm, TcpState},
    listeners::{Listeners, Sample},
    track::{CloseKind, Fact, PHASES, Side, phase_index},
};

/// Largest value a histogram holds: one day, in microseconds. Larger values are clamped.
const MAX_US: u64 = 86_400_000_000;
/// Most groups kept per dimension before the rest go to "other".
pub const MAX_GROUPS: usize = 1024;

/// A lazily allocated latency histogram in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Hist {
    h: Option<Box<Histogram<u64>>>,
    sigfig: u8,
    /// Exact sum of the recorded values in nanoseconds (before clamping), for exports that
    /// carry a sum (Prometheus `_sum`).
    sum_ns: u128,
}

/// A value in nanoseconds as the histograms hold it: microseconds, clamped to [`MAX_US`].
fn to_us(ns: u64) -> u64 {
    (ns / 1000).min(MAX_US)
}

/// Quantiles of a histogram in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Hist {
    /// An empty histogram keeping `sigfig` significant digits.
    pub fn with_sigfig(sigfig: u8) -> Self {
        Self {
            h: None,
            sigfig,
            sum_ns: 0,
        }
    }

    /// Exact sum of the recorded values, in nanoseconds.
    pub fn sum_ns(&self) -> u128 {
        self.sum_ns
    }

    /// The recorded distribution, for charts (`None` until a value is recorded).
    pub fn histogram(&self) -> Option<&Histogram<u64>> {
        self.h.as_deref().filter(|h| !h.is_empty())
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.record(ns, to_us(ns));
    }

    /// [`Hist::record_ns`] with the value in microseconds already worked out ([`to_us`]), for
    /// a value recorded into several histograms.
    fn record(&mut self, ns: u64, us: u64) {
        self.sum_ns += u128::from(ns);
        let sigfig = self.sigfig.max(1);
        let h = self.h.get_or_insert_with(|| {
            Box::new(
                Histogram::new_with_bounds(1, MAX_US, sigfig)
                    .unwrap_or_else(|_| unreachable!("bounds are valid constants")),
            )
        });
        h.saturating_record(us);
    }

    pub fn count(&self) -> u64 {
        self.h.as_ref().map_or(0, |h| h.len())
    }

    /// Empties the histogram, keeping its allocation (for rotating windows).
    pub fn clear(&mut self) {
        if let Some(h) = &mut self.h {
            h.reset();
        }
    }

    /// Adds every value of `other` (same bounds; values beyond them are clamped).
    pub fn merge(&mut self, other: &Hist) {
        let Some(o) = other.histogram() else { return };
        let sigfig = self.sigfig.max(1);
        let h = self.h.get_or_insert_with(|| {
            Box::new(
                Histogram::new_with_bounds(1, MAX_US, sigfig)
                    .unwrap_or_else(|_| unreachable!("bounds are valid constants")),
            )
        });
        for v in o.iter_recorded() {
            let _ = h.record_n(v.value_iterated_to().min(MAX_US), v.count_at_value());
        }
    }

    pub fn quantiles(&self) -> Option<Quantiles> {
        let h = self.h.as_ref().filter(|h| !h.is_empty())?;
        Some(Quantiles {
            count: h.len(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
        })
    }
}

/// Everything measured about one group of connections.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Handshake latency: index 0 client, 1 server.
    pub handshake: [Hist; 2],
    /// Handshakes whose latency could not be known (server side without the SYN-ACK RTT).
    pub handshake_unmeasured: [u64; 2],
    /// Dwell per teardown phase, indexed like [`PHASES`].
    pub phases: [Hist; 5],
    /// Finished connections per [`CloseKind`] (indexed like `CloseKind::ALL`).
    pub closes: [u64; 7],
    /// Connection lifetimes (opened to closed).
    pub lifetime: Hist,
    pub syn_retransmits: u64,
    pub synack_retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub time_wait_entries: u64,
    /// Payload bytes sent and received by the finished connections whose counters the
    /// kernel read at close, and how many those were.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_measured: u64,
}

impl Stats {
    fn new(sigfig: u8) -> Self {
        let h = || Hist::with_sigfig(sigfig);
        Self {
            handshake: [h(), h()],
            handshake_unmeasured: [0; 2],
            phases: [h(), h(), h(), h(), h()],
            closes: [0; 7],
            lifetime: h(),
            syn_retransmits: 0,
            synack_retransmits: 0,
            resets_sent: 0,
            resets_received: 0,
            time_wait_entries: 0,
            bytes_sent: 0,
            bytes_received: 0,
            bytes_measured: 0,
        }
    }

    /// An empty group keeping `sigfig` significant digits (for merged groups).
    pub fn empty(sigfig: u8) -> Self {
        Self::new(sigfig)
    }

    /// Adds another group's figures (one workload's cgroups into one group).
    pub fn merge(&mut self, o: &Stats) {
        for (a, b) in self.handshake.iter_mut().zip(&o.handshake) {
            a.merge(b);
        }
        for (a, b) in self.phases.iter_mut().zip(&o.phases) {
            a.merge(b);
        }
        self.lifetime.merge(&o.lifetime);
        for (a, b) in self
            .handshake_unmeasured
            .iter_mut()
            .zip(o.handshake_unmeasured)
        {
            *a += b;
        }
        for (a, b) in self.closes.iter_mut().zip(o.closes) {
            *a += b;
        }
        self.syn_retransmits += o.syn_retransmits;
        self.synack_retransmits += o.synack_retransmits;
        self.resets_sent += o.resets_sent;
        self.resets_received += o.resets_received;
        self.time_wait_entries += o.time_wait_entries;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.bytes_measured += o.bytes_measured;
    }

    pub fn connections(&self) -> u64 {
        self.closes.iter().sum()
    }

    /// Adds one fact's figures, worked out once for all the groups it counts in.
    fn apply(&mut self, u: &Update) {
        match *u {
            Update::Handshake { side, ns, us } => self.handshake[side].record(ns, us),
            Update::Unmeasured { side } => self.handshake_unmeasured[side] += 1,
            Update::Phase { i, ns, us } => self.phases[i].record(ns, us),
            Update::Closed {
                close,
                lifetime,
                bytes,
            } => {
                self.closes[close] += 1;
                if let Some((ns, us)) = lifetime {
                    self.lifetime.record(ns, us);
                }
                if let Some((sent, received)) = bytes {
                    self.bytes_sent += sent;
                    self.bytes_received += received;
                    self.bytes_measured += 1;
                }
            }
            Update::TimeWait => self.time_wait_entries += 1,
            Update::SynRetransmit => self.syn_retransmits += 1,
            Update::SynAckRetransmit => self.synack_retransmits += 1,
            Update::ResetSent => self.resets_sent += 1,
            Update::ResetReceived => self.resets_received += 1,
            Update::None => {}
        }
    }
}

/// What one fact adds to each group it counts in ([`Stats::apply`]): the fact read once,
/// values in both nanoseconds (the exact sums) and microseconds (the histograms).
#[derive(Clone, Copy, Debug)]
enum Update {
    Handshake {
        side: usize,
        ns: u64,
        us: u64,
    },
    Unmeasured {
        side: usize,
    },
    Phase {
        i: usize,
        ns: u64,
        us: u64,
    },
    Closed {
        close: usize,
        lifetime: Option<(u64, u64)>,
        /// Payload bytes sent and received.
        bytes: Option<(u64, u64)>,
    },
    TimeWait,
    SynRetransmit,
    SynAckRetransmit,
    ResetSent,
    ResetReceived,
    None,
}

impl Update {
    fn of(fact: &Fact) -> Self {
        match fact {
            Fact::Handshake {
                side, latency_ns, ..
            } => {
                let side = side_index(*side);
                match latency_ns {
                    Some(ns) => Update::Handshake {
                        side,
                        ns: *ns,
                        us: to_us(*ns),
                    },
                    None => Update::Unmeasured { side },
                }
            }
            Fact::Phase {
                phase, dwell_ns, ..
            } => match phase_index(*phase) {
                Some(i) => Update::Phase {
                    i,
                    ns: *dwell_ns,
                    us: to_us(*dwell_ns),
                },
                None => Update::None,
            },
            Fact::Closed(c) => Update::Closed {
                close: close_index(c.close),
                lifetime: c.lifetime_ns().map(|ns| (ns, to_us(ns))),
                bytes: c.stats.map(|st| (st.bytes_acked, st.bytes_received)),
            },
            Fact::TimeWait { .. } => Update::TimeWait,
            Fact::SynRetransmit { .. } => Update::SynRetransmit,
            Fact::SynAckRetransmit { .. } => Update::SynAckRetransmit,
            Fact::Reset { sent: true, .. } => Update::ResetSent,
            Fact::Reset { sent: false, .. } => Update::ResetReceived,
            Fact::Transition { .. } => Update::None,
        }
    }
}

pub const fn side_index(s: Side) -> usize {
    match s {
        Side::Client => 0,
        Side::Server => 1,
    }
}

pub fn close_index(k: CloseKind) -> usize {
    CloseKind::ALL.iter().position(|c| *c == k).unwrap_or(0)
}

/// A group key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum GroupKey {
    Port(u16),
    Process(Comm),
    /// A peer's address (the dashboard's fourth dimension).
    Addr(std::net::IpAddr),
    /// A socket's cgroup id (0: unknown), named by the summary.
    Cgroup(u64),
    /// Everything beyond [`MAX_GROUPS`].
    Other,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Port(p) => write!(f, "{p}"),
            Self::Process(p) if p.0[0] == 0 => f.write_str("?"),
            Self::Process(p) => f.write_str(&p.as_str()),
            Self::Addr(a) => write!(f, "{a}"),
            Self::Cgroup(0) => f.write_str("?"),
            Self::Cgroup(id) => write!(f, "cgroup {id}"),
            Self::Other => f.write_str("(other)"),
        }
    }
}

/// One grouping dimension with its cap.
///
/// Looked up for every fact (three times: a port dimension, the process and the cgroup), so
/// the hot path does not hash: a port key finds its group through a 64 Ki-entry index, and a
/// process or cgroup key through a small direct-mapped cache of recent keys (a churning
/// host's facts mostly come from a few processes, interleaved); other keys, and misses, go
/// through the hash index. The test `groups_match_a_plain_hash_map` holds this to the plain
/// `HashMap<GroupKey, Stats>` it replaces.
#[derive(Clone, Debug, Default)]
pub struct Groups {
    /// Each group's figures, in the order its key first appeared.
    stats: Vec<Stats>,
    /// Keys in the order they first appeared (`order[i]` is the key of `stats[i]`): a stable
    /// choice of "the first N" for exports whose series must not come and go
    /// (`serve --group-processes`).
    pub order: Vec<GroupKey>,
    index: FxHashMap<GroupKey, u32>,
    /// Per port: 1 + the index of its group, 0 for none yet (allocated at the first port).
    by_port: Vec<u32>,
    /// Recent processes, each at a slot picked by a hash of its name, with 1 + the index of
    /// its group (0: empty slot).
    processes: [(Comm, u32); CACHE_SLOTS],
    /// Recent cgroups, as `processes`.
    cgroups: [(u64, u32); CACHE_SLOTS],
}

/// Slots in the caches of recent processes and cgroups.
const CACHE_SLOTS: usize = 16;

/// A process name's slot in [`Groups::processes`].
fn comm_slot(c: &Comm) -> usize {
    let (a, b) = c.0.split_at(8);
    let a = u64::from_le_bytes(a.try_into().unwrap_or_default());
    let b = u64::from_le_bytes(b.try_into().unwrap_or_default());
    id_slot(a ^ b.rotate_left(29))
}

/// A cgroup id's slot in [`Groups::cgroups`] (and the last step of [`comm_slot`]).
fn id_slot(v: u64) -> usize {
    (v.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % CACHE_SLOTS
}

impl Groups {
    /// The group of a key of any kind (the fast paths by kind, else the hash index).
    #[cfg(test)]
    fn get(&mut self, key: GroupKey) -> &mut Stats {
        match key {
            GroupKey::Port(p) => self.port(p),
            GroupKey::Process(c) => self.process(&c),
            GroupKey::Cgroup(id) => self.cgroup(id),
            key => {
                let i = self.slow_index(key);
                &mut self.stats[i as usize]
            }
        }
    }

    /// The group of a port.
    fn port(&mut self, p: u16) -> &mut Stats {
        let i = match self.by_port.get(usize::from(p)) {
            Some(&n) if n > 0 => n - 1,
            _ => {
                let i = self.slow_index(GroupKey::Port(p));
                if self.order[i as usize] == GroupKey::Port(p) {
                    if self.by_port.is_empty() {
                        self.by_port = vec![0; 1 << 16];
                    }
                    self.by_port[usize::from(p)] = i + 1;
                }
                i
            }
        };
        &mut self.stats[i as usize]
    }

    /// The group of a process name.
    fn process(&mut self, c: &Comm) -> &mut Stats {
        let slot = comm_slot(c);
        let i = match self.processes[slot] {
            (k, n) if n > 0 && k == *c => n - 1,
            _ => {
                let i = self.slow_index(GroupKey::Process(*c));
                if matches!(&self.order[i as usize], GroupKey::Process(k) if k == c) {
                    self.processes[slot] = (*c, i + 1);
                }
                i
            }
        };
        &mut self.stats[i as usize]
    }

    /// The group of a cgroup id.
    fn cgroup(&mut self, id: u64) -> &mut Stats {
        let slot = id_slot(id);
        let i = match self.cgroups[slot] {
            (k, n) if n > 0 && k == id => n - 1,
            _ => {
                let i = self.slow_index(GroupKey::Cgroup(id));
                if self.order[i as usize] == GroupKey::Cgroup(id) {
                    self.cgroups[slot] = (id, i + 1);
                }
                i
            }
        };
        &mut self.stats[i as usize]
    }

    /// The index of `key`'s group through the hash index, creating the group (or, beyond
    /// [`MAX_GROUPS`], "other") if it is new.
    fn slow_index(&mut self, key: GroupKey) -> u32 {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let key = if self.stats.len() >= MAX_GROUPS {
            GroupKey::Other
        } else {
            key
        };
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let i = u32::try_from(self.stats.len()).unwrap_or(u32::MAX);
        self.index.insert(key.clone(), i);
        self.order.push(key);
        self.stats.push(Stats::new(2));
        i
    }

    /// The figures of one group.
    pub fn find(&self, key: &GroupKey) -> Option<&Stats> {
        self.index.get(key).map(|&i| &self.stats[i as usize])
    }

    /// Every group, in the order its key first appeared.
    pub fn iter(&self) -> impl Iterator<Item = (&GroupKey, &Stats)> {
        self.order.iter().zip(&self.stats)
    }

    pub fn len(&self) -> usize {
        self.stats.len()
    }

    /// Groups sorted by connection count (then key), largest first.
    pub fn sorted(&self) -> Vec<(&GroupKey, &Stats)> {
        let mut v: Vec<_> = self.iter().collect();
        v.sort_by(|a, b| {
            let ca = a.1.connections() + a.1.handshake[0].count() + a.1.handshake[1].count();
            let cb = b.1.connections() + b.1.handshake[0].count() + b.1.handshake[1].count();
            cb.cmp(&ca).then_with(|| a.0.cmp(b.0))
        });
        v
    }
}

/// Transition counts and dwell in the old state, per (old, new) edge of the state machine.
#[derive(Clone, Debug, Default)]
pub struct Edge {
    pub count: u64,
    pub dwell: Hist,
}

/// Transitions per (old, new) edge, read as a map of the edges seen. Every transition looks
/// its edge up, so by the two state numbers in a 13 x 13 table rather than by hashing.
///
/// The dwell histograms are kept only when asked ([`Aggregate::keep_edge_dwells`]): only the
/// state-machine chart shows them, and recording one more value per transition was about a
/// seventh of `watch --per none`'s CPU (perf, under the bench's churn). Without them an
/// edge's `dwell` stays empty; the counts are always kept.
#[derive(Clone, Debug)]
pub struct Edges {
    /// The edges seen, in the order first seen.
    seen: Vec<((TcpState, TcpState), Edge)>,
    /// Per (old, new): 1 + the edge's index in `seen`, 0 for not seen.
    slot: [u8; STATES * STATES],
    /// Whether dwells are recorded.
    dwells: bool,
}

/// The kernel's TCP states ([`TcpState::ALL`]).
const STATES: usize = TcpState::ALL.len();

impl Default for Edges {
    fn default() -> Self {
        Self {
            seen: Vec::new(),
            slot: [0; STATES * STATES],
            dwells: false,
        }
    }
}

impl Edges {
    fn index(old: TcpState, new: TcpState) -> usize {
        // State numbers run from 1 to STATES.
        (usize::from(old as u8) - 1) * STATES + usize::from(new as u8) - 1
    }

    /// The figures of an edge, created empty if it was not seen yet.
    fn entry(&mut self, old: TcpState, new: TcpState) -> &mut Edge {
        let i = Self::index(old, new);
        let n = match self.slot[i] {
            0 => {
                self.seen.push((
                    (old, new),
                    Edge {
                        count: 0,
                        dwell: Hist::with_sigfig(2),
                    },
                ));
                // At most STATES * STATES = 169 edges: the index fits.
                self.slot[i] = self.seen.len() as u8;
                self.seen.len()
            }
            n => usize::from(n),
        };
        &mut self.seen[n - 1].1
    }

    pub fn get(&self, key: &(TcpState, TcpState)) -> Option<&Edge> {
        match self.slot[Self::index(key.0, key.1)] {
            0 => None,
            n => Some(&self.seen[usize::from(n) - 1].1),
        }
    }

    pub fn contains_key(&self, key: &(TcpState, TcpState)) -> bool {
        self.get(key).is_some()
    }

    /// Every edge seen, in the order first seen.
    pub fn iter(&self) -> impl Iterator<Item = (&(TcpState, TcpState), &Edge)> {
        self.seen.iter().map(|(k, e)| (k, e))
    }

    pub fn keys(&self) -> impl Iterator<Item = &(TcpState, TcpState)> {
        self.seen.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &Edge> {
        self.seen.iter().map(|(_, e)| e)
    }
}

/// All aggregates of a run.
#[derive(Clone, Debug)]
pub struct Aggregate {
    pub overall: Stats,
    /// Client-side connections by remote port: the services this host calls.
    pub by_remote_port: Groups,
    /// Server-side connections by local port: the services this host offers.
    pub by_local_port: Groups,
    /// By owning process name (an empty name, shown as "?", when the owner is unknown).
    pub by_process: Groups,
    /// By the socket's cgroup id (0 when unknown); the summary names and merges them into
    /// workloads.
    pub by_cgroup: Groups,
    pub transitions: u64,
    pub edges: Edges,
    /// Listeners and TIME_WAIT from socket-table samples, with the SYN-ACK retransmits and
    /// overflow drops matched to them.
    pub listeners: Listeners,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            overall: Stats::new(3),
            by_remote_port: Groups::default(),
            by_local_port: Groups::default(),
            by_process: Groups::default(),
            by_cgroup: Groups::default(),
            transitions: 0,
            edges: Edges::default(),
            listeners: Listeners::default(),
        }
    }
}

impl Aggregate {
    /// Takes a socket-table sample in (see `listeners`).
    pub fn add_sample(&mut self, s: &Sample) {
        self.listeners.add_sample(s);
    }

    /// Records each transition's dwell in its edge's histogram from now on (for the
    /// state-machine chart; see [`Edges`]).
    pub fn keep_edge_dwells(&mut self) {
        self.edges.dwells = true;
    }

    pub fn add(&mut self, fact: &Fact) {
        if let Fact::Transition {
            old,
            new,
            dwell_ns,
            conn,
            ..
        } = fact
        {
            let key = |netns: u32| crate::listeners::ListenerKey {
                netns: u64::from(netns),
                local: conn.local,
            };
            match (old, new) {
                (TcpState::Close, TcpState::Listen) => {
                    if let (Some(o), Some(netns)) = (conn.owner, conn.ident.netns) {
                        let comm = o.comm.as_str().into_owned();
                        self.listeners.started(key(netns), o.tgid, comm);
                    }
                }
                (TcpState::Listen, TcpState::Close) => {
                    if let Some(netns) = conn.ident.netns {
                        self.listeners.stopped(&key(netns));
                    }
                }
                _ => {}
            }
            self.transitions += 1;
            let dwells = self.edges.dwells;
            let e = self.edges.entry(*old, *new);
            e.count += 1;
            if let Some(d) = dwell_ns
                && dwells
            {
                e.dwell.record_ns(*d);
            }
            return;
        }
        if let Fact::SynAckRetransmit { conn, .. } = fact {
            self.listeners.synack_retransmit(&conn.local);
        }
        let u = Update::of(fact);
        self.overall.apply(&u);
        let conn = fact.conn();
        match conn.side {
            Some(Side::Client) => self.by_remote_port.port(conn.remote.port()).apply(&u),
            Some(Side::Server) => self.by_local_port.port(conn.local.port()).apply(&u),
            None => {}
        }
        let process = match &conn.owner {
            Some(o) => self.by_process.process(&o.comm),
            None => self.by_process.process(&Comm::default()),
        };
        process.apply(&u);
        self.by_cgroup
            .cgroup(conn.ident.cgroup.unwrap_or(0))
            .apply(&u);
    }

    /// Whether any fact came with its socket's cgroup (else there are no workloads to show).
    pub fn has_cgroups(&self) -> bool {
        self.by_cgroup
            .order
            .iter()
            .any(|k| !matches!(k, GroupKey::Cgroup(0)))
    }
}

/// Names of the rows of a summary table, in order: two handshake sides, then [`PHASES`].
pub fn row_names() -> [&'static str; 7] {
    let mut names = ["handshake client", "handshake server", "", "", "", "", ""];
    for (i, p) in PHASES.iter().enumerate() {
        names[2 + i] = p.name();
    }
    names
}

/// The histograms behind [`row_names`], in the same order.
pub fn rows(s: &Stats) -> [&Hist; 7] {
    [
        &s.handshake[0],
        &s.handshake[1],
        &s.phases[0],
        &s.phases[1],
        &s.phases[2],
        &s.phases[3],
        &s.phases[4],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain version `Groups` replaces: a hash map, capped as `Groups::get` caps.
    #[derive(Default)]
    struct PlainGroups {
        map: FxHashMap<GroupKey, Stats>,
        order: Vec<GroupKey>,
    }

    impl PlainGroups {
        fn get(&mut self, key: GroupKey) -> &mut Stats {
            let key = if self.map.len() >= MAX_GROUPS && !self.map.contains_key(&key) {
                GroupKey::Other
            } else {
                key
            };
            let order = &mut self.order;
            self.map.entry(key).or_insert_with_key(|k| {
                order.push(k.clone());
                Stats::new(2)
            })
        }
    }

    /// The plain `Stats::add` that [`Update`] replaced: the fact matched again for every
    /// group it counts in.
    fn plain_stats_add(s: &mut Stats, fact: &Fact) {
        match fact {
            Fact::Handshake {
                side, latency_ns, ..
            } => {
                let i = side_index(*side);
                match latency_ns {
                    Some(ns) => s.handshake[i].record_ns(*ns),
                    None => s.handshake_unmeasured[i] += 1,
                }
            }
            Fact::Phase {
                phase, dwell_ns, ..
            } => {
                if let Some(i) = phase_index(*phase) {
                    s.phases[i].record_ns(*dwell_ns);
                }
            }
            Fact::Closed(c) => {
                s.closes[close_index(c.close)] += 1;
                if let Some(l) = c.lifetime_ns() {
                    s.lifetime.record_ns(l);
                }
                if let Some(st) = c.stats {
                    s.bytes_sent += st.bytes_acked;
                    s.bytes_received += st.bytes_received;
                    s.bytes_measured += 1;
                }
            }
            Fact::TimeWait { .. } => s.time_wait_entries += 1,
            Fact::SynRetransmit { .. } => s.syn_retransmits += 1,
            Fact::SynAckRetransmit { .. } => s.synack_retransmits += 1,
            Fact::Reset { sent: true, .. } => s.resets_sent += 1,
            Fact::Reset { sent: false, .. } => s.resets_received += 1,
            Fact::Transition { .. } => {}
        }
    }

    /// The plain `Aggregate::add`: plain groups, each fact matched per group.
    fn plain_add(
        overall: &mut Stats,
        dims: &mut [PlainGroups; 4],
        edges: &mut FxHashMap<(TcpState, TcpState), Edge>,
        fact: &Fact,
    ) {
        if let Fact::Transition {
            old, new, dwell_ns, ..
        } = fact
        {
            let e = edges.entry((*old, *new)).or_insert_with(|| Edge {
                count: 0,
                dwell: Hist::with_sigfig(2),
            });
            e.count += 1;
            if let Some(d) = dwell_ns {
                e.dwell.record_ns(*d);
            }
            return;
        }
        plain_stats_add(overall, fact);
        let conn = fact.conn();
        match conn.side {
            Some(Side::Client) => {
                plain_stats_add(dims[0].get(GroupKey::Port(conn.remote.port())), fact)
            }
            Some(Side::Server) => {
                plain_stats_add(dims[1].get(GroupKey::Port(conn.local.port())), fact)
            }
            None => {}
        }
        let process = conn.owner.map_or(Comm::default(), |o| o.comm);
        plain_stats_add(dims[2].get(GroupKey::Process(process)), fact);
        let cgroup = conn.ident.cgroup.unwrap_or(0);
        plain_stats_add(dims[3].get(GroupKey::Cgroup(cgroup)), fact);
    }

    #[test]
    fn aggregate_adds_facts_as_the_plain_version_did() {
        use crate::{
            decode::{CloseStats, Ident, Owner, OwnerSource},
            track::{Conn, Connection},
        };
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let states = TcpState::ALL;
        let mut fast = Aggregate::default();
        fast.keep_edge_dwells();
        // As the live runs without charts keep it: no edge dwells, everything else the same.
        let mut lean = Aggregate::default();
        let mut overall = Stats::new(3);
        let mut dims: [PlainGroups; 4] = Default::default();
        let mut edges = FxHashMap::default();
        for i in 0..60_000u64 {
            // Many ports (past MAX_GROUPS), and more processes and cgroups than the caches
            // have slots, interleaved; values across the whole range, clamped ones included.
            let side = [Some(Side::Client), Some(Side::Server), None][(next() % 3) as usize];
            let conn = Conn {
                sock: next() % 100,
                local: ([10, 0, 0, 1], (next() % 1500) as u16).into(),
                remote: ([10, 0, 0, 2], (next() % 1500) as u16).into(),
                owner: (next() % 5 != 0).then(|| Owner {
                    tgid: 1,
                    pid: 1,
                    comm: Comm::from_str_lossy(&format!("proc{}", next() % 40)),
                    source: OwnerSource::Cached,
                }),
                side,
                ident: Ident {
                    cgroup: (next() % 5 != 0).then(|| next() % 40),
                    netns: None,
                },
            };
            let ns = match next() % 4 {
                0 => next() % 10_000,
                1 => next() % 10_000_000_000,
                2 => next() % 200_000_000_000_000_000,
                _ => next(),
            };
            let state = states[(next() % 13) as usize];
            let fact = match next() % 10 {
                0 => Fact::Transition {
                    ts_ns: i,
                    conn,
                    old: state,
                    new: states[(next() % 13) as usize],
                    dwell_ns: (next() % 4 != 0).then_some(ns),
                },
                1 => Fact::Handshake {
                    ts_ns: i,
                    conn,
                    side: if next() % 2 == 0 {
                        Side::Client
                    } else {
                        Side::Server
                    },
                    latency_ns: (next() % 5 != 0).then_some(ns),
                    retransmits: 0,
                },
                2 | 3 => Fact::Phase {
                    ts_ns: i,
                    conn,
                    phase: state,
                    dwell_ns: ns,
                },
                4 | 5 => Fact::Closed(Connection {
                    conn,
                    opened_ns: (next() % 4 != 0).then_some(i),
                    closed_ns: i + ns % 1_000_000_000_000,
                    handshake_ns: None,
                    retransmits: 0,
                    phases: [None; 5],
                    close: CloseKind::ALL[(next() % 7) as usize],
                    time_wait: false,
                    stats: (next() % 2 == 0).then(|| CloseStats {
                        bytes_acked: next() % 100_000,
                        bytes_received: next() % 100_000,
                        retrans: 0,
                        srtt_us: 0,
                    }),
                }),
                6 => Fact::TimeWait { ts_ns: i, conn },
                7 => Fact::SynRetransmit { ts_ns: i, conn },
                8 => Fact::SynAckRetransmit { ts_ns: i, conn },
                _ => Fact::Reset {
                    ts_ns: i,
                    conn,
                    sent: next() % 2 == 0,
                },
            };
            fast.add(&fact);
            lean.add(&fact);
            plain_add(&mut overall, &mut dims, &mut edges, &fact);
        }
        assert_eq!(format!("{:?}", lean.overall), format!("{:?}", fast.overall));
        assert_eq!(lean.by_process.order, fast.by_process.order);
        let counts =
            |a: &Aggregate| -> Vec<_> { a.edges.iter().map(|(k, e)| (*k, e.count)).collect() };
        assert_eq!(counts(&lean), counts(&fast));
        assert!(lean.edges.values().all(|e| e.dwell.count() == 0));
        assert!(fast.edges.values().any(|e| e.dwell.count() > 0));
        assert_eq!(format!("{:?}", fast.overall), format!("{overall:?}"));
        let fast_dims = [
            &fast.by_remote_port,
            &fast.by_local_port,
            &fast.by_process,
            &fast.by_cgroup,
        ];
        for (f, p) in fast_dims.into_iter().zip(&dims) {
            assert_eq!(f.order, p.order);
            for (k, s) in f.iter() {
                assert_eq!(format!("{s:?}"), format!("{:?}", p.map[k]), "{k:?}");
            }
        }
        assert!(
            dims[0].map.contains_key(&GroupKey::Other),
            "the port cap was not reached"
        );
        let mut fast_edges: Vec<_> = fast
            .edges
            .iter()
            .map(|(k, e)| format!("{k:?} {e:?}"))
            .collect();
        let mut plain_edges: Vec<_> = edges.iter().map(|(k, e)| format!("{k:?} {e:?}")).collect();
        fast_edges.sort();
        plain_edges.sort();
        assert_eq!(fast_edges, plain_edges);
        for old in TcpState::ALL {
            for new in TcpState::ALL {
                let k = (old, new);
                let want = edges.get(&k).map(|e| format!("{e:?}"));
                assert_eq!(fast.edges.get(&k).map(|e| format!("{e:?}")), want, "{k:?}");
                assert_eq!(fast.edges.contains_key(&k), want.is_some(), "{k:?}");
            }
        }
        assert!(edges.len() > 150, "only {} edges seen", edges.len());
        assert_eq!(
            fast.transitions,
            edges.values().map(|e| e.count).sum::<u64>()
        );
    }

    #[test]
    fn groups_match_a_plain_hash_map() {
        // Runs of repeated keys (the fast paths' hits), switches between a few ports and
        // processes, new ports and addresses past MAX_GROUPS ("other"), all mixed.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let comm = |n: u64| Comm::from_str_lossy(&format!("proc{}", n % 7));
        let (mut fast, mut plain) = (Groups::default(), PlainGroups::default());
        for i in 0..20_000u64 {
            let r = next();
            let key = match r % 12 {
                0..=2 => GroupKey::Port((r >> 8) as u16 % 4 + 8080),
                3 => GroupKey::Port((r >> 8) as u16),
                4..=6 => GroupKey::Process(comm(r >> 8)),
                7 => GroupKey::Process(comm(i / 1000)),
                10 => GroupKey::Cgroup((r >> 8) % 5),
                11 => GroupKey::Cgroup(i / 500 + (r >> 60)),
                8 => GroupKey::Addr(std::net::IpAddr::from([
                    10,
                    0,
                    (r >> 8) as u8,
                    (r >> 16) as u8,
                ])),
                _ => GroupKey::Other,
            };
            let repeat = 1 + (r >> 32) % 3;
            for _ in 0..repeat {
                let v = (r >> 20) % 1_000_000_000;
                for s in [fast.get(key.clone()), plain.get(key.clone())] {
                    s.syn_retransmits += 1;
                    s.handshake[0].record_ns(v);
                }
            }
        }
        assert_eq!(plain.map.len(), MAX_GROUPS, "the cap was not reached");
        assert_eq!(fast.order, plain.order);
        assert_eq!(fast.len(), plain.map.len());
        for (k, p) in &plain.map {
            let f = fast.find(k).unwrap_or_else(|| panic!("{k:?} missing"));
            assert_eq!(f.syn_retransmits, p.syn_retransmits, "{k:?}");
            assert_eq!(
                f.handshake[0].quantiles(),
                p.handshake[0].quantiles(),
                "{k:?}"
            );
        }
        let fast_keys: Vec<_> = fast.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            fast_keys, plain.order,
            "iteration is in first-appearance order"
        );
    }
}
