//! Just enough of a BTF reader to find a struct member's byte offset in the running kernel.
//!
//! The kernel program reads `struct tcp_sock::srtt_us` of a server child socket (the RTT
//! the kernel measured from the SYN-ACK to the final ACK) with `bpf_probe_read_kernel`. The
//! member's offset changes between kernel builds, so it is looked up at start-up in
//! `/sys/kernel/btf/vmlinux` and handed to the program as a global. aya 0.14 parses BTF but
//! does not expose member lookup, hence this small reader of the documented format
//! (Documentation/bpf/btf.rst): a header, a type section and a string section.

use std::fmt;

/// Where the running kernel describes its types.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

// Type kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why a member offset could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("not BTF data (bad magic or truncated header)")]
    BadHeader,
    #[error("BTF data is truncated or has an unknown type kind {0}")]
    Malformed(u32),
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("member {0}.{1} is a bitfield or has size {2}, expected a {3}-byte integer")]
    WrongShape(String, String, u32, u32),
    #[error("member {0}.{1} is not a pointer")]
    NotPointer(String, String),
}

/// What the member at the end of a path must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An integer (or enum) of this many bytes, not a bitfield.
    Int(u32),
    /// A pointer (8 bytes on the 64-bit kernels we load on).
    Ptr,
}

#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    /// `size` for INT/STRUCT/UNION/ENUM, the referred type id for modifiers and typedefs.
    size_or_type: u32,
    /// Byte offset of the kind-specific data that follows the common header.
    extra: usize,
}

/// A parsed BTF blob (borrowed).
pub struct Btf<'a> {
    data: &'a [u8],
    strings: &'a [u8],
    /// Index = type id - 1.
    types: Vec<Type>,
}

impl fmt::Debug for Btf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Btf({} types)", self.types.len())
    }
}

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses a little-endian BTF blob (the kernel's own byte order on the machines we run on).
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(BtfError::BadHeader);
        }
        let hdr = |o| u32_at(data, o).ok_or(BtfError::BadHeader);
        let hdr_len = hdr(4)? as usize;
        let (type_off, type_len) = (hdr(8)? as usize, hdr(12)? as usize);
        let (str_off, str_len) = (hdr(16)? as usize, hdr(20)? as usize);
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::BadHeader)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::BadHeader)?;
        let base = hdr_len + type_off;
        let mut types = Vec::new();
        let mut o = 0;
        while o < types_sec.len() {
            let bad = BtfError::Malformed(0);
            let name_off = u32_at(types_sec, o).ok_or(bad.clone())?;
            let info = u32_at(types_sec, o + 4).ok_or(bad.clone())?;
            let size_or_type = u32_at(types_sec, o + 8).ok_or(bad)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                other => return Err(BtfError::Malformed(other)),
            };
            types.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 != 0,
                vlen,
                size_or_type,
                extra: base + o + 12,
            });
            o += 12 + extra;
        }
        if o != types_sec.len() {
            return Err(BtfError::Malformed(0));
        }
        Ok(Self {
            data,
            strings,
            types,
        })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    fn get(&self, id: u32) -> Option<Type> {
        self.types.get((id as usize).checked_sub(1)?).copied()
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Finds `member` in `t` (a struct or union), looking inside anonymous struct/union
    /// members too. Returns (bit offset, member type id, is a bitfield).
    fn find_member(&self, t: Type, member: &[u8], depth: u32) -> Option<(u32, u32, bool)> {
        if depth > 8 {
            return None;
        }
        for i in 0..t.vlen as usize {
            let m = t.extra + 12 * i;
            let name_off = u32_at(self.data, m)?;
            let ty = u32_at(self.data, m + 4)?;
            let raw = u32_at(self.data, m + 8)?;
            let (bit_off, bitfield) = if t.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            let name = self.name(name_off);
            if name == member {
                return Some((bit_off, ty, bitfield));
            }
            if name.is_empty()
                && let Some(inner) = self.resolve(ty)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some((o, ty, bf)) = self.find_member(inner, member, depth + 1)
            {
                return Some((bit_off + o, ty, bf));
            }
        }
        None
    }

    /// Byte offset of `strukt.member`, which must be a `size`-byte integer (not a bitfield).
    pub fn member_offset(&self, strukt: &str, member: &str, size: u32) -> Result<u32, BtfError> {
        self.path_offset(strukt, &[member], Shape::Int(size))
    }

    /// Byte offset of `strukt.a.b.c` (each step a member of the struct or union before it,
    /// anonymous members searched through), whose last member must have `shape`.
    pub fn path_offset(&self, strukt: &str, path: &[&str], shape: Shape) -> Result<u32, BtfError> {
        let dotted = path.join(".");
        let owned = || (strukt.to_owned(), dotted.clone());
        let mut t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == strukt.as_bytes())
            .copied()
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut offset = 0u32;
        let Some((&member, outer)) = path.split_last() else {
            return Err(BtfError::NoMember(owned().0, owned().1));
        };
        for step in outer {
            let (bit_off, ty, _) = self
                .find_member(t, step.as_bytes(), 0)
                .ok_or_else(|| BtfError::NoMember(owned().0, owned().1))?;
            t = self
                .resolve(ty)
                .filter(|m| matches!(m.kind, KIND_STRUCT | KIND_UNION))
                .ok_or_else(|| BtfError::NoMember(owned().0, owned().1))?;
            if !bit_off.is_multiple_of(8) {
                return Err(BtfError::NoMember(owned().0, owned().1));
            }
            offset += bit_off / 8;
        }
        let (bit_off, ty, bitfield) = self
            .find_member(t, member.as_bytes(), 0)
            .ok_or_else(|| BtfError::NoMember(owned().0, owned().1))?;
        let mt = self.resolve(ty);
        let size = match shape {
            Shape::Ptr => {
                if mt.is_some_and(|m| m.kind == KIND_PTR) && bit_off.is_multiple_of(8) {
                    return Ok(offset + bit_off / 8);
                }
                let (s, m) = owned();
                return Err(BtfError::NotPointer(s, m));
            }
            Shape::Int(size) => size,
        };
        let msize = mt.map_or(0, |m| {
            if matches!(m.kind, KIND_INT | KIND_ENUM) {
                m.size_or_type
            } else {
                0
            }
        });
        if bitfield || !bit_off.is_multiple_of(8) || msize != size {
            let (s, m) = owned();
            return Err(BtfError::WrongShape(s, m, msize, size));
        }
        Ok(offset + bit_off / 8)
    }
}

