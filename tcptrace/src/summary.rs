//! The end-of-run summary: a serialisable value built from the aggregates, rendered as text
//! (stderr at exit) or JSON. The same value comes out of a live run and of `report`, which
//! is how a recording is checked against the run that made it.

use std::{collections::BTreeMap, io};

use serde::Serialize;

use crate::{
    aggregate::{Aggregate, Groups, Quantiles, Stats, row_names, rows},
    collect::Counters,
    track::{CloseKind, TrackStats},
};

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
        }
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.connections == 0
            && self.server_handshake_unmeasured == 0
            && self.client_handshake_unmeasured == 0
    }
}

/// The whole summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub transitions: u64,
    pub events: u64,
    /// Events the kernel could not write because the ring buffer was full.
    pub lost: u64,
    /// Records that did not decode (counted, skipped).
    pub undecodable: u64,
    pub track: TrackStats,
    pub overall: GroupSummary,
    pub by_remote_port: Vec<GroupSummary>,
    pub by_local_port: Vec<GroupSummary>,
    pub by_process: Vec<GroupSummary>,
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

impl Summary {
    pub fn build(
        agg: &Aggregate,
        counters: &Counters,
        undecodable: u64,
        track: TrackStats,
        top_n: usize,
    ) -> Self {
        Self {
            transitions: agg.transitions,
            events: track.events,
            lost: counters.lost,
            undecodable,
            track,
            overall: GroupSummary::of("overall".to_owned(), &agg.overall),
            by_remote_port: top(&agg.by_remote_port, top_n),
            by_local_port: top(&agg.by_local_port, top_n),
            by_process: top(&agg.by_process, top_n),
        }
    }

    pub fn write_json(&self, mut w: impl io::Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut w, self)?;
        writeln!(w)
    }

    pub fn write_text(&self, mut w: impl io::Write) -> io::Result<()> {
        writeln!(
            w,
            "tcptrace summary: {} transitions, {} events, {} lost, {} undecodable",
            self.transitions, self.events, self.lost, self.undecodable
        )?;
        if self.lost > 0 {
            writeln!(
                w,
                "  WARNING: {} events were lost because the ring buffer was full; figures below \
                 miss them (narrow the filter or use --per none)",
                self.lost
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
        write_group(&mut w, &self.overall)?;
        for (title, groups) in [
            ("by remote port (client side)", &self.by_remote_port),
            ("by local port (server side)", &self.by_local_port),
            ("by process", &self.by_process),
        ] {
            if groups.is_empty() {
                continue;
            }
            writeln!(w, "{title}:")?;
            for g in groups {
                write_group(&mut w, g)?;
            }
        }
        Ok(())
    }
}

fn fmt_ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn write_group(w: &mut impl io::Write, g: &GroupSummary) -> io::Result<()> {
    let closes: Vec<String> = g.closes.iter().map(|(k, n)| format!("{k} {n}")).collect();
    writeln!(
        w,
        "[{}] connections {}{}; resets sent {} received {}; SYN retransmits {}, SYN-ACK retransmits {}; TIME_WAIT entries {}",
        g.key,
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
            None => writeln!(w, "  {:<18} {:>8}", name, 0)?,
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
