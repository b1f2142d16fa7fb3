//! Raw ring-buffer records to typed events.
//!
//! Pure: no I/O, no clock. A record that does not decode is an error the caller counts, never
//! a panic, because the bytes come from another program (the kernel side, or a recording).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use tcptrace_common::{
    AF_INET, AF_INET6, EVENT_SIZE, EVENT_V1_SIZE, Event as RawEvent, EventKind, FLAG_AUX_SRTT,
    FLAG_OWNER_CACHED, FLAG_OWNER_CURRENT, FLAG_OWNER_LISTENER, XFLAG_CGROUP, XFLAG_CLOSE_STATS,
    XFLAG_NETNS, XFLAG_NO_COMM,
};

/// The kernel's TCP states (include/net/tcp_states.h), named as the kernel spells them
/// without the `TCP_` prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum TcpState {
    #[serde(rename = "ESTABLISHED")]
    Established = 1,
    #[serde(rename = "SYN_SENT")]
    SynSent = 2,
    #[serde(rename = "SYN_RECV")]
    SynRecv = 3,
    #[serde(rename = "FIN_WAIT1")]
    FinWait1 = 4,
    #[serde(rename = "FIN_WAIT2")]
    FinWait2 = 5,
    #[serde(rename = "TIME_WAIT")]
    TimeWait = 6,
    #[serde(rename = "CLOSE")]
    Close = 7,
    #[serde(rename = "CLOSE_WAIT")]
    CloseWait = 8,
    #[serde(rename = "LAST_ACK")]
    LastAck = 9,
    #[serde(rename = "LISTEN")]
    Listen = 10,
    #[serde(rename = "CLOSING")]
    Closing = 11,
    #[serde(rename = "NEW_SYN_RECV")]
    NewSynRecv = 12,
    #[serde(rename = "BOUND_INACTIVE")]
    BoundInactive = 13,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 13] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
        Self::BoundInactive,
    ];

    /// Decodes a kernel state number.
    pub fn from_kernel(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v).checked_sub(1)?).copied()
    }

    /// The kernel's name without `TCP_`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::BoundInactive => "BOUND_INACTIVE",
        }
    }

    /// Parses a kernel name (with or without `TCP_`).
    #[cfg(test)]
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.strip_prefix("TCP_").unwrap_or(s);
        Self::ALL.into_iter().find(|st| st.name() == s)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }
}

/// A task name: 16 NUL-padded bytes, kept inline so decoding allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Comm(pub [u8; 16]);

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl Comm {
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.0[..end])
    }

    /// The name for a terminal ([`printable`]).
    pub fn printable(&self) -> String {
        printable(&self.as_str()).into_owned()
    }

    pub fn from_str_lossy(s: &str) -> Self {
        let mut b = [0u8; 16];
        let n = s.len().min(15);
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        Self(b)
    }
}

/// `s` for a terminal: control characters (a newline, an escape sequence's ESC or CSI) shown
/// as `?`, so that a name a process or a user chose (`prctl(PR_SET_NAME)`, a cgroup's path)
/// can neither break a line of text output nor send codes to the terminal. JSON, CSV and
/// the metrics escape them their own way and keep them.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// How the owner of an event was determined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    /// The transition ran in the owner's own system call (connect, listen, close, shutdown).
    Current,
    /// Remembered from an earlier event of the same socket.
    Cached,
    /// A server child socket: the process listening on its port.
    Listener,
    /// A socket that existed before tracing started: its holder found in /proc at start-up.
    Proc,
}

/// The process a socket belongs to, as far as the kernel program could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub tgid: u32,
    pub pid: u32,
    pub comm: Comm,
    pub source: OwnerSource,
}

/// Which workload a socket belongs to, read from the socket itself (not from whatever task
/// ran when a softirq transition fired). `None` is unknown: not read on this event (the
/// kernel reads it on a socket's first event; `owners` carries it to the rest), or not
/// readable on this kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ident {
    /// cgroup v2 id: the inode number of the socket's cgroup directory.
    pub cgroup: Option<u64>,
    /// Network namespace inode (as in `/proc/PID/ns/net`).
    pub netns: Option<u32>,
}

impl Ident {
    /// Fields this one lacks taken from `other`.
    pub fn or(self, other: Ident) -> Ident {
        Ident {
            cgroup: self.cgroup.or(other.cgroup),
            netns: self.netns.or(other.netns),
        }
    }
}

