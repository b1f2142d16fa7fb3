//! Owners of sockets that existed before tracing started, from /proc.
//! It also reads a process name by pid (`comm_of`) for the events whose name the kernel did
//! not send (see `owners`), and a process's cgroup v2 path (`cgroup_of`, which the sampler
//! reads for listeners' holders only; `--cgroup` narrows the listeners shown by it).
//!
//! The tracer learns a socket's owner when the owner acts on it (connect, listen, close).
//! Sockets opened before tcptrace started would show no owner until they close, and children
//! of a listener started earlier would show none at all. At start-up we therefore read every
//! process's socket inodes (`/proc/PID/fd`) and the TCP tables of each network namespace
//! (`/proc/PID/net/tcp{,6}`, whose `pointer` column is the kernel socket address that the
//! tracepoints report), and seed the owner caches with what we find: listeners into the
//! kernel's listener map, sockets into the pipeline's per-socket cache (`owners`).

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// One socket from a /proc/net/tcp table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub local_port: u16,
    pub listening: bool,
    /// The kernel's state number (1 ESTABLISHED .. 12 NEW_SYN_RECV), as in `st`.
    pub state: u8,
    pub inode: u64,
    /// Kernel socket address (0 when the kernel hides pointers from us).
    pub sock: u64,
}

/// Parses a /proc/net/tcp or /proc/net/tcp6 table.
pub fn parse_tcp_table(text: &str) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer ...
            if f.len() < 12 {
                return None;
            }
            // TIME_WAIT (06) rows are mini-sockets with no owner: skip them early (a busy
            // host can have tens of thousands).
            if f[3] == "06" {
                return None;
            }
            let local = parse_addr(f[1])?;
            Some(TcpRow {
                local,
                remote: parse_addr(f[2])?,
                local_port: local.port(),
                listening: f[3] == "0A",
                state: u8::from_str_radix(f[3], 16).ok()?,
                inode: f[9].parse().ok()?,
                sock: u64::from_str_radix(f[11], 16).ok()?,
            })
        })
        .collect()
}

/// Parses "0100007F:1F90" (IPv4) or 32 hex digits + port (IPv6): the kernel prints the
/// address as 32-bit words in host byte order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A process that holds socket inodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

/// The cgroup v2 path (`/system.slice/nginx.service`) of process `pid` as
/// `/proc/PID/cgroup` shows it from tcptrace's cgroup namespace; `None` without a cgroup v2
/// line or once the process is gone.
pub fn cgroup_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| cgroup_v2_path(&t))
}

/// The cgroup v2 path in a `/proc/PID/cgroup` text: its `0::PATH` line.
fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned())
        .filter(|p| p.starts_with('/'))
}

/// Socket inode -> holder, and the set of network namespaces seen (with one pid in each).
fn scan_processes(proc: &Path) -> (HashMap<u64, Holder>, HashMap<String, u32>) {
    let mut inodes = HashMap::new();
    let mut netns = HashMap::new();
    let Ok(dir) = fs::read_dir(proc) else {
        return (inodes, netns);
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let base = entry.path();
        if let Ok(ns) = fs::read_link(base.join("ns/net")) {
            netns
                .entry(ns.to_string_lossy().into_owned())
                .or_insert(pid);
        }
        let Ok(fds) = fs::read_dir(base.join("fd")) else {
            continue;
        };
        let comm = fs::read_to_string(base.join("comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            {
                inodes.entry(inode).or_insert_with(|| Holder {
                    pid,
                    comm: comm.clone(),
                });
            }
        }
    }
    (inodes, netns)
}

/// A thread's name from `/proc/TGID/task/PID/comm` (or the process's), for an event whose
/// name the kernel did not send; `None` once the process is gone.
pub fn comm_of(tgid: u32, pid: u32) -> Option<crate::decode::Comm> {
    let text = fs::read_to_string(format!("/proc/{tgid}/task/{pid}/comm"))
        .or_else(|_| fs::read_to_string(format!("/proc/{tgid}/comm")))
        .ok()?;
    Some(crate::decode::Comm::from_str_lossy(
        text.trim_end_matches('\n'),
    ))
}

