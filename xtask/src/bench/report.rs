//! The benchmark's `tcptrace report` section: how fast a recording replays, timed on a
//! synthetic 1,000,000-transition recording in the binary format and in JSON Lines
//! (compressed and plain), with what writing each cost.

use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    json_u64, pass,
    proc::{collect_lines, snapshot, wait_rusage},
};

pub fn report_section(bin: &Path, dir: &Path, transitions: u64) -> String {
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
