//! The tcptrace kernel program.
//!
//! Small and boring on purpose: read the tracepoint fields, drop non-TCP and filtered events
//! in the kernel, stamp the time, attach the owning process where the context names it (the
//! rest is filled in by userspace), and write one fixed-size record to this CPU's ring
//! buffer. A failed reserve is counted (per CPU), so loss is never silent.
//!
//! State changes come from one of two programs on `sock:inet_sock_set_state`, whichever
//! userspace loads: the BTF-typed raw tracepoint (`inet_sock_set_state_btf`), which reads
//! the socket's own fields with plain loads the verifier checks against the kernel's BTF,
//! and costs less both in the program and around it (the kernel builds no trace record for
//! it); or, where that cannot load, the classic tracepoint (`inet_sock_set_state`), which
//! reads the record the kernel filled in and the socket's members with helper reads. Both
//! end in the same code ([`set_state`]). A second program on the BTF tracepoint
//! ([`set_state_nested`]) catches the state changes the kernel would skip because they
//! interrupted the first on its CPU.
//!
//! `skb:kfree_skb` fires for every dropped packet of every protocol: its program compares the
//! drop reason with the one number it reports (accept-queue overflow) before anything else.
//!
//! Classic tracepoint field offsets come from `tcptrace_common::tp`, written from the
//! tracepoint format files (`/sys/kernel/tracing/events/{sock,tcp}/*/format`); userspace
//! checks at start-up that the running kernel's formats match those same tables before it
//! loads this program. Socket member offsets come from the kernel's BTF.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::TracePointContext,
};
use core::mem::{MaybeUninit, offset_of};

use tcptrace_common::{
    AF_INET, AF_INET6, EVENT_V1_SIZE, Event, EventKind, FILTER_IPV4_ONLY, FILTER_IPV6_ONLY,
    FILTER_LPORT, FILTER_PORT, FILTER_RPORT, FLAG_AUX_SRTT, FLAG_OWNER_CURRENT,
    FLAG_OWNER_LISTENER, ListenKey, Listener, MAX_FILTER_NETNS, OFFS_CGROUP, OFFS_CLOSE,
    OFFS_NETNS, Owner, PORT_PLANE_EITHER, PORT_PLANE_LOCAL, PORT_PLANE_REMOTE, PORT_PLANES,
    PORT_WORDS, RING_BYTES, RINGS, SF_CGROUP, SF_COMM, SF_NETNS, SF_PID, SlotPos, SockFilter,
    SockOffsets, WAKE_BYTES, XFLAG_CGROUP, XFLAG_CLOSE_STATS, XFLAG_NETNS, XFLAG_NO_COMM, counter,
    port_slot, tp,
};

const IPPROTO_TCP: u16 = 6;

// Kernel TCP state numbers (include/net/tcp_states.h).
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_SYN_RECV: u32 = 3;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_LISTEN: u32 = 10;

/// `FILTER_*` bits, set by userspace at load time.
#[unsafe(no_mangle)]
static FILTER_FLAGS: u32 = 0;

/// A record whose per-CPU sequence number has none of these bits set wakes the reader
/// (`BPF_RB_FORCE_WAKEUP`); every other record is submitted without a wake-up. Set by
/// userspace from the ring size (an eighth of what a ring holds, a power of two, less one),
/// and the reader also drains the rings on a timer, so records never wait for a wake-up
/// longer than its period. The kernel's default (wake the reader whenever it has caught up)
/// costs a self-interrupt (irq_work) on the CPU being traced once per drain per ring: in a
/// VM an APIC write that traps, several microseconds each.
#[unsafe(no_mangle)]
static WAKE_MASK: u64 = 1023;

/// Byte offset of `struct tcp_sock::srtt_us`, found by userspace in the kernel's BTF; 0 when
/// unknown (then no RTT is read).
#[unsafe(no_mangle)]
static SRTT_OFFSET: u32 = 0;

/// Offsets of the socket members read for identity and close statistics, found by userspace
/// in the kernel's BTF; a group whose `OFFS_*` bit is clear is not read.
#[unsafe(no_mangle)]
static OFFSETS: SockOffsets = SockOffsets {
    groups: 0,
    sk_net: 0,
    net_inum: 0,
    sk_cgrp: 0,
    cgrp_kn: 0,
    kn_id: 0,
    bytes_acked: 0,
    bytes_received: 0,
    total_retrans: 0,
    srtt_us: 0,
};

/// The socket filter (`--netns`, `--cgroup`, `--pid`, `--comm`), set by userspace at load
/// time; `flags` 0 (the default) turns it off, and then nothing below is looked up.
#[unsafe(no_mangle)]
static SOCK_FILTER: SockFilter = SockFilter {
    flags: 0,
    netns_count: 0,
    netns: [0; MAX_FILTER_NETNS],
    tgid: 0,
    cgroup_level: 0,
    cgroup_id: 0,
    comm: [0; 16],
    cgrp_level: 0,
    cgrp_ancestors: 0,
    ancestors_are_ids: 0,
    _pad: 0,
};

/// The running kernel's number for `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW`, found by userspace
/// in the `skb:kfree_skb` format file; 0 when unknown (then that program is not attached).
#[unsafe(no_mangle)]
static LISTEN_OVERFLOW_REASON: u32 = 0;

/// Byte offsets in `struct sock_common` (at the start of every `struct sock`) of the family,
/// the local port (host order), the local IPv4 and the local IPv6 address, from the kernel's
/// BTF.
#[unsafe(no_mangle)]
static SKC_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static SKC_NUM: u32 = 0;
#[unsafe(no_mangle)]
static SKC_RCV_SADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_V6_RCV_SADDR: u32 = 0;

// One ring per CPU (modulo `RINGS`), named as in `RING_NAMES`; see `RINGS` for why.
#[map]
static EVENTS0: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static EVENTS1: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static EVENTS2: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static EVENTS3: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static EVENTS4: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static EVENTS5: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static EVENTS6: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static EVENTS7: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
const _: () = assert!(RINGS == 8);

/// Reserves a record of `T` (an [`Event`] or a [`ShortEvent`]) in this CPU's ring. Each arm
/// names its map directly: the verifier needs a constant map pointer at every reserve call.
#[inline(always)]
fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    // SAFETY: a helper without arguments (inlined by the verifier).
    let ring = unsafe { bpf_get_smp_processor_id() } % RINGS;
    if ring < 4 {
        if ring < 2 {
            if ring == 0 {
                EVENTS0.reserve(0)
            } else {
                EVENTS1.reserve(0)
            }
        } else if ring == 2 {
            EVENTS2.reserve(0)
        } else {
            EVENTS3.reserve(0)
        }
    } else if ring < 6 {
        if ring == 4 {
            EVENTS4.reserve(0)
        } else {
            EVENTS5.reserve(0)
        }
    } else if ring == 6 {
        EVENTS6.reserve(0)
    } else {
        EVENTS7.reserve(0)
    }
}

/// Slots per CPU less one (a power of two less one) of the state-change program's slot
/// rings, set by userspace at load time; 0 (the default) turns them off, and every record
/// goes to the ring buffers. Userspace turns them on only on CPUs that keep stores in order
/// (x86-64): a record must be whole in memory before the reader sees its `head`, and this
/// program has no store barrier to say so on other CPUs.
#[unsafe(no_mangle)]
static SLOT_MASK: u64 = 0;

/// The slot rings' [`WAKE_MASK`]: a record written at a `head` with none of these bits set
/// wakes the reader (set by userspace from the slots per CPU).
#[unsafe(no_mangle)]
static SLOT_WAKE_MASK: u64 = 2047;

/// `BPF_F_MMAPABLE`: the array can be mapped into the reader's memory.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The slot rings (see [`tcptrace_common::SLOT_BYTES`]): CPU `c`'s ring is slots
/// `c * (SLOT_MASK + 1)` onwards. Sized by userspace at load time.
#[map]
static SLOTS: Array<Slot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Each CPU's slot ring positions, by CPU number. Sized by userspace at load time.
#[map]
static SLOT_POS: Array<SlotPos> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// A slot: a whole [`Event`], 8-aligned.
#[repr(C, align(8))]
struct Slot([u8; core::mem::size_of::<Event>()]);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The port sets as a bitmap, one plane per set ([`port_slot`]); read only when a port
/// filter is active.
#[map]
static PORTS: Array<u64> = Array::with_max_entries(PORT_PLANES * PORT_WORDS, 0);

