//! `tcptrace report` on checked-in recordings: the summary (text and JSON) and every SVG are
//! snapshot-tested, a real recording reports exactly the summary of the live run that made
//! it, and bad files fail with errors naming the file and line. No root needed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcptrace-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs `tcptrace report ARGS` in the fixtures directory (so messages name short paths).
fn report(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .current_dir(fixture(""))
        .arg("report")
        .args(args)
        .output()
        .expect("run tcptrace");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = report(args);
    assert!(success, "tcptrace report {args:?} failed: {stderr}");
    stdout
}

fn err(args: &[&str]) -> String {
    let (success, _, stderr) = report(args);
    assert!(!success, "tcptrace report {args:?} should fail");
    stderr
}

#[test]
fn report_of_a_live_recording_equals_the_live_summary() {
    // Both files come from one `tcptrace record --summary-json` run on loopback.
    let live = std::fs::read_to_string(fixture("loopback.live-summary.json")).expect("read");
    assert_eq!(ok(&["loopback.jsonl", "--format", "json"]), live);
}

#[test]
fn text_and_json_summaries() {
    for name in ["loopback", "one-connection", "no-events"] {
        let file = format!("{name}.jsonl");
        insta::assert_snapshot!(format!("{name}.txt"), ok(&[&file]));
        insta::assert_snapshot!(format!("{name}.json"), ok(&[&file, "--format", "json"]));
    }
}