impl Btf<'_> {
    /// Byte offset of `strukt.member` whatever its type (e.g. a struct such as `in6_addr`),
    /// as long as it is not a bitfield.
    pub fn member_offset_any(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == strukt.as_bytes())
            .copied()
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let (bit_off, _, bitfield) = self
            .find_member(t, member.as_bytes(), 0)
            .ok_or_else(|| BtfError::NoMember(strukt.to_owned(), member.to_owned()))?;
        if bitfield || !bit_off.is_multiple_of(8) {
            return Err(BtfError::WrongShape(
                strukt.to_owned(),
                member.to_owned(),
                0,
                0,
            ));
        }
        Ok(bit_off / 8)
    }
}

/// Offsets in `struct sock_common` of `skc_family`, `skc_num` (the local port, host order),
/// `skc_rcv_saddr` and `skc_v6_rcv_saddr`: how the kfree_skb program names a listener.
pub fn sock_offsets(btf: &Btf<'_>) -> Result<[u32; 4], BtfError> {
    Ok([
        btf.member_offset("sock_common", "skc_family", 2)?,
        btf.member_offset("sock_common", "skc_num", 2)?,
        btf.member_offset("sock_common", "skc_rcv_saddr", 4)?,
        btf.member_offset_any("sock_common", "skc_v6_rcv_saddr")?,
    ])
}

/// Offset of `struct tcp_sock::srtt_us`.
pub fn tcp_sock_srtt_offset(btf: &Btf<'_>) -> Result<u32, BtfError> {
    btf.member_offset("tcp_sock", "srtt_us", 4)
}

/// The running kernel's BTF ([`VMLINUX`]), read once at start-up: every offset the program
/// needs comes from this one blob, parsed once (it is several MiB).
pub fn read_vmlinux() -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    std::fs::read(VMLINUX).with_context(|| format!("reading {VMLINUX}"))
}

