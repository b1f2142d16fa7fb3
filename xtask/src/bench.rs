//! `cargo xtask bench`: what tracing costs the traced machine, as the share of untraced
//! throughput a traced load keeps and the tracer's CPU time per million transitions.
//!
//! A loopback churn load (connect, 4 bytes each way, close; two client threads) runs for a
//! fixed time untraced, then beside each tracer configuration, then untraced again, so drift
//! shows. For every run it reports connections/s and the ratio to the untraced rate, the
//! tracer's CPU seconds per million transitions (from /proc while the load runs, so loading
//! the program is not counted), lost events and peak RSS. libbpf-tools `tcpstates` runs in
//! the same invocation as the yardstick. Targets are reported as PASS/MISS, never asserted:
//! a benchmark on a shared 2-core machine is noisy and must not fail a build.
//!
//! A second section times `tcptrace report` on a synthetic 1,000,000-transition recording, in
//! the binary format and in JSON Lines (compressed and plain), and what writing each cost.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// How long a tracer may take to load and attach.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a tracer may take to exit after SIGINT (it drains and writes its summary).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Socket timeouts inside the churn, so a lost reply cannot hang the run.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between runs, so one run's tail (TIME_WAIT hand-overs, tracer exit) settles.
const SETTLE: Duration = Duration::from_secs(1);

/// Target: aggregate-only tracing (`--per none`) keeps at least this share of the untraced
/// rate, with zero lost events.
const TARGET_AGGREGATE_RATIO: f64 = 0.95;
/// Target: aggregate-only tracing costs at most this many tracer CPU-seconds per million
/// transitions.
const TARGET_AGGREGATE_CPU_PER_M: f64 = 0.3;
/// Target: streaming text to a file keeps at least this share of the untraced rate.
const TARGET_TEXT_RATIO: f64 = 0.85;
/// `tcptrace record` in the binary format keeps at least this share of the untraced rate.
const TARGET_RECORD_RATIO: f64 = 0.90;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds of churn per configuration.
    #[arg(long, default_value_t = 8.0)]
    pub secs: f64,
    /// Rounds over all configurations (an untraced run before each traced run and one at
    /// the end: every traced run is compared with the untraced runs either side of it).
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Client threads of the churn.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Only these configurations (comma-separated); the baseline always runs.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Config>,
    /// Use this tcptrace binary instead of building it (`cargo build --release -p tcptrace`).
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Transitions in the recording `tcptrace report` is timed on; 0 skips that section.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub report_transitions: u64,
    /// Keep the output files (streams, summaries, recording, charts) and print where.
    #[arg(long)]
    pub keep: bool,
}

/// `cargo xtask bench-churn` (hidden): the load generator alone, e.g. to profile a tracer
/// started by hand.
#[derive(clap::Args, Debug)]
pub struct ChurnArgs {
    /// Seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// A traced (or untraced) configuration.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// No tracer.
    Baseline,
    /// `tcptrace watch --per none`: aggregates only.
    None,
    /// `tcptrace top`: the dashboard, drawing into a 160x48 pseudo-terminal once a second.
    Top,
    /// `tcptrace serve`: Prometheus metrics, scraped once a second.
    Serve,
    /// `tcptrace watch`: text line per transition, to a file.
    Text,
    /// `tcptrace watch --format json`, to a file.
    Json,
    /// `tcptrace record -o FILE.tcpt`: the binary recording.
    Record,
    /// `tcptrace record -o FILE.jsonl.zst`: the JSON Lines recording.
    RecordJsonl,
    /// libbpf-tools `tcpstates` > /dev/null (transitions estimated, see the notes).
    Tcpstates,
    /// libbpf-tools `tcpstates` > a file (transitions counted as output lines).
    TcpstatesFile,
}

impl Config {
    const TRACED: [Config; 9] = [
        Config::None,
        Config::Top,
        Config::Serve,
        Config::Text,
        Config::Json,
        Config::Record,
        Config::RecordJsonl,
        Config::Tcpstates,
        Config::TcpstatesFile,
    ];

    fn label(self) -> &'static str {
        match self {
            Config::Baseline => "untraced baseline",
            Config::None => "tcptrace --per none",
            Config::Top => "tcptrace top (160x48)",
            Config::Serve => "tcptrace serve (1 scrape/s)",
            Config::Text => "tcptrace text > file",
            Config::Json => "tcptrace json > file",
            Config::Record => "tcptrace record .tcpt",
            Config::RecordJsonl => "tcptrace record .jsonl.zst",
            Config::Tcpstates => "tcpstates > /dev/null",
            Config::TcpstatesFile => "tcpstates > file",
        }
    }

    fn is_tcpstates(self) -> bool {
        matches!(self, Config::Tcpstates | Config::TcpstatesFile)
    }
}