#[test]
fn compressed_recordings_report_the_same() {
    let dir = fresh_dir("zst");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let plain = std::fs::read(fixture("loopback.jsonl")).expect("read");
    let zst = dir.join("loopback.jsonl.zst");
    std::fs::write(&zst, zstd::encode_all(&plain[..], 3).expect("compress")).expect("write");
    let z = zst.to_string_lossy().into_owned();
    assert_eq!(
        ok(&[&z, "--format", "json"]),
        ok(&["loopback.jsonl", "--format", "json"])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn svg_charts_and_index() {
    for name in ["loopback", "one-connection", "no-events"] {
        let dir = fresh_dir(name);
        let d = dir.to_string_lossy().into_owned();
        ok(&[&format!("{name}.jsonl"), "--svg", &d]);
        for chart in ["handshake", "teardown", "timeline", "states", "slowest"] {
            let svg = std::fs::read_to_string(dir.join(format!("{chart}.svg"))).expect("svg");
            assert!(svg.starts_with("<svg") && svg.contains("width=\"1200\""));
            insta::assert_snapshot!(format!("{name}-{chart}.svg"), svg);
        }
        let html = std::fs::read_to_string(dir.join("index.html")).expect("index");
        for chart in ["handshake", "teardown", "timeline", "states", "slowest"] {
            assert!(
                html.contains(&format!("src=\"{chart}.svg\"")),
                "{chart} missing"
            );
        }
        insta::assert_snapshot!(format!("{name}-index.html"), html);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn empty_charts_say_no_data() {
    let dir = fresh_dir("nodata");
    let d = dir.to_string_lossy().into_owned();
    ok(&["no-events.jsonl", "--svg", &d]);
    for chart in ["handshake", "teardown", "timeline", "slowest"] {
        let svg = std::fs::read_to_string(dir.join(format!("{chart}.svg"))).expect("svg");
        assert!(svg.contains("no data"), "{chart}.svg has no 'no data' text");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_recordings_name_the_file_and_line() {
    insta::assert_snapshot!("error-empty", err(&["empty.jsonl"]));
    insta::assert_snapshot!("error-not-a-recording", err(&["not-a-recording.jsonl"]));
    insta::assert_snapshot!("error-future-version", err(&["future-version.jsonl"]));
    insta::assert_snapshot!("error-corrupt", err(&["corrupt.jsonl"]));
    // A corrupt line followed by more lines is not truncation.
    assert!(err(&["corrupt.jsonl", "--allow-truncated"]).contains("corrupt.jsonl:4: corrupt line"));
    insta::assert_snapshot!("error-truncated", err(&["truncated.jsonl"]));
    // Found by the `recording` fuzz target: zstd data that fails before the first line.
    let e = err(&["damaged-zstd.jsonl.zst"]);
    assert!(
        e.contains("damaged-zstd.jsonl.zst: byte 0: damaged recording: the file starts as zstd"),
        "{e}"
    );
    let e = err(&["zstd-cut-in-first-line.jsonl.zst"]);
    assert!(
        e.contains("zstd-cut-in-first-line.jsonl.zst:1: corrupt line: cannot be read"),
        "{e}"
    );
    let missing = err(&["no-such-file.jsonl"]);
    assert!(
        missing.contains("no-such-file.jsonl: cannot read the recording"),
        "{missing}"
    );
}

#[test]
fn truncated_recordings_report_their_valid_prefix_when_allowed() {
    let out = ok(&["truncated.jsonl", "--allow-truncated", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["events"], 4);
    assert_eq!(v["transitions"], 4);
    // The kernel's counters were in the end record the file never got: unknown, and said so.
    assert_eq!(v["truncated"], true, "{out}");
    let text = ok(&["truncated.jsonl", "--allow-truncated"]);
    assert!(
        text.contains("lost, filtered and undecodable are unknown"),
        "{text}"
    );
    // A whole recording says nothing of the kind.
    let whole = ok(&["loopback.jsonl", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&whole).expect("json");
    assert!(v.get("truncated").is_none(), "{whole}");
}

#[test]
fn generated_recordings_are_reproducible_and_report() {
    let dir = fresh_dir("gen");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let a = dir.join("a.jsonl");
    let b = dir.join("b.jsonl");
    for p in [&a, &b] {
        let st = Command::new(BIN)
            .args(["generate-recording", "--transitions", "5000", "-o"])
            .arg(p)
            .status()
            .expect("run");
        assert!(st.success());
    }
    let same = std::fs::read(&a).expect("a") == std::fs::read(&b).expect("b");
    assert!(same, "two runs with the same seed wrote different files");
    let out = ok(&[&a.to_string_lossy(), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(v["transitions"].as_u64().expect("n") >= 5000);
    let closes = &v["overall"]["closes"];
    for kind in ["fin", "reset_received", "reset_sent", "refused"] {
        assert!(
            closes[kind].as_u64().unwrap_or(0) > 0,
            "no {kind} closes: {closes}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tcptrace export FROM -o TO`, which must succeed.
fn export(from: &Path, to: &Path) {
    let out = Command::new(BIN)
        .arg("export")
        .arg(from)
        .arg("-o")
        .arg(to)
        .output()
        .expect("run tcptrace export");
    assert!(
        out.status.success(),
        "export {} failed: {}",
        from.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every output of `report` (text, JSON, each SVG and index.html) for `file`.
fn all_outputs(file: &Path, tag: &str) -> Vec<(String, Vec<u8>)> {
    let f = file.to_string_lossy().into_owned();
    let mut v = vec![
        ("text".to_owned(), ok(&[&f]).into_bytes()),
        (
            "json".to_owned(),
            ok(&[&f, "--format", "json"]).into_bytes(),
        ),
    ];
    let dir = fresh_dir(tag);
    ok(&[&f, "--svg", &dir.to_string_lossy()]);
    for name in [
        "handshake.svg",
        "teardown.svg",
        "timeline.svg",
        "states.svg",
        "slowest.svg",
        "index.html",
    ] {
        v.push((
            name.to_owned(),
            std::fs::read(dir.join(name)).expect("chart"),
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    v
}

#[test]
fn binary_recordings_report_byte_for_byte_what_their_json_lines_source_does() {
    for name in ["loopback", "one-connection", "no-events"] {
        let dir = fresh_dir(&format!("bin-{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let bin = dir.join(format!("{name}.tcpt"));
        export(&fixture(&format!("{name}.jsonl")), &bin);
        let bytes = std::fs::read(&bin).expect("read");
        assert!(bytes.starts_with(b"\x89TCP\r\n\x1a\n"), "{name}: no magic");
        // Under the fixture's own name (chart titles show it): the content says binary.
        let same_name = dir.join(format!("{name}.jsonl"));
        std::fs::rename(&bin, &same_name).expect("rename");
        let want = all_outputs(&fixture(&format!("{name}.jsonl")), &format!("want-{name}"));
        let got = all_outputs(&same_name, &format!("got-{name}"));
        for ((what, w), (_, g)) in want.iter().zip(&got) {
            assert!(
                w == g,
                "{name}: {what} differs between JSON Lines and binary"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn export_to_json_lines_gives_back_the_same_lines() {
    let dir = fresh_dir("export-back");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for name in ["loopback", "one-connection"] {
        let src = fixture(&format!("{name}.jsonl"));
        let bin = dir.join(format!("{name}.tcpt"));
        let back = dir.join(format!("{name}.jsonl"));
        export(&src, &bin);
        export(&bin, &back);
        let want = std::fs::read_to_string(&src).expect("read");
        let got = std::fs::read_to_string(&back).expect("read");
        let (want, got): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
        assert_eq!(want.len(), got.len());
        // The header is the same but for the version (an export writes the current one);
        // events are identical; the end line gains the later `missed` counter.
        let header = |s: &str| -> serde_json::Value {
            let mut v: serde_json::Value = serde_json::from_str(s).expect("json");
            v["tcptrace_recording"]["version"] = 0.into();
            v
        };
        assert_eq!(header(want[0]), header(got[0]), "{name}");
        assert_eq!(want[1..want.len() - 1], got[1..got.len() - 1], "{name}");
        let end = |s: &str| -> serde_json::Value {
            let mut v: serde_json::Value = serde_json::from_str(s).expect("json");
            v["end"]["counters"]["missed"] = 0.into();
            v
        };
        assert_eq!(end(want[want.len() - 1]), end(got[got.len() - 1]));
        // And a compressed JSON Lines export reads the same.
        let zst = dir.join(format!("{name}.jsonl.zst"));
        export(&bin, &zst);
        let z = zst.to_string_lossy().into_owned();
        assert_eq!(
            ok(&[&z, "--format", "json"]),
            ok(&[&src.to_string_lossy(), "--format", "json"])
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A generated binary recording of several blocks, its bytes and its event count.
fn generated_binary(dir: &Path) -> (PathBuf, Vec<u8>) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join("gen.tcpt");
    let st = Command::new(BIN)
        .args(["generate-recording", "--transitions", "5000", "-o"])
        .arg(&path)
        .status()
        .expect("run");
    assert!(st.success());
    let bytes = std::fs::read(&path).expect("read");
    (path, bytes)
}

#[test]
fn bad_binary_recordings_name_the_file_the_offset_and_the_fix() {
    let dir = fresh_dir("bad-bin");
    let (_, bytes) = generated_binary(&dir);
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let first_block = 16 + header_len;
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).expect("write");
        p.to_string_lossy().into_owned()
    };
    // Cut inside the second block: truncated, at that block's offset.
    let len1 = u32::from_le_bytes(
        bytes[first_block + 8..first_block + 12]
            .try_into()
            .expect("4"),
    );
    let second = first_block + 12 + len1 as usize;
    let cut = write("cut.tcpt", &bytes[..second + 20]);
    let e = err(&[&cut]);
    assert!(
        e.contains(&format!(
            "cut.tcpt: byte {second}: the recording is truncated"
        )) && e.contains("after 1024 events; pass --allow-truncated"),
        "{e}"
    );
    let out = ok(&[&cut, "--allow-truncated", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["events"], 1024);
    assert_eq!(v["truncated"], true);
    // Without the end block: truncated too.
    let no_end = write("no-end.tcpt", &bytes[..bytes.len() - 40]);
    assert!(err(&[&no_end]).contains("the recording is truncated"));
    // A flipped bit in the first block's frame: damaged, not truncated, flag or not.
    let mut flipped = bytes.clone();
    flipped[first_block + 12 + 40] ^= 0x10;
    let flipped = write("flipped.tcpt", &flipped);
    for extra in [&[][..], &["--allow-truncated"][..]] {
        let mut args = vec![flipped.as_str()];
        args.extend_from_slice(extra);
        let e = err(&args);
        assert!(
            e.contains(&format!("flipped.tcpt: byte {first_block}"))
                && e.contains("damaged recording")
                && e.contains("copy it again"),
            "{e}"
        );
    }
    // A future version.
    let mut future = bytes.clone();
    future[8] = 4;
    let e = err(&[&write("future.tcpt", &future)]);
    assert!(
        e.contains("future.tcpt: byte 8: binary recording format version 4 is not supported"),
        "{e}"
    );
    // Bytes after the end record.
    let mut after = bytes.clone();
    after.push(0);
    let e = err(&[&write("after.tcpt", &after)]);
    assert!(
        e.contains(&format!(
            "after.tcpt: byte {}: damaged recording: data after the end record",
            bytes.len()
        )),
        "{e}"
    );
    // Cut inside the header.
    let e = err(&[&write("head.tcpt", &bytes[..20])]);
    assert!(
        e.contains("head.tcpt: byte 20: damaged recording: the file ends inside the header"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generated_binary_recordings_are_reproducible() {
    let dir = fresh_dir("gen-bin");
    let (a, bytes) = generated_binary(&dir);
    let b = dir.join("again.tcpt");
    std::fs::rename(&a, &b).expect("rename");
    let (_, again) = generated_binary(&dir);
    assert!(
        bytes == again,
        "two runs with the same seed wrote different files"
    );
    let j = dir.join("gen.jsonl");
    export(&b, &j);
    assert_eq!(
        ok(&[&b.to_string_lossy(), "--format", "json"]),
        ok(&[&j.to_string_lossy(), "--format", "json"])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn export_to_csv_writes_the_stream_watch_would_have_printed() {
    let dir = fresh_dir("csv");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let summary: serde_json::Value =
        serde_json::from_str(&ok(&["loopback.jsonl", "--format", "json"])).expect("summary");
    for (per, rows) in [
        (
            "transition",
            summary["transitions"].as_u64().expect("transitions"),
        ),
        (
            "connection",
            summary["overall"]["connections"]
                .as_u64()
                .expect("connections"),
        ),
    ] {
        let out = dir.join(format!("{per}.csv"));
        let status = Command::new(BIN)
            .current_dir(fixture(""))
            .args(["export", "loopback.jsonl", "-o"])
            .arg(&out)
            .args(["--per", per])
            .status()
            .expect("run");
        assert!(status.success());
        let text = std::fs::read_to_string(&out).expect("csv");
        let mut lines = text.lines();
        let header = lines.next().expect("header row");
        assert!(header.contains("laddr") && header.contains(','), "{header}");
        assert_eq!(lines.count() as u64, rows, "{per}: one row per {per}");
    }
    assert!(err(&["loopback.jsonl", "--format", "csv"]).contains("export"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The socket's cgroup, namespace and close counters survive every recording format: a JSON
/// Lines recording carrying them, exported to binary and back, gives the same lines, and the
/// binary one's connection CSV shows them (1002 bytes acked less the SYN and the acked FIN is
/// 1000 payload bytes sent; FIN_WAIT2 -> CLOSE is the kernel's way into TIME_WAIT, so 500
/// bytes received less the peer's FIN is 499).
#[test]
fn identity_and_close_counters_survive_both_formats() {
    let dir = fresh_dir("ident");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bin = dir.join("identity.tcpt");
    let back = dir.join("identity.jsonl");
    export(&fixture("identity.jsonl"), &bin);
    export(&bin, &back);
    let events = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .expect("read")
            .lines()
            .filter(|l| l.starts_with("{\"ev\""))
            .map(str::to_owned)
            .collect()
    };
    let want = events(&fixture("identity.jsonl"));
    assert_eq!(events(&back), want);
    assert!(want[0].contains("\"cgroup_id\":12345") && want[4].contains("\"close\""));
    let csv = dir.join("conn.csv");
    let status = Command::new(BIN)
        .args(["export"])
        .arg(&bin)
        .arg("-o")
        .arg(&csv)
        .args(["--per", "connection"])
        .status()
        .expect("run");
    assert!(status.success());
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let row: Vec<&str> = lines.next().expect("one connection").split(',').collect();
    let col = |name: &str| {
        let i = header.iter().position(|h| *h == name).expect(name);
        row[i]
    };
    assert_eq!(
        [
            col("cgroup_id"),
            col("netns"),
            col("bytes_sent"),
            col("bytes_received"),
            col("retrans_segs"),
            col("srtt_us"),
        ],
        ["12345", "4026531840", "1000", "499", "2", "45"],
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
