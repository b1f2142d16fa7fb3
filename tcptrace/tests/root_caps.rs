//! Root tests of running without root, as the systemd unit does: the capabilities listed in
//! `deploy/systemd/tcptrace.service` (read from the unit, so the two cannot drift apart) are
//! enough for an unprivileged user under NoNewPrivileges to trace and to name the owners of
//! sockets that existed before start-up; without CAP_DAC_READ_SEARCH the error names it.
//!
//! `setpriv` (util-linux) plays systemd's part: user nobody, the unit's capabilities as
//! ambient, inheritable and bounding set, and `--no-new-privs`.

mod common;

use std::{
    io::Read as _,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
};

use common::{BIN, Tracer, require_root, s};

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
