//! Root tests of running without root, as the systemd unit does: the capabilities listed in
//! `deploy/systemd/tcptrace.service` (read from the unit, so the two cannot drift apart) are
//! enough for an unprivileged user under NoNewPrivileges to trace and to name the owners of
//! sockets that existed before start-up; without CAP_DAC_READ_SEARCH the error names it.
//!
//! `setpriv` (util-linux) plays systemd's part: user nobody, the unit's capabilities as
//! ambient, inheritable and bounding set, and `--no-new-privs`.
//!
//! Least privilege: once it says it is tracing, the tracer holds no capability in any set
//! of any thread (read from /proc/PID/task/*/status), as root and as the unit's user, and
//! still delivers and counts every event; a replay (`top --replay`) reads its recording with
//! no capability in any thread; files it creates under sudo belong to SUDO_UID and
//! SUDO_GID (one that existed keeps its owner), and outputs written at exit land even in a
//! directory root does not own (root without CAP_DAC_OVERRIDE could not create them there).

mod common;

use std::{
    io::Read as _,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
};

use common::{BIN, CloseOrder, Tracer, connect_and_close, require_root, s};

/// The capability sets of every thread of `pid`: (thread, line) for each `Cap*:` line.
fn capability_sets(pid: u32) -> Vec<(String, String, u64)> {
    let mut sets = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).expect("status");
        for line in status.lines() {
            if let Some((k, v)) = line.split_once(':')
                && k.starts_with("Cap")
            {
                let v = u64::from_str_radix(v.trim(), 16).expect("hex capability set");
                sets.push((
                    t.file_name().to_string_lossy().into_owned(),
                    k.to_owned(),
                    v,
                ));
            }
        }
    }
    assert!(!sets.is_empty(), "no capability lines for {pid}");
    sets
}

/// Asserts that no thread of `pid` holds any capability (`bounding`: the bounding set too).
fn assert_no_capabilities(pid: u32, bounding: bool, case: &str) {
    for (task, set, v) in capability_sets(pid) {
        if set == "CapBnd" && !bounding {
            continue;
        }
        assert_eq!(
            v, 0,
            "{case}: thread {task} still has {set} {v:#x} after the ready line"
        );
    }
}

/// The unit's `AmbientCapabilities=`, as setpriv spells them (`bpf`, `perfmon`, ...).
fn unit_capabilities() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/tcptrace.service");
    let unit = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading the unit {}: {e}", path.display()));
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit sets AmbientCapabilities=");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    assert_eq!(
        line.trim(),
        bounding.trim(),
        "the unit's ambient and bounding capabilities differ"
    );
    caps
}

/// A copy of the tool that user nobody may run (the build directory may be private).
fn world_executable_copy() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcptrace-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = dir.join("tcptrace");
    std::fs::copy(BIN, &bin).expect("copy the binary");
    for p in [&dir, &bin] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

