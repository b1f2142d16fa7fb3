//! The records that cross the kernel/userspace boundary, and the tracepoint layouts both
//! sides rely on.
//!
//! Both the eBPF program (`tcptrace-ebpf`, `no_std`) and the userspace tool read these
//! definitions, so their layout is the wire format of the ring buffer. Every type is
//! `#[repr(C)]` with explicit padding and a size assertion: a change here that moves a field
//! fails to compile instead of silently misreading events. [`tp`] holds the tracepoint field
//! offsets the program reads and userspace checks against the running kernel.
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
    /// `skb:kfree_skb` with reason `TCP_LISTEN_OVERFLOW`: a handshake-completing packet was
    /// dropped because this listener's accept queue was full. `skaddr` is the listener,
    /// `saddr`/`sport` its local address and port; `daddr`/`dport` are zero.
    ListenOverflow = 6,
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
            6 => Some(Self::ListenOverflow),
            _ => None,
        }
    }
}

/// `Event::flags`: the owner fields were taken from the current task because the transition
/// runs in the owning process's own context (connect, listen, close, shutdown).
pub const FLAG_OWNER_CURRENT: u8 = 1 << 0;
/// `Event::flags`: the owner fields come from a per-socket owner cache (the transition ran in
/// softirq or another task's context, and an earlier process-context event named the owner).
/// The kernel program no longer sets it (userspace's cache fills those owners in); the
/// decoder still reads it, and the number stays reserved.
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
///
/// The record grows only at its end: version 1 ended at `aux` (88 bytes, [`EVENT_V1_SIZE`]);
/// version 2 appends the socket's identity (cgroup id, network namespace inode, `xflags`) and
/// what the socket knew at its close (bytes, retransmits, smoothed RTT). The decoder reads any
/// record at least [`EVENT_V1_SIZE`] bytes long by the fields it holds, so no field moves.
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
    // ---- version 2 (appended; absent from 88-byte records) ----
    /// The socket's cgroup v2 id (the inode of its cgroup directory), when `XFLAG_CGROUP`.
    pub cgroup_id: u64,
    /// The socket's network namespace inode, when `XFLAG_NETNS`.
    pub netns: u32,
    /// `XFLAG_*` bits: which of the version-2 fields hold values.
    pub xflags: u32,
    /// `tcp_sock.bytes_acked` at the socket's close, when `XFLAG_CLOSE_STATS`.
    pub bytes_acked: u64,
    /// `tcp_sock.bytes_received` at the socket's close, when `XFLAG_CLOSE_STATS`.
    pub bytes_received: u64,
    /// `tcp_sock.total_retrans` at the socket's close, when `XFLAG_CLOSE_STATS`.
    pub total_retrans: u32,
    /// `tcp_sock.srtt_us >> 3` (µs) at the socket's close, when `XFLAG_CLOSE_STATS`.
    pub close_srtt_us: u32,
}

/// Size of an [`Event`] as this build writes it (version 2).
pub const EVENT_SIZE: usize = 128;
/// Size of a version-1 record (everything up to `aux`): the shortest record the decoder
/// accepts, and the one the kernel program writes for an event that carries no identity and
/// no close counters (most events), so that the ring holds more of them.
pub const EVENT_V1_SIZE: usize = 88;

const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);
const _: () = assert!(core::mem::offset_of!(Event, cgroup_id) == EVENT_V1_SIZE);
// Appended fields start 8-aligned.
const _: () = assert!(EVENT_SIZE.is_multiple_of(8) && EVENT_V1_SIZE.is_multiple_of(8));

/// `Event::xflags`: `cgroup_id` holds the socket's cgroup v2 id.
pub const XFLAG_CGROUP: u32 = 1 << 0;
/// `Event::xflags`: `netns` holds the socket's network namespace inode.
pub const XFLAG_NETNS: u32 = 1 << 1;
/// `Event::xflags`: the owner's pid is the current task's but its name was not read (the
/// program reads `comm` only on a socket's first event; userspace knows it from then on).
/// Informational: a short record (no identity, no close counters) cannot carry it, and its
/// `comm` is then all zero just the same.
pub const XFLAG_NO_COMM: u32 = 1 << 2;
/// `Event::xflags`: `bytes_acked`, `bytes_received`, `total_retrans` and `close_srtt_us`
/// were read from the socket at this transition to CLOSE.
pub const XFLAG_CLOSE_STATS: u32 = 1 << 3;

