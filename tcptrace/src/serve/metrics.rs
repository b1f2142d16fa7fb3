//! A [`Snapshot`] as Prometheus metrics: pure mapping, no I/O, no clock.
//!
//! Every figure comes from the snapshot the live loop published (built like the exit summary);
//! nothing is computed here but bucket layouts. The aggregate keeps HDR histograms in
//! microseconds; a snapshot carries their recorded values, from which the classic buckets
//! (cumulative counts at fixed boundaries in seconds, [`LATENCY_BUCKETS`]) and the native
//! (sparse exponential, schema [`NATIVE_SCHEMA`]) buckets are read, to the HDR resolution
//! (0.1% overall, 1% per group). prometheus-client's own `Histogram` wants observations, so
//! the families are written by a [`Collector`] through the crate's encoders
//! (`encode_histogram_with_native`): the crate writes the text, OpenMetrics and protobuf
//! formats; nothing here formats exposition text by hand.
//!
//! Cardinality is bounded by design: labels are states, sides, close kinds and the groups
//! the user named (ports) or capped (processes, workloads), never addresses or
//! per-connection values.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, NativeHistogram,
        NativeHistogramBuckets, NoLabelSet,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    decode::TcpState,
    summary::{Dimension, Distribution, Figures, Snapshot},
    track::{CloseKind, PHASES, Side},
};

/// Classic bucket boundaries (seconds) for handshakes and teardown phases: loopback
/// handshakes take under 10 microseconds, LAN ones tens, WAN ones tens to hundreds of
/// milliseconds, a SYN retransmit adds 1 s, 3 s, 7 s...; CLOSE_WAIT dwell can take seconds
/// to minutes.
pub const LATENCY_BUCKETS: [f64; 23] = [
    5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
    100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Classic bucket boundaries (seconds) for connection lifetimes: from a refused connect
/// to connections held for a day.
pub const LIFETIME_BUCKETS: [f64; 13] = [
    1e-3,
    10e-3,
    100e-3,
    1.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
];
/// Native histogram schema: buckets grow by 2^(1/8) (about 9%), as client_golang's default
/// bucket factor of 1.1 gives.
pub const NATIVE_SCHEMA: i32 = 3;
/// The zero bucket's width: values below the tracer's one-microsecond resolution.
pub const ZERO_THRESHOLD: f64 = 1e-6;

/// Exposition formats, chosen from the scraper's `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (curl, promtool, and the fallback).
    Text,
    /// OpenMetrics 1.0 text (what Prometheus asks for by default).
    OpenMetrics,
    /// Prometheus protobuf (delimited `MetricFamily`): the only format that carries native
    /// histograms; Prometheus asks for it when native histograms are enabled.
    Protobuf,
}

impl Format {
    /// The format to answer a request with `Accept: accept`.
    pub fn from_accept(accept: &str) -> Self {
        if accept.contains("application/vnd.google.protobuf")
            && accept.contains("io.prometheus.client.MetricFamily")
        {
            Self::Protobuf
        } else if accept.contains("application/openmetrics-text") {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }
}

/// What `tcptrace_build_info` says.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    pub version: String,
    pub kernel: String,
}

/// Encoding failed (a bug, not an input problem: every snapshot is encodable).
#[derive(Debug, thiserror::Error)]
#[error("encoding the metrics failed: {0}")]
pub struct EncodeError(String);

/// The snapshot in `format`.
pub fn encode(
    snap: Arc<Snapshot>,
    build: &BuildInfo,
    format: Format,
) -> Result<Vec<u8>, EncodeError> {
    let registry = registry(snap, build);
    match format {
        Format::Text => {
            let mut s = String::with_capacity(64 * 1024);
            prometheus_client::encoding::prometheus_text::encode(&mut s, &registry)
                .map_err(|e| EncodeError(e.to_string()))?;
            Ok(s.into_bytes())
        }
        Format::OpenMetrics => {
            let mut s = String::with_capacity(64 * 1024);
            prometheus_client::encoding::text::encode(&mut s, &registry)
                .map_err(|e| EncodeError(e.to_string()))?;
            Ok(s.into_bytes())
        }
        Format::Protobuf => {
            prometheus_client::encoding::prometheus_protobuf::encode_to_vec(&registry)
                .map_err(|e| EncodeError(e.to_string()))
        }
    }
}

/// A registry whose one collector writes `snap`, every name prefixed `tcptrace_`.
pub fn registry(snap: Arc<Snapshot>, build: &BuildInfo) -> Registry {
    let mut r = Registry::with_prefix("tcptrace");
    r.register_collector(Box::new(SnapshotCollector {
        snap,
        build: build.clone(),
    }));
    r
}

#[derive(Debug)]
struct SnapshotCollector {
    snap: Arc<Snapshot>,
    build: BuildInfo,
}

