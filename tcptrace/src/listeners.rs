//! Listeners and TIME_WAIT from the socket table: the [`Sample`] value the sampler
//! (`sockdiag`) takes once a second per network namespace (TIME_WAIT in every fifth one by
//! default: `Sample::time_wait` is `None` in the others, and every TIME_WAIT figure is that of
//! the last sample that had it, never a 0 for one that did not), and the pure code that turns samples
//! (plus the SYN-ACK retransmit and listen-overflow drop events the kernel program reports)
//! into per-listener and per-namespace figures. Where the kernel reports no overflow drop
//! events (Linux 6.18 frees the overflowing ACK without one), the namespace's ListenOverflows
//! increase is inferred to the one listener seen full in each interval ([`attribute`]), kept
//! apart from the exact figure and labelled "inferred" wherever it is shown.
//!
//! Samples travel like events: timestamped on the kernel's clock (CLOCK_MONOTONIC), through
//! the pipeline to the sinks (so recordings carry them and `report` replays them) and into
//! [`Listeners`], which the aggregate owns. Nothing here does I/O or reads a clock.
//!
//! What the figures mean (the README's "Listeners and SYN floods" and "TIME_WAIT" say it for
//! users): a listener's accept queue is the number of fully established connections waiting
//! for `accept()` (inet_diag's `idiag_rqueue` on a LISTEN socket, `ss -lnt` Recv-Q); its limit
//! is the backlog the application asked for, capped by `net.core.somaxconn` (`idiag_wqueue`,
//! `ss` Send-Q); SYN_RECV is the number of request sockets (half-open connections) whose local
//! address is the listener's, at the instant of the sample. "max" is the largest value seen in
//! any sample of the period, not between samples. Namespace counters are the kernel's
//! `TcpExt` counters (`/proc/net/netstat`) of the listener's namespace: their increase between
//! the first and the last sample.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

/// Most listeners remembered (per run); further ones are counted, not kept.
pub const MAX_LISTENERS: usize = 256;
/// Most TIME_WAIT groups (remote ports, peers) a sample keeps per dimension; the rest are
/// the difference between the total and the groups' sum.
pub const MAX_TW_GROUPS: usize = 16;
/// Width of a TIME_WAIT remaining-time bucket, milliseconds.
pub const TW_BUCKET_MS: u32 = 5_000;
/// Buckets of remaining TIME_WAIT time: 0-5 s, 5-10 s, .., 55-60 s, then "more than 60 s".
pub const TW_BUCKETS: usize = 13;
/// Points kept per listener and per namespace for charts (one per sample: an hour at 1 s).
pub const MAX_POINTS: usize = 3600;

/// The `TcpExt` counters of one network namespace that tell of listener pressure, as
/// `/proc/net/netstat` gives them (absolute, since the namespace was created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netstat {
    /// The accept queue was full when a handshake completed (the final ACK was dropped).
    pub listen_overflows: u64,
    /// Handshake-completing segments dropped for any reason (includes the overflows).
    pub listen_drops: u64,
    /// SYN cookies sent (the SYN queue was full, or syncookies=2).
    pub syncookies_sent: u64,
    /// Valid SYN cookies received back (connections completed through a cookie).
    pub syncookies_recv: u64,
    /// Invalid SYN cookies received.
    pub syncookies_failed: u64,
    /// The request queue was full and a cookie was sent instead.
    pub req_q_full_do_cookies: u64,
    /// The request queue was full and the SYN was dropped (cookies off).
    pub req_q_full_drop: u64,
}

/// The `TcpExt` counters in the text of a `/proc/net/netstat` file (its first pair of
/// `TcpExt:` lines: names, then values), as (name, value); `None` without that section. A
/// value that does not parse reads as 0.
pub fn tcpext(text: &str) -> Option<impl Iterator<Item = (&str, u64)>> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let Some(values) = lines.next() else { break };
        if let (Some(n), Some(v)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) {
            return Some(
                n.split_whitespace()
                    .zip(v.split_whitespace())
                    .map(|(name, value)| (name, value.parse().unwrap_or(0))),
            );
        }
    }
    None
}

impl Netstat {
    /// The field names as `/proc/net/netstat` spells them, in the order of [`Netstat::values`].
    pub const NAMES: [&'static str; 7] = [
        "ListenOverflows",
        "ListenDrops",
        "SyncookiesSent",
        "SyncookiesRecv",
        "SyncookiesFailed",
        "TCPReqQFullDoCookies",
        "TCPReqQFullDrop",
    ];

    pub fn values(&self) -> [u64; 7] {
        [
            self.listen_overflows,
            self.listen_drops,
            self.syncookies_sent,
            self.syncookies_recv,
            self.syncookies_failed,
            self.req_q_full_do_cookies,
            self.req_q_full_drop,
        ]
    }

    fn from_values(v: [u64; 7]) -> Self {
        Self {
            listen_overflows: v[0],
            listen_drops: v[1],
            syncookies_sent: v[2],
            syncookies_recv: v[3],
            syncookies_failed: v[4],
            req_q_full_do_cookies: v[5],
            req_q_full_drop: v[6],
        }
    }

    /// Parses the text of a `/proc/net/netstat` file ([`tcpext`]). `None` when there is no
    /// `TcpExt` section; a counter the kernel does not have reads as 0.
    pub fn parse(text: &str) -> Option<Self> {
        let mut out = [0u64; 7];
        for (name, value) in tcpext(text)? {
            if let Some(i) = Self::NAMES.iter().position(|k| *k == name) {
                out[i] = value;
            }
        }
        Some(Self::from_values(out))
    }

    /// `self - earlier`, counter by counter (a counter that went backwards gives 0).
    pub fn since(&self, earlier: &Self) -> Self {
        let (a, b) = (self.values(), earlier.values());
        let mut d = [0u64; 7];
        for i in 0..7 {
            d[i] = a[i].saturating_sub(b[i]);
        }
        Self::from_values(d)
    }
}

/// One LISTEN socket at the instant of a sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSample {
    pub local: SocketAddr,
    /// Connections waiting for `accept()` (`idiag_rqueue`).
    pub accept_queue: u32,
    /// The accept queue's limit (`idiag_wqueue`: the listen() backlog capped by somaxconn).
    pub backlog: u32,
    /// Request sockets (SYN_RECV) for this listener's address and port.
    pub syn_recv: u32,
    /// The socket's inode (0 if the kernel gave none).
    pub inode: u64,
    /// The process holding the socket, when /proc showed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// That process's cgroup v2 path (`/system.slice/nginx.service`), when /proc showed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// The TIME_WAIT sockets of a namespace at the instant of a sample.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWaitSample {
    pub count: u32,
    /// The largest groups by remote port (at most [`MAX_TW_GROUPS`], largest first).
    pub by_remote_port: Vec<(u16, u32)>,
    /// The largest groups by peer address (at most [`MAX_TW_GROUPS`], largest first).
    pub by_peer: Vec<(IpAddr, u32)>,
    /// Remaining timer, in [`TW_BUCKETS`] buckets of [`TW_BUCKET_MS`] (the last: more).
    pub remaining: Vec<u32>,
    /// Shortest and longest remaining timer seen, milliseconds (0 when there are none).
    pub remaining_min_ms: u32,
    pub remaining_max_ms: u32,
}

