//! The socket-table sampler: a second source of facts beside the kernel program. Once per
//! interval (`--sample-interval`, 1 s) it asks each watched network namespace's kernel, through
//! `NETLINK_SOCK_DIAG` (inet_diag, what `ss` uses), for its LISTEN and SYN_RECV (request)
//! sockets, IPv4 and IPv6, and on its own slower cadence (`--time-wait-interval`, 5 s, a
//! multiple of the other) for its TIME_WAIT sockets too, in the same dump; it reads the
//! namespace's `/proc/net/netstat` counters, and hands one [`Sample`](crate::listeners::Sample)
//! per namespace to the live loop, which feeds it through the pipeline like an event (so
//! recordings carry it). A sample without the TIME_WAIT dump has `time_wait: None`, which the
//! figures read as "not sampled this time", not as none in TIME_WAIT. A namespace's first
//! sample always has it ([`time_wait_due`]).
//!
//! Namespaces: the one tcptrace runs in ("host"), each `--netns PATH`, and with
//! `--all-netns` every namespace found under /proc/*/ns/net and /run/netns (found again at
//! every sample). A namespace is entered by a short-lived thread (`setns` changes only the
//! calling thread), which opens the netlink socket and the `/proc/thread-self/net/netstat`
//! file there and hands them back: both keep answering for that namespace afterwards. The
//! sampler holds them, which keeps the namespace alive, so it lets go as soon as the namespace
//! is no longer named by its path (or, for discovered ones, by any process or /run/netns), and
//! says so.
//!
//! Privileges: everything is opened at start-up, while tcptrace holds its capabilities; the
//! sampling thread starts after the live run has dropped them, so it keeps none. It then
//! cannot enter namespaces that appear later (`--all-netns` says so once per namespace) and
//! sees the owners of new listeners only in processes of its own user (root).
//!
//! The netlink socket is netlink-sys's (rust-netlink's maintained socket crate); the
//! request and the replies are encoded here, because netlink-packet-sock-diag (0.5) drops
//! `idiag_expires` for TIME_WAIT sockets (its `Timer::TimeWait` carries no duration), and the
//! remaining TIME_WAIT time is one of the figures this exists for. The encoding is small and
//! fixed (`struct inet_diag_req_v2`, `struct inet_diag_msg`) and tested below against bytes
//! laid out by hand. Every reply is parsed without allocating per socket; the cost is the
//! kernel's: it answers a SYN_RECV or TIME_WAIT dump by walking one socket hash shared by every
//! namespace and both families, and builds one message per matching socket. TIME_WAIT lasts
//! 60 s, so it is dumped only every `--time-wait-interval`. The other samples dump the
//! listeners first (the listening hash alone) and walk for request sockets only in the
//! families a listener there can have them in ([`request_families`]): on a host with IPv4
//! listeners only, one walk a second instead of two (the sampler thread's CPU beside the
//! bench's churn: 78-86 ms -> 52-70 ms in 10 s). Measured (README "TIME_WAIT", sampler thread
//! CPU, by difference): 10,000 TIME_WAIT sockets in the sampled namespace cost 0.41% of a
//! core dumped every second and 0.26% dumped every 5 s, side by side on a loaded machine (an
//! earlier run, TIME_WAIT every second, saw 0.75%): the samples without TIME_WAIT still walk
//! those sockets, since SYN_RECV requests live in the same hash, but build no message for
//! them (and only in the families with a listener, see above). And they walk only while
//! there can be requests to count ([`requests_due`]): the last walk found some, or the
//! namespace's handshake trouble counters moved; otherwise requests are counted by the next
//! TIME_WAIT sample's walk.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{Read, Seek, SeekFrom},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use crate::{
    clock,
    listeners::{ListenerSample, Netstat, Sample, TimeWaitSample, serves},
    procfs,
};

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_LEN: usize = 56;
/// `sizeof(struct inet_diag_msg)`.
const MSG_LEN: usize = 72;
const IPPROTO_TCP: u8 = 6;
/// Kernel TCP state numbers.
const TCP_SYN_RECV: u8 = 3;
const TCP_TIME_WAIT: u8 = 6;
const TCP_LISTEN: u8 = 10;
const TCP_NEW_SYN_RECV: u8 = 12;
/// The states asked for in every sample: LISTEN and SYN_RECV (request sockets are
/// NEW_SYN_RECV inside the kernel and reported as SYN_RECV).
pub const STATES: u32 = (1 << TCP_LISTEN) | (1 << TCP_SYN_RECV) | (1 << TCP_NEW_SYN_RECV);
/// [`STATES`] and TIME_WAIT: the states of a sample that dumps TIME_WAIT too.
pub const STATES_WITH_TIME_WAIT: u32 = STATES | (1 << TCP_TIME_WAIT);