const SIDES: [Side; 2] = [Side::Client, Side::Server];

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snap = &*self.snap;
        let sum = &snap.summary;
        let e = &mut enc;

        let mut m = e.encode_descriptor(
            "build",
            "tcptrace's version and the kernel release it runs on.",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&[
            ("version", self.build.version.as_str()),
            ("kernel", self.build.kernel.as_str()),
        ])?;

        counter(
            e,
            "events",
            "Events the tracer consumed (transitions, retransmits, resets).",
            sum.events,
        )?;
        counter(
            e,
            "lost_events",
            "Events the kernel could not deliver (ring buffer full, or the program skipped while \
             another BPF program ran on that CPU); every figure misses them.",
            sum.lost,
        )?;
        counter(
            e,
            "kernel_filtered_events",
            "Events the kernel-side filter (--port, --lport, --rport, -4/-6) dropped, as asked.",
            sum.filtered,
        )?;
        counter(
            e,
            "undecodable_records",
            "Ring buffer records that did not decode (skipped).",
            sum.undecodable,
        )?;
        let t = &sum.track;
        counters(
            e,
            "tracker_anomalies",
            "Inconsistencies of the event stream: sockets joined mid-life (opened before tracing), \
             gaps (a missed event), out-of-order events, evicted sockets, addresses reused unclosed.",
            [
                ("joined_mid_life", t.joined_mid_life),
                ("gap", t.gaps),
                ("out_of_order", t.out_of_order),
                ("evicted", t.evicted),
                ("reused_unclosed", t.reused_unclosed),
            ]
            .map(|(k, v)| ([("kind", k)], v)),
        )?;

        gauges(
            e,
            "tracked_sockets",
            "Sockets the tracer follows now, by TCP state (sockets older than the run count from \
             their first event).",
            TcpState::ALL.iter().map(|s| {
                let n = snap.states.get(s.name()).copied().unwrap_or(0);
                ([("state", s.name())], n as f64)
            }),
        )?;

        if !sum.listeners.is_empty() {
            let named: Vec<u16> = snap
                .detail
                .iter()
                .flat_map(|d| &d.groups)
                .filter(|g| g.dimension == Dimension::LocalPort)
                .filter_map(|g| g.key.parse().ok())
                .collect();
            listener_metrics(e, &sum.listeners, &named)?;
        }
        let Some(d) = &snap.detail else {
            return Ok(());
        };

        counters(
            e,
            "transitions",
            "TCP state transitions, by old and new state (the kernel's state names without TCP_).",
            d.edges
                .iter()
                .map(|(o, n, c)| ([("old", *o), ("new", *n)], *c)),
        )?;
        let o = &d.overall;
        histograms(
            e,
            "handshake_duration",
            "Handshake latency. Client: connect() (CLOSE->SYN_SENT) until ESTABLISHED, SYN \
             retransmits included. Server: the SYN-ACK round trip (SYN-ACK sent until the final ACK).",
            &LATENCY_BUCKETS,
            SIDES.map(|s| ([("side", s.name())], &o.handshake[side_index(s)])),
        )?;
        counters(
            e,
            "handshakes_unmeasured",
            "Handshakes whose latency could not be known (server: no SYN-ACK round trip readable; \
             client: already under way when tracing started); not in the histogram.",
            SIDES.map(|s| ([("side", s.name())], o.handshake_unmeasured[side_index(s)])),
        )?;
        histograms(
            e,
            "state_duration",
            "Time spent in each teardown state before leaving it: FIN_WAIT1, FIN_WAIT2, CLOSING \
             (active or simultaneous close), CLOSE_WAIT (peer closed, application had not yet: the \
             leak signal), LAST_ACK.",
            &LATENCY_BUCKETS,
            PHASES
                .iter()
                .zip(&o.phases)
                .map(|(p, dist)| ([("state", p.name())], dist)),
        )?;
        histograms(
            e,
            "connection_lifetime",
            "Connection lifetime, opened (CLOSE->SYN_SENT or the server child's creation) to CLOSE.",
            &LIFETIME_BUCKETS,
            [(NO_LABELS, &o.lifetime)],
        )?;
        counters(
            e,
            "connections_opened",
            "Connections that completed their handshake (reached ESTABLISHED), by side.",
            SIDES.map(|s| ([("side", s.name())], o.opened()[side_index(s)])),
        )?;
        counters(
            e,
            "connections_closed",
            "Finished connections by how they ended: fin, reset_sent, reset_received, refused (RST \
             to the SYN), connect_timeout, fin_wait2_timeout, aborted.",
            CloseKind::ALL
                .iter()
                .zip(o.closes)
                .map(|(k, n)| ([("kind", k.name())], n)),
        )?;
        counter(
            e,
            "syn_retransmits",
            "SYNs retransmitted by connecting sockets (a slow or lossy path, or a full accept queue \
             on the server).",
            o.syn_retransmits,
        )?;
        counter(
            e,
            "synack_retransmits",
            "SYN-ACKs retransmitted by listeners (final ACKs not arriving: loss, or a SYN flood).",
            o.synack_retransmits,
        )?;
        counters(
            e,
            "resets",
            "TCP resets, by direction (sent by this host or received from the peer).",
            [("sent", o.resets_sent), ("received", o.resets_received)]
                .map(|(k, v)| ([("direction", k)], v)),
        )?;
        counter(
            e,
            "time_wait_entries",
            "Sockets handed over to a TIME_WAIT mini-socket (its end is not traceable).",
            o.time_wait_entries,
        )?;
        gauge(
            e,
            "close_wait_oldest_age",
            Some(&Unit::Seconds),
            "Age of the oldest socket still in CLOSE_WAIT (peer closed, application has not), 0 if \
             none; sockets in CLOSE_WAIT before tracing started count as old as the run.",
            d.close_wait.oldest_s,
        )?;
        let help = format!(
            "Sockets in CLOSE_WAIT for longer than {} s (--close-wait-threshold): the socket-leak \
             signal.",
            d.close_wait.threshold_s
        );
        gauge(
            e,
            "close_wait_stuck_sockets",
            None,
            &help,
            d.close_wait.over_threshold as f64,
        )?;

        // Groups the user named (ports) or capped (processes).
        let ports: Vec<_> = d
            .groups
            .iter()
            .filter(|g| matches!(g.dimension, Dimension::LocalPort | Dimension::RemotePort))
            .map(|g| {
                let side = if g.dimension == Dimension::LocalPort {
                    Side::Server
                } else {
                    Side::Client
                };
                (g.key.as_str(), side, &g.figures)
            })
            .collect();
        if !ports.is_empty() {
            histograms(
                e,
                "port_handshake_duration",
                "Handshake latency by --group-ports port: server side by local port, client side \
                 by remote port.",
                &LATENCY_BUCKETS,
                ports.iter().map(|(p, s, f)| {
                    (
                        [("port", *p), ("side", s.name())],
                        &f.handshake[side_index(*s)],
                    )
                }),
            )?;
            counters(
                e,
                "port_connections_opened",
                "Connections that completed their handshake, by --group-ports port and side.",
                ports.iter().map(|(p, s, f)| {
                    (
                        [("port", *p), ("side", s.name())],
                        f.opened()[side_index(*s)],
                    )
                }),
            )?;
            counters(
                e,
                "port_connections_closed",
                "Finished connections by --group-ports port, side and how they ended.",
                ports.iter().flat_map(|(p, s, f)| {
                    CloseKind::ALL.iter().zip(f.closes).map(move |(k, n)| {
                        ([("port", *p), ("side", s.name()), ("kind", k.name())], n)
                    })
                }),
            )?;
        }
        let procs: Vec<(&str, &Figures)> = d
            .groups
            .iter()
            .filter(|g| g.dimension == Dimension::Process)
            .map(|g| (g.key.as_str(), &g.figures))
            .collect();
        if !procs.is_empty() {
            histograms(
                e,
                "process_handshake_duration",
                "Handshake latency by owning process (the first --group-processes names seen; the \
                 rest under process=\"other\").",
                &LATENCY_BUCKETS,
                procs.iter().flat_map(|(p, f)| {
                    SIDES.map(|s| {
                        (
                            [("process", *p), ("side", s.name())],
                            &f.handshake[side_index(s)],
                        )
                    })
                }),
            )?;
            histograms(
                e,
                "process_state_duration",
                "Teardown state dwell by owning process (CLOSE_WAIT here says which application is \
                 slow to close).",
                &LATENCY_BUCKETS,
                procs.iter().flat_map(|(p, f)| {
                    PHASES
                        .iter()
                        .zip(&f.phases)
                        .map(move |(st, dist)| ([("process", *p), ("state", st.name())], dist))
                }),
            )?;
            counters(
                e,
                "process_connections_opened",
                "Connections that completed their handshake, by owning process and side.",
                procs.iter().flat_map(|(p, f)| {
                    SIDES.map(|s| {
                        (
                            [("process", *p), ("side", s.name())],
                            f.opened()[side_index(s)],
                        )
                    })
                }),
            )?;
            counters(
                e,
                "process_connections_closed",
                "Finished connections by owning process and how they ended.",
                procs.iter().flat_map(|(p, f)| {
                    CloseKind::ALL
                        .iter()
                        .zip(f.closes)
                        .map(move |(k, n)| ([("process", *p), ("kind", k.name())], n))
                }),
            )?;
            counter(
                e,
                "grouping_folded_connections",
                "Connection events (opened plus closed) counted under process=\"other\" because their \
                 process was beyond --group-processes: what the series cap folded away.",
                d.folded_connections,
            )?;
            gauge(
                e,
                "grouping_folded_processes",
                None,
                "Process names folded into process=\"other\" (beyond --group-processes).",
                d.folded_processes as f64,
            )?;
        }
        let workloads: Vec<(&str, &Figures)> = d
            .groups
            .iter()
            .filter(|g| g.dimension == Dimension::Workload)
            .map(|g| (g.key.as_str(), &g.figures))
            .collect();
        if !workloads.is_empty() {
            histograms(
                e,
                "workload_handshake_duration",
                "Handshake latency by workload (the socket's cgroup named: container, pod, systemd \
                 unit or cgroup path; the first --group-workloads seen, the rest under \
                 workload=\"other\").",
                &LATENCY_BUCKETS,
                workloads.iter().flat_map(|(w, f)| {
                    SIDES.map(|s| {
                        (
                            [("workload", *w), ("side", s.name())],
                            &f.handshake[side_index(s)],
                        )
                    })
                }),
            )?;
            counters(
                e,
                "workload_connections_opened",
                "Connections that completed their handshake, by workload and side.",
                workloads.iter().flat_map(|(w, f)| {
                    SIDES.map(|s| {
                        (
                            [("workload", *w), ("side", s.name())],
                            f.opened()[side_index(s)],
                        )
                    })
                }),
            )?;
            counters(
                e,
                "workload_connections_closed",
                "Finished connections by workload and how they ended.",
                workloads.iter().flat_map(|(w, f)| {
                    CloseKind::ALL
                        .iter()
                        .zip(f.closes)
                        .map(move |(k, n)| ([("workload", *w), ("kind", k.name())], n))
                }),
            )?;
            counters(
                e,
                "workload_sent_bytes",
                "Payload bytes sent (acknowledged by the peer) by finished connections, by \
                 workload (connections whose counters were read at close).",
                workloads
                    .iter()
                    .map(|(w, f)| ([("workload", *w)], f.bytes_sent)),
            )?;
            counters(
                e,
                "workload_received_bytes",
                "Payload bytes received by finished connections, by workload.",
                workloads
                    .iter()
                    .map(|(w, f)| ([("workload", *w)], f.bytes_received)),
            )?;
            counter(
                e,
                "grouping_folded_workload_connections",
                "Connection events (opened plus closed) counted under workload=\"other\" because \
                 their workload was beyond --group-workloads.",
                d.folded_workload_connections,
            )?;
            gauge(
                e,
                "grouping_folded_workloads",
                None,
                "Workloads folded into workload=\"other\" (beyond --group-workloads).",
                d.folded_workloads as f64,
            )?;
        }
        Ok(())
    }
}

