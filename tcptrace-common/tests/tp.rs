//! The tracepoint tables in `tcptrace_common::tp` agree with themselves and with the way the
//! kernel program reads them: the `tcp:*` address blocks sit where `tcp_event` reads them
//! (base + N), no two fields overlap, and every field the program loads straight from the
//! context (not through the probe-read helper) is naturally aligned, as the verifier demands.

use tcptrace_common::tp::{
    self, Field, inet_sock_set_state, sockaddr, tcp_addrs, tcp_receive_reset, tcp_retransmit_skb,
    tcp_retransmit_synack, tcp_send_reset,
};

const ALL: [(&str, &[Field]); 5] = [
    ("inet_sock_set_state", inet_sock_set_state::FIELDS),
    ("tcp_retransmit_skb", tcp_retransmit_skb::FIELDS),
    ("tcp_retransmit_synack", tcp_retransmit_synack::FIELDS),
    ("tcp_receive_reset", tcp_receive_reset::FIELDS),
    ("tcp_send_reset", tcp_send_reset::FIELDS),
];

/// (offset, size) of the named field in a table.
fn at(fields: &[Field], name: &str) -> (usize, usize) {
    fields
        .iter()
        .find(|f| f.0 == name)
        .map(|f| (f.1, f.2))
        .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
}

#[test]
fn tcp_address_blocks_are_where_tcp_event_reads_them() {
    // tcp_event reads sport at base, dport at +2, family +4, saddr[4] +6, daddr[4] +10,
    // saddr_v6 +14, daddr_v6 +30 (the kernel's TP_STORE_ADDR_PORTS block).
    let block = [
        ("sport", tcp_addrs::SPORT, 0, tp::U16),
        ("dport", tcp_addrs::DPORT, 2, tp::U16),
        ("family", tcp_addrs::FAMILY, 4, tp::U16),
        ("saddr", tcp_addrs::SADDR, 6, tp::ADDR4),
        ("daddr", tcp_addrs::DADDR, 10, tp::ADDR4),
        ("saddr_v6", tcp_addrs::SADDR_V6, 14, tp::ADDR6),
        ("daddr_v6", tcp_addrs::DADDR_V6, 30, tp::ADDR6),
    ];
    for (probe, fields, base) in [
        (
            "tcp_retransmit_skb",
            tcp_retransmit_skb::FIELDS,
            tcp_retransmit_skb::ADDRS,
        ),
        (
            "tcp_retransmit_synack",
            tcp_retransmit_synack::FIELDS,
            tcp_retransmit_synack::ADDRS,
        ),
        (
            "tcp_receive_reset",
            tcp_receive_reset::FIELDS,
            tcp_receive_reset::ADDRS,
        ),
    ] {
        for (name, rel, expected_rel, size) in block {
            assert_eq!(rel, expected_rel, "tcp_addrs::{name}");
            assert_eq!(
                at(fields, name),
                (base + rel, size),
                "{probe} field {name} is not at ADDRS + {rel}"
            );
        }
    }
}

#[test]
fn tables_keep_the_layouts_the_program_was_written_for() {
    // As the format files give them (inet_sock_set_state since Linux 4.16; the tcp:* ones as
    // on this project's kernels). The start-up check refuses other layouts, so a change here
    // changes which kernels tcptrace runs on.
    let expected: [&[Field]; 5] = [
        &[
            ("skaddr", 8, 8),
            ("oldstate", 16, 4),
            ("newstate", 20, 4),
            ("sport", 24, 2),
            ("dport", 26, 2),
            ("family", 28, 2),
            ("protocol", 30, 2),
            ("saddr", 32, 4),
            ("daddr", 36, 4),
            ("saddr_v6", 40, 16),
            ("daddr_v6", 56, 16),
        ],
        &[
            ("skaddr", 16, 8),
            ("state", 24, 4),
            ("sport", 28, 2),
            ("dport", 30, 2),
            ("family", 32, 2),
            ("saddr", 34, 4),
            ("daddr", 38, 4),
            ("saddr_v6", 42, 16),
            ("daddr_v6", 58, 16),
        ],
        &[
            ("skaddr", 8, 8),
            ("sport", 24, 2),
            ("dport", 26, 2),
            ("family", 28, 2),
            ("saddr", 30, 4),
            ("daddr", 34, 4),
            ("saddr_v6", 38, 16),
            ("daddr_v6", 54, 16),
        ],
        &[
            ("skaddr", 8, 8),
            ("sport", 16, 2),
            ("dport", 18, 2),
            ("family", 20, 2),
            ("saddr", 22, 4),
            ("daddr", 26, 4),
            ("saddr_v6", 30, 16),
            ("daddr_v6", 46, 16),
        ],
        &[
            ("skaddr", 16, 8),
            ("state", 24, 4),
            ("saddr", 32, 28),
            ("daddr", 60, 28),
        ],
    ];
    for ((probe, fields), want) in ALL.iter().zip(expected) {
        assert_eq!(*fields, want, "{probe}");
    }
}

