//! Harness for the root integration tests: runs the real `tcptrace` binary (which loads the
//! real eBPF program), waits until it is tracing, stops it with SIGTERM and parses what it
//! printed. Every wait here is bounded; a failure panics with what the tool said.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

/// How long the tool may take to load and attach.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the tool may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Read timeout on test sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "root integration tests need root: run them with `sudo -E cargo xtask test`"
    );
}

/// The exit code tcptrace ends with after a clean shutdown on `signal` (SIGINT, SIGTERM,
/// SIGHUP): 128 + the signal number, as the README's exit code table says.
pub fn exit_code_after(signal: i32) -> i32 {
    assert!(
        [libc::SIGINT, libc::SIGTERM, libc::SIGHUP].contains(&signal),
        "tcptrace shuts down cleanly on SIGINT, SIGTERM and SIGHUP only, not {signal}"
    );
    128 + signal
}

/// A running tracer.
pub struct Tracer {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr_rx: mpsc::Receiver<String>,
    stderr_lines: Vec<String>,
    summary_path: PathBuf,
}

/// What a tracer printed.
pub struct Output {
    /// JSON lines from stdout.
    pub lines: Vec<Value>,
    pub stderr: String,
    /// The `--summary-json` document.
    pub summary: Value,
    pub status: std::process::ExitStatus,
}

fn unique_path(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "tcptrace-{tag}-{}-{nanos}.json",
        std::process::id()
    ))
}

impl Tracer {
    /// Starts `tcptrace watch --format json --summary-json F ARGS` and waits until it traces.
    pub fn start(args: &[&str]) -> Self {
        Self::start_command(Command::new(BIN), args)
    }

    /// As [`Tracer::start`], with `tcptrace` run by `program` (e.g. `setpriv ... BIN`, which
    /// must exec the tool so that SIGTERM reaches it).
    pub fn start_command(program: Command, args: &[&str]) -> Self {
        Self::spawn(program, &["watch", "--format", "json"], args)
    }

    /// Starts `tcptrace record -o PATH --summary-json F ARGS` and waits until it traces.
    pub fn record(path: &std::path::Path, args: &[&str]) -> Self {
        let path = path.to_str().expect("UTF-8 recording path");
        Self::spawn(Command::new(BIN), &["record", "-o", path], args)
    }

    /// The `VmRSS` of the tool now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status of the tracer");
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    /// Starts `tcptrace serve --summary-json F ARGS` and waits until it traces.
    pub fn serve(args: &[&str]) -> Self {
        Self::spawn(Command::new(BIN), &["serve"], args)
    }

    /// The first line the tool printed on stderr so far that contains `needle`.
    pub fn stderr_line(&self, needle: &str) -> Option<&str> {
        self.stderr_lines
            .iter()
            .find(|l| l.contains(needle))
            .map(String::as_str)
    }