/// (network namespace, family << 16 | local port) -> the process that put a socket in LISTEN
/// on that port and the listener's cgroup, so a child socket (created in softirq context at
/// the final ACK) starts with its server's owner and cgroup (the kernel clones the child's
/// cgroup from the listener). Keyed by namespace: two namespaces listening on one port are
/// two servers.
#[map]
static LISTENERS: LruHashMap<ListenKey, Listener> = LruHashMap::with_max_entries(4096, 0);

/// Socket address -> the socket filter's verdict on it ([`PASS`] or [`DROP`]), while a socket
/// filter is set: decided once per socket, on the first event that can judge it, and
/// forgotten at its close. A socket that appears only in softirq context before anything
/// named its owner cannot be judged by `--pid` or `--comm`, and is dropped until it can.
#[map]
static SOCK_VERDICT: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65_536, 0);
const PASS: u32 = 1;
const DROP: u32 = 2;

/// The verdicts sockets had at their CLOSE, the last [`CLOSED_KEPT`] on each CPU, for the RST
/// that an abortive close sends right after (tcp_disconnect sets CLOSE, then sends it, in
/// the same system call). The CLOSE forgets the socket's [`SOCK_VERDICT`], and a reset event
/// has no owner to judge `--pid` or `--comm` by, so without these a filter by process
/// dropped the RST of every abortive close it passed (the root test
/// `lab_socket_filters_pass_exactly_their_sockets` counts resets per filter). More than one:
/// the tracepoint fires after the RST is sent, and over a veth or loopback the peer can take
/// it in a softirq on the way, closing its own socket on this CPU in between. Only a reset
/// of the same socket, on the same CPU and within [`CLOSED_VERDICT_NS`] of the CLOSE, takes
/// one (the newest, once): an older entry is another life's.
#[repr(C)]
struct ClosedVerdicts {
    next: u64,
    sk: [u64; CLOSED_KEPT],
    ts_ns: [u64; CLOSED_KEPT],
    passes: [u64; CLOSED_KEPT],
}

const CLOSED_KEPT: usize = 4;

#[map]
static CLOSED_VERDICT: PerCpuArray<ClosedVerdicts> = PerCpuArray::with_max_entries(1, 0);

/// How long after its socket's CLOSE a kept verdict holds (the RST follows within
/// microseconds; a socket at the same address within it is another life, see
/// [`take_closed_verdict`]).
const CLOSED_VERDICT_NS: u64 = 1_000_000;

/// Keeps the verdict of a socket at its CLOSE for the RST that may follow (see
/// [`ClosedVerdicts`]).
#[inline(always)]
fn keep_closed_verdict(sk: u64, ts_ns: u64, passes: bool) {
    if let Some(c) = CLOSED_VERDICT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, plain words; the index is masked.
        unsafe {
            let i = ((*c).next as usize) & (CLOSED_KEPT - 1);
            (*c).next = (*c).next.wrapping_add(1);
            (*c).sk[i] = sk;
            (*c).ts_ns[i] = ts_ns;
            (*c).passes[i] = u64::from(passes);
        }
    }
}

/// The verdict its CLOSE kept for socket `sk`, for a reset of the closed socket at `ts_ns`,
/// taken once; `None` if this CPU kept none for it lately.
#[inline(always)]
fn take_closed_verdict(sk: u64, ts_ns: u64) -> Option<bool> {
    let c = CLOSED_VERDICT.get_ptr_mut(0)?;
    // The newest entry of the socket: sockets come and go fast, and the address may have
    // closed twice within the window, as another socket first (the lab's filter test saw a
    // client's and then a server's CLOSE at one address 300 µs apart).
    let mut newest: Option<usize> = None;
    // SAFETY: as in `keep_closed_verdict`.
    unsafe {
        for i in 0..CLOSED_KEPT {
            if (*c).sk[i] == sk
                && ts_ns.wrapping_sub((*c).ts_ns[i]) <= CLOSED_VERDICT_NS
                && newest.is_none_or(|n| (*c).ts_ns[i] > (*c).ts_ns[n & (CLOSED_KEPT - 1)])
            {
                newest = Some(i);
            }
        }
        let i = newest? & (CLOSED_KEPT - 1);
        (*c).sk[i] = 0;
        Some((*c).passes[i] != 0)
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a per-CPU array slot of this CPU; a program does not
        // nest on one CPU, and the nested-event program counts into its own slots
        // ([`count_in`]), so the increment is not torn.
        unsafe { *c += 1 };
    }
}

/// [`count`] into the nested-event program's copy of the counters when `NESTED`.
#[inline(always)]
fn count_in<const NESTED: bool>(index: u32) {
    count(counter_index::<NESTED>(index));
}

#[inline(always)]
const fn counter_index<const NESTED: bool>(index: u32) -> u32 {
    if NESTED {
        counter::NESTED + index
    } else {
        index
    }
}

#[inline(always)]
fn port_in(port: u16, plane: u32) -> bool {
    let (index, bit) = port_slot(plane, port);
    PORTS.get(index).is_some_and(|w| *w & bit != 0)
}

/// True when the event passes the load-time filter.
#[inline(always)]
fn pass(family: u16, sport: u16, dport: u16) -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    let flags = unsafe { core::ptr::read_volatile(&FILTER_FLAGS) };
    if flags == 0 {
        return true;
    }
    if flags & FILTER_IPV4_ONLY != 0 && family != AF_INET {
        return false;
    }
    if flags & FILTER_IPV6_ONLY != 0 && family != AF_INET6 {
        return false;
    }
    if flags & FILTER_LPORT != 0 && !port_in(sport, PORT_PLANE_LOCAL) {
        return false;
    }
    if flags & FILTER_RPORT != 0 && !port_in(dport, PORT_PLANE_REMOTE) {
        return false;
    }
    if flags & FILTER_PORT != 0
        && !port_in(sport, PORT_PLANE_EITHER)
        && !port_in(dport, PORT_PLANE_EITHER)
    {
        return false;
    }
    true
}

/// Reads a scalar tracepoint field directly from the context (the verifier allows aligned
/// reads inside the record; cheaper than a probe-read helper call).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is a field offset from the tracepoint format, inside the record and
    // naturally aligned for T (checked by the verifier at load time).
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// An [`Owner`] as its three 8-byte words, so it moves with three loads and three stores
/// (copied as a struct, or as bytes, it compiles to byte-by-byte copies).
#[derive(Clone, Copy)]
struct OwnerWords([u64; 3]);

/// The owner of a socket no process-context event has named yet.
const NO_OWNER: OwnerWords = OwnerWords([0; 3]);

impl OwnerWords {
    /// Reads an owner from a map value (map values are 8-aligned).
    #[inline(always)]
    fn load(value: *const Owner) -> Self {
        let w = value.cast::<u64>();
        // SAFETY: `value` points at a live 24-byte, 8-aligned map value.
        unsafe { Self([w.read(), w.add(1).read(), w.add(2).read()]) }
    }
}

/// An [`Owner`] on the stack, 8-aligned so that it can be read as [`OwnerWords`] (the
/// verifier rejects misaligned stack loads).
#[repr(C, align(8))]
struct StackOwner(Owner);

impl StackOwner {
    /// The current task as an owner: the one helper that copies its name (16 bytes) writes
    /// straight into the value the maps take.
    #[inline(always)]
    fn current() -> Self {
        let pid_tgid = bpf_get_current_pid_tgid();
        let mut o = MaybeUninit::<Self>::uninit();
        let p = o.as_mut_ptr().cast::<u8>();
        // SAFETY: writes inside the 24-byte, 8-aligned value: tgid and pid at 0 and 4 (see
        // `Owner`), then the helper fills all 16 bytes of comm (NUL padded, or zeroed on
        // failure), so every byte is initialised before `assume_init`. Not zeroing comm
        // first saves a call to a memset subprogram.
        unsafe {
            p.cast::<u32>().write((pid_tgid >> 32) as u32);
            p.add(4).cast::<u32>().write(pid_tgid as u32);
            generated::bpf_get_current_comm(p.add(8).cast(), 16);
            o.assume_init()
        }
    }

    #[inline(always)]
    fn words(&self) -> OwnerWords {
        OwnerWords::load(&raw const self.0)
    }
}

/// A socket address as two 8-byte words in the record's byte order: an IPv4 address fills
/// the first four bytes, an IPv6 address all sixteen.
#[derive(Clone, Copy)]
struct Addr([u64; 2]);