// ---------------------------------------------------------------------------------------
// The load generator.

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

fn serve_one(listener: &TcpListener) -> std::io::Result<()> {
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    s.write_all(&buf)?;
    Ok(())
}

fn client_one(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    Ok(())
}

/// Loopback connection churn for `duration`: a server on 127.0.0.1 (one thread: accept,
/// read 4 bytes, write them back, close) and `threads` clients (connect, write 4 bytes, read
/// the 4-byte reply, close), as fast as they go. Bounded: every client stops at the
/// deadline, every socket has a timeout.
pub fn churn(duration: Duration, threads: usize) -> Result<Churn> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the churn server")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if serve_one(&listener).is_err() {
                    errors += 1;
                }
            }
            errors
        })
    };
    let connections = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let clients: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let connections = Arc::clone(&connections);
            let errors = Arc::clone(&errors);
            thread::spawn(move || {
                let (mut ok, mut bad) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match client_one(addr) {
                        Ok(()) => ok += 1,
                        Err(_) => {
                            bad += 1;
                            // E.g. EADDRNOTAVAIL when ephemeral ports run out: back off.
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
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
    // Wake the server from accept(); it sees the flag after serving this one.
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.write_all(b"stop");
        let _ = s.shutdown(Shutdown::Write);
        let _ = s.read(&mut [0u8; 4]);
    }
    let server_errors = server
        .join()
        .map_err(|_| anyhow::anyhow!("the churn server panicked"))?;
    Ok(Churn {
        connections: connections.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed) + server_errors,
        secs,
    })
}

pub fn churn_main(args: &ChurnArgs) -> Result<()> {
    let c = churn(Duration::from_secs_f64(args.secs), args.threads)?;
    println!(
        "{} connections in {:.2}s: {:.0} connections/s ({} errors)",
        c.connections,
        c.secs,
        c.rate(),
        c.errors
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Process accounting.

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads), in seconds, from /proc/PID/stat.
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    // After ')': state(3) ppid(4) ... utime(14) stime(15): indexes 11 and 12 here.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .context("malformed /proc/PID/stat")
    };
    Ok((num(11)? + num(12)?) / clock_ticks())
}

/// A `kB` field of /proc/PID/status (VmHWM, VmRSS), in bytes.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb = line[field.len()..]
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// How a child ended, with its resource usage (wait4).
struct Exit {
    status: i32,
    cpu_secs: f64,
    max_rss_bytes: u64,
    killed: bool,
}

impl Exit {
    fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
    fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Reaps `child` with wait4 (polling, bounded by `timeout`; SIGKILL after it). `child` must
/// not be waited on again.
fn wait_rusage(child: &Child, timeout: Duration) -> Result<Exit> {
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            return Ok(Exit {
                status,
                cpu_secs: tv_secs(ru.ru_utime) + tv_secs(ru.ru_stime),
                max_rss_bytes: ru.ru_maxrss.max(0) as u64 * 1024,
                killed,
            });
        }
        if r < 0 {
            bail!("wait4({pid}): {}", std::io::Error::last_os_error());
        }
        if !killed && Instant::now() > deadline {
            // SAFETY: kill on our own, not yet reaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Collects a child's stderr lines on a thread.
fn collect_lines(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&lines);
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut v) = out.lock() {
                v.push(line);
            }
        }
    });
    lines
}

fn snapshot(lines: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    lines.lock().map(|v| v.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Tracers.

/// A running tracer.
struct Tracer {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    cpu_at_ready: f64,
}

/// What a tracer's run measured.
#[derive(Clone, Debug, Default)]
struct TracerStats {
    /// CPU while the churn ran (ready -> just before SIGINT).
    cpu_secs: f64,
    /// CPU over the whole life, loading included (wait4).
    total_cpu_secs: f64,
    transitions: Option<u64>,
    lost: Option<u64>,
    peak_rss_bytes: Option<u64>,
    output_bytes: Option<u64>,
    note: Option<String>,
}

fn has_fd_link(pid: u32, needle: &str) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains(needle)))
}

