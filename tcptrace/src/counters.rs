//! The kernel's counters of a run (events submitted, filtered, lost) as a plain value: read
//! by `collect` from the live program, written to and read from recordings, shown by every
//! output. Lives apart from `collect` so that what needs no root (`report`, the summary)
//! never imports the kernel loader.

/// Loss and throughput counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Events dropped because the ring buffer was full.
    pub lost: u64,
    /// Events written to the ring buffer.
    pub submitted: u64,
    /// Events dropped by the kernel-side filter.
    pub filtered: u64,
    /// Tracepoint hits the kernel skipped because another BPF program was running on that
    /// CPU (`recursion_misses` of our programs): lost too, and counted.
    #[serde(default)]
    pub missed: u64,
}

impl Counters {
    /// Every event tcptrace did not get: ring buffer full, or skipped by the kernel.
    pub fn all_lost(&self) -> u64 {
        self.lost + self.missed
    }
}

/// What lost events are and what helps, in the same words wherever loss is reported.
pub const LOSS_EXPLAINED: &str = "the ring buffer was full (this process fell behind), or the \
kernel skipped the program while another BPF program ran on that CPU; figures miss them (a \
larger --ring-kib or a narrower filter helps)";
