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