/// An IPv4 address field, read as one u32 (byte-wise copies from the context compile to
/// pointer arithmetic the verifier rejects).
#[inline(always)]
fn addr4(ctx: &TracePointContext, offset: usize) -> Addr {
    let v: u32 = field(ctx, offset);
    Addr::from_v4(v)
}

impl Addr {
    /// The four bytes of `v` (as they lie in memory) followed by twelve zero bytes.
    #[inline(always)]
    fn from_v4(v: u32) -> Self {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&v.to_ne_bytes());
        Self([u64::from_ne_bytes(b), 0])
    }
}

/// An 8-aligned IPv6 address field read as two u64 words.
#[inline(always)]
fn addr16(ctx: &TracePointContext, offset: usize) -> Addr {
    Addr([field(ctx, offset), field(ctx, offset + 8)])
}

/// Reads a kernel value at `addr` of a pointer the BTF tracepoint's verifier typed: a plain
/// load (a fault reads 0, never crashes). With `BTF` false, a helper read ([`kget`]).
#[inline(always)]
fn kload<const BTF: bool, T>(addr: u64) -> Option<T> {
    if !BTF {
        return kget(addr);
    }
    // SAFETY: `addr` is a BTF-typed kernel pointer plus the offset of one of its members
    // (from the kernel's BTF); the verifier checks the member and makes the load fault-safe.
    Some(unsafe { core::ptr::read_volatile(addr as *const T) })
}

/// Reads a kernel value at `addr` (0 or a fault: `None`).
#[inline(always)]
fn kget<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: the helper checks the address; a fault returns an error, never a crash.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn offsets() -> SockOffsets {
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// The socket's identity as the record carries it: cgroup id, network namespace inode and the
/// `XFLAG_*` bits saying which of the two are known.
#[derive(Clone, Copy)]
struct Ident {
    cgroup_id: u64,
    netns: u32,
    xflags: u32,
}

const NO_IDENT: Ident = Ident {
    cgroup_id: 0,
    netns: 0,
    xflags: 0,
};

/// `sk->__sk_common.skc_net.net->ns.inum`.
#[inline(always)]
fn netns_of<const BTF: bool>(o: &SockOffsets, sk: u64) -> Option<u32> {
    if o.groups & OFFS_NETNS == 0 {
        return None;
    }
    let net: u64 = kload::<BTF, _>(sk + u64::from(o.sk_net))?;
    kload::<BTF, _>(net + u64::from(o.net_inum))
}

/// `sk->sk_cgrp_data.cgroup->kn->id`. Before Linux 5.15 the member is a u64 that holds the
/// pointer when its low bit is clear (set: cgroup v1 data, no cgroup v2 pointer); a pointer's
/// low bit is always clear, so one test serves both layouts.
#[inline(always)]
fn cgroup_of<const BTF: bool>(o: &SockOffsets, sk: u64) -> Option<u64> {
    if o.groups & OFFS_CGROUP == 0 {
        return None;
    }
    let cg: u64 = kload::<BTF, _>(sk + u64::from(o.sk_cgrp))?;
    // (The BTF tracepoint is used only with the pointer layout, and a typed pointer admits
    // no bit test.)
    if !BTF && cg & 1 != 0 {
        return None;
    }
    let kn: u64 = kload::<BTF, _>(cg + u64::from(o.cgrp_kn))?;
    kload::<BTF, _>(kn + u64::from(o.kn_id))
}

/// Both halves of the identity, read from the socket.
#[inline(always)]
fn ident_of<const BTF: bool>(o: &SockOffsets, sk: u64, netns: Option<u32>) -> Ident {
    let mut id = NO_IDENT;
    if let Some(n) = netns {
        id.netns = n;
        id.xflags |= XFLAG_NETNS;
    }
    if let Some(c) = cgroup_of::<BTF>(o, sk) {
        id.cgroup_id = c;
        id.xflags |= XFLAG_CGROUP;
    }
    id
}

/// A field of [`SOCK_FILTER`].
macro_rules! sock_filter {
    ($field:ident) => {
        // SAFETY: a plain read of a global the loader may have rewritten before load.
        unsafe { core::ptr::read_volatile(&raw const SOCK_FILTER.$field) }
    };
}

/// Whether the socket filter passes an event of socket `sk`: the socket's remembered verdict,
/// or a new one when `judge` can decide (remembered unless the socket is closing). The
/// verdict is forgotten at the socket's close, since the kernel may reuse its address.
#[inline(always)]
fn sock_passes(
    sf: u32,
    o: &SockOffsets,
    sk: u64,
    closing: bool,
    owner: Option<&OwnerWords>,
    ident: &Ident,
) -> bool {
    let verdict = if let Some(v) = SOCK_VERDICT.get_ptr(&sk) {
        // SAFETY: a live map value, a plain u32.
        unsafe { *v }
    } else {
        let verdict = match judge(sf, o, sk, owner, ident) {
            Some(true) => PASS,
            Some(false) => DROP,
            None => return false,
        };
        if !closing {
            let _ = SOCK_VERDICT.insert(&sk, &verdict, 0);
        }
        verdict
    };
    if closing {
        let _ = SOCK_VERDICT.remove(&sk);
    }
    verdict == PASS
}

/// Judges a socket by every active criterion: `None` when `--pid` or `--comm` is set and the
/// socket's owner is not known on this event (softirq context, nothing seen before it).
#[inline(always)]
fn judge(
    sf: u32,
    o: &SockOffsets,
    sk: u64,
    owner: Option<&OwnerWords>,
    ident: &Ident,
) -> Option<bool> {
    if sf & (SF_PID | SF_COMM) != 0 {
        let owner = owner?;
        if sf & SF_PID != 0 && owner.0[0] as u32 != sock_filter!(tgid) {
            return Some(false);
        }
        if sf & SF_COMM != 0 {
            // A close or shutdown carries the owner's pid but not its name: ask for it.
            let words = if owner.0[1] == 0 && owner.0[2] == 0 {
                StackOwner::current().words()
            } else {
                *owner
            };
            // SAFETY: `comm` is 16 bytes at an 8-aligned offset of the 8-aligned global.
            let want = unsafe {
                let c = (&raw const SOCK_FILTER.comm).cast::<u64>();
                [
                    core::ptr::read_volatile(c),
                    core::ptr::read_volatile(c.add(1)),
                ]
            };
            if words.0[1] != want[0] || words.0[2] != want[1] {
                return Some(false);
            }
        }
    }
    if sf & SF_NETNS != 0 {
        let netns = if ident.xflags & XFLAG_NETNS != 0 {
            Some(ident.netns)
        } else {
            netns_of::<false>(o, sk)
        };
        let Some(netns) = netns else {
            return Some(false);
        };
        let count = sock_filter!(netns_count);
        let mut hit = false;
        for i in 0..MAX_FILTER_NETNS {
            // SAFETY: as in `sock_filter!`, an element of the global's array.
            let n = unsafe { core::ptr::read_volatile(&raw const SOCK_FILTER.netns[i]) };
            hit |= (i as u32) < count && n == netns;
        }
        if !hit {
            return Some(false);
        }
    }
    if sf & SF_CGROUP != 0 && !cgroup_under(o, sk) {
        return Some(false);
    }
    Some(true)
}

/// Whether the socket's cgroup is the filter's cgroup or below it: the ancestor at the
/// filter's depth (`cgroup.ancestors[level]`, the cgroup itself at its own depth) has the
/// filter's id.
#[inline(always)]
fn cgroup_under(o: &SockOffsets, sk: u64) -> bool {
    if o.groups & OFFS_CGROUP == 0 {
        return false;
    }
    let Some(cg) = kget::<u64>(sk + u64::from(o.sk_cgrp)) else {
        return false;
    };
    if cg & 1 != 0 {
        return false;
    }
    let depth = sock_filter!(cgroup_level);
    let Some(level) = kget::<i32>(cg + u64::from(sock_filter!(cgrp_level))) else {
        return false;
    };
    if level < 0 || (level as u32) < depth {
        return false;
    }
    let slot = cg + u64::from(sock_filter!(cgrp_ancestors)) + 8 * u64::from(depth);
    let id = if sock_filter!(ancestors_are_ids) != 0 {
        kget::<u64>(slot)
    } else {
        kget::<u64>(slot)
            .and_then(|a| kget::<u64>(a + u64::from(o.cgrp_kn)))
            .and_then(|kn| kget::<u64>(kn + u64::from(o.kn_id)))
    };
    id == Some(sock_filter!(cgroup_id))
}

/// What the socket knew at its close: bytes acked and received, segments retransmitted, the
/// last smoothed RTT. All four or none.
#[derive(Clone, Copy)]
struct CloseStats {
    acked: u64,
    received: u64,
    retrans: u32,
    srtt_us: u32,
}

/// Bytes of `tcp_sock` read in one go when `srtt_us`, `bytes_received` and `bytes_acked`
/// lie within it (they do on recent kernels: Linux 6.18 has them 152 bytes apart), so the
/// close costs two kernel reads instead of four. Every kernel read is a helper call.
const CLOSE_WINDOW: usize = 160;

#[repr(C, align(8))]
struct Window([u8; CLOSE_WINDOW]);

#[inline(always)]
fn close_stats<const BTF: bool>(o: &SockOffsets, sk: u64) -> Option<CloseStats> {
    if o.groups & OFFS_CLOSE == 0 {
        return None;
    }
    if BTF {
        // `sk` is typed as a `tcp_sock` (see `inet_sock_set_state_btf`).
        let tp = sk;
        return Some(CloseStats {
            acked: kload::<true, _>(tp + u64::from(o.bytes_acked))?,
            received: kload::<true, _>(tp + u64::from(o.bytes_received))?,
            retrans: kload::<true, _>(tp + u64::from(o.total_retrans))?,
            srtt_us: kload::<true, u32>(tp + u64::from(o.srtt_us))? >> 3,
        });
    }
    let retrans: u32 = kget(sk + u64::from(o.total_retrans))?;
    // The offsets are load-time constants (read-only data), so the verifier knows which
    // branch runs and that every window read below is in bounds.
    let base = o.srtt_us.min(o.bytes_received).min(o.bytes_acked);
    let (rs, rr, ra) = (
        (o.srtt_us - base) as usize,
        (o.bytes_received - base) as usize,
        (o.bytes_acked - base) as usize,
    );
    let (srtt, received, acked): (u32, u64, u64) =
        if rs + 4 <= CLOSE_WINDOW && rr + 8 <= CLOSE_WINDOW && ra + 8 <= CLOSE_WINDOW {
            let mut w = MaybeUninit::<Window>::uninit();
            // SAFETY: the helper writes the whole window or fails (then it is not read); it
            // checks the kernel address itself.
            let ret = unsafe {
                generated::bpf_probe_read_kernel(
                    w.as_mut_ptr().cast(),
                    CLOSE_WINDOW as u32,
                    (sk + u64::from(base)) as *const _,
                )
            };
            if ret != 0 {
                return None;
            }
            // SAFETY: each read lies inside the window (checked just above), which the helper
            // filled.
            unsafe {
                let p = w.as_ptr().cast::<u8>();
                (
                    p.add(rs).cast::<u32>().read_unaligned(),
                    p.add(rr).cast::<u64>().read_unaligned(),
                    p.add(ra).cast::<u64>().read_unaligned(),
                )
            }
        } else {
            (
                kget(sk + u64::from(o.srtt_us))?,
                kget(sk + u64::from(o.bytes_received))?,
                kget(sk + u64::from(o.bytes_acked))?,
            )
        };
    Some(CloseStats {
        acked,
        received,
        retrans,
        srtt_us: srtt >> 3,
    })
}

/// The BTF tracepoint's socket as a `struct tcp_sock` (whose members lie beyond the
/// `struct sock` the verifier typed it as), or `None` for a socket of another kind.
#[inline(always)]
fn tcp_sock_of(sk: u64) -> Option<u64> {
    // SAFETY: a helper that checks the socket's kind and returns a typed pointer or NULL.
    let tp = unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) } as u64;
    (tp != 0).then_some(tp)
}