impl TimeWaitSample {
    /// Builds the bounded view from every TIME_WAIT socket's (remote, remaining ms).
    pub fn of(socks: impl IntoIterator<Item = (SocketAddr, u32)>) -> Self {
        let mut ports: BTreeMap<u16, u32> = BTreeMap::new();
        let mut peers: BTreeMap<IpAddr, u32> = BTreeMap::new();
        let mut remaining = vec![0u32; TW_BUCKETS];
        let (mut count, mut min, mut max) = (0u32, u32::MAX, 0u32);
        for (remote, ms) in socks {
            count += 1;
            *ports.entry(remote.port()).or_default() += 1;
            *peers.entry(remote.ip()).or_default() += 1;
            let b = ((ms / TW_BUCKET_MS) as usize).min(TW_BUCKETS - 1);
            // Exactly 60 s still belongs to the last 5-s bucket, not to "more".
            let b = if ms == 60_000 { TW_BUCKETS - 2 } else { b };
            remaining[b] += 1;
            min = min.min(ms);
            max = max.max(ms);
        }
        Self {
            count,
            by_remote_port: largest(ports),
            by_peer: largest(peers),
            remaining,
            remaining_min_ms: if count == 0 { 0 } else { min },
            remaining_max_ms: max,
        }
    }
}

fn largest<K: Ord + Copy>(m: BTreeMap<K, u32>) -> Vec<(K, u32)> {
    let mut v: Vec<(K, u32)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(MAX_TW_GROUPS);
    v
}

/// One network namespace's socket table and counters at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// CLOCK_MONOTONIC nanoseconds, the clock kernel events are stamped with.
    pub ts_ns: u64,
    /// The namespace's inode number (`ls -l /proc/PID/ns/net` shows `net:[INODE]`).
    pub netns: u64,
    /// How it was found: "host", a `--netns` path, `/run/netns/NAME`, or `pid N`.
    pub netns_name: String,
    pub listeners: Vec<ListenerSample>,
    /// `None` when this sample did not dump TIME_WAIT sockets (it does so on its own, slower
    /// cadence: `--time-wait-interval`); recordings made before that always have it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_wait: Option<TimeWaitSample>,
    /// `None` when the namespace's `/proc/net/netstat` could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netstat: Option<Netstat>,
}

/// A listener's identity across samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    pub netns: u64,
    pub local: SocketAddr,
}

/// One point of a listener's history (for charts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerPoint {
    pub ts_ns: u64,
    pub accept_queue: u32,
    pub backlog: u32,
    pub syn_recv: u32,
    /// Overflow drops (kfree_skb) since the previous point.
    pub drops: u64,
    /// The namespace's ListenOverflows increase since the previous sample, when this listener
    /// was the only one seen full in that interval (see [`attribute`]): inferred, not exact.
    pub inferred_overflows: u64,
    /// The namespace's SyncookiesSent increase since the previous sample.
    pub cookies: u64,
}

/// What is known of one listener over the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListenerStats {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// `pid` and `comm` come from the listener's LISTEN transition, not from /proc: a later
    /// LISTEN (the server restarted) replaces them.
    pub named_by_listen: bool,
    /// The cgroup v2 path of the process /proc showed holding it, last sampled.
    pub cgroup: Option<String>,
    /// Its LISTEN transition came in this run while it was sampled (so it passed the run's
    /// socket filters in the kernel); kept after it closes.
    pub listened_in_run: bool,
    pub netns_name: String,
    pub backlog: u32,
    pub accept_now: u32,
    pub accept_max: u32,
    pub syn_recv_now: u32,
    pub syn_recv_max: u32,
    pub samples: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// SYN-ACKs retransmitted for connections to this listener (tcp:tcp_retransmit_synack).
    pub synack_retransmits: u64,
    /// Accept-queue overflow drops (skb:kfree_skb, reason TCP_LISTEN_OVERFLOW).
    pub overflow_drops: u64,
    /// Drops since the last point was taken.
    drops_pending: u64,
    /// The namespace's ListenOverflows / ListenDrops increases over the intervals in which
    /// this listener was the only one of its namespace seen full (see [`attribute`]). Inferred
    /// from counters, unlike `overflow_drops`, which the kernel reports drop by drop.
    pub inferred_overflows: u64,
    pub inferred_listen_drops: u64,
    pub history: Vec<ListenerPoint>,
}

/// One point of a namespace's TIME_WAIT history (one per sample that dumped TIME_WAIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimeWaitPoint {
    pub ts_ns: u64,
    pub count: u32,
}

/// What is known of one namespace over the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NsStats {
    pub name: String,
    pub first: Option<Netstat>,
    pub last: Option<Netstat>,
    pub samples: u64,
    /// The last sample that dumped TIME_WAIT sockets, and how many did.
    pub time_wait: TimeWaitSample,
    pub time_wait_samples: u64,
    pub time_wait_max: u32,
    /// Remaining-time buckets summed over every sample that dumped TIME_WAIT.
    pub remaining_total: Vec<u64>,
    /// TIME_WAIT sockets by remote port and by peer, the largest count seen in any sample.
    pub by_remote_port_max: BTreeMap<u16, u32>,
    pub by_peer_max: BTreeMap<IpAddr, u32>,
    pub history: Vec<TimeWaitPoint>,
    /// ListenOverflows / ListenDrops increases no single listener could be given: in their
    /// interval no listener, or more than one, was seen full (see [`attribute`]).
    pub unattributed_overflows: u64,
    pub unattributed_listen_drops: u64,
    /// The time of the namespace's latest sample (0 before the first).
    last_ts: u64,
}

impl NsStats {
    /// Takes in one sample's TIME_WAIT dump (samples without one change nothing).
    fn add_time_wait(&mut self, ts_ns: u64, tw: &TimeWaitSample) {
        self.time_wait_max = self.time_wait_max.max(tw.count);
        if self.remaining_total.len() < tw.remaining.len() {
            self.remaining_total.resize(tw.remaining.len(), 0);
        }
        for (t, n) in self.remaining_total.iter_mut().zip(&tw.remaining) {
            *t += u64::from(*n);
        }
        for (p, n) in &tw.by_remote_port {
            let e = self.by_remote_port_max.entry(*p).or_default();
            *e = (*e).max(*n);
        }
        for (p, n) in &tw.by_peer {
            let e = self.by_peer_max.entry(*p).or_default();
            *e = (*e).max(*n);
        }
        bound_map(&mut self.by_remote_port_max);
        bound_map(&mut self.by_peer_max);
        self.time_wait = tw.clone();
        self.time_wait_samples += 1;
        push_bounded(
            &mut self.history,
            TimeWaitPoint {
                ts_ns,
                count: tw.count,
            },
        );
    }
}

/// Per-listener and per-namespace figures from samples and listener events (pure).
#[derive(Clone, Debug, Default)]
pub struct Listeners {
    pub listeners: BTreeMap<ListenerKey, ListenerStats>,
    pub namespaces: BTreeMap<u64, NsStats>,
    /// Listeners not kept because [`MAX_LISTENERS`] were already.
    pub listeners_dropped: u64,
    /// Retransmits and drops that matched no sampled listener.
    pub unmatched_synack_retransmits: u64,
    pub unmatched_overflow_drops: u64,
    pub samples: u64,
    /// Who started each listener, from its LISTEN transition (the kernel program names the
    /// process that called listen()): the holder a sample could not find in /proc (a capless
    /// tracer may not read another root process's fds) is taken from here. Bounded like the
    /// listeners.
    pub started_by: BTreeMap<ListenerKey, (u32, String)>,
    /// The run's filter, when it narrows which listeners are shown (see
    /// [`Listeners::in_scope`]); `None` shows them all.
    pub scope: Option<crate::config::Filter>,
}

fn push_bounded<T>(v: &mut Vec<T>, x: T) {
    if v.len() >= MAX_POINTS {
        v.remove(0);
    }
    v.push(x);
}

