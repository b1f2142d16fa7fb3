//! The one shared view of results: the [`Summary`], a serialisable value built from the
//! aggregates and the tracker, rendered as text (stderr at exit) or JSON. The same value
//! comes out of a live run and of `report`, which is how a recording is checked against the
//! run that made it. A [`Snapshot`] is the summary so far, built the same way, plus what only
//! means something while a run goes on (sockets per state now) and, when a front end asks,
//! more: what an export needs ([`SnapshotOptions::detail`]: whole distributions, transitions
//! per edge, the named groups, CLOSE_WAIT ages) and what the dashboard shows
//! ([`SnapshotOptions::dashboard`]: rates, last-10-s handshakes, every CLOSE_WAIT socket with
//! its age, groups, recent closes); live front ends (`top`, `serve`) draw and export
//! snapshots and compute no figures of their own.
//!
//! Groups by workload are the aggregates' cgroup groups named through [`Names`] (a workload
//! name, else the cgroup path, else `cgroup ID`) and merged by name, so a pod's containers
//! or a service's sub-cgroups make one group. The names are the only part of a summary that
//! depends on the host it is built on (see `names`); the figures never do.

use std::{collections::BTreeMap, io, net::SocketAddr, time::Duration};

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{
    aggregate::{Aggregate, GroupKey, Groups, Hist, Quantiles, Stats, row_names, rows},
    counters::{Counters, LOSS_EXPLAINED},
    decode::{Ident, TcpState, printable},
    listeners::ListenersSummary,
    names::Names,
    pipeline::Pipeline,
    recent::{ClosedConn, DIMENSIONS, RateFigures, Recent, WORKLOAD_DIMENSION, group_keys},
    track::{CloseKind, TrackStats, Tracker},
};

/// A socket still waiting in CLOSE_WAIT when the run ended: the peer closed, the application
/// has not (the classic socket-leak signal).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stuck {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub local: String,
    pub remote: String,
    /// Time in CLOSE_WAIT up to the end of the run; `None` if it was already there when
    /// tracing started.
    pub age_ms: Option<f64>,
}

/// One group's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupSummary {
    /// Group name ("overall", a port, or a process name).
    pub key: String,
    /// Rows with data: "handshake client", "handshake server", then the teardown phases.
    pub rows: BTreeMap<&'static str, Quantiles>,
    /// Server handshakes whose SYN-ACK round trip could not be read.
    pub server_handshake_unmeasured: u64,
    /// Client handshakes without a known start (socket first seen mid-handshake).
    pub client_handshake_unmeasured: u64,
    /// Finished connections by how they ended (only kinds that occurred).
    pub closes: BTreeMap<&'static str, u64>,
    pub connections: u64,
    pub lifetime: Option<Quantiles>,
    pub syn_retransmits: u64,
    pub synack_retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub time_wait_entries: u64,
    /// Payload bytes of the finished connections whose counters were read at close (absent
    /// when none were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Bytes>,
    /// Sockets of this group in CLOSE_WAIT at the end (workload groups only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_wait_now: Option<u64>,
}

/// Bytes carried by a group's finished connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bytes {
    /// Connections whose counters the kernel read at close (the rest are not in the sums).
    pub connections: u64,
    pub sent: u64,
    pub received: u64,
}

impl GroupSummary {
    fn of(key: String, s: &Stats) -> Self {
        let names = row_names();
        let mut rows_map = BTreeMap::new();
        for (name, h) in names.iter().zip(rows(s)) {
            if let Some(q) = h.quantiles() {
                rows_map.insert(*name, q);
            }
        }
        let closes = CloseKind::ALL
            .iter()
            .zip(s.closes)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.name(), n))
            .collect();
        Self {
            key,
            rows: rows_map,
            server_handshake_unmeasured: s.handshake_unmeasured[1],
            client_handshake_unmeasured: s.handshake_unmeasured[0],
            closes,
            connections: s.connections(),
            lifetime: s.lifetime.quantiles(),
            syn_retransmits: s.syn_retransmits,
            synack_retransmits: s.synack_retransmits,
            resets_sent: s.resets_sent,
            resets_received: s.resets_received,
            time_wait_entries: s.time_wait_entries,
            bytes: (s.bytes_measured > 0).then_some(Bytes {
                connections: s.bytes_measured,
                sent: s.bytes_sent,
                received: s.bytes_received,
            }),
            close_wait_now: None,
        }
    }

    /// Nothing to show. A group with only retransmits or resets is not empty: a port under a
    /// SYN flood that completes no connection shows its SYN-ACK retransmits.
    fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.connections == 0
            && self.server_handshake_unmeasured == 0
            && self.client_handshake_unmeasured == 0
            && self.syn_retransmits == 0
            && self.synack_retransmits == 0
            && self.resets_sent == 0
            && self.resets_received == 0
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The whole summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub transitions: u64,
    pub events: u64,
    /// Every event tcptrace did not get (`Counters::all_lost`): ring buffer full, plus
    /// `lost_skipped`.
    pub lost: u64,
    /// Of `lost`, tracepoint hits the kernel skipped because one of tcptrace's programs was
    /// already running on that CPU (a softirq interrupting it): a larger ring does not help.
    /// Absent from JSON when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub lost_skipped: u64,
    /// Records that did not decode (counted, skipped).
    pub undecodable: u64,
    /// Events the kernel-side filter dropped, as asked.
    pub filtered: u64,
    /// A report of a recording that was cut off before its end record: `lost`, `filtered`
    /// and `undecodable` are unknown (0 here), not none. Absent from JSON otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub track: TrackStats,
    pub overall: GroupSummary,
    pub by_remote_port: Vec<GroupSummary>,
    pub by_local_port: Vec<GroupSummary>,
    pub by_process: Vec<GroupSummary>,
    /// By workload (see the module doc), with CLOSE_WAIT sockets per group; absent when no
    /// socket's cgroup was known (an older kernel or recording).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_workload: Vec<GroupSummary>,
    /// Sockets in CLOSE_WAIT at the end of the run (count and the oldest few).
    pub close_wait_now: u64,
    pub close_wait_oldest: Vec<Stuck>,
    /// Listeners and TIME_WAIT from the socket-table sampler (absent when nothing was
    /// sampled: `--no-sample`, or a recording made without samples).
    #[serde(skip_serializing_if = "ListenersSummary::is_empty")]
    pub listeners: ListenersSummary,
}