/// Listener and TIME_WAIT figures from the socket-table sampler (absent when it is off).
/// Cardinality as everywhere here: totals over all listeners carry no label; per-port series
/// only for the ports `--group-ports` names (listeners on one port in several namespaces or
/// addresses are summed); per-namespace figures carry the namespace's name (bounded by what
/// is sampled).
fn listener_metrics(
    e: &mut DescriptorEncoder,
    l: &crate::listeners::ListenersSummary,
    named_ports: &[u16],
) -> fmt::Result {
    #[derive(Default, Clone, Copy)]
    struct PortFig {
        accept: u64,
        accept_max: u64,
        backlog: u64,
        syn_recv: u64,
        synack: u64,
        drops: u64,
        inferred: u64,
    }
    let mut total = PortFig::default();
    let mut full = 0u64;
    let mut rows: Vec<(String, PortFig)> = named_ports
        .iter()
        .map(|p| (p.to_string(), PortFig::default()))
        .collect();
    for x in &l.listeners {
        let add = |f: &mut PortFig| {
            f.accept += u64::from(x.accept_queue_now);
            f.accept_max += u64::from(x.accept_queue_max);
            f.backlog += u64::from(x.backlog);
            f.syn_recv += u64::from(x.syn_recv_now);
            f.synack += x.synack_retransmits;
            f.drops += x.overflow_drops;
            f.inferred += x.inferred_overflows;
        };
        add(&mut total);
        full += u64::from(x.accept_queue_now > x.backlog);
        if let Some(i) = named_ports.iter().position(|p| *p == x.port) {
            add(&mut rows[i].1);
        }
    }
    gauge(
        e,
        "listeners",
        None,
        "Listening sockets at the last socket-table sample, every sampled namespace.",
        l.listeners.len() as f64,
    )?;
    gauge(
        e,
        "listeners_full",
        None,
        "Listeners whose accept queue was over its limit at the last sample (the kernel drops \
         handshake-completing ACKs for them).",
        full as f64,
    )?;
    gauge(
        e,
        "listeners_accept_queue",
        None,
        "Connections waiting for accept() at the last sample, all listeners.",
        total.accept as f64,
    )?;
    gauge(
        e,
        "listeners_syn_recv",
        None,
        "Half-open connections (request sockets in SYN_RECV) at the last sample, all listeners.",
        total.syn_recv as f64,
    )?;
    counter(
        e,
        "listeners_synack_retransmits",
        "SYN-ACKs retransmitted for connections to sampled listeners.",
        total.synack,
    )?;
    counter(
        e,
        "listeners_overflow_drops",
        "Accept-queue overflow drops seen by skb:kfree_skb (reason TCP_LISTEN_OVERFLOW) on \
         sampled listeners (0 on kernels that do not report that reason; see netstat_increase).",
        total.drops,
    )?;
    counter(
        e,
        "listeners_overflows_inferred",
        "The namespace's ListenOverflows increase over the sampling intervals in which exactly \
         one of its listeners was seen full (accept queue at its limit), given to that listener: \
         inferred from counters, not reported drop by drop.",
        total.inferred,
    )?;
    if !rows.is_empty() {
        let by_port = |pick: fn(&PortFig) -> u64| {
            rows.iter()
                .map(move |(p, f)| ([("port", p.as_str())], pick(f) as f64))
                .collect::<Vec<_>>()
        };
        gauges(
            e,
            "listener_accept_queue",
            "Connections waiting for accept() at the last sample, by --group-ports port.",
            by_port(|f| f.accept),
        )?;
        gauges(
            e,
            "listener_accept_queue_max",
            "The longest accept queue seen in any sample since start, by --group-ports port.",
            by_port(|f| f.accept_max),
        )?;
        gauges(
            e,
            "listener_backlog",
            "The accept queue's limit (listen() backlog capped by somaxconn), by port.",
            by_port(|f| f.backlog),
        )?;
        gauges(
            e,
            "listener_syn_recv",
            "Half-open connections (SYN_RECV) at the last sample, by --group-ports port.",
            by_port(|f| f.syn_recv),
        )?;
        counters(
            e,
            "listener_synack_retransmits",
            "SYN-ACKs retransmitted for connections to the listener, by --group-ports port.",
            rows.iter().map(|(p, f)| ([("port", p.as_str())], f.synack)),
        )?;
        counters(
            e,
            "listener_overflow_drops",
            "Accept-queue overflow drops seen by skb:kfree_skb, by --group-ports port.",
            rows.iter().map(|(p, f)| ([("port", p.as_str())], f.drops)),
        )?;
        counters(
            e,
            "listener_overflows_inferred",
            "ListenOverflows inferred to the listener (the only one seen full in the interval), \
             by --group-ports port.",
            rows.iter()
                .map(|(p, f)| ([("port", p.as_str())], f.inferred)),
        )?;
    }
    counters(
        e,
        "netstat_increase",
        "Increase since the first sample of the namespace's TcpExt listener counters \
         (/proc/net/netstat), by namespace and counter.",
        l.namespaces.iter().flat_map(|ns| {
            let values = ns.counters_delta.map(|d| d.values()).unwrap_or_default();
            crate::listeners::Netstat::NAMES
                .iter()
                .zip(values)
                .map(move |(k, v)| ([("netns", ns.name.as_str()), ("counter", *k)], v))
        }),
    )?;
    gauges(
        e,
        "time_wait_sockets",
        "Sockets in TIME_WAIT at the last sample that dumped them (every \
         --time-wait-interval), by namespace.",
        l.namespaces
            .iter()
            .filter(|ns| ns.time_wait.samples > 0)
            .map(|ns| ([("netns", ns.name.as_str())], f64::from(ns.time_wait.now))),
    )?;
    gauges(
        e,
        "time_wait_remaining_sockets",
        "TIME_WAIT sockets at the last sample that dumped them by remaining timer, in \
         5-second buckets (upto_s=\"5\" is 0-5 s; upto_s=\"inf\" more than 60 s), by namespace.",
        l.namespaces.iter().flat_map(|ns| {
            ns.time_wait
                .remaining_now
                .iter()
                .enumerate()
                .map(move |(i, n)| {
                    let upto = if i + 1 == crate::listeners::TW_BUCKETS {
                        "inf".to_owned()
                    } else {
                        ((i as u32 + 1) * crate::listeners::TW_BUCKET_MS / 1000).to_string()
                    };
                    ((ns.name.clone(), upto), f64::from(*n))
                })
                .map(|((ns, upto), n)| ([("netns", ns), ("upto_s", upto)], n))
        }),
    )?;
    Ok(())
}

