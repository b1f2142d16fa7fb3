//! `cargo xtask setup`: installs and checks the eBPF toolchain on a fresh Debian 12 machine.
//!
//! The rustup toolchains on this machine kind have no `rust-src`, so `-Z build-std=core` is
//! impossible. Debian's security suite ships a BPF-capable rustc (`rustc-web`) with prebuilt
//! `core` for `bpfel-unknown-none`; we register it with rustup as a linked toolchain
//! ([`BPF_TOOLCHAIN`]) and build `bpf-linker` against Debian's LLVM 22. Every step checks
//! first and only acts when something is missing, so a second run takes seconds.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cmd_output, run};

/// Name of the rustup toolchain linked to Debian's BPF-capable rustc.
pub const BPF_TOOLCHAIN: &str = "tcptrace-bpf";

/// Debian packages the eBPF build needs (bookworm-security).
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];

/// Debian packages the root integration tests and benchmarks need.
pub const TEST_PACKAGES: &[&str] = &[
    "chromium", // renders the SVG charts to PNG in tcptrace/tests/report_render.rs
    "dpkg-dev", // dpkg-shlibdeps for the .deb's Depends (cargo xtask dist)
    "iproute2",
    "iptables",
    "libbpf-tools", // tcpstates and tcplife: the differential tests in tcptrace/tests/lab*.rs
    "man-db",       // man -l / man -w in the docs and package checks
    "procps",
    // promtool checks serve's exposition (a unit test) and the deploy/prometheus rules; the
    // prometheus server scrapes `tcptrace serve` in tcptrace/tests/serve.rs.
    "prometheus",
    "systemd", // systemd-analyze verify of the packaged unit (systemd need not run)
    "bpftool", // checks that no program or map outlives tcptrace in tcptrace/tests/root.rs
    "tmux",    // runs `tcptrace top` in a real terminal in tcptrace/tests/top.rs
    "hping3",  // floods a listener with SYNs in tcptrace/tests/lab_listeners.rs
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What `setup` should make sure of.
pub struct Options {
    /// Also install the packages the root tests and benchmarks use.
    pub test_packages: bool,
}

pub fn setup(opts: &Options) -> Result<()> {
    let start = Instant::now();
    eprintln!("setup: checking the eBPF toolchain (installs what is missing; idempotent)");

    let mut packages: Vec<&str> = BUILD_PACKAGES.to_vec();
    if opts.test_packages {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    ensure_packages(&packages)?;
    ensure_bpf_linker()?;
    ensure_linked_toolchain()?;

    eprintln!(
        "setup: toolchain ready in {:.1}s (rustup toolchain `{BPF_TOOLCHAIN}`, bpf-linker {BPF_LINKER_VERSION})",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn is_root() -> bool {
    cmd_output("id", &["-u"]).is_ok_and(|s| s.trim() == "0")
}

fn package_installed(name: &str) -> bool {
    cmd_output("dpkg-query", &["-W", "-f=${Status}", name])
        .is_ok_and(|s| s.trim() == "install ok installed")
}

fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present: {}", packages.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}. Run `sudo cargo xtask setup` (apt-get needs root).",
            missing.join(" ")
        );
    }
    let t = Instant::now();
    eprintln!(
        "setup: installing Debian packages: {} (about 30 s)",
        missing.join(" ")
    );
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    run(&mut update).context("apt-get update failed")?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install).with_context(|| {
        format!(
            "apt-get install {} failed; these come from Debian's bookworm-security suite",
            missing.join(" ")
        )
    })?;
    eprintln!(
        "setup: packages installed in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpf_linker_version() -> Option<String> {
    let linker = cargo_home().join("bin").join("bpf-linker");
    let out = Command::new(&linker).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn ensure_bpf_linker() -> Result<()> {
    if let Some(v) = bpf_linker_version()
        && v.contains(BPF_LINKER_VERSION)
    {
        eprintln!("setup: {v} present");
        return Ok(());
    }
    let t = Instant::now();
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute on 2 cores)"
    );
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        // The user's toolchain: bpf-linker is a host program.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    run(&mut install).context("cargo install bpf-linker failed")?;
    match bpf_linker_version() {
        Some(v) => eprintln!("setup: {v} built in {:.1}s", t.elapsed().as_secs_f64()),
        None => bail!(
            "bpf-linker was installed but `{}/bin/bpf-linker --version` fails",
            cargo_home().display()
        ),
    }
    Ok(())
}

/// The directory the linked toolchain lives in: links to Debian's rustc, cargo and rustlib.
fn toolchain_dir() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".local/share/tcptrace")
        .join(BPF_TOOLCHAIN)
}

/// True when `rustup run tcptrace-bpf rustc` is Debian's compiler with the BPF `core`.
pub fn linked_toolchain_ok() -> bool {
    let target_core = Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib");
    let has_core = fs::read_dir(target_core).is_ok_and(|mut d| {
        d.any(|e| {
            e.is_ok_and(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        })
    });
    has_core
        && cmd_output("rustup", &["run", BPF_TOOLCHAIN, "rustc", "--version"])
            .is_ok_and(|v| v.starts_with("rustc "))
}

fn ensure_linked_toolchain() -> Result<()> {
    if linked_toolchain_ok() {
        eprintln!(
            "setup: rustup toolchain `{BPF_TOOLCHAIN}` present (Debian's rustc with BPF core)"
        );
        return Ok(());
    }
    let dir = toolchain_dir();
    eprintln!(
        "setup: linking Debian's rustc as rustup toolchain `{BPF_TOOLCHAIN}` at {}",
        dir.display()
    );
    let bin = dir.join("bin");
    let lib = dir.join("lib");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for (link, target) in [
        (bin.join("rustc"), Path::new("/usr/bin/rustc")),
        (bin.join("cargo"), Path::new("/usr/bin/cargo")),
        (lib.join("rustlib"), Path::new("/usr/lib/rustlib")),
    ] {
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    }
    let mut link = Command::new("rustup");
    link.args(["toolchain", "link", BPF_TOOLCHAIN]).arg(&dir);
    run(&mut link).context("rustup toolchain link failed")?;
    if !linked_toolchain_ok() {
        bail!(
            "the linked toolchain `{BPF_TOOLCHAIN}` does not work: check that /usr/bin/rustc runs and \
             /usr/lib/rustlib/bpfel-unknown-none/lib holds libcore (package libstd-rust-web-dev-bpf)"
        );
    }
    Ok(())
}
