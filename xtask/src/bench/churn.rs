//! The benchmark's load: loopback connection churn, each run in a fresh network namespace.
//!
//! A run unshares a network namespace on a thread of its own (the rest of the process, and
//! so the tracer it starts, stays in the host namespace), brings its loopback up, and churns
//! there: several listening ports, one accept thread per port, client threads that connect,
//! send 4 bytes, read the 4-byte reply and close. A fresh namespace starts with no TIME_WAIT
//! sockets, so runs do not inherit each other's port pressure, and the listening ports are
//! fixed (nothing else binds in that namespace). Close order alternates per connection: even
//! connections close server first (the server closes after replying, the client after reading
//! the end of stream), odd ones client first (the client closes after the reply, the server
//! after the end of stream), so both teardown paths are traced in every run.
//! Bounded: every client stops at the deadline and every socket has a timeout.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Socket timeouts inside the churn, so a lost reply cannot hang the run.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The first listening port inside the namespace (nothing else binds there).
const FIRST_PORT: u16 = 7001;

/// Which end closes first.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseOrder {
    /// The server closes after replying; the client holds no TIME_WAIT.
    Server,
    /// The client closes after reading the reply; the client holds TIME_WAIT.
    Client,
    /// Even connections server first, odd ones client first.
    Alternate,
}

impl CloseOrder {
    pub fn describe(self) -> &'static str {
        match self {
            CloseOrder::Server => "server closes first",
            CloseOrder::Client => "client closes first",
            CloseOrder::Alternate => {
                "close order alternating per connection (server first, client first)"
            }
        }
    }

    fn server_first(self, n: u64) -> bool {
        match self {
            CloseOrder::Server => true,
            CloseOrder::Client => false,
            CloseOrder::Alternate => n.is_multiple_of(2),
        }
    }
}

/// The shape of the load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub threads: usize,
    pub ports: u16,
    pub close: CloseOrder,
}

/// The churn ports of a load (the same in every namespace).
pub fn ports(load: &Load) -> Vec<u16> {
    (0..load.ports).map(|i| FIRST_PORT + i).collect()
}

/// The churn ports as a tcptrace `--port` list.
pub fn port_filter(load: &Load) -> String {
    format!("{}-{}", FIRST_PORT, FIRST_PORT + load.ports.max(1) - 1)
}

/// What one churn run achieved.
#[derive(Clone, Copy, Debug)]
pub struct Churn {
    pub connections: u64,
    pub errors: u64,
    pub secs: f64,
}

impl Churn {
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.secs
    }
}

const SERVER_FIRST: &[u8; 4] = b"srv1";
const CLIENT_FIRST: &[u8; 4] = b"cli1";
const STOP: &[u8; 4] = b"stop";

/// Reads until the peer's FIN (or the timeout): the end of stream a closing order waits for.
fn read_eof(s: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 16];
    loop {
        if s.read(&mut buf)? == 0 {
            return Ok(());
        }
    }
}

/// Serves one connection; `Ok(false)` when it was the stop request.
fn serve_one(listener: &TcpListener) -> std::io::Result<bool> {
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    if &buf == STOP {
        return Ok(false);
    }
    s.write_all(&buf)?;
    if &buf == CLIENT_FIRST {
        read_eof(&mut s)?;
    }
    Ok(true)
}

fn client_one(addr: SocketAddr, server_first: bool) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(if server_first {
        SERVER_FIRST
    } else {
        CLIENT_FIRST
    })?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    if server_first {
        read_eof(&mut s)?;
    }
    Ok(())
}

/// Brings the loopback interface of the calling thread's network namespace up.
fn loopback_up() -> Result<()> {
    // SAFETY: a plain socket() call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket(): {}", std::io::Error::last_os_error());
    }
    // SAFETY: an all-zero ifreq is valid; the name is NUL-terminated ("lo" + zeros).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_name[0] = b'l' as libc::c_char;
    ifr.ifr_name[1] = b'o' as libc::c_char;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own; the union member
    // used is the flags, as those requests define.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            -1
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    if rc < 0 {
        bail!("bringing lo up in the new network namespace: {err}");
    }
    Ok(())
}