/// `setpriv` running `bin` as nobody with exactly `caps`, under NoNewPrivileges.
fn as_nobody_with(caps: &[String], bin: &PathBuf) -> Command {
    let set: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--no-new-privs",
    ])
    .arg(format!("--inh-caps={set}"))
    .arg(format!("--ambient-caps={set}"))
    .arg(format!("--bounding-set={set}"))
    .arg(bin);
    cmd
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_units_capabilities_are_enough_to_trace_and_name_owners() {
    require_root();
    let caps = unit_capabilities();
    let bin = world_executable_copy();
    // A listener that exists before the tracer starts: naming its children's owner needs
    // the other process's /proc/PID/fd (this test runs as root, the tracer as nobody).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tracer = Tracer::start_command(as_nobody_with(&caps, &bin), &["--port", &port.to_string()]);
    // Everything the unit grants is given up once tracing runs (the bounding set stays as
    // setpriv left it: dropping from it needs CAP_SETPCAP, which the unit does not grant).
    assert_no_capabilities(tracer.pid(), false, "as the unit's user");
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop(server);
    let mut buf = [0u8; 1];
    let _ = client.read(&mut buf);
    drop(client);
    let out = tracer.stop();
    let _ = std::fs::remove_dir_all(bin.parent().expect("dir"));
    let me = u64::from(std::process::id());
    let child_owned = out
        .lines
        .iter()
        .any(|l| l["lport"] == port && s(&l["old"]) == "LISTEN" && l["pid"].as_u64() == Some(me));
    assert!(
        child_owned,
        "with {caps:?} the server child of a listener opened before start-up must carry this \
         process as owner (needs CAP_SYS_PTRACE for /proc/PID/fd); lines: {:?}\nstderr:\n{}",
        out.lines, out.stderr
    );
    let client_seen = out.lines.iter().any(|l| {
        l["rport"] == port && s(&l["new"]) == "ESTABLISHED" && l["pid"].as_u64() == Some(me)
    });
    assert!(client_seen, "client handshake missing: {:?}", out.lines);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn without_dac_read_search_the_error_names_it() {
    require_root();
    let bin = world_executable_copy();
    let caps: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|c| c != "dac_read_search")
        .collect();
    let out = as_nobody_with(&caps, &bin)
        .args(["watch", "--duration", "1"])
        .output()
        .expect("setpriv (util-linux) runs the tool as nobody");
    let _ = std::fs::remove_dir_all(bin.parent().expect("dir"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tracefs") && stderr.contains("CAP_DAC_READ_SEARCH"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn once_tracing_root_holds_no_capability_and_still_counts_every_event() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    assert_no_capabilities(tracer.pid(), true, "root");
    for _ in 0..5 {
        connect_and_close(&listener, CloseOrder::ServerFirst);
    }
    // Traffic the kernel filters out: its counter must still be readable.
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    connect_and_close(&other, CloseOrder::ServerFirst);
    // The stream's writer thread starts with its first lines: it too holds nothing (made
    // with the writer, before the drop, it kept every capability).
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        std::fs::read_dir(format!("/proc/{}/task", tracer.pid()))
            .expect("tasks")
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "tcptrace-stream")),
        "no stream writer thread after 50 lines"
    );
    assert_no_capabilities(tracer.pid(), true, "root, once the stream is written");
    // Reading the ring buffers and the kernel's counters needs no capability.
    let out = tracer.stop();
    assert_eq!(out.lines.len(), 50, "{}", out.stderr);
    assert_eq!(out.summary["transitions"], 50, "{}", out.summary);
    assert_eq!(out.summary["lost"], 0);
    assert!(
        out.summary["filtered"].as_u64().is_some_and(|n| n >= 10),
        "the kernel's filtered counter was read at exit: {}",
        out.summary
    );
}

/// A replay reads a recording, input from anywhere. As root, `top --replay` reads it with no
/// capability in any thread: the recording reader starts before the run drops the main
/// thread's, so it drops its own once the file is open, and the run waits for that (it
/// warned "other threads keep theirs" before).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_replay_as_root_reads_the_recording_with_no_capability() {
    require_root();
    let dir = std::env::temp_dir().join(format!("tcptrace-replay-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rec = dir.join("big.tcpt");
    let made = Command::new(BIN)
        .args(["generate-recording", "--transitions", "1000000", "-o"])
        .arg(&rec)
        .output()
        .expect("generate-recording");
    assert!(made.status.success(), "{made:?}");
    let child = Command::new(BIN)
        .args(["top", "--once", "--replay"])
        .arg(&rec)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tcptrace top --replay");
    let pid = child.id();
    // While the reader thread reads, every thread of the process holds nothing (the main
    // thread drops its own as the run starts: poll until it has).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = None;
    while seen.is_none() && std::time::Instant::now() < deadline {
        let reading = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "replay-reader")
                })
            })
            .unwrap_or(false);
        if reading {
            let sets = std::panic::catch_unwind(|| capability_sets(pid)).unwrap_or_default();
            if !sets.is_empty() && sets.iter().all(|(_, set, v)| set == "CapBnd" || *v == 0) {
                seen = Some(sets);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("wait");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("keep theirs"), "{stderr}");
    let sets =
        seen.expect("never saw the recording reader at work with no capability in any thread");
    assert!(
        sets.iter().any(|(task, _, _)| task != &pid.to_string()),
        "only the main thread was read: {sets:?}"
    );
}