/// Everything a record says besides the owner.
struct Record {
    ts_ns: u64,
    skaddr: u64,
    saddr: Addr,
    daddr: Addr,
    sport: u16,
    dport: u16,
    family: u16,
    kind: EventKind,
    old: u8,
    new: u8,
    flags: u8,
    aux: u32,
    ident: Ident,
    close: Option<CloseStats>,
}

/// True for transitions that only a system call on the socket makes, so the current task is
/// the socket's owner: connect, listen, close and shutdown.
#[inline(always)]
fn in_owner_context(old: u32, new: u32) -> bool {
    matches!(new, TCP_SYN_SENT | TCP_LISTEN | TCP_FIN_WAIT1)
        || (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK)
        || (old == TCP_LISTEN && new == TCP_CLOSE)
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    try_set_state(&ctx);
    0
}

#[inline(always)]
fn try_set_state(ctx: &TracePointContext) {
    use tp::inet_sock_set_state as f;
    let protocol: u16 = field(ctx, f::PROTOCOL);
    if protocol != IPPROTO_TCP {
        return;
    }
    let sport: u16 = field(ctx, f::SPORT);
    let dport: u16 = field(ctx, f::DPORT);
    let family: u16 = field(ctx, f::FAMILY);
    if !pass(family, sport, dport) {
        count(counter::FILTERED);
        return;
    }
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let skaddr: u64 = field(ctx, f::SKADDR);
    let old: u32 = field(ctx, f::OLDSTATE);
    let new: u32 = field(ctx, f::NEWSTATE);

    let (saddr, daddr) = if family == AF_INET {
        (addr4(ctx, f::SADDR), addr4(ctx, f::DADDR))
    } else {
        (addr16(ctx, f::SADDR_V6), addr16(ctx, f::DADDR_V6))
    };
    set_state::<false, false>(
        ts_ns,
        skaddr,
        old,
        new,
        (saddr, daddr),
        (sport, dport, family),
    );
}

/// Offsets of the socket members the BTF tracepoint reads (what the classic tracepoint's
/// TP_fast_assign copies), from the kernel's BTF (`btf::sk_fields` in userspace, which
/// lists them in this order).
#[unsafe(no_mangle)]
static SK_FIELDS: [u32; 8] = [0; 8];

#[inline(always)]
fn sk_field(i: usize) -> usize {
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    unsafe { core::ptr::read_volatile(&raw const SK_FIELDS[i]) as usize }
}

/// The same transition, from the BTF-typed raw tracepoint: the socket's fields are plain
/// loads from the socket (no record is built for us, no helper reads them).
#[aya_ebpf::macros::btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
    if let Some(t) = TAKEN.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array. A nested event that interrupts between
        // the stores finds this event in neither entry, as it would a moment earlier (see
        // [`set_state_nested`]).
        unsafe {
            let me = Taken::of(&ctx, &raw mut (*t).scratch[0]);
            let recent = &raw mut (*t).recent;
            if !same_stack(core::ptr::read_volatile(&raw const (*recent).args), me.args) {
                Taken::copy(recent, &raw mut (*t).older);
            }
            Taken::copy(&me, recent);
        }
    }
    btf_set_state::<false>(&ctx);
    0
}

/// The same state change when the kernel skipped [`inet_sock_set_state_btf`] for it. The
/// kernel runs a program at most once at a time per CPU: a state change made by a softirq
/// (a packet arriving, a timer) that interrupts the main program on its CPU, which happens
/// under mass closes, finds it running and is skipped (counted in its `recursion_misses`);
/// one interrupt can carry a burst of hundreds. This second program on the same tracepoint,
/// attached after it so that it runs right after it for every event, handles an event
/// unless the main program took it.
///
/// It knows by [`TAKEN`]. On entry the main program notes the event and where the kernel
/// built the event's arguments: a local array of the kernel function that runs each
/// program, so at one address for both programs of one event, on the stack of the context
/// the event came in (a task's, or the interrupt stack: softirqs run there, except after an
/// interrupt of user mode, when no program of the task is running). It keeps one entry per
/// stack, for the last two stacks it ran on. This program takes the event as taken when
/// either entry holds it at its own arguments' address, and marks the entry consumed. An
/// interrupt's events go to the interrupt stack's entry and leave the interrupted
/// context's alone, wherever the interrupt came: inside the main program (its events are
/// skipped there, then not found here, and handled), between the two programs, or inside
/// this one (the kernel skips this one for them; the main program took them).
///
/// This relies on what runs between the two programs of one event on a CPU: interrupts
/// only, as tracepoint probes run with preemption off. PREEMPT_RT kernels from Linux 7.0
/// run them with migration off instead: there (a task preempted between the two programs
/// while two other tasks' events come and go) an event can be handled twice, or skipped by
/// both, and userspace warns at start-up (`preemptible_tracepoints` in `collect.rs`).
///
/// A flag that the main program set while it ran missed the bursts that interrupted it
/// in the kernel's own code around it (after the kernel marks it running, before its first
/// instruction, and after its last): 62-224 events in about one mass close in eight. One
/// entry kept per exact address, not per stack, missed bursts whose events came at two call
/// depths.
#[aya_ebpf::macros::btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_nested(ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
    let Some(t) = TAKEN.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot of a per-CPU array.
    unsafe {
        let me = Taken::of(&ctx, &raw mut (*t).scratch[1]);
        for entry in [&raw mut (*t).recent, &raw mut (*t).older] {
            if me.is(entry) {
                // Consumed: a later event of a socket at a reused address cannot match it.
                core::ptr::write_volatile(&raw mut (*entry).states, CONSUMED);
                return 0;
            }
        }
    }
    count(counter::NESTED_SEEN);
    btf_set_state::<true>(&ctx);
    0
}