fn top(groups: &Groups, n: usize) -> Vec<GroupSummary> {
    groups
        .sorted()
        .into_iter()
        .map(|(k, s)| GroupSummary::of(k.to_string(), s))
        .filter(|g| !g.is_empty())
        .take(n)
        .collect()
}

/// The aggregates' cgroup groups named through `names` and merged by name: (name, figures),
/// sorted as [`Groups::sorted`] sorts (most connections and handshakes first, then name).
pub fn workload_groups(agg: &Aggregate, names: &Names) -> Vec<(String, Stats)> {
    let mut merged: BTreeMap<String, Stats> = BTreeMap::new();
    for (k, s) in agg.by_cgroup.iter() {
        let name = match k {
            GroupKey::Cgroup(id) => names.label(*id),
            other => other.to_string(),
        };
        merged
            .entry(name)
            .or_insert_with(|| Stats::empty(2))
            .merge(s);
    }
    let weight = |s: &Stats| s.connections() + s.handshake[0].count() + s.handshake[1].count();
    let mut v: Vec<(String, Stats)> = merged.into_iter().collect();
    v.sort_by(|a, b| weight(&b.1).cmp(&weight(&a.1)).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Sockets in CLOSE_WAIT now per workload name, their cgroups found through `ident_of`
/// (the owner cache: the tracker keeps no identities).
fn close_wait_by_workload(
    tracker: &Tracker,
    names: &Names,
    ident_of: &dyn Fn(u64) -> Ident,
) -> FxHashMap<String, u64> {
    let mut out = FxHashMap::default();
    for (_, c) in tracker.sockets_in(TcpState::CloseWait) {
        let id = ident_of(c.sock).cgroup.unwrap_or(0);
        *out.entry(names.label(id)).or_default() += 1;
    }
    out
}

impl Summary {
    /// The summary of a pipeline, its workloads named through `names`, at `end_ns` (event
    /// time, monotonic: the end of the run, or the snapshot's time; the newest event if
    /// later), to which the ages of sockets still in CLOSE_WAIT run. Sockets /proc showed in
    /// CLOSE_WAIT at start that have had no event since count too, first, of unknown age.
    pub fn of(p: &Pipeline, counters: &Counters, top_n: usize, names: &Names, end_ns: u64) -> Self {
        let mut prior: Vec<Stuck> = p
            .prior_sockets()
            .filter(|(_, (state, _))| *state == TcpState::CloseWait)
            .map(|((local, remote), (_, owner))| Stuck {
                pid: owner.map(|o| o.tgid),
                comm: owner.map(|o| o.comm.as_str().into_owned()),
                local: local.to_string(),
                remote: remote.to_string(),
                age_ms: None,
            })
            .collect();
        prior.sort_by(|a, b| (&a.local, &a.remote).cmp(&(&b.local, &b.remote)));
        Self::build_named(
            p.aggregate(),
            counters,
            p.undecodable(),
            p.tracker(),
            top_n,
            (names, &|sock| p.ident_of(sock)),
            (end_ns, prior),
        )
    }

    /// The summary of bare aggregates (tests): workloads, if any, show as cgroup ids.
    #[cfg(test)]
    pub fn build(
        agg: &Aggregate,
        counters: &Counters,
        undecodable: u64,
        tracker: &Tracker,
        top_n: usize,
    ) -> Self {
        Self::build_named(
            agg,
            counters,
            undecodable,
            tracker,
            top_n,
            (&Names::none(), &|_| Ident::default()),
            (0, Vec::new()),
        )
    }

    fn build_named(
        agg: &Aggregate,
        counters: &Counters,
        undecodable: u64,
        tracker: &Tracker,
        top_n: usize,
        (names, ident_of): (&Names, &dyn Fn(u64) -> Ident),
        (end_ns, prior_close_wait): (u64, Vec<Stuck>),
    ) -> Self {
        let track: TrackStats = tracker.stats();
        let waiting = tracker.sockets_in(TcpState::CloseWait);
        let end = end_ns.max(tracker.newest_ns());
        let close_wait_now = (prior_close_wait.len() + waiting.len()) as u64;
        let close_wait_oldest = prior_close_wait
            .into_iter()
            .chain(waiting.iter().map(|(since, c)| Stuck {
                pid: c.owner.map(|o| o.tgid),
                comm: c.owner.map(|o| o.comm.as_str().into_owned()),
                local: c.local.to_string(),
                remote: c.remote.to_string(),
                age_ms: since.map(|t| end.saturating_sub(t) as f64 / 1e6),
            }))
            .take(top_n)
            .collect();
        Self {
            transitions: agg.transitions,
            events: track.events,
            lost: counters.all_lost(),
            lost_skipped: counters.missed,
            undecodable,
            filtered: counters.filtered,
            truncated: false,
            track,
            overall: GroupSummary::of("overall".to_owned(), &agg.overall),
            by_remote_port: top(&agg.by_remote_port, top_n),
            by_local_port: top(&agg.by_local_port, top_n),
            by_process: top(&agg.by_process, top_n),
            by_workload: if agg.has_cgroups() {
                let cw = close_wait_by_workload(tracker, names, ident_of);
                workload_groups(agg, names)
                    .into_iter()
                    .map(|(k, s)| {
                        let mut g = GroupSummary::of(k, &s);
                        g.close_wait_now = Some(cw.get(&g.key).copied().unwrap_or(0));
                        g
                    })
                    .filter(|g| !g.is_empty() || g.close_wait_now > Some(0))
                    .take(top_n)
                    .collect()
            } else {
                Vec::new()
            },
            close_wait_now,
            close_wait_oldest,
            listeners: agg.listeners.summary(),
        }
    }

    pub fn write_json(&self, mut w: impl io::Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut w, self)?;
        writeln!(w)
    }

    pub fn write_text(&self, mut w: impl io::Write) -> io::Result<()> {
        if self.truncated {
            writeln!(
                w,
                "tcptrace summary: {} transitions, {} events (the recording was cut off before \
                 its end record: lost, filtered and undecodable are unknown)",
                self.transitions, self.events
            )?;
        } else {
            writeln!(
                w,
                "tcptrace summary: {} transitions, {} events, {} lost, {} undecodable, {} filtered in the kernel",
                self.transitions, self.events, self.lost, self.undecodable, self.filtered
            )?;
        }
        if self.lost > 0 {
            writeln!(
                w,
                "  WARNING: {} events were lost ({} with the ring buffer full, {} skipped by the kernel): {LOSS_EXPLAINED}",
                self.lost,
                self.lost - self.lost_skipped,
                self.lost_skipped
            )?;
        }
        let t = &self.track;
        if t.joined_mid_life + t.gaps + t.out_of_order + t.evicted + t.reused_unclosed > 0 {
            writeln!(
                w,
                "  stream: {} sockets joined mid-life, {} gaps, {} out of order, {} evicted, {} reused unclosed",
                t.joined_mid_life, t.gaps, t.out_of_order, t.evicted, t.reused_unclosed
            )?;
        }
        write_group(&mut w, &self.overall, true)?;
        if self.close_wait_now > 0 {
            writeln!(
                w,
                "still in CLOSE_WAIT at the end (peer closed, application has not): {}",
                self.close_wait_now
            )?;
            for st in &self.close_wait_oldest {
                writeln!(
                    w,
                    "  {:>7} {:<15} {} -> {}  {}",
                    st.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    printable(st.comm.as_deref().unwrap_or("-")),
                    st.local,
                    st.remote,
                    st.age_ms.map_or_else(
                        || "since before tracing".to_owned(),
                        |a| format!("{:.3} ms so far", a)
                    )
                )?;
            }
        }
        for (title, groups) in [
            ("by remote port (client side)", &self.by_remote_port),
            ("by local port (server side)", &self.by_local_port),
            ("by process", &self.by_process),
            ("by workload (cgroup)", &self.by_workload),
        ] {
            if groups.is_empty() {
                continue;
            }
            writeln!(w, "{title}:")?;
            for g in groups {
                write_group(&mut w, g, false)?;
            }
        }
        self.listeners.write_text(&mut w)?;
        Ok(())
    }
}

/// The results of a live run so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// Wall time since the run started, in seconds.
    pub elapsed_s: f64,
    /// Monotonic time of the newest event seen (0 before the first).
    pub newest_ns: u64,
    /// The summary so far, built exactly as the exit summary is.
    pub summary: Summary,
    /// Sockets the tracker follows now, per state (states with none left out). Sockets that
    /// predate the run count from their first event; until then they are in
    /// [`Dashboard::states_from_proc`].
    pub states: BTreeMap<&'static str, u64>,
    /// Whole distributions, edges, chosen groups and CLOSE_WAIT ages, when
    /// [`SnapshotOptions::detail`] asks for them (what `serve` exports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
    /// What the dashboard shows besides the summary, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<Dashboard>,
}

