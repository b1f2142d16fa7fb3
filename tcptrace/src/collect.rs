//! The only module that touches the kernel: start-up checks, loading and attaching the eBPF
//! program, reading the ring buffer and the loss counters.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tcptrace_common::{
    FILTER_LPORT, FILTER_PORT, FILTER_RPORT, PORT_PLANE_EITHER, PORT_PLANE_LOCAL,
    PORT_PLANE_REMOTE, RING_BYTES, RING_NAMES, RINGS, SockFilter, counter,
};
use tokio::io::unix::AsyncFd;

use crate::{config::Filter, counters::Counters};

mod slots;

/// Where tracefs is (or was mounted by us).
#[derive(Debug, Clone)]
pub struct Tracefs(pub PathBuf);

const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Minimum kernel: the BPF ring buffer arrived in Linux 5.8.
const MIN_KERNEL: (u32, u32) = (5, 8);

/// Capabilities from /proc/self/status: CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Fails unless this process may load and attach tracing programs.
pub fn check_privileges() -> Result<()> {
    let caps = effective_caps().unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if has(21) || (has(38) && has(39)) {
        return Ok(());
    }
    bail!(
        "tcptrace needs root (or the capabilities CAP_BPF, CAP_PERFMON and \
         CAP_DAC_READ_SEARCH) to load its eBPF program: run it with sudo, e.g. `sudo tcptrace watch`; to study a recording without \
         root use `tcptrace report FILE`"
    )
}

/// Parses "6.18.44-fc-v782" into (6, 18).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Fails on kernels older than [`MIN_KERNEL`].
pub fn check_kernel() -> Result<()> {
    let release = crate::host::kernel_release();
    if let Some(v) = parse_kernel_release(&release)
        && v < MIN_KERNEL
    {
        bail!(
            "kernel {release} is too old: tcptrace needs Linux {}.{} or newer (BPF ring buffer)",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted.
pub fn ensure_tracefs() -> Result<Tracefs> {
    for p in TRACEFS_PATHS {
        match fs::metadata(Path::new(p).join("events")) {
            Ok(m) if m.is_dir() => return Ok(Tracefs(PathBuf::from(p))),
            // Mounted, but its root is mode 0700 and we are neither root nor hold
            // CAP_DAC_READ_SEARCH: mounting again would not help.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(unreadable(p)),
            _ => {}
        }
    }
    let target = TRACEFS_PATHS[0];
    let fix = format!("mount it with `mount -t tracefs nodev {target}` and run tcptrace again");
    let c_target = std::ffi::CString::new(target).context("tracefs path")?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call;
    // data is null, which mount(2) accepts for tracefs.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c_target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at {target} failed ({err}): {fix}");
    }
    match fs::metadata(Path::new(target).join("events")) {
        Ok(m) if m.is_dir() => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(unreadable(target)),
        _ => bail!("tracefs mounted at {target} but has no events directory: {fix}"),
    }
    log::warn!("tracefs was not mounted; mounted it at {target}");
    Ok(Tracefs(PathBuf::from(target)))
}

/// The error for a tracefs this process may not read (not root, no CAP_DAC_READ_SEARCH).
fn unreadable(path: &str) -> String {
    format!(
        "tracefs at {path} is not readable by this process (its mode is usually 0700): run \
         tcptrace as root, or grant it CAP_DAC_READ_SEARCH along with CAP_BPF and CAP_PERFMON \
         (e.g. AmbientCapabilities= in a systemd unit)"
    )
}

/// A tracepoint field as the format file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// Parses the fields of a tracepoint format file.
pub fn parse_format(text: &str) -> Vec<Field> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut name = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            } else if !part.starts_with("signed:") && !part.is_empty() && name.is_none() {
                // "const void * skaddr" or "__u8 saddr[4]": the name is the last word,
                // without any array suffix.
                let last = part.rsplit([' ', '*']).next().unwrap_or(part);
                name = Some(last.split('[').next().unwrap_or(last).to_owned());
            }
        }
        if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
            out.push(Field { name, offset, size });
        }
    }
    out
}

/// A tracepoint the program attaches to, with the field layout the program was written for.
pub struct Probe {
    pub category: &'static str,
    pub name: &'static str,
    pub required: bool,
    pub fields: &'static [(&'static str, usize, usize)],
}

pub const PROBES: [Probe; 6] = [
    Probe {
        category: "sock",
        name: "inet_sock_set_state",
        required: true,
        fields: tcptrace_common::tp::inet_sock_set_state::FIELDS,
    },
    Probe {
        category: "tcp",
        name: "tcp_retransmit_skb",
        required: false,
        fields: tcptrace_common::tp::tcp_retransmit_skb::FIELDS,
    },
    Probe {
        category: "tcp",
        name: "tcp_retransmit_synack",
        required: false,
        fields: tcptrace_common::tp::tcp_retransmit_synack::FIELDS,
    },
    Probe {
        category: "tcp",
        name: "tcp_receive_reset",
        required: false,
        fields: tcptrace_common::tp::tcp_receive_reset::FIELDS,
    },
    Probe {
        category: "tcp",
        name: "tcp_send_reset",
        required: false,
        fields: tcptrace_common::tp::tcp_send_reset::FIELDS,
    },
    Probe {
        category: "skb",
        name: "kfree_skb",
        required: false,
        fields: tcptrace_common::tp::kfree_skb::FIELDS,
    },
];

/// The number `skb:kfree_skb`'s format gives the drop reason `name` (from its
/// `__print_symbolic` table, e.g. `{ 40, "TCP_LISTEN_OVERFLOW" }`), if it has one.
pub fn drop_reason(format: &str, name: &str) -> Option<u32> {
    let at = format.find(&format!("\"{name}\""))?;
    let open = format[..at].rfind('{')?;
    let num = format[open + 1..at].trim().trim_end_matches(',').trim();
    num.parse().ok().filter(|n| *n != 0)
}

/// The kernel's BTF as parsed once at start-up, or why it could not be.
type KernelBtf<'a, 'b> = std::result::Result<&'a crate::btf::Btf<'b>, &'a str>;