const NO_LABELS: [(&str, &str); 0] = [];

fn side_index(s: Side) -> usize {
    crate::aggregate::side_index(s)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in items {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    v: f64,
) -> fmt::Result {
    let m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn gauges<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in items {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histograms<'d, L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    items: impl IntoIterator<Item = (L, &'d Distribution)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, d) in items {
        let buckets = classic_buckets(d, bounds);
        let native = NativeBuckets::of(d);
        m.encode_family(&labels)?
            .encode_histogram_with_native::<NoLabelSet>(
                d.sum_s,
                d.count,
                &buckets,
                None,
                NativeHistogram {
                    schema: NATIVE_SCHEMA,
                    zero_threshold: ZERO_THRESHOLD,
                    zero_count: native.zero_count,
                    negative: NativeHistogramBuckets {
                        spans: &[],
                        deltas: &[],
                    },
                    positive: NativeHistogramBuckets {
                        spans: &native.spans,
                        deltas: &native.deltas,
                    },
                    created: None,
                },
            )?;
    }
    Ok(())
}

/// Per-bucket (not cumulative: the encoders accumulate) counts at `bounds` seconds, then
/// `+Inf`. A value counts in the first bucket whose bound it does not exceed.
pub fn classic_buckets(d: &Distribution, bounds: &[f64]) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut values = d.values.iter().peekable();
    for b in bounds {
        let b_us = (b * 1e6).round() as u64;
        let mut n = 0;
        while let Some((_, c)) = values.next_if(|(v, _)| *v <= b_us) {
            n += c;
        }
        out.push((*b, n));
    }
    out.push((f64::INFINITY, values.map(|(_, c)| c).sum()));
    out
}