/// Whether a namespace's sample number `k` (0 for its first) dumps TIME_WAIT sockets, with
/// TIME_WAIT dumped every `every` samples: the first, then every `every`-th.
pub fn time_wait_due(k: u64, every: u32) -> bool {
    k.is_multiple_of(u64::from(every.max(1)))
}

/// Builds one inet_diag dump request (`nlmsghdr` + `inet_diag_req_v2`, TCP, every socket of
/// `family` in `states`).
pub fn dump_request(family: u8, states: u32, seq: u32) -> [u8; NLMSG_HDR + REQ_LEN] {
    let mut b = [0u8; NLMSG_HDR + REQ_LEN];
    b[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0: the kernel.
    b[16] = family;
    b[17] = IPPROTO_TCP;
    // idiag_ext 0, pad 0, then the state bits; the socket id (48 bytes) stays zero.
    b[20..24].copy_from_slice(&states.to_ne_bytes());
    b
}

/// One socket of an inet_diag reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagRow {
    /// Kernel state number as reported (request sockets as SYN_RECV).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `idiag_timer` (3 for TIME_WAIT) and `idiag_expires` (milliseconds left).
    pub timer: u8,
    pub expires_ms: u32,
    /// LISTEN: accept queue length; others: bytes unread.
    pub rqueue: u32,
    /// LISTEN: accept queue limit; others: bytes unsent.
    pub wqueue: u32,
    pub inode: u32,
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn addr(family: u8, b: &[u8], port_be: [u8; 2]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(port_be);
    let ip = match family {
        2 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        10 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses one `struct inet_diag_msg` (attributes after it are ignored).
pub fn parse_msg(b: &[u8]) -> Option<DiagRow> {
    if b.len() < MSG_LEN {
        return None;
    }
    let family = b[0];
    Some(DiagRow {
        state: b[1],
        timer: b[2],
        local: addr(family, &b[8..24], [b[4], b[5]])?,
        remote: addr(family, &b[24..40], [b[6], b[7]])?,
        expires_ms: u32_ne(b, 52),
        rqueue: u32_ne(b, 56),
        wqueue: u32_ne(b, 60),
        inode: u32_ne(b, 68),
    })
}

/// What one received datagram held.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// More messages follow.
    More,
    /// `NLMSG_DONE`: the dump is complete.
    Done,
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("the kernel refused the inet_diag request: {0}")]
    Refused(std::io::Error),
    #[error("reading the inet_diag reply failed: {0}")]
    Io(std::io::Error),
    #[error("a malformed inet_diag reply ({0})")]
    Malformed(&'static str),
}

/// Parses the netlink messages of one received datagram, handing each socket to `f`.
pub fn parse_datagram(
    mut b: &[u8],
    seq: u32,
    f: &mut dyn FnMut(DiagRow),
) -> Result<Chunk, DiagError> {
    while b.len() >= NLMSG_HDR {
        let len = u32_ne(b, 0) as usize;
        let ty = u16_ne(b, 4);
        if len < NLMSG_HDR || len > b.len() {
            return Err(DiagError::Malformed("a message length beyond the datagram"));
        }
        let body = &b[NLMSG_HDR..len];
        if u32_ne(b, 8) == seq {
            match ty {
                NLMSG_DONE => return Ok(Chunk::Done),
                NLMSG_ERROR => {
                    let errno = if body.len() >= 4 {
                        -(u32_ne(body, 0) as i32)
                    } else {
                        0
                    };
                    return Err(DiagError::Refused(std::io::Error::from_raw_os_error(errno)));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(row) = parse_msg(body) {
                        f(row);
                    }
                }
                _ => {}
            }
        }
        // Messages are 4-byte aligned.
        let next = len.div_ceil(4) * 4;
        b = b.get(next..).unwrap_or(&[]);
    }
    Ok(Chunk::More)
}

/// A netlink socket in one namespace, with its receive buffer.
pub struct Diag {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Diag {
    /// Opens a `NETLINK_SOCK_DIAG` socket in the calling thread's namespace.
    pub fn open() -> std::io::Result<Self> {
        let sock = Socket::new(NETLINK_SOCK_DIAG)?;
        Ok(Self {
            sock,
            buf: vec![0u8; 64 * 1024],
            seq: 0,
        })
    }

    /// Dumps every TCP socket of `family` in `states`, handing each to `f`.
    pub fn dump(
        &mut self,
        family: u8,
        states: u32,
        f: &mut dyn FnMut(DiagRow),
    ) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let req = dump_request(family, states, self.seq);
        let kernel = netlink_sys::SocketAddr::new(0, 0);
        self.sock
            .send_to(&req, &kernel, 0)
            .map_err(DiagError::Refused)?;
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(DiagError::Io)?;
            let n = n.min(self.buf.len());
            if parse_datagram(&self.buf[..n], self.seq, f)? == Chunk::Done {
                return Ok(());
            }
        }
    }
}

/// Reads a TCP socket table snapshot of one namespace into a [`Sample`] (no owners yet): its
/// listeners, their request sockets when `requests` (else each listener's `syn_recv` is 0:
/// not counted; see [`requests_due`]), and its TIME_WAIT sockets when `time_wait` (else
/// `None`: not asked for, so not built by the kernel; a TIME_WAIT sample counts requests
/// too, in the same walk).
pub fn sample_table(
    diag: &mut Diag,
    time_wait: bool,
    requests: bool,
) -> Result<(Vec<ListenerSample>, Option<TimeWaitSample>), DiagError> {
    let mut t = Table::default();
    if time_wait {
        // TIME_WAIT sockets need the walk of the established hash in both families anyway.
        for family in [2u8, 10] {
            t.dump(diag, family, STATES_WITH_TIME_WAIT)?;
        }
    } else {
        // Listeners first: their dump reads only the listening hash. Request sockets live in
        // the established hash, shared by every namespace and both families, whose walk is
        // the sampler's whole cost (the TIME_WAIT sockets of a busy host); it is made only
        // for the families a listener here can have requests in ([`request_families`]).
        for family in [2u8, 10] {
            t.dump(diag, family, 1 << TCP_LISTEN)?;
        }
        let seen: Vec<SocketAddr> = t.listeners.iter().map(|l| l.local).collect();
        for (family, walk) in [2u8, 10].into_iter().zip(request_families(&seen)) {
            if walk && requests {
                t.dump(diag, family, STATES & !(1 << TCP_LISTEN))?;
            }
        }
    }
    let Table {
        mut listeners,
        requests,
        tw,
    } = t;
    for (local, n) in requests {
        let exact = listeners.iter().position(|l| l.local == local);
        let i = exact.or_else(|| listeners.iter().position(|l| serves(&l.local, &local)));
        if let Some(i) = i {
            listeners[i].syn_recv += n;
        }
    }
    listeners.sort_by_key(|l| l.local);
    Ok((listeners, time_wait.then(|| TimeWaitSample::of(tw))))
}

/// What the dumps of one sample gather.
#[derive(Default)]
struct Table {
    listeners: Vec<ListenerSample>,
    requests: HashMap<SocketAddr, u32>,
    tw: Vec<(SocketAddr, u32)>,
}

impl Table {
    fn dump(&mut self, diag: &mut Diag, family: u8, states: u32) -> Result<(), DiagError> {
        let r = diag.dump(family, states, &mut |row| match row.state {
            TCP_LISTEN => self.listeners.push(ListenerSample {
                local: row.local,
                accept_queue: row.rqueue,
                backlog: row.wqueue,
                syn_recv: 0,
                inode: u64::from(row.inode),
                pid: None,
                comm: None,
                cgroup: None,
            }),
            TCP_SYN_RECV | TCP_NEW_SYN_RECV => *self.requests.entry(row.local).or_default() += 1,
            TCP_TIME_WAIT => self.tw.push((row.remote, row.expires_ms)),
            _ => {}
        });
        match r {
            // A kernel without IPv6 refuses AF_INET6 dumps: no IPv6 sockets, not an error.
            Err(DiagError::Refused(e)) if family == 10 && e.raw_os_error() != Some(libc::EPERM) => {
                Ok(())
            }
            other => other,
        }
    }
}

/// Whether request sockets (SYN_RECV) can exist in [IPv4, IPv6] given a namespace's
/// listeners: IPv4 ones for any listener (an IPv6 listener that is not IPV6_V6ONLY takes IPv4
/// connections, and the kernel keeps their requests as IPv4 sockets), IPv6 ones only for an
/// IPv6 listener. Requests are counted against listeners, so a family without one has none
/// to count and its walk of the established hash is skipped.
pub fn request_families(listeners: &[SocketAddr]) -> [bool; 2] {
    [
        !listeners.is_empty(),
        listeners.iter().any(SocketAddr::is_ipv6),
    ]
}

/// Whether a sample without TIME_WAIT walks the established hash for request sockets: when
/// the namespace's previous walk found some (a listener under a steady flow of handshakes
/// keeps being counted every sample), or when its handshake trouble counters
/// ([`syn_activity`]) moved since the previous sample or cannot be read. Otherwise the walk
/// waits for the next TIME_WAIT sample (every `--time-wait-interval`), which counts requests
/// in its own walk. A request socket lives one round trip unless its handshake is in
/// trouble, and trouble shows in those counters within a second (a SYN-ACK is first
/// retransmitted after 1 s; a full request queue drops or answers with a cookie at once),
/// so a walk that would find requests is rarely skipped; and on a host whose listeners are
/// idle beside many connections of its own the walk, the sampler's whole cost, is made
/// every few seconds instead of every second.
pub fn requests_due(found_last: bool, activity: Option<u64>, previous: Option<u64>) -> bool {
    found_last || activity.is_none() || activity != previous
}

/// The sum of a namespace's `TcpExt` counters that move when handshakes are in trouble, from
/// the text of its `/proc/net/netstat` ([`crate::listeners::tcpext`]): SYN and SYN-ACK
/// retransmits, listen overflows and drops, SYN cookies sent, request-queue-full drops and
/// cookies. `None` without a `TcpExt` section.
pub fn syn_activity(netstat: &str) -> Option<u64> {
    const NAMES: [&str; 6] = [
        "TCPSynRetrans",
        "ListenOverflows",
        "ListenDrops",
        "SyncookiesSent",
        "TCPReqQFullDoCookies",
        "TCPReqQFullDrop",
    ];
    Some(
        crate::listeners::tcpext(netstat)?
            .filter(|(name, _)| NAMES.contains(name))
            .fold(0u64, |sum, (_, value)| sum.wrapping_add(value)),
    )
}

/// Where a watched namespace came from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    /// The namespace tcptrace runs in.
    Host,
    /// A `--netns` path: watched while the path names the same namespace.
    Path(PathBuf),
    /// Found by `--all-netns`: watched while some process or /run/netns names it.
    Found,
}