/// What `find` finds in the kernel's BTF; an unreadable BTF or a missing member, as one
/// message.
fn from_btf<T>(
    btf: KernelBtf<'_, '_>,
    find: impl FnOnce(&crate::btf::Btf<'_>) -> std::result::Result<T, crate::btf::BtfError>,
) -> std::result::Result<T, String> {
    btf.map_err(str::to_owned)
        .and_then(|b| find(b).map_err(|e| e.to_string()))
}

/// What the kfree_skb program needs: the reason number of `TCP_LISTEN_OVERFLOW` and the
/// offsets of [`crate::btf::sock_offsets`].
type OverflowSetup = (u32, [u32; 4]);

/// What the kfree_skb program needs from this kernel; `Err` says why the probe is skipped.
fn listen_overflow_setup(
    tracefs: &Tracefs,
    btf: KernelBtf<'_, '_>,
) -> std::result::Result<OverflowSetup, String> {
    let path = tracefs.0.join("events/skb/kfree_skb/format");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reason = drop_reason(&text, "TCP_LISTEN_OVERFLOW").ok_or_else(|| {
        "skb:kfree_skb has no TCP_LISTEN_OVERFLOW drop reason on this kernel (Linux 6.x adds it)"
            .to_owned()
    })?;
    let offsets = from_btf(btf, crate::btf::sock_offsets)
        .map_err(|e| format!("no struct sock_common offsets in the kernel's BTF ({e})"))?;
    Ok((reason, offsets))
}

/// Checks a probe's format file against the layout the program reads. `Ok(None)` when it
/// matches; `Ok(Some(reason))` when the probe is unusable on this kernel.
pub fn check_probe(tracefs: &Tracefs, probe: &Probe) -> Result<Option<String>> {
    let path = tracefs
        .0
        .join("events")
        .join(probe.category)
        .join(probe.name)
        .join("format");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return Ok(Some(format!(
                "tracepoint {}:{} is missing ({}: {e})",
                probe.category,
                probe.name,
                path.display()
            )));
        }
    };
    let fields = parse_format(&text);
    for (name, offset, size) in probe.fields {
        match fields.iter().find(|f| f.name == *name) {
            Some(f) if f.offset == *offset && f.size == *size => {}
            Some(f) => {
                return Ok(Some(format!(
                    "tracepoint {}:{} field {name} is at offset {} size {} on this kernel, \
                     the program expects offset {offset} size {size}",
                    probe.category, probe.name, f.offset, f.size
                )));
            }
            None => {
                return Ok(Some(format!(
                    "tracepoint {}:{} has no field {name} on this kernel",
                    probe.category, probe.name
                )));
            }
        }
    }
    Ok(None)
}

/// `recursion_misses` of a loaded program (Linux 5.12+; 0 where the kernel lacks it).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Result<u64> {
    use std::os::fd::AsRawFd as _;
    /// The `info` member of `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain old data; all-zero is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: (&raw mut info) as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: bpf(2) with a valid attr of the stated size; the kernel writes at most
    // info_len bytes into `info`, which lives for the whole call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw const attr,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc != 0 {
        bail!(
            "reading program info failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(info.recursion_misses)
}

/// The loaded program, its ring buffer and counters.
pub struct Collector {
    ebpf: Ebpf,
    /// Names of the programs attached (for their kernel-side miss counters).
    attached: Vec<&'static str>,
    /// The ring buffers, one per CPU modulo `RINGS` (see `tcptrace_common::RINGS`).
    rings: Vec<AsyncFd<RingBuf<MapData>>>,
    /// The state-change program's rings, where it writes them ([`slots`]); `None` where
    /// every record goes to the ring buffers.
    slots: Option<slots::SlotRings>,
    /// Set while the reader thread runs at real-time priority ([`raise_priority`]).
    realtime: Option<RtGuard>,
    /// Records of one batch from every ring, merged into time order before they are handed
    /// on (see [`Merge`]).
    merge: Merge,
    /// The wait before the next drain when no wake-up comes ([`POLL_BUSY`] to [`POLL_IDLE`]).
    poll: std::time::Duration,
    /// When the next drain is due without a wake-up. Kept here, not in the waiting future,
    /// because the live loop drops that future whenever another event wins its `select!`
    /// (a tick, a scrape, a key): a timer started afresh each time would never expire
    /// under frequent other events, and the rings would not be drained.
    drain_at: tokio::time::Instant,
    /// The other merge buffer: records drained from the rings while `merge`'s are handed
    /// on go here (see [`Collector::read_batch`]).
    spare: Merge,
    /// When the drains whose records wait in `merge` started (see [`hand_on`]).
    merge_before: Option<u64>,
    /// A test hook, not an option: with `TCPTRACE_TEST_DRAIN_PAUSE_MS` set, every drain
    /// stops this long after the first CPU's ring of state changes, as a reader preempted
    /// there would (the lab test of a reader held up between rings sets it).
    test_pause: Option<std::time::Duration>,
    counters: PerCpuArray<MapData, u64>,
    /// Optional probes that could not be used, with the reason.
    pub skipped: Vec<String>,
    /// Sockets that existed at start-up whose kernel address /proc showed, with their
    /// holders, for naming the owners of sockets first seen mid-life.
    pub existing_socks: Vec<(u64, crate::procfs::Holder)>,
    /// Connected sockets that existed at start-up, with their holders (from /proc), for
    /// naming the owners of sockets first seen mid-life.
    pub existing: Vec<(
        std::net::SocketAddr,
        std::net::SocketAddr,
        crate::procfs::Holder,
    )>,
    /// Every socket /proc showed at start-up, with its state (for the dashboard's counts of
    /// sockets that predate the run).
    pub prior: Vec<crate::procfs::Prior>,
}

/// Records gathered from several rings and handed on in time order.
///
/// Each CPU writes its own ring, so one batch holds one nearly sorted run per ring; they
/// are merged here by timestamp (a stable sort, which on a few sorted runs is a merge), so
/// the reorder stage downstream mostly appends. Records that arrive after a batch was read
/// were committed after their ring was drained, so they may be older than records already
/// handed on (by a drain's duration, longer if the reader was held up in it): the reorder
/// stage holds events until the reader says when its drains started
/// ([`Delivery::ReadAllBefore`]), so it never releases one of those first.
///
/// After a burst (the queue holds up to [`QUEUE_CAP`] records, about 28 MiB, while the
/// pipeline catches up) the buffers give their memory back once [`SHRINK_AFTER`] batches in
/// a row needed less than a quarter of it, so a burst does not raise the resident memory for
/// good (the bench measures the RSS with 162,000 sockets open right after opening them,
/// itself a burst of some 500,000 transitions).
#[derive(Default)]
struct Merge {
    bytes: Vec<u8>,
    /// (timestamp, start in `bytes`, length) per record.
    spans: Vec<(u64, usize, usize)>,
    /// Largest batch (records) since the buffers were last shrunk, and batches since then.
    recent_most: usize,
    batches: u32,
}

/// Batches after which oversized merge buffers are shrunk to what they needed.
const SHRINK_AFTER: u32 = 16;
/// Buffers below this many records are never shrunk.
const SHRINK_FLOOR: usize = 4096;

impl Merge {
    fn len(&self) -> usize {
        self.spans.len()
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn push(&mut self, record: &[u8]) {
        // Every record starts with its u64 timestamp (`Event::ts_ns`); a short one sorts
        // first and is rejected by the decoder.
        let ts = record
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes);
        self.spans.push((ts, self.bytes.len(), record.len()));
        self.bytes.extend_from_slice(record);
    }

    /// Hands every gathered record to `f`, oldest first, and empties the buffer.
    fn flush(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        self.spans.sort_by_key(|s| s.0);
        for &(_, start, len) in &self.spans {
            f(&self.bytes[start..start + len]);
        }
        let n = self.spans.len();
        self.spans.clear();
        self.bytes.clear();
        self.recent_most = self.recent_most.max(n);
        self.batches += 1;
        if self.batches >= SHRINK_AFTER {
            let keep = (2 * self.recent_most).max(SHRINK_FLOOR);
            if self.spans.capacity() > 2 * keep {
                let per_record = self.bytes.capacity() / self.spans.capacity().max(1);
                self.spans.shrink_to(keep);
                self.bytes.shrink_to(keep * per_record.max(1));
            }
            self.recent_most = 0;
            self.batches = 0;
        }
        n
    }
}

/// The rings CPUs write to: CPU `n` uses ring `n % RINGS`, so with fewer CPUs than rings the
/// others stay empty.
fn rings_in_use() -> usize {
    let cpus = aya::util::nr_cpus().unwrap_or(RINGS as usize);
    cpus.clamp(1, RINGS as usize)
}