/// Moves the calling thread into a fresh network namespace with loopback up. Threads and
/// processes it starts afterwards inherit the namespace; the rest of the process keeps the
/// host's. The namespace goes away with its last socket and thread.
pub fn enter_fresh_netns() -> Result<()> {
    // SAFETY: unshare with a namespace flag affects only the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET): {} (the benchmark needs root)",
            std::io::Error::last_os_error()
        );
    }
    loopback_up()
}

/// Runs `f` on a new thread inside a fresh network namespace and returns its result.
pub fn in_fresh_netns<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    thread::spawn(move || {
        enter_fresh_netns()?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?
}

/// Churn for `duration` in a fresh network namespace (see the module doc).
pub fn churn(duration: Duration, load: Load) -> Result<Churn> {
    in_fresh_netns(move || churn_here(duration, load))
}

/// Churn in the calling thread's network namespace.
fn churn_here(duration: Duration, load: Load) -> Result<Churn> {
    let mut listeners = Vec::new();
    for port in ports(&load) {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("binding the churn server to 127.0.0.1:{port}"))?;
        listeners.push(l);
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut errors = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match serve_one(&listener) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(_) => errors += 1,
                    }
                }
                errors
            })
        })
        .collect();
    let connections = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let clients: Vec<_> = (0..load.threads.max(1))
        .map(|t| {
            let connections = Arc::clone(&connections);
            let errors = Arc::clone(&errors);
            let addr = addrs[t % addrs.len()];
            let close = load.close;
            thread::spawn(move || {
                let (mut ok, mut bad) = (0u64, 0u64);
                let mut n = t as u64;
                while Instant::now() < deadline {
                    match client_one(addr, close.server_first(n)) {
                        Ok(()) => ok += 1,
                        Err(_) => {
                            bad += 1;
                            // E.g. EADDRNOTAVAIL when ephemeral ports run out: back off.
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    n += 1;
                }
                connections.fetch_add(ok, Ordering::Relaxed);
                errors.fetch_add(bad, Ordering::Relaxed);
            })
        })
        .collect();
    for c in clients {
        c.join()
            .map_err(|_| anyhow::anyhow!("a churn client panicked"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // Wake each server from accept() with a stop request.
    for addr in &addrs {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.write_all(STOP);
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.read(&mut [0u8; 4]);
        }
    }
    let mut server_errors = 0;
    for s in servers {
        server_errors += s
            .join()
            .map_err(|_| anyhow::anyhow!("a churn server panicked"))?;
    }
    Ok(Churn {
        connections: connections.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed) + server_errors,
        secs,
    })
}

/// `cargo xtask bench-churn` (hidden): the load generator alone, e.g. to profile a tracer
/// started by hand.
#[derive(clap::Args, Debug)]
pub struct ChurnArgs {
    /// Seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Listening ports (7001 up) in the fresh network namespace.
    #[arg(long, default_value_t = 4)]
    pub ports: u16,
    /// Which end closes first.
    #[arg(long, value_enum, default_value_t = CloseOrder::Alternate)]
    pub close: CloseOrder,
}

pub fn churn_main(args: &ChurnArgs) -> Result<()> {
    let c = churn(
        Duration::from_secs_f64(args.secs),
        Load {
            threads: args.threads,
            ports: args.ports,
            close: args.close,
        },
    )?;
    println!(
        "{} connections in {:.2}s: {:.0} connections/s ({} errors; fresh network namespace, \
         {} ports, {} threads, {})",
        c.connections,
        c.secs,
        c.rate(),
        c.errors,
        args.ports,
        args.threads,
        args.close.describe()
    );
    Ok(())
}
