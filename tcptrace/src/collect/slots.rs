//! The state-change program's slot rings, read straight from this process's memory.
//!
//! What: one ring per CPU of fixed-size slots (whole events) in a memory-mappable BPF array,
//! which the kernel program that handles state changes writes, and a second array of
//! positions: `head`, which only the program writes, after a record, and `tail`, which only
//! this reader writes, after it copied the records out. Why: the kernel runs that program at
//! most once at a time per CPU, so each ring has one writer and needs no lock, where the
//! BPF ring buffer's reserve and submit take a lock with interrupts off (about 40 ns of the
//! program's 216 per event on 2 cores, see `tcptrace_common::SLOT_BYTES`). Every other
//! program keeps the ring buffers, and a record there wakes the reader for these rings too.
//!
//! The program turns them on only where userspace asks, and userspace asks only on x86-64,
//! whose stores become visible in program order: the program has no barrier to order a
//! record's stores before its `head` on other CPUs.
//!
//! On by default on x86-64 (`TCPTRACE_RINGS=kernel` turns them off, for comparisons). In
//! one fresh-clone test run they were on for, the lab case `lab_first_synack_dropped` found a
//! connection's first events missing on both ends; they were off by default until the cause
//! was found: a reader held up between two CPUs' rings (the slot rings are read after the
//! ring buffers, one more ring), and a reorder stage that went by the newest event alone
//! (see `reorder`). The lab test of a reader held up between rings checks both transports.