impl Tracer {
    /// Starts `cmd` (its stdin and stdout set by the caller) and waits until it traces: a stderr line containing `ready_line`, or
    /// (for tools that say nothing) an open perf-event fd, which libbpf opens after attach.
    fn start(mut cmd: Command, ready_line: Option<&str>) -> Result<Self> {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let err = child.stderr.take().context("tracer stderr")?;
        let stderr = collect_lines(err);
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{cmd:?} exited before it was ready ({status}); stderr:\n{}",
                    snapshot(&stderr).join("\n")
                );
            }
            let ready = match ready_line {
                Some(l) => snapshot(&stderr).iter().any(|s| s.contains(l)),
                None => has_fd_link(pid, "perf_event"),
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{cmd:?} was not ready within {START_TIMEOUT:?}; stderr:\n{}",
                    snapshot(&stderr).join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Let the ring/perf buffer consumer settle into its loop.
        thread::sleep(Duration::from_millis(300));
        let cpu_at_ready = proc_cpu_secs(pid)?;
        Ok(Self {
            child,
            stderr,
            cpu_at_ready,
        })
    }

    /// Reads CPU and peak RSS, then SIGINT and wait for the exit.
    fn stop(self) -> Result<(TracerStats, Vec<String>, Exit)> {
        let pid = self.child.id();
        let cpu_secs = proc_cpu_secs(pid)? - self.cpu_at_ready;
        let peak_rss_bytes = proc_status_kb(pid, "VmHWM");
        // SAFETY: kill on our own, not yet reaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        let exit = wait_rusage(&self.child, STOP_TIMEOUT)?;
        // The stderr reader ends at EOF; give it a moment.
        thread::sleep(Duration::from_millis(100));
        let stderr = snapshot(&self.stderr);
        Ok((
            TracerStats {
                cpu_secs,
                total_cpu_secs: exit.cpu_secs,
                peak_rss_bytes,
                ..TracerStats::default()
            },
            stderr,
            exit,
        ))
    }
}

/// Everything a run needs to know.
struct Env {
    bin: PathBuf,
    tcpstates: std::result::Result<PathBuf, String>,
    dir: PathBuf,
    duration: Duration,
    threads: usize,
}

fn json_u64(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key).and_then(serde_json::Value::as_u64)
}

/// Runs the churn beside `config`'s tracer and measures both.
fn run_one(env: &Env, config: Config, run: usize) -> Result<Row> {
    let load = load_avg();
    if config == Config::Baseline {
        let c = churn(env.duration, env.threads)?;
        return Ok(Row {
            config,
            churn: c,
            tracer: None,
            load,
        });
    }
    let tag = format!("{run:02}-{config:?}").to_lowercase();
    let out_path = env.dir.join(match config {
        Config::Record => format!("{tag}.tcpt"),
        Config::RecordJsonl => format!("{tag}.jsonl.zst"),
        _ => format!("{tag}.out"),
    });
    let summary_path = env.dir.join(format!("{tag}.summary.json"));
    let (mut cmd, ready) = if config.is_tcpstates() {
        let path = env.tcpstates.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        (Command::new(path), None)
    } else {
        let mut cmd = Command::new(&env.bin);
        match config {
            Config::Record | Config::RecordJsonl => {
                cmd.arg("record").arg("-o").arg(&out_path);
            }
            Config::Top => {
                cmd.arg("top");
            }
            Config::Serve => {
                cmd.arg("serve");
            }
            _ => {
                cmd.arg("watch");
            }
        }
        cmd.arg("--summary-json").arg(&summary_path);
        match config {
            Config::None => {
                cmd.args(["--per", "none"]);
            }
            Config::Json => {
                cmd.args(["--format", "json"]);
            }
            Config::Serve => {
                cmd.args(["--listen", "127.0.0.1:0"]);
            }
            _ => {}
        }
        (cmd, Some("tracing TCP state transitions"))
    };
    if config == Config::Top {
        // The dashboard needs a terminal: stdin and stdout are a pseudo-terminal's slave side.
        let slave = pty(160, 48)?;
        cmd.stdin(slave.try_clone().context("pty")?);
        cmd.stdout(slave);
        // crossterm opens /dev/tty: the pty must be the child's controlling terminal.
        // SAFETY: setsid and ioctl are async-signal-safe; they run in the child between fork
        // and exec, on its own stdin (the pty slave set above).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    } else {
        cmd.stdin(Stdio::null());
        cmd.stdout(stdout_for(config, &out_path)?);
    }
    let tracer = Tracer::start(cmd, ready)?;
    let scraper = (config == Config::Serve)
        .then(|| Scraper::start(&snapshot(&tracer.stderr)))
        .transpose()?;
    let churn_result = churn(env.duration, env.threads);
    // Let the tail of the churn (softirq work, TIME_WAIT hand-overs) reach the tracer.
    thread::sleep(Duration::from_millis(300));
    let scrapes = scraper.map(Scraper::stop);
    let (mut stats, stderr, exit) = tracer.stop()?;
    let c = churn_result?;
    if let Some((n, failed)) = scrapes
        && failed > 0
    {
        stats.note = Some(format!("{failed} of {n} scrapes failed"));
    }
    if exit.killed {
        stats.note = Some(format!(
            "did not exit within {STOP_TIMEOUT:?} of SIGINT: killed"
        ));
    }
    stats.output_bytes = fs::metadata(&out_path).ok().map(|m| m.len());
    if config.is_tcpstates() {
        // libbpf-tools print "lost N events on CPU #C" for perf-buffer losses.
        let lost: u64 = stderr
            .iter()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("lost ")?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum();
        stats.lost = Some(lost);
        if config == Config::TcpstatesFile {
            let f = fs::File::open(&out_path).context("tcpstates output")?;
            let lines = BufReader::new(f).lines().count() as u64;
            // The first line is the header.
            stats.transitions = Some(lines.saturating_sub(1));
        }
        if !exit.success() && !exit.killed {
            stats.note = Some(format!(
                "tcpstates ended with {}: {}",
                exit.describe(),
                stderr.join(" | ")
            ));
        }
    } else {
        match fs::read_to_string(&summary_path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        {
            Some(v) => {
                stats.transitions = json_u64(&v, "transitions");
                stats.lost = json_u64(&v, "lost");
            }
            None => {
                stats.note = Some(format!(
                    "no summary JSON ({}); stderr: {}",
                    exit.describe(),
                    stderr.join(" | ")
                ));
            }
        }
    }
    Ok(Row {
        config,
        churn: c,
        tracer: Some(stats),
        load,
    })
}

/// A pseudo-terminal of `cols` x `rows`; returns its slave side. A thread drains the master
/// side until the slave closes, so a drawing tracer never blocks on a full terminal.
fn pty(cols: u16, rows: u16) -> Result<fs::File> {
    use std::os::fd::FromRawFd as _;
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the integers we own; name and termios may be null;
    // the winsize lives for the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        bail!("openpty failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened by openpty and are owned by nothing else.
    let (mut master, slave) =
        unsafe { (fs::File::from_raw_fd(master), fs::File::from_raw_fd(slave)) };
    thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while matches!(master.read(&mut buf), Ok(n) if n > 0) {}
    });
    Ok(slave)
}

