//! `tcptrace top` end to end in a real terminal: tmux runs the dashboard in a pane while the
//! test makes loopback connections with known counts (and leaves one socket in CLOSE_WAIT on
//! purpose), captures the pane, checks the counts and the leak row, resizes the pane to
//! 80x24, presses `q`, and checks that the process exited 0, printed its summary and gave
//! the shell back. The same for `--replay` of the checked-in fixture, and `--once --format
//! json` against the exit summary of the same run.
//!
//! `#[ignore]`d: live runs need root, and tmux is a test package (`cargo xtask setup
//! --test-packages`); `cargo xtask test` runs them. Each test uses its own tmux server
//! (`-L` with the pid and a tag) and kills it at the end; traffic is on 127.0.0.1 with ports
//! the test bound, and every figure checked is filtered to those ports, so other tests'
//! loopback traffic does not matter. Every wait is bounded.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    BIN, CloseOrder, IO_TIMEOUT, connect_and_close, connections, exit_code_after, require_root,
};
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/loopback.jsonl");
const PROMPT: &str = "top-test$ ";

/// A private tmux server with one pane running `sh`.
struct Tmux {
    socket: String,
    /// The server's socket file, removed after the server is killed.
    socket_path: Option<PathBuf>,
}

impl Tmux {
    fn start(tag: &str, width: u16, height: u16) -> Self {
        let socket = format!("tcptrace-top-{tag}-{}", std::process::id());
        let mut t = Self {
            socket,
            socket_path: None,
        };
        let status = t
            .cmd()
            .args(["new-session", "-d", "-s", "top", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(format!("env PS1='{PROMPT}' sh -i"))
            .status()
            .expect("tmux: install it with `cargo xtask setup --test-packages` (Debian: apt-get install tmux)");
        assert!(status.success(), "tmux new-session failed: {status}");
        t.wait_for("the shell prompt", Duration::from_secs(10), |s| {
            s.contains(PROMPT.trim_end())
        });
        let path = t
            .cmd()
            .args(["display-message", "-p", "#{socket_path}"])
            .output()
            .expect("tmux display-message");
        let path = String::from_utf8_lossy(&path.stdout).trim().to_owned();
        t.socket_path = (!path.is_empty()).then(|| PathBuf::from(path));
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-f", "/dev/null", "-L", &self.socket]);
        c
    }

    fn keys(&self, keys: &[&str]) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success(), "tmux send-keys failed");
    }

    /// Types a command line and runs it, printing its exit code after it ends.
    fn run(&self, line: &str) {
        self.keys(&["-l", &format!("{line}; echo top-exit=$?")]);
        self.keys(&["Enter"]);
    }

    /// The visible pane (`history`: with the scrollback).
    fn capture(&self, history: bool) -> String {
        let mut c = self.cmd();
        c.args(["capture-pane", "-p", "-t", "top"]);
        if history {
            c.args(["-S", "-"]);
        }
        let out = c.output().expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn resize(&self, w: u16, h: u16) {
        let status = self
            .cmd()
            .args(["resize-window", "-t", "top", "-x"])
            .arg(w.to_string())
            .arg("-y")
            .arg(h.to_string())
            .status()
            .expect("tmux resize-window");
        assert!(status.success(), "tmux resize-window failed");
    }

    /// Polls the pane until `ok` holds; panics with the pane after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let pane = self.capture(false);
            if ok(&pane) {
                return pane;
            }
            if Instant::now() > deadline {
                panic!("{what} did not appear within {timeout:?}; the pane shows:\n{pane}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn unique(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tcptrace-top-{tag}-{}.json", std::process::id()))
}

/// The total of a rate row (`│closed   8.2   41 ...`) as the pane shows it.
fn rate_total(pane: &str, name: &str) -> Option<u64> {
    pane.lines().find_map(|l| {
        let rest = l.split('│').nth(1)?.trim_start().strip_prefix(name)?;
        let mut it = rest.split_whitespace();
        it.next()?; // per second
        it.next()?.parse().ok()
    })
}

/// The row of the CLOSE_WAIT table with this local and remote address (the recent-closes
/// table shows the peer's side with the addresses the other way round).
fn leak_row<'a>(pane: &'a str, local: &str, remote: &str) -> Option<&'a str> {
    pane.lines()
        .find(|l| matches!((l.find(local), l.find(remote)), (Some(a), Some(b)) if a < b))
}

