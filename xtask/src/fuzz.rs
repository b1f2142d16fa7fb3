//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `tcptrace/fuzz` (the ring-buffer record
//! decoder, the recording reader on any bytes, the binary record decoder behind valid frames)
//! for a bounded time or number of cases, installing what they need first (the nightly
//! toolchain libFuzzer builds with, and `cargo-fuzz`), so a fresh machine runs it as is.
//! `cargo xtask test` runs it for about a minute; `--runs 10000000` is the long run.
//! Any crash, panic, hang (10 s per case) or memory blow-up (2 GiB) fails the task and
//! names the input libFuzzer saved.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// The fuzz targets (`tcptrace/fuzz/fuzz_targets/*.rs`).
pub const TARGETS: [&str; 3] = ["decode_bytes", "recording", "binary_records"];

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Seconds of fuzzing in all, split evenly over the targets.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Run each target for this many cases instead (no time limit), e.g. 10000000.
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// Only these targets (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
}

/// A `cargo` through the rustup proxy (so `+nightly` works), without what the outer cargo
/// set for this xtask.
fn proxy_cargo() -> Command {
    let mut c = Command::new("cargo");
    for v in [
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(v);
    }
    c
}

fn ensure_tools() -> Result<()> {
    let list = crate::util::cmd_output("rustup", &["toolchain", "list"])?;
    if !list.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask fuzz: installing the nightly toolchain (libFuzzer needs it)");
        crate::util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let has_fuzz = proxy_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_fuzz {
        eprintln!("xtask fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        crate::util::run(proxy_cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// What one target's run did.
pub struct Outcome {
    pub target: String,
    pub runs: u64,
    pub secs: f64,
}

fn run_target(root: &Path, target: &str, args: &Args, secs: u64) -> Result<Outcome> {
    let corpus = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = root.join("tcptrace/fuzz/seeds").join(target);
    let mut cmd = proxy_cargo();
    cmd.current_dir(root.join("tcptrace"))
        .args(["+nightly", "fuzz", "run", target])
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.args(["--", "-timeout=10", "-rss_limit_mb=2048", "-max_len=16384"]);
    match args.runs {
        Some(n) => cmd.arg(format!("-runs={n}")),
        None => cmd.arg(format!("-max_total_time={secs}")),
    };
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    eprintln!("xtask fuzz: {target}");
    let t = Instant::now();
    let mut child = cmd.spawn().context("starting cargo +nightly fuzz run")?;
    let stderr = child.stderr.take().context("fuzz stderr")?;
    let mut runs = None;
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        // libFuzzer's last line: "Done 3300571 runs in 16 second(s)".
        if let Some(rest) = line.strip_prefix("Done ") {
            runs = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        // Keep what libFuzzer and the panic said, not the backtrace frames.
        let t = line.trim_start();
        let frame = t.starts_with("at ")
            || t.starts_with('#')
            || t.split_once(": ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
        if !frame {
            if tail.len() == 60 {
                tail.remove(0);
            }
            tail.push(line);
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}); libFuzzer said:\n{}\n(reproduce with \
             `cd tcptrace && cargo +nightly fuzz run {target} ARTIFACT`)",
            tail.join("\n")
        );
    }
    let runs = runs.with_context(|| {
        format!(
            "fuzz target {target}: no \"Done N runs\" line from libFuzzer:\n{}",
            tail.join("\n")
        )
    })?;
    Ok(Outcome {
        target: target.to_owned(),
        runs,
        secs: t.elapsed().as_secs_f64(),
    })
}

pub fn fuzz(args: &Args) -> Result<Vec<Outcome>> {
    ensure_tools()?;
    let root = crate::workspace_root();
    let targets: Vec<&str> = TARGETS
        .into_iter()
        .filter(|t| args.target.is_empty() || args.target.iter().any(|a| a == t))
        .collect();
    if targets.is_empty() {
        bail!(
            "no such fuzz target; the targets are {}",
            TARGETS.join(", ")
        );
    }
    let secs = (args.seconds / targets.len() as u64).max(1);
    // Build once before timing, so the first target's time is fuzzing, not compiling.
    crate::util::run(
        proxy_cargo()
            .current_dir(root.join("tcptrace"))
            .args(["+nightly", "fuzz", "build"]),
    )?;
    let mut out = Vec::new();
    for t in targets {
        let o = run_target(&root, t, args, secs)?;
        eprintln!(
            "  {}: {} cases in {:.0}s, no crash, hang or leak",
            o.target, o.runs, o.secs
        );
        out.push(o);
    }
    Ok(out)
}