/// The dashboard's figures (`top`), all computed here from the run's aggregates, its tracker
/// and the [`Recent`] sink; the dashboard only sorts, filters and draws them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dashboard {
    /// The time these figures are for, in event time (monotonic; the replay position when
    /// replaying).
    pub now_ns: u64,
    /// Per-second counters: rate over the last 10 s, total, the last minute.
    pub rates: Vec<RateFigures>,
    /// Handshake latency over the last 10 s ("client", "server"; sides without any left out).
    pub handshake_last_10s: BTreeMap<&'static str, Quantiles>,
    /// Handshake latencies since the start, in a few log-spaced buckets.
    pub handshake_histogram: Vec<HistBucket>,
    /// Every socket in CLOSE_WAIT now (up to [`MAX_ROWS`]), oldest first; sockets that were
    /// in CLOSE_WAIT in /proc at start and have had no event since come first.
    pub close_wait: Vec<Leak>,
    /// Sockets /proc showed at start that have had no event since, per state (TIME_WAIT
    /// mini-sockets are not counted).
    pub states_from_proc: BTreeMap<&'static str, u64>,
    /// Group tables, one per [`DIMENSIONS`] entry, each up to [`MAX_ROWS`] groups with the
    /// most connections.
    pub groups: Vec<GroupTable>,
    /// The last connections that ended, newest first.
    pub recently_closed: Vec<ClosedConn>,
    /// Overall figures since the start, or since the dashboard's `r` (then `reset_at_ns`
    /// says when): what the since-start columns show.
    pub since_start: GroupSummary,
    pub reset_at_ns: Option<u64>,
}

/// Most rows of a dashboard table in a snapshot.
pub const MAX_ROWS: usize = 1000;

/// A socket waiting in CLOSE_WAIT.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Leak {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Time in CLOSE_WAIT so far; `None` when it entered CLOSE_WAIT before tracing started
    /// (then it is at least the run's elapsed time).
    pub age_ms: Option<f64>,
    /// Found in /proc at start and not seen since.
    pub from_proc: bool,
}

/// Handshakes since the start with a latency below `upto_us` (and at least the previous
/// bucket's bound); the last bucket (`upto_us` = null) holds the rest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistBucket {
    pub upto_us: Option<u64>,
    pub client: u64,
    pub server: u64,
}

/// One grouping of the dashboard's group table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupTable {
    pub dimension: &'static str,
    pub rows: Vec<GroupRow>,
}