/// Kernel-side filter, fixed at load time and read by the program from global data.
///
/// Port sets live in the `PORTS` bitmap (see [`port_slot`]); these flags say which of
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
/// `Filter::flags`: the local port must be in the local-port set.
pub const FILTER_LPORT: u32 = 1 << 2;
/// `Filter::flags`: the remote port must be in the remote-port set.
pub const FILTER_RPORT: u32 = 1 << 3;
/// `Filter::flags`: the local or the remote port must be in the either-side set.
pub const FILTER_PORT: u32 = 1 << 4;

/// The `PORTS` map is a bitmap of every port, one plane per port set: the port's bit lives
/// in word `plane * PORT_WORDS + port / 64`. An array lookup is inlined by the verifier (a
/// bounds check and an add), where the hash map it replaces cost two hash lookups per event
/// under `--port` (about a fifth of the program's time).
pub const PORT_PLANE_LOCAL: u32 = 0;
/// The remote-port set's plane.
pub const PORT_PLANE_REMOTE: u32 = 1;
/// The either-side set's plane.
pub const PORT_PLANE_EITHER: u32 = 2;
/// Planes in the `PORTS` bitmap.
pub const PORT_PLANES: u32 = 3;
/// u64 words per plane: 65,536 ports.
pub const PORT_WORDS: u32 = 1024;

/// The `PORTS` word index and bit of `port` in `plane`.
#[inline(always)]
pub const fn port_slot(plane: u32, port: u16) -> (u32, u64) {
    (
        plane * PORT_WORDS + (port as u32 >> 6),
        1u64 << (port as u32 & 63),
    )
}

/// Most ports one filter may name (the recording header lists them).
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

/// Byte offsets of the kernel structure members the program reads from a socket, found by
/// userspace in the running kernel's BTF and handed to the program as the `OFFSETS` global.
/// Each group is read only when its `OFFS_*` bit in `groups` is set: a member the BTF lacks
/// leaves its fields unmeasured, never zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `OFFS_*` bits: the groups whose offsets are all known.
    pub groups: u32,
    /// `sock.__sk_common.skc_net.net` (a `struct net *`).
    pub sk_net: u32,
    /// `net.ns.inum` (u32).
    pub net_inum: u32,
    /// `sock.sk_cgrp_data.cgroup` (a `struct cgroup *`), or `sock.sk_cgrp_data.val` on
    /// kernels before 5.15, where the u64 is a cgroup pointer when its low bit is clear.
    pub sk_cgrp: u32,
    /// `cgroup.kn` (a `struct kernfs_node *`).
    pub cgrp_kn: u32,
    /// `kernfs_node.id` (u64: the cgroup id, the directory's inode number).
    pub kn_id: u32,
    /// `tcp_sock.bytes_acked` (u64).
    pub bytes_acked: u32,
    /// `tcp_sock.bytes_received` (u64).
    pub bytes_received: u32,
    /// `tcp_sock.total_retrans` (u32).
    pub total_retrans: u32,
    /// `tcp_sock.srtt_us` (u32, smoothed RTT in µs << 3).
    pub srtt_us: u32,
}

const _: () = assert!(core::mem::size_of::<SockOffsets>() == 40);

/// `SockOffsets::groups`: the network namespace is readable (`sk_net`, `net_inum`).
pub const OFFS_NETNS: u32 = 1 << 0;
/// `SockOffsets::groups`: the cgroup id is readable (`sk_cgrp`, `cgrp_kn`, `kn_id`).
pub const OFFS_CGROUP: u32 = 1 << 1;
/// `SockOffsets::groups`: the close statistics are readable (bytes, retransmits, srtt).
pub const OFFS_CLOSE: u32 = 1 << 2;

/// Most network namespaces one `--netns` filter may name.
pub const MAX_FILTER_NETNS: usize = 8;

