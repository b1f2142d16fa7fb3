//! Orchestration for tcptrace: toolchain setup, running the tool as root, the test tiers and
//! the benchmarks. `cargo xtask --help` lists the commands.

mod bench;
mod fuzz;
mod setup;
mod util;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tcptrace build, run, test and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and check the eBPF toolchain (Debian packages, bpf-linker, linked rustc).
    Setup {
        /// Also install the packages the root tests and benchmarks use.
        #[arg(long)]
        test_packages: bool,
    },
    /// Build the kernel program and the tool (release).
    Build,
    /// Set up if needed, build, then run tcptrace as root with the given arguments.
    Run {
        /// Arguments for tcptrace (after `--`), e.g. `-- watch --port 443`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// fmt, clippy, unit tests, a minute of fuzzing, then the root integration tests (which
    /// load the real program).
    Test {
        /// Skip the root integration tests (they are the ones that load the eBPF program).
        #[arg(long)]
        no_root: bool,
    },
    /// Fuzz the record decoder and the recording reader (cargo-fuzz, nightly; installs what
    /// it needs): about a minute by default, `--runs 10000000` for the long run.
    Fuzz(fuzz::Args),
    /// Loopback churn untraced vs traced (tcptrace, libbpf-tools tcpstates): rates, CPU per
    /// transition, lost events, memory; then `tcptrace report` throughput. Needs root.
    Bench(bench::Args),
    /// The benchmark's loopback churn load alone (for profiling a tracer started by hand).
    #[command(hide = true)]
    BenchChurn(bench::ChurnArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup { test_packages } => setup::setup(&setup::Options { test_packages }),
        Task::Build => {
            setup::setup(&setup::Options {
                test_packages: false,
            })?;
            build_release().map(|_| ())
        }
        Task::Run { args } => run(&args),
        Task::Test { no_root } => test(no_root),
        Task::Fuzz(args) => fuzz::fuzz(&args).map(|_| ()),
        Task::Bench(args) => bench::bench(&args),
        Task::BenchChurn(args) => bench::churn_main(&args),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    c.current_dir(workspace_root());
    c
}

/// Builds the release binary and returns its path.
pub fn build_release() -> Result<PathBuf> {
    eprintln!("xtask: building tcptrace (release)");
    util::run(cargo().args(["build", "--release", "-p", "tcptrace"]))?;
    Ok(workspace_root().join("target/release/tcptrace"))
}

pub fn is_root() -> bool {
    util::cmd_output("id", &["-u"]).is_ok_and(|s| s.trim() == "0")
}

fn run(args: &[String]) -> Result<()> {
    setup::setup(&setup::Options {
        test_packages: false,
    })?;
    let bin = build_release()?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        eprintln!("xtask: tcptrace loads an eBPF program, so it runs as root (sudo)");
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    };
    cmd.args(args);
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Runs cargo, echoing its output, and returns the sum of "N passed" over test results.
fn cargo_test_counting(args: &[&str]) -> Result<(u64, u64)> {
    let mut child = cargo()
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let (mut passed, mut ignored) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let part = part.trim();
                if let Some(n) = part.strip_suffix(" passed") {
                    passed += n.trim().parse::<u64>().unwrap_or(0);
                }
                if let Some(n) = part.strip_suffix(" ignored") {
                    ignored += n.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok((passed, ignored))
}

/// The integration test binaries whose tests need root (all `#[ignore]`d otherwise).
const ROOT_TESTS: [&str; 3] = ["root", "root_report", "lab"];

fn step(name: &str) -> Instant {
    eprintln!("\nxtask test: {name}");
    Instant::now()
}

fn test(no_root: bool) -> Result<()> {
    let start = Instant::now();
    let root = is_root();
    if !root && !no_root {
        bail!(
            "the root integration tests load the eBPF program and need root: run \
             `sudo -E cargo xtask test`, or `cargo xtask test --no-root` to run only the \
             tiers that need no root (the root tier is then NOT run)"
        );
    }
    let t = step("toolchain (cargo xtask setup --test-packages)");
    setup::setup(&setup::Options {
        test_packages: root,
    })?;
    eprintln!("  ok in {:.1}s", t.elapsed().as_secs_f64());

    let t = step("cargo fmt --check");
    util::run(cargo().args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    eprintln!("  ok in {:.1}s", t.elapsed().as_secs_f64());

    let t = step("cargo clippy --all-targets -- -D warnings");
    util::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    eprintln!("  ok in {:.1}s", t.elapsed().as_secs_f64());

    let t = step("unit, snapshot and CLI tests (no root)");
    let (unit_passed, _) =
        cargo_test_counting(&["test", "--workspace", "--exclude", "tcptrace-ebpf"])?;
    eprintln!(
        "  {unit_passed} passed in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let t = step("fuzzing (cargo xtask fuzz --seconds 60)");
    let fuzzed = fuzz::fuzz(&fuzz::Args {
        seconds: 60,
        runs: None,
        target: Vec::new(),
    })?;
    eprintln!(
        "  {} cases over {} targets in {:.1}s, no crash",
        fuzzed.iter().map(|o| o.runs).sum::<u64>(),
        fuzzed.len(),
        t.elapsed().as_secs_f64()
    );

    if no_root {
        eprintln!(
            "\nxtask test: WARNING: root integration tests NOT run (--no-root); the eBPF \
             program was not loaded"
        );
        eprintln!("{unit_passed} passed, 0 failed");
        return Ok(());
    }
    let t = step("root integration tests (load the real eBPF program; one at a time)");
    // Every root test binary: loopback, recordings, and the network-namespace lab.
    let mut root_passed = 0;
    for test in ROOT_TESTS {
        let (passed, _) = cargo_test_counting(&[
            "test",
            "-p",
            "tcptrace",
            "--test",
            test,
            "--",
            "--ignored",
            "--test-threads=1",
        ])?;
        eprintln!("  --test {test}: {passed} passed");
        root_passed += passed;
    }
    if root_passed == 0 {
        bail!("no root integration test ran");
    }
    eprintln!(
        "  {root_passed} root integration tests passed in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "\nxtask test: all tiers passed in {:.0}s: {unit_passed} unit/CLI tests, {root_passed} root integration tests",
        start.elapsed().as_secs_f64()
    );
    println!("{} passed, 0 failed", unit_passed + root_passed);
    Ok(())
}
