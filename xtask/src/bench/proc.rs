//! Measuring the processes beside the load: CPU time and memory from /proc and wait4, a
//! tracer's life (start until it traces, stop with SIGINT), the kernel's own run-time
//! statistics of a tracer's BPF programs, and the pseudo-terminal and scraper that keep
//! `top` and `serve` doing their real work during a run.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// How long a tracer may take to load and attach.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a tracer may take to exit after SIGINT (it drains and writes its summary).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads), in seconds, from /proc/PID/stat.
pub fn proc_cpu_secs(pid: u32) -> Result<f64> {
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
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
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
pub struct Exit {
    pub status: i32,
    pub cpu_secs: f64,
    pub max_rss_bytes: u64,
    pub killed: bool,
}

impl Exit {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

pub fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Reaps `child` with wait4 (polling, bounded by `timeout`; SIGKILL after it). `child` must
/// not be waited on again.
pub fn wait_rusage(child: &Child, timeout: Duration) -> Result<Exit> {
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
pub fn collect_lines(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
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

pub fn snapshot(lines: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    lines.lock().map(|v| v.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Tracers.

/// A running tracer.
pub struct Tracer {
    child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
    cpu_at_ready: f64,
    progs_at_ready: Vec<ProgStat>,
}

/// What a tracer's run measured.
#[derive(Clone, Debug, Default)]
pub struct TracerStats {
    /// CPU while the churn ran (ready -> just before SIGINT).
    pub cpu_secs: f64,
    /// CPU over the whole life, loading included (wait4).
    pub total_cpu_secs: f64,
    pub transitions: Option<u64>,
    pub lost: Option<u64>,
    /// Of `lost`, the events the kernel skipped (`lost_skipped`, absent from the summary
    /// when 0).
    pub lost_skipped: Option<u64>,
    /// Transitions whose old state was not the state the tracker held (summary
    /// `track.gaps`): a missed or a doubled event, when nothing was lost.
    pub gaps: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub output_bytes: Option<u64>,
    /// The kernel's run-time statistics of the tracer's BPF programs while the churn ran
    /// (all its programs together: nanoseconds, runs).
    pub kernel: Option<(u64, u64)>,
    /// Of `kernel`'s nanoseconds, the nested-event program's.
    pub kernel_nested_ns: Option<u64>,
    pub note: Option<String>,
}

pub fn has_fd_link(pid: u32, needle: &str) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains(needle)))
}

/// How a tracer shows that it traces.
#[derive(Clone, Copy, Debug)]
pub enum Ready<'a> {
    /// It prints a stderr line containing this.
    Line(&'a str),
    /// It holds a perf-event fd (libbpf-tools open one when they attach).
    PerfFd,
    /// `bpftool perf` lists its attachment to this tracepoint (bpftrace, which opens
    /// perf-event fds for its output before it attaches).
    Attached(&'a str),
}

/// Whether `bpftool perf show` lists process `pid` attached to `tracepoint`.
fn attached(pid: u32, tracepoint: &str) -> bool {
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["perf", "show", "--json"])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .is_some_and(|a| {
            a.iter().any(|e| {
                e["pid"].as_u64() == Some(u64::from(pid))
                    && e["tracepoint"].as_str() == Some(tracepoint)
            })
        })
}

impl Tracer {
    /// Starts `cmd` (its stdin and stdout set by the caller) and waits until it traces, as
    /// `ready` says.
    pub fn start(mut cmd: Command, ready: Ready) -> Result<Self> {
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
            let is_ready = match ready {
                Ready::Line(l) => snapshot(&stderr).iter().any(|s| s.contains(l)),
                Ready::PerfFd => has_fd_link(pid, "perf_event"),
                Ready::Attached(tp) => attached(pid, tp),
            };
            if is_ready {
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
        let progs_at_ready = prog_stats(pid);
        Ok(Self {
            child,
            stderr,
            cpu_at_ready,
            progs_at_ready,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads CPU, peak RSS and the kernel's program statistics, then SIGINT and wait for
    /// the exit.
    pub fn stop(self) -> Result<(TracerStats, Vec<String>, Exit)> {
        let pid = self.child.id();
        let cpu_secs = proc_cpu_secs(pid)? - self.cpu_at_ready;
        let peak_rss_bytes = proc_status_kb(pid, "VmHWM");
        let after = prog_stats(pid);
        let (state_change, nested) = state_change_prog_ids().unzip();
        let kernel = prog_delta(
            &only(&self.progs_at_ready, state_change.as_ref()),
            &only(&after, state_change.as_ref()),
        );
        // The nested-event program runs on every state change too (and returns at once on
        // nearly all): its time counts per state change, its runs are not more events.
        let nested = nested.filter(|ids| !ids.is_empty()).and_then(|ids| {
            let pick = |s: &[ProgStat]| -> Vec<ProgStat> {
                s.iter().filter(|p| ids.contains(&p.id)).copied().collect()
            };
            prog_delta(&pick(&self.progs_at_ready), &pick(&after))
        });
        let kernel_nested_ns = nested.map(|(n, _)| n);
        let kernel = kernel.map(|(ns, cnt)| (ns + kernel_nested_ns.unwrap_or(0), cnt));
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
                kernel,
                kernel_nested_ns,
                ..TracerStats::default()
            },
            stderr,
            exit,
        ))
    }
}

// ---------------------------------------------------------------------------------------
// The kernel's statistics of BPF programs.

/// Turns on the kernel's BPF run-time statistics (`run_time_ns`, `run_cnt` per program) for
/// as long as the returned fd is open, with `bpf(BPF_ENABLE_STATS)`: the same switch as
/// `kernel.bpf_stats_enabled=1`, but the kernel turns it off again when the fd closes,
/// however this process ends (error, Ctrl-C, SIGKILL), so nothing needs restoring.
pub fn enable_bpf_stats() -> Result<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    const BPF_STATS_RUN_TIME: u32 = 0;
    // union bpf_attr { struct { __u32 type; } enable_stats; ... }: the kernel reads the
    // first `size` bytes and treats the rest as zero.
    let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
    // SAFETY: the bpf syscall reads `size` bytes from a pointer to our local array.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!(
            "bpf(BPF_ENABLE_STATS): {} (needs CAP_SYS_ADMIN and Linux 5.8+)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF program's counters, from /proc/PID/fdinfo of a `bpf-prog` fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgStat {
    pub id: u64,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Parses the fdinfo text of a BPF program fd.
pub fn parse_prog_fdinfo(text: &str) -> Option<ProgStat> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(ProgStat {
        id: field("prog_id")?,
        run_time_ns: field("run_time_ns")?,
        run_cnt: field("run_cnt")?,
    })
}

/// The counters of every BPF program process `pid` holds open, one entry per program.
pub fn prog_stats(pid: u32) -> Vec<ProgStat> {
    let mut out: Vec<ProgStat> = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let is_prog =
            fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
        if let Some(p) = fs::read_to_string(info)
            .ok()
            .as_deref()
            .and_then(parse_prog_fdinfo)
            && !out.iter().any(|q| q.id == p.id)
        {
            out.push(p);
        }
    }
    out
}

/// The ids of the loaded state-change programs (the ones the ns/event target is about:
/// tcptrace's `inet_sock_set_state` or `inet_sock_set_state_btf`, whose names the kernel may
/// keep to 15 characters), and apart, of its nested-event programs (`set_state_nested`,
/// whose time is added per state change), from `bpftool prog show --json`; `None` without bpftool
/// (`cargo xtask setup --test-packages` installs it), and then every program of the tracer
/// counts. The other programs must not be averaged in: `kfree_skb` runs on every dropped
/// packet of the host and rejects almost all of them at about 60 ns, which would flatter
/// the figure.
pub fn state_change_prog_ids() -> Option<(Vec<u64>, Vec<u64>)> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let named = |prefix: &str| -> Option<Vec<u64>> {
        Some(
            progs
                .as_array()?
                .iter()
                .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
                .filter_map(|p| p["id"].as_u64())
                .collect(),
        )
    };
    Some((named("inet_sock_set_s")?, named("set_state_neste")?))
}

/// The programs among `ids`; all of them without ids, or when none is among them (another
/// tracer, e.g. tcpstates, whose programs have other names).
pub fn only(stats: &[ProgStat], ids: Option<&Vec<u64>>) -> Vec<ProgStat> {
    match ids.filter(|ids| stats.iter().any(|p| ids.contains(&p.id))) {
        Some(ids) => stats
            .iter()
            .filter(|p| ids.contains(&p.id))
            .copied()
            .collect(),
        None => stats.to_vec(),
    }
}

/// Nanoseconds and runs of all programs between two readings (programs in both).
pub fn prog_delta(before: &[ProgStat], after: &[ProgStat]) -> Option<(u64, u64)> {
    let mut ns = 0;
    let mut cnt = 0;
    for a in after {
        let b = before.iter().find(|b| b.id == a.id)?;
        ns += a.run_time_ns.saturating_sub(b.run_time_ns);
        cnt += a.run_cnt.saturating_sub(b.run_cnt);
    }
    (cnt > 0).then_some((ns, cnt))
}

// ---------------------------------------------------------------------------------------
// Helpers that keep `top` and `serve` working during a run.

/// A pseudo-terminal of `cols` x `rows`; returns its slave side. A thread drains the master
/// side until the slave closes, so a drawing tracer never blocks on a full terminal.
pub fn pty(cols: u16, rows: u16) -> Result<fs::File> {
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
pub struct Scraper {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, u64)>,
}

impl Scraper {
    /// Finds the address in serve's "serving http://ADDR/metrics" line.
    pub fn start(stderr: &[String]) -> Result<Self> {
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
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prog_fdinfo_parses_the_run_time_fields() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\t0a1b2c3d4e5f6a7b\nmemlock:\t4096\n\
                    prog_id:\t42\nrun_time_ns:\t123456\nrun_cnt:\t789\n\
                    recursion_misses:\t0\nverified_insns:\t321\n";
        assert_eq!(
            parse_prog_fdinfo(text),
            Some(ProgStat {
                id: 42,
                run_time_ns: 123_456,
                run_cnt: 789
            })
        );
        assert_eq!(parse_prog_fdinfo("pos:\t0\n"), None);
    }

    #[test]
    fn prog_delta_sums_programs_present_in_both_readings() {
        let p = |id, ns, cnt| ProgStat {
            id,
            run_time_ns: ns,
            run_cnt: cnt,
        };
        let before = [p(1, 100, 10), p(2, 50, 1)];
        let after = [p(1, 1100, 20), p(2, 250, 3)];
        assert_eq!(prog_delta(&before, &after), Some((1200, 12)));
        assert_eq!(prog_delta(&before, &before), None);
        assert_eq!(prog_delta(&[], &after), None);
    }
}