#[test]
fn fields_follow_the_common_header_and_do_not_overlap() {
    for (probe, fields) in ALL {
        // The first 8 bytes are the common_* fields every tracepoint record starts with.
        let mut end = 8;
        for &(name, offset, size) in fields {
            assert!(
                offset >= end,
                "{probe} field {name} at {offset} overlaps the field before it (ends at {end})"
            );
            assert!(size > 0, "{probe} field {name} has no size");
            end = offset + size;
        }
    }
}

#[test]
fn fields_the_program_loads_directly_are_naturally_aligned() {
    // (probe, offset, width of the load) for every read that does not go through the
    // probe-read helper (`field`, `addr4`, `addr16` in the kernel program).
    let mut loads = Vec::new();
    {
        use inet_sock_set_state as f;
        loads.extend([
            ("inet_sock_set_state", f::SKADDR, 8),
            ("inet_sock_set_state", f::OLDSTATE, 4),
            ("inet_sock_set_state", f::NEWSTATE, 4),
            ("inet_sock_set_state", f::SPORT, 2),
            ("inet_sock_set_state", f::DPORT, 2),
            ("inet_sock_set_state", f::FAMILY, 2),
            ("inet_sock_set_state", f::PROTOCOL, 2),
            ("inet_sock_set_state", f::SADDR, 4),
            ("inet_sock_set_state", f::DADDR, 4),
            ("inet_sock_set_state", f::SADDR_V6, 8),
            ("inet_sock_set_state", f::DADDR_V6, 8),
        ]);
    }
    loads.extend([
        ("tcp_retransmit_skb", tcp_retransmit_skb::SKADDR, 8),
        ("tcp_retransmit_skb", tcp_retransmit_skb::STATE, 4),
        ("tcp_retransmit_synack", tcp_retransmit_synack::SKADDR, 8),
        ("tcp_receive_reset", tcp_receive_reset::SKADDR, 8),
    ]);
    {
        use tcp_send_reset as f;
        loads.extend([
            ("tcp_send_reset", f::SKADDR, 8),
            ("tcp_send_reset", f::STATE, 4),
            ("tcp_send_reset", f::SADDR + sockaddr::FAMILY, 2),
            ("tcp_send_reset", f::SADDR + sockaddr::PORT, 2),
            ("tcp_send_reset", f::DADDR + sockaddr::PORT, 2),
            ("tcp_send_reset", f::SADDR + sockaddr::ADDR4, 4),
            ("tcp_send_reset", f::DADDR + sockaddr::ADDR4, 4),
            ("tcp_send_reset", f::SADDR + sockaddr::ADDR6, 8),
        ]);
    }
    for (probe, offset, width) in loads {
        assert_eq!(
            offset % width,
            0,
            "{probe}: a {width}-byte load at {offset} is misaligned; the verifier rejects it \
             (read it with the probe-read helper instead)"
        );
    }
}

#[test]
fn send_reset_addresses_are_whole_sockaddrs() {
    // The reads inside one are checked at compile time next to `tp::sockaddr`.
    for name in ["saddr", "daddr"] {
        assert_eq!(at(tcp_send_reset::FIELDS, name).1, tp::SOCKADDR);
    }
}
