//! Validated settings built from the command line (`cli` parses single flag values; this
//! module checks what only the flags together can say).

use tcptrace_common::{
    FILTER_IPV4_ONLY, FILTER_IPV6_ONLY, FILTER_LPORT, FILTER_PORT, FILTER_RPORT, MAX_FILTER_PORTS,
};

use std::path::{Path, PathBuf};

use tcptrace_common::MAX_FILTER_NETNS;

use crate::cli::FilterArgs;

/// `--cgroup`: a cgroup v2 directory, its id (the directory's inode, which is the kernel's
/// cgroup id), its depth below the cgroup2 root (the root is 0) and its path below the
/// mount as `/proc/PID/cgroup` shows cgroups (`/system.slice/nginx.service`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupFilter {
    pub path: PathBuf,
    pub id: u64,
    pub level: u32,
    /// Empty in recordings made before it was kept: then it narrows nothing in userspace.
    #[serde(default)]
    pub below: String,
}

impl CgroupFilter {
    /// Whether a process's cgroup v2 path (`/proc/PID/cgroup`) is this cgroup or below it
    /// (true for any path where the filter [`narrows`](Self::narrows) nothing).
    pub fn holds(&self, cgroup: &str) -> bool {
        let below = self.below.trim_end_matches('/');
        !self.narrows()
            || cgroup == below
            || cgroup
                .strip_prefix(below)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Whether the filter leaves some cgroup out, as far as userspace can tell: not for the
    /// root cgroup, and not where `below` is unknown (a recording made before it was kept).
    pub fn narrows(&self) -> bool {
        !self.below.trim_end_matches('/').is_empty()
    }
}

/// The kernel-side filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    pub ipv4_only: bool,
    pub ipv6_only: bool,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    pub ports: Vec<u16>,
    /// `--netns`: network namespace inodes; a socket in any of them passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub netns: Vec<u32>,
    /// `--cgroup`: sockets of this cgroup or below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupFilter>,
    /// `--pid`: sockets owned by this process (its thread group id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `--comm`: sockets owned by a task of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

impl Filter {
    pub fn from_args(a: &FilterArgs) -> Result<Self, String> {
        let flat = |v: &Vec<Vec<u16>>| {
            let mut f: Vec<u16> = v.iter().flatten().copied().collect();
            f.sort_unstable();
            f.dedup();
            f
        };
        let f = Self {
            ipv4_only: a.ipv4,
            ipv6_only: a.ipv6,
            lports: flat(&a.lport),
            rports: flat(&a.rport),
            ports: flat(&a.port),
            netns: Vec::new(),
            cgroup: match &a.cgroup {
                Some(p) => Some(cgroup_filter(
                    p,
                    &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
                )?),
                None => None,
            },
            pid: match a.pid {
                Some(pid) => Some(thread_group(pid, Path::new("/proc"))?),
                None => None,
            },
            comm: match &a.comm {
                Some(c) => Some(check_comm(c)?),
                None => None,
            },
        };
        let mut all: Vec<u16> = f
            .lports
            .iter()
            .chain(&f.rports)
            .chain(&f.ports)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.len() > MAX_FILTER_PORTS as usize {
            return Err(format!(
                "--lport, --rport and --port name {} distinct ports together; at most {MAX_FILTER_PORTS}",
                all.len()
            ));
        }
        Ok(f)
    }

    /// The filter a live front end runs with: `from_args` plus `--netns` (which the sampler
    /// options carry, since the namespaces named are also sampled); `sample.netns` becomes
    /// the namespaces' paths.
    pub fn from_cli(a: &FilterArgs, sample: &mut crate::cli::SampleArgs) -> Result<Self, String> {
        let mut f = Self::from_args(a)?;
        sample.netns = f.in_netns(&sample.netns)?;
        Ok(f)
    }