/// A watched namespace.
struct Ns {
    inode: u64,
    name: String,
    origin: Origin,
    diag: Diag,
    netstat: Option<File>,
    /// Samples taken of it so far (for [`time_wait_due`]).
    taken: u64,
    /// Whether its last walk for request sockets found any, and its [`syn_activity`] at the
    /// previous sample (for [`requests_due`]).
    requests_found: bool,
    syn_activity: Option<u64>,
}

/// The inode of the namespace a `/proc/PID/ns/net`-like path names.
fn ns_inode(path: &Path) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| m.ino())
}

/// Opens the netlink socket and the netstat file inside the namespace `path` names, from a
/// thread that enters it (and ends, so no other thread changes namespace).
fn open_in(path: &Path) -> Result<(u64, Diag, Option<File>), String> {
    let file = File::open(path).map_err(|e| {
        format!(
            "cannot open network namespace {}: {e} (give a path such as /run/netns/NAME or /proc/PID/ns/net)",
            path.display()
        )
    })?;
    let inode = file
        .metadata()
        .map(|m| m.ino())
        .map_err(|e| e.to_string())?;
    let path_text = path.display().to_string();
    let opened = std::thread::Builder::new()
        .name("tcptrace-setns".to_owned())
        .spawn(move || {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on a file descriptor we own; it changes only this thread's network
            // namespace, and this thread ends right after.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                return Err(format!(
                    "cannot enter network namespace {path_text}: {e} (is it a network namespace, and does tcptrace have CAP_SYS_ADMIN?)"
                ));
            }
            let diag = Diag::open().map_err(|e| {
                format!("cannot open an inet_diag socket in namespace {path_text}: {e}")
            })?;
            let netstat = File::open("/proc/thread-self/net/netstat").ok();
            Ok((diag, netstat))
        })
        .map_err(|e| format!("cannot start a thread to enter {}: {e}", path.display()))?
        .join()
        .map_err(|_| "the namespace thread panicked".to_owned())??;
    Ok((inode, opened.0, opened.1))
}