/// Scrapes `tcptrace serve`'s /metrics once a second on a thread, as Prometheus would.
struct Scraper {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, u64)>,
}

impl Scraper {
    /// Finds the address in serve's "serving http://ADDR/metrics" line.
    fn start(stderr: &[String]) -> Result<Self> {
        let addr: SocketAddr = stderr
            .iter()
            .find_map(|l| {
                let rest = l.split("serving http://").nth(1)?;
                rest.split('/').next()?.parse().ok()
            })
            .context("serve did not say where it listens")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let (mut n, mut failed) = (0u64, 0u64);
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .and_then(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(5)))?;
                        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
                        let mut body = Vec::new();
                        c.read_to_end(&mut body)?;
                        Ok(body.starts_with(b"HTTP/1.0 200") || body.starts_with(b"HTTP/1.1 200"))
                    })
                    .unwrap_or(false);
                failed += u64::from(!ok);
                for _ in 0..10 {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
            (n, failed)
        });
        Ok(Self { stop, handle })
    }

    /// Stops scraping; returns (scrapes, failed).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or((0, 0))
    }
}

/// The tracer's stdout: /dev/null, or a file in the bench directory.
fn stdout_for(config: Config, out_path: &Path) -> Result<Stdio> {
    if matches!(
        config,
        Config::None | Config::Serve | Config::Tcpstates | Config::Record | Config::RecordJsonl
    ) {
        return Ok(Stdio::null());
    }
    let f =
        fs::File::create(out_path).with_context(|| format!("creating {}", out_path.display()))?;
    Ok(Stdio::from(f))
}

fn load_avg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// One measured run.
struct Row {
    config: Config,
    churn: Churn,
    tracer: Option<TracerStats>,
    /// 1-minute load average when the run started (others' work on the machine).
    load: String,
}