/// A distribution's native histogram buckets: spans of consecutive bucket indexes and the
/// delta-encoded counts, as the protobuf format carries them.
#[derive(Debug, Default, PartialEq)]
pub struct NativeBuckets {
    pub zero_count: u64,
    /// (offset from the previous span's end, or the first index; length).
    pub spans: Vec<(i32, u32)>,
    pub deltas: Vec<i64>,
}

/// The index of the native bucket holding `x` seconds (> 0): bucket `i` is
/// (2^((i-1)/2^schema), 2^(i/2^schema)].
pub fn native_index(x: f64) -> i32 {
    (x.log2() * f64::from(1u32 << NATIVE_SCHEMA)).ceil() as i32
}

impl NativeBuckets {
    pub fn of(d: &Distribution) -> Self {
        let mut out = Self::default();
        let mut buckets: Vec<(i32, u64)> = Vec::new();
        for (v, c) in &d.values {
            if *v == 0 {
                out.zero_count += c;
                continue;
            }
            let i = native_index(*v as f64 * 1e-6);
            match buckets.last_mut() {
                Some((last, n)) if *last == i => *n += c,
                _ => buckets.push((i, *c)),
            }
        }
        let mut prev: Option<(i32, u64)> = None;
        for (i, c) in buckets {
            match prev {
                None => out.spans.push((i, 1)),
                Some((p, _)) if i == p + 1 => {
                    if let Some(s) = out.spans.last_mut() {
                        s.1 += 1;
                    }
                }
                Some((p, _)) => out.spans.push((i - p - 1, 1)),
            }
            let before = prev.map_or(0, |(_, n)| n);
            out.deltas.push(c as i64 - before as i64);
            prev = Some((i, c));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, path::Path, process::Command, time::Duration};

    use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
    use prost::Message as _;

    use super::*;
    use crate::{
        counters::Counters,
        pipeline::Pipeline,
        record,
        summary::{DetailOptions, SnapshotOptions},
    };

    fn build() -> BuildInfo {
        BuildInfo {
            version: "0.1.0".to_owned(),
            kernel: "6.1.0-test".to_owned(),
        }
    }

    /// The loopback fixture replayed, as `serve --group-ports 45177 --group-processes 1`
    /// would publish it at the end.
    fn fixture() -> Arc<Snapshot> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loopback.jsonl");
        let mut p = Pipeline::new(Vec::new());
        let replay =
            record::replay(&path, false, |ev| p.push_ordered(ev)).expect("the fixture replays");
        p.finish();
        let counters = replay.trailer.map(|t| t.counters).unwrap_or_default();
        let opts = SnapshotOptions {
            top_n: 5,
            detail: Some(DetailOptions {
                ports: vec![45177],
                processes: 1,
                workloads: 0,
                close_wait_threshold: Duration::from_secs(60),
            }),
            dashboard: false,
        };
        let now = p.tracker().newest_ns();
        Arc::new(Snapshot::build_at(
            &p,
            &Counters {
                lost: 3,
                ..counters
            },
            &opts,
            Duration::from_secs(2),
            now,
        ))
    }