    /// Adds `--netns`: each path (`/run/netns/NAME`, `/proc/PID/ns/net`) or namespace inode
    /// becomes an inode the kernel matches. Returns the namespaces as paths for the
    /// socket-table sampler (an inode is looked up under /run/netns and /proc/*/ns/net).
    pub fn in_netns(&mut self, given: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
        if given.len() > MAX_FILTER_NETNS {
            return Err(format!(
                "--netns names {} namespaces; at most {MAX_FILTER_NETNS}",
                given.len()
            ));
        }
        let mut paths = Vec::new();
        for g in given {
            let (inode, path) = netns_of(g)?;
            if !self.netns.contains(&inode) {
                self.netns.push(inode);
            }
            paths.push(path);
        }
        Ok(paths)
    }

    /// Whether a socket filter (`--netns`, `--cgroup`, `--pid`, `--comm`) is set.
    pub fn any_sockets(&self) -> bool {
        !self.netns.is_empty() || self.cgroup.is_some() || self.pid.is_some() || self.comm.is_some()
    }

    /// The `FILTER_*` bits for the kernel program.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.ipv4_only {
            f |= FILTER_IPV4_ONLY;
        }
        if self.ipv6_only {
            f |= FILTER_IPV6_ONLY;
        }
        if !self.lports.is_empty() {
            f |= FILTER_LPORT;
        }
        if !self.rports.is_empty() {
            f |= FILTER_RPORT;
        }
        if !self.ports.is_empty() {
            f |= FILTER_PORT;
        }
        f
    }

    /// Whether the kernel-side filter would pass a socket with these addresses (for sockets
    /// found in /proc, which the kernel program never saw).
    pub fn matches(&self, local: std::net::SocketAddr, remote: std::net::SocketAddr) -> bool {
        let (l, r) = (local.port(), remote.port());
        (!self.ipv4_only || local.is_ipv4())
            && (!self.ipv6_only || local.is_ipv6())
            && (self.lports.is_empty() || self.lports.binary_search(&l).is_ok())
            && (self.rports.is_empty() || self.rports.binary_search(&r).is_ok())
            && (self.ports.is_empty()
                || self.ports.binary_search(&l).is_ok()
                || self.ports.binary_search(&r).is_ok())
    }

    pub fn any_ports(&self) -> bool {
        !(self.lports.is_empty() && self.rports.is_empty() && self.ports.is_empty())
    }
}

/// Validates `--cgroup`: a directory of the cgroup2 mount (absolute, or relative to the
/// mount), with its id and its depth in the kernel's hierarchy (the depth of the cgroup the
/// mount shows as its root, non-zero inside a cgroup namespace, plus the path's below it).
fn cgroup_filter(given: &Path, mountinfo: &str) -> Result<CgroupFilter, String> {
    use std::os::unix::fs::MetadataExt as _;
    let Some((mount, root)) = crate::cgroups::cgroup2_mount(mountinfo) else {
        return Err(format!(
            "--cgroup {}: cgroup v2 is not mounted here, so sockets cannot be matched by \
             cgroup; mount it (`mount -t cgroup2 none /sys/fs/cgroup`) or drop --cgroup",
            given.display()
        ));
    };
    let path = if given.is_absolute() {
        given.to_path_buf()
    } else {
        mount.join(given)
    };
    let example = mount.join("system.slice/NAME.service");
    let meta = std::fs::metadata(&path).map_err(|e| {
        format!(
            "--cgroup {}: {e}; give a cgroup v2 directory, e.g. {}",
            path.display(),
            example.display()
        )
    })?;
    let below = path
        .strip_prefix(&mount)
        .ok()
        .filter(|_| meta.is_dir())
        .ok_or_else(|| {
            format!(
                "--cgroup {}: not a directory of the cgroup v2 mount {}; give one, e.g. {}",
                path.display(),
                mount.display(),
                example.display()
            )
        })?;
    let root_depth = Path::new(&root).components().count().saturating_sub(1);
    Ok(CgroupFilter {
        id: meta.ino(),
        level: (root_depth + below.components().count()) as u32,
        below: format!("/{}", below.display()),
        path,
    })
}