fn find_tcpstates() -> std::result::Result<PathBuf, String> {
    for p in ["/usr/sbin/tcpstates", "/usr/bin/tcpstates"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(
        "tcpstates not found (/usr/sbin/tcpstates): install the Debian package libbpf-tools \
         (`sudo cargo xtask setup --test-packages`)"
            .to_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// Report throughput.

fn report_section(bin: &Path, dir: &Path, transitions: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nreport throughput (tcptrace report on a synthetic recording)"
    );
    if transitions == 0 {
        let _ = writeln!(s, "  skipped: --report-transitions 0");
        return s;
    }
    match report_bench(bin, dir, transitions) {
        Ok(text) => s.push_str(&text),
        Err(e) => {
            let _ = writeln!(s, "  skipped: {e:#}");
        }
    }
    s
}

fn report_bench(bin: &Path, dir: &Path, transitions: u64) -> Result<String> {
    let probe = Command::new(bin)
        .args(["generate-recording", "--help"])
        .output()
        .context("running tcptrace generate-recording --help")?;
    if !probe.status.success() {
        let why = String::from_utf8_lossy(&probe.stderr);
        bail!(
            "this tcptrace has no `generate-recording` subcommand yet ({})",
            why.lines().next().unwrap_or("no message").trim()
        );
    }
    let mut s = String::new();
    let mut binary_rate = None;
    // The binary format (`record`'s default) first, then JSON Lines as `record` wrote it
    // before, compressed and plain: the same events, so the rates compare the readers.
    for (label, name) in [
        ("binary", "bench-recording.tcpt"),
        ("JSON Lines, zstd", "bench-recording.jsonl.zst"),
        ("JSON Lines", "bench-recording.jsonl"),
    ] {
        let recording = dir.join(name);
        let rate = report_one(bin, dir, &recording, label, transitions, &mut s)?;
        if binary_rate.is_none() {
            binary_rate = Some(rate);
        }
    }
    if let Some(rate) = binary_rate {
        let _ = writeln!(
            s,
            "  target: report of a binary recording >= 3,000,000 transitions/s: {} ({:.2} M/s)",
            pass(rate >= 3e6),
            rate / 1e6
        );
    }
    Ok(s)
}

/// Generates `recording` (its name picks the format), then times `report --svg` on it;
/// appends both lines to `s` and returns the report's transitions per wall second.
fn report_one(
    bin: &Path,
    dir: &Path,
    recording: &Path,
    label: &str,
    transitions: u64,
    s: &mut String,
) -> Result<f64> {
    let t = Instant::now();
    let gen_child = Command::new(bin)
        .args(["generate-recording", "--transitions"])
        .arg(transitions.to_string())
        .arg("-o")
        .arg(recording)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running generate-recording")?;
    let gen_exit = wait_rusage(&gen_child, Duration::from_secs(600))?;
    if !gen_exit.success() {
        bail!(
            "generate-recording -o {} failed ({})",
            recording.display(),
            gen_exit.describe()
        );
    }
    let size = fs::metadata(recording).map(|m| m.len()).unwrap_or(0);
    let _ = writeln!(
        s,
        "  {label}: generate-recording --transitions {transitions}: {:.2}s wall, {:.2} CPU-s \
         (generator + writer), {:.1} MiB",
        t.elapsed().as_secs_f64(),
        gen_exit.cpu_secs,
        size as f64 / 1048576.0
    );

    let svg = dir.join("bench-report-svg");
    let t = Instant::now();
    let child = Command::new(bin)
        .arg("report")
        .arg(recording)
        .arg("--svg")
        .arg(&svg)
        .args(["--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tcptrace report")?;
    // Read stdout/stderr concurrently so a full pipe cannot block the child.
    let mut child = child;
    let mut out_pipe = child.stdout.take().context("report stdout")?;
    let err_lines = collect_lines(child.stderr.take().context("report stderr")?);
    let reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let exit = wait_rusage(&child, Duration::from_secs(600))?;
    let secs = t.elapsed().as_secs_f64();
    let stdout = reader.join().unwrap_or_default();
    thread::sleep(Duration::from_millis(50));
    if !exit.success() {
        bail!(
            "tcptrace report failed ({}): {}",
            exit.describe(),
            snapshot(&err_lines).join(" | ")
        );
    }
    // The report's own count, when its JSON says it.
    let counted = serde_json::from_slice::<serde_json::Value>(&stdout)
        .ok()
        .and_then(|v| json_u64(&v, "transitions"));
    let n = counted.unwrap_or(transitions);
    let charts = fs::read_dir(&svg)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
                .count()
        })
        .unwrap_or(0);
    let rate = n as f64 / secs;
    let _ = writeln!(
        s,
        "  {label}: report --svg --format json: {n} transitions{} in {secs:.2}s wall, {:.2} \
         CPU-s: {rate:.0} transitions/s ({:.0} per CPU-s; decode, track, aggregate, {charts} \
         charts); peak RSS {:.1} MiB",
        if counted.is_some() {
            " (as the report counted)"
        } else {
            " (asked for; the report's JSON had no count)"
        },
        exit.cpu_secs,
        n as f64 / exit.cpu_secs.max(1e-9),
        exit.max_rss_bytes as f64 / 1048576.0
    );
    Ok(rate)
}

// ---------------------------------------------------------------------------------------
// The table.

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// Per-configuration figures, averaged over its runs.
struct Agg {
    rate: f64,
    ratio: f64,
    transitions_per_s: Option<f64>,
    cpu_per_m: Option<f64>,
    lost: Option<u64>,
}

fn aggregate(rows: &[&Row], baseline: f64, tr_per_conn: Option<f64>) -> Agg {
    let rate = mean(&rows.iter().map(|r| r.churn.rate()).collect::<Vec<_>>());
    let mut trans = 0u64;
    let mut secs = 0.0;
    let mut cpu = 0.0;
    let mut have_trans = true;
    let mut lost: Option<u64> = Some(0);
    for r in rows {
        let Some(t) = &r.tracer else { continue };
        let n = t
            .transitions
            .or_else(|| tr_per_conn.map(|k| (k * r.churn.connections as f64).round() as u64));
        match n {
            Some(n) => trans += n,
            None => have_trans = false,
        }
        secs += r.churn.secs;
        cpu += t.cpu_secs;
        lost = match (lost, t.lost) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    Agg {
        rate,
        ratio: if baseline > 0.0 { rate / baseline } else { 0.0 },
        transitions_per_s: (have_trans && secs > 0.0).then(|| trans as f64 / secs),
        cpu_per_m: (have_trans && trans > 0).then(|| cpu / (trans as f64 / 1e6)),
        lost,
    }
}

/// Each run's rate over the untraced rate around it: for a traced run the mean of the
/// baselines just before and just after it (the machine drifts: others' builds, TIME_WAIT
/// build-up), for a baseline run the mean of all baselines.
fn ratios(rows: &[Row]) -> Vec<f64> {
    let all = mean(
        &rows
            .iter()
            .filter(|r| r.config == Config::Baseline)
            .map(|r| r.churn.rate())
            .collect::<Vec<_>>(),
    );
    let is_base = |r: &&Row| r.config == Config::Baseline;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let base = if r.config == Config::Baseline {
                all
            } else {
                let around: Vec<f64> = rows[..i]
                    .iter()
                    .rev()
                    .find(is_base)
                    .into_iter()
                    .chain(rows[i + 1..].iter().find(is_base))
                    .map(|b| b.churn.rate())
                    .collect();
                if around.is_empty() {
                    all
                } else {
                    mean(&around)
                }
            };
            if base > 0.0 {
                r.churn.rate() / base
            } else {
                0.0
            }
        })
        .collect()
}