/// How often the rings are drained while records keep coming. The program wakes the reader
/// only once every [`wake_mask`]` + 1` records per CPU (a wake-up is a self-interrupt on the
/// traced CPU, several microseconds in a VM), so the reader drains on this timer instead:
/// one drain handles a batch of records (about 1,500 at 150,000 transitions/s), the live
/// stream is at most this late, and a ring (2 MiB by default: 15,420 records of the largest
/// kind) cannot fill in between at any rate the timer misses, since a forced wake-up comes at
/// a quarter of it.
const POLL_BUSY: std::time::Duration = std::time::Duration::from_millis(10);
/// The longest wait between drains: after drains that found nothing the period doubles up
/// to this, so an idle tool wakes about 10 times a second; the first record after a quiet
/// spell is at most this late.
const POLL_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// The program's `WAKE_MASK` for rings of `ring_bytes`: the reader is woken once every
/// power-of-two number of records per CPU no larger than a quarter of what a ring holds
/// (records take at most [`tcptrace_common::EVENT_SIZE`] bytes plus an 8-byte header): 2,048
/// for the default 2 MiB ring, about 14 ms of the bench's churn per CPU, so under load the
/// [`POLL_BUSY`] timer does the draining and a forced wake-up (a self-interrupt on the traced
/// CPU, then a context switch) is the exception, with three quarters of the ring to spare.
pub fn wake_mask(ring_bytes: u32) -> u64 {
    let records = u64::from(ring_bytes) / (tcptrace_common::EVENT_SIZE as u64 + 8);
    let every = (records / 4).max(1);
    (1u64 << every.ilog2()) - 1
}

/// Records handed on between two refills of the queue from the rings while a batch is
/// handed on. At about 1 µs per record in the pipeline this empties the rings every few ms
/// of CPU time, while a 4 MiB ring takes about 100 ms to fill at the rate of a mass close.
const REFILL_EVERY: usize = 2048;
/// Records one [`Collector::read_batch`] hands on at most before it returns to the live
/// loop (which calls it again at once while records are queued).
const READ_LIMIT: usize = 65_536;
/// Records past which the queue takes no more from the rings (88 bytes each plus 24 of
/// index: about 28 MiB, plus what the rings held when it was last refilled). A
/// mass close of 162,000 sockets (about 800,000 transitions in a second) needs a fraction
/// of that, since the pipeline keeps handing records on meanwhile; the memory goes back
/// after the burst ([`SHRINK_AFTER`]).
const QUEUE_CAP: usize = 262_144;

/// Moves every record the rings hold into `merge`, unless it already holds `cap` records.
/// A drain always empties every ring: stopping part-way would leave one ring's older
/// records behind another's newer ones, and the drain's start would not hold as the
/// instant before which everything was read. So the queue holds at most `cap` plus what the
/// rings can hold.
///
/// Returns when the drain started (the kernel's clock, read before the first ring): every
/// record committed before then is now in `merge` (see [`Delivery::ReadAllBefore`]); `None`
/// when it read nothing, at the cap.
fn drain_rings(
    rings: &mut [AsyncFd<RingBuf<MapData>>],
    slots: Option<&mut slots::SlotRings>,
    merge: &mut Merge,
    cap: usize,
    pause: Option<std::time::Duration>,
) -> Option<u64> {
    if merge.len() >= cap {
        return None;
    }
    let started = crate::clock::monotonic_now_ns();
    for (i, ring) in rings.iter_mut().enumerate() {
        if i == 1
            && slots.is_none()
            && let Some(p) = pause
        {
            std::thread::sleep(p);
        }
        let ring = ring.get_mut();
        while let Some(item) = ring.next() {
            // A record that only woke the reader for the slot rings.
            if item.len() != tcptrace_common::WAKE_BYTES {
                merge.push(&item);
            }
        }
    }
    if let Some(slots) = slots {
        slots.drain(|record| merge.push(record), pause);
    }
    Some(started)
}

/// What the reader hands on.
#[derive(Debug)]
pub enum Delivery<'a> {
    /// A record, as the kernel wrote it.
    Record(&'a [u8]),
    /// Every record the kernel committed before this instant (its clock) has been handed
    /// on: a drain that started then has ended, and its records went before this. A record
    /// still to come was committed after it (see `reorder`).
    ReadAllBefore(u64),
}

