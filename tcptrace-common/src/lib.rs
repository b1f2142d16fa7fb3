//! The records that cross the kernel/userspace boundary.
//!
//! Both the eBPF program (`tcptrace-ebpf`, `no_std`) and the userspace tool read these
//! definitions, so their layout is the wire format of the ring buffer. Every type is
//! `#[repr(C)]` with explicit padding and a size assertion: a change here that moves a field
//! fails to compile instead of silently misreading events.
#![no_std]

/// What a [`Event`] reports. Numbers are part of the wire format; never reuse one.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `sock:inet_sock_set_state`: `old` -> `new`.
    StateChange = 1,
    /// `tcp:tcp_retransmit_skb`: a segment of this socket was retransmitted in state `old`.
    Retransmit = 2,
    /// `tcp:tcp_retransmit_synack`: a SYN-ACK for a connection to this listener was resent.
    RetransmitSynAck = 3,
    /// `tcp:tcp_receive_reset`: this socket received a RST in state `old`.
    ReceiveReset = 4,
    /// `tcp:tcp_send_reset`: a RST was sent for this socket in state `old`.
    SendReset = 5,
}

impl EventKind {
    /// Decodes the wire number; `None` for numbers this build does not know.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::StateChange),
            2 => Some(Self::Retransmit),
            3 => Some(Self::RetransmitSynAck),
            4 => Some(Self::ReceiveReset),
            5 => Some(Self::SendReset),
            _ => None,
        }
    }
}

/// `Event::flags`: the owner fields were taken from the current task because the transition
/// runs in the owning process's own context (connect, listen, close, shutdown).
pub const FLAG_OWNER_CURRENT: u8 = 1 << 0;
/// `Event::flags`: the owner fields come from the per-socket owner cache (the transition ran
/// in softirq or another task's context, and an earlier process-context event named the owner).
pub const FLAG_OWNER_CACHED: u8 = 1 << 1;
/// `Event::flags`: the owner was inherited from the listening socket on the same local port
/// (a server child socket created in softirq context).
pub const FLAG_OWNER_LISTENER: u8 = 1 << 2;
/// `Event::flags`: `aux` holds the socket's smoothed RTT in microseconds (`srtt_us >> 3`).
pub const FLAG_AUX_SRTT: u8 = 1 << 3;

/// `AF_INET` as the kernel reports it in `family`.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel reports it in `family`.
pub const AF_INET6: u16 = 10;

/// One record in the ring buffer.
///
/// Addresses are in network byte order as the kernel stores them: IPv4 addresses occupy the
/// first four bytes of `saddr`/`daddr`. Ports are in host byte order (the tracepoints report
/// them that way).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The kernel socket address: the socket's identity while it lives (addresses are reused).
    pub skaddr: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Owning process (thread group id) or 0 when unknown.
    pub tgid: u32,
    /// Owning thread id or 0 when unknown.
    pub pid: u32,
    /// Owning task's command name, NUL padded.
    pub comm: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// An [`EventKind`] number.
    pub kind: u16,
    /// Kernel TCP state number before the transition (or the state at a retransmit/reset).
    pub old: u8,
    /// Kernel TCP state number after the transition (0 for non-transition kinds).
    pub new: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    pub _pad: u8,
    /// Kind-specific extra value (see `FLAG_AUX_*`).
    pub aux: u32,
}

const _: () = assert!(core::mem::size_of::<Event>() == 88);

/// Kernel-side filter, fixed at load time and read by the program from global data.
///
/// Port sets live in the `PORTS` hash map (port -> `PORT_*` bits); these flags say which of
/// the sets are active, so an empty set means "no filter" rather than "drop everything".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `FILTER_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Filter>() == 8);

/// `Filter::flags`: only AF_INET sockets.
pub const FILTER_IPV4_ONLY: u32 = 1 << 0;
/// `Filter::flags`: only AF_INET6 sockets.
pub const FILTER_IPV6_ONLY: u32 = 1 << 1;
/// `Filter::flags`: the local port must be in the `PORT_LOCAL` set.
pub const FILTER_LPORT: u32 = 1 << 2;
/// `Filter::flags`: the remote port must be in the `PORT_REMOTE` set.
pub const FILTER_RPORT: u32 = 1 << 3;
/// `Filter::flags`: the local or the remote port must be in the `PORT_EITHER` set.
pub const FILTER_PORT: u32 = 1 << 4;

/// `PORTS` map value bit: the port is in the local-port set.
pub const PORT_LOCAL: u8 = 1 << 0;
/// `PORTS` map value bit: the port is in the remote-port set.
pub const PORT_REMOTE: u8 = 1 << 1;
/// `PORTS` map value bit: the port is in the either-side set.
pub const PORT_EITHER: u8 = 1 << 2;

/// Most ports one filter may name; the `PORTS` map is sized for it.
pub const MAX_FILTER_PORTS: u32 = 1024;

/// Process identity remembered per socket so softirq-context transitions carry their owner.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<Owner>() == 24);

/// Indexes of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Events that passed the filter and were submitted.
    pub const SUBMITTED: u32 = 1;
    /// Events dropped by the kernel-side filter (never reach userspace, by design).
    pub const FILTERED: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// Ring buffer size in bytes (power of two, multiple of the page size). 4 MiB holds about
/// 47,000 records: a quarter second of the heaviest loopback churn seen on 2 cores.
pub const RING_BYTES: u32 = 4 << 20;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all four types are #[repr(C)], contain only integers and byte arrays, and have
    // explicit padding fields (checked by the size assertions above), so every bit pattern is
    // a valid value and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Filter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Owner {}
}