/// The socket filter (`--netns`, `--cgroup`, `--pid`, `--comm`), fixed at load time and read
/// by the program from the `SOCK_FILTER` global. It matches a socket, not an event: the
/// program decides on a socket's first event it can judge (its owner is known there, or its
/// namespace and cgroup are read from it), remembers the verdict per socket, and applies it to
/// the socket's later events, softirq ones included. Every active criterion must match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockFilter {
    /// `SF_*` bits: the active criteria (0: no socket filter, nothing is looked up).
    pub flags: u32,
    /// Namespaces in `netns` (the first `netns_count` entries).
    pub netns_count: u32,
    /// Network namespace inodes a socket may belong to.
    pub netns: [u32; MAX_FILTER_NETNS],
    /// The owner's process id (thread group id).
    pub tgid: u32,
    /// Depth of the `--cgroup` directory below the cgroup2 root (the root is 0).
    pub cgroup_level: u32,
    /// The `--cgroup` directory's cgroup id (its inode).
    pub cgroup_id: u64,
    /// The owner's task name, NUL-padded as the kernel keeps it.
    pub comm: [u8; 16],
    /// Offset of `cgroup.level` (int).
    pub cgrp_level: u32,
    /// Offset of `cgroup.ancestors` (`struct cgroup *[]`, Linux 6.1+) or of
    /// `cgroup.ancestor_ids` (`u64[]`, before), per `ancestors_are_ids`.
    pub cgrp_ancestors: u32,
    /// 1 when `cgrp_ancestors` is `ancestor_ids`.
    pub ancestors_are_ids: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SockFilter>() == 88);

/// `SockFilter::flags`: the socket's network namespace is one of `netns`.
pub const SF_NETNS: u32 = 1 << 0;
/// `SockFilter::flags`: the socket's cgroup is `cgroup_id` or below it.
pub const SF_CGROUP: u32 = 1 << 1;
/// `SockFilter::flags`: the socket's owner is process `tgid`.
pub const SF_PID: u32 = 1 << 2;
/// `SockFilter::flags`: the socket's owner's task name is `comm`.
pub const SF_COMM: u32 = 1 << 3;

/// Key of the kernel's listener map: a listening port in one network namespace, so two
/// namespaces listening on the same port keep their owners apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenKey {
    /// Network namespace inode (0 when the kernel's BTF gave no way to read it).
    pub netns: u32,
    /// `family << 16 | port`.
    pub family_port: u32,
}

const _: () = assert!(core::mem::size_of::<ListenKey>() == 8);

/// Value of the kernel's listener map: the listening process and the listener's cgroup, which
/// a server child socket inherits (the kernel clones the child's cgroup from its listener).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Listener {
    pub owner: Owner,
    /// Cgroup v2 id, valid when `xflags & XFLAG_CGROUP`.
    pub cgroup_id: u64,
    /// `XFLAG_CGROUP` or 0.
    pub xflags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Listener>() == 40);

/// Indexes of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Events that passed the filter and were submitted.
    pub const SUBMITTED: u32 = 1;
    /// Events dropped by the kernel-side filter (never reach userspace, by design).
    pub const FILTERED: u32 = 2;
    /// Counters per program: the nested-event program (`set_state_nested`) counts into its
    /// own copy at `NESTED + i`, so that its increments, which run while the main program is
    /// interrupted between the load and the store of its own, never tear them.
    pub const PER_PROGRAM: u32 = 3;
    /// Where the nested-event program's copy of the counters starts.
    pub const NESTED: u32 = PER_PROGRAM;
    /// State changes the nested-event program saw while the main program was running on that
    /// CPU: the ones the kernel skipped the main program for (its `recursion_misses`), now
    /// handled (submitted, filtered or lost, and counted as such).
    pub const NESTED_SEEN: u32 = 2 * PER_PROGRAM;
    /// Records the state-change program wrote to its slot rings (counted apart from
    /// `SUBMITTED`, whose count paces the ring buffers' wake-ups, so that the slot records
    /// do not skew it).
    pub const SLOTTED: u32 = 2 * PER_PROGRAM + 1;
    /// Number of counters.
    pub const COUNT: u32 = 2 * PER_PROGRAM + 2;
}