/// What a socket's `tcp_sock` said at its transition to CLOSE. As decoded the byte counts
/// are the kernel's (sequence space: a SYN or FIN counts one); the tracker's connection facts
/// hold the payload bytes (see `track::payload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseStats {
    /// Bytes sent and acknowledged by the peer (`bytes_acked`).
    pub bytes_acked: u64,
    /// Bytes received (`bytes_received`).
    pub bytes_received: u64,
    /// Segments retransmitted over the socket's life (`total_retrans`).
    pub retrans: u32,
    /// Last smoothed RTT in µs (`srtt_us >> 3`; 0 when never measured).
    pub srtt_us: u32,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `old -> new` (sock:inet_sock_set_state).
    State { old: TcpState, new: TcpState },
    /// A SYN was retransmitted (tcp:tcp_retransmit_skb in SYN_SENT).
    SynRetransmit,
    /// A SYN-ACK was retransmitted by a listener (tcp:tcp_retransmit_synack).
    SynAckRetransmit,
    /// The socket received a RST (tcp:tcp_receive_reset).
    ResetReceived,
    /// The socket sent a RST in `state` (tcp:tcp_send_reset).
    ResetSent { state: Option<TcpState> },
    /// The listener's accept queue was full: a handshake-completing packet was dropped
    /// (skb:kfree_skb, reason TCP_LISTEN_OVERFLOW). `local` is the listener's address.
    ListenOverflow,
}

/// One decoded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel socket address: identity while the socket lives.
    pub sock: u64,
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub owner: Option<Owner>,
    pub kind: Kind,
    /// The server child's smoothed RTT at SYN_RECV -> ESTABLISHED, when the kernel program
    /// could read it (microseconds).
    pub srtt_us: Option<u32>,
    /// The socket's cgroup and network namespace, where known.
    pub ident: Ident,
    /// Set on a transition to CLOSE when the program read the socket's counters.
    pub close: Option<CloseStats>,
}

/// Why a record did not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {0} bytes, expected at least {1}")]
    Size(usize, usize),
    #[error("unknown event kind {0}")]
    Kind(u16),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown TCP state {0}")]
    State(u8),
}

fn addr(family: Family, bytes: &[u8; 16], port: u16) -> SocketAddr {
    let ip = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    };
    SocketAddr::new(ip, port)
}

fn state(v: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_kernel(v).ok_or(DecodeError::State(v))
}

/// Decodes the bytes of one ring-buffer record. A longer record is one from a program that
/// appends fields this build does not know (the record only grows at its end, see
/// [`RawEvent`]): its known prefix decodes. A version-1 record (88 bytes, from an older
/// program) decodes with its version-2 fields unknown (`xflags` 0).
pub fn decode_bytes(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < EVENT_V1_SIZE {
        return Err(DecodeError::Size(bytes.len(), EVENT_V1_SIZE));
    }
    let raw = if bytes.len() >= EVENT_SIZE {
        // SAFETY: the length was checked (EVENT_SIZE is RawEvent's size); RawEvent is repr(C)
        // plain old data for which every bit pattern is valid; read_unaligned copes with any
        // alignment of `bytes`.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) }
    } else {
        let mut full = [0u8; EVENT_SIZE];
        full[..EVENT_V1_SIZE].copy_from_slice(&bytes[..EVENT_V1_SIZE]);
        // SAFETY: as above; the buffer is EVENT_SIZE bytes, zero after the version-1 prefix.
        unsafe { std::ptr::read_unaligned(full.as_ptr().cast::<RawEvent>()) }
    };
    decode(&raw)
}