/// One state change the main program took: where the kernel built its arguments, and the
/// socket's address with its old and new state (a socket passes through one transition once,
/// and its address is reused only after events in between).
#[derive(Clone, Copy)]
#[repr(C)]
struct Taken {
    args: u64,
    sk: u64,
    states: u64,
}

/// Whether two argument addresses lie on one stack (see [`SAME_STACK`]).
#[inline(always)]
fn same_stack(a: u64, b: u64) -> bool {
    a.wrapping_sub(b).wrapping_add(SAME_STACK) < 2 * SAME_STACK
}

/// The states of a consumed [`Taken`]: no transition's.
const CONSUMED: u64 = u64::MAX;

/// Two argument addresses this close are on one stack: a kernel stack is 16 KiB or more and
/// the tracepoint's frames lie well within 8 KiB of its top, while two stacks' frames lie
/// at least a stack and a guard page apart less that depth.
const SAME_STACK: u64 = 8 << 10;

impl Taken {
    /// The event of `ctx`. `scratch` is a word of the calling program's own: the address of
    /// the arguments passes through it to become a number the verifier lets the program
    /// subtract and compare (a pointer admits neither).
    ///
    /// # Safety
    /// `scratch` points at a map value word only this program writes.
    #[inline(always)]
    unsafe fn of(ctx: &aya_ebpf::programs::BtfTracePointContext, scratch: *mut u64) -> Self {
        let old: i32 = ctx.arg(1);
        let new: i32 = ctx.arg(2);
        // SAFETY: as the caller promises.
        let args = unsafe {
            core::ptr::write_volatile(scratch, ctx.as_ptr() as u64);
            core::ptr::read_volatile(scratch)
        };
        Self {
            args,
            sk: ctx.arg(0),
            states: ((old as u64) << 32) | u64::from(new as u32),
        }
    }

    /// Copies word by word (a struct copy compiles to a detour through the stack).
    ///
    /// # Safety
    /// Both point at live, 8-aligned values.
    #[inline(always)]
    unsafe fn copy(from: *const Self, to: *mut Self) {
        // SAFETY: as the caller promises; volatile, so that the stores stay in this order
        // and are not merged with the caller's.
        unsafe {
            // No address first and the address last, so that an event that interrupts the
            // copy never finds a mix of two entries at an address.
            core::ptr::write_volatile(&raw mut (*to).args, 0);
            core::ptr::write_volatile(&raw mut (*to).sk, (*from).sk);
            core::ptr::write_volatile(&raw mut (*to).states, (*from).states);
            core::ptr::write_volatile(&raw mut (*to).args, (*from).args);
        }
    }

    /// Whether `other` (a live map value) holds this event.
    ///
    /// # Safety
    /// `other` points at a live, 8-aligned value.
    #[inline(always)]
    unsafe fn is(&self, other: *const Self) -> bool {
        // SAFETY: as the caller promises; volatile, as another program writes it.
        unsafe {
            core::ptr::read_volatile(&raw const (*other).args) == self.args
                && core::ptr::read_volatile(&raw const (*other).sk) == self.sk
                && core::ptr::read_volatile(&raw const (*other).states) == self.states
        }
    }
}

/// The main program's [`Taken`] of this CPU on the last two stacks it ran on (see
/// [`set_state_nested`]), and a scratch word for each program.
#[repr(C)]
struct TakenPair {
    recent: Taken,
    older: Taken,
    scratch: [u64; 2],
}

#[map]
static TAKEN: PerCpuArray<TakenPair> = PerCpuArray::with_max_entries(1, 0);

/// The BTF tracepoint's work: read the socket's fields, filter, stamp, record. `NESTED`: run
/// by [`set_state_nested`] (its own counters).
#[inline(always)]
fn btf_set_state<const NESTED: bool>(ctx: &aya_ebpf::programs::BtfTracePointContext) {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // SAFETY: loads at BTF member offsets of a live socket the verifier types (a fault in a
    // BTF load reads 0, never crashes).
    unsafe {
        let protocol = core::ptr::read_volatile(sk.add(sk_field(0)).cast::<u16>());
        if protocol != IPPROTO_TCP {
            return;
        }
        // The socket as a `tcp_sock`, so that the verifier admits loads of its inet_sock
        // and tcp_sock members (it types the argument as a `struct sock`).
        let Some(tp) = tcp_sock_of(sk as u64) else {
            return;
        };
        let sk = tp as *const u8;
        let family = core::ptr::read_volatile(sk.add(sk_field(1)).cast::<u16>());
        let sport = u16::from_be(core::ptr::read_volatile(sk.add(sk_field(2)).cast::<u16>()));
        let dport = u16::from_be(core::ptr::read_volatile(sk.add(sk_field(3)).cast::<u16>()));
        if !pass(family, sport, dport) {
            count_in::<NESTED>(counter::FILTERED);
            return;
        }
        let ts_ns = bpf_ktime_get_ns();
        let (saddr, daddr) = if family == AF_INET {
            (
                Addr::from_v4(core::ptr::read_volatile(sk.add(sk_field(4)).cast::<u32>())),
                Addr::from_v4(core::ptr::read_volatile(sk.add(sk_field(5)).cast::<u32>())),
            )
        } else {
            let s6 = sk.add(sk_field(6)).cast::<u32>();
            let d6 = sk.add(sk_field(7)).cast::<u32>();
            let w = |p: *const u32, i: usize| {
                let lo = core::ptr::read_volatile(p.add(i)) as u64;
                let hi = core::ptr::read_volatile(p.add(i + 1)) as u64;
                u64::from_ne_bytes(((hi << 32) | lo).to_ne_bytes())
            };
            (Addr([w(s6, 0), w(s6, 2)]), Addr([w(d6, 0), w(d6, 2)]))
        };
        set_state::<true, NESTED>(
            ts_ns,
            sk as u64,
            old as u32,
            new as u32,
            (saddr, daddr),
            (sport, dport, family),
        );
    }
}

/// What both tracepoints share once the socket's fields are read; `BTF`: `skaddr` is the BTF
/// tracepoint's typed socket pointer, read with plain loads.
#[inline(always)]
fn set_state<const BTF: bool, const NESTED: bool>(
    ts_ns: u64,
    skaddr: u64,
    old: u32,
    new: u32,
    (saddr, daddr): (Addr, Addr),
    (sport, dport, family): (u16, u16, u16),
) {
    let o = offsets();
    let (owner, mut flags, ident) = owner_for::<BTF>(&o, skaddr, old, new, family, sport);
    let sf = sock_filter!(flags);
    if sf != 0 {
        let known = flags & (FLAG_OWNER_CURRENT | FLAG_OWNER_LISTENER) != 0;
        let closing = new == TCP_CLOSE;
        let passes = sock_passes(sf, &o, skaddr, closing, known.then_some(&owner), &ident);
        if closing {
            keep_closed_verdict(skaddr, ts_ns, passes);
        }
        if !passes {
            count_in::<NESTED>(counter::FILTERED);
            return;
        }
    }
    let close = if new == TCP_CLOSE && old != TCP_LISTEN {
        close_stats::<BTF>(&o, skaddr)
    } else {
        None
    };
    let mut aux = 0;
    if old == TCP_SYN_RECV
        && new == TCP_ESTABLISHED
        && let Some(rtt) = synack_rtt_us::<BTF>(skaddr)
    {
        aux = rtt;
        flags |= FLAG_AUX_SRTT;
    }

    emit::<NESTED>(
        &Record {
            ts_ns,
            skaddr,
            saddr,
            daddr,
            sport,
            dport,
            family,
            kind: EventKind::StateChange,
            old: old as u8,
            new: new as u8,
            flags,
            aux,
            ident,
            close,
        },
        owner,
        !NESTED,
    );
}