/// One group's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupRow {
    pub key: String,
    /// Finished connections per second over the last 10 s.
    pub conns_per_s: f64,
    /// Finished connections since the start.
    pub connections: u64,
    /// Handshake latency since the start (client side for remote ports, server side for local
    /// ports, whichever has data for processes and peers, client first).
    pub handshake_p50_us: Option<u64>,
    pub handshake_p99_us: Option<u64>,
    pub resets: u64,
    /// Sockets of this group in CLOSE_WAIT now.
    pub close_wait: u64,
}

/// What a front end wants in its snapshots.
#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    /// Groups per dimension in the summary.
    pub top_n: usize,
    /// Build [`Snapshot::detail`] too.
    pub detail: Option<DetailOptions>,
    /// Build [`Dashboard`] figures (the live loop then adds the [`Recent`] sink).
    pub dashboard: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            top_n: 5,
            dashboard: false,
            detail: None,
        }
    }
}

/// Which groups and thresholds [`Detail`] covers. Exports must keep their number of series
/// bounded, so groups are named, never discovered: ports only when listed, processes only
/// the first `processes` names seen (a stable choice: a series never moves to `other`).
#[derive(Clone, Debug, Default)]
pub struct DetailOptions {
    /// Ports to break out: server-side connections by local port, client side by remote port.
    pub ports: Vec<u16>,
    /// How many process names get their own group; the rest are folded into `other`.
    pub processes: usize,
    /// How many workloads (named as the summary names them) get their own group, the first
    /// seen; the rest are folded into `other`.
    pub workloads: usize,
    /// CLOSE_WAIT sockets older than this are counted in [`CloseWaitAges::over_threshold`].
    pub close_wait_threshold: Duration,
}

/// A latency distribution for export: the exact count and sum, and the HDR histogram's
/// recorded values, so that any bucket layout can be read from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub count: u64,
    /// Exact sum of the values, in seconds.
    pub sum_s: f64,
    /// (value in microseconds, count), ascending. A value stands for every value the HDR
    /// histogram holds in the same bucket (it is the bucket's highest value): 0.1% resolution
    /// overall, 1% per group.
    pub values: Vec<(u64, u64)>,
}

impl Distribution {
    fn of(h: &Hist) -> Self {
        let values = h.histogram().map_or_else(Vec::new, |hh| {
            hh.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        });
        Self {
            count: h.count(),
            sum_s: h.sum_ns() as f64 / 1e9,
            values,
        }
    }

    /// Adds another distribution (for folding groups together).
    fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.sum_s += other.sum_s;
        let (a, b) = (&self.values, &other.values);
        let mut merged = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        loop {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    merged.push((x.0, x.1 + y.1));
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    merged.push(*x);
                    i += 1;
                }
                (Some(x), None) => {
                    merged.push(*x);
                    i += 1;
                }
                (_, Some(y)) => {
                    merged.push(*y);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        self.values = merged;
    }
}

/// Everything measured about one group of connections (or all of them), distributions whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Handshake latency: index 0 client, 1 server.
    pub handshake: [Distribution; 2],
    /// Handshakes whose latency could not be known, by side.
    pub handshake_unmeasured: [u64; 2],
    /// Dwell per teardown phase, indexed like [`crate::track::PHASES`].
    pub phases: [Distribution; 5],
    pub lifetime: Distribution,
    /// Finished connections per [`CloseKind`] (indexed like `CloseKind::ALL`).
    pub closes: [u64; 7],
    pub syn_retransmits: u64,
    pub synack_retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub time_wait_entries: u64,
    /// Payload bytes of finished connections whose counters were read at close.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl Figures {
    fn of(s: &Stats) -> Self {
        Self {
            handshake: [
                Distribution::of(&s.handshake[0]),
                Distribution::of(&s.handshake[1]),
            ],
            handshake_unmeasured: s.handshake_unmeasured,
            phases: [0, 1, 2, 3, 4].map(|i| Distribution::of(&s.phases[i])),
            lifetime: Distribution::of(&s.lifetime),
            closes: s.closes,
            syn_retransmits: s.syn_retransmits,
            synack_retransmits: s.synack_retransmits,
            resets_sent: s.resets_sent,
            resets_received: s.resets_received,
            time_wait_entries: s.time_wait_entries,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
        }
    }

    fn merge(&mut self, o: &Self) {
        for (a, b) in self.handshake.iter_mut().zip(&o.handshake) {
            a.merge(b);
        }
        for (a, b) in self.phases.iter_mut().zip(&o.phases) {
            a.merge(b);
        }
        self.lifetime.merge(&o.lifetime);
        for i in 0..2 {
            self.handshake_unmeasured[i] += o.handshake_unmeasured[i];
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
    }

    /// Connections that reached ESTABLISHED, by side (measured or not).
    pub fn opened(&self) -> [u64; 2] {
        [0, 1].map(|i| self.handshake[i].count + self.handshake_unmeasured[i])
    }

    /// Finished connections.
    pub fn connections(&self) -> u64 {
        self.closes.iter().sum()
    }
}

/// How a group is keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Server-side connections by local port.
    LocalPort,
    /// Client-side connections by remote port.
    RemotePort,
    /// By owning process name.
    Process,
    /// By workload (a socket's cgroup, named).
    Workload,
}

/// One chosen group's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupFigures {
    pub dimension: Dimension,
    /// A port number, a process name ("?" when unknown), or "other" (the folded rest).
    pub key: String,
    pub figures: Figures,
}

/// CLOSE_WAIT sockets by age, measured to the snapshot's time (not to the last event, so
/// ages keep growing on a quiet host).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CloseWaitAges {
    /// Age of the oldest, in seconds (0 when there is none). Sockets already in CLOSE_WAIT
    /// when tracing started count as old as the run.
    pub oldest_s: f64,
    /// How many are older than [`DetailOptions::close_wait_threshold`].
    pub over_threshold: u64,
    pub threshold_s: f64,
}