/// Whether a listener bound to `listener` takes connections to `local` (same port, and the
/// same address, a wildcard, or the IPv4-mapped form of one another).
pub fn serves(listener: &SocketAddr, local: &SocketAddr) -> bool {
    if listener.port() != local.port() {
        return false;
    }
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    listener.ip().is_unspecified() || canon(listener.ip()) == canon(local.ip())
}

/// Whether a listener with this accept queue and limit is full: at or over its limit (the
/// kernel drops when the queue is over the limit, so a sample at the limit may miss the extra
/// one); a limit of 0 counts as 1, or an idle listener with `listen(fd, 0)` would look full.
pub fn is_full(accept_queue: u32, backlog: u32) -> bool {
    accept_queue >= backlog.max(1)
}

/// Which listener a namespace's ListenOverflows (and ListenDrops) increase over one sampling
/// interval belongs to: the one listener seen full in that interval (at either of the two
/// samples bounding it), if exactly one was; with none or several, nobody (the increase is
/// the namespace's "unattributed" figure). An inference from samples: a listener that filled
/// and drained between two samples is not seen, and the increase then goes unattributed.
pub fn attribute<K: Copy + PartialEq>(full: &[K]) -> Option<K> {
    match full {
        [one] => Some(*one),
        _ => None,
    }
}

impl Listeners {
    /// Takes one namespace's sample in.
    pub fn add_sample(&mut self, s: &Sample) {
        self.samples += 1;
        let ns = self.namespaces.entry(s.netns).or_default();
        ns.name.clone_from(&s.netns_name);
        ns.samples += 1;
        let prev_netstat = ns.last;
        if let Some(n) = s.netstat {
            if ns.first.is_none() {
                ns.first = Some(n);
            }
            ns.last = Some(n);
        }
        let delta = match (prev_netstat, s.netstat) {
            (Some(a), Some(b)) => b.since(&a),
            _ => Netstat::default(),
        };
        let cookies = delta.syncookies_sent;
        let prev_ts = std::mem::replace(&mut ns.last_ts, s.ts_ns);
        // Listeners seen full in the interval this sample closes: now, or at the previous
        // sample of the namespace (the one that opened it; the listener may be gone now).
        let first_key = ListenerKey {
            netns: s.netns,
            local: SocketAddr::new(IpAddr::from([0u8; 4]), 0),
        };
        let mut full: Vec<SocketAddr> = s
            .listeners
            .iter()
            .filter(|l| is_full(l.accept_queue, l.backlog))
            .map(|l| l.local)
            .chain(
                self.listeners
                    .range(first_key..)
                    .take_while(|(k, _)| k.netns == s.netns)
                    .filter(|(_, st)| {
                        prev_ts > 0 && st.last_ns == prev_ts && is_full(st.accept_now, st.backlog)
                    })
                    .map(|(k, _)| k.local),
            )
            .collect();
        full.sort();
        full.dedup();
        let owner = attribute(&full);
        match owner {
            None => {
                ns.unattributed_overflows += delta.listen_overflows;
                ns.unattributed_listen_drops += delta.listen_drops;
            }
            // Full at the previous sample and gone now: its figures grow, without a point.
            Some(o) if !s.listeners.iter().any(|l| l.local == o) => {
                if let Some(st) = self.listeners.get_mut(&ListenerKey {
                    netns: s.netns,
                    local: o,
                }) {
                    st.inferred_overflows += delta.listen_overflows;
                    st.inferred_listen_drops += delta.listen_drops;
                }
            }
            Some(_) => {}
        }
        if let Some(tw) = &s.time_wait {
            ns.add_time_wait(s.ts_ns, tw);
        }
        for l in &s.listeners {
            let key = ListenerKey {
                netns: s.netns,
                local: l.local,
            };
            if !self.listeners.contains_key(&key) && self.listeners.len() >= MAX_LISTENERS {
                self.listeners_dropped += 1;
                continue;
            }
            let st = self.listeners.entry(key).or_default();
            if st.samples == 0 {
                st.first_ns = s.ts_ns;
            }
            st.samples += 1;
            st.last_ns = s.ts_ns;
            st.netns_name.clone_from(&s.netns_name);
            st.listened_in_run |= self.started_by.contains_key(&key);
            if l.pid.is_some() {
                st.pid = l.pid;
                st.comm.clone_from(&l.comm);
                st.cgroup.clone_from(&l.cgroup);
                st.named_by_listen = false;
            } else if (st.pid.is_none() || st.named_by_listen)
                && let Some((pid, comm)) = self.started_by.get(&key)
            {
                st.pid = Some(*pid);
                st.comm = Some(comm.clone());
                st.named_by_listen = true;
            }
            st.backlog = l.backlog;
            st.accept_now = l.accept_queue;
            st.accept_max = st.accept_max.max(l.accept_queue);
            st.syn_recv_now = l.syn_recv;
            st.syn_recv_max = st.syn_recv_max.max(l.syn_recv);
            let drops = std::mem::take(&mut st.drops_pending);
            let inferred = if owner == Some(l.local) {
                st.inferred_overflows += delta.listen_overflows;
                st.inferred_listen_drops += delta.listen_drops;
                delta.listen_overflows
            } else {
                0
            };
            push_bounded(
                &mut st.history,
                ListenerPoint {
                    ts_ns: s.ts_ns,
                    accept_queue: l.accept_queue,
                    backlog: l.backlog,
                    syn_recv: l.syn_recv,
                    drops,
                    inferred_overflows: inferred,
                    cookies,
                },
            );
        }
    }

    /// The sampled listener that takes connections to `local`: an exact address before a
    /// wildcard; among namespaces, the first (events carry no namespace yet).
    fn find(&mut self, local: &SocketAddr) -> Option<&mut ListenerStats> {
        let key = self
            .listeners
            .keys()
            .find(|k| k.local == *local)
            .or_else(|| self.listeners.keys().find(|k| serves(&k.local, local)))
            .copied()?;
        self.listeners.get_mut(&key)
    }

    /// A listener started (a CLOSE -> LISTEN transition) by process `pid` named `comm`.
    pub fn started(&mut self, key: ListenerKey, pid: u32, comm: String) {
        if let Some(st) = self.listeners.get_mut(&key) {
            st.listened_in_run = true;
            if st.pid.is_none() || st.named_by_listen {
                st.pid = Some(pid);
                st.comm = Some(comm.clone());
                st.named_by_listen = true;
            }
        }
        if self.started_by.len() < MAX_LISTENERS || self.started_by.contains_key(&key) {
            self.started_by.insert(key, (pid, comm));
        }
    }

    /// A listener closed (LISTEN -> CLOSE): its starter is forgotten, so that short-lived
    /// listeners do not fill [`Listeners::started_by`].
    pub fn stopped(&mut self, key: &ListenerKey) {
        self.started_by.remove(key);
    }

    /// A SYN-ACK was retransmitted for a connection to `local`.
    pub fn synack_retransmit(&mut self, local: &SocketAddr) {
        match self.find(local) {
            Some(l) => l.synack_retransmits += 1,
            None => self.unmatched_synack_retransmits += 1,
        }
    }

    /// A handshake-completing packet to `local` was dropped: the accept queue was full.
    pub fn overflow_drop(&mut self, local: &SocketAddr) {
        match self.find(local) {
            Some(l) => {
                l.overflow_drops += 1;
                l.drops_pending += 1;
            }
            None => self.unmatched_overflow_drops += 1,
        }
    }

    /// Shows only the listeners `filter` traces (see [`Listeners::in_scope`]; a filter
    /// that narrows nothing there shows them all).
    pub fn set_scope(&mut self, filter: &crate::config::Filter) {
        self.scope = Some(filter.clone());
    }

