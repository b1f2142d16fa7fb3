//! Root test: `tcptrace record` on real loopback traffic, then `tcptrace report` of that
//! recording, run as an unprivileged user, must give exactly the summary the live run wrote
//! (`--summary-json`). The recording is in the default binary format.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{BIN, IO_TIMEOUT, require_root};

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn report_of_a_recording_equals_the_live_summary() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let dir = std::env::temp_dir().join(format!("tcptrace-root-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    // The default format (binary); tests/report.rs checks JSON Lines -> binary equality.
    let rec = dir.join("run.tcpt");
    let live = dir.join("live.json");
    let mut child = Command::new(BIN)
        .args([
            "record",
            "--duration",
            "3",
            "--port",
            &port.to_string(),
            "-o",
        ])
        .arg(&rec)
        .arg("--summary-json")
        .arg(&live)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcptrace record");
    // Wait until it traces: it prints this line on stderr once attached.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let started = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("tracing TCP state transitions") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("tcptrace record did not start tracing within 30 s");
            }
        }
    }
    let server = std::thread::spawn(move || {
        for _ in 0..10 {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut b = [0u8; 4];
            s.read_exact(&mut b).expect("read");
            s.write_all(b"pong").expect("write");
        }
    });
    for _ in 0..10 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        c.write_all(b"ping").expect("write");
        let mut b = [0u8; 4];
        c.read_exact(&mut b).expect("read");
    }
    server.join().expect("server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tcptrace record did not stop after --duration"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = started.join().expect("stderr");
    assert!(status.success(), "tcptrace record failed:\n{stderr}");
    // The report needs no root: run it as nobody (the recording made readable to it).
    for p in [&dir, &rec] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "report",
        ])
        .arg(&rec)
        .args(["--format", "json"])
        .output()
        .expect("run report as nobody (setpriv, util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live = std::fs::read_to_string(&live).expect("live summary");
    let v: serde_json::Value = serde_json::from_str(&live).expect("json");
    assert!(
        v["overall"]["connections"].as_u64().unwrap_or(0) >= 20,
        "too few connections traced: {live}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        live,
        "report differs from the live summary"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