/// Owner uid and gid of a path.
fn owner(p: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn files_written_under_sudo_belong_to_the_invoking_user_even_where_root_may_not_write() {
    require_root();
    // A directory owned by nobody, mode 0755: root without CAP_DAC_OVERRIDE may not create
    // files in it, and the tracer drops that capability before the exit writes its outputs.
    let dir = std::env::temp_dir().join(format!("tcptrace-sudo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("mkdir");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown to nobody");
    let nobody = (65534, 65534);
    let run = |sudo: bool, args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        if sudo {
            cmd.env("SUDO_UID", "65534").env("SUDO_GID", "65534");
        } else {
            cmd.env_remove("SUDO_UID").env_remove("SUDO_GID");
        }
        let out = cmd.output().expect("run tcptrace");
        assert!(
            out.status.success(),
            "tcptrace {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |name: &str| dir.join(name);
    let ps = |name: &str| p(name).to_str().expect("utf-8").to_owned();

    // A half-second `watch` writing its summary and charts at exit.
    let watch = |sudo: bool, summary: &str, charts: &str| {
        run(
            sudo,
            &[
                "watch",
                "--duration",
                "0.5",
                "--per",
                "none",
                "--summary-json",
                &ps(summary),
                "--svg",
                &ps(charts),
            ],
        );
    };

    // Without sudo: root's files, but written at exit into nobody's directory.
    watch(false, "root.json", "root-charts");
    assert_eq!(owner(&p("root.json")), (0, 0));
    assert!(std::fs::read_to_string(p("root.json")).is_ok_and(|t| t.contains("transitions")));
    assert!(
        std::fs::metadata(p("root-charts/index.html")).is_ok_and(|m| m.len() > 0),
        "the charts were written at exit"
    );

    // Under sudo: every file and directory the tool creates is the invoking user's.
    watch(true, "watch.json", "charts/live");
    // A file that already exists keeps its owner (root's here): only what the tool creates
    // changes hands.
    std::fs::write(p("record.json"), "old").expect("pre-create record.json");
    run(
        true,
        &[
            "record",
            "-o",
            &ps("run.tcpt"),
            "--duration",
            "0.5",
            "--summary-json",
            &ps("record.json"),
        ],
    );
    run(true, &["export", &ps("run.tcpt"), "-o", &ps("run.jsonl")]);
    run(
        true,
        &["report", &ps("run.tcpt"), "--svg", &ps("report-charts")],
    );
    for name in [
        "watch.json",
        "charts",
        "charts/live",
        "charts/live/index.html",
        "charts/live/handshake.svg",
        "run.tcpt",
        "run.jsonl",
        "report-charts",
        "report-charts/index.html",
    ] {
        assert_eq!(owner(&p(name)), nobody, "{name} is not the sudo user's");
        if name.ends_with(".json") || name.ends_with(".html") || name.ends_with(".svg") {
            assert!(
                std::fs::metadata(p(name)).is_ok_and(|m| m.len() > 0),
                "{name} is empty"
            );
        }
    }
    assert_eq!(
        owner(&p("record.json")),
        (0, 0),
        "an existing file changed hands"
    );
    assert!(
        std::fs::read_to_string(p("record.json")).is_ok_and(|t| t.contains("transitions")),
        "the existing file was written at exit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// (thread id, policy, real-time priority) of each thread of `pid`, from
/// /proc/PID/task/*/stat (fields 41 and 40).
fn scheduling(pid: u32) -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        let rest: Vec<&str> = stat[stat.rfind(')').expect("comm end") + 2..]
            .split(' ')
            .collect();
        let num = |field: usize| rest[field - 3].parse::<u32>().expect("number");
        let tid = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .expect("thread id");
        out.push((tid, num(41), num(40)));
    }
    out
}

/// From the default policy and nice value, the thread that reads the rings takes SCHED_RR
/// at priority 1 (the reader starves in the fair class when the load runs in another
/// scheduler group) and the threads started after it stay SCHED_OTHER; a nice value chosen
/// on purpose keeps the whole tracer in the normal class.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_reader_is_real_time_only_when_the_caller_left_the_defaults() {
    require_root();
    const SCHED_OTHER: u32 = 0;
    const SCHED_RR: u32 = 2;
    let tracer = Tracer::start(&["--port", "9"]);
    let pid = tracer.pid();
    let threads = scheduling(pid);
    println!("default: {threads:?}");
    assert!(
        threads.len() > 1,
        "no thread besides the reader: {threads:?}"
    );
    for (tid, policy, priority) in &threads {
        if *tid == pid {
            assert_eq!((*policy, *priority), (SCHED_RR, 1), "{threads:?}");
        } else {
            assert_eq!(*policy, SCHED_OTHER, "{threads:?}");
        }
    }
    tracer.stop();

    let mut nice = Command::new("nice");
    nice.args(["-n", "3", BIN]);
    let tracer = Tracer::start_command(nice, &["--port", "9"]);
    let threads = scheduling(tracer.pid());
    println!("nice -n 3: {threads:?}");
    assert!(
        threads.iter().all(|(_, policy, _)| *policy == SCHED_OTHER),
        "{threads:?}"
    );
    tracer.stop();
}