/// Validates `--pid`: a running process (a thread's id stands for its process, as the kernel
/// records a socket's owner by thread group), looked up under `proc`.
fn thread_group(pid: u32, proc: &Path) -> Result<u32, String> {
    let status = std::fs::read_to_string(proc.join(pid.to_string()).join("status"))
        .map_err(|_| format!("--pid {pid}: no such process (is it running?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("--pid {pid}: its status in {} has no Tgid", proc.display()))
}

/// Validates `--comm`: the kernel keeps a task's name in 15 bytes.
fn check_comm(comm: &str) -> Result<String, String> {
    if comm.is_empty() {
        return Err("--comm needs a task name, e.g. --comm nginx".into());
    }
    if comm.len() > 15 {
        let cut: String = comm
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= 15)
            .map(|(_, c)| c)
            .collect();
        return Err(format!(
            "--comm {comm:?} is {} bytes, but the kernel keeps only the first 15 of a task's \
             name: use --comm {cut:?}",
            comm.len()
        ));
    }
    Ok(comm.to_owned())
}

/// Whether `path` is a network namespace: the kernel's NS_GET_NSTYPE answers CLONE_NEWNET
/// for an open namespace file (anything else, a directory or another kind of namespace,
/// would pass no socket at all).
fn is_network_namespace(path: &Path) -> bool {
    use std::os::fd::AsRawFd as _;
    /// `_IO(0xb7, 0x3)`, Linux 4.11+.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: an ioctl without arguments on a file descriptor we own.
    let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    kind == libc::CLONE_NEWNET
}

/// A `--netns` value as (namespace inode, path to enter it by).
fn netns_of(given: &Path) -> Result<(u32, PathBuf), String> {
    use std::os::unix::fs::MetadataExt as _;
    let inode_of = |p: &Path| std::fs::metadata(p).ok().map(|m| m.ino() as u32);
    if let Some(inode) = inode_of(given) {
        if !is_network_namespace(given) {
            return Err(format!(
                "--netns {}: not a network namespace; give a network namespace's path \
                 (/run/netns/NAME, /proc/PID/ns/net) or its inode number",
                given.display()
            ));
        }
        return Ok((inode, given.to_path_buf()));
    }
    let Some(wanted) = given.to_str().and_then(|s| s.parse::<u32>().ok()) else {
        return Err(format!(
            "--netns {}: no such file; give a namespace's path (/run/netns/NAME, \
             /proc/PID/ns/net) or its inode number",
            given.display()
        ));
    };
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let of_processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|e| e.path().join("ns/net"));
    named
        .chain(of_processes)
        .find(|p| inode_of(p) == Some(wanted))
        .map(|p| (wanted, p))
        .ok_or_else(|| {
            format!(
                "--netns {wanted}: no network namespace with that inode under /run/netns or \
             /proc/*/ns/net; give its path instead"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_refuses_what_is_not_a_network_namespace() {
        for bad in ["/tmp", "/proc/self/ns/pid", "/proc/self/status"] {
            let e = netns_of(Path::new(bad)).expect_err(bad);
            assert!(e.contains("not a network namespace"), "{bad}: {e}");
        }
        assert!(is_network_namespace(Path::new("/proc/self/ns/net")));
    }

    #[test]
    fn filter_flags_follow_the_sets() {
        let f = Filter::from_args(&FilterArgs {
            ipv4: true,
            lport: vec![vec![80], vec![80, 81]],
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(f.lports, vec![80, 81]);
        assert_eq!(f.flags(), FILTER_IPV4_ONLY | FILTER_LPORT);
        assert_eq!(Filter::default().flags(), 0);
    }

    #[test]
    fn matches_follows_the_kernel_filter() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        let f = Filter::from_args(&FilterArgs {
            ipv4: true,
            port: vec![vec![8080]],
            ..Default::default()
        })
        .expect("valid");
        assert!(f.matches(a("127.0.0.1:8080"), a("127.0.0.1:40000")));
        assert!(f.matches(a("127.0.0.1:40000"), a("127.0.0.1:8080")));
        assert!(!f.matches(a("127.0.0.1:40000"), a("127.0.0.1:9")));
        assert!(!f.matches(a("[::1]:8080"), a("[::1]:40000")));
        assert!(Filter::default().matches(a("[::1]:1"), a("[::1]:2")));
    }

    #[test]
    fn cgroup_filter_takes_a_cgroup2_directory_and_names_the_fix_otherwise() {
        let root = std::env::temp_dir().join(format!("tcptrace-cg-{}", std::process::id()));
        let leaf = root.join("system.slice/web.service");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        let mountinfo = format!(
            "25 1 0:23 / /proc rw - proc proc rw\n36 25 0:30 / {} rw,nosuid shared:9 - cgroup2 cgroup2 rw\n",
            root.display()
        );
        use std::os::unix::fs::MetadataExt as _;
        let f = cgroup_filter(&leaf, &mountinfo).expect("valid");
        assert_eq!(f.level, 2);
        assert_eq!(f.id, std::fs::metadata(&leaf).expect("stat").ino());
        assert_eq!(f.below, "/system.slice/web.service");
        assert!(f.holds("/system.slice/web.service"));
        assert!(f.holds("/system.slice/web.service/worker"));
        assert!(!f.holds("/system.slice/web.service2"));
        assert!(!f.holds("/system.slice"));
        let rel = cgroup_filter(Path::new("system.slice"), &mountinfo).expect("relative");
        assert_eq!((rel.level, rel.path), (1, root.join("system.slice")));
        let top = cgroup_filter(&root, &mountinfo).expect("root");
        assert_eq!((top.level, top.below.as_str()), (0, "/"));
        assert!(top.holds("/user.slice") && top.holds("/"));
        assert!(f.narrows() && !top.narrows());
        // Inside a cgroup namespace the mount's root is a cgroup deeper in the hierarchy,
        // and the kernel's levels count from the real root.
        let namespaced = mountinfo.replace(" 0:30 / ", " 0:30 /kubepods/pod1 ");
        assert_eq!(
            cgroup_filter(&leaf, &namespaced).expect("namespaced").level,
            4
        );
        let missing =
            cgroup_filter(&root.join("nope.service"), &mountinfo).expect_err("must be refused");
        assert!(missing.contains("give a cgroup v2 directory"), "{missing}");
        let outside = cgroup_filter(Path::new("/tmp"), &mountinfo).expect_err("must be refused");
        assert!(
            outside.contains("not a directory of the cgroup v2 mount"),
            "{outside}"
        );
        let none = cgroup_filter(&leaf, "25 1 0:23 / /proc rw - proc proc rw\n")
            .expect_err("must be refused");
        assert!(none.contains("cgroup v2 is not mounted"), "{none}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn pid_and_comm_filters_check_their_values() {
        let me = std::process::id();
        assert_eq!(thread_group(me, Path::new("/proc")), Ok(me));
        let gone = thread_group(u32::MAX - 1, Path::new("/proc")).expect_err("must be refused");
        assert!(gone.contains("no such process"), "{gone}");
        assert_eq!(check_comm("nginx"), Ok("nginx".into()));
        let long = check_comm("a-very-long-process-name").expect_err("must be refused");
        assert!(long.contains("use --comm \"a-very-long-pro\""), "{long}");
        assert!(check_comm("").is_err());
    }

    #[test]
    fn netns_filter_takes_a_path_or_an_inode() {
        use std::os::unix::fs::MetadataExt as _;
        let own = Path::new("/proc/self/ns/net");
        let inode = std::fs::metadata(own).expect("stat").ino() as u32;
        let mut f = Filter::default();
        let paths = f
            .in_netns(&[own.to_path_buf(), PathBuf::from(inode.to_string())])
            .expect("valid");
        assert_eq!(f.netns, vec![inode]);
        assert_eq!(paths.len(), 2);
        assert!(f.any_sockets());
        let bad = Filter::default()
            .in_netns(&[PathBuf::from("/run/netns/no-such-namespace")])
            .expect_err("must be refused");
        assert!(bad.contains("give a namespace's path"), "{bad}");
        let unknown = Filter::default()
            .in_netns(&[PathBuf::from("12345")])
            .expect_err("must be refused");
        assert!(
            unknown.contains("no network namespace with that inode"),
            "{unknown}"
        );
    }

    #[test]
    fn old_headers_without_socket_filters_still_read() {
        let f: Filter = serde_json::from_str(
            r#"{"ipv4_only":false,"ipv6_only":false,"lports":[],"rports":[],"ports":[80]}"#,
        )
        .expect("old filter");
        assert!(!f.any_sockets());
        assert!(!serde_json::to_string(&f).expect("ser").contains("netns"));
    }
}