/// The inode in a `/proc/PID/ns/net` link target, `net:[4026531840]`.
pub fn netns_inode(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Socket inode -> the process holding it, from every process's open files (the sampler names
/// listeners' owners with it).
pub fn socket_holders() -> HashMap<u64, Holder> {
    scan_processes(Path::new("/proc")).0
}

/// Existing TCP sockets with their owners.
#[derive(Debug, Default)]
pub struct Existing {
    /// (kernel socket address, owner) for sockets whose real address the kernel showed us
    /// (with kptr_restrict=0 the table shows hashed pointers, which are useless).
    pub sockets: Vec<(u64, Holder)>,
    /// (local, remote, owner) for every connected socket found.
    pub connected: Vec<(SocketAddr, SocketAddr, Holder)>,
    /// (network namespace inode, family, local port, owner) for listening sockets.
    pub listeners: Vec<(u32, u16, u16, Holder)>,
    /// Every socket found (TIME_WAIT mini-sockets excepted), with its state and holder when
    /// one was found: the dashboard counts them per state until their first event.
    pub all: Vec<Prior>,
}

/// A socket that existed when tracing started, as /proc showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prior {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's state number.
    pub state: u8,
    pub holder: Option<Holder>,
}

/// Scans /proc for TCP sockets and their owning processes, in every network namespace.
pub fn scan() -> Existing {
    let proc = Path::new("/proc");
    let (inodes, netns) = scan_processes(proc);
    let mut out = Existing::default();
    let mut seen = HashSet::new();
    for (ns, pid) in &netns {
        let ns_inode = netns_inode(ns).unwrap_or(0);
        for (file, family) in [
            ("tcp", tcptrace_common::AF_INET),
            ("tcp6", tcptrace_common::AF_INET6),
        ] {
            let Ok(text) = fs::read_to_string(proc.join(pid.to_string()).join("net").join(file))
            else {
                continue;
            };
            for row in parse_tcp_table(&text) {
                out.all.push(Prior {
                    local: row.local,
                    remote: row.remote,
                    state: row.state,
                    holder: inodes.get(&row.inode).cloned(),
                });
                let Some(holder) = inodes.get(&row.inode) else {
                    continue;
                };
                // Real kernel addresses live in the top half of the address space.
                if row.sock >= 0xffff_0000_0000_0000 && seen.insert(row.sock) {
                    out.sockets.push((row.sock, holder.clone()));
                }
                if !row.listening {
                    out.connected.push((row.local, row.remote, holder.clone()));
                }
                if row.listening {
                    out.listeners
                        .push((ns_inode, family, row.local_port, holder.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 43210 1 ffff888104a8c000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 43211 1 ffff888104a8d100 20 4 30 10 -1
   2: garbage
";

    #[test]
    fn reads_the_cgroup_v2_line() {
        assert_eq!(
            cgroup_v2_path("12:cpu:/old\n0::/system.slice/nginx.service\n").as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(cgroup_v2_path("0::/\n").as_deref(), Some("/"));
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
        let mine = fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        if mine.lines().any(|l| l.starts_with("0::")) {
            assert_eq!(
                cgroup_of(std::process::id()),
                cgroup_v2_path(&mine),
                "{mine}"
            );
            assert!(cgroup_v2_path(&mine).is_some(), "{mine}");
        }
    }

    #[test]
    fn parses_proc_net_tcp_rows() {
        let rows = parse_tcp_table(TABLE);
        assert_eq!(
            rows,
            vec![
                TcpRow {
                    local: "127.0.0.1:8080".parse().expect("addr"),
                    remote: "0.0.0.0:0".parse().expect("addr"),
                    local_port: 8080,
                    listening: true,
                    state: 10,
                    inode: 43210,
                    sock: 0xffff_8881_04a8_c000
                },
                TcpRow {
                    local: "127.0.0.1:40000".parse().expect("addr"),
                    remote: "127.0.0.1:8080".parse().expect("addr"),
                    local_port: 40000,
                    listening: false,
                    state: 1,
                    inode: 43211,
                    sock: 0xffff_8881_04a8_d100
                },
            ]
        );
    }

    #[test]
    fn parses_ipv6_addresses() {
        assert_eq!(
            parse_addr("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().expect("addr"))
        );
        assert_eq!(parse_addr("zz:1"), None);
    }

    #[test]
    fn finds_this_process_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let existing = scan();
        let me = std::process::id();
        assert!(
            existing
                .listeners
                .iter()
                .any(|(ns, f, p, h)| *f == tcptrace_common::AF_INET
                    && *p == port
                    && h.pid == me
                    && Some(*ns)
                        == fs::read_link("/proc/self/ns/net")
                            .ok()
                            .and_then(|l| netns_inode(&l.to_string_lossy()))),
            "listener on {port} not found"
        );
        assert_eq!(netns_inode("net:[4026531840]"), Some(4026531840));
        let me_comm = fs::read_to_string("/proc/self/comm").expect("comm");
        assert_eq!(
            comm_of(me, me).map(|c| c.as_str().into_owned()),
            Some(me_comm.trim_end().chars().take(15).collect())
        );
        assert_eq!(netns_inode("mnt:[4026531840]"), None);
    }
}