/// Field layouts of the tracepoints the kernel program reads, as their format files
/// (`/sys/kernel/tracing/events/{sock,tcp}/*/format`) describe them.
///
/// Written once, here: the kernel program reads the fields at these offsets, and userspace
/// checks each `FIELDS` table against the running kernel's format file before it loads the
/// program, so a kernel with another layout is refused (or that probe skipped), never misread.
/// The tables are built from the same constants the program reads with.
pub mod tp {
    /// A field as a format file gives it: (name, offset, size), in bytes.
    pub type Field = (&'static str, usize, usize);

    /// Size of a kernel pointer field (`const void * skaddr`).
    pub const PTR: usize = 8;
    /// Size of an `int` field (a TCP state).
    pub const INT: usize = 4;
    /// Size of a `__u16` field (ports, family, protocol).
    pub const U16: usize = 2;
    /// Size of an IPv4 address field (`__u8 saddr[4]`).
    pub const ADDR4: usize = 4;
    /// Size of an IPv6 address field (`__u8 saddr_v6[16]`).
    pub const ADDR6: usize = 16;
    /// Size of an address field holding a `struct sockaddr_in6` (`tcp_send_reset`).
    pub const SOCKADDR: usize = 28;

    /// The ports-and-addresses block that the `tcp:*` tracepoints other than `tcp_send_reset`
    /// share (the kernel fills it with `TP_STORE_ADDR_PORTS`): offsets from the block's start,
    /// which each tracepoint gives as its `ADDRS`. Several are not naturally aligned, so the
    /// program probe-reads them.
    pub mod tcp_addrs {
        pub const SPORT: usize = 0;
        pub const DPORT: usize = 2;
        pub const FAMILY: usize = 4;
        pub const SADDR: usize = 6;
        pub const DADDR: usize = 10;
        pub const SADDR_V6: usize = 14;
        pub const DADDR_V6: usize = 30;
    }

    /// A `struct sockaddr_in`/`sockaddr_in6` as `tcp_send_reset` stores its addresses:
    /// offsets inside one [`SOCKADDR`](super::SOCKADDR)-sized field. The port is in network
    /// byte order.
    pub mod sockaddr {
        pub const FAMILY: usize = 0;
        pub const PORT: usize = 2;
        /// `sin_addr` of an AF_INET address.
        pub const ADDR4: usize = 4;
        /// `sin6_addr` of an AF_INET6 address.
        pub const ADDR6: usize = 8;

        // Each read stays inside the field and clear of the one before it.
        const _: () = assert!(FAMILY + super::U16 <= PORT);
        const _: () = assert!(PORT + super::U16 <= ADDR4);
        const _: () = assert!(ADDR4 + super::ADDR4 <= super::SOCKADDR);
        const _: () = assert!(ADDR6 + super::ADDR6 <= super::SOCKADDR);
    }

    /// `sock:inet_sock_set_state`, this layout since Linux 4.16. Every field the program reads
    /// is naturally aligned, so it loads them straight from the context.
    pub mod inet_sock_set_state {
        use super::{ADDR4, ADDR6, Field, INT, PTR, U16};

        pub const SKADDR: usize = 8;
        pub const OLDSTATE: usize = 16;
        pub const NEWSTATE: usize = 20;
        pub const SPORT: usize = 24;
        pub const DPORT: usize = 26;
        pub const FAMILY: usize = 28;
        pub const PROTOCOL: usize = 30;
        pub const SADDR: usize = 32;
        pub const DADDR: usize = 36;
        pub const SADDR_V6: usize = 40;
        pub const DADDR_V6: usize = 56;

        pub const FIELDS: &[Field] = &[
            ("skaddr", SKADDR, PTR),
            ("oldstate", OLDSTATE, INT),
            ("newstate", NEWSTATE, INT),
            ("sport", SPORT, U16),
            ("dport", DPORT, U16),
            ("family", FAMILY, U16),
            ("protocol", PROTOCOL, U16),
            ("saddr", SADDR, ADDR4),
            ("daddr", DADDR, ADDR4),
            ("saddr_v6", SADDR_V6, ADDR6),
            ("daddr_v6", DADDR_V6, ADDR6),
        ];
    }

    /// `tcp:tcp_retransmit_skb`.
    pub mod tcp_retransmit_skb {
        use super::{ADDR4, ADDR6, Field, INT, PTR, U16, tcp_addrs};

        pub const SKADDR: usize = 16;
        pub const STATE: usize = 24;
        /// Start of the [`tcp_addrs`] block.
        pub const ADDRS: usize = 28;

        pub const FIELDS: &[Field] = &[
            ("skaddr", SKADDR, PTR),
            ("state", STATE, INT),
            ("sport", ADDRS + tcp_addrs::SPORT, U16),
            ("dport", ADDRS + tcp_addrs::DPORT, U16),
            ("family", ADDRS + tcp_addrs::FAMILY, U16),
            ("saddr", ADDRS + tcp_addrs::SADDR, ADDR4),
            ("daddr", ADDRS + tcp_addrs::DADDR, ADDR4),
            ("saddr_v6", ADDRS + tcp_addrs::SADDR_V6, ADDR6),
            ("daddr_v6", ADDRS + tcp_addrs::DADDR_V6, ADDR6),
        ];
    }

    /// `tcp:tcp_retransmit_synack`; `skaddr` is the listener.
    pub mod tcp_retransmit_synack {
        use super::{ADDR4, ADDR6, Field, PTR, U16, tcp_addrs};

        pub const SKADDR: usize = 8;
        /// Start of the [`tcp_addrs`] block.
        pub const ADDRS: usize = 24;

        pub const FIELDS: &[Field] = &[
            ("skaddr", SKADDR, PTR),
            ("sport", ADDRS + tcp_addrs::SPORT, U16),
            ("dport", ADDRS + tcp_addrs::DPORT, U16),
            ("family", ADDRS + tcp_addrs::FAMILY, U16),
            ("saddr", ADDRS + tcp_addrs::SADDR, ADDR4),
            ("daddr", ADDRS + tcp_addrs::DADDR, ADDR4),
            ("saddr_v6", ADDRS + tcp_addrs::SADDR_V6, ADDR6),
            ("daddr_v6", ADDRS + tcp_addrs::DADDR_V6, ADDR6),
        ];
    }

    /// `tcp:tcp_receive_reset` (no state field).
    pub mod tcp_receive_reset {
        use super::{ADDR4, ADDR6, Field, PTR, U16, tcp_addrs};

        pub const SKADDR: usize = 8;
        /// Start of the [`tcp_addrs`] block.
        pub const ADDRS: usize = 16;

        pub const FIELDS: &[Field] = &[
            ("skaddr", SKADDR, PTR),
            ("sport", ADDRS + tcp_addrs::SPORT, U16),
            ("dport", ADDRS + tcp_addrs::DPORT, U16),
            ("family", ADDRS + tcp_addrs::FAMILY, U16),
            ("saddr", ADDRS + tcp_addrs::SADDR, ADDR4),
            ("daddr", ADDRS + tcp_addrs::DADDR, ADDR4),
            ("saddr_v6", ADDRS + tcp_addrs::SADDR_V6, ADDR6),
            ("daddr_v6", ADDRS + tcp_addrs::DADDR_V6, ADDR6),
        ];
    }

    /// `skb:kfree_skb` (Linux 6.10+ layout, with `rx_sk`): every freed packet of every
    /// protocol, with its drop reason. `rx_sk` is the socket that received it (the listener
    /// for an accept-queue overflow). The reason's number is found at start-up.
    pub mod kfree_skb {
        use super::{Field, INT, PTR, U16};

        pub const SKBADDR: usize = 8;
        pub const LOCATION: usize = 16;
        pub const RX_SK: usize = 24;
        pub const PROTOCOL: usize = 32;
        pub const REASON: usize = 36;

        pub const FIELDS: &[Field] = &[
            ("skbaddr", SKBADDR, PTR),
            ("location", LOCATION, PTR),
            ("rx_sk", RX_SK, PTR),
            ("protocol", PROTOCOL, U16),
            ("reason", REASON, INT),
        ];
    }

    /// `tcp:tcp_send_reset`: its addresses are whole [`sockaddr`]s, not a [`tcp_addrs`] block.
    pub mod tcp_send_reset {
        use super::{Field, INT, PTR, SOCKADDR};

        pub const SKADDR: usize = 16;
        pub const STATE: usize = 24;
        /// The source [`sockaddr`](super::sockaddr).
        pub const SADDR: usize = 32;
        /// The destination [`sockaddr`](super::sockaddr).
        pub const DADDR: usize = 60;

        pub const FIELDS: &[Field] = &[
            ("skaddr", SKADDR, PTR),
            ("state", STATE, INT),
            ("saddr", SADDR, SOCKADDR),
            ("daddr", DADDR, SOCKADDR),
        ];
    }
}

/// Size in bytes of each CPU's ring by default: its slot ring ([`SLOT_BYTES`]: 16,384
/// slots), or, where the slot rings are off, each ring buffer in use (power of two, multiple
/// of the page size; with the slot rings the ring buffers get a quarter of it). 2 MiB
/// holds 21,845 short records (96 bytes: the [`EVENT_V1_SIZE`] prefix plus the ring's 8-byte
/// header; most events) or 15,420 whole ones (136 bytes: a socket's first event, carrying its
/// identity, and its close, carrying its counters): about 60 ms of the heaviest loopback
/// churn seen on 2 cores even if it all ran on one CPU, while the reader drains every 10 ms
/// under load. Measured in the bench's mass close (810,000 transitions in about a second),
/// rings of 512 KiB lost nothing in `--per none`, `top`, `serve` and `record`; every ring
/// counts twice in the RSS (the kernel maps its pages twice), so 4 MiB rings cost 8 MiB more
/// RSS on 2 CPUs for no measured gain.
pub const RING_BYTES: u32 = 2 << 20;

/// One slot of the main state-change program's slot rings: a whole [`Event`].
///
/// The program that handles state changes writes them into a ring of its own per CPU, in a
/// memory-mappable array the reader maps, instead of the kernel's ring buffer, so each ring
/// has one writer and needs no lock, where the ring buffer's reserve and submit take a lock
/// with interrupts off (measured on 2 cores under the bench's churn: 216 ns per event with
/// the ring buffer, 173 with a per-CPU array). One writer: the kernel runs that program at
/// most once at a time per CPU (since Linux 6.1 and its stable backports it skips a nested
/// run, and the nested-event program takes those), and where an older kernel does run it
/// nested, the nested run finds the ring's `busy` word set and writes to the ring buffer.
/// Every other program (the nested-event one and the `tcp:*` ones, which can interrupt it)
/// keeps the ring buffers, as does every program on CPUs whose stores another CPU may see
/// out of order (see `SLOT_MASK` in the program).
pub const SLOT_BYTES: usize = EVENT_SIZE;

/// A slot ring's two positions (see [`SLOT_BYTES`]): records `tail..head` are ready. The
/// program alone writes `head`, after the record; the reader alone writes `tail`, after it
/// copied the records. Each on a cache line of its own; `busy` (the program's, beside
/// `head`) is non-zero while the program writes a record.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct SlotPos {
    pub head: u64,
    pub busy: u64,
    pub _head_line: [u64; 6],
    pub tail: u64,
    pub _tail_line: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<SlotPos>() == 128);

/// Length of the record the program writes to a ring buffer only to wake the reader up for
/// its slot ring (a record shorter than any event, which the reader skips).
pub const WAKE_BYTES: usize = 8;

/// Number of ring buffers: CPU `n` writes to ring `n % RINGS`. One ring shared by all CPUs
/// made its lock and positions bounce between CPUs on every record (measured on 2 cores: a
/// ring per CPU cut the program's time per event by about a quarter). Rings that no CPU
/// writes to get the smallest size at load time.
pub const RINGS: u32 = 8;

/// The ring buffer maps' names, by ring index.
pub const RING_NAMES: [&str; RINGS as usize] = [
    "EVENTS0", "EVENTS1", "EVENTS2", "EVENTS3", "EVENTS4", "EVENTS5", "EVENTS6", "EVENTS7",
];

#[cfg(feature = "user")]
mod user {
    // SAFETY: all these types are #[repr(C)], contain only integers and byte arrays, and have
    // explicit padding fields (checked by the size assertions above), so every bit pattern is
    // a valid value and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Filter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Listener {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SlotPos {}
}