    fn spawn(mut program: Command, command: &[&str], args: &[&str]) -> Self {
        let summary_path = unique_path("summary");
        let mut child = program
            .args(command)
            .arg("--summary-json")
            .arg(&summary_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcptrace");
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, stderr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Self {
            child,
            stdout: Some(stdout),
            stderr_rx,
            stderr_lines: Vec::new(),
            summary_path,
        };
        t.wait_for_stderr("tracing TCP state transitions", START_TIMEOUT);
        t
    }

    fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_rx.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_lines.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "tcptrace did not print {needle:?} within {timeout:?}; stderr so far:\n{}",
                        self.stderr_lines.join("\n")
                    );
                }
            }
        }
    }

    /// The tracer's process id (e.g. to stop it with SIGSTOP and see loss accounted).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, waits for the exit and parses the output.
    pub fn stop(self) -> Output {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`, waits for the exit (whose code must say the signal: see
    /// [`exit_code_after`]) and parses the output.
    pub fn stop_with(mut self, signal: i32) -> Output {
        // Let the last transitions (softirq work, TIME_WAIT hand-overs) reach the ring buffer.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tcptrace did not exit within {STOP_TIMEOUT:?} of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        while let Ok(line) = self.stderr_rx.recv_timeout(Duration::from_secs(2)) {
            self.stderr_lines.push(line);
        }
        let stderr = self.stderr_lines.join("\n");
        assert_eq!(
            status.code(),
            Some(exit_code_after(signal)),
            "tcptrace's exit code after signal {signal} is 128 + {signal} (README, Exit codes) \
             once it has shut down cleanly\nstderr:\n{stderr}"
        );
        let lines = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        let summary_text = std::fs::read_to_string(&self.summary_path)
            .unwrap_or_else(|e| panic!("no summary file: {e}\nstderr:\n{stderr}"));
        let _ = std::fs::remove_file(&self.summary_path);
        let summary = serde_json::from_str(&summary_text).expect("summary JSON");
        Output {
            lines,
            stderr,
            summary,
            status,
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One socket's life: the transitions from its creation to its close.
#[derive(Debug, Clone)]
pub struct Life {
    pub sock: String,
    pub lines: Vec<Value>,
}

impl Life {
    pub fn transitions(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| format!("{}->{}", s(&l["old"]), s(&l["new"])))
            .collect()
    }

    /// Each transition with the milliseconds spent in the state it left (`ms`; `None` where
    /// the line has none), for comparing dwell times.
    pub fn dwells(&self) -> Vec<(String, Option<f64>)> {
        self.transitions()
            .into_iter()
            .zip(self.lines.iter().map(|l| l["ms"].as_f64()))
            .collect()
    }

    /// True if any line has these local and remote ports.
    pub fn has_ports(&self, lport: u16, rport: u16) -> bool {
        self.lines
            .iter()
            .any(|l| l["lport"] == u64::from(lport) && l["rport"] == u64::from(rport))
    }
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Splits transition lines into socket lives: grouped by socket address, split where a new
/// life starts (CLOSE->SYN_SENT, CLOSE->LISTEN, LISTEN->SYN_RECV).
pub fn lives(lines: &[Value]) -> Vec<Life> {
    let mut open: BTreeMap<String, Life> = BTreeMap::new();
    let mut done = Vec::new();
    for l in lines {
        let sock = s(&l["sock"]).to_owned();
        let t = (s(&l["old"]), s(&l["new"]));
        let restart = matches!(
            t,
            ("CLOSE", "SYN_SENT") | ("CLOSE", "LISTEN") | ("LISTEN", "SYN_RECV")
        );
        if restart && let Some(prev) = open.remove(&sock) {
            done.push(prev);
        }
        open.entry(sock.clone())
            .or_insert_with(|| Life {
                sock,
                lines: Vec::new(),
            })
            .lines
            .push(l.clone());
        if t.1 == "CLOSE"
            && let Some(life) = open.remove(s(&l["sock"]))
        {
            done.push(life);
        }
    }
    done.extend(open.into_values());
    done
}

/// Which side closes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseOrder {
    ClientFirst,
    ServerFirst,
}

/// Stops `tracer` (SIGSTOP), makes `n` connections to `listener` closed in alternating
/// orders, then lets it go on (SIGCONT): with a tiny ring the kernel must drop events.
pub fn churn_while_stopped(tracer: &Tracer, listener: &TcpListener, n: u64) {
    let pid = tracer.pid() as i32;
    // SAFETY: signals to a child process we own.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    connections(listener, n as usize);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

/// Makes one connection to `listener` and closes it in `order`, waiting for the peer to see
/// the FIN before the second close. Returns (client port, server port).
pub fn connect_and_close(listener: &TcpListener, order: CloseOrder) -> (u16, u16) {
    let addr: SocketAddr = listener.local_addr().expect("listener addr");
    let client = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    client.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    server.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let cport = client.local_addr().expect("client addr").port();
    let (first, mut second) = match order {
        CloseOrder::ClientFirst => (client, server),
        CloseOrder::ServerFirst => (server, client),
    };
    drop(first);
    let mut buf = [0u8; 16];
    let n = second.read(&mut buf).expect("read EOF");
    assert_eq!(n, 0, "expected EOF after the peer closed");
    drop(second);
    (cport, addr.port())
}

/// `n` connections to `listener` (as [`connect_and_close`]), closed by the client and the
/// server in turn, the client first.
pub fn connections(listener: &TcpListener, n: usize) {
    for i in 0..n {
        let order = if i % 2 == 0 {
            CloseOrder::ClientFirst
        } else {
            CloseOrder::ServerFirst
        };
        connect_and_close(listener, order);
    }
}

/// Transitions a client socket goes through, by close order.
pub fn client_expected(order: CloseOrder) -> Vec<&'static str> {
    let mut v = vec!["CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED"];
    v.extend(teardown(order == CloseOrder::ClientFirst));
    v
}

/// Transitions a server child socket goes through, by close order.
pub fn server_expected(order: CloseOrder) -> Vec<&'static str> {
    let mut v = vec!["LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED"];
    v.extend(teardown(order == CloseOrder::ServerFirst));
    v
}

fn teardown(active: bool) -> [&'static str; 3] {
    if active {
        [
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE",
        ]
    } else {
        [
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE",
        ]
    }
}