    fn text(snap: Arc<Snapshot>) -> String {
        String::from_utf8(encode(snap, &build(), Format::Text).expect("encodes")).expect("utf-8")
    }

    #[test]
    fn fixture_exposition() {
        insta::assert_snapshot!("loopback-metrics.txt", text(fixture()));
    }

    /// The workloads fixture as `serve --group-workloads 2` publishes it: the pod's two
    /// containers make one workload, the docker container the second, the service is folded.
    fn workloads_fixture() -> Arc<Snapshot> {
        use crate::top::fixtures::{NOW, workload_names, workloads};
        let names = workload_names();
        let (p, _) = workloads(&names);
        let opts = SnapshotOptions {
            top_n: 5,
            detail: Some(DetailOptions {
                workloads: 2,
                close_wait_threshold: Duration::from_secs(60),
                ..DetailOptions::default()
            }),
            dashboard: false,
        };
        Arc::new(Snapshot::build_with(
            &p,
            &Counters::default(),
            &opts,
            Duration::from_secs(42),
            NOW,
            None,
            &names,
        ))
    }

    #[test]
    fn workloads_get_capped_series_of_their_own() {
        let t = text(workloads_fixture());
        let pod = "k8s/burstable/9a8b7c6d-1234-4e5f-8a9b-0c1d2e3f4a5b";
        for line in [
            format!("tcptrace_workload_connections_closed_total{{workload=\"{pod}\",kind=\"fin\"}} 5"),
            "tcptrace_workload_connections_closed_total{workload=\"docker/4f2c9a0b7e1d\",kind=\"fin\"} 1".to_owned(),
            format!("tcptrace_workload_sent_bytes_total{{workload=\"{pod}\"}} 5000"),
            format!("tcptrace_workload_received_bytes_total{{workload=\"{pod}\"}} 1000"),
            "tcptrace_workload_connections_opened_total{workload=\"other\",side=\"server\"} 2".to_owned(),
            "tcptrace_grouping_folded_workloads 1.0".to_owned(),
            "tcptrace_grouping_folded_workload_connections_total 2".to_owned(),
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in\n{t}");
        }
        assert!(!t.contains("nginx.service"), "folded into other");
        let workloads: std::collections::BTreeSet<&str> = t
            .lines()
            .filter_map(|l| l.split("workload=\"").nth(1))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert_eq!(workloads.len(), 3, "two chosen and other: {workloads:?}");
        // Without the flag, no workload series at all.
        assert!(!text(fixture()).contains("workload"));
    }