/// Every network namespace visible now: inode -> a path that names it.
fn discover() -> HashMap<u64, PathBuf> {
    let mut out = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            if let Ok(i) = ns_inode(&e.path()) {
                out.entry(i).or_insert_with(|| e.path());
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if !e
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|c| c.is_ascii_digit())
            {
                continue;
            }
            let p = e.path().join("ns/net");
            if let Ok(i) = ns_inode(&p) {
                out.entry(i).or_insert(p);
            }
        }
    }
    out
}

/// A readable name for a discovered namespace path.
fn found_name(p: &Path) -> String {
    let s = p.display().to_string();
    if let Some(pid) = s
        .strip_prefix("/proc/")
        .and_then(|r| r.strip_suffix("/ns/net"))
    {
        format!("pid {pid}")
    } else {
        s
    }
}

/// What to sample.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    pub interval: Duration,
    /// TIME_WAIT is dumped in one sample of this many (`--time-wait-interval` /
    /// `--sample-interval`; 1: in every sample).
    pub time_wait_every: u32,
    pub netns: Vec<PathBuf>,
    pub all_netns: bool,
}

/// The sampler state (runs on its own thread, see [`Sampler::spawn`]).
pub struct Sampler {
    cfg: SamplerConfig,
    namespaces: Vec<Ns>,
    /// Socket inode -> owner, refreshed when an unknown listener shows up (at most every
    /// [`OWNER_RESCAN`]).
    owners: HashMap<u64, procfs::Holder>,
    /// Listener holders' cgroup v2 paths by pid, read once each per owner scan (pids are
    /// reused, so they are forgotten with the owners).
    cgroups: HashMap<u32, Option<String>>,
    last_owner_scan: Option<Instant>,
    /// Namespaces that failed to open, by inode, so each is said once.
    failed: HashSet<u64>,
}