/// The offsets of the socket members the kernel program reads for identity (network
/// namespace, cgroup) and close statistics, from a parsed BTF. A group whose members are not
/// all found stays off, with one line saying which field goes unmeasured and why.
pub fn identity_offsets(btf: &Btf<'_>) -> (tcptrace_common::SockOffsets, Vec<String>) {
    use tcptrace_common::{OFFS_CGROUP, OFFS_CLOSE, OFFS_NETNS, SockOffsets};
    let mut o = SockOffsets::default();
    let mut missing = Vec::new();
    let netns = (|| {
        Ok::<_, BtfError>((
            btf.path_offset("sock", &["__sk_common", "skc_net", "net"], Shape::Ptr)?,
            btf.path_offset("net", &["ns", "inum"], Shape::Int(4))?,
        ))
    })();
    match netns {
        Ok((sk_net, net_inum)) => {
            (o.sk_net, o.net_inum) = (sk_net, net_inum);
            o.groups |= OFFS_NETNS;
        }
        Err(e) => missing.push(format!("network namespaces are not measured: {e}")),
    }
    let cgroup = (|| {
        // Linux 5.15 made sk_cgrp_data a plain cgroup pointer; before, a u64 `val` held the
        // pointer (low bit clear) or cgroup v1 data (low bit set), which the program tells
        // apart by that bit.
        let sk_cgrp = btf
            .path_offset("sock", &["sk_cgrp_data", "cgroup"], Shape::Ptr)
            .or_else(|_| btf.path_offset("sock", &["sk_cgrp_data", "val"], Shape::Int(8)))?;
        Ok::<_, BtfError>((
            sk_cgrp,
            btf.path_offset("cgroup", &["kn"], Shape::Ptr)?,
            btf.path_offset("kernfs_node", &["id"], Shape::Int(8))?,
        ))
    })();
    match cgroup {
        Ok((sk_cgrp, cgrp_kn, kn_id)) => {
            (o.sk_cgrp, o.cgrp_kn, o.kn_id) = (sk_cgrp, cgrp_kn, kn_id);
            o.groups |= OFFS_CGROUP;
        }
        Err(e) => missing.push(format!("socket cgroups are not measured: {e}")),
    }
    let close = (|| {
        Ok::<_, BtfError>((
            btf.member_offset("tcp_sock", "bytes_acked", 8)?,
            btf.member_offset("tcp_sock", "bytes_received", 8)?,
            btf.member_offset("tcp_sock", "total_retrans", 4)?,
            btf.member_offset("tcp_sock", "srtt_us", 4)?,
        ))
    })();
    match close {
        Ok((a, r, t, s)) => {
            (o.bytes_acked, o.bytes_received, o.total_retrans, o.srtt_us) = (a, r, t, s);
            o.groups |= OFFS_CLOSE;
        }
        Err(e) => missing.push(format!(
            "bytes, retransmits and RTT at close are not measured: {e}"
        )),
    }
    (o, missing)
}

/// Where a cgroup keeps its depth and its ancestors, for `--cgroup` in the kernel:
/// (`cgroup.level`, `cgroup.ancestors` or `cgroup.ancestor_ids`, whether it is the ids).
/// Linux 6.1 replaced the `u64 ancestor_ids[]` array with `struct cgroup *ancestors[]`.
pub fn cgroup_ancestry_offsets(btf: &Btf<'_>) -> Result<(u32, u32, bool), BtfError> {
    let level = btf.member_offset("cgroup", "level", 4)?;
    match btf.member_offset_any("cgroup", "ancestors") {
        Ok(off) => Ok((level, off, false)),
        Err(_) => Ok((
            level,
            btf.member_offset_any("cgroup", "ancestor_ids")?,
            true,
        )),
    }
}

