//! Puts events back in time order.
//!
//! The ring buffer is shared by all CPUs: a record stamped slightly earlier on one CPU can
//! be reserved after a later one from another CPU. Each socket's own events are ordered (they
//! run under its lock), but the merged stream is not. This stage holds events for a short
//! window of event time and releases them sorted, so the stream, the charts' timelines and
//! the tracker all see time moving forward.

use std::{cmp::Reverse, collections::BinaryHeap};

use crate::decode::Event;

/// How far behind the newest event an event is held.
pub const WINDOW_NS: u64 = 2_000_000;

#[derive(Debug)]
struct Held {
    ts_ns: u64,
    seq: u64,
    ev: Event,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.ts_ns, self.seq) == (o.ts_ns, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.ts_ns, self.seq).cmp(&(o.ts_ns, o.seq))
    }
}

/// A min-heap on (timestamp, arrival order).
#[derive(Debug, Default)]
pub struct Reorder {
    heap: BinaryHeap<Reverse<Held>>,
    newest_ns: u64,
    seq: u64,
    window_ns: u64,
}

impl Reorder {
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            ..Self::default()
        }
    }

    /// Adds an event and releases, in order, every event older than the window.
    pub fn push(&mut self, ev: Event, mut release: impl FnMut(Event)) {
        self.newest_ns = self.newest_ns.max(ev.ts_ns);
        self.seq += 1;
        self.heap.push(Reverse(Held {
            ts_ns: ev.ts_ns,
            seq: self.seq,
            ev,
        }));
        let horizon = self.newest_ns.saturating_sub(self.window_ns);
        while let Some(Reverse(h)) = self.heap.peek() {
            if h.ts_ns > horizon {
                break;
            }
            if let Some(Reverse(h)) = self.heap.pop() {
                release(h.ev);
            }
        }
    }

    /// Releases everything held, in order (at exit, or when the source has gone quiet).
    pub fn flush(&mut self, mut release: impl FnMut(Event)) {
        while let Some(Reverse(h)) = self.heap.pop() {
            release(h.ev);
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, tests::raw_state};

    fn ev(ts: u64) -> Event {
        decode(&raw_state(ts, ts, 1, 4)).expect("decodes")
    }

    #[test]
    fn releases_in_time_order_after_the_window() {
        let mut r = Reorder::new(10);
        let mut out = Vec::new();
        for ts in [100, 95, 103, 120, 111, 140] {
            r.push(ev(ts), |e| out.push(e.ts_ns));
        }
        assert_eq!(out, vec![95, 100, 103, 111, 120]);
        r.flush(|e| out.push(e.ts_ns));
        assert_eq!(out, vec![95, 100, 103, 111, 120, 140]);
        assert!(r.is_empty());
    }

    #[test]
    fn equal_timestamps_keep_arrival_order() {
        let mut r = Reorder::new(0);
        let mut out = Vec::new();
        let mut a = ev(5);
        a.sock = 1;
        let mut b = ev(5);
        b.sock = 2;
        r.push(a, |e| out.push(e.sock));
        r.push(b, |e| out.push(e.sock));
        assert_eq!(out, vec![1, 2]);
    }
}
