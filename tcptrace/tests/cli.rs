//! The command line, without root: flag validation and help. Errors must name the flag and
//! the fix, and exit with clap's usage code (2) before anything touches the kernel.

use assert_cmd::Command;
use predicates::prelude::*;

fn tcptrace() -> Command {
    Command::cargo_bin("tcptrace").expect("binary")
}

#[test]
fn out_of_range_port_names_the_flag() {
    for flag in ["--port", "--lport", "--rport"] {
        tcptrace()
            .args(["watch", flag, "70000"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(flag))
            .stderr(predicate::str::contains("port 70000 is out of range"));
    }
}

#[test]
fn bad_port_lists_are_rejected() {
    tcptrace()
        .args(["--port", "80,http"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("\"http\" is not a port number"));
    tcptrace()
        .args(["watch", "--lport", "9000-8000"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("reversed"));
}

#[test]
fn unknown_format_lists_the_choices() {
    tcptrace()
        .args(["watch", "--format", "xml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--format"))
        .stderr(predicate::str::contains("text"))
        .stderr(predicate::str::contains("json"));
}

#[test]
fn bad_duration_and_conflicting_families() {
    tcptrace()
        .args(["watch", "--duration=-1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--duration"));
    tcptrace()
        .args(["watch", "-4", "-6"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot be used with"));
}

#[test]
fn help_describes_watch_and_its_filters() {
    tcptrace()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("watch"))
        .stdout(predicate::str::contains("--rport"));
}

#[test]
fn top_without_a_terminal_names_watch_and_once() {
    // assert_cmd gives the child a pipe for stdout: no escape codes may go into it.
    tcptrace()
        .arg("top")
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("needs a terminal"))
        .stderr(predicate::str::contains("tcptrace watch"))
        .stderr(predicate::str::contains("--once"));
}

#[test]
fn top_flags_are_checked() {
    tcptrace()
        .args(["top", "--interval", "0.01"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--interval"))
        .stderr(predicate::str::contains("0.1 to 10"));
    tcptrace()
        .args(["top", "--speed", "2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--replay"));
    tcptrace()
        .args(["top", "--replay", "x.jsonl", "--speed", "fast"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("max"));
    tcptrace()
        .args(["top", "--once", "--format", "csv"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--format json"));
}

#[test]
fn top_once_replays_a_recording_without_root() {
    // With the defaults too (1x, a 1 s interval): `--once` plays the recording to its end,
    // where it ran for one interval at 1x (the first second of the recording only).
    for extra in [&["--interval", "10", "--speed", "max"][..], &[][..]] {
        top_once_replay(extra);
    }
}

fn top_once_replay(extra: &[&str]) {
    let out = tcptrace()
        .args(["top", "--once", "--format", "json"])
        .args(extra)
        .arg("--replay")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/loopback.jsonl"
        ))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("tracing TCP"),
        "a replay traces nothing: {stderr}"
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON snapshot");
    let report = tcptrace()
        .args(["report", "--format", "json"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/loopback.jsonl"
        ))
        .output()
        .expect("report");
    let summary: serde_json::Value = serde_json::from_slice(&report.stdout).expect("report JSON");
    // The replay through the live loop ends with exactly the report's summary.
    assert_eq!(snap["summary"], summary);
    let d = &snap["dashboard"];
    assert_eq!(d["close_wait"].as_array().map(Vec::len), Some(1));
    let closed = d["rates"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "closed"))
        .expect("closed rate");
    assert_eq!(closed["total"], summary["overall"]["connections"]);
}

#[test]
fn outputs_failing_at_exit_are_each_said_and_exit_74() {
    // /dev/full takes the open and fails every write (ENOSPC): the snapshot on stdout and
    // the --summary-json file both fail at exit; each is said, and the code is 74, not the
    // 1 an early return would give.
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["top", "--once", "--format", "json", "--interval", "10"])
        .args(["--speed", "max", "--summary-json", "/dev/full", "--replay"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/loopback.jsonl"
        ))
        .stdout(full().expect("open /dev/full"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    assert!(stderr.contains("writing the snapshot"), "{stderr}");
    assert!(
        stderr.contains("writing --summary-json file /dev/full"),
        "{stderr}"
    );
}

#[test]
fn serve_rejects_bad_group_ports_and_listen_addresses() {
    tcptrace()
        .args(["serve", "--group-ports", "80,,443"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--group-ports"))
        .stderr(predicate::str::contains("empty entry"));
    tcptrace()
        .args(["serve", "--group-ports", "1000-1100"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at most 32"));
    tcptrace()
        .args(["serve", "--group-processes", "500"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("from 0 to 20"));
    tcptrace()
        .args(["serve", "--listen", "localhost"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("e.g. 127.0.0.1:10089"));
}

/// The listener is bound before the eBPF program is loaded: these fail at once, root or not.
#[test]
fn serve_on_a_taken_port_names_the_holder_command() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    tcptrace()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "cannot serve on --listen 127.0.0.1:{port}"
        )))
        .stderr(predicate::str::contains(format!(
            "ss -ltnp 'sport = :{port}'"
        )));
}

#[test]
fn serve_on_an_address_of_another_host_says_so() {
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this host; nothing is sent.
    tcptrace()
        .args(["serve", "--listen", "192.0.2.1:10089"])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "192.0.2.1 is not an address of this host",
        ));
}

#[test]
fn tcpstates_flags_are_accepted() {
    // -L/-D are --lport/--rport, -T is accepted (TIME is always printed), -w widens.
    tcptrace()
        .args(["watch", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("-L, --lport"))
        .stdout(predicate::str::contains("-D, --rport"))
        .stdout(predicate::str::contains("-T, --timestamp"))
        .stdout(predicate::str::contains("-w, --wide"))
        .stdout(predicate::str::contains("csv"));
    tcptrace()
        .args(["watch", "-L", "70000"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--lport"));
}

#[test]
fn report_refuses_csv_and_names_the_alternatives() {
    tcptrace()
        .args([
            "report",
            "tests/fixtures/one-connection.jsonl",
            "--format",
            "csv",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--format csv is for the line stream",
        ))
        .stderr(predicate::str::contains("--format json"));
}

#[test]
fn recordings_refuse_names_of_other_outputs_and_name_the_right_command() {
    let dir = std::env::temp_dir().join(format!("tcptrace-cli-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let at = |name: &str| dir.join(name).display().to_string();
    // `record` says so before it needs root, and before it creates anything.
    for (cmd, name, hint) in [
        (["record", "-o"], "run.csv", "tcptrace watch --format csv"),
        (["generate-recording", "-o"], "run.json", "--summary-json"),
        (["record", "-o"], "run.svg", "--svg DIR"),
        (["generate-recording", "-o"], "run.zst", ".jsonl.zst"),
    ] {
        let mut c = tcptrace();
        c.args(cmd).arg(at(name));
        if cmd[0] == "record" {
            // Bounded even if the check were gone (as root it would trace).
            c.args(["--duration", "1"]);
        }
        c.assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "{name}: not a recording's name"
            )))
            .stderr(predicate::str::contains(hint));
        assert!(!dir.join(name).exists(), "{name} was created");
    }
    // export's .csv is the line stream; another such name is refused too.
    tcptrace()
        .args(["export", "tests/fixtures/one-connection.jsonl", "-o"])
        .arg(at("out.json"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a recording's name"));
    for name in ["a.tcpt", "b.jsonl", "c.jsonl.zst", "d"] {
        tcptrace()
            .args(["generate-recording", "--transitions", "10", "-o"])
            .arg(at(name))
            .assert()
            .success();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn man_and_completions_print_from_the_binary() {
    tcptrace()
        .arg("man")
        .assert()
        .success()
        .stdout(predicate::str::contains(".TH tcptrace 1"));
    tcptrace()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicate::str::contains("watch record report"));
}

#[test]
fn a_missing_recording_is_named_with_the_os_error_once() {
    let out = tcptrace()
        .args(["report", "/nonexistent/tcptrace-no-such.tcpt"])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let stderr = String::from_utf8_lossy(&out);
    assert!(
        stderr.contains("/nonexistent/tcptrace-no-such.tcpt: cannot read the recording"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn export_per_none_is_a_usage_error() {
    let out = std::env::temp_dir().join(format!("tcptrace-cli-{}.csv", std::process::id()));
    tcptrace()
        .args([
            "export",
            "tests/fixtures/one-connection.jsonl",
            "--per",
            "none",
            "-o",
        ])
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--per none writes no lines"));
    assert!(!out.exists(), "{} was written", out.display());
}

#[test]
fn bad_socket_filters_name_the_problem_and_the_fix() {
    for (args, says) in [
        (
            vec!["--pid", "4294967290"],
            "--pid 4294967290: no such process",
        ),
        (
            vec!["--comm", "a-very-long-process-name"],
            "use --comm \"a-very-long-pro\"",
        ),
        (
            vec!["--cgroup", "/sys/fs/cgroup/no-such.slice/none.service"],
            "--cgroup /sys/fs/cgroup/no-such.slice/none.service",
        ),
        (
            vec!["--netns", "/run/netns/tcptrace-no-such-namespace"],
            "give a namespace's path (/run/netns/NAME, /proc/PID/ns/net) or its inode number",
        ),
        (
            vec!["--netns", "123"],
            "no network namespace with that inode",
        ),
    ] {
        tcptrace()
            .arg("watch")
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(says));
    }
}