fn table(rows: &[Row], args: &Args, env: &Env) -> String {
    let mut s = String::new();
    let run_ratios = ratios(rows);
    let baselines: Vec<f64> = rows
        .iter()
        .filter(|r| r.config == Config::Baseline)
        .map(|r| r.churn.rate())
        .collect();
    let base = mean(&baselines);
    let (lo, hi) = baselines
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));

    // Transitions per connection as tcptrace counted them: the estimate for tcpstates
    // writing to /dev/null, whose lines nobody counts.
    let per_conn: Vec<f64> = rows
        .iter()
        .filter(|r| !r.config.is_tcpstates() && r.config != Config::Baseline)
        .filter_map(|r| {
            let t = r.tracer.as_ref()?.transitions? as f64;
            (r.churn.connections > 0).then(|| t / r.churn.connections as f64)
        })
        .collect();
    let tr_per_conn = (!per_conn.is_empty()).then(|| mean(&per_conn));

    let _ = writeln!(
        s,
        "\ncargo xtask bench: loopback churn (connect, 4 bytes each way, close), {} client \
         thread(s), {:.0}s per run, {} round(s); outputs in {}",
        args.threads,
        args.secs,
        args.rounds,
        env.dir.display()
    );
    let _ = writeln!(
        s,
        "\nruns in order (ratio: to the mean of the untraced runs just before and after; load: \
         1-min load average at the start, where others' work on the machine shows)"
    );
    let _ = writeln!(
        s,
        "  {:>3}  {:<22} {:>9} {:>6} {:>10} {:>8} {:>9} {:>10} {:>7} {:>8} {:>9}  notes",
        "#",
        "configuration",
        "conn/s",
        "ratio",
        "transit.",
        "CPU-s",
        "CPU-s/M",
        "lost",
        "RSS MiB",
        "out MiB",
        "load"
    );
    for (i, r) in rows.iter().enumerate() {
        let rate = r.churn.rate();
        let mut line = format!(
            "  {:>3}  {:<22} {:>9.0} {:>6.3}",
            i + 1,
            r.config.label(),
            rate,
            run_ratios[i]
        );
        let mut notes = Vec::new();
        if r.churn.errors > 0 {
            notes.push(format!("{} churn errors", r.churn.errors));
        }
        match &r.tracer {
            None => {
                let _ = write!(
                    line,
                    " {:>10} {:>8} {:>9} {:>10} {:>7} {:>8}",
                    "-", "-", "-", "-", "-", "-"
                );
            }
            Some(t) => {
                let (trans, est) = match t.transitions {
                    Some(n) => (Some(n), false),
                    None => (
                        tr_per_conn.map(|k| (k * r.churn.connections as f64).round() as u64),
                        true,
                    ),
                };
                let trans_s = match trans {
                    Some(n) if est => format!("~{n}"),
                    Some(n) => n.to_string(),
                    None => "?".to_owned(),
                };
                let per_m = trans
                    .filter(|&n| n > 0)
                    .map(|n| format!("{:.3}", t.cpu_secs / (n as f64 / 1e6)))
                    .unwrap_or_else(|| "?".to_owned());
                let _ = write!(
                    line,
                    " {:>10} {:>8.2} {:>9} {:>10} {:>7} {:>8}",
                    trans_s,
                    t.cpu_secs,
                    per_m,
                    t.lost.map_or("?".to_owned(), |l| l.to_string()),
                    t.peak_rss_bytes.map_or("?".to_owned(), mib),
                    t.output_bytes.map_or("-".to_owned(), mib),
                );
                if est {
                    notes.push("transitions estimated from tcptrace's per-connection count".into());
                }
                notes.push(format!("{:.2} CPU-s incl. start-up", t.total_cpu_secs));
                if let Some(n) = &t.note {
                    notes.push(n.clone());
                }
            }
        }
        let _ = writeln!(line, " {:>9}  {}", r.load, notes.join("; "));
        s.push_str(&line);
    }

    let _ = writeln!(
        s,
        "\nper configuration (means over runs; untraced runs averaged {base:.0}/s and ranged \
         {lo:.0}..{hi:.0}/s = {:.1}% drift)",
        if base > 0.0 {
            (hi - lo) / base * 100.0
        } else {
            0.0
        }
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>9} {:>6} {:>12} {:>9} {:>8}",
        "configuration", "conn/s", "ratio", "transit./s", "CPU-s/M", "lost"
    );
    let mut aggs = Vec::new();
    for config in std::iter::once(Config::Baseline).chain(Config::TRACED) {
        let rs: Vec<&Row> = rows.iter().filter(|r| r.config == config).collect();
        if rs.is_empty() {
            continue;
        }
        let mut a = aggregate(&rs, base, tr_per_conn);
        a.ratio = mean(
            &rows
                .iter()
                .zip(&run_ratios)
                .filter(|(r, _)| r.config == config)
                .map(|(_, q)| *q)
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            s,
            "  {:<22} {:>9.0} {:>6.3} {:>12} {:>9} {:>8}",
            config.label(),
            a.rate,
            a.ratio,
            a.transitions_per_s
                .map_or("-".to_owned(), |x| format!("{x:.0}")),
            a.cpu_per_m.map_or("-".to_owned(), |x| format!("{x:.3}")),
            if config == Config::Baseline {
                "-".to_owned()
            } else {
                a.lost.map_or("?".to_owned(), |l| l.to_string())
            }
        );
        aggs.push((config, a));
    }

    let _ = writeln!(s, "\ntargets (reported, not asserted)");
    let get = |c: Config| aggs.iter().find(|(k, _)| *k == c).map(|(_, a)| a);
    match get(Config::None) {
        Some(a) => {
            let _ = writeln!(
                s,
                "  {} aggregate-only (--per none) rate >= {:.0}% of untraced: {:.1}%",
                pass(a.ratio >= TARGET_AGGREGATE_RATIO),
                TARGET_AGGREGATE_RATIO * 100.0,
                a.ratio * 100.0
            );
            let _ = writeln!(
                s,
                "  {} aggregate-only zero lost events: {}",
                pass(a.lost == Some(0)),
                a.lost.map_or("unknown".to_owned(), |l| l.to_string())
            );
            let _ = writeln!(
                s,
                "  {} aggregate-only <= {TARGET_AGGREGATE_CPU_PER_M} CPU-s per million transitions: {}",
                pass(a.cpu_per_m.is_some_and(|x| x <= TARGET_AGGREGATE_CPU_PER_M)),
                a.cpu_per_m
                    .map_or("unknown".to_owned(), |x| format!("{x:.3}"))
            );
        }
        None => {
            let _ = writeln!(s, "  (aggregate-only not run: --only)");
        }
    }
    // The dashboard and the exporter add no stream: they are aggregate-only modes too.
    for config in [Config::Top, Config::Serve] {
        if let Some(a) = get(config) {
            let _ = writeln!(
                s,
                "  {} {} rate >= {:.0}% of untraced with zero lost: {:.1}%, lost {}",
                pass(a.ratio >= TARGET_AGGREGATE_RATIO && a.lost == Some(0)),
                config.label(),
                TARGET_AGGREGATE_RATIO * 100.0,
                a.ratio * 100.0,
                a.lost.map_or("unknown".to_owned(), |l| l.to_string())
            );
        }
    }
    match get(Config::Text) {
        Some(a) => {
            let _ = writeln!(
                s,
                "  {} text streaming to a file >= {:.0}% of untraced: {:.1}%",
                pass(a.ratio >= TARGET_TEXT_RATIO),
                TARGET_TEXT_RATIO * 100.0,
                a.ratio * 100.0
            );
        }
        None => {
            let _ = writeln!(s, "  (text streaming not run: --only)");
        }
    }
    match get(Config::Record) {
        Some(a) => {
            let _ = writeln!(
                s,
                "  {} binary recording (record -o .tcpt) >= {:.0}% of untraced: {:.1}%, {} CPU-s \
                 per million transitions",
                pass(a.ratio >= TARGET_RECORD_RATIO),
                TARGET_RECORD_RATIO * 100.0,
                a.ratio * 100.0,
                a.cpu_per_m
                    .map_or("unknown".to_owned(), |x| format!("{x:.3}"))
            );
        }
        None => {
            let _ = writeln!(s, "  (binary recording not run: --only)");
        }
    }
    if let Some(a) = get(Config::Tcpstates) {
        let _ = writeln!(
            s,
            "  yardstick: tcpstates > /dev/null ran at {:.1}% of untraced (earlier runs on a \
             2-core machine: about 55%, 3.3 CPU-s per million transitions)",
            a.ratio * 100.0
        );
    }
    s
}