    /// Whether a listener is one the run's filter traces: its family and local port as
    /// its LISTEN transition has them (which a remote-port filter never passes: a
    /// listener has no remote port), its network namespace for `--netns`, its holder for
    /// `--pid` and `--comm` (an unknown holder does not pass), and for `--cgroup` its
    /// holder's cgroup (the cgroup or below it), or else a LISTEN transition in this run
    /// (which the kernel passed only for a socket of the cgroup). The samples themselves
    /// keep every listener, so a namespace's overflows are still matched to the one
    /// listener seen full among all of them.
    pub fn in_scope(&self, key: &ListenerKey, l: &ListenerStats) -> bool {
        let Some(f) = &self.scope else {
            return true;
        };
        let any: std::net::IpAddr = if key.local.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        f.matches(key.local, SocketAddr::new(any, 0))
            && (f.netns.is_empty() || f.netns.iter().any(|n| u64::from(*n) == key.netns))
            && f.pid.is_none_or(|p| l.pid == Some(p))
            && f.comm
                .as_deref()
                .is_none_or(|c| l.comm.as_deref() == Some(c))
            && f.cgroup.as_ref().is_none_or(|c| {
                !c.narrows()
                    || l.listened_in_run
                    || self.started_by.contains_key(key)
                    || l.cgroup.as_deref().is_some_and(|p| c.holds(p))
            })
    }

    /// The summary view (`listeners` in the summary and its JSON).
    pub fn summary(&self) -> ListenersSummary {
        let namespaces = self
            .namespaces
            .iter()
            .map(|(inode, ns)| {
                let delta = match (ns.first, ns.last) {
                    (Some(a), Some(b)) => Some(b.since(&a)),
                    _ => None,
                };
                NsSummary {
                    netns: *inode,
                    name: ns.name.clone(),
                    samples: ns.samples,
                    counters_delta: delta,
                    unattributed_overflows: ns.unattributed_overflows,
                    unattributed_listen_drops: ns.unattributed_listen_drops,
                    time_wait: TimeWaitSummary {
                        samples: ns.time_wait_samples,
                        now: ns.time_wait.count,
                        max: ns.time_wait_max,
                        by_remote_port: largest_u(&ns.by_remote_port_max),
                        by_peer: largest_u(&ns.by_peer_max)
                            .into_iter()
                            .map(|(ip, n)| (ip.to_string(), n))
                            .collect(),
                        remaining_now: ns.time_wait.remaining.clone(),
                        remaining_all_samples: ns.remaining_total.clone(),
                        remaining_min_ms_now: ns.time_wait.remaining_min_ms,
                        remaining_max_ms_now: ns.time_wait.remaining_max_ms,
                    },
                }
            })
            .collect();
        let listeners = self
            .listeners
            .iter()
            .filter(|(k, l)| self.in_scope(k, l))
            .map(|(k, l)| ListenerSummary {
                netns: k.netns,
                netns_name: l.netns_name.clone(),
                address: k.local.ip().to_string(),
                port: k.local.port(),
                pid: l.pid,
                comm: l.comm.clone(),
                accept_queue_now: l.accept_now,
                accept_queue_max: l.accept_max,
                backlog: l.backlog,
                syn_recv_now: l.syn_recv_now,
                syn_recv_max: l.syn_recv_max,
                synack_retransmits: l.synack_retransmits,
                overflow_drops: l.overflow_drops,
                inferred_overflows: l.inferred_overflows,
                inferred_listen_drops: l.inferred_listen_drops,
                samples: l.samples,
            })
            .collect();
        ListenersSummary {
            samples: self.samples,
            namespaces,
            listeners,
            listeners_not_kept: self.listeners_dropped,
            unmatched_synack_retransmits: self.unmatched_synack_retransmits,
            unmatched_overflow_drops: self.unmatched_overflow_drops,
        }
    }
}

/// Keeps the [`MAX_TW_GROUPS`] * 4 largest entries of a per-group maximum map.
fn bound_map<K: Ord + Copy>(m: &mut BTreeMap<K, u32>) {
    let cap = MAX_TW_GROUPS * 4;
    if m.len() > cap {
        let keep: BTreeMap<K, u32> = largest_u(m).into_iter().take(cap).collect();
        *m = keep;
    }
}

fn largest_u<K: Ord + Copy>(m: &BTreeMap<K, u32>) -> Vec<(K, u32)> {
    let mut v: Vec<(K, u32)> = m.iter().map(|(k, n)| (*k, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(MAX_TW_GROUPS);
    v
}

/// One listener in the summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerSummary {
    pub netns: u64,
    pub netns_name: String,
    pub address: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub accept_queue_now: u32,
    pub accept_queue_max: u32,
    pub backlog: u32,
    pub syn_recv_now: u32,
    pub syn_recv_max: u32,
    pub synack_retransmits: u64,
    /// Accept-queue overflow drops the kernel reported one by one (skb:kfree_skb, reason
    /// TCP_LISTEN_OVERFLOW): exact, but 0 where the kernel does not fire it on this path.
    pub overflow_drops: u64,
    /// The namespace's ListenOverflows / ListenDrops increases over the intervals in which
    /// this listener was the only one seen full: inferred from counters (see [`attribute`]).
    pub inferred_overflows: u64,
    pub inferred_listen_drops: u64,
    pub samples: u64,
}

/// TIME_WAIT of one namespace in the summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimeWaitSummary {
    /// Samples that dumped TIME_WAIT sockets (every `--time-wait-interval`); the figures
    /// below come from them only (0: none did, and the figures say nothing).
    pub samples: u64,
    /// Sockets in TIME_WAIT at the last sample that dumped them.
    pub now: u32,
    /// The most seen in one sample.
    pub max: u32,
    /// Largest groups: the most TIME_WAIT sockets one remote port (peer) had in one sample.
    pub by_remote_port: Vec<(u16, u32)>,
    pub by_peer: Vec<(String, u32)>,
    /// Remaining timer at that sample, in 5-second buckets (0-5 s first; the 13th is
    /// "more than 60 s").
    pub remaining_now: Vec<u32>,
    /// The same buckets summed over every TIME_WAIT sample (a socket counts once per sample
    /// it was in).
    pub remaining_all_samples: Vec<u64>,
    pub remaining_min_ms_now: u32,
    pub remaining_max_ms_now: u32,
}

/// One namespace in the summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NsSummary {
    pub netns: u64,
    pub name: String,
    pub samples: u64,
    /// Counter increase from the first to the last sample (`None`: netstat unreadable).
    pub counters_delta: Option<Netstat>,
    /// The part of the ListenOverflows / ListenDrops increase given to no listener (no
    /// listener, or several, were seen full in its interval).
    pub unattributed_overflows: u64,
    pub unattributed_listen_drops: u64,
    pub time_wait: TimeWaitSummary,
}

/// The `listeners` section of the summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ListenersSummary {
    /// Namespace samples taken (0: the sampler was off, or an old recording).
    pub samples: u64,
    pub namespaces: Vec<NsSummary>,
    pub listeners: Vec<ListenerSummary>,
    pub listeners_not_kept: u64,
    pub unmatched_synack_retransmits: u64,
    pub unmatched_overflow_drops: u64,
}