use std::{
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use aya::maps::MapData;
use tcptrace_common::{
    EVENT_V1_SIZE, Event, SLOT_BYTES, SlotPos, XFLAG_CGROUP, XFLAG_CLOSE_STATS, XFLAG_NETNS,
};

/// Whether this build may turn the slot rings on (see the module's paragraph).
pub const SUPPORTED: bool = cfg!(target_arch = "x86_64");

/// The most memory the slot rings take in all by default: each CPU gets the ring size it
/// would have had as a ring buffer, unless so many CPUs are possible that this budget
/// would be passed (then less each). A size the user chose gets at least what it would
/// have had as ring buffers (up to 8 of them, `tcptrace_common::RINGS`).
const BUDGET: u64 = 32 << 20;
/// The least a CPU's slot ring may be cut to for the budget: below it (more than 128
/// possible CPUs at the default size) the state changes go to the ring buffers instead.
const MIN_CUT_BYTES: u64 = 256 << 10;

/// Slots per CPU (a power of two) for rings of `ring_bytes` each on `cpus` possible CPUs,
/// `explicit` when the user chose that size; `None` when the slot rings would not fit the
/// budget (then every record goes to the ring buffers).
pub fn slots_per_cpu(ring_bytes: u32, cpus: usize, explicit: bool) -> Option<u64> {
    let cpus = cpus.max(1) as u64;
    let asked = u64::from(ring_bytes);
    let budget = if explicit {
        BUDGET.max(asked * u64::from(tcptrace_common::RINGS))
    } else {
        BUDGET
    };
    let bytes = asked.min(budget / cpus);
    if bytes < asked && bytes < MIN_CUT_BYTES {
        return None;
    }
    let slots = (bytes / SLOT_BYTES as u64).max(1);
    Some(1 << slots.ilog2())
}

/// The program's `SLOT_WAKE_MASK` for rings of `slots` slots: the reader is woken once every
/// eighth of a ring per CPU (a power of two), as the ring buffers wake it
/// (`collect::wake_mask`), with most of the ring to spare.
pub fn wake_mask(slots: u64) -> u64 {
    (slots / 8).max(1).next_power_of_two().min(slots.max(1)) - 1
}

/// A shared mapping of a BPF array's values, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; this process touches it only through
// `SlotRings`, which one thread owns at a time.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the values of `map` (a `BPF_F_MMAPABLE` array), `len` bytes of them.
    fn new(map: &MapData, len: usize, writable: bool, name: &str) -> Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let page = 4096;
        let len = len.div_ceil(page) * page;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of a map fd this process holds; nothing else is
        // mapped at the address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping the {name} map ({len} bytes) into memory"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).context("mmap returned a null mapping")?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The slot rings of every CPU, mapped.
pub struct SlotRings {
    slots: Mapping,
    pos: Mapping,
    cpus: usize,
    per_cpu: u64,
    /// The maps, kept open while they are mapped.
    _maps: [MapData; 2],
}

impl SlotRings {
    /// Maps the program's `SLOTS` (`cpus` rings of `per_cpu` slots) and `SLOT_POS` arrays.
    pub fn new(slots: MapData, pos: MapData, cpus: usize, per_cpu: u64) -> Result<Self> {
        let slot_len = cpus * per_cpu as usize * SLOT_BYTES;
        let pos_len = cpus * std::mem::size_of::<SlotPos>();
        let slot_map = Mapping::new(&slots, slot_len, false, "SLOTS")?;
        let pos_map = Mapping::new(&pos, pos_len, true, "SLOT_POS")?;
        Ok(Self {
            slots: slot_map,
            pos: pos_map,
            cpus,
            per_cpu,
            _maps: [slots, pos],
        })
    }

    /// Hands every record the rings hold to `f` (each CPU's in order), then frees their
    /// slots. Returns how many. `pause`: a test hook, a stop after the first CPU's ring (see
    /// the collector's `test_pause`).
    pub fn drain(&mut self, mut f: impl FnMut(&[u8]), pause: Option<std::time::Duration>) -> usize {
        let mut n = 0;
        for cpu in 0..self.cpus {
            if cpu == 1
                && let Some(p) = pause
            {
                std::thread::sleep(p);
            }
            // SAFETY: the mappings hold `cpus` positions and `cpus * per_cpu` slots (`new`
            // maps that much of maps sized so at load), and live as long as `self`.
            let (ring, head, tail) = unsafe {
                let pos = self.pos.ptr.as_ptr().cast::<SlotPos>().add(cpu);
                (
                    self.slots
                        .ptr
                        .as_ptr()
                        .add(cpu * self.per_cpu as usize * SLOT_BYTES)
                        .cast_const(),
                    AtomicU64::from_ptr(&raw mut (*pos).head),
                    AtomicU64::from_ptr(&raw mut (*pos).tail),
                )
            };
            // SAFETY: `ring` starts `per_cpu` slots of this mapping.
            n += unsafe { drain_ring(ring, head, tail, self.per_cpu, &mut f) };
        }
        n
    }
}

/// Reads one ring: the records between `tail` and `head`, oldest first, then moves `tail` to
/// `head`. `head` is read with acquire ordering, so the records before it are whole; `tail`
/// is stored with release ordering, after they were copied out, so the program does not
/// write over them before. Only those slots are read (the program may be writing the
/// others), and `tail` is left alone when there were none (the program reads its cache
/// line on every event).
///
/// # Safety
/// `ring` points at `per_cpu` slots of [`SLOT_BYTES`] that stay mapped during the call.
unsafe fn drain_ring(
    ring: *const u8,
    head: &AtomicU64,
    tail: &AtomicU64,
    per_cpu: u64,
    f: &mut impl FnMut(&[u8]),
) -> usize {
    let end = head.load(Ordering::Acquire);
    let mut at = tail.load(Ordering::Relaxed);
    if at == end {
        return 0;
    }
    // The program never runs more than a ring ahead; if the words say otherwise (they are
    // shared memory), only the last ring's worth can still be there.
    if end.wrapping_sub(at) > per_cpu {
        at = end.wrapping_sub(per_cpu);
    }
    let mut n = 0;
    while at != end {
        let start = (at % per_cpu) as usize * SLOT_BYTES;
        // SAFETY: a ready slot inside the ring (as the caller promises), which the program
        // does not write until `tail` passes it.
        let slot = unsafe { std::slice::from_raw_parts(ring.add(start), SLOT_BYTES) };
        f(record_of(slot));
        at = at.wrapping_add(1);
        n += 1;
    }
    tail.store(at, Ordering::Release);
    n
}

/// The record in a slot: its first [`EVENT_V1_SIZE`] bytes when it carries no identity and
/// no close counters (what the ring buffer would have carried, so the queue holds no more
/// than before), else the whole event.
fn record_of(slot: &[u8]) -> &[u8] {
    const XFLAGS: usize = std::mem::offset_of!(Event, xflags);
    let xflags = slot
        .get(XFLAGS..XFLAGS + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes);
    if xflags & (XFLAG_CGROUP | XFLAG_NETNS | XFLAG_CLOSE_STATS) == 0 {
        &slot[..EVENT_V1_SIZE]
    } else {
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in plain memory, written as the program writes it.
    struct Fake {
        slots: Vec<u8>,
        head: AtomicU64,
        tail: AtomicU64,
        per_cpu: u64,
    }

    impl Fake {
        fn new(per_cpu: u64) -> Self {
            Self {
                slots: vec![0; per_cpu as usize * SLOT_BYTES],
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                per_cpu,
            }
        }

        /// The program's write: false (lost) when the ring is full.
        fn produce(&mut self, tag: u64, xflags: u32) -> bool {
            let head = self.head.load(Ordering::Relaxed);
            if head.wrapping_sub(self.tail.load(Ordering::Relaxed)) >= self.per_cpu {
                return false;
            }
            let start = (head % self.per_cpu) as usize * SLOT_BYTES;
            let slot = &mut self.slots[start..start + SLOT_BYTES];
            slot.fill(0xee);
            slot[..8].copy_from_slice(&tag.to_ne_bytes());
            let x = std::mem::offset_of!(Event, xflags);
            slot[x..x + 4].copy_from_slice(&xflags.to_ne_bytes());
            self.head.store(head + 1, Ordering::Release);
            true
        }

        fn drain(&mut self) -> Vec<(u64, usize)> {
            let mut out = Vec::new();
            // SAFETY: the ring is `per_cpu` slots of this Vec, alive for the call.
            unsafe {
                drain_ring(
                    self.slots.as_ptr(),
                    &self.head,
                    &self.tail,
                    self.per_cpu,
                    &mut |r: &[u8]| {
                        out.push((
                            u64::from_ne_bytes(r[..8].try_into().expect("8 bytes")),
                            r.len(),
                        ));
                    },
                );
            }
            out
        }
    }

    #[test]
    fn a_ring_hands_on_every_record_once_in_order_across_wraps() {
        let mut ring = Fake::new(8);
        let mut expected = Vec::new();
        let mut got = Vec::new();
        let mut tag = 0;
        // Batches of every size up to two rings: the ones past a ring are lost, the rest
        // come out once each, in order, whatever the wrap.
        for batch in 0..20u64 {
            let mut lost = 0;
            for _ in 0..batch {
                if ring.produce(tag, 0) {
                    expected.push(tag);
                } else {
                    lost += 1;
                }
                tag += 1;
            }
            assert_eq!(lost, batch.saturating_sub(8), "batch {batch}");
            got.extend(ring.drain().into_iter().map(|(t, _)| t));
        }
        assert_eq!(got, expected);
        assert!(ring.drain().is_empty());
    }

    #[test]
    fn a_record_with_identity_or_close_counters_is_handed_on_whole() {
        let mut ring = Fake::new(4);
        ring.produce(1, 0);
        ring.produce(2, XFLAG_CGROUP);
        ring.produce(3, XFLAG_CLOSE_STATS);
        ring.produce(4, tcptrace_common::XFLAG_NO_COMM);
        let got = ring.drain();
        assert_eq!(
            got,
            vec![
                (1, EVENT_V1_SIZE),
                (2, SLOT_BYTES),
                (3, SLOT_BYTES),
                (4, EVENT_V1_SIZE)
            ]
        );
    }

    #[test]
    fn positions_more_than_a_ring_apart_read_only_the_last_ring() {
        let mut ring = Fake::new(4);
        for t in 0..4 {
            ring.produce(t, 0);
        }
        // A tail the program could never have left behind.
        ring.head.store(10, Ordering::Relaxed);
        assert_eq!(ring.drain().len(), 4);
        assert_eq!(ring.tail.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn rings_are_sized_from_the_ring_size_and_the_cpus() {
        let two_mib = 2 << 20;
        assert_eq!(slots_per_cpu(two_mib, 2, false), Some(16_384));
        assert_eq!(slots_per_cpu(two_mib, 16, false), Some(16_384));
        // Many possible CPUs: the default is cut to the 32 MiB budget ...
        assert_eq!(slots_per_cpu(two_mib, 64, false), Some(4096));
        assert_eq!(slots_per_cpu(two_mib, 128, false), Some(2048));
        // ... and past 256 KiB a CPU the ring buffers take over.
        assert_eq!(slots_per_cpu(two_mib, 129, false), None);
        assert_eq!(slots_per_cpu(two_mib, 4096, false), None);
        // A size the user chose gets at least what 8 ring buffers of it would take.
        assert_eq!(slots_per_cpu(two_mib, 64, true), Some(4096));
        assert_eq!(slots_per_cpu(64 << 20, 64, true), Some(65_536));
        assert_eq!(slots_per_cpu(4096, 1, true), Some(32));
        assert_eq!(slots_per_cpu(4096, 4096, true), Some(32));
        for (kib, cpus) in [
            (4, 1),
            (2048, 2),
            (2048, 128),
            (1 << 20, 8),
            (1 << 20, 4096),
        ] {
            if let Some(slots) = slots_per_cpu(kib << 10, cpus, true) {
                let total = slots * SLOT_BYTES as u64 * cpus as u64;
                assert!(
                    total <= (32 << 20).max(8 * (u64::from(kib) << 10)),
                    "{kib} KiB on {cpus} CPUs: {total} bytes"
                );
            }
        }
        for slots in [1, 2, 8, 32, 1024, 16_384] {
            let m = wake_mask(slots);
            assert!(
                (m + 1).is_power_of_two() && m < slots.max(2),
                "{slots}: {m}"
            );
        }
        assert_eq!(wake_mask(16_384), 2047);
    }

    #[test]
    fn a_drain_that_finds_nothing_leaves_tail_alone() {
        let mut ring = Fake::new(4);
        ring.tail.store(7, Ordering::Relaxed);
        ring.head.store(7, Ordering::Relaxed);
        assert!(ring.drain().is_empty());
        assert_eq!(ring.tail.load(Ordering::Relaxed), 7);
    }
}