/// The smoothed RTT (µs) of a socket leaving SYN_RECV. For a server child the kernel seeds it
/// in tcp_check_req (tcp_synack_rtt_meas) from the SYN-ACK's send time to this final ACK,
/// before tcp_rcv_state_process moves the child to ESTABLISHED, and it is the first sample,
/// so `srtt_us >> 3` is that interval exactly. After a SYN-ACK retransmit (Karn) the kernel
/// takes the sample from the timestamp echo, or leaves srtt 0 when timestamps are off: 0 is
/// reported as unknown.
#[inline(always)]
fn synack_rtt_us<const BTF: bool>(skaddr: u64) -> Option<u32> {
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    let off = unsafe { core::ptr::read_volatile(&SRTT_OFFSET) };
    if off == 0 || skaddr == 0 {
        return None;
    }
    let srtt: u32 = if BTF {
        kload::<true, _>(skaddr + u64::from(off))?
    } else {
        // SAFETY: the helper checks the address; a fault returns an error, never a crash.
        unsafe { bpf_probe_read_kernel((skaddr + u64::from(off)) as *const u32) }.ok()?
    };
    (srtt >> 3 > 0).then_some(srtt >> 3)
}

/// The owning process of a socket, where the program knows it without a per-socket map:
/// the current task in a system call on the socket (connect, listen, shutdown, close), and
/// the listener's process for a new server child. Every other transition runs in softirq or
/// timer context and goes out without an owner; userspace fills it in from the socket's
/// earlier events (`tcptrace/src/owners.rs`). A per-socket owner map here cost a hash lookup
/// on nearly every event plus an LRU insert and delete per socket: about half the program's
/// time.
///
/// The socket's identity (cgroup, network namespace) is read the same way, only on a socket's
/// first event (connect, listen, a server child's creation), and userspace carries it to the
/// socket's later events: reading it costs five dependent kernel reads.
#[inline(always)]
fn owner_for<const BTF: bool>(
    o: &SockOffsets,
    sk: u64,
    old: u32,
    new: u32,
    family: u16,
    sport: u16,
) -> (OwnerWords, u8, Ident) {
    let family_port = (u32::from(family) << 16) | u32::from(sport);
    if in_owner_context(old, new) {
        if old != TCP_CLOSE {
            // A close or shutdown: the owner's pid, but not its name, which userspace has
            // known since the socket's first event (or finds by pid). bpf_get_current_comm
            // was about a tenth of the program's time.
            let pid_tgid = bpf_get_current_pid_tgid();
            let ident = Ident {
                xflags: XFLAG_NO_COMM,
                ..NO_IDENT
            };
            return (
                OwnerWords([pid_tgid.rotate_left(32), 0, 0]),
                FLAG_OWNER_CURRENT,
                ident,
            );
        }
        // connect or listen: the socket's first event.
        let owner = StackOwner::current();
        let ident = ident_of::<BTF>(o, sk, netns_of::<BTF>(o, sk));
        if new == TCP_LISTEN {
            let key = ListenKey {
                netns: ident.netns,
                family_port,
            };
            let value = Listener {
                owner: owner.0,
                cgroup_id: ident.cgroup_id,
                xflags: ident.xflags & XFLAG_CGROUP,
                _pad: 0,
            };
            let _ = LISTENERS.insert(&key, &value, 0);
        }
        return (owner.words(), FLAG_OWNER_CURRENT, ident);
    }
    if old == TCP_LISTEN && new == TCP_SYN_RECV {
        let netns = netns_of::<BTF>(o, sk);
        let key = ListenKey {
            netns: netns.unwrap_or(0),
            family_port,
        };
        if let Some(l) = LISTENERS.get_ptr(&key) {
            // SAFETY: a live map value; its cgroup words are plain integers.
            let (cgroup_id, xflags) = unsafe { ((*l).cgroup_id, (*l).xflags) };
            let mut ident = Ident {
                cgroup_id,
                netns: netns.unwrap_or(0),
                xflags: xflags & XFLAG_CGROUP,
            };
            if netns.is_some() {
                ident.xflags |= XFLAG_NETNS;
            }
            if ident.xflags & XFLAG_CGROUP == 0 {
                ident = ident_of::<BTF>(o, sk, netns);
            }
            return (
                OwnerWords::load(l.cast::<Owner>()),
                FLAG_OWNER_LISTENER,
                ident,
            );
        }
        return (NO_OWNER, 0, ident_of::<BTF>(o, sk, netns));
    }
    (NO_OWNER, 0, NO_IDENT)
}

/// The first [`EVENT_V1_SIZE`] bytes of an [`Event`]: what a record that carries no identity
/// and no close counters (most of them) takes in the ring, so a ring holds 43% more of them
/// (userspace decodes records of either length).
#[repr(C, align(8))]
struct ShortEvent([u8; EVENT_V1_SIZE]);

const _: () = assert!(core::mem::size_of::<ShortEvent>() == EVENT_V1_SIZE);

/// Writes one record straight into the ring buffer, word by word at the [`Event`] field
/// offsets (built on the stack and copied, it took a byte-by-byte copy of the record). A
/// record with the socket's cgroup or namespace or its close counters takes a whole
/// [`Event`]; any other the [`ShortEvent`] prefix. Two reserve sites, each of a constant size.
///
/// `slot`: the caller is the state-change program (not the nested-event one), the one
/// program that may write the slot rings ([`emit_slot`]).
#[inline(always)]
fn emit<const NESTED: bool>(r: &Record, owner: OwnerWords, slot: bool) {
    if slot && emit_slot(r, owner) {
        return;
    }
    if r.close.is_some() || r.ident.xflags & (XFLAG_CGROUP | XFLAG_NETNS) != 0 {
        let Some(mut entry) = reserve::<Event>() else {
            count_in::<NESTED>(counter::LOST);
            return;
        };
        let base = entry.as_mut_ptr().cast::<u8>();
        emit_head(base, r, owner);
        emit_tail(base, r);
        entry.submit(submit_flags::<NESTED>());
    } else {
        let Some(mut entry) = reserve::<ShortEvent>() else {
            count_in::<NESTED>(counter::LOST);
            return;
        };
        emit_head(entry.as_mut_ptr().cast::<u8>(), r, owner);
        entry.submit(submit_flags::<NESTED>());
    }
}

/// Writes a record into this CPU's slot ring; false when the slot rings are off, or the
/// ring is busy (then the caller uses the ring buffer). Only the state-change program may
/// call it, so each ring has one writer: the kernel runs it at most once at a time per CPU
/// from Linux 6.1 (and its stable backports), and on older kernels a run that interrupts
/// another on its CPU finds `busy` set (an interrupt sees its CPU's stores in program
/// order). The record is written whole (every field, zero where unknown) before `head`
/// moves past it.
#[inline(always)]
fn emit_slot(r: &Record, owner: OwnerWords) -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    let mask = unsafe { core::ptr::read_volatile(&SLOT_MASK) };
    if mask == 0 {
        return false;
    }
    // SAFETY: a helper without arguments (inlined by the verifier).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(pos) = SLOT_POS.get_ptr_mut(cpu) else {
        return false;
    };
    // SAFETY: this CPU's positions in a live map value. `tail` is the reader's, read once;
    // `head` is this program's alone, and is stored after the record's fields (volatile
    // stores, in program order, which x86-64 makes visible in that order).
    unsafe {
        if core::ptr::read_volatile(&raw const (*pos).busy) != 0 {
            return false;
        }
        core::ptr::write_volatile(&raw mut (*pos).busy, 1);
        let head = core::ptr::read_volatile(&raw const (*pos).head);
        let tail = core::ptr::read_volatile(&raw const (*pos).tail);
        let slot = if head.wrapping_sub(tail) > mask {
            None
        } else {
            SLOTS.get_ptr_mut((u64::from(cpu) * (mask + 1) + (head & mask)) as u32)
        };
        let Some(slot) = slot else {
            core::ptr::write_volatile(&raw mut (*pos).busy, 0);
            count(counter::LOST);
            return true;
        };
        let base = slot.cast::<u8>();
        emit_head(base, r, owner);
        emit_tail(base, r);
        core::ptr::write_volatile(&raw mut (*pos).head, head.wrapping_add(1));
        core::ptr::write_volatile(&raw mut (*pos).busy, 0);
        count(counter::SLOTTED);
        // The reader sleeps on the ring buffers, so a record there wakes it for this ring.
        if head & core::ptr::read_volatile(&SLOT_WAKE_MASK) == 0
            && let Some(mut entry) = reserve::<WakeRecord>()
        {
            entry.write(WakeRecord(0));
            entry.submit(BPF_RB_FORCE_WAKEUP);
        }
    }
    true
}