/// Hands on the queued records and whatever `refill` adds to the queue meanwhile, oldest
/// first per refill, until the queue is empty or [`READ_LIMIT`] records went by; `spare` is
/// the second buffer the queue swaps with; `queued_before` is [`Delivery::ReadAllBefore`]'s
/// instant for when the queue's records are handed on (kept between calls while records
/// stay queued). Returns the number of records handed on.
///
/// `refill` moves records from the kernel's rings into the queue (see [`drain_rings`]) and
/// says when it started. It runs first and then every [`REFILL_EVERY`] records, so the
/// rings are emptied while the pipeline is busy. Records added meanwhile are handed on after
/// those already sorted, and each batch ends with the start of the last drain in it.
/// Tested against draining everything first and sorting once.
fn hand_on(
    queue: &mut Merge,
    spare: &mut Merge,
    queued_before: &mut Option<u64>,
    mut refill: impl FnMut(&mut Merge) -> Option<u64>,
    mut f: impl FnMut(Delivery<'_>),
) -> usize {
    let mut total = 0;
    loop {
        if let Some(t) = refill(queue) {
            *queued_before = Some(t);
        }
        let mut batch = std::mem::replace(queue, std::mem::take(spare));
        let batch_before = queued_before.take();
        let mut since = 0usize;
        total += batch.flush(|record| {
            f(Delivery::Record(record));
            since += 1;
            if since == REFILL_EVERY {
                since = 0;
                if let Some(t) = refill(queue) {
                    *queued_before = Some(t);
                }
            }
        });
        *spare = batch;
        if let Some(t) = batch_before {
            f(Delivery::ReadAllBefore(t));
        }
        if queue.is_empty() {
            // A refill during the batch that found nothing: its start holds already.
            if let Some(t) = queued_before.take() {
                f(Delivery::ReadAllBefore(t));
            }
            return total;
        }
        if total >= READ_LIMIT {
            return total;
        }
    }
}

/// The non-zero words of the kernel's `PORTS` bitmap for `filter`'s port sets (see
/// [`tcptrace_common::port_slot`]).
fn port_words(filter: &Filter) -> std::collections::BTreeMap<u32, u64> {
    let mut words = std::collections::BTreeMap::new();
    for (plane, ports) in [
        (PORT_PLANE_LOCAL, &filter.lports),
        (PORT_PLANE_REMOTE, &filter.rports),
        (PORT_PLANE_EITHER, &filter.ports),
    ] {
        for &port in ports {
            let (index, bit) = tcptrace_common::port_slot(plane, port);
            *words.entry(index).or_insert(0) |= bit;
        }
    }
    words
}

/// The kernel's socket filter for `filter`'s `--netns`, `--cgroup`, `--pid` and `--comm`.
/// A criterion this kernel cannot check (its BTF does not show where a socket keeps the
/// namespace or cgroup) is an error naming it, never a filter that silently passes all.
fn sock_filter(
    filter: &Filter,
    offsets: &tcptrace_common::SockOffsets,
    btf: KernelBtf<'_, '_>,
) -> Result<SockFilter> {
    use tcptrace_common::{OFFS_CGROUP, OFFS_NETNS, SF_CGROUP, SF_COMM, SF_NETNS, SF_PID};
    let mut f = SockFilter::default();
    if !filter.netns.is_empty() {
        if offsets.groups & OFFS_NETNS == 0 {
            bail!(
                "--netns cannot be matched on this kernel: its BTF does not show where a \
             socket keeps its network namespace (see the warning above); drop --netns"
            );
        }
        f.flags |= SF_NETNS;
        f.netns_count = filter.netns.len() as u32;
        for (slot, inode) in f.netns.iter_mut().zip(&filter.netns) {
            *slot = *inode;
        }
    }
    if let Some(c) = &filter.cgroup {
        if offsets.groups & OFFS_CGROUP == 0 {
            bail!(
                "--cgroup cannot be matched on this kernel: its BTF does not show where a \
             socket keeps its cgroup (see the warning above); drop --cgroup"
            );
        }
        let (level, ancestors, ids) = from_btf(btf, crate::btf::cgroup_ancestry_offsets)
            .map_err(anyhow::Error::msg)
            .context(
                "--cgroup cannot be matched on this kernel: no cgroup.level and \
             cgroup.ancestors in its BTF; drop --cgroup",
            )?;
        f.flags |= SF_CGROUP;
        (f.cgroup_id, f.cgroup_level) = (c.id, c.level);
        (f.cgrp_level, f.cgrp_ancestors, f.ancestors_are_ids) = (level, ancestors, u32::from(ids));
    }
    if let Some(pid) = filter.pid {
        f.flags |= SF_PID;
        f.tgid = pid;
    }
    if let Some(comm) = &filter.comm {
        f.flags |= SF_COMM;
        for (slot, b) in f.comm.iter_mut().zip(comm.bytes().take(15)) {
            *slot = b;
        }
    }
    Ok(f)
}

/// The program that reads state changes from the BTF-typed raw tracepoint
/// `inet_sock_set_state` (Linux 5.5+, with kernel BTF): it reads the socket's fields with
/// plain loads instead of getting the record the classic tracepoint fills in, so each event
/// costs less in the program and much less around it (no trace record is built for it).
/// Where it cannot load, the classic tracepoint program (`inet_sock_set_state`) runs
/// instead; `TCPTRACE_TRACEPOINT=classic` forces that (the tests run both).
const BTF_STATE_PROGRAM: &str = "inet_sock_set_state_btf";

/// Loads and attaches [`BTF_STATE_PROGRAM`]; `vmlinux` is the kernel's BTF as read at
/// start-up.
fn attach_btf_state(ebpf: &mut Ebpf, vmlinux: &[u8]) -> Result<()> {
    let btf =
        aya::Btf::parse(vmlinux, aya::Endianness::default()).context("parsing the kernel's BTF")?;
    let prog: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut(BTF_STATE_PROGRAM)
        .with_context(|| format!("program {BTF_STATE_PROGRAM} missing from the object"))?
        .try_into()?;
    prog.load("inet_sock_set_state", &btf)
        .with_context(|| format!("the kernel verifier rejected {BTF_STATE_PROGRAM}"))?;
    prog.attach()?;
    log::debug!("state changes from the BTF tracepoint");
    // Without it the skipped events are still counted as lost: a warning, not an error.
    if let Err(e) = attach_nested(ebpf, &btf) {
        log::warn!(
            "{NESTED_STATE_PROGRAM} did not attach ({e:#}): state changes that interrupt \
             tcptrace's program on a CPU will be lost (and counted)"
        );
    } else if preemptible_tracepoints(
        &crate::host::kernel_release(),
        &fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default(),
        fs::read_to_string("/sys/kernel/realtime").ok().as_deref(),
    ) {
        log::warn!(
            "this kernel (PREEMPT_RT, Linux 7.0 or later) runs tracepoint programs with \
             preemption on, which {NESTED_STATE_PROGRAM} does not allow for: a state change \
             whose task is preempted between tcptrace's two programs while other tasks' state \
             changes run on its CPU may, rarely, be counted twice or not at all (the \
             summary's stream line counts the transitions the tracker found out of step as \
             gaps)"
        );
    }
    Ok(())
}

/// Whether the kernel runs tracepoint probes, and so BPF programs on them, preemptible: on
/// PREEMPT_RT kernels from Linux 7.0 ("tracing: Guard __DECLARE_TRACE() use of
/// __DO_TRACE_CALL() with SRCU-fast", January 2026) they run with migration off instead of
/// preemption off; every other kernel still runs them with preemption off. `version` is
/// `uname -v` (which names PREEMPT_RT), `realtime` /sys/kernel/realtime ("1" on those
/// kernels) when it exists.
fn preemptible_tracepoints(release: &str, version: &str, realtime: Option<&str>) -> bool {
    let rt = realtime.is_some_and(|r| r.trim() == "1") || version.contains("PREEMPT_RT");
    rt && parse_kernel_release(release).is_some_and(|v| v >= (7, 0))
}

fn attach_nested(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<()> {
    let nested: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut(NESTED_STATE_PROGRAM)
        .with_context(|| format!("program {NESTED_STATE_PROGRAM} missing from the object"))?
        .try_into()?;
    nested
        .load("inet_sock_set_state", btf)
        .with_context(|| format!("the kernel verifier rejected {NESTED_STATE_PROGRAM}"))?;
    nested.attach()?;
    Ok(())
}

/// The second program on the BTF tracepoint, attached after [`BTF_STATE_PROGRAM`] (so it
/// runs after it for each event): it handles the state changes the kernel skipped the first
/// for because they interrupted it on its CPU (a softirq during a close; hundreds in a mass
/// close of 162,000 sockets), and returns at once for every other. Its `recursion_misses`
/// are never losses (the first program ran for those); the first's are, less the ones this
/// one saw (`counter::NESTED_SEEN`).
const NESTED_STATE_PROGRAM: &str = "set_state_nested";

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

/// The real-time priority (SCHED_RR, the lowest: 1) of the thread that reads the rings and
/// runs the pipeline. In the fair class the reader starved whenever the load ran in another
/// scheduler group than the tracer (a terminal session's autogroup, a service's cgroup: every
/// real deployment): beside 30,000 connections/s from another session it ran 8 ms in 4 s and
/// waited 3.5 s runnable, losing 85% of the events, and neither nice -5 nor an autogroup nice
/// of -10 helped; at this priority it lost 1 event of 2.3 million. Its steady use is a few per
/// cent of a CPU; in a burst it takes what it needs to keep the rings from filling, within
/// the kernel's real-time throttling (95% of a CPU at most by default) and [`RtGuard`].
const RT_PRIORITY: libc::c_int = 1;

/// Puts the calling thread in SCHED_RR at [`RT_PRIORITY`] (with SCHED_RESET_ON_FORK, so the
/// threads it starts later stay in the normal class) when whoever started the tool left the
/// defaults, SCHED_OTHER at nice 0: a policy or nice value chosen on purpose (`chrt`,
/// `nice -n 5`, `CPUSchedulingPolicy=`/`Nice=` in a unit) is kept. Needs CAP_SYS_NICE, so it
/// happens before capabilities are dropped; without it the reader stays where it was (a
/// debug message). True when the thread is now real-time.
fn raise_priority() -> bool {
    // SAFETY: scheduler calls on the calling thread with valid arguments. errno is cleared
    // first because -1 is a valid nice value.
    unsafe {
        if libc::sched_getscheduler(0) != libc::SCHED_OTHER {
            return false;
        }
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice != 0 || *libc::__errno_location() != 0 {
            return false;
        }
        let param = libc::sched_param {
            sched_priority: RT_PRIORITY,
        };
        if libc::sched_setscheduler(0, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param) != 0 {
            log::debug!(
                "could not take real-time priority ({}); the reader may fall behind when the \
                 load runs in another scheduler group",
                std::io::Error::last_os_error()
            );
            return false;
        }
        true
    }
}

/// The safety valve of a real-time reader: a reader that used more than [`RtGuard::LIMIT`]
/// of a CPU over [`RtGuard::WINDOW`] goes back to the normal class for good (a warning says
/// so), so that a sustained overload, or a bug that makes it spin, cannot take a CPU from the
/// workload. A burst (a mass close: a second or two at full speed) stays well below it.
pub struct RtGuard {
    since: std::time::Instant,
    cpu_at: std::time::Duration,
}

impl RtGuard {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
    const LIMIT: f64 = 0.5;

    fn new() -> Self {
        Self {
            since: std::time::Instant::now(),
            cpu_at: thread_cpu(),
        }
    }

    /// Checks the last window (call it from the reader thread, e.g. once a second); false
    /// once the reader was demoted.
    fn check(&mut self) -> bool {
        let wall = self.since.elapsed();
        if wall < Self::WINDOW {
            return true;
        }
        let cpu = thread_cpu();
        let share = (cpu - self.cpu_at).as_secs_f64() / wall.as_secs_f64();
        (self.since, self.cpu_at) = (std::time::Instant::now(), cpu);
        if share <= Self::LIMIT {
            return true;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a scheduler call on the calling thread; leaving a real-time class needs no
        // privilege.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        log::warn!(
            "the reader used {:.0}% of a CPU for {:.0} s at real-time priority: it runs in the \
             normal scheduling class from now on (events may be lost when the load runs in \
             another scheduler group)",
            share * 100.0,
            wall.as_secs_f64()
        );
        false
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        // Kernels since 5.11 account BPF memory to the memory cgroup instead.
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on Linux 5.11+",
            std::io::Error::last_os_error()
        );
    }
}

/// Seeds the kernel's listener map with the listeners that existed before tracing started
/// (see `procfs`), and returns the scan for the pipeline's owner caches. Failures only cost
/// attribution, so they are warnings.
fn seed_owners(ebpf: &mut Ebpf) -> crate::procfs::Existing {
    let existing = crate::procfs::scan();
    let mut failed = 0usize;
    if let Some(map) = ebpf.map_mut("LISTENERS")
        && let Ok(mut listeners) =
            BpfHashMap::<_, tcptrace_common::ListenKey, tcptrace_common::Listener>::try_from(map)
    {
        for (netns, family, port, h) in &existing.listeners {
            let key = tcptrace_common::ListenKey {
                netns: *netns,
                family_port: (u32::from(*family) << 16) | u32::from(*port),
            };
            let mut comm = [0u8; 16];
            let n = h.comm.len().min(15);
            comm[..n].copy_from_slice(&h.comm.as_bytes()[..n]);
            let owner = tcptrace_common::Owner {
                tgid: h.pid,
                pid: h.pid,
                comm,
            };
            // The listener's cgroup is not in /proc: its children read their own.
            let value = tcptrace_common::Listener {
                owner,
                cgroup_id: 0,
                xflags: 0,
                _pad: 0,
            };
            failed += usize::from(listeners.insert(key, value, 0).is_err());
        }
    }
    if failed > 0 {
        log::warn!("could not record the owners of {failed} existing listeners");
    }
    log::debug!(
        "found owners of {} existing sockets and {} listeners",
        existing.sockets.len(),
        existing.listeners.len()
    );
    existing
}

impl Collector {
    /// Runs every start-up check, then loads and attaches the program.
    pub fn start(filter: &Filter, ring_kib: Option<u32>) -> Result<Self> {
        check_privileges()?;
        check_kernel()?;
        let tracefs = ensure_tracefs()?;
        if PROGRAM.is_empty() {
            bail!(
                "this tcptrace binary was built without its eBPF program (AYA_BUILD_SKIP was set); \
                 rebuild it with `cargo xtask setup && cargo build`"
            );
        }
        let mut usable = Vec::new();
        let mut skipped = Vec::new();
        for probe in &PROBES {
            match check_probe(&tracefs, probe)? {
                None => usable.push(probe),
                Some(reason) if probe.required => bail!(
                    "{reason}: tcptrace needs sock:inet_sock_set_state with the layout of \
                     Linux 4.16 or newer"
                ),
                Some(reason) => skipped.push(reason),
            }
        }
        // Every member offset the programs read comes from the kernel's BTF, read and parsed
        // once here; a consumer that cannot have it says so and does without.
        let vmlinux = crate::btf::read_vmlinux();
        let parsed = match &vmlinux {
            Ok(data) => crate::btf::Btf::parse(data)
                .map_err(|e| format!("parsing {}: {e}", crate::btf::VMLINUX)),
            Err(e) => Err(format!("{e:#}")),
        };
        let btf = parsed.as_ref().map_err(String::as_str);
        // Accept-queue overflow drops per listener need the reason's number and the
        // listener's address offsets; without them the probe is skipped, never guessed.
        let mut overflow: OverflowSetup = (0, [0; 4]);
        if usable.iter().any(|p| p.name == "kfree_skb") {
            match listen_overflow_setup(&tracefs, btf) {
                Ok(found) => overflow = found,
                Err(reason) => {
                    usable.retain(|p| p.name != "kfree_skb");
                    skipped.push(format!(
                        "{reason}: accept-queue overflow drops are not counted per listener \
                         (the namespace's ListenOverflows counter still is)"
                    ));
                }
            }
        }
        raise_memlock();
        let realtime = raise_priority().then(RtGuard::new);

        let flags = filter.flags();
        let mut loader = EbpfLoader::new();
        loader.override_global("FILTER_FLAGS", &flags, true);
        // Rings no CPU writes to get the smallest size the kernel allows (one page).
        let in_use = rings_in_use();
        let ring_bytes = ring_kib.map_or(RING_BYTES, |kib| kib * 1024);
        // With the slot rings (where this CPU keeps stores in order and they fit their
        // budget, see `slots::slots_per_cpu`; `TCPTRACE_RINGS=kernel` turns them off, for
        // comparisons) each CPU's slot ring is the ring size, and the ring buffers, which then
        // carry only the nested-event and `tcp:*` programs' records, a quarter of it.
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, e)| anyhow::anyhow!("reading the CPU count from {path}: {e}"))?;
        let per_cpu = slots::slots_per_cpu(ring_bytes, cpus, ring_kib.is_some()).filter(|_| {
            slots::SUPPORTED && std::env::var("TCPTRACE_RINGS").as_deref() != Ok("kernel")
        });
        let (slot_mask, side_bytes) = match per_cpu {
            Some(n) => (n - 1, (ring_bytes / 4).max(4096)),
            None => (0, ring_bytes),
        };
        loader.override_global("SLOT_MASK", &slot_mask, true);
        let slot_wake = slots::wake_mask(per_cpu.unwrap_or(1));
        loader.override_global("SLOT_WAKE_MASK", &slot_wake, true);
        if let Some(per_cpu) = per_cpu {
            let entries = u32::try_from(cpus as u64 * per_cpu).with_context(|| {
                format!(
                    "{cpus} CPUs with rings of {ring_bytes} bytes need too many slots: \
                     choose a smaller --ring-kib"
                )
            })?;
            loader.map_max_entries("SLOTS", entries);
            loader.map_max_entries("SLOT_POS", cpus as u32);
        }
        for (i, name) in RING_NAMES.iter().enumerate() {
            let bytes = if i < in_use { side_bytes } else { 4096 };
            loader.map_max_entries(name, bytes);
        }
        let mask = wake_mask(side_bytes);
        loader.override_global("WAKE_MASK", &mask, true);
        // The server handshake latency comes from the child socket's srtt_us, read at an
        // offset only this kernel's BTF knows. Without it that figure stays unmeasured (0 =
        // off in the program); never guessed.
        let srtt_offset = match from_btf(btf, crate::btf::tcp_sock_srtt_offset) {
            Ok(off) => off,
            Err(e) => {
                log::warn!(
                    "server-side handshake latency is not measured: no offset for \
                     tcp_sock.srtt_us ({e:#})"
                );
                0
            }
        };
        loader.override_global("SRTT_OFFSET", &srtt_offset, true);
        // The socket's identity (network namespace, cgroup) and its counters at close, read at
        // offsets from the BTF; a group the BTF cannot place stays unmeasured, said once here.
        let offsets = match btf.map(crate::btf::identity_offsets) {
            Ok((offsets, missing)) => {
                for m in missing {
                    log::warn!("{m}");
                }
                offsets
            }
            Err(e) => {
                log::warn!(
                    "socket cgroups, network namespaces and bytes per connection are not \
                     measured: {e:#}"
                );
                tcptrace_common::SockOffsets::default()
            }
        };
        loader.override_global("OFFSETS", &offsets, true);
        // The state changes come from the BTF tracepoint where this kernel has one and its
        // BTF names every member read (see `BTF_STATE_PROGRAM`), else the classic one.
        let sk_fields = match std::env::var("TCPTRACE_TRACEPOINT").as_deref() {
            Ok("classic") => None,
            _ => match from_btf(btf, crate::btf::sk_fields) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::info!("using the classic tracepoint: {e}");
                    None
                }
            },
        };
        let sk_field_offsets = sk_fields.unwrap_or_default();
        loader.override_global("SK_FIELDS", &sk_field_offsets, true);
        let sock_filter = sock_filter(filter, &offsets, btf)?;
        debug_assert_eq!(filter.any_sockets(), sock_filter.flags != 0);
        loader.override_global("SOCK_FILTER", &sock_filter, true);
        loader.override_global("LISTEN_OVERFLOW_REASON", &overflow.0, true);
        for (name, off) in ["SKC_FAMILY", "SKC_NUM", "SKC_RCV_SADDR", "SKC_V6_RCV_SADDR"]
            .iter()
            .zip(&overflow.1)
        {
            loader.override_global(name, off, true);
        }
        let mut ebpf = loader
            .load(PROGRAM)
            .context("loading the eBPF object failed")?;

        if filter.any_ports() {
            let mut ports: Array<_, u64> =
                Array::try_from(ebpf.map_mut("PORTS").context("the PORTS map is missing")?)?;
            for (index, word) in port_words(filter) {
                ports
                    .set(index, word, 0)
                    .with_context(|| format!("writing word {index} of the port filter map"))?;
            }
        }
        debug_assert!(
            filter.flags() & (FILTER_LPORT | FILTER_RPORT | FILTER_PORT) == 0 || filter.any_ports()
        );

        let existing = seed_owners(&mut ebpf);

        let mut attached = Vec::new();
        for probe in usable {
            if probe.name == "inet_sock_set_state"
                && sk_fields.is_some()
                && let Ok(data) = &vmlinux
            {
                match attach_btf_state(&mut ebpf, data) {
                    Ok(()) => {
                        attached.push(BTF_STATE_PROGRAM);
                        continue;
                    }
                    Err(e) => log::info!(
                        "the BTF tracepoint did not attach ({e:#}); using the classic one"
                    ),
                }
            }
            attached.push(probe.name);
            let prog: &mut TracePoint = ebpf
                .program_mut(probe.name)
                .with_context(|| format!("program {} missing from the object", probe.name))?
                .try_into()?;
            prog.load().with_context(|| {
                format!("the kernel verifier rejected the {} program", probe.name)
            })?;
            prog.attach(probe.category, probe.name).with_context(|| {
                format!(
                    "attaching to tracepoint {}:{} failed",
                    probe.category, probe.name
                )
            })?;
        }

        let mut rings = Vec::with_capacity(RING_NAMES.len());
        for name in RING_NAMES {
            let ring = RingBuf::try_from(
                ebpf.take_map(name)
                    .with_context(|| format!("ring buffer map {name} missing"))?,
            )?;
            // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as
            // long as it lives; the AsyncFd owns the ring buffer, so the fd outlives the
            // registration.
            let ring =
                unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                    .map_err(|e| {
                        anyhow::anyhow!("registering ring buffer {name} with tokio: {e}")
                    })?;
            rings.push(ring);
        }
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        let slots = if let Some(per_cpu) = per_cpu {
            let mut take = |name: &str| -> Result<MapData> {
                match ebpf.take_map(name) {
                    Some(aya::maps::Map::Array(data)) => Ok(data),
                    _ => bail!("the {name} array is missing from the eBPF object"),
                }
            };
            let (slot_map, pos_map) = (take("SLOTS")?, take("SLOT_POS")?);
            Some(slots::SlotRings::new(slot_map, pos_map, cpus, per_cpu)?)
        } else {
            None
        };
        Ok(Self {
            ebpf,
            attached,
            rings,
            slots,
            merge: Merge::default(),
            realtime,
            poll: POLL_BUSY,
            drain_at: tokio::time::Instant::now() + POLL_BUSY,
            spare: Merge::default(),
            merge_before: None,
            test_pause: std::env::var("TCPTRACE_TEST_DRAIN_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis),
            counters,
            skipped,
            existing_socks: existing.sockets,
            existing: existing.connected,
            prior: existing.all,
        })
    }

    /// Waits for a wake-up from the program or for the drain timer (unless records from an
    /// earlier call are still queued), then hands every available record of every ring to
    /// `f`, in time order. Returns the number of records handed on (0 when the timer found
    /// the rings empty).
    ///
    /// The program wakes the reader only once per [`wake_mask`]` + 1` records per CPU, so
    /// under load the drains follow the timer ([`POLL_BUSY`]); drains that find nothing
    /// stretch it to [`POLL_IDLE`].
    ///
    /// While it hands records on it keeps emptying the rings (every
    /// [`REFILL_EVERY`] records, see [`hand_on`]) into a second buffer, handed on next, so a burst the
    /// pipeline cannot keep up with waits in this process's memory instead of filling the
    /// kernel's rings. It returns after [`READ_LIMIT`] records even if more are queued, so
    /// ticks and signals still get their turn.
    pub async fn read_batch(&mut self, f: impl FnMut(Delivery<'_>)) -> Result<usize> {
        if self.merge.is_empty() {
            let woken = std::future::poll_fn(|cx| {
                for ring in &self.rings {
                    if let std::task::Poll::Ready(ready) = ring.poll_read_ready(cx) {
                        return std::task::Poll::Ready(ready.map(drop));
                    }
                }
                std::task::Poll::Pending
            });
            tokio::select! {
                woken = woken => woken.context("waiting on the ring buffers")?,
                () = tokio::time::sleep_until(self.drain_at) => {}
            }
        }
        self.clear_readiness();
        let (rings, slots, pause) = (&mut self.rings, &mut self.slots, self.test_pause);
        let n = hand_on(
            &mut self.merge,
            &mut self.spare,
            &mut self.merge_before,
            |queue| drain_rings(rings, slots.as_mut(), queue, QUEUE_CAP, pause),
            f,
        );
        self.poll = if n == 0 {
            (self.poll * 2).min(POLL_IDLE)
        } else {
            POLL_BUSY
        };
        self.drain_at = tokio::time::Instant::now() + self.poll;
        Ok(n)
    }

    /// Clears the rings' readiness before they are drained: a forced wake-up for a record
    /// committed after the drain wakes the reader again.
    fn clear_readiness(&mut self) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for ring in &mut self.rings {
            if let std::task::Poll::Ready(Ok(mut guard)) = ring.poll_read_ready_mut(&mut cx) {
                guard.clear_ready();
            }
        }
    }

    /// Reads whatever is in the ring buffers (and the queue) without waiting, in time order.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut total = 0;
        loop {
            drain_rings(
                &mut self.rings,
                self.slots.as_mut(),
                &mut self.merge,
                usize::MAX,
                None,
            );
            let n = self.merge.flush(&mut f);
            total += n;
            if n == 0 {
                return total;
            }
        }
    }

    /// Demotes a real-time reader that used too much CPU (see [`RtGuard`]); call it from the
    /// reader thread about once a second.
    pub fn guard_priority(&mut self) {
        if let Some(g) = &mut self.realtime
            && !g.check()
        {
            self.realtime = None;
        }
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Counters> {
        let read = |i: u32| -> Result<u64> {
            Ok(self
                .counters
                .get(&i, 0)
                .with_context(|| format!("reading counter {i}"))?
                .iter()
                .sum())
        };
        // Best effort: a kernel that cannot say reports 0 misses, never an error at exit.
        let mut missed = 0;
        for name in &self.attached {
            let fd = self.ebpf.program(name).map(|p| p.fd());
            if let Some(Ok(fd)) = fd {
                match recursion_misses(std::os::fd::AsFd::as_fd(fd)) {
                    Ok(n) => missed += n,
                    Err(e) => log::debug!("miss counter of {name}: {e:#}"),
                }
            }
        }
        // The nested-event program handled these (counted below as submitted, filtered or
        // lost); its own misses are not in `attached`: the first program ran for them.
        let missed = missed.saturating_sub(read(counter::NESTED_SEEN)?);
        let both = |i: u32| -> Result<u64> { Ok(read(i)? + read(counter::NESTED + i)?) };
        Ok(Counters {
            lost: both(counter::LOST)?,
            submitted: both(counter::SUBMITTED)? + read(counter::SLOTTED)?,
            filtered: both(counter::FILTERED)?,
            missed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_is_woken_at_a_power_of_two_within_a_quarter_of_the_ring() {
        assert_eq!(wake_mask(tcptrace_common::RING_BYTES), 2047);
        let record = tcptrace_common::EVENT_SIZE as u64 + 8;
        for kib in [4u32, 64, 1024, 2048, 4096, 1 << 20] {
            let m = wake_mask(kib * 1024);
            assert!((m + 1).is_power_of_two(), "{kib} KiB: {m}");
            let ring_records = u64::from(kib) * 1024 / record;
            assert!(
                m < (ring_records / 4).max(1),
                "{kib} KiB: wake every {} of {ring_records}",
                m + 1
            );
            assert!(
                2 * (m + 1) > ring_records / 4,
                "{kib} KiB: {m} is not the largest"
            );
        }
    }

    #[test]
    fn drop_reasons_are_read_from_the_print_fmt_table() {
        let f = r#"print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 39, "TCP_RFC7323_TSECR" }, { 40, "TCP_LISTEN_OVERFLOW" }, { 41, "TCP_OLD_SEQUENCE" })"#;
        assert_eq!(drop_reason(f, "TCP_LISTEN_OVERFLOW"), Some(40));
        assert_eq!(drop_reason(f, "NOT_SPECIFIED"), Some(2));
        // A name that is only a prefix of another is not found by it.
        assert_eq!(drop_reason(f, "TCP_OLD"), None);
        assert_eq!(
            drop_reason("print fmt: \"%d\", REC->reason", "TCP_LISTEN_OVERFLOW"),
            None
        );
    }

    const FORMAT: &str = "name: inet_sock_set_state
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_tracepoint_format_fields() {
        let f = parse_format(FORMAT);
        assert_eq!(
            f,
            vec![
                Field {
                    name: "common_type".into(),
                    offset: 0,
                    size: 2
                },
                Field {
                    name: "skaddr".into(),
                    offset: 8,
                    size: 8
                },
                Field {
                    name: "oldstate".into(),
                    offset: 16,
                    size: 4
                },
                Field {
                    name: "saddr_v6".into(),
                    offset: 40,
                    size: 16
                },
            ]
        );
    }

    /// A record as the merge sees it: the timestamp first, then a tag.
    fn rec(ts: u64, tag: u8) -> Vec<u8> {
        let mut r = ts.to_ne_bytes().to_vec();
        r.push(tag);
        r
    }

    #[test]
    fn merge_hands_on_the_rings_runs_in_time_order() {
        let mut m = Merge::default();
        // Ring 0 then ring 1, each in its own order; equal stamps keep arrival order.
        for (ts, tag) in [(10, 0), (30, 1), (30, 2), (50, 3)] {
            m.push(&rec(ts, tag));
        }
        for (ts, tag) in [(20, 4), (30, 5), (40, 6)] {
            m.push(&rec(ts, tag));
        }
        m.push(&[7]);
        let mut seen = Vec::new();
        let n = m.flush(|r| seen.push(r.to_vec()));
        assert_eq!(n, 8);
        let tags: Vec<u8> = seen.iter().map(|r| *r.last().expect("tag")).collect();
        assert_eq!(tags, [7, 0, 4, 1, 2, 5, 6, 3]);
        // Emptied: the next batch starts from nothing.
        assert_eq!(m.flush(|_| panic!("records left over")), 0);
    }

    #[test]
    fn merge_buffers_shrink_after_a_burst_and_hand_on_the_same_records() {
        let mut m = Merge::default();
        // A burst of 100,000 records, then ordinary batches of 50.
        for i in 0..100_000u64 {
            m.push(&rec(100_000 - i, (i % 251) as u8));
        }
        let mut burst = Vec::new();
        assert_eq!(m.flush(|r| burst.push(r.to_vec())), 100_000);
        let ts = |r: &Vec<u8>| u64::from_ne_bytes(r[..8].try_into().expect("stamp"));
        assert!(burst.windows(2).all(|w| ts(&w[0]) <= ts(&w[1])));
        let big = m.spans.capacity();
        assert!(big >= 100_000);
        // The window holding the burst keeps the buffers; the next one shrinks them.
        for b in 0..2 * SHRINK_AFTER as u64 {
            for i in 0..50u64 {
                m.push(&rec(b * 100 + 50 - i, i as u8));
            }
            let mut seen = Vec::new();
            assert_eq!(m.flush(|r| seen.push(r.to_vec())), 50);
            // Exactly what a fresh buffer hands on: shrinking changes nothing visible.
            let mut fresh = Merge::default();
            for i in 0..50u64 {
                fresh.push(&rec(b * 100 + 50 - i, i as u8));
            }
            let mut want = Vec::new();
            fresh.flush(|r| want.push(r.to_vec()));
            assert_eq!(seen, want);
        }
        assert!(
            m.spans.capacity() <= 2 * SHRINK_FLOOR && m.bytes.capacity() < big,
            "spans {} bytes {}",
            m.spans.capacity(),
            m.bytes.capacity()
        );
    }

    /// A fake kernel: rings whose producers add `per_refill` newer records each time they
    /// are drained (a burst arriving while the pipeline works), up to `total` per ring.
    struct Fake {
        rings: Vec<std::collections::VecDeque<Vec<u8>>>,
        next_ts: Vec<u64>,
        produced: Vec<usize>,
        total: usize,
        per_refill: usize,
    }

    impl Fake {
        fn new(rings: usize, total: usize, per_refill: usize) -> Self {
            let mut f = Self {
                rings: vec![Default::default(); rings],
                next_ts: (0..rings as u64).collect(),
                produced: vec![0; rings],
                total,
                per_refill,
            };
            f.produce();
            f
        }

        fn produce(&mut self) {
            let n = self.rings.len() as u64;
            for (i, ring) in self.rings.iter_mut().enumerate() {
                for _ in 0..self.per_refill {
                    if self.produced[i] >= self.total {
                        break;
                    }
                    ring.push_back(rec(self.next_ts[i], (self.produced[i] % 251) as u8));
                    // Ring i's stamps are i, i + n, i + 2n...: each ring in order, all rings
                    // interleaved in time.
                    self.next_ts[i] += n;
                    self.produced[i] += 1;
                }
            }
        }

        /// What `drain_rings` does to real rings: nothing at the cap, else everything; says
        /// when it started (the next stamp of the first ring: every record stamped before
        /// it is taken).
        fn drain(&mut self, queue: &mut Merge, cap: usize) -> Option<u64> {
            let mut started = None;
            if queue.len() < cap {
                started = self.next_ts.iter().min().copied();
                for ring in &mut self.rings {
                    while let Some(r) = ring.pop_front() {
                        queue.push(&r);
                    }
                }
            }
            self.produce();
            started
        }
    }

    #[test]
    fn handing_on_while_refilling_delivers_what_draining_first_delivers() {
        for (rings, total, per_refill, cap) in [
            (2, 100_000, 3_000, QUEUE_CAP),
            (2, 100_000, 3_000, 5_000),
            (8, 20_000, 700, QUEUE_CAP),
            (1, 10, 1, QUEUE_CAP),
        ] {
            // The simple version: every record produced, sorted once.
            let mut all = Vec::new();
            let mut simple = Fake::new(rings, total, per_refill);
            let mut m = Merge::default();
            while simple.rings.iter().any(|r| !r.is_empty()) {
                simple.drain(&mut m, usize::MAX);
            }
            m.flush(|r| all.push(r.to_vec()));
            // The refilling version, called until the queue and the rings are empty.
            let mut fake = Fake::new(rings, total, per_refill);
            let (mut queue, mut spare) = (Merge::default(), Merge::default());
            let mut seen = Vec::new();
            let (mut most, mut max_backlog) = (0, 0);
            let mut queued_before = None;
            let mut read_all_before = 0u64;
            for _ in 0..10_000 {
                let n = hand_on(
                    &mut queue,
                    &mut spare,
                    &mut queued_before,
                    |q| {
                        let (before, backlog): (usize, usize) =
                            (q.len(), fake.rings.iter().map(|r| r.len()).sum());
                        max_backlog = max_backlog.max(backlog);
                        let started = fake.drain(q, cap);
                        // Nothing taken at the cap; below it, the rings' backlog at most.
                        assert!(if before >= cap {
                            q.len() == before && started.is_none()
                        } else {
                            q.len() <= before + backlog && started.is_some()
                        });
                        most = most.max(q.len());
                        started
                    },
                    |d| match d {
                        Delivery::Record(r) => {
                            // Never a record the reader said it had handed on already.
                            let ts = u64::from_ne_bytes(r[..8].try_into().expect("stamp"));
                            assert!(ts >= read_all_before, "{ts} after {read_all_before}");
                            seen.push(r.to_vec());
                        }
                        Delivery::ReadAllBefore(t) => {
                            assert!(t >= read_all_before, "went back to {t}");
                            read_all_before = t;
                        }
                    },
                );
                // It returns once past the limit: at most one batch (a queue's worth) beyond it.
                assert!(n <= READ_LIMIT + most, "{n} handed on in one call");
                if n == 0 && queue.is_empty() && fake.rings.iter().all(|r| r.is_empty()) {
                    break;
                }
            }
            // At most the cap plus what the rings held (a real ring is bounded by its size).
            assert!(
                most < cap + max_backlog,
                "queue held {most}, cap {cap}, rings up to {max_backlog}"
            );
            assert_eq!(seen.len(), all.len(), "rings {rings} cap {cap}");
            assert_eq!(seen, all, "rings {rings} per refill {per_refill} cap {cap}");
        }
    }

    #[test]
    fn port_bitmap_holds_exactly_each_sets_ports() {
        let filter = Filter {
            lports: vec![1, 63, 64, 8080],
            rports: vec![443, 65535],
            ports: (7001..=7004).chain([22]).collect(),
            ..Filter::default()
        };
        let words = port_words(&filter);
        let lookup = |plane: u32, port: u16| {
            let (index, bit) = tcptrace_common::port_slot(plane, port);
            assert!(index < tcptrace_common::PORT_PLANES * tcptrace_common::PORT_WORDS);
            words.get(&index).is_some_and(|w| w & bit != 0)
        };
        for port in 1..=u16::MAX {
            assert_eq!(
                lookup(PORT_PLANE_LOCAL, port),
                filter.lports.contains(&port),
                "{port}"
            );
            assert_eq!(
                lookup(PORT_PLANE_REMOTE, port),
                filter.rports.contains(&port),
                "{port}"
            );
            assert_eq!(
                lookup(PORT_PLANE_EITHER, port),
                filter.ports.contains(&port),
                "{port}"
            );
        }
    }

    #[test]
    fn only_realtime_kernels_from_7_0_run_tracepoint_programs_preemptible() {
        let rt = "#1 SMP PREEMPT_RT Tue Jun 2 10:00:00 UTC 2026";
        let plain = "#1 SMP PREEMPT_DYNAMIC Tue Jun 2 10:00:00 UTC 2026";
        assert!(preemptible_tracepoints("7.0.3-rt", rt, None));
        assert!(preemptible_tracepoints("7.2.0", plain, Some("1\n")));
        assert!(!preemptible_tracepoints("7.2.0", plain, None));
        assert!(!preemptible_tracepoints("7.2.0", plain, Some("0\n")));
        assert!(!preemptible_tracepoints("6.18.44-fc-v669", rt, Some("1")));
        assert!(!preemptible_tracepoints("garbage", rt, Some("1")));
    }

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert!(parse_kernel_release("5.4.0").is_some_and(|v| v < MIN_KERNEL));
    }
}