    /// promtool (Debian package `prometheus`) parses and lints the exposition: names, units,
    /// `_total` suffixes, HELP on each family.
    #[test]
    fn promtool_accepts_the_exposition() {
        for snap in [fixture(), workloads_fixture()] {
            promtool_accepts(&text(snap));
        }
    }

    fn promtool_accepts(exposition: &str) {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "promtool is needed by this test ({e}): install it with \
                     `cargo xtask setup --test-packages` (Debian package prometheus)"
                )
            });
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(exposition.as_bytes())
            .expect("writing to promtool");
        let out = child.wait_with_output().expect("promtool runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool check metrics: {said}");
        assert!(said.trim().is_empty(), "promtool has remarks: {said}");
    }

    #[test]
    fn listener_and_time_wait_metrics_come_from_samples_and_promtool_accepts_them() {
        use crate::listeners::{
            Netstat,
            tests::{listener, sample},
        };
        let mut p = Pipeline::new(Vec::new());
        let n = |o: u64| Netstat {
            listen_overflows: o,
            ..Netstat::default()
        };
        p.push_sample(&sample(1, vec![listener("10.0.0.1:8080", 3, 4, 2)], n(10)));
        p.push_sample(&sample(2, vec![listener("10.0.0.1:8080", 1, 4, 0)], n(17)));
        p.finish();
        let opts = |ports: Vec<u16>| SnapshotOptions {
            top_n: 5,
            detail: Some(DetailOptions {
                ports,
                processes: 0,
                workloads: 0,
                close_wait_threshold: Duration::from_secs(60),
            }),
            dashboard: false,
        };
        let snap = |ports| {
            Arc::new(Snapshot::build_at(
                &p,
                &Counters::default(),
                &opts(ports),
                Duration::from_secs(2),
                2_000_000_000,
            ))
        };
        // Without --group-ports: totals only, no port label.
        let t = text(snap(Vec::new()));
        for line in [
            "tcptrace_listeners 1",
            "tcptrace_listeners_accept_queue 1",
            "tcptrace_listeners_full 0",
            "tcptrace_time_wait_sockets{netns=\"host\"} 3",
        ] {
            assert!(t.contains(line), "no {line:?} in:\n{t}");
        }
        assert!(!t.contains("port=\""), "{t}");
        let t = text(snap(vec![8080]));
        for line in [
            "tcptrace_listener_accept_queue{port=\"8080\"} 1",
            "tcptrace_listener_accept_queue_max{port=\"8080\"} 3",
            "tcptrace_listener_backlog{port=\"8080\"} 4",
            "tcptrace_listener_syn_recv{port=\"8080\"} 0",
            "tcptrace_netstat_increase_total{netns=\"host\",counter=\"ListenOverflows\"} 7",
            "tcptrace_time_wait_sockets{netns=\"host\"} 3",
            "tcptrace_time_wait_remaining_sockets{netns=\"host\",upto_s=\"5\"} 1",
            "tcptrace_time_wait_remaining_sockets{netns=\"host\",upto_s=\"60\"} 2",
        ] {
            assert!(t.contains(line), "no {line:?} in:\n{t}");
        }
        // Without samples, none of these series exist.
        assert!(!text(fixture()).contains("tcptrace_listener_"));
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (cargo xtask setup --test-packages)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(t.as_bytes())
            .expect("writing to promtool");
        let out = child.wait_with_output().expect("promtool runs");
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let om = encode(fixture(), &build(), Format::OpenMetrics).expect("encodes");
        let om = String::from_utf8(om).expect("utf-8");
        assert!(
            om.ends_with("# EOF\n"),
            "{}",
            &om[om.len().saturating_sub(100)..]
        );
        assert!(om.contains("# TYPE tcptrace_handshake_duration_seconds histogram"));
    }

    #[test]
    fn formats_follow_accept() {
        let prom = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::from_accept(prom), Format::Protobuf);
        let om = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(om), Format::OpenMetrics);
        assert_eq!(Format::from_accept("*/*"), Format::Text);
        assert_eq!(Format::from_accept(""), Format::Text);
    }

    fn dist(values: &[(u64, u64)]) -> Distribution {
        Distribution {
            count: values.iter().map(|(_, c)| c).sum(),
            sum_s: values
                .iter()
                .map(|(v, c)| *v as f64 * 1e-6 * *c as f64)
                .sum(),
            values: values.to_vec(),
        }
    }

    #[test]
    fn classic_buckets_count_values_up_to_each_bound() {
        let d = dist(&[(0, 1), (25, 2), (26, 1), (1000, 4), (200_000_000, 1)]);
        let b = classic_buckets(&d, &[25e-6, 1e-3, 1.0]);
        assert_eq!(b, vec![(25e-6, 3), (1e-3, 5), (1.0, 0), (f64::INFINITY, 1)]);
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), d.count);
    }

    #[test]
    fn native_buckets_are_spans_and_deltas() {
        // 1 s is bucket 0 of schema 3 (upper bound inclusive), 2 s bucket 8, 1.05 s bucket 1.
        assert_eq!(native_index(1.0), 0);
        assert_eq!(native_index(1.05), 1);
        assert_eq!(native_index(2.0), 8);
        assert_eq!(native_index(0.5), -8);
        let d = dist(&[(0, 2), (1_000_000, 3), (1_050_000, 5), (2_000_000, 1)]);
        let n = NativeBuckets::of(&d);
        assert_eq!(n.zero_count, 2);
        assert_eq!(n.spans, vec![(0, 2), (6, 1)]);
        assert_eq!(n.deltas, vec![3, 2, -4]);
        assert_eq!(NativeBuckets::of(&dist(&[])), NativeBuckets::default());
    }

    /// Prometheus asks for protobuf when native histograms are on: every histogram then
    /// carries its native buckets beside the classic ones, with the same count.
    #[test]
    fn protobuf_carries_native_and_classic_buckets() {
        let snap = fixture();
        let bytes = encode(Arc::clone(&snap), &build(), Format::Protobuf).expect("encodes");
        let mut buf = bytes.as_slice();
        let mut families = Vec::new();
        while !buf.is_empty() {
            families.push(MetricFamily::decode_length_delimited(&mut buf).expect("decodes"));
        }
        let hs = families
            .iter()
            .find(|f| f.name == "tcptrace_handshake_duration_seconds")
            .expect("handshake family");
        let detail = snap.detail.as_ref().expect("detail");
        for m in &hs.metric {
            let h = m.histogram.as_ref().expect("a histogram");
            let side = &m
                .label
                .iter()
                .find(|l| l.name == "side")
                .expect("side")
                .value;
            let i = if side == "client" { 0 } else { 1 };
            assert_eq!(h.sample_count, detail.overall.handshake[i].count);
            assert!(h.sample_count > 0, "the fixture has {side} handshakes");
            assert_eq!(h.schema, NATIVE_SCHEMA);
            let native: i64 = h
                .positive_delta
                .iter()
                .scan(0i64, |acc, d| {
                    *acc += d;
                    Some(*acc)
                })
                .sum();
            assert_eq!(native as u64 + h.zero_count, h.sample_count);
            assert_eq!(
                h.bucket.last().map(|b| b.cumulative_count),
                Some(h.sample_count),
                "classic buckets up to the last bound hold everything below 120 s"
            );
        }
    }

    /// The series cap: the largest grouping the flags allow stays under 10,000 series.
    #[test]
    fn series_stay_bounded_at_the_flag_limits() {
        let mut snap = (*fixture()).clone();
        let detail = snap.detail.as_mut().expect("detail");
        let template = detail.groups[0].clone();
        detail.groups.clear();
        for p in 0..crate::cli::MAX_GROUP_PORTS {
            for dimension in [Dimension::LocalPort, Dimension::RemotePort] {
                detail.groups.push(crate::summary::GroupFigures {
                    dimension,
                    key: p.to_string(),
                    ..template.clone()
                });
            }
        }
        for p in 0..=crate::cli::MAX_GROUP_PROCESSES {
            detail.groups.push(crate::summary::GroupFigures {
                dimension: Dimension::Process,
                key: format!("proc{p}"),
                ..template.clone()
            });
        }
        for w in 0..=crate::cli::MAX_GROUP_WORKLOADS {
            detail.groups.push(crate::summary::GroupFigures {
                dimension: Dimension::Workload,
                key: format!("workload{w}.service"),
                ..template.clone()
            });
        }
        // Every edge of the state machine seen.
        detail.edges = TcpState::ALL
            .iter()
            .flat_map(|o| TcpState::ALL.iter().map(move |n| (o.name(), n.name(), 1)))
            .collect();
        let s = text(Arc::new(snap));
        let n = s.lines().filter(|l| !l.starts_with('#')).count();
        println!("{n} series at the flag limits");
        assert!(n < 10_000, "{n} series");
    }
}
