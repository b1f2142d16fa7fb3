//! Kernel time (CLOCK_MONOTONIC) to wall-clock time, with one offset measured at start.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Offsets that turn a monotonic timestamp into wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at start, in nanoseconds.
    pub realtime_offset_ns: i64,
    /// Local time zone offset from UTC at start, in seconds.
    pub utc_offset_secs: i32,
}

fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// CLOCK_MONOTONIC now, in nanoseconds: the kernel's event time base (`bpf_ktime_get_ns`).
pub fn monotonic_now_ns() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

impl Clock {
    /// Measures the offset now (the monotonic reading is taken between two realtime ones).
    pub fn measure() -> Self {
        let r1 = now_ns(libc::CLOCK_REALTIME);
        let m = now_ns(libc::CLOCK_MONOTONIC);
        let r2 = now_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_offset_ns: r1 + (r2 - r1) / 2 - m,
            utc_offset_secs: chrono::Local::now().offset().local_minus_utc(),
        }
    }

    /// Unix time in nanoseconds of a monotonic timestamp.
    pub fn unix_ns(&self, ts_ns: u64) -> i64 {
        ts_ns as i64 + self.realtime_offset_ns
    }

    /// The event time (monotonic) of a wall-clock time: [`Clock::unix_ns`] undone.
    pub fn mono_ns(&self, unix_ns: i64) -> u64 {
        u64::try_from(unix_ns.saturating_sub(self.realtime_offset_ns)).unwrap_or(0)
    }

    /// Appends local time of day as `HH:MM:SS.uuuuuu`.
    pub fn write_time_of_day(&self, out: &mut String, ts_ns: u64) {
        let local = self.unix_ns(ts_ns) + i64::from(self.utc_offset_secs) * 1_000_000_000;
        let secs = local.div_euclid(1_000_000_000);
        let micros = local.rem_euclid(1_000_000_000) / 1000;
        let day = secs.rem_euclid(86_400);
        let _ = write!(
            out,
            "{:02}:{:02}:{:02}.{:06}",
            day / 3600,
            day / 60 % 60,
            day % 60,
            micros
        );
    }

    /// Appends the UTC time as RFC 3339 with microseconds, e.g. `2026-11-25T14:55:01.123456Z`.
    pub fn write_rfc3339(&self, out: &mut String, ts_ns: u64) {
        let ns = self.unix_ns(ts_ns);
        let secs = ns.div_euclid(1_000_000_000);
        let micros = ns.rem_euclid(1_000_000_000) / 1000;
        match chrono::DateTime::from_timestamp(secs, 0) {
            Some(dt) => {
                let _ = write!(out, "{}.{micros:06}Z", dt.format("%Y-%m-%dT%H:%M:%S"));
            }
            None => {
                let _ = write!(out, "{ns}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_from_the_offset() {
        let c = Clock {
            realtime_offset_ns: 1_764_082_501_000_000_000 - 5_000_000_000,
            utc_offset_secs: 3600,
        };
        let mut s = String::new();
        c.write_time_of_day(&mut s, 5_000_000_000 + 123_456_789);
        assert_eq!(s, "15:55:01.123456");
        s.clear();
        c.write_rfc3339(&mut s, 5_000_000_000 + 123_456_789);
        assert_eq!(s, "2025-11-25T14:55:01.123456Z");
    }
}