/// Least time between two /proc scans for listener owners.
const OWNER_RESCAN: Duration = Duration::from_secs(10);

impl Sampler {
    /// Opens the host namespace and each asked one. Returns the sampler and the warnings to
    /// print (a namespace that cannot be opened is skipped, not fatal); `Err` when no
    /// namespace at all can be sampled.
    pub fn open(cfg: SamplerConfig) -> Result<(Self, Vec<String>), String> {
        let mut warnings = Vec::new();
        let mut namespaces = Vec::new();
        match Diag::open() {
            Ok(mut diag) => match diag.dump(2, 1 << TCP_LISTEN, &mut |_| {}) {
                Ok(()) => namespaces.push(Ns {
                    inode: ns_inode(Path::new("/proc/thread-self/ns/net")).unwrap_or(0),
                    name: "host".to_owned(),
                    origin: Origin::Host,
                    diag,
                    netstat: File::open("/proc/thread-self/net/netstat").ok(),
                    taken: 0,
                    requests_found: false,
                    syn_activity: None,
                }),
                Err(e) => warnings.push(format!(
                    "the socket-table sampler cannot read this namespace: {e} (it needs a kernel with inet_diag/tcp_diag and, in a container, the host's permission to use NETLINK_SOCK_DIAG)"
                )),
            },
            Err(e) => warnings.push(format!(
                "the socket-table sampler cannot open a NETLINK_SOCK_DIAG socket: {e} (the kernel lacks CONFIG_INET_DIAG, or a seccomp policy forbids netlink)"
            )),
        }
        let mut s = Self {
            cfg,
            namespaces,
            owners: HashMap::new(),
            cgroups: HashMap::new(),
            last_owner_scan: None,
            failed: HashSet::new(),
        };
        for p in s.cfg.netns.clone() {
            if let Err(e) = s.add(&p, Origin::Path(p.clone()), p.display().to_string()) {
                warnings.push(format!("--netns {}: {e}; not sampled", p.display()));
            }
        }
        if s.cfg.all_netns {
            warnings.extend(s.rediscover());
        }
        // Owners of the listeners there are now, while /proc of every process is readable
        // (the sampler's thread runs without capabilities).
        s.owners = procfs::socket_holders();
        s.last_owner_scan = Some(Instant::now());
        if s.namespaces.is_empty() {
            return Err(warnings.join("; "));
        }
        Ok((s, warnings))
    }

    fn add(&mut self, path: &Path, origin: Origin, name: String) -> Result<(), String> {
        let (inode, diag, netstat) = open_in(path)?;
        if self.namespaces.iter().any(|n| n.inode == inode) {
            return Ok(());
        }
        self.namespaces.push(Ns {
            inode,
            name,
            origin,
            diag,
            netstat,
            taken: 0,
            requests_found: false,
            syn_activity: None,
        });
        Ok(())
    }

    /// `--all-netns`: opens namespaces that appeared; returns warnings.
    fn rediscover(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (inode, path) in discover() {
            if self.namespaces.iter().any(|n| n.inode == inode) || self.failed.contains(&inode) {
                continue;
            }
            if let Err(e) = self.add(&path, Origin::Found, found_name(&path)) {
                self.failed.insert(inode);
                warnings.push(format!("{e}; not sampled"));
            }
        }
        warnings
    }

    /// Lets go of namespaces that are gone (see the module doc); returns what to say.
    fn prune(&mut self, visible: Option<&HashMap<u64, PathBuf>>) -> Vec<String> {
        let mut said = Vec::new();
        self.namespaces.retain(|ns| {
            let alive = match &ns.origin {
                Origin::Host => true,
                Origin::Path(p) => ns_inode(p).is_ok_and(|i| i == ns.inode),
                Origin::Found => visible.is_none_or(|v| v.contains_key(&ns.inode)),
            };
            if !alive {
                said.push(format!(
                    "network namespace {} ({}) went away; no longer sampled",
                    ns.name, ns.inode
                ));
            }
            alive
        });
        said
    }