/// What an export needs beyond the summary: whole distributions, the transition counts per
/// edge of the state machine, the chosen groups, CLOSE_WAIT ages.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detail {
    pub overall: Figures,
    /// (old, new, count), in the order of [`TcpState::ALL`].
    pub edges: Vec<(&'static str, &'static str, u64)>,
    /// Named ports (both dimensions), then the first processes and `other`.
    pub groups: Vec<GroupFigures>,
    /// Process names folded into `other` (beyond the first N).
    pub folded_processes: u64,
    /// Connections (opened or closed) counted under `other` rather than their own process.
    pub folded_connections: u64,
    /// Workloads folded into `other` (beyond the first N), and their connections.
    pub folded_workloads: u64,
    pub folded_workload_connections: u64,
    pub close_wait: CloseWaitAges,
}

impl Detail {
    fn build(
        agg: &Aggregate,
        tracker: &Tracker,
        opts: &DetailOptions,
        (now_ns, elapsed): (u64, Duration),
        prior_close_wait: usize,
        names: &Names,
    ) -> Self {
        let mut edges: Vec<_> = agg
            .edges
            .iter()
            .map(|((o, n), e)| (*o, *n, e.count))
            .collect();
        edges.sort_by_key(|(o, n, _)| (*o as u8, *n as u8));
        let edges = edges
            .into_iter()
            .map(|(o, n, c)| (o.name(), n.name(), c))
            .collect();

        let mut groups = Vec::new();
        for (dimension, g) in [
            (Dimension::LocalPort, &agg.by_local_port),
            (Dimension::RemotePort, &agg.by_remote_port),
        ] {
            for p in &opts.ports {
                let figures = g
                    .find(&GroupKey::Port(*p))
                    .map_or_else(Figures::default, Figures::of);
                groups.push(GroupFigures {
                    dimension,
                    key: p.to_string(),
                    figures,
                });
            }
        }
        let (mut folded_processes, mut folded_connections) = (0, 0);
        if opts.processes > 0 {
            let chosen: Vec<&GroupKey> = agg
                .by_process
                .order
                .iter()
                .filter(|k| **k != GroupKey::Other)
                .take(opts.processes)
                .collect();
            for k in &chosen {
                if let Some(s) = agg.by_process.find(k) {
                    groups.push(GroupFigures {
                        dimension: Dimension::Process,
                        key: k.to_string(),
                        figures: Figures::of(s),
                    });
                }
            }
            let mut other = Figures::default();
            for (k, s) in agg.by_process.iter() {
                if !chosen.contains(&k) {
                    let f = Figures::of(s);
                    folded_connections += f.opened().iter().sum::<u64>() + f.connections();
                    folded_processes += u64::from(*k != GroupKey::Other);
                    other.merge(&f);
                }
            }
            groups.push(GroupFigures {
                dimension: Dimension::Process,
                key: "other".to_owned(),
                figures: other,
            });
        }

        let (mut folded_workloads, mut folded_workload_connections) = (0, 0);
        if opts.workloads > 0 {
            // The first N names in the order their cgroups first appeared: a stable choice.
            let mut chosen: Vec<String> = Vec::new();
            let mut figures: Vec<Figures> = Vec::new();
            let mut other = Figures::default();
            let mut folded: Vec<String> = Vec::new();
            for (k, s) in agg.by_cgroup.iter() {
                let name = match k {
                    GroupKey::Cgroup(id) => names.label(*id),
                    other => other.to_string(),
                };
                let f = Figures::of(s);
                if let Some(i) = chosen.iter().position(|c| *c == name) {
                    figures[i].merge(&f);
                } else if chosen.len() < opts.workloads && *k != GroupKey::Other {
                    chosen.push(name);
                    figures.push(f);
                } else {
                    folded_workload_connections += f.opened().iter().sum::<u64>() + f.connections();
                    if *k != GroupKey::Other && !folded.contains(&name) {
                        folded.push(name);
                    }
                    other.merge(&f);
                }
            }
            folded_workloads = folded.len() as u64;
            for (key, figures) in chosen.into_iter().zip(figures) {
                groups.push(GroupFigures {
                    dimension: Dimension::Workload,
                    key,
                    figures,
                });
            }
            groups.push(GroupFigures {
                dimension: Dimension::Workload,
                key: "other".to_owned(),
                figures: other,
            });
        }

        let waiting = tracker.sockets_in(TcpState::CloseWait);
        let threshold_ns = u64::try_from(opts.close_wait_threshold.as_nanos()).unwrap_or(u64::MAX);
        let run_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let now = now_ns.max(tracker.newest_ns());
        // Sockets in CLOSE_WAIT before the run (from /proc, no event since) are at least as
        // old as the run: a leak older than the tracer, or than its last restart, crosses
        // the threshold once the run has lasted that long.
        let ages = waiting
            .iter()
            .map(|(since, _)| since.map_or(run_ns, |t| now.saturating_sub(t)))
            .chain(std::iter::repeat_n(run_ns, prior_close_wait));
        let mut close_wait = CloseWaitAges {
            threshold_s: opts.close_wait_threshold.as_secs_f64(),
            ..CloseWaitAges::default()
        };
        for age in ages {
            close_wait.oldest_s = close_wait.oldest_s.max(age as f64 / 1e9);
            close_wait.over_threshold += u64::from(age > threshold_ns);
        }

        Self {
            overall: Figures::of(&agg.overall),
            edges,
            groups,
            folded_processes,
            folded_connections,
            folded_workloads,
            folded_workload_connections,
            close_wait,
        }
    }
}

/// Bucket bounds of [`Dashboard::handshake_histogram`], in microseconds.
const HIST_BOUNDS_US: [u64; 9] = [
    100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000,
];