/// Offsets, from the start of the socket, of what the BTF tracepoint program reads (as the
/// classic tracepoint's TP_fast_assign does): `sock.sk_protocol`, `skc_family`,
/// `inet_sock.inet_sport`, `skc_dport`, `inet_sock.inet_saddr`, `skc_daddr`,
/// `skc_v6_rcv_saddr`, `skc_v6_daddr`. An error where a member is missing or the socket's
/// cgroup is not a plain pointer (before Linux 5.15: the program's typed loads cannot test
/// the old layout's bit), and then the classic tracepoint is used.
pub fn sk_fields(btf: &Btf<'_>) -> Result<[u32; 8], BtfError> {
    let common =
        |m: &str, size: u32| btf.path_offset("sock", &["__sk_common", m], Shape::Int(size));
    btf.path_offset("sock", &["sk_cgrp_data", "cgroup"], Shape::Ptr)?;
    Ok([
        btf.member_offset("sock", "sk_protocol", 2)?,
        common("skc_family", 2)?,
        btf.member_offset("inet_sock", "inet_sport", 2)?,
        common("skc_dport", 2)?,
        btf.member_offset("inet_sock", "inet_saddr", 4)?,
        common("skc_daddr", 4)?,
        btf.member_offset_any("sock_common", "skc_v6_rcv_saddr")?,
        btf.member_offset_any("sock_common", "skc_v6_daddr")?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from (name, info, size_or_type, extra words) entries.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn ty(&mut self, name: &str, kind: u32, flag: bool, vlen: u32, st: u32, extra: &[u32]) {
            let n = self.str(name);
            let info = (kind << 24) | vlen | (u32::from(flag) << 31);
            for w in [n, info, st].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn strukt(&mut self, name: &str, flag: bool, size: u32, members: &[(&str, u32, u32)]) {
            let mut extra = Vec::new();
            for (n, ty, off) in members {
                extra.extend([self.str(n), *ty, *off]);
            }
            self.ty(name, KIND_STRUCT, flag, members.len() as u32, size, &extra);
        }

        fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend(self.types);
            out.extend(self.strings);
            out
        }
    }

    /// id 1 u32, 2 typedef u32 __u32, 3 u8, 4 anon union { u32 a; u8 b }, 5 FUNC_PROTO with
    /// two params (variable-length data to skip), 6 ENUM with one value,
    /// 7 struct tcp_sock { u8 pad; __u32 srtt_us @ 64 bits; union { ... } @ 96; u8 bits:3 },
    /// 8 struct other { u32 srtt_us @ 0 }.
    fn sample(flag: bool) -> Vec<u8> {
        let mut b = Builder::new();
        b.ty("unsigned int", KIND_INT, false, 0, 4, &[32]);
        b.ty("__u32", KIND_TYPEDEF, false, 0, 1, &[]);
        b.ty("unsigned char", KIND_INT, false, 0, 1, &[8]);
        b.ty("", KIND_UNION, false, 2, 4, &[]);
        // Fix up the union's members by hand: they follow the union header.
        let (a, bb) = (b.str("inner_a"), b.str("inner_b"));
        b.types
            .extend([a, 1, 0, bb, 3, 0].iter().flat_map(|w| w.to_le_bytes()));
        b.ty("", KIND_FUNC_PROTO, false, 2, 1, &[0, 1, 0, 3]);
        b.ty("e", KIND_ENUM, false, 1, 4, &[0, 7]);
        let bits = if flag { (3 << 24) | 128 } else { 128 };
        b.strukt(
            "tcp_sock",
            flag,
            24,
            &[
                ("pad", 3, 0),
                ("srtt_us", 2, 64),
                ("", 4, 96),
                ("bits", 3, bits),
            ],
        );
        b.strukt("other", false, 4, &[("srtt_us", 1, 0)]);
        b.build()
    }

    #[test]
    fn finds_member_offset_through_typedef() {
        let data = sample(false);
        let btf = Btf::parse(&data).expect("parse");
        assert_eq!(btf.member_offset("tcp_sock", "srtt_us", 4), Ok(8));
        assert_eq!(btf.member_offset("other", "srtt_us", 4), Ok(0));
    }

    #[test]
    fn finds_member_inside_anonymous_union() {
        let data = sample(true);
        let btf = Btf::parse(&data).expect("parse");
        assert_eq!(btf.member_offset("tcp_sock", "inner_a", 4), Ok(12));
        assert_eq!(btf.member_offset("tcp_sock", "inner_b", 1), Ok(12));
    }

    #[test]
    fn rejects_bitfields_wrong_sizes_and_missing_names() {
        let data = sample(true);
        let btf = Btf::parse(&data).expect("parse");
        assert!(matches!(
            btf.member_offset("tcp_sock", "bits", 1),
            Err(BtfError::WrongShape(..))
        ));
        assert!(matches!(
            btf.member_offset("tcp_sock", "srtt_us", 8),
            Err(BtfError::WrongShape(..))
        ));
        assert!(matches!(
            btf.member_offset("tcp_sock", "nope", 4),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.member_offset("udp_sock", "srtt_us", 4),
            Err(BtfError::NoStruct(..))
        ));
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(Btf::parse(b"hello").map(|_| ()), Err(BtfError::BadHeader));
        let mut data = sample(false);
        data.truncate(data.len() - 40);
        assert!(Btf::parse(&data).is_err());
        // An unknown kind is an error, not a silent misparse of everything after it.
        let mut b = Builder::new();
        b.ty("x", 31, false, 0, 0, &[]);
        assert_eq!(
            Btf::parse(&b.build()).map(|_| ()),
            Err(BtfError::Malformed(31))
        );
    }

    /// A BTF holding just the members [`identity_offsets`] reads, at made-up offsets, less
    /// `omit` ("struct.member"); `old_cgroup` lays `sk_cgrp_data` out as before Linux 5.15
    /// (a u64 `val`).
    fn identity_btf(omit: &str, old_cgroup: bool) -> Vec<u8> {
        fn s(b: &mut Builder, omit: &str, name: &str, size: u32, members: &[(&str, u32, u32)]) {
            let kept: Vec<_> = members
                .iter()
                .copied()
                .filter(|(m, _, _)| format!("{name}.{m}") != omit)
                .collect();
            b.strukt(name, false, size, &kept);
        }
        let mut b = Builder::new();
        b.ty("unsigned int", KIND_INT, false, 0, 4, &[32]); // 1
        b.ty("long long unsigned int", KIND_INT, false, 0, 8, &[64]); // 2
        b.ty("", KIND_PTR, false, 0, 6, &[]); // 3: struct net *
        b.ty("", KIND_PTR, false, 0, 9, &[]); // 4: struct cgroup *
        b.ty("", KIND_PTR, false, 0, 10, &[]); // 5: struct kernfs_node *
        s(&mut b, omit, "net", 256, &[("ns", 7, 120 * 8)]); // 6
        s(&mut b, omit, "ns_common", 24, &[("inum", 1, 16 * 8)]); // 7
        s(&mut b, omit, "possible_net_t", 8, &[("net", 3, 0)]); // 8
        s(&mut b, omit, "cgroup", 512, &[("kn", 5, 264 * 8)]); // 9
        s(&mut b, omit, "kernfs_node", 128, &[("id", 2, 96 * 8)]); // 10
        s(&mut b, omit, "sock_common", 136, &[("skc_net", 8, 48 * 8)]); // 11
        let cgrp = if old_cgroup {
            ("val", 2, 0)
        } else {
            ("cgroup", 4, 0)
        };
        s(&mut b, omit, "sock_cgroup_data", 8, &[cgrp]); // 12
        s(
            &mut b,
            omit,
            "sock",
            760,
            &[("__sk_common", 11, 0), ("sk_cgrp_data", 12, 672 * 8)],
        ); // 13
        s(
            &mut b,
            omit,
            "tcp_sock",
            2200,
            &[
                ("bytes_received", 2, 1700 * 8),
                ("bytes_acked", 2, 1760 * 8),
                ("srtt_us", 1, 1800 * 8),
                ("total_retrans", 1, 1900 * 8),
            ],
        ); // 14
        b.build()
    }

    /// What [`identity_btf`] places, every group found.
    fn all_offsets() -> tcptrace_common::SockOffsets {
        use tcptrace_common::{OFFS_CGROUP, OFFS_CLOSE, OFFS_NETNS};
        tcptrace_common::SockOffsets {
            groups: OFFS_NETNS | OFFS_CGROUP | OFFS_CLOSE,
            sk_net: 48,
            net_inum: 136,
            sk_cgrp: 672,
            cgrp_kn: 264,
            kn_id: 96,
            bytes_acked: 1760,
            bytes_received: 1700,
            total_retrans: 1900,
            srtt_us: 1800,
        }
    }

    #[test]
    fn identity_offsets_in_both_cgroup_layouts() {
        for old in [false, true] {
            let data = identity_btf("", old);
            let btf = Btf::parse(&data).expect("parse");
            assert_eq!(identity_offsets(&btf), (all_offsets(), Vec::new()), "{old}");
        }
    }

    /// A BTF without a member the program needs turns off that member's group alone: its
    /// offsets stay 0 and its bit clear (the kernel program then reads nothing and sets no
    /// `XFLAG_*`, so the fields are unknown, never 0), with one line saying what goes
    /// unmeasured and which member is missing; the other groups are read as usual.
    #[test]
    fn a_missing_member_leaves_its_group_unmeasured_said_once() {
        use tcptrace_common::{OFFS_CGROUP, OFFS_CLOSE, OFFS_NETNS, SockOffsets};
        let all = all_offsets();
        let netns_off = SockOffsets {
            groups: all.groups & !OFFS_NETNS,
            sk_net: 0,
            net_inum: 0,
            ..all
        };
        let cgroup_off = SockOffsets {
            groups: all.groups & !OFFS_CGROUP,
            sk_cgrp: 0,
            cgrp_kn: 0,
            kn_id: 0,
            ..all
        };
        let close_off = SockOffsets {
            groups: all.groups & !OFFS_CLOSE,
            bytes_acked: 0,
            bytes_received: 0,
            total_retrans: 0,
            srtt_us: 0,
            ..all
        };
        let netns = "network namespaces are not measured: ";
        let cgroup = "socket cgroups are not measured: ";
        let close = "bytes, retransmits and RTT at close are not measured: ";
        for (omit, want, says, names) in [
            (
                "ns_common.inum",
                netns_off,
                netns,
                "net has no member ns.inum",
            ),
            (
                "possible_net_t.net",
                netns_off,
                netns,
                "sock has no member __sk_common.skc_net.net",
            ),
            (
                "kernfs_node.id",
                cgroup_off,
                cgroup,
                "kernfs_node has no member id",
            ),
            ("cgroup.kn", cgroup_off, cgroup, "cgroup has no member kn"),
            (
                "sock_cgroup_data.cgroup",
                cgroup_off,
                cgroup,
                "sock has no member sk_cgrp_data.val",
            ),
            (
                "tcp_sock.bytes_received",
                close_off,
                close,
                "tcp_sock has no member bytes_received",
            ),
            (
                "tcp_sock.srtt_us",
                close_off,
                close,
                "tcp_sock has no member srtt_us",
            ),
        ] {
            let data = identity_btf(omit, false);
            let btf = Btf::parse(&data).expect("parse");
            let (o, missing) = identity_offsets(&btf);
            assert_eq!(o, want, "without {omit}");
            assert_eq!(missing.len(), 1, "without {omit}: {missing:?}");
            assert!(
                missing[0].starts_with(says) && missing[0].ends_with(names),
                "without {omit}: {missing:?}"
            );
        }
        // Without tcp_sock at all, as a BTF from another tree might be.
        let mut data = identity_btf("", false);
        let at = data
            .windows(9)
            .position(|w| w == b"tcp_sock\0")
            .expect("the struct's name");
        data[at + 5] = b'i';
        let btf = Btf::parse(&data).expect("parse");
        assert_eq!(
            identity_offsets(&btf),
            (
                close_off,
                vec![format!("{close}struct tcp_sock is not in the kernel's BTF")]
            )
        );
    }

    /// The running kernel's BTF, when there is one (not a root test: the file is world
    /// readable on most distributions).
    #[test]
    fn reads_the_running_kernel_when_present() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("SKIP: {VMLINUX} is absent on this machine");
            return;
        }
        let data = read_vmlinux().expect("reading the kernel's BTF");
        let btf = Btf::parse(&data).expect("parsing the kernel's BTF");
        let off = tcp_sock_srtt_offset(&btf).expect("srtt_us offset");
        // struct tcp_sock starts with struct inet_connection_sock (well over 1 KiB).
        assert!(off > 1000 && off.is_multiple_of(4), "offset {off}");
        let (o, missing) = identity_offsets(&btf);
        eprintln!("{o:?}");
        assert_eq!(missing, Vec::<String>::new());
        assert_eq!(o.srtt_us, off);
        // skc_net sits in sock_common, before the socket's own fields.
        assert!(
            o.sk_net > 0 && o.sk_net < 136 && o.sk_net.is_multiple_of(8),
            "{o:?}"
        );
        assert!(o.sk_cgrp > o.sk_net && o.bytes_acked > 1000, "{o:?}");
        // The BTF tracepoint's fields: sock_common's within its first 136 bytes, inet_sock's
        // after struct sock.
        let f = sk_fields(&btf).expect("the BTF tracepoint's fields");
        for i in [1, 3, 5, 6, 7] {
            assert!(f[i] < 136, "{f:?}");
        }
        assert!(f[0] > 136 && f[2] > f[0] && f[4] > f[0], "{f:?}");
    }
}