    fn owner_of(&mut self, inodes: &[u64]) {
        let unknown = inodes
            .iter()
            .any(|i| *i != 0 && !self.owners.contains_key(i));
        let due = self
            .last_owner_scan
            .is_none_or(|t| t.elapsed() >= OWNER_RESCAN);
        if unknown && due {
            self.owners = procfs::socket_holders();
            self.cgroups.clear();
            self.last_owner_scan = Some(Instant::now());
        }
    }

    /// Samples every watched namespace once; returns the samples and the warnings to print.
    pub fn sample_all(&mut self) -> (Vec<Sample>, Vec<String>) {
        let mut warnings = if self.cfg.all_netns {
            let visible = discover();
            let mut w = self.prune(Some(&visible));
            w.extend(self.rediscover());
            w
        } else {
            self.prune(None)
        };
        let mut out = Vec::with_capacity(self.namespaces.len());
        let mut broken = Vec::new();
        for (i, ns) in self.namespaces.iter_mut().enumerate() {
            let ts_ns = clock::monotonic_now_ns();
            // The counters first, then the table: an overflow the counters include happened
            // while its listener was full, before the dump, so a listener that filled and
            // stays full is seen full in the sample whose interval counts its overflows
            // (`listeners::attribute`). Read the other way round, overflows between the dump
            // and the read fell in an interval where no sample showed the listener full.
            let text = ns.netstat.as_mut().and_then(|f| {
                let mut text = String::new();
                f.seek(SeekFrom::Start(0)).ok()?;
                f.read_to_string(&mut text).ok()?;
                Some(text)
            });
            let netstat = text.as_deref().and_then(Netstat::parse);
            let activity = text.as_deref().and_then(syn_activity);
            let with_tw = time_wait_due(ns.taken, self.cfg.time_wait_every);
            let requests = with_tw || requests_due(ns.requests_found, activity, ns.syn_activity);
            ns.taken += 1;
            ns.syn_activity = activity;
            match sample_table(&mut ns.diag, with_tw, requests) {
                Ok((listeners, time_wait)) => {
                    ns.requests_found = listeners.iter().any(|l| l.syn_recv > 0);
                    out.push(Sample {
                        ts_ns,
                        netns: ns.inode,
                        netns_name: ns.name.clone(),
                        listeners,
                        time_wait,
                        netstat,
                    });
                }
                Err(e) => {
                    warnings.push(format!(
                        "sampling network namespace {} failed: {e}; no longer sampled",
                        ns.name
                    ));
                    broken.push(i);
                }
            }
        }
        for i in broken.into_iter().rev() {
            self.namespaces.remove(i);
        }
        let inodes: Vec<u64> = out
            .iter()
            .flat_map(|s| s.listeners.iter().map(|l| l.inode))
            .collect();
        self.owner_of(&inodes);
        for s in &mut out {
            for l in &mut s.listeners {
                if let Some(h) = self.owners.get(&l.inode) {
                    l.pid = Some(h.pid);
                    l.comm = Some(h.comm.clone());
                    l.cgroup.clone_from(
                        self.cgroups
                            .entry(h.pid)
                            .or_insert_with(|| procfs::cgroup_of(h.pid)),
                    );
                }
            }
        }
        (out, warnings)
    }