/// Decodes one raw record.
pub fn decode(raw: &RawEvent) -> Result<Event, DecodeError> {
    let family = match raw.family {
        AF_INET => Family::V4,
        AF_INET6 => Family::V6,
        other => return Err(DecodeError::Family(other)),
    };
    let kind = match EventKind::from_u16(raw.kind).ok_or(DecodeError::Kind(raw.kind))? {
        EventKind::StateChange => Kind::State {
            old: state(raw.old)?,
            new: state(raw.new)?,
        },
        EventKind::Retransmit => Kind::SynRetransmit,
        EventKind::RetransmitSynAck => Kind::SynAckRetransmit,
        EventKind::ReceiveReset => Kind::ResetReceived,
        EventKind::SendReset => Kind::ResetSent {
            state: TcpState::from_kernel(raw.old),
        },
        EventKind::ListenOverflow => Kind::ListenOverflow,
    };
    let source = if raw.flags & FLAG_OWNER_CURRENT != 0 {
        Some(OwnerSource::Current)
    } else if raw.flags & FLAG_OWNER_CACHED != 0 {
        Some(OwnerSource::Cached)
    } else if raw.flags & FLAG_OWNER_LISTENER != 0 {
        Some(OwnerSource::Listener)
    } else {
        None
    };
    // A current owner whose name the program did not read (`XFLAG_NO_COMM`): `owners` fills
    // it in. Until then it is empty, as an unknown name is, whatever the record's bytes say
    // (the program leaves them zero; a corrupt record may not).
    let comm = if raw.xflags & XFLAG_NO_COMM != 0 {
        [0; 16]
    } else {
        raw.comm
    };
    let owner = source.map(|source| Owner {
        tgid: raw.tgid,
        pid: raw.pid,
        comm: Comm(comm),
        source,
    });
    let ident = Ident {
        cgroup: (raw.xflags & XFLAG_CGROUP != 0).then_some(raw.cgroup_id),
        netns: (raw.xflags & XFLAG_NETNS != 0).then_some(raw.netns),
    };
    let close = (raw.xflags & XFLAG_CLOSE_STATS != 0).then_some(CloseStats {
        bytes_acked: raw.bytes_acked,
        bytes_received: raw.bytes_received,
        retrans: raw.total_retrans,
        srtt_us: raw.close_srtt_us,
    });
    Ok(Event {
        ts_ns: raw.ts_ns,
        sock: raw.skaddr,
        family,
        local: addr(family, &raw.saddr, raw.sport),
        remote: addr(family, &raw.daddr, raw.dport),
        owner,
        kind,
        srtt_us: (raw.flags & FLAG_AUX_SRTT != 0).then_some(raw.aux),
        ident,
        close,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn printable_shows_every_control_character_as_a_question_mark() {
        // C0 (newline, ESC), DEL and C1 (CSI, which some terminals take as ESC [).
        assert_eq!(
            printable("a\nb\u{1b}[31mc\u{7f}d\u{9b}31me"),
            "a?b?[31mc?d?31me"
        );
        assert!(matches!(
            printable("nginx: worker"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("café"), "café");
    }

    use super::*;

    /// A raw state-change record for tests.
    pub(crate) fn raw_state(ts: u64, sk: u64, old: u8, new: u8) -> RawEvent {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        RawEvent {
            ts_ns: ts,
            skaddr: sk,
            saddr,
            daddr,
            tgid: 42,
            pid: 43,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            sport: 40000,
            dport: 80,
            family: AF_INET,
            kind: EventKind::StateChange as u16,
            old,
            new,
            flags: FLAG_OWNER_CURRENT,
            _pad: 0,
            aux: 0,
            cgroup_id: 0,
            netns: 0,
            xflags: 0,
            bytes_acked: 0,
            bytes_received: 0,
            total_retrans: 0,
            close_srtt_us: 0,
        }
    }

    #[test]
    fn decodes_ipv4_state_change_with_owner() {
        let ev = decode(&raw_state(5, 0xffff_8880_0000_1000, 7, 2)).expect("decodes");
        assert_eq!(ev.family, Family::V4);
        assert_eq!(ev.local.to_string(), "127.0.0.1:40000");
        assert_eq!(ev.remote.to_string(), "127.0.0.2:80");
        assert_eq!(
            ev.kind,
            Kind::State {
                old: TcpState::Close,
                new: TcpState::SynSent
            }
        );
        let owner = ev.owner.expect("owner");
        assert_eq!((owner.tgid, owner.pid), (42, 43));
        assert_eq!(owner.comm.as_str(), "curl");
        assert_eq!(owner.source, OwnerSource::Current);
        assert_eq!(ev.srtt_us, None);
    }

    #[test]
    fn decodes_ipv6_addresses() {
        let mut raw = raw_state(1, 1, 10, 3);
        raw.family = AF_INET6;
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        raw.daddr = "fe80::1".parse::<Ipv6Addr>().expect("addr").octets();
        let ev = decode(&raw).expect("decodes");
        assert_eq!(ev.local.to_string(), "[::1]:40000");
        assert_eq!(ev.remote.to_string(), "[fe80::1]:80");
    }

    #[test]
    fn missing_owner_flags_mean_unknown_owner() {
        let mut raw = raw_state(1, 1, 1, 8);
        raw.flags = 0;
        assert_eq!(decode(&raw).expect("decodes").owner, None);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let mut raw = raw_state(1, 1, 1, 99);
        assert_eq!(decode(&raw), Err(DecodeError::State(99)));
        raw.new = 1;
        raw.family = 1;
        assert_eq!(decode(&raw), Err(DecodeError::Family(1)));
        raw.family = AF_INET;
        raw.kind = 77;
        assert_eq!(decode(&raw), Err(DecodeError::Kind(77)));
        assert_eq!(decode_bytes(&[0u8; 10]), Err(DecodeError::Size(10, 88)));
        assert_eq!(decode_bytes(&[0u8; 87]), Err(DecodeError::Size(87, 88)));
    }

    /// The bytes of a raw record, as the ring buffer hands them over.
    fn bytes_of(raw: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is repr(C) plain old data without implicit padding, so all of its
        // EVENT_SIZE bytes are initialised.
        unsafe { std::slice::from_raw_parts((raw as *const RawEvent).cast::<u8>(), EVENT_SIZE) }
            .to_vec()
    }

    /// Found by the fuzzer: a record saying its owner's name was not read, yet holding
    /// bytes there, decodes (with no name) instead of tripping an assertion.
    #[test]
    fn a_name_the_record_says_was_not_read_is_empty_whatever_its_bytes() {
        let mut raw = raw_state(5, 0xffff_8880_0000_1000, 4, 5);
        raw.flags = tcptrace_common::FLAG_OWNER_CURRENT;
        raw.xflags = XFLAG_NO_COMM;
        raw.comm = *b"DDDD\0\0\0\0\0\0\0\0\0\0\0\0";
        let ev = decode_bytes(&bytes_of(&raw)).expect("decodes");
        assert_eq!(ev.owner.expect("owner").comm, Comm([0; 16]));
    }

    #[test]
    fn records_that_grew_at_the_end_decode_by_their_known_prefix() {
        let mut raw = raw_state(5, 0xffff_8880_0000_1000, 7, 2);
        raw.xflags = XFLAG_CGROUP | XFLAG_NETNS;
        raw.cgroup_id = 1234;
        raw.netns = 4026531840;
        let mut bytes = bytes_of(&raw);
        let exact = decode_bytes(&bytes).expect("decodes");
        assert_eq!(exact, decode(&raw).expect("decodes"));
        assert_eq!(
            exact.ident,
            Ident {
                cgroup: Some(1234),
                netns: Some(4026531840)
            }
        );
        // Fields appended by a newer program (16 bytes) are ignored.
        bytes.extend_from_slice(&[0xab; 16]);
        assert_eq!(decode_bytes(&bytes), Ok(exact));
    }

    /// A field whose `XFLAG_*` bit is clear (its members missing from the kernel's BTF, or
    /// unreadable) is unknown whatever the record holds there, never a number.
    #[test]
    fn fields_without_their_flag_are_unknown() {
        let mut raw = raw_state(5, 0xffff_8880_0000_1000, 7, 7);
        (raw.cgroup_id, raw.netns) = (1234, 4026531840);
        (raw.bytes_acked, raw.bytes_received) = (1 << 20, 1 << 16);
        (raw.total_retrans, raw.close_srtt_us) = (3, 50);
        raw.xflags = 0;
        let ev = decode(&raw).expect("decodes");
        assert_eq!((ev.ident, ev.close), (Ident::default(), None));
        raw.xflags = XFLAG_NETNS;
        let ev = decode(&raw).expect("decodes");
        assert_eq!(
            (ev.ident.cgroup, ev.ident.netns, ev.close),
            (None, Some(4026531840), None)
        );
        raw.xflags = XFLAG_CLOSE_STATS;
        let ev = decode(&raw).expect("decodes");
        assert_eq!(ev.ident, Ident::default());
        assert_eq!(ev.close.map(|c| c.bytes_received), Some(1 << 16));
    }

    #[test]
    fn version_1_records_decode_with_identity_and_close_stats_unknown() {
        let mut raw = raw_state(5, 0xffff_8880_0000_1000, 1, 7);
        raw.xflags = XFLAG_CGROUP | XFLAG_NETNS | XFLAG_CLOSE_STATS;
        raw.cgroup_id = 99;
        raw.bytes_acked = 1 << 20;
        let bytes = bytes_of(&raw);
        let full = decode_bytes(&bytes).expect("decodes");
        assert_eq!(full.close.map(|c| c.bytes_acked), Some(1 << 20));
        let v1 = decode_bytes(&bytes[..EVENT_V1_SIZE]).expect("decodes");
        assert_eq!(v1.ident, Ident::default());
        assert_eq!(v1.close, None);
        assert_eq!(
            Event {
                ident: full.ident,
                close: full.close,
                ..v1
            },
            full
        );
        // Between the two sizes: the version-1 prefix, nothing read past it.
        let mid = decode_bytes(&bytes[..EVENT_V1_SIZE + 8]).expect("decodes");
        assert_eq!(mid, v1);
    }

    #[test]
    fn state_names_round_trip() {
        for s in TcpState::ALL {
            assert_eq!(TcpState::from_name(s.name()), Some(s));
            assert_eq!(TcpState::from_kernel(s as u8), Some(s));
        }
        assert_eq!(
            TcpState::from_name("TCP_FIN_WAIT2"),
            Some(TcpState::FinWait2)
        );
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(14), None);
    }
}