impl Snapshot {
    /// Before the first tick.
    pub fn empty(opts: &SnapshotOptions) -> Self {
        let recent = opts.dashboard.then(Recent::default);
        Self::build_with(
            &Pipeline::new(Vec::new()),
            &Counters::default(),
            opts,
            Duration::ZERO,
            0,
            recent.as_ref(),
            &Names::none(),
        )
    }

    /// A snapshot at monotonic time `now_ns` (CLOCK_MONOTONIC, the events' time base): a
    /// live run passes the clock, so CLOSE_WAIT ages grow even when no event arrives. (The
    /// live loop calls [`Snapshot::build_with`], which also takes the dashboard's sink.)
    #[cfg(test)]
    pub fn build_at(
        p: &Pipeline,
        counters: &Counters,
        opts: &SnapshotOptions,
        elapsed: Duration,
        now_ns: u64,
    ) -> Self {
        Self::build_with(p, counters, opts, elapsed, now_ns, None, &Names::none())
    }

    /// A snapshot at monotonic time `now_ns` with the dashboard's sink: `recent` is required for
    /// [`Dashboard`] figures (`opts.dashboard`); `now_ns` is the replay position when
    /// replaying. Workloads are named through `names`.
    pub fn build_with(
        p: &Pipeline,
        counters: &Counters,
        opts: &SnapshotOptions,
        elapsed: Duration,
        now_ns: u64,
        recent: Option<&Recent>,
        names: &Names,
    ) -> Self {
        let top_n = opts.top_n;
        let tracker = p.tracker();
        let states = TcpState::ALL
            .iter()
            .zip(tracker.state_counts())
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.name(), n))
            .collect();
        Self {
            elapsed_s: elapsed.as_secs_f64(),
            newest_ns: tracker.newest_ns(),
            summary: Summary::of(p, counters, top_n, names, now_ns),
            states,
            detail: opts.detail.as_ref().map(|d| {
                let prior = p
                    .prior_sockets()
                    .filter(|(_, (state, _))| *state == TcpState::CloseWait)
                    .count();
                Detail::build(p.aggregate(), tracker, d, (now_ns, elapsed), prior, names)
            }),
            dashboard: recent
                .filter(|_| opts.dashboard)
                .map(|r| Dashboard::build(p, r, now_ns, names)),
        }
    }

    /// The snapshot as text, for `top --once`: the dashboard's figures, then the summary.
    pub fn write_text(&self, mut w: impl io::Write) -> io::Result<()> {
        writeln!(w, "tcptrace top: {:.1} s", self.elapsed_s)?;
        if let Some(d) = &self.dashboard {
            writeln!(w, "{:<18} {:>10} {:>10}", "(events)", "per s", "total")?;
            for r in &d.rates {
                writeln!(w, "{:<18} {:>10.1} {:>10}", r.name, r.per_s, r.total)?;
            }
            for (side, q) in &d.handshake_last_10s {
                writeln!(
                    w,
                    "handshake {side} last 10 s (ms): count {} p50 {} p90 {} p99 {} max {}",
                    q.count,
                    fmt_ms(q.p50_us),
                    fmt_ms(q.p90_us),
                    fmt_ms(q.p99_us),
                    fmt_ms(q.max_us)
                )?;
            }
        }
        let states: Vec<String> = self
            .states
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(w, "sockets per state (tracked): {}", states.join(", "))?;
        if let Some(d) = &self.dashboard {
            if !d.states_from_proc.is_empty() {
                let s: Vec<String> = d
                    .states_from_proc
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                writeln!(
                    w,
                    "sockets per state (from /proc at start, no event since): {}",
                    s.join(", ")
                )?;
            }
            writeln!(w, "in CLOSE_WAIT now: {}", d.close_wait.len())?;
            for l in &d.close_wait {
                writeln!(
                    w,
                    "  {:>7} {:<15} {} -> {}  {}",
                    l.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    printable(l.comm.as_deref().unwrap_or("-")),
                    l.local,
                    l.remote,
                    match (l.age_ms, l.from_proc) {
                        (Some(a), _) => format!("{:.3} ms", a),
                        (None, true) => "since before tracing (from /proc at start)".to_owned(),
                        (None, false) => "since before tracing".to_owned(),
                    }
                )?;
            }
        }
        self.summary.write_text(w)
    }
}