    /// Runs the sampler on its own thread until `stop` is set, sending samples to `tx`.
    pub fn spawn(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<Sample>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("tcptrace-sampler".to_owned())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let (samples, warnings) = self.sample_all();
                    for w in warnings {
                        log::warn!("{w}");
                    }
                    for s in samples {
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                    next += self.cfg.interval;
                    let now = Instant::now();
                    if next < now {
                        next = now;
                    }
                    // Sleep in short steps so a stop is noticed promptly.
                    while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                        std::thread::sleep(
                            next.saturating_duration_since(Instant::now())
                                .min(Duration::from_millis(50)),
                        );
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_walked_for_only_the_families_a_listener_can_have_them_in() {
        let a = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        assert_eq!(request_families(&[]), [false, false]);
        assert_eq!(request_families(&[a("0.0.0.0:22")]), [true, false]);
        // A dual-stack IPv6 listener's IPv4 clients are IPv4 request sockets.
        assert_eq!(request_families(&[a("[::]:80")]), [true, true]);
        assert_eq!(
            request_families(&[a("127.0.0.1:8080"), a("[::1]:8080")]),
            [true, true]
        );
    }

    #[test]
    fn the_request_is_an_inet_diag_req_v2_dump() {
        let r = dump_request(10, STATES_WITH_TIME_WAIT, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_ne(&r, 0), 72, "nlmsg_len");
        assert_eq!(u16_ne(&r, 4), 20, "SOCK_DIAG_BY_FAMILY");
        assert_eq!(u16_ne(&r, 6), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(u32_ne(&r, 8), 7, "seq");
        assert_eq!(u32_ne(&r, 12), 0, "pid");
        assert_eq!((r[16], r[17], r[18], r[19]), (10, 6, 0, 0));
        assert_eq!(u32_ne(&r, 20), (1 << 10) | (1 << 3) | (1 << 12) | (1 << 6));
        assert!(r[24..].iter().all(|&b| b == 0), "an empty socket id");
        let r = dump_request(2, STATES, 8);
        assert_eq!(
            u32_ne(&r, 20),
            (1 << 10) | (1 << 3) | (1 << 12),
            "no TIME_WAIT outside its cadence"
        );
    }

    #[test]
    fn time_wait_is_dumped_in_the_first_sample_then_every_nth() {
        let which =
            |every: u32| -> Vec<u64> { (0..12u64).filter(|k| time_wait_due(*k, every)).collect() };
        assert_eq!(which(5), [0, 5, 10]);
        assert_eq!(which(1), (0..12).collect::<Vec<_>>());
        assert_eq!(which(0), (0..12).collect::<Vec<_>>(), "0 is read as 1");
        assert_eq!(which(4), [0, 4, 8]);
    }

    /// A reply message laid out by hand as `struct inet_diag_msg` is.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of the message, as the kernel lays it out"
    )]
    fn msg(
        seq: u32,
        family: u8,
        state: u8,
        local: &[u8],
        lport: u16,
        remote: &[u8],
        rport: u16,
        expires: u32,
        rq: u32,
        wq: u32,
        inode: u32,
    ) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDR + MSG_LEN + 8];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        let b = &mut m[NLMSG_HDR..];
        b[0] = family;
        b[1] = state;
        b[2] = if state == TCP_TIME_WAIT { 3 } else { 0 };
        b[4..6].copy_from_slice(&lport.to_be_bytes());
        b[6..8].copy_from_slice(&rport.to_be_bytes());
        b[8..8 + local.len()].copy_from_slice(local);
        b[24..24 + remote.len()].copy_from_slice(remote);
        b[52..56].copy_from_slice(&expires.to_ne_bytes());
        b[56..60].copy_from_slice(&rq.to_ne_bytes());
        b[60..64].copy_from_slice(&wq.to_ne_bytes());
        b[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        // An attribute after the message: skipped.
        b[72..76].copy_from_slice(&[8, 0, 5, 0]);
        m
    }

