//! Network-namespace lab for ground-truth tests: two namespaces joined by a veth pair,
//! peers (separate processes) running inside them, and packet drops or exact delays.
//!
//! A peer is this very test binary re-executed under `ip netns exec NS` with `LAB_PEER=1`
//! and the filter `lab_peer`; it reads one command per line on stdin and answers one line
//! `LAB ok ...` or `LAB err ...` on stdout. Every wait is bounded; the namespaces (and with
//! them the veth pair and every iptables rule, which live inside the namespaces) are deleted
//! by a Drop guard, panics included.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    os::fd::AsRawFd as _,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use socket2::{Domain, SockAddr, Socket, Type};

/// Env var that turns the test binary into a peer.
pub const PEER_ENV: &str = "LAB_PEER";
/// How long one peer command may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(15);

static SEQ: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces `a` (10.201.0.1) and `b` (10.201.0.2) joined by a veth pair.
pub struct Lab {
    pub a: String,
    pub b: String,
    /// A port range of 16 unique to this lab (tests use base, base+1, ...).
    pub port_base: u16,
}

impl Lab {
    pub const A_IP: &'static str = "10.201.0.1";
    pub const B_IP: &'static str = "10.201.0.2";

    pub fn new() -> Self {
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", pid % 100_000);
        let lab = Self {
            a: format!("ttlab-{tag}-a"),
            b: format!("ttlab-{tag}-b"),
            port_base: 20_000 + ((pid % 1000) * 32 + n * 16) as u16 % 40_000,
        };
        let (va, vb) = (format!("tt{tag}a"), format!("tt{tag}b"));
        run(&["ip", "netns", "add", &lab.a]);
        run(&["ip", "netns", "add", &lab.b]);
        run(&[
            "ip", "link", "add", &va, "netns", &lab.a, "type", "veth", "peer", "name", &vb,
            "netns", &lab.b,
        ]);
        for (ns, dev, ip) in [(&lab.a, &va, Self::A_IP), (&lab.b, &vb, Self::B_IP)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Adds an iptables rule (`iptables -A ...`) inside namespace `ns`.
    pub fn iptables(&self, ns: &str, rule: &str) {
        let mut v = vec!["iptables", "-w"];
        v.extend(rule.split_whitespace());
        self.exec(ns, &v);
    }

    /// Flushes the filter table inside `ns`.
    pub fn flush(&self, ns: &str) {
        self.exec(ns, &["iptables", "-w", "-F"]);
    }

    pub fn sysctl(&self, ns: &str, kv: &str) {
        self.exec(ns, &["sysctl", "-q", "-w", kv]);
    }

    pub fn peer(&self, ns: &str) -> Peer {
        Peer::spawn(ns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth end (and so the pair) and its iptables rules.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A peer process inside a namespace.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<String>,
    pub pid: u32,
}

impl Peer {
    fn spawn(ns: &str) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(["lab_peer", "--exact", "--nocapture", "--test-threads=1"])
            .env(PEER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn peer");
        let stdin = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test lab_peer ... " before the first reply.
                if let Some(i) = line.find("LAB ")
                    && tx.send(line[i + 4..].to_owned()).is_err()
                {
                    break;
                }
            }
        });
        let mut p = Self {
            child,
            stdin,
            rx,
            pid: 0,
        };
        p.pid = p.ok("pid").parse().expect("pid");
        p
    }

    /// Sends a command and returns its reply ("ok ..." or "err ...").
    pub fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").expect("write to peer");
        self.stdin.flush().expect("flush peer");
        self.rx
            .recv_timeout(PEER_TIMEOUT)
            .unwrap_or_else(|_| panic!("peer did not answer {c:?} within {PEER_TIMEOUT:?}"))
    }