// ---------------------------------------------------------------------------------------

pub fn bench(args: &Args) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the benchmark loads eBPF programs (tcptrace, tcpstates) and needs root: run \
             `sudo -E cargo xtask bench`"
        );
    }
    if !(args.secs > 0.0 && args.secs <= 120.0) {
        bail!("--secs must be in (0, 120]");
    }
    if !(1..=20).contains(&args.rounds) {
        bail!("--rounds must be 1..=20");
    }
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => crate::build_release()?,
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("tcptrace-bench-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let env = Env {
        bin,
        tcpstates: find_tcpstates(),
        dir,
        duration: Duration::from_secs_f64(args.secs),
        threads: args.threads,
    };
    let configs: Vec<Config> = Config::TRACED
        .into_iter()
        .filter(|c| args.only.is_empty() || args.only.contains(c))
        .collect();

    let mut plan = Vec::new();
    for _ in 0..args.rounds {
        for c in &configs {
            plan.push(Config::Baseline);
            plan.push(*c);
        }
    }
    plan.push(Config::Baseline);
    let per_run = args.secs + 2.5;
    eprintln!(
        "xtask bench: {} runs of {:.0}s churn (about {:.0}s in all); tcptrace = {}",
        plan.len(),
        args.secs,
        plan.len() as f64 * per_run,
        env.bin.display()
    );
    if let Err(why) = &env.tcpstates {
        eprintln!("xtask bench: tcpstates runs are skipped: {why}");
    }

    let mut rows = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (i, config) in plan.iter().enumerate() {
        if config.is_tcpstates()
            && let Err(why) = &env.tcpstates
        {
            if !skipped.iter().any(|s| s == why) {
                skipped.push(why.clone());
            }
            continue;
        }
        eprint!(
            "xtask bench: run {}/{}: {} ... ",
            i + 1,
            plan.len(),
            config.label()
        );
        match run_one(&env, *config, i + 1) {
            Ok(row) => {
                eprintln!("{:.0} connections/s", row.churn.rate());
                rows.push(row);
            }
            Err(e) => {
                eprintln!("failed");
                let why = format!("{}: {e:#}", config.label());
                eprintln!("xtask bench: {why}");
                skipped.push(why);
            }
        }
        thread::sleep(SETTLE);
    }

    let mut out = table(&rows, args, &env);
    for why in &skipped {
        let _ = writeln!(out, "  NOT MEASURED: {why}");
    }
    out.push_str(&report_section(&env.bin, &env.dir, args.report_transitions));
    println!("{out}");
    if args.keep {
        println!("outputs kept in {}", env.dir.display());
    } else {
        let _ = fs::remove_dir_all(&env.dir);
    }
    Ok(())
}