    fn control(seq: u32, ty: u16, errno: i32) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDR + 4];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&ty.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
        m
    }

    #[test]
    fn replies_parse_listeners_time_wait_and_ipv6() {
        let mut d = msg(
            5,
            2,
            TCP_LISTEN,
            &[10, 0, 0, 1],
            8080,
            &[0; 4],
            0,
            0,
            3,
            128,
            4242,
        );
        d.extend(msg(
            5,
            2,
            TCP_TIME_WAIT,
            &[10, 0, 0, 1],
            8080,
            &[10, 0, 0, 2],
            40000,
            59_123,
            0,
            0,
            0,
        ));
        let v6 = Ipv6Addr::LOCALHOST.octets();
        d.extend(msg(5, 10, TCP_SYN_RECV, &v6, 443, &v6, 5555, 900, 0, 0, 0));
        // Another request's message (other seq) is not ours.
        d.extend(msg(
            6,
            2,
            TCP_LISTEN,
            &[10, 0, 0, 9],
            1,
            &[0; 4],
            0,
            0,
            0,
            1,
            1,
        ));
        let mut rows = Vec::new();
        assert_eq!(
            parse_datagram(&d, 5, &mut |r| rows.push(r)).expect("parses"),
            Chunk::More
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            DiagRow {
                state: TCP_LISTEN,
                local: "10.0.0.1:8080".parse().expect("addr"),
                remote: "0.0.0.0:0".parse().expect("addr"),
                timer: 0,
                expires_ms: 0,
                rqueue: 3,
                wqueue: 128,
                inode: 4242,
            }
        );
        assert_eq!((rows[1].timer, rows[1].expires_ms), (3, 59_123));
        assert_eq!(
            rows[1].remote,
            "10.0.0.2:40000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            rows[2].local,
            "[::1]:443".parse::<SocketAddr>().expect("addr")
        );
        let done = control(5, NLMSG_DONE, 0);
        assert_eq!(
            parse_datagram(&done, 5, &mut |_| {}).expect("done"),
            Chunk::Done
        );
    }

    #[test]
    fn an_error_reply_is_a_refusal_with_its_errno() {
        let e = parse_datagram(&control(1, NLMSG_ERROR, libc::EPERM), 1, &mut |_| {})
            .expect_err("refused");
        match e {
            DiagError::Refused(io) => assert_eq!(io.raw_os_error(), Some(libc::EPERM)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn truncated_or_garbled_replies_are_errors_not_panics() {
        let m = msg(1, 2, TCP_LISTEN, &[1, 2, 3, 4], 1, &[0; 4], 0, 0, 0, 0, 0);
        for cut in 0..m.len() {
            let _ = parse_datagram(&m[..cut], 1, &mut |_| {});
        }
        let mut bad = m.clone();
        bad[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(matches!(
            parse_datagram(&bad, 1, &mut |_| {}),
            Err(DiagError::Malformed(_))
        ));
        let mut fam = m;
        fam[NLMSG_HDR] = 99;
        let mut rows = 0;
        parse_datagram(&fam, 1, &mut |_| rows += 1).expect("skips an unknown family");
        assert_eq!(rows, 0);
    }

    #[test]
    fn request_walks_follow_what_was_found_and_the_trouble_counters() {
        assert!(requests_due(true, Some(5), Some(5)), "found some last time");
        assert!(
            !requests_due(false, Some(5), Some(5)),
            "none found, nothing moved"
        );
        assert!(requests_due(false, Some(6), Some(5)), "a counter moved");
        assert!(requests_due(false, Some(5), None), "the first sample");
        assert!(requests_due(false, None, None), "counters unreadable");
    }

    #[test]
    fn syn_activity_sums_the_handshake_trouble_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows TCPSynRetrans DelayedACKs ListenDrops\n\
                    TcpExt: 1 2 40 1000 2\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 7\n";
        assert_eq!(syn_activity(text), Some(45));
        assert_eq!(syn_activity("IpExt: InNoRoutes\nIpExt: 7\n"), None);
    }

    #[test]
    fn this_namespace_shows_our_listener_with_its_backlog() {
        let Ok(mut diag) = Diag::open() else {
            panic!("NETLINK_SOCK_DIAG is not available to the unit tests");
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (listeners, tw) = sample_table(&mut diag, false, true).expect("dump");
        assert_eq!(tw, None, "TIME_WAIT not asked for");
        let me = listeners
            .iter()
            .find(|x| x.local == addr)
            .expect("our listener is in the table");
        // std's listen() backlog is 128, capped by somaxconn (4096 by default).
        assert_eq!(me.backlog, 128);
        assert_eq!(me.accept_queue, 0);
        let c = std::net::TcpStream::connect(addr).expect("connect");
        let (listeners, tw) = sample_table(&mut diag, true, false).expect("dump");
        assert!(tw.is_some(), "TIME_WAIT asked for");
        let me = listeners
            .iter()
            .find(|x| x.local == addr)
            .expect("listener");
        assert_eq!(me.accept_queue, 1, "one connection waits for accept()");
        drop(c);
    }

    #[test]
    fn time_wait_sockets_come_only_when_asked_for() {
        let mut diag = Diag::open().expect("NETLINK_SOCK_DIAG for the unit tests");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        let client = c.local_addr().expect("addr");
        // The client closes first, so its side ends in TIME_WAIT once the server closes.
        drop(c);
        drop(s);
        let mut in_tw = |states: u32| {
            let mut found = (false, false);
            diag.dump(2, states, &mut |r| {
                found.0 |= r.state == TCP_TIME_WAIT && r.local == client;
                found.1 |= r.state == TCP_TIME_WAIT;
            })
            .expect("dump");
            found
        };
        let mut seen = false;
        for _ in 0..200 {
            if in_tw(STATES_WITH_TIME_WAIT).0 {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            seen,
            "the client's socket {client} never showed in TIME_WAIT"
        );
        assert_eq!(
            in_tw(STATES),
            (false, false),
            "a dump without the TIME_WAIT bit returned TIME_WAIT sockets"
        );
    }

    #[test]
    fn a_netns_path_that_does_not_exist_is_named_in_the_error() {
        let e = open_in(Path::new("/nonexistent/netns"))
            .err()
            .expect("no such path");
        assert!(
            e.contains("/nonexistent/netns") && e.contains("/run/netns/NAME"),
            "{e}"
        );
        let e = open_in(Path::new("/proc/self/status"))
            .err()
            .expect("not a namespace");
        assert!(e.contains("cannot enter network namespace"), "{e}");
    }
}