impl ListenersSummary {
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// The text section of the exit summary.
    pub fn write_text(&self, w: &mut impl io::Write) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        writeln!(
            w,
            "listeners (socket table sampled {} times; accept queue and SYN_RECV now/max of samples):",
            self.samples
        )?;
        for l in &self.listeners {
            let owner = match (&l.comm, l.pid) {
                (Some(c), Some(p)) => format!("{}/{p}", crate::decode::printable(c)),
                _ => "?".to_owned(),
            };
            let addr = SocketAddr::new(
                l.address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                l.port,
            );
            writeln!(
                w,
                "  {addr:<26} {owner:<20} netns {:<16} accept {}/{} (max {}) syn_recv {} (max {}) synack_rtx {} overflow_drops {} overflows_inferred {} listen_drops_inferred {}",
                l.netns_name,
                l.accept_queue_now,
                l.backlog,
                l.accept_queue_max,
                l.syn_recv_now,
                l.syn_recv_max,
                l.synack_retransmits,
                l.overflow_drops,
                l.inferred_overflows,
                l.inferred_listen_drops
            )?;
        }
        if self.listeners_not_kept > 0 {
            writeln!(w, "  ({} more listeners not kept)", self.listeners_not_kept)?;
        }
        for ns in &self.namespaces {
            match &ns.counters_delta {
                Some(d) => writeln!(
                    w,
                    "  netns {} ({}): ListenOverflows +{} ListenDrops +{} SyncookiesSent +{} SyncookiesRecv +{} SyncookiesFailed +{} TCPReqQFullDoCookies +{} TCPReqQFullDrop +{}",
                    ns.name,
                    ns.netns,
                    d.listen_overflows,
                    d.listen_drops,
                    d.syncookies_sent,
                    d.syncookies_recv,
                    d.syncookies_failed,
                    d.req_q_full_do_cookies,
                    d.req_q_full_drop
                )?,
                None => writeln!(w, "  netns {} ({}): counters unreadable", ns.name, ns.netns)?,
            }
            if ns.unattributed_overflows + ns.unattributed_listen_drops > 0 {
                writeln!(
                    w,
                    "    not inferred to one listener (none or several seen full): ListenOverflows {} ListenDrops {}",
                    ns.unattributed_overflows, ns.unattributed_listen_drops
                )?;
            }
            let tw = &ns.time_wait;
            let groups = |v: &[(String, u32)]| {
                v.iter()
                    .take(5)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let ports: Vec<(String, u32)> = tw
                .by_remote_port
                .iter()
                .map(|(p, n)| (p.to_string(), *n))
                .collect();
            if tw.samples == 0 {
                writeln!(w, "    TIME_WAIT not sampled")?;
                continue;
            }
            writeln!(
                w,
                "    TIME_WAIT now {} max {} ({} TIME_WAIT samples); remaining now {:.1}-{:.1} s; by remote port: {}; by peer: {}",
                tw.now,
                tw.max,
                tw.samples,
                f64::from(tw.remaining_min_ms_now) / 1000.0,
                f64::from(tw.remaining_max_ms_now) / 1000.0,
                if ports.is_empty() {
                    "-".to_owned()
                } else {
                    groups(&ports)
                },
                if tw.by_peer.is_empty() {
                    "-".to_owned()
                } else {
                    groups(&tw.by_peer)
                },
            )?;
        }
        if self.unmatched_synack_retransmits + self.unmatched_overflow_drops > 0 {
            writeln!(
                w,
                "  not matched to a sampled listener: {} SYN-ACK retransmits, {} overflow drops",
                self.unmatched_synack_retransmits, self.unmatched_overflow_drops
            )?;
        }
        Ok(())
    }
}

/// A line the stream prints when a listener comes under pressure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub ts_ns: u64,
    /// "listen_overflow" or "syncookies".
    pub what: &'static str,
    pub netns: String,
    pub local: SocketAddr,
    pub accept_queue: u32,
    pub backlog: u32,
    pub syn_recv: u32,
    /// The namespace's ListenOverflows (or SyncookiesSent) increase since the last sample;
    /// for "listen_overflow", inferred to this listener (the only one seen full).
    pub delta: u64,
}

/// Least time between two alerts of the same kind for the same listener.
pub const ALERT_EVERY_NS: u64 = 10_000_000_000;