/// What [`emit_slot`] puts in the ring buffer to wake the reader ([`WAKE_BYTES`] long).
#[repr(C)]
struct WakeRecord(u64);

const _: () = assert!(core::mem::size_of::<WakeRecord>() == WAKE_BYTES);

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Counts a submitted record and picks its wake-up flag (see [`WAKE_MASK`]).
#[inline(always)]
fn submit_flags<const NESTED: bool>() -> u64 {
    let Some(c) = COUNTERS.get_ptr_mut(counter_index::<NESTED>(counter::SUBMITTED)) else {
        return 0;
    };
    // SAFETY: as in `count`; a plain read of a global the loader may have rewritten.
    let (n, mask) = unsafe {
        *c += 1;
        (*c, core::ptr::read_volatile(&WAKE_MASK))
    };
    if n & mask == 0 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Writes an [`Event`]'s first [`EVENT_V1_SIZE`] bytes at `base` (a reserved ring record at
/// least that long).
#[inline(always)]
fn emit_head(base: *mut u8, r: &Record, owner: OwnerWords) {
    let put = |offset: usize, v: u64| {
        // SAFETY: every offset below is an 8-aligned field of the reserved record
        // (ring buffer records and slots are 8-aligned). Volatile, so that no store is moved
        // after a slot ring's `head` ([`emit_slot`]).
        unsafe { base.add(offset).cast::<u64>().write_volatile(v) }
    };
    put(offset_of!(Event, ts_ns), r.ts_ns);
    put(offset_of!(Event, skaddr), r.skaddr);
    put(offset_of!(Event, saddr), r.saddr.0[0]);
    put(offset_of!(Event, saddr) + 8, r.saddr.0[1]);
    put(offset_of!(Event, daddr), r.daddr.0[0]);
    put(offset_of!(Event, daddr) + 8, r.daddr.0[1]);
    // tgid, pid, comm: the owner's 24 bytes, in the same order as in `Owner`.
    put(offset_of!(Event, tgid), owner.0[0]);
    put(offset_of!(Event, comm), owner.0[1]);
    put(offset_of!(Event, comm) + 8, owner.0[2]);
    // SAFETY (the writes below): fields of the reserved record, each naturally aligned.
    unsafe {
        let at = |offset: usize| base.add(offset);
        at(offset_of!(Event, sport))
            .cast::<u16>()
            .write_volatile(r.sport);
        at(offset_of!(Event, dport))
            .cast::<u16>()
            .write_volatile(r.dport);
        at(offset_of!(Event, family))
            .cast::<u16>()
            .write_volatile(r.family);
        at(offset_of!(Event, kind))
            .cast::<u16>()
            .write_volatile(r.kind as u16);
        at(offset_of!(Event, old)).write_volatile(r.old);
        at(offset_of!(Event, new)).write_volatile(r.new);
        at(offset_of!(Event, flags)).write_volatile(r.flags);
        at(offset_of!(Event, _pad)).write_volatile(0);
        at(offset_of!(Event, aux))
            .cast::<u32>()
            .write_volatile(r.aux);
    }
}

/// Writes an [`Event`]'s fields after the first [`EVENT_V1_SIZE`] bytes at `base` (a reserved
/// ring record of a whole [`Event`]).
#[inline(always)]
fn emit_tail(base: *mut u8, r: &Record) {
    let put = |offset: usize, v: u64| {
        // SAFETY: 8-aligned fields of the reserved record, as in `emit_head`.
        unsafe { base.add(offset).cast::<u64>().write_volatile(v) }
    };
    let c = r.close.unwrap_or(CloseStats {
        acked: 0,
        received: 0,
        retrans: 0,
        srtt_us: 0,
    });
    let xflags = r.ident.xflags
        | if r.close.is_some() {
            XFLAG_CLOSE_STATS
        } else {
            0
        };
    put(offset_of!(Event, cgroup_id), r.ident.cgroup_id);
    put(
        offset_of!(Event, netns),
        u64::from(r.ident.netns) | (u64::from(xflags) << 32),
    );
    put(offset_of!(Event, bytes_acked), c.acked);
    put(offset_of!(Event, bytes_received), c.received);
    put(
        offset_of!(Event, total_retrans),
        u64::from(c.retrans) | (u64::from(c.srtt_us) << 32),
    );
}

/// The layout [`emit`] writes: the owner's words land on `tgid`, `pid` and `comm` in order,
/// and every 8-byte write is 8-aligned.
const _: () = {
    assert!(offset_of!(Event, pid) == offset_of!(Event, tgid) + 4);
    assert!(offset_of!(Event, comm) == offset_of!(Event, tgid) + 8);
    assert!(offset_of!(Owner, pid) == 4 && offset_of!(Owner, comm) == 8);
    assert!(core::mem::size_of::<Owner>() == 24);
    assert!(offset_of!(Event, saddr) % 8 == 0 && offset_of!(Event, daddr) % 8 == 0);
    assert!(offset_of!(Event, tgid) % 8 == 0 && offset_of!(Event, comm) % 8 == 0);
    // netns and xflags, total_retrans and close_srtt_us go as one little-endian word each.
    assert!(
        offset_of!(Event, netns) % 8 == 0
            && offset_of!(Event, xflags) == offset_of!(Event, netns) + 4
    );
    assert!(offset_of!(Event, total_retrans) % 8 == 0);
    assert!(offset_of!(Event, close_srtt_us) == offset_of!(Event, total_retrans) + 4);
    assert!(offset_of!(Event, cgroup_id) % 8 == 0 && offset_of!(Event, bytes_acked) % 8 == 0);
    assert!(offset_of!(Event, bytes_received) % 8 == 0);
    assert!(offset_of!(Event, close_srtt_us) + 4 == core::mem::size_of::<Event>());
    // The short record ends where the appended fields start.
    assert!(offset_of!(Event, cgroup_id) == EVENT_V1_SIZE);
    assert!(offset_of!(Event, aux) + 4 == EVENT_V1_SIZE);
};

/// The ports-family-addresses block of the `tcp:*` tracepoints ([`tp::tcp_addrs`]), read with
/// one probe-read (several of its fields are not naturally aligned in the context, so they
/// cannot be loaded directly). The read starts [`ADDRS_SHIFT`] bytes before the block, so
/// that in this 8-aligned buffer every field is naturally aligned.
#[repr(C, align(8))]
struct AddrsBlock([u8; ADDRS_LEN]);

/// Bytes read before the block: block offset 6 (saddr) lands on buffer offset 8.
const ADDRS_SHIFT: usize = 2;
/// The block (46 bytes, up to the end of `daddr_v6`) plus the shift.
const ADDRS_LEN: usize = tp::tcp_addrs::DADDR_V6 + tp::ADDR6 + ADDRS_SHIFT;

impl AddrsBlock {
    #[inline(always)]
    fn get<T: Copy>(&self, block_offset: usize) -> T {
        // SAFETY: the offsets are those of `tp::tcp_addrs` fields, inside the buffer and
        // naturally aligned in it (asserted below).
        unsafe {
            self.0
                .as_ptr()
                .add(block_offset + ADDRS_SHIFT)
                .cast::<T>()
                .read()
        }
    }
}

const _: () = {
    use tp::tcp_addrs as a;
    assert!(tp::tcp_retransmit_skb::ADDRS >= ADDRS_SHIFT);
    assert!(tp::tcp_retransmit_synack::ADDRS >= ADDRS_SHIFT);
    assert!(tp::tcp_receive_reset::ADDRS >= ADDRS_SHIFT);
    assert!((a::SPORT + ADDRS_SHIFT) % 2 == 0 && (a::DPORT + ADDRS_SHIFT) % 2 == 0);
    assert!((a::FAMILY + ADDRS_SHIFT) % 2 == 0);
    assert!((a::SADDR + ADDRS_SHIFT) % 4 == 0 && (a::DADDR + ADDRS_SHIFT) % 4 == 0);
    assert!((a::SADDR_V6 + ADDRS_SHIFT) % 8 == 0 && (a::DADDR_V6 + ADDRS_SHIFT) % 8 == 0);
};

/// Common reader for the `tcp:*` tracepoints that carry ports, family and addresses in a
/// [`tp::tcp_addrs`] block starting at `base` (the tracepoint's `ADDRS`, at least
/// [`ADDRS_SHIFT`] bytes into the record, which the block ends).
#[inline(always)]
fn tcp_event(ctx: &TracePointContext, kind: EventKind, skaddr: u64, state: u32, base: usize) {
    use tp::tcp_addrs as a;
    // SAFETY: base - ADDRS_SHIFT .. base + 46 lies inside the tracepoint record (the offsets
    // come from its format, checked at start-up).
    let Ok(block) = (unsafe { ctx.read_at::<AddrsBlock>(base - ADDRS_SHIFT) }) else {
        return;
    };
    let sport: u16 = block.get(a::SPORT);
    let dport: u16 = block.get(a::DPORT);
    let family: u16 = block.get(a::FAMILY);
    if !pass(family, sport, dport) {
        count(counter::FILTERED);
        return;
    }
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let (saddr, daddr) = if family == AF_INET {
        (
            Addr::from_v4(block.get(a::SADDR)),
            Addr::from_v4(block.get(a::DADDR)),
        )
    } else {
        (
            Addr([block.get(a::SADDR_V6), block.get(a::SADDR_V6 + 8)]),
            Addr([block.get(a::DADDR_V6), block.get(a::DADDR_V6 + 8)]),
        )
    };
    emit_without_owner(
        ts_ns,
        skaddr,
        (saddr, daddr),
        (sport, dport, family),
        kind,
        state,
    );
}

/// Emits a non-transition event. These tracepoints run in softirq or timer context, where the
/// current task means nothing, so the owner is left to userspace's per-socket cache (and the
/// socket filter goes by the socket's remembered verdict, or by what can be read from it).
#[inline(always)]
fn emit_without_owner(
    ts_ns: u64,
    skaddr: u64,
    (saddr, daddr): (Addr, Addr),
    (sport, dport, family): (u16, u16, u16),
    kind: EventKind,
    state: u32,
) {
    let sf = sock_filter!(flags);
    // A reset sent by a close comes after the socket's CLOSE (tcp_disconnect sets CLOSE,
    // then sends it): it takes the verdict the CLOSE kept, or is judged as closing, so that
    // it leaves no verdict behind for the freed socket's address, which the next socket
    // there would inherit (the root test `lab_socket_filters_pass_exactly_their_sockets`
    // closes abortively to check both).
    let closing = state == TCP_CLOSE;
    if sf != 0 {
        let passes = match closing
            .then(|| take_closed_verdict(skaddr, ts_ns))
            .flatten()
        {
            Some(passes) => passes,
            None => sock_passes(sf, &offsets(), skaddr, closing, None, &NO_IDENT),
        };
        if !passes {
            count(counter::FILTERED);
            return;
        }
    }
    emit::<false>(
        &Record {
            ts_ns,
            skaddr,
            saddr,
            daddr,
            sport,
            dport,
            family,
            kind,
            old: state as u8,
            new: 0,
            flags: 0,
            aux: 0,
            ident: NO_IDENT,
            close: None,
        },
        NO_OWNER,
        false,
    );
}

/// SYN retransmits: only retransmits while SYN_SENT are forwarded (data retransmits are
/// frequent on busy hosts and answer a different question).
#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    use tp::tcp_retransmit_skb as f;
    let skaddr: u64 = field(&ctx, f::SKADDR);
    let state: u32 = field(&ctx, f::STATE);
    if state == TCP_SYN_SENT {
        tcp_event(&ctx, EventKind::Retransmit, skaddr, state, f::ADDRS);
    }
    0
}

