//! Builds the kernel program (`tcptrace-ebpf`) for `bpfel-unknown-none` and leaves the object
//! in OUT_DIR, where `collect` embeds it with `include_bytes_aligned!`.
//!
//! Toolchain choice, in order: `$TCPTRACE_BPF_TOOLCHAIN` if set; the rustup toolchain
//! `tcptrace-bpf` that `cargo xtask setup` links to Debian's BPF-capable rustc (prebuilt
//! `core` for the BPF targets, so no build-std); a `nightly` with `rust-src`.

use std::{env, path::Path, process::Command};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

const LINKED: &str = "tcptrace-bpf";
const FIX: &str = "the eBPF toolchain is missing: run `cargo xtask setup` (as root) once";

fn works(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["run", toolchain, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn nightly_with_rust_src() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            Path::new(&sysroot)
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TCPTRACE_BPF_TOOLCHAIN");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        // aya-build prints the skip warning itself; the binary then embeds an empty object
        // and `collect` refuses to load it with a message naming the cause.
        return aya_build::build_ebpf([], Toolchain::Nightly);
    }
    let chosen = env::var("TCPTRACE_BPF_TOOLCHAIN").ok();
    let (toolchain, linked) = match chosen.as_deref() {
        Some(t) => (t.to_owned(), t == LINKED),
        None if works(LINKED) => (LINKED.to_owned(), true),
        None if nightly_with_rust_src() => ("nightly".to_owned(), false),
        None => bail!("{FIX}"),
    };
    if which_bpf_linker().is_none() {
        bail!("bpf-linker not found on PATH: {FIX}");
    }
    if linked {
        // aya-ebpf needs `asm_experimental_arch` on Debian's stable-channel rustc. Naming the
        // crate (not "1") keeps aya-build from adding `-Z build-std`, which needs rust-src.
        // SAFETY: build scripts are single-threaded here; no other thread reads the
        // environment while it is changed.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    }
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace directory"))?
        .join("tcptrace-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("workspace path is not UTF-8"))?;
    aya_build::build_ebpf(
        [Package {
            name: "tcptrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .with_context(|| format!("building tcptrace-ebpf with rustup toolchain `{toolchain}` failed"))
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