impl Dashboard {
    fn build(p: &Pipeline, recent: &Recent, now_ns: u64, names: &Names) -> Self {
        let tracker = p.tracker();
        let (reset_at_ns, agg) = match recent.since_reset() {
            Some((t, a)) => (Some(t), a),
            None => (None, p.aggregate()),
        };
        let mut handshake_last_10s = BTreeMap::new();
        for (side, q) in ["client", "server"]
            .into_iter()
            .zip(recent.handshake_window(now_ns))
        {
            if let Some(q) = q {
                handshake_last_10s.insert(side, q);
            }
        }
        let hist = |i: usize, lo: u64, hi: u64| {
            agg.overall.handshake[i]
                .histogram()
                .map_or(0, |h| h.count_between(lo, hi.saturating_sub(1)))
        };
        let mut handshake_histogram = Vec::new();
        let mut lo = 0;
        for hi in HIST_BOUNDS_US.iter().copied().map(Some).chain([None]) {
            let top = hi.unwrap_or(u64::MAX);
            handshake_histogram.push(HistBucket {
                upto_us: hi,
                client: hist(0, lo, top),
                server: hist(1, lo, top),
            });
            lo = top;
        }

        let mut states_from_proc: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut close_wait = Vec::new();
        for ((local, remote), (state, owner)) in p.prior_sockets() {
            *states_from_proc.entry(state.name()).or_default() += 1;
            if *state == TcpState::CloseWait {
                close_wait.push(Leak {
                    pid: owner.map(|o| o.tgid),
                    comm: owner.map(|o| o.comm.as_str().into_owned()),
                    local: *local,
                    remote: *remote,
                    age_ms: None,
                    from_proc: true,
                });
            }
        }
        close_wait.sort_by_key(|l| (l.local, l.remote));
        let waiting = tracker.sockets_in(TcpState::CloseWait);
        let mut cw_groups: FxHashMap<(usize, GroupKey), u64> = FxHashMap::default();
        let mut cw_workloads: FxHashMap<String, u64> = FxHashMap::default();
        for (since, c) in &waiting {
            for (dim, key) in group_keys(c).into_iter().enumerate() {
                if let Some(k) = key
                    && dim != WORKLOAD_DIMENSION
                {
                    *cw_groups.entry((dim, k)).or_default() += 1;
                }
            }
            // The tracker keeps no identities: the owner cache has the socket's cgroup.
            let id = p.ident_of(c.sock).cgroup.unwrap_or(0);
            *cw_workloads.entry(names.label(id)).or_default() += 1;
            if close_wait.len() < MAX_ROWS {
                close_wait.push(Leak {
                    pid: c.owner.map(|o| o.tgid),
                    comm: c.owner.map(|o| o.comm.as_str().into_owned()),
                    local: c.local,
                    remote: c.remote,
                    age_ms: since.map(|t| now_ns.saturating_sub(t) as f64 / 1e6),
                    from_proc: false,
                });
            }
        }

        let row = |dim: usize, k: &GroupKey, hs: &[crate::aggregate::Hist; 2], n: u64, resets| {
            let hs = match dim {
                0 => &hs[0],
                1 => &hs[1],
                _ if hs[0].count() > 0 => &hs[0],
                _ => &hs[1],
            };
            let q = hs.quantiles();
            GroupRow {
                key: k.to_string(),
                conns_per_s: recent.group_rate(dim, k, now_ns),
                connections: n,
                handshake_p50_us: q.map(|q| q.p50_us),
                handshake_p99_us: q.map(|q| q.p99_us),
                resets,
                close_wait: cw_groups.get(&(dim, k.clone())).copied().unwrap_or(0),
            }
        };
        let dims: [&Groups; 3] = [&agg.by_remote_port, &agg.by_local_port, &agg.by_process];
        let mut groups: Vec<GroupTable> = dims
            .iter()
            .enumerate()
            .map(|(dim, g)| GroupTable {
                dimension: DIMENSIONS[dim],
                rows: g
                    .sorted()
                    .into_iter()
                    .take(MAX_ROWS)
                    .map(|(k, s)| {
                        row(
                            dim,
                            k,
                            &s.handshake,
                            s.connections(),
                            s.resets_sent + s.resets_received,
                        )
                    })
                    .collect(),
            })
            .collect();
        let mut peers: Vec<_> = recent.by_peer().collect();
        peers.sort_by(|a, b| b.1.connections.cmp(&a.1.connections).then(a.0.cmp(b.0)));
        groups.push(GroupTable {
            dimension: DIMENSIONS[3],
            rows: peers
                .into_iter()
                .take(MAX_ROWS)
                .map(|(ip, p)| {
                    row(
                        3,
                        &GroupKey::Addr(*ip),
                        &p.handshake,
                        p.connections,
                        p.resets,
                    )
                })
                .collect(),
        });
        let mut cgroups_of: FxHashMap<String, Vec<&GroupKey>> = FxHashMap::default();
        for (k, _) in agg.by_cgroup.iter() {
            let name = match k {
                GroupKey::Cgroup(id) => names.label(*id),
                other => other.to_string(),
            };
            cgroups_of.entry(name).or_default().push(k);
        }
        groups.push(GroupTable {
            dimension: DIMENSIONS[WORKLOAD_DIMENSION],
            rows: workload_groups(agg, names)
                .into_iter()
                .take(MAX_ROWS)
                .map(|(name, s)| {
                    let hs = if s.handshake[0].count() > 0 {
                        &s.handshake[0]
                    } else {
                        &s.handshake[1]
                    };
                    let q = hs.quantiles();
                    GroupRow {
                        conns_per_s: cgroups_of.get(&name).map_or(0.0, |ks| {
                            ks.iter()
                                .map(|k| recent.group_rate(WORKLOAD_DIMENSION, k, now_ns))
                                .sum()
                        }),
                        connections: s.connections(),
                        handshake_p50_us: q.map(|q| q.p50_us),
                        handshake_p99_us: q.map(|q| q.p99_us),
                        resets: s.resets_sent + s.resets_received,
                        close_wait: cw_workloads.get(&name).copied().unwrap_or(0),
                        key: name,
                    }
                })
                .collect(),
        });

        Self {
            now_ns,
            rates: recent.rates(now_ns),
            handshake_last_10s,
            handshake_histogram,
            close_wait,
            states_from_proc,
            groups,
            recently_closed: recent.closed_newest_first().cloned().collect(),
            since_start: GroupSummary::of("overall".to_owned(), &agg.overall),
            reset_at_ns,
        }
    }
}

