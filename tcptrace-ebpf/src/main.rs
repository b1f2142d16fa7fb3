//! The tcptrace kernel program.
//!
//! Small and boring on purpose: read the tracepoint fields, drop non-TCP and filtered events
//! in the kernel, stamp the time, attach the owning process, and write one fixed-size record
//! to the ring buffer. A failed reserve is counted (per CPU), so loss is never silent.
//!
//! Field offsets come from `tcptrace_common::tp`, written from the tracepoint format files
//! (`/sys/kernel/tracing/events/{sock,tcp}/*/format`); userspace checks at start-up that the
//! running kernel's formats match those same tables before it loads this program.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tcptrace_common::{
    AF_INET, AF_INET6, Event, EventKind, FILTER_IPV4_ONLY, FILTER_IPV6_ONLY, FILTER_LPORT,
    FILTER_PORT, FILTER_RPORT, FLAG_AUX_SRTT, FLAG_OWNER_CACHED, FLAG_OWNER_CURRENT,
    FLAG_OWNER_LISTENER, MAX_FILTER_PORTS, Owner, PORT_EITHER, PORT_LOCAL, PORT_REMOTE, RING_BYTES,
    counter, tp,
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

/// Byte offset of `struct tcp_sock::srtt_us`, found by userspace in the kernel's BTF; 0 when
/// unknown (then no RTT is read).
#[unsafe(no_mangle)]
static SRTT_OFFSET: u32 = 0;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Port -> `PORT_*` bits; read only when a port filter is active.
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_FILTER_PORTS, 0);