/// After `q`: the process exited 0, printed its summary, and the shell is back.
fn quit_and_check(t: &Tmux) -> String {
    t.keys(&["q"]);
    t.wait_for("the exit code after q", Duration::from_secs(20), |s| {
        // The typed command itself shows `top-exit=$?`: wait for the echoed number.
        s.split("top-exit=")
            .skip(1)
            .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    let all = t.capture(true);
    assert!(all.contains("top-exit=0"), "top did not exit 0:\n{all}");
    assert!(all.contains("tcptrace summary:"), "no exit summary:\n{all}");
    let after = all
        .rsplit("top-exit=0")
        .next()
        .expect("text after the exit code");
    assert!(
        after.contains(PROMPT.trim_end()),
        "the shell prompt is not back:\n{all}"
    );
    let pane = t.capture(false);
    assert!(
        !pane.contains("q quit"),
        "the dashboard is still on screen (terminal not restored):\n{pane}"
    );
    all
}

#[test]
#[ignore = "needs root and tmux; run by `cargo xtask test`"]
fn top_in_tmux_shows_counts_and_the_leak_then_restores_the_terminal() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let summary_path = unique("live-summary");
    let t = Tmux::start("live", 160, 48);
    t.run(&format!(
        "{BIN} top --port {port} --close-wait 1 --interval 0.5 --top 3 --summary-json {}",
        summary_path.display()
    ));
    t.wait_for("the dashboard", Duration::from_secs(30), |s| {
        s.contains(&format!("live, --port {port}"))
    });

    // Known traffic: 10 connections closed by each side, then one left in CLOSE_WAIT.
    let n = 10;
    for _ in 0..n {
        connect_and_close(&listener, CloseOrder::ClientFirst);
        connect_and_close(&listener, CloseOrder::ServerFirst);
    }
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let client = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    let (held, peer) = listener.accept().expect("accept");
    drop(client); // the server side (`held`) is now in CLOSE_WAIT, and stays there
    let leak_peer = peer.to_string();

    // Each connection is two sockets here: 2n + 1 opened and established, 2n + 1 closed
    // (the leak's client closed; its server side has not).
    let sockets = 2 * (2 * n as u64) + 2;
    let closed = sockets - 1;
    let local = format!("127.0.0.1:{port}");
    let pane = t.wait_for(
        "the counts and the leak row",
        Duration::from_secs(15),
        |s| rate_total(s, "closed") == Some(closed) && leak_row(s, &local, &leak_peer).is_some(),
    );
    assert_eq!(rate_total(&pane, "opened"), Some(sockets), "{pane}");
    assert_eq!(rate_total(&pane, "established"), Some(sockets), "{pane}");
    assert_eq!(rate_total(&pane, "reset"), Some(0), "{pane}");
    let row = leak_row(&pane, &local, &leak_peer).expect("leak row");
    assert!(
        row.contains(&std::process::id().to_string()),
        "the leak row names this process: {row}"
    );
    assert!(pane.contains("CLOSE_WAIT longer than 1.0s: 1"), "{pane}");

    t.resize(80, 24);
    let small = t.wait_for("the 80x24 frame", Duration::from_secs(5), |s| {
        s.lines().count() <= 24 && leak_row(s, &local, &leak_peer).is_some() && s.contains("q quit")
    });
    assert!(
        small.lines().all(|l| l.chars().count() <= 80),
        "a line wider than the pane:\n{small}"
    );
    assert_eq!(rate_total(&small, "closed"), Some(closed), "{small}");

    let all = quit_and_check(&t);
    drop(held);
    let text = std::fs::read_to_string(&summary_path)
        .unwrap_or_else(|e| panic!("no --summary-json file: {e}\n{all}"));
    let _ = std::fs::remove_file(&summary_path);
    let summary: Value = serde_json::from_str(&text).expect("summary JSON");
    // The numbers the dashboard showed are the exit summary's.
    assert_eq!(summary["overall"]["connections"], closed, "{text}");
    assert_eq!(summary["close_wait_now"], 1, "{text}");
    assert_eq!(summary["lost"], 0, "{text}");
}

#[test]
#[ignore = "needs tmux; run by `cargo xtask test`"]
fn top_replays_the_fixture_recording_in_tmux() {
    let report = Command::new(BIN)
        .args(["report", "--format", "json", FIXTURE])
        .output()
        .expect("report");
    let summary: Value = serde_json::from_slice(&report.stdout).expect("report JSON");
    let connections = summary["overall"]["connections"].as_u64().expect("count");

    let t = Tmux::start("replay", 160, 48);
    t.run(&format!(
        "{BIN} top --replay {FIXTURE} --speed 1 --close-wait 0 --interval 0.2"
    ));
    let pane = t.wait_for("the end of the recording", Duration::from_secs(30), |s| {
        s.contains("END OF RECORDING")
    });
    assert!(pane.contains("replay loopback.jsonl"), "{pane}");
    assert_eq!(rate_total(&pane, "closed"), Some(connections), "{pane}");
    // The fixture ends with one socket in CLOSE_WAIT.
    assert!(
        pane.contains("127.0.0.1:45177") && pane.contains("127.0.0.1:35472"),
        "no leak row:\n{pane}"
    );
    t.resize(80, 24);
    t.wait_for("the 80x24 frame", Duration::from_secs(5), |s| {
        s.lines().count() <= 24 && s.contains("END OF RECORDING") && s.contains("q quit")
    });
    let all = quit_and_check(&t);
    assert!(
        all.contains(&format!("[overall] connections {connections}")),
        "the exit summary is the recording's:\n{all}"
    );
}

#[test]
#[ignore = "needs tmux; run by `cargo xtask test`"]
fn top_left_behind_by_a_closed_terminal_exits_instead_of_spinning() {
    // Seen once: a replay that had ended (the live run no longer handles signals) kept its
    // dashboard after its tmux was killed, and crossterm's reader spun on end-of-file at
    // half a CPU for as long as nobody noticed.
    let t = Tmux::start("hangup", 120, 30);
    t.run(&format!(
        "{BIN} top --replay {FIXTURE} --speed max --close-wait 0"
    ));
    t.wait_for("the end of the recording", Duration::from_secs(30), |s| {
        s.contains("END OF RECORDING")
    });
    let out = t
        .cmd()
        .args(["display-message", "-p", "-t", "top", "#{pane_pid}"])
        .output()
        .expect("tmux display-message");
    let shell: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the pane's shell pid");
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .expect("the shell's children");
    let top: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child of the pane's shell {shell}: {children:?}"));
    assert!(
        std::fs::read_to_string(format!("/proc/{top}/cmdline")).is_ok_and(|c| c.contains("top")),
        "pid {top} is not the dashboard"
    );
    // The terminal goes away: the kernel hangs up the pane's pty.
    let status = t
        .cmd()
        .arg("kill-server")
        .status()
        .expect("tmux kill-server");
    assert!(status.success(), "tmux kill-server failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{top}")).exists() {
        // A zombie has exited: its parent (the shell, gone too) is not ours to reap.
        let state = std::fs::read_to_string(format!("/proc/{top}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "top (pid {top}) still runs 10 s after its terminal went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs tmux; run by `cargo xtask test`"]
fn a_panicking_sink_restores_the_terminal_prints_the_summary_and_exits_101() {
    let t = Tmux::start("panic", 120, 40);
    // The hidden test hook makes a sink panic on the 100th of the fixture's 242 events,
    // while the dashboard owns the terminal (raw mode, alternate screen).
    t.run(&format!(
        "{BIN} top --replay {FIXTURE} --speed max --interval 0.2 --test-panic-after-events 100"
    ));
    t.wait_for("the exit code", Duration::from_secs(30), |s| {
        s.split("top-exit=")
            .skip(1)
            .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    let all = t.capture(true);
    assert!(all.contains("top-exit=101"), "a panic exits 101:\n{all}");
    assert!(
        all.contains("a sink panics as asked") && all.contains("internal error"),
        "the panic is said, readable:\n{all}"
    );
    assert!(all.contains("tcptrace summary:"), "no exit summary:\n{all}");
    // The terminal is back in cooked mode: a typed command runs (in raw mode Enter would
    // not end the line) and its output shows on the normal screen.
    t.run("echo restored-$((40+2))");
    let pane = t.wait_for(
        "the shell running a command",
        Duration::from_secs(10),
        |s| s.contains("restored-42"),
    );
    assert!(
        !pane.contains("q quit"),
        "the dashboard is still on screen (terminal not restored):\n{pane}"
    );
    // The shell (dash) has no line editing of its own, so the line above proves little about
    // the tty: ask it. Canonical input and echo are back on (raw mode has -icanon -echo).
    t.run(
        "echo \"stty=$(stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)' | tr '\\n' ,)\"",
    );
    let pane = t.wait_for("stty -a", Duration::from_secs(10), |s| {
        s.lines().any(|l| l.starts_with("stty="))
    });
    assert!(
        pane.lines().any(|l| l.trim_end() == "stty=icanon,echo,"),
        "the terminal is not back in cooked mode with echo:\n{pane}"
    );
}

#[test]
#[ignore = "needs root; run by `cargo xtask test`"]
fn once_json_equals_the_exit_summary() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let summary_path = unique("once-summary");
    let mut child = Command::new(BIN)
        .args(["top", "--once", "--format", "json", "--interval", "3"])
        .args(["--port", &port.to_string(), "--summary-json"])
        .arg(&summary_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcptrace top --once");
    let mut stdout = child.stdout.take().expect("stdout");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut err = ready(&mut child);
    connections(&listener, 6);
    let status = wait(&mut child, Duration::from_secs(20));
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    assert!(status.success(), "top --once failed: {status}\n{rest}");
    let snap: Value = serde_json::from_str(&out.join().expect("stdout reader")).expect("JSON");
    let text = std::fs::read_to_string(&summary_path).expect("summary file");
    let _ = std::fs::remove_file(&summary_path);
    let summary: Value = serde_json::from_str(&text).expect("summary JSON");
    assert_eq!(snap["summary"], summary);
    assert_eq!(summary["overall"]["connections"], 12, "{text}");
    let closed = snap["dashboard"]["rates"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "closed"))
        .expect("closed rate");
    assert_eq!(closed["total"], 12);
}

/// Reads the child's stderr until tcptrace says it is tracing (at most 30 s); returns the
/// reader for the rest.
fn ready(child: &mut std::process::Child) -> BufReader<std::process::ChildStderr> {
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let start = Instant::now();
    while !line.contains("tracing TCP state transitions") {
        line.clear();
        let n = err.read_line(&mut line).expect("stderr");
        assert!(n > 0, "tcptrace exited before it was ready");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not ready in 30 s"
        );
    }
    err
}

fn wait(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tcptrace did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pseudo-terminal of 160x48: (master, slave).
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd as _;
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 48,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds; the name and termios pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: two fresh fds that nothing else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

/// A terminal that stops reading (a slow SSH link, output paused with Ctrl-S) holds up the
/// dashboard's frames, not the reader of the kernel's rings: `top` runs on a pseudo-terminal
/// whose other side nobody reads, filled up to what the kernel buffers, with rings of 64 KiB,
/// while the test makes 400 connections (4,000 transitions, several rings' worth); then the
/// terminal is drained and `top` ends on SIGTERM. Every transition must be there and none
/// lost. When the frames were written by the thread that reads the rings, its next frame
/// stopped it, and this lost most of the events.
#[test]
#[ignore = "needs root; run by `cargo xtask test`"]
fn a_terminal_that_stops_reading_loses_no_events() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let summary_path = unique("stalled-summary");
    let (mut master, slave) = pty();
    let mut cmd = Command::new(BIN);
    cmd.args(["top", "--interval", "0.2", "--ring-kib", "64"])
        .args(["--port", &port.to_string(), "--summary-json"])
        .arg(&summary_path)
        .stdin(slave.try_clone().expect("pty"))
        .stdout(slave)
        .stderr(Stdio::piped());
    // SAFETY: setsid and ioctl are async-signal-safe; they make the pty (stdin, set above)
    // the child's controlling terminal, as crossterm needs.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start tcptrace top");
    let mut err = ready(&mut child);
    // Fill what the kernel buffers between the terminal's two sides, through a second
    // descriptor of the terminal that does not block (the child's would), so that the
    // dashboard's next frame waits for a reader that is not there.
    std::thread::sleep(Duration::from_secs(1));
    let name = {
        let mut buf = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes a NUL-terminated name into the buffer of the given size.
        let r = unsafe {
            libc::ptsname_r(
                std::os::fd::AsRawFd::as_raw_fd(&master),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        assert_eq!(r, 0, "ptsname_r");
        // SAFETY: NUL-terminated by ptsname_r.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    let mut filler = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&name)
        .expect("open the terminal again");
    let mut filled = 0usize;
    while filled < 64 << 20 {
        match std::io::Write::write(&mut filler, &[b'.'; 4096]) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the terminal: {e}"),
        }
    }
    assert!(filled < 64 << 20, "the terminal never filled");
    // A few connections change the figures on screen, so the next frame has something to
    // write, and waits.
    for _ in 0..5 {
        connect_and_close(&listener, CloseOrder::ClientFirst);
    }
    std::thread::sleep(Duration::from_secs(1));
    // Paced a little (about 40,000 transitions/s): a reader that is not held up keeps up
    // with that even in a debug build on a loaded machine, and the rings overflow anyway
    // when it is held up, since all of it is more than they hold.
    for _ in 0..79 {
        connections(&listener, 5);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_secs(1));
    // Read the terminal again, so that `top` can leave it.
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(master.read(&mut buf), Ok(n) if n > 0) {}
    });
    // SAFETY: a signal to our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait(&mut child, Duration::from_secs(20));
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    drop(drain);
    let text = std::fs::read_to_string(&summary_path).expect("summary file");
    let _ = std::fs::remove_file(&summary_path);
    assert_eq!(
        status.code(),
        Some(exit_code_after(libc::SIGTERM)),
        "top ended with {status}\n{rest}"
    );
    let summary: Value = serde_json::from_str(&text).expect("summary JSON");
    assert_eq!(summary["lost"], 0, "{text}");
    assert_eq!(summary["overall"]["connections"], 800, "{text}");
}