fn fmt_ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn write_group(w: &mut impl io::Write, g: &GroupSummary, all_rows: bool) -> io::Result<()> {
    let closes: Vec<String> = g.closes.iter().map(|(k, n)| format!("{k} {n}")).collect();
    writeln!(
        w,
        "[{}] connections {}{}; resets sent {} received {}; SYN retransmits {}, SYN-ACK retransmits {}; TIME_WAIT entries {}",
        printable(&g.key),
        g.connections,
        if closes.is_empty() {
            String::new()
        } else {
            format!(" ({})", closes.join(", "))
        },
        g.resets_sent,
        g.resets_received,
        g.syn_retransmits,
        g.synack_retransmits,
        g.time_wait_entries
    )?;
    if g.bytes.is_some() || g.close_wait_now.is_some() {
        let mut parts = Vec::new();
        if let Some(b) = g.bytes {
            parts.push(format!(
                "bytes sent {} received {} ({} connections measured)",
                b.sent, b.received, b.connections
            ));
        }
        if let Some(n) = g.close_wait_now {
            parts.push(format!("in CLOSE_WAIT now {n}"));
        }
        writeln!(w, "  {}", parts.join("; "))?;
    }
    writeln!(
        w,
        "  {:<18} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "(ms)", "count", "min", "p50", "p90", "p99", "max"
    )?;
    for name in row_names() {
        match g.rows.get(name) {
            Some(q) => writeln!(
                w,
                "  {:<18} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
                name,
                q.count,
                fmt_ms(q.min_us),
                fmt_ms(q.p50_us),
                fmt_ms(q.p90_us),
                fmt_ms(q.p99_us),
                fmt_ms(q.max_us)
            )?,
            None if all_rows => writeln!(w, "  {:<18} {:>8}", name, 0)?,
            None => {}
        }
    }
    if g.server_handshake_unmeasured > 0 {
        writeln!(
            w,
            "  ({} server handshakes without a readable SYN-ACK round trip)",
            g.server_handshake_unmeasured
        )?;
    }
    if g.client_handshake_unmeasured > 0 {
        writeln!(
            w,
            "  ({} client handshakes already under way when tracing started)",
            g.client_handshake_unmeasured
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group keys are names processes and users choose (a process's name, a cgroup's path):
    /// in the text summary their control characters show as `?`.
    #[test]
    fn text_group_keys_show_control_characters_as_question_marks() {
        let g = GroupSummary::of("a\nb\x1b[0m".to_owned(), &Stats::empty(2));
        let mut out = Vec::new();
        write_group(&mut out, &g, false).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        let first = text.lines().next().unwrap_or_default();
        assert!(first.starts_with("[a?b?[0m] connections 0"), "{text:?}");
        assert!(!text.contains('\x1b'), "{text:?}");
    }
    use crate::top::fixtures::{self, workload_names, workloads};

    #[test]
    fn workloads_group_a_pods_containers_with_bytes_and_close_wait() {
        let names = workload_names();
        let (p, snap) = workloads(&names);
        // At the snapshot's time: the ages of sockets in CLOSE_WAIT run to it.
        let now = snap.dashboard.as_ref().map_or(0, |d| d.now_ns);
        let s = Summary::of(&p, &Counters::default(), 5, &names, now);
        assert_eq!(
            s, snap.summary,
            "the snapshot's summary is the exit summary"
        );
        let g: Vec<(&str, u64, Option<Bytes>, Option<u64>)> = s
            .by_workload
            .iter()
            .map(|g| (g.key.as_str(), g.connections, g.bytes, g.close_wait_now))
            .collect();
        let pod = "k8s/burstable/9a8b7c6d-1234-4e5f-8a9b-0c1d2e3f4a5b";
        let bytes = |n| {
            Some(Bytes {
                connections: n,
                sent: 1000 * n,
                received: 200 * n,
            })
        };
        assert_eq!(
            g,
            vec![
                (pod, 5, bytes(5), Some(0)),
                ("docker/4f2c9a0b7e1d", 1, bytes(1), Some(0)),
                ("nginx.service", 0, None, Some(2)),
            ]
        );
        assert_eq!(s.by_workload[0].rows["handshake client"].count, 5);
        // Without names the same figures group by cgroup id, one group per cgroup.
        let bare = Summary::of(&p, &Counters::default(), 5, &Names::none(), 0);
        let keys: Vec<&str> = bare.by_workload.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(
            keys,
            ["cgroup 101", "cgroup 102", "cgroup 103", "cgroup 104"]
        );
        let mut text = Vec::new();
        s.write_text(&mut text).expect("text");
        insta::assert_snapshot!(String::from_utf8(text).expect("utf8"));
    }

    #[test]
    fn lost_events_are_split_into_ring_full_and_skipped_by_the_kernel() {
        let names = workload_names();
        let (p, _) = workloads(&names);
        let c = Counters {
            lost: 3,
            missed: 4,
            ..Counters::default()
        };
        let s = Summary::of(&p, &c, 5, &names, 0);
        assert_eq!((s.lost, s.lost_skipped), (7, 4));
        let mut text = Vec::new();
        s.write_text(&mut text).expect("text");
        let text = String::from_utf8(text).expect("utf8");
        assert!(
            text.contains(
                "7 events were lost (3 with the ring buffer full, 4 skipped by the kernel)"
            ),
            "{text}"
        );
        let v: serde_json::Value = serde_json::to_value(&s).expect("json");
        assert_eq!(
            (v["lost"].as_u64(), v["lost_skipped"].as_u64()),
            (Some(7), Some(4))
        );
        // Without loss the JSON keeps its old shape.
        let quiet = Summary::of(&p, &Counters::default(), 5, &names, 0);
        let v: serde_json::Value = serde_json::to_value(&quiet).expect("json");
        assert!(v.get("lost_skipped").is_none(), "{v}");
    }

    #[test]
    fn the_dashboard_groups_by_workload_with_rates_and_close_wait() {
        let names = workload_names();
        let (_, snap) = workloads(&names);
        let d = snap.dashboard.expect("dashboard");
        let t = &d.groups[WORKLOAD_DIMENSION];
        assert_eq!(t.dimension, "workload");
        let rows: Vec<(&str, u64, u64)> = t
            .rows
            .iter()
            .map(|r| (r.key.as_str(), r.connections, r.close_wait))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("k8s/burstable/9a8b7c6d-1234-4e5f-8a9b-0c1d2e3f4a5b", 5, 0),
                ("docker/4f2c9a0b7e1d", 1, 0),
                ("nginx.service", 0, 2),
            ]
        );
        assert!(t.rows[0].conns_per_s > 0.0, "{:?}", t.rows[0]);
        // The median of 0.5, 0.5, 1, 1 and 1.5 ms, as a 2-digit HDR bucket holds it.
        assert_eq!(t.rows[0].handshake_p50_us, Some(1003));
        // A summary of fixtures without identities has no workload section.
        assert!(fixtures::busy().summary.by_workload.is_empty());
    }
}