/// A SYN-ACK resent for a pending connection; skaddr is the listener.
#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    use tp::tcp_retransmit_synack as f;
    let skaddr: u64 = field(&ctx, f::SKADDR);
    tcp_event(
        &ctx,
        EventKind::RetransmitSynAck,
        skaddr,
        TCP_SYN_RECV,
        f::ADDRS,
    );
    0
}

/// A RST arrived on an established or connecting socket.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    use tp::tcp_receive_reset as f;
    let skaddr: u64 = field(&ctx, f::SKADDR);
    // The state is not in this tracepoint; userspace knows it from the socket's history.
    tcp_event(&ctx, EventKind::ReceiveReset, skaddr, 0, f::ADDRS);
    0
}

/// This host sent a RST. Only resets tied to a full socket are reported (a RST answering a
/// SYN to a closed port has no socket, and the refused client sees it as a received reset).
#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    use tp::{sockaddr as sa, tcp_send_reset as f};
    let skaddr: u64 = field(&ctx, f::SKADDR);
    if skaddr == 0 {
        return 0;
    }
    let state: u32 = field(&ctx, f::STATE);
    // Addresses here are sockaddr_in/in6 (28 bytes each): family, port (network byte order),
    // then the IPv4 or IPv6 address (see `tp::sockaddr`).
    let family: u16 = field(&ctx, f::SADDR + sa::FAMILY);
    let sport_be: u16 = field(&ctx, f::SADDR + sa::PORT);
    let dport_be: u16 = field(&ctx, f::DADDR + sa::PORT);
    let sport = u16::from_be(sport_be);
    let dport = u16::from_be(dport_be);
    if !pass(family, sport, dport) {
        count(counter::FILTERED);
        return 0;
    }
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let (saddr, daddr) = if family == AF_INET {
        (
            addr4(&ctx, f::SADDR + sa::ADDR4),
            addr4(&ctx, f::DADDR + sa::ADDR4),
        )
    } else {
        // SAFETY: inside the record; daddr's IPv6 address (offset 68) is not 8-aligned, so
        // probe-read.
        let d: [u64; 2] = unsafe { ctx.read_at(f::DADDR + sa::ADDR6) }.unwrap_or([0; 2]);
        (addr16(&ctx, f::SADDR + sa::ADDR6), Addr(d))
    };
    emit_without_owner(
        ts_ns,
        skaddr,
        (saddr, daddr),
        (sport, dport, family),
        EventKind::SendReset,
        state,
    );
    0
}

/// Every freed packet of every protocol passes here, so the first thing done is the one
/// comparison that rejects all but accept-queue overflow drops.
#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let reason: u32 = field(&ctx, tp::kfree_skb::REASON);
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    if reason == unsafe { core::ptr::read_volatile(&LISTEN_OVERFLOW_REASON) } {
        listen_overflow(&ctx);
    }
    0
}

/// Reads a value at `base + off` of kernel memory (0 on a fault).
#[inline(always)]
fn kread<T: Copy + Default>(base: u64, off: &u32) -> T {
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    let off = unsafe { core::ptr::read_volatile(off) };
    // SAFETY: the helper checks the address; a fault returns an error, never a crash.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.unwrap_or_default()
}

/// An accept-queue overflow drop: reports the listener (`rx_sk`) and its local address.
#[inline(never)]
fn listen_overflow(ctx: &TracePointContext) {
    let sk: u64 = field(ctx, tp::kfree_skb::RX_SK);
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let (mut family, mut sport, mut saddr) = (0u16, 0u16, Addr([0; 2]));
    if sk != 0 {
        family = kread(sk, &SKC_FAMILY);
        sport = kread(sk, &SKC_NUM);
        saddr = if family == AF_INET6 {
            Addr([
                kread(sk, &SKC_V6_RCV_SADDR),
                // SAFETY: as in `kread`.
                unsafe {
                    bpf_probe_read_kernel(
                        (sk + u64::from(core::ptr::read_volatile(&SKC_V6_RCV_SADDR)) + 8)
                            as *const u64,
                    )
                }
                .unwrap_or(0),
            ])
        } else {
            Addr::from_v4(kread(sk, &SKC_RCV_SADDR))
        };
    }
    if family != AF_INET && family != AF_INET6 {
        // No listener to name: still counted, as an IPv4 drop at 0.0.0.0:0.
        family = AF_INET;
    }
    if !pass(family, sport, 0) {
        count(counter::FILTERED);
        return;
    }
    emit_without_owner(
        ts_ns,
        sk,
        (saddr, Addr([0; 2])),
        (sport, 0, family),
        EventKind::ListenOverflow,
        TCP_LISTEN,
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