/// Decides when a sample deserves an alert line: a namespace whose ListenOverflows grew since
/// its previous sample names the listener that increase is inferred to belong to (the only
/// one seen full, by [`attribute`]; none, no line); one whose SyncookiesSent grew names the
/// listener with the most SYN_RECV; the same listener and kind at most once per
/// [`ALERT_EVERY_NS`].
#[derive(Default)]
pub struct Alerts {
    last: BTreeMap<u64, Netstat>,
    /// Listeners seen full at each namespace's previous sample.
    full: BTreeMap<u64, Vec<ListenerSample>>,
    said: BTreeMap<(&'static str, ListenerKey), u64>,
}

impl Alerts {
    pub fn check(&mut self, s: &Sample, out: &mut Vec<Alert>) {
        let full_now: Vec<ListenerSample> = s
            .listeners
            .iter()
            .filter(|l| is_full(l.accept_queue, l.backlog))
            .cloned()
            .collect();
        let full_before = self.full.insert(s.netns, full_now).unwrap_or_default();
        let Some(now) = s.netstat else { return };
        let Some(prev) = self.last.insert(s.netns, now) else {
            return;
        };
        let d = now.since(&prev);
        let mut full: Vec<SocketAddr> = s
            .listeners
            .iter()
            .filter(|l| is_full(l.accept_queue, l.backlog))
            .chain(&full_before)
            .map(|l| l.local)
            .collect();
        full.sort();
        full.dedup();
        let owner = attribute(&full);
        // As it is now, or as it was last seen (full) if it has gone since.
        let fullest = s
            .listeners
            .iter()
            .chain(&full_before)
            .find(|l| Some(l.local) == owner);
        let busiest = s.listeners.iter().max_by_key(|l| l.syn_recv);
        for (what, delta, l) in [
            ("listen_overflow", d.listen_overflows, fullest),
            ("syncookies", d.syncookies_sent, busiest),
        ] {
            let Some(l) = l else { continue };
            if delta == 0 {
                continue;
            }
            let key = (
                what,
                ListenerKey {
                    netns: s.netns,
                    local: l.local,
                },
            );
            if let Some(t) = self.said.get(&key)
                && s.ts_ns.saturating_sub(*t) < ALERT_EVERY_NS
            {
                continue;
            }
            self.said.insert(key, s.ts_ns);
            out.push(Alert {
                ts_ns: s.ts_ns,
                what,
                netns: s.netns_name.clone(),
                local: l.local,
                accept_queue: l.accept_queue,
                backlog: l.backlog,
                syn_recv: l.syn_recv,
                delta,
            });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn listener(addr: &str, q: u32, backlog: u32, syn_recv: u32) -> ListenerSample {
        ListenerSample {
            local: addr.parse().expect("addr"),
            accept_queue: q,
            backlog,
            syn_recv,
            inode: 7,
            pid: Some(42),
            comm: Some("server".to_owned()),
            cgroup: Some("/system.slice/server.service".to_owned()),
        }
    }

    pub(crate) fn sample(ts_s: u64, listeners: Vec<ListenerSample>, n: Netstat) -> Sample {
        Sample {
            ts_ns: ts_s * 1_000_000_000,
            netns: 4026531840,
            netns_name: "host".to_owned(),
            listeners,
            time_wait: Some(TimeWaitSample::of([
                ("10.0.0.2:80".parse().expect("addr"), 59_000),
                ("10.0.0.2:80".parse().expect("addr"), 3_000),
                ("10.0.0.3:443".parse().expect("addr"), 60_000),
            ])),
            netstat: Some(n),
        }
    }

    /// A sample as recordings made before `--time-wait-interval` carry it (every sample had
    /// its TIME_WAIT), in the shape serde wrote it then.
    pub(crate) const OLD_SAMPLE_JSON: &str = r#"{"ts_ns":2000000000,"netns":4026531840,"netns_name":"host","listeners":[{"local":"10.0.0.1:8080","accept_queue":1,"backlog":4,"syn_recv":0,"inode":7,"pid":42,"comm":"server"}],"time_wait":{"count":2,"by_remote_port":[[80,2]],"by_peer":[["10.0.0.2",2]],"remaining":[1,0,0,0,0,0,0,0,0,0,0,1,0],"remaining_min_ms":3000,"remaining_max_ms":59000},"netstat":{"listen_overflows":1,"listen_drops":1,"syncookies_sent":0,"syncookies_recv":0,"syncookies_failed":0,"req_q_full_do_cookies":0,"req_q_full_drop":0}}"#;

    #[test]
    fn old_samples_read_with_their_time_wait_and_a_missing_one_is_left_out() {
        let old: Sample = serde_json::from_str(OLD_SAMPLE_JSON).expect("an old sample reads");
        let tw = old.time_wait.as_ref().expect("its TIME_WAIT");
        assert_eq!((tw.count, tw.remaining_min_ms), (2, 3_000));
        assert_eq!(old.listeners[0].backlog, 4);
        let mut none = old.clone();
        none.time_wait = None;
        let json = serde_json::to_string(&none).expect("json");
        assert!(!json.contains("time_wait"), "{json}");
        assert_eq!(serde_json::from_str::<Sample>(&json).expect("reads"), none);
        let back: Sample =
            serde_json::from_str(&serde_json::to_string(&old).expect("json")).expect("reads");
        assert_eq!(back, old);
    }

    #[test]
    fn a_sample_without_time_wait_leaves_the_time_wait_figures_as_the_last_one_had_them() {
        let n = Netstat::default();
        let mut l = Listeners::default();
        l.add_sample(&sample(1, vec![listener("10.0.0.1:80", 0, 8, 0)], n));
        let before = l.summary().namespaces[0].time_wait.clone();
        assert_eq!((before.samples, before.now, before.max), (1, 3, 3));
        let mut s = sample(2, vec![listener("10.0.0.1:80", 5, 8, 0)], n);
        s.time_wait = None;
        l.add_sample(&s);
        let sum = l.summary();
        let ns = &sum.namespaces[0];
        assert_eq!(ns.samples, 2, "the sample counts for the namespace");
        assert_eq!(
            ns.time_wait, before,
            "not a 0 in TIME_WAIT, not a second sample"
        );
        assert_eq!(sum.listeners[0].accept_queue_now, 5, "its listeners count");
        let stats = &l.namespaces.values().next().expect("ns");
        assert_eq!(
            stats.history.len(),
            1,
            "no chart point for a sample without it"
        );
        // The next sample with TIME_WAIT (here none left) replaces it.
        let mut s = sample(3, Vec::new(), n);
        s.time_wait = Some(TimeWaitSample::of([]));
        l.add_sample(&s);
        let tw = &l.summary().namespaces[0].time_wait;
        assert_eq!((tw.samples, tw.now, tw.max), (2, 0, 3));
        assert_eq!(tw.remaining_all_samples.iter().sum::<u64>(), 3);
        // A namespace none of whose samples had TIME_WAIT says so.
        let mut l = Listeners::default();
        let mut s = sample(1, Vec::new(), n);
        s.time_wait = None;
        l.add_sample(&s);
        let sum = l.summary();
        assert_eq!(sum.namespaces[0].time_wait.samples, 0);
        let mut text = Vec::new();
        sum.write_text(&mut text).expect("text");
        let text = String::from_utf8(text).expect("utf8");
        assert!(text.contains("TIME_WAIT not sampled"), "{text}");
    }

    #[test]
    fn netstat_parses_the_tcpext_pair_and_ignores_the_rest() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed ListenOverflows ListenDrops TCPReqQFullDoCookies TCPReqQFullDrop Other\n\
                    TcpExt: 5 4 3 10 11 2 1 99\n\
                    IpExt: InNoRoutes ListenOverflows\n\
                    IpExt: 1 77\n";
        let n = Netstat::parse(text).expect("parses");
        assert_eq!(
            n,
            Netstat {
                listen_overflows: 10,
                listen_drops: 11,
                syncookies_sent: 5,
                syncookies_recv: 4,
                syncookies_failed: 3,
                req_q_full_do_cookies: 2,
                req_q_full_drop: 1,
            }
        );
        assert_eq!(Netstat::parse("IpExt: A\nIpExt: 1\n"), None);
        assert_eq!(Netstat::parse(""), None);
        // A counter this kernel lacks reads 0; a garbled value too.
        let n = Netstat::parse("TcpExt: ListenOverflows SyncookiesSent\nTcpExt: x 3\n")
            .expect("parses");
        assert_eq!((n.listen_overflows, n.syncookies_sent), (0, 3));
    }

    #[test]
    fn time_wait_buckets_bound_groups_and_keep_extremes() {
        let tw = TimeWaitSample::of((0..40u16).map(|i| {
            (
                SocketAddr::new([10, 0, 0, (i % 20) as u8].into(), 1000 + i),
                u32::from(i) * 1_600,
            )
        }));
        assert_eq!(tw.count, 40);
        assert_eq!(tw.by_remote_port.len(), MAX_TW_GROUPS);
        assert_eq!(tw.by_peer.len(), MAX_TW_GROUPS);
        assert_eq!(tw.by_peer[0].1, 2);
        assert_eq!(tw.remaining.iter().sum::<u32>(), 40);
        assert_eq!((tw.remaining_min_ms, tw.remaining_max_ms), (0, 39 * 1_600));
        // 39 * 1.6 s = 62.4 s lands in "more than 60 s"; exactly 60 s does not.
        assert_eq!(tw.remaining[TW_BUCKETS - 1], 2);
        let sixty = TimeWaitSample::of([("10.0.0.1:1".parse().expect("addr"), 60_000)]);
        assert_eq!(sixty.remaining[TW_BUCKETS - 2], 1);
        assert_eq!(TimeWaitSample::of([]).remaining_min_ms, 0);
    }

    /// A listener whose holder /proc does not show (a capless tracer, another root process)
    /// is named after the process its LISTEN transition named, whichever comes first; one
    /// /proc does show keeps that.
    #[test]
    fn a_listener_without_a_holder_in_proc_is_named_after_its_listen_transition() {
        let owner = |l: &Listeners, port: u16| {
            let s = l.summary();
            let x = s
                .listeners
                .iter()
                .find(|x| x.port == port)
                .expect("listener");
            (x.pid, x.comm.clone())
        };
        let unnamed = |addr| ListenerSample {
            pid: None,
            comm: None,
            ..listener(addr, 0, 8, 0)
        };
        let key = |addr: &str| ListenerKey {
            netns: 4026531840,
            local: addr.parse().expect("addr"),
        };
        let mut l = Listeners::default();
        // Transition first, then samples.
        l.started(key("10.0.0.1:8080"), 7, "web".to_owned());
        l.add_sample(&sample(
            1,
            vec![unnamed("10.0.0.1:8080")],
            Netstat::default(),
        ));
        // Sample first, then the transition.
        l.add_sample(&sample(
            2,
            vec![unnamed("10.0.0.1:9090")],
            Netstat::default(),
        ));
        l.started(key("10.0.0.1:9090"), 8, "api".to_owned());
        // /proc's holder stays.
        l.started(key("10.0.0.1:7070"), 9, "old".to_owned());
        l.add_sample(&sample(
            3,
            vec![listener("10.0.0.1:7070", 0, 8, 0)],
            Netstat::default(),
        ));
        assert_eq!(owner(&l, 8080), (Some(7), Some("web".to_owned())));
        assert_eq!(owner(&l, 9090), (Some(8), Some("api".to_owned())));
        assert_eq!(owner(&l, 7070), (Some(42), Some("server".to_owned())));
        // A restarted server is named after its new process; a closed listener's starter is
        // forgotten; /proc's holder is not replaced by a LISTEN.
        l.stopped(&key("10.0.0.1:8080"));
        assert!(!l.started_by.contains_key(&key("10.0.0.1:8080")));
        l.started(key("10.0.0.1:8080"), 17, "web2".to_owned());
        l.started(key("10.0.0.1:7070"), 19, "new".to_owned());
        assert_eq!(owner(&l, 8080), (Some(17), Some("web2".to_owned())));
        assert_eq!(owner(&l, 7070), (Some(42), Some("server".to_owned())));
    }

    #[test]
    fn a_filter_shows_only_the_listeners_it_traces_and_keeps_overflows_matched_as_before() {
        let mut other = listener("10.0.0.1:9000", 0, 8, 0);
        other.pid = Some(7);
        other.comm = Some("other".to_owned());
        other.cgroup = Some("/user.slice/other.service".to_owned());
        let all = vec![
            listener("10.0.0.1:80", 0, 8, 0),
            listener("[::]:443", 0, 8, 0),
            other,
            // Full, as is :80 at the second sample: two full, so no overflow is matched.
            listener("10.0.0.1:8080", 8, 8, 0),
        ];
        let n0 = Netstat::default();
        let n1 = Netstat {
            listen_overflows: 5,
            ..n0
        };
        let mut second = all.clone();
        second[0].accept_queue = 8;
        let shown = |f: Filter| -> (Vec<u16>, u64) {
            let mut l = Listeners::default();
            l.set_scope(&f);
            l.add_sample(&sample(1, all.clone(), n0));
            l.add_sample(&sample(2, second.clone(), n1));
            let s = l.summary();
            let inferred = s.listeners.iter().map(|x| x.inferred_overflows).sum();
            (s.listeners.iter().map(|x| x.port).collect(), inferred)
        };
        use crate::config::Filter;
        assert_eq!(shown(Filter::default()), (vec![80, 8080, 9000, 443], 0));
        let port = |ports: Vec<u16>| Filter {
            ports,
            ..Filter::default()
        };
        // :8080 is filtered out but still seen full: the overflows stay unmatched.
        assert_eq!(shown(port(vec![80])), (vec![80], 0));
        assert_eq!(
            shown(Filter {
                lports: vec![443, 9000],
                ..Filter::default()
            }),
            (vec![9000, 443], 0)
        );
        // A listener has no remote port.
        assert_eq!(
            shown(Filter {
                rports: vec![80],
                ..Filter::default()
            }),
            (vec![], 0)
        );
        assert_eq!(
            shown(Filter {
                ipv6_only: true,
                ..Filter::default()
            }),
            (vec![443], 0)
        );
        assert_eq!(
            shown(Filter {
                pid: Some(7),
                ..Filter::default()
            }),
            (vec![9000], 0)
        );
        assert_eq!(
            shown(Filter {
                comm: Some("server".to_owned()),
                ..Filter::default()
            }),
            (vec![80, 8080, 443], 0)
        );
        assert_eq!(
            shown(Filter {
                netns: vec![12345],
                ..Filter::default()
            }),
            (vec![], 0)
        );
        let cgroup = |below: &str| Filter {
            cgroup: Some(crate::config::CgroupFilter {
                path: format!("/sys/fs/cgroup{below}").into(),
                id: 1,
                level: 1,
                below: below.to_owned(),
            }),
            ..Filter::default()
        };
        // :9000's holder is in another cgroup.
        assert_eq!(shown(cgroup("/system.slice")), (vec![80, 8080, 443], 0));
        assert_eq!(
            shown(cgroup("/system.slice/server.service")),
            (vec![80, 8080, 443], 0)
        );
        assert_eq!(shown(cgroup("/system.slice/server")), (vec![], 0));
        assert_eq!(shown(cgroup("/user.slice")), (vec![9000], 0));
        // A filter from a recording made before filters kept their path below the mount
        // narrows nothing, nor does the root cgroup: not even listeners whose holder's
        // cgroup is unknown (as in such a recording's samples).
        assert_eq!(shown(cgroup("")), (vec![80, 8080, 9000, 443], 0));
        assert_eq!(shown(cgroup("/")), (vec![80, 8080, 9000, 443], 0));
        let mut unknown = listener("10.0.0.1:7000", 0, 8, 0);
        unknown.cgroup = None;
        let mut l = Listeners::default();
        l.set_scope(&cgroup(""));
        l.add_sample(&sample(1, vec![unknown.clone()], n0));
        assert_eq!(l.summary().listeners.len(), 1);
        let mut l = Listeners::default();
        l.set_scope(&cgroup("/system.slice"));
        l.add_sample(&sample(1, vec![unknown], n0));
        assert_eq!(l.summary().listeners.len(), 0);
    }

    #[test]
    fn a_listener_started_in_the_run_is_in_its_cgroup_filter() {
        use crate::config::{CgroupFilter, Filter};
        let mut l = Listeners::default();
        l.set_scope(&Filter {
            cgroup: Some(CgroupFilter {
                path: "/sys/fs/cgroup/user.slice".into(),
                id: 1,
                level: 1,
                below: "/user.slice".to_owned(),
            }),
            ..Filter::default()
        });
        let mut unheld = listener("10.0.0.1:80", 0, 8, 0);
        (unheld.pid, unheld.comm, unheld.cgroup) = (None, None, None);
        let key = ListenerKey {
            netns: 4026531840,
            local: "10.0.0.1:80".parse().expect("addr"),
        };
        l.started(key, 9, "web".to_owned());
        let both = vec![unheld, listener("10.0.0.1:81", 0, 8, 0)];
        l.add_sample(&sample(1, both.clone(), Netstat::default()));
        let ports =
            |l: &Listeners| -> Vec<u16> { l.summary().listeners.iter().map(|x| x.port).collect() };
        assert_eq!(ports(&l), vec![80]);
        // Still after it closed (its starter is forgotten then).
        l.stopped(&key);
        l.add_sample(&sample(2, both[1..].to_vec(), Netstat::default()));
        assert_eq!(ports(&l), vec![80]);
    }

    #[test]
    fn listener_figures_are_now_max_and_counter_deltas() {
        let mut l = Listeners::default();
        let n0 = Netstat {
            listen_overflows: 100,
            syncookies_sent: 7,
            ..Netstat::default()
        };
        let n1 = Netstat {
            listen_overflows: 105,
            syncookies_sent: 9,
            ..n0
        };
        l.add_sample(&sample(1, vec![listener("10.0.0.1:8080", 2, 1, 5)], n0));
        l.overflow_drop(&"10.0.0.1:8080".parse().expect("addr"));
        l.synack_retransmit(&"10.0.0.1:8080".parse().expect("addr"));
        l.synack_retransmit(&"10.9.9.9:1".parse().expect("addr"));
        l.add_sample(&sample(2, vec![listener("10.0.0.1:8080", 0, 1, 1)], n1));
        let s = l.summary();
        assert_eq!(s.samples, 2);
        let x = &s.listeners[0];
        assert_eq!(
            (x.accept_queue_now, x.accept_queue_max, x.backlog),
            (0, 2, 1)
        );
        assert_eq!((x.syn_recv_now, x.syn_recv_max), (1, 5));
        assert_eq!((x.overflow_drops, x.synack_retransmits), (1, 1));
        assert_eq!(s.unmatched_synack_retransmits, 1);
        let d = s.namespaces[0].counters_delta.expect("delta");
        assert_eq!((d.listen_overflows, d.syncookies_sent), (5, 2));
        assert_eq!(s.namespaces[0].time_wait.now, 3);
        // The drop lands in the second point's interval, with the cookies sent in it.
        let hist = &l.listeners.values().next().expect("listener").history;
        assert_eq!((hist[1].drops, hist[1].cookies), (1, 2));
        let mut text = Vec::new();
        s.write_text(&mut text).expect("text");
        let text = String::from_utf8(text).expect("utf8");
        assert!(
            text.contains("accept 0/1 (max 2) syn_recv 1 (max 5)"),
            "{text}"
        );
        assert!(text.contains("ListenOverflows +5"), "{text}");
    }

    #[test]
    fn overflows_go_to_the_one_listener_seen_full_and_otherwise_to_no_one() {
        let n = |o: u64, d: u64| Netstat {
            listen_overflows: o,
            listen_drops: d,
            ..Netstat::default()
        };
        let mut l = Listeners::default();
        let a = "10.0.0.1:80";
        let b = "10.0.0.1:81";
        // 1 s: nothing to compare with yet; a is full.
        l.add_sample(&sample(
            1,
            vec![listener(a, 2, 1, 0), listener(b, 0, 8, 0)],
            n(0, 0),
        ));
        // 2 s: a full (now and before) is the only one: it gets +5 / +6.
        l.add_sample(&sample(
            2,
            vec![listener(a, 1, 1, 0), listener(b, 0, 8, 0)],
            n(5, 6),
        ));
        // 3 s: a drained, but it was full at the interval's start: still a's (+1 / +1).
        l.add_sample(&sample(
            3,
            vec![listener(a, 0, 1, 0), listener(b, 3, 8, 0)],
            n(6, 7),
        ));
        // 4 s: nobody full at either end: +2 / +4 to no one.
        l.add_sample(&sample(
            4,
            vec![listener(a, 0, 1, 0), listener(b, 3, 8, 0)],
            n(8, 11),
        ));
        // 5 s: both full: +10 / +10 to no one.
        l.add_sample(&sample(
            5,
            vec![listener(a, 1, 1, 0), listener(b, 8, 8, 0)],
            n(18, 21),
        ));
        let s = l.summary();
        let by_port = |p: u16| s.listeners.iter().find(|x| x.port == p).expect("listener");
        assert_eq!(
            (
                by_port(80).inferred_overflows,
                by_port(80).inferred_listen_drops
            ),
            (6, 7)
        );
        assert_eq!(
            (
                by_port(81).inferred_overflows,
                by_port(81).inferred_listen_drops
            ),
            (0, 0)
        );
        let ns = &s.namespaces[0];
        assert_eq!(
            (ns.unattributed_overflows, ns.unattributed_listen_drops),
            (12, 14)
        );
        // Attributed and unattributed together are the namespace's increase, nothing lost.
        let d = ns.counters_delta.expect("delta");
        assert_eq!(d.listen_overflows, 6 + 12);
        assert_eq!(d.listen_drops, 7 + 14);
        // The exact (kfree_skb) figure stays apart.
        assert_eq!(by_port(80).overflow_drops, 0);
        let hist = &l.listeners.values().next().expect("a").history;
        let per_point: Vec<u64> = hist.iter().map(|p| p.inferred_overflows).collect();
        assert_eq!(per_point, [0, 5, 1, 0, 0]);
        let mut text = Vec::new();
        s.write_text(&mut text).expect("text");
        let text = String::from_utf8(text).expect("utf8");
        assert!(
            text.contains("overflows_inferred 6 listen_drops_inferred 7"),
            "{text}"
        );
        assert!(text.contains("ListenOverflows 12 ListenDrops 14"), "{text}");
    }

    #[test]
    fn a_listener_full_at_the_last_sample_before_it_closed_keeps_its_overflows() {
        let n = |o: u64| Netstat {
            listen_overflows: o,
            listen_drops: o,
            ..Netstat::default()
        };
        let (mut l, mut a, mut out) = (Listeners::default(), Alerts::default(), Vec::new());
        let s1 = sample(1, vec![listener("10.0.0.1:80", 2, 1, 0)], n(0));
        let s2 = sample(2, vec![listener("10.0.0.1:81", 0, 4, 0)], n(4));
        for s in [&s1, &s2] {
            l.add_sample(s);
            a.check(s, &mut out);
        }
        let s = l.summary();
        let gone = s.listeners.iter().find(|x| x.port == 80).expect("80");
        assert_eq!(
            (gone.inferred_overflows, gone.inferred_listen_drops),
            (4, 4)
        );
        assert_eq!(s.namespaces[0].unattributed_overflows, 0);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].local.port(), out[0].delta), (80, 4));
        // Two full listeners: the increase is nobody's, and the stream names nobody.
        let two = || {
            vec![
                listener("10.0.0.1:80", 1, 1, 0),
                listener("10.0.0.1:81", 4, 4, 0),
            ]
        };
        out.clear();
        a.check(&sample(30, two(), n(4)), &mut out);
        a.check(&sample(31, two(), n(9)), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn full_means_at_the_limit_and_a_zero_limit_counts_as_one() {
        assert!(is_full(1, 1));
        assert!(is_full(2, 1));
        assert!(!is_full(0, 1));
        assert!(!is_full(0, 0), "an idle listen(fd, 0) socket is not full");
        assert!(is_full(1, 0));
        assert_eq!(attribute::<u8>(&[]), None);
        assert_eq!(attribute(&[3u8]), Some(3));
        assert_eq!(attribute(&[3u8, 4]), None);
    }

    #[test]
    fn a_wildcard_listener_serves_its_port_on_every_address() {
        let any: SocketAddr = "0.0.0.0:80".parse().expect("addr");
        let any6: SocketAddr = "[::]:80".parse().expect("addr");
        let one: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().expect("addr");
        assert!(serves(&any, &one));
        assert!(serves(&any6, &one));
        assert!(serves(&one, &mapped));
        assert!(!serves(&one, &"10.0.0.2:80".parse().expect("addr")));
        assert!(!serves(&any, &"10.0.0.1:81".parse().expect("addr")));
    }

    #[test]
    fn alerts_say_overflows_and_cookies_once_per_ten_seconds() {
        let mut a = Alerts::default();
        let mut out = Vec::new();
        let n = |o: u64, c: u64| Netstat {
            listen_overflows: o,
            syncookies_sent: c,
            ..Netstat::default()
        };
        let ls = || {
            vec![
                listener("10.0.0.1:80", 0, 128, 0),
                listener("10.0.0.1:81", 2, 1, 9),
            ]
        };
        a.check(&sample(1, ls(), n(5, 0)), &mut out);
        assert!(
            out.is_empty(),
            "the first sample has nothing to compare with"
        );
        a.check(&sample(2, ls(), n(5, 0)), &mut out);
        assert!(out.is_empty(), "no growth, no alert");
        a.check(&sample(3, ls(), n(8, 4)), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].what, out[0].local.port(), out[0].delta),
            ("listen_overflow", 81, 3)
        );
        assert_eq!((out[1].what, out[1].delta), ("syncookies", 4));
        out.clear();
        a.check(&sample(4, ls(), n(9, 5)), &mut out);
        assert!(out.is_empty(), "rate-limited");
        a.check(&sample(13, ls(), n(10, 5)), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].what, "listen_overflow");
    }
}