    /// Sends a command that must succeed; returns what follows "ok".
    pub fn ok(&mut self, c: &str) -> String {
        let r = self.cmd(c);
        match r.strip_prefix("ok") {
            Some(rest) => rest.trim().to_owned(),
            None => panic!("peer command {c:?} failed: {r}"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from a reply.
pub fn field(reply: &str, key: &str) -> u64 {
    reply
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in reply {reply:?}"))
}

// ---------------------------------------------------------------------------------------------
// The peer side.

struct PeerState {
    listener: Option<Socket>,
    sock: Option<Socket>,
    /// Sockets of `connect_many`, held open (never accepted by a `listen_backlog` server).
    many: Vec<Socket>,
    /// Packets held by NFQUEUE readers, in microseconds.
    held_us: Arc<Mutex<Vec<u64>>>,
    /// A `send` still writing (the peer may read only later).
    sending: Option<std::thread::JoinHandle<Result<(), String>>>,
}

fn addr(s: &str) -> Result<SockAddr, String> {
    s.parse::<SocketAddr>()
        .map(SockAddr::from)
        .map_err(|e| format!("bad address {s}: {e}"))
}

fn new_socket(from_port: Option<u16>) -> Result<Socket, String> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.set_reuse_address(true).map_err(|e| e.to_string())?;
    if let Some(p) = from_port {
        let a: SocketAddr = ([0, 0, 0, 0], p).into();
        s.bind(&a.into()).map_err(|e| format!("bind {p}: {e}"))?;
    }
    Ok(s)
}

fn errno(e: &std::io::Error) -> String {
    format!("errno={} {e}", e.raw_os_error().unwrap_or(0))
}

fn sock(st: &mut PeerState) -> Result<&mut Socket, String> {
    st.sock
        .as_mut()
        .ok_or_else(|| "no connected socket".to_owned())
}

/// Waits until `s` is readable (or `timeout` passes); true when readable.
fn wait_readable(s: &Socket, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n > 0
}

/// Reads until the peer's FIN (end of stream), for at most 10 s per read.
fn read_to_eof(mut s: &Socket) -> Result<(), String> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| errno(&e))?;
    let mut buf = [0u8; 256];
    while s.read(&mut buf).map_err(|e| errno(&e))? != 0 {}
    Ok(())
}

fn peer_command(st: &mut PeerState, line: &str) -> Result<String, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        w.get(i)
            .ok_or_else(|| format!("missing argument {i}"))?
            .parse()
            .map_err(|e| format!("bad number: {e}"))
    };
    match w.first().copied().unwrap_or("") {
        "pid" => Ok(std::process::id().to_string()),
        // name NAME: the task name (comm) of the thread that runs the commands.
        "name" => {
            let name =
                std::ffi::CString::new(*w.get(1).ok_or("name NAME")?).map_err(|e| e.to_string())?;
            // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
            if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
                return Err(errno(&std::io::Error::last_os_error()));
            }
            Ok(String::new())
        }
        "listen" => {
            let a = addr(w.get(1).ok_or("listen ADDR")?)?;
            let s = new_socket(None)?;
            s.bind(&a).map_err(|e| errno(&e))?;
            s.listen(16).map_err(|e| errno(&e))?;
            st.listener = Some(s);
            Ok(String::new())
        }
        // listen_backlog ADDR N: listen with backlog N and never accept (accept-queue tests).
        "listen_backlog" => {
            let a = addr(w.get(1).ok_or("listen_backlog ADDR N")?)?;
            let s = new_socket(None)?;
            s.bind(&a).map_err(|e| errno(&e))?;
            s.listen(num(2)? as i32).map_err(|e| errno(&e))?;
            st.listener = Some(s);
            Ok(String::new())
        }
        // connect_many ADDR N: N non-blocking connects, held open (the handshakes complete,
        // or not, in the kernel: SYN retransmits continue while the peer drops final ACKs).
        "connect_many" => {
            let a = addr(w.get(1).ok_or("connect_many ADDR N")?)?;
            for _ in 0..num(2)? {
                let s = new_socket(None)?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                match s.connect(&a) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(e) => return Err(errno(&e)),
                }
                st.many.push(s);
            }
            Ok(String::new())
        }
        // time_wait N: N loopback connections on 127.0.0.1 closed by the client first, so
        // that N client sockets enter TIME_WAIT in this namespace; reports the listener port.
        "time_wait" => {
            let l = new_socket(None)?;
            let any: SocketAddr = ([127, 0, 0, 1], 0).into();
            l.bind(&any.into()).map_err(|e| errno(&e))?;
            l.listen(128).map_err(|e| errno(&e))?;
            let la = l.local_addr().map_err(|e| e.to_string())?;
            for _ in 0..num(1)? {
                let c = new_socket(None)?;
                c.connect(&la).map_err(|e| errno(&e))?;
                let (srv, _) = l.accept().map_err(|e| errno(&e))?;
                drop(c);
                // Read the client's FIN before closing, so the server is the passive closer.
                let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                let _ = srv.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = srv.recv(&mut b);
                drop(srv);
            }
            let port = la.as_socket().map_or(0, |a| a.port());
            Ok(format!("port={port}"))
        }
        "accept" => {
            let l = st.listener.as_ref().ok_or("not listening")?;
            if !wait_readable(l, Duration::from_secs(10)) {
                return Err("no connection within 10 s".into());
            }
            let (s, _) = l.accept().map_err(|e| errno(&e))?;
            st.sock = Some(s);
            Ok(String::new())
        }
        "close_listener" => {
            st.listener = None;
            Ok(String::new())
        }
        // connect ADDR [FROM_PORT]: blocking; reports the time connect() took.
        "connect" => {
            let a = addr(w.get(1).ok_or("connect ADDR")?)?;
            let from = w
                .get(2)
                .map(|p| p.parse().map_err(|_| "bad port"))
                .transpose()?;
            let s = new_socket(from)?;
            let t = Instant::now();
            let r = s.connect(&a);
            let us = t.elapsed().as_micros();
            match r {
                Ok(()) => {
                    let port = s
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_socket())
                        .map_or(0, |a| a.port());
                    st.sock = Some(s);
                    Ok(format!("us={us} port={port}"))
                }
                Err(e) => Err(format!("{} us={us}", errno(&e))),
            }
        }
        // connect_nb ADDR FROM_PORT: starts a non-blocking connect.
        "connect_nb" => {
            let a = addr(w.get(1).ok_or("connect_nb ADDR PORT")?)?;
            let s = new_socket(Some(num(2)? as u16))?;
            s.set_nonblocking(true).map_err(|e| errno(&e))?;
            match s.connect(&a) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(errno(&e)),
            }
            st.sock = Some(s);
            Ok(String::new())
        }
        // wait_connected MS: until the non-blocking connect finished.
        "wait_connected" => {
            let ms = num(1)?;
            let s = sock(st)?;
            let mut pfd = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms as i32) };
            if n <= 0 {
                return Err("connect did not finish".into());
            }
            match s.take_error() {
                Ok(None) => {
                    s.set_nonblocking(false).map_err(|e| errno(&e))?;
                    Ok(String::new())
                }
                Ok(Some(e)) | Err(e) => Err(errno(&e)),
            }
        }
        "shutdown_wr" => {
            sock(st)?
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| errno(&e))?;
            Ok(String::new())
        }
        "linger0" => {
            sock(st)?
                .set_linger(Some(Duration::ZERO))
                .map_err(|e| errno(&e))?;
            Ok(String::new())
        }
        "close" => {
            st.sock = None;
            Ok(String::new())
        }
        // wait_eof: reads until the peer's FIN (end of stream).
        "wait_eof" => {
            read_to_eof(sock(st)?)?;
            Ok(String::new())
        }
        // hold_close MS: waits for the peer's FIN, holds the socket MS ms, then closes it;
        // reports how long it really held it (the ground truth of our CLOSE_WAIT dwell).
        "hold_close" => {
            let ms = num(1)?;
            read_to_eof(sock(st)?)?;
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(ms));
            st.sock = None;
            Ok(format!("held_us={}", t.elapsed().as_micros()))
        }
        "sleep" => {
            std::thread::sleep(Duration::from_millis(num(1)?));
            Ok(String::new())
        }
        // pin CPU: the thread that runs the commands runs on that CPU only (so do the
        // state changes its system calls make).
        "pin" => {
            let cpu = usize::try_from(num(1)?).map_err(|e| e.to_string())?;
            // SAFETY: a zeroed CPU set with one bit set, for the calling thread (0).
            let r = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            if r != 0 {
                return Err(errno(&std::io::Error::last_os_error()));
            }
            Ok(String::new())
        }
        // send N: writes exactly N bytes on the connection, in the background (more than
        // the socket buffers hold waits for the peer to read); `sent` waits for it to finish.
        "send" => {
            let s = sock(st)?.try_clone().map_err(|e| errno(&e))?;
            let buf = vec![b'x'; num(1)? as usize];
            st.sending = Some(std::thread::spawn(move || {
                (&s).write_all(&buf).map_err(|e| errno(&e))
            }));
            Ok(String::new())
        }
        "sent" => {
            let h = st.sending.take().ok_or("no send under way")?;
            h.join()
                .map_err(|_| "the send thread panicked".to_owned())??;
            Ok(String::new())
        }
        // recv N: reads exactly N bytes (10 s at most per read).
        "recv" => {
            let s = sock(st)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| errno(&e))?;
            let mut buf = vec![0u8; num(1)? as usize];
            s.read_exact(&mut buf).map_err(|e| errno(&e))?;
            Ok(String::new())
        }
        // tcp_state: the socket's state as TCP_INFO reports it (kernel state number).
        "tcp_state" => {
            let s = sock(st)?;
            let mut info = [0u8; 256];
            let mut len = info.len() as libc::socklen_t;
            // SAFETY: a valid buffer and length for getsockopt(TCP_INFO).
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    info.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(errno(&std::io::Error::last_os_error()));
            }
            Ok(format!("state={}", info[0]))
        }
        // nfq QUEUE DELAY_MS COUNT: holds the first COUNT packets of the queue DELAY_MS each
        // and accepts every later one at once.
        "nfq" => {
            let (q, delay, count) = (num(1)? as u16, num(2)?, num(3)?);
            let mut queue = nfq::Queue::open().map_err(|e| errno(&e))?;
            queue.bind(q).map_err(|e| errno(&e))?;
            queue.set_nonblocking(true);
            let held = Arc::clone(&st.held_us);
            std::thread::spawn(move || {
                let mut n = 0;
                // Poll without sleeping: a blocked reader can wake milliseconds late on a busy
                // machine, and that lateness would be an unmeasured part of the delay.
                loop {
                    let mut msg = match queue.recv() {
                        Ok(m) => m,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::hint::spin_loop();
                            continue;
                        }
                        Err(_) => break,
                    };
                    if n < count {
                        // Not the kernel's arrival stamp: nfq 0.2.5's get_timestamp() reads it
                        // through a misaligned pointer (a panic in debug builds).
                        let start = Instant::now();
                        let elapsed = || start.elapsed();
                        while elapsed() < Duration::from_millis(delay) {
                            std::hint::spin_loop();
                        }
                        // Record before the verdict: the connect may return right after it.
                        if let Ok(mut h) = held.lock() {
                            h.push(elapsed().as_micros() as u64);
                        }
                        msg.set_verdict(nfq::Verdict::Accept);
                        let _ = queue.verdict(msg);
                        n += 1;
                    } else {
                        msg.set_verdict(nfq::Verdict::Accept);
                        let _ = queue.verdict(msg);
                    }
                }
            });
            Ok(String::new())
        }
        "nfq_held" => {
            let h = st.held_us.lock().map_err(|_| "poisoned")?;
            Ok(h.iter()
                .map(|v| format!("held_us={v}"))
                .collect::<Vec<_>>()
                .join(" "))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// The peer's main loop (called by the `lab_peer` test when `LAB_PEER` is set).
pub fn peer_main() -> ! {
    let mut st = PeerState {
        listener: None,
        sock: None,
        many: Vec::new(),
        held_us: Arc::default(),
        sending: None,
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "quit" {
            break;
        }
        let reply = match peer_command(&mut st, &line) {
            Ok(r) => format!("LAB ok {r}"),
            Err(e) => format!("LAB err {e}"),
        };
        let _ = writeln!(out, "{reply}");
        let _ = out.flush();
    }
    std::process::exit(0)
}