/// Socket address -> the process that last acted on it from its own context.
#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// (family << 16 | local port) -> the process that put a socket in LISTEN on that port, so a
/// child socket (created in softirq context at the final ACK) starts with its server's owner.
#[map]
static LISTENERS: LruHashMap<u32, Owner> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a per-CPU array slot of this CPU; tracepoint programs
        // do not nest on one CPU for the same program, so the increment is not torn.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn port_in(port: u16, bit: u8) -> bool {
    // SAFETY: the value is a plain u8 copied out immediately.
    unsafe { PORTS.get(&port) }.is_some_and(|v| *v & bit != 0)
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
    if flags & FILTER_LPORT != 0 && !port_in(sport, PORT_LOCAL) {
        return false;
    }
    if flags & FILTER_RPORT != 0 && !port_in(dport, PORT_REMOTE) {
        return false;
    }
    if flags & FILTER_PORT != 0 && !port_in(sport, PORT_EITHER) && !port_in(dport, PORT_EITHER) {
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

/// The owner of a socket no process-context event has named yet.
const NO_OWNER: Owner = Owner {
    tgid: 0,
    pid: 0,
    comm: [0; 16],
};

fn current_owner() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    Owner {
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// An IPv4 address field as the first four bytes of a 16-byte address, read as one u32
/// (byte-wise copies from the context compile to pointer arithmetic the verifier rejects).
#[inline(always)]
fn addr4(ctx: &TracePointContext, offset: usize) -> [u8; 16] {
    let v: u32 = field(ctx, offset);
    let b = v.to_ne_bytes();
    [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

#[inline(always)]
fn widen(b: [u8; 4]) -> [u8; 16] {
    [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// An 8-aligned IPv6 address field read as two u64 words.
#[inline(always)]
fn addr16(ctx: &TracePointContext, offset: usize) -> [u8; 16] {
    let hi: u64 = field(ctx, offset);
    let lo: u64 = field(ctx, offset + 8);
    let (a, b) = (hi.to_ne_bytes(), lo.to_ne_bytes());
    [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        b[7],
    ]
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

    let (owner, mut flags) = owner_for(skaddr, old, new, family, sport);
    let mut aux = 0;
    if old == TCP_SYN_RECV
        && new == TCP_ESTABLISHED
        && let Some(rtt) = synack_rtt_us(skaddr)
    {
        aux = rtt;
        flags |= FLAG_AUX_SRTT;
    }

    emit(&Event {
        ts_ns,
        skaddr,
        saddr,
        daddr,
        tgid: owner.tgid,
        pid: owner.pid,
        comm: owner.comm,
        sport,
        dport,
        family,
        kind: EventKind::StateChange as u16,
        old: old as u8,
        new: new as u8,
        flags,
        _pad: 0,
        aux,
    });
}

/// The smoothed RTT (µs) of a socket leaving SYN_RECV. For a server child the kernel seeds it
/// in tcp_check_req (tcp_synack_rtt_meas) from the SYN-ACK's send time to this final ACK,
/// before tcp_rcv_state_process moves the child to ESTABLISHED, and it is the first sample,
/// so `srtt_us >> 3` is that interval exactly. After a SYN-ACK retransmit (Karn) the kernel
/// takes the sample from the timestamp echo, or leaves srtt 0 when timestamps are off: 0 is
/// reported as unknown.
#[inline(always)]
fn synack_rtt_us(skaddr: u64) -> Option<u32> {
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    let off = unsafe { core::ptr::read_volatile(&SRTT_OFFSET) };
    if off == 0 || skaddr == 0 {
        return None;
    }
    // SAFETY: the helper checks the address; a fault returns an error, never a crash.
    let srtt: u32 =
        unsafe { bpf_probe_read_kernel((skaddr + u64::from(off)) as *const u32) }.ok()?;
    (srtt >> 3 > 0).then_some(srtt >> 3)
}

/// Resolves the owning process of `skaddr` and keeps the owner caches current.
#[inline(always)]
fn owner_for(skaddr: u64, old: u32, new: u32, family: u16, sport: u16) -> (Owner, u8) {
    let listener_key = (u32::from(family) << 16) | u32::from(sport);
    if in_owner_context(old, new) {
        let owner = current_owner();
        if new == TCP_CLOSE {
            let _ = OWNERS.remove(&skaddr);
        } else {
            let _ = OWNERS.insert(&skaddr, &owner, 0);
        }
        if new == TCP_LISTEN {
            let _ = LISTENERS.insert(&listener_key, &owner, 0);
        }
        return (owner, FLAG_OWNER_CURRENT);
    }
    let found = if old == TCP_LISTEN && new == TCP_SYN_RECV {
        // A new child: its owner is the listener's. Any OWNERS entry for this address is a
        // dead socket's (the address was reused), so it is replaced, never used.
        // SAFETY: the value is copied out before any other map operation.
        let inherited = unsafe { LISTENERS.get(&listener_key) }.copied();
        match inherited {
            Some(o) => {
                let _ = OWNERS.insert(&skaddr, &o, 0);
            }
            None => {
                let _ = OWNERS.remove(&skaddr);
            }
        }
        inherited.map(|o| (o, FLAG_OWNER_LISTENER))
    } else {
        // SAFETY: as above.
        unsafe { OWNERS.get(&skaddr) }
            .copied()
            .map(|o| (o, FLAG_OWNER_CACHED))
    };
    if new == TCP_CLOSE {
        let _ = OWNERS.remove(&skaddr);
    }
    found.unwrap_or((NO_OWNER, 0))
}

#[inline(always)]
fn emit(event: &Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(0);
            count(counter::SUBMITTED);
        }
        None => count(counter::LOST),
    }
}

/// Common reader for the `tcp:*` tracepoints that carry ports, family and addresses in a
/// [`tp::tcp_addrs`] block starting at `base` (the tracepoint's `ADDRS`). Those offsets are
/// not all naturally aligned, so they go through the probe-read helper; these events are rare
/// compared with state changes.
#[inline(always)]
fn tcp_event(ctx: &TracePointContext, kind: EventKind, skaddr: u64, state: u32, base: usize) {
    use tp::tcp_addrs as a;
    // SAFETY (all reads below): offsets come from the tracepoint format and lie inside it.
    let sport: u16 = unsafe { ctx.read_at(base + a::SPORT) }.unwrap_or(0);
    let dport: u16 = unsafe { ctx.read_at(base + a::DPORT) }.unwrap_or(0);
    let family: u16 = unsafe { ctx.read_at(base + a::FAMILY) }.unwrap_or(0);
    if !pass(family, sport, dport) {
        count(counter::FILTERED);
        return;
    }
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let (saddr, daddr) = if family == AF_INET {
        let s: [u8; 4] = unsafe { ctx.read_at(base + a::SADDR) }.unwrap_or([0; 4]);
        let d: [u8; 4] = unsafe { ctx.read_at(base + a::DADDR) }.unwrap_or([0; 4]);
        (widen(s), widen(d))
    } else {
        let s: [u8; 16] = unsafe { ctx.read_at(base + a::SADDR_V6) }.unwrap_or([0; 16]);
        let d: [u8; 16] = unsafe { ctx.read_at(base + a::DADDR_V6) }.unwrap_or([0; 16]);
        (s, d)
    };
    emit_with_cached_owner(
        ts_ns,
        skaddr,
        (saddr, daddr),
        (sport, dport, family),
        kind,
        state,
    );
}

/// Emits a non-transition event, with the socket's owner if the cache knows it (these
/// tracepoints run in softirq or timer context, where the current task means nothing).
#[inline(always)]
fn emit_with_cached_owner(
    ts_ns: u64,
    skaddr: u64,
    (saddr, daddr): ([u8; 16], [u8; 16]),
    (sport, dport, family): (u16, u16, u16),
    kind: EventKind,
    state: u32,
) {
    // SAFETY: copied out at once.
    let (owner, flags) = match unsafe { OWNERS.get(&skaddr) }.copied() {
        Some(o) => (o, FLAG_OWNER_CACHED),
        None => (NO_OWNER, 0),
    };
    emit(&Event {
        ts_ns,
        skaddr,
        saddr,
        daddr,
        tgid: owner.tgid,
        pid: owner.pid,
        comm: owner.comm,
        sport,
        dport,
        family,
        kind: kind as u16,
        old: state as u8,
        new: 0,
        flags,
        _pad: 0,
        aux: 0,
    });
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
        let d: [u8; 16] = unsafe { ctx.read_at(f::DADDR + sa::ADDR6) }.unwrap_or([0; 16]);
        (addr16(&ctx, f::SADDR + sa::ADDR6), d)
    };
    emit_with_cached_owner(
        ts_ns,
        skaddr,
        (saddr, daddr),
        (sport, dport, family),
        EventKind::SendReset,
        state,
    );
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
