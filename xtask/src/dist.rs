//! `cargo xtask docs` and `cargo xtask dist`: man pages, shell completions, a release tarball
//! and a Debian package, plus the root check that installs that package and removes it again.
//!
//! The man pages and completions come from the built binary's hidden `man` and `completions`
//! commands (clap_mangen and clap_complete over its own clap definitions), so they always
//! describe the binary they ship with; the xtask cannot import the binary crate's `cli`.
//!
//! The .deb is built with `dpkg-deb --build` from a staged tree rather than with cargo-deb:
//! the tree is the tarball's content in Debian's places, a control file is a few lines, and
//! a fresh CI machine does not have to compile cargo-deb (minutes on two cores) first.
//! `dpkg-shlibdeps` (dpkg-dev) computes the library dependencies. The package is called
//! `tcptrace-bpf` because Debian already has an unrelated `tcptrace` package (a tcpdump
//! file analyser, newer version numbers, the same /usr/bin/tcptrace): a package of ours named
//! `tcptrace` would be "upgraded" to it by apt. Ours conflicts with and replaces it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cargo, setup,
    util::{cmd_output, run},
    workspace_root,
};

/// The Debian package name (see the module comment for why not `tcptrace`).
pub const PACKAGE: &str = "tcptrace-bpf";
/// Where the unit lives in the source tree.
const UNIT: &str = "deploy/systemd/tcptrace.service";
/// Where the package installs the binary (the unit's ExecStart).
const BIN: &str = "/usr/bin/tcptrace";
/// Where Debian 12 packages put system units.
const UNIT_DIR: &str = "lib/systemd/system";

/// `cargo xtask docs`.
#[derive(clap::Args)]
pub struct DocsArgs {
    /// Directory for man/ (tcptrace.1 and one page per command) and completions/.
    #[arg(long, value_name = "DIR", default_value = "target/docs")]
    out: PathBuf,
}

/// `cargo xtask dist`.
#[derive(clap::Args)]
pub struct DistArgs {
    /// Directory for the tarball and the .deb.
    #[arg(long, value_name = "DIR", default_value = "target/dist")]
    out: PathBuf,
    /// Package the debug build (what the tests build anyway) instead of building release.
    #[arg(long)]
    debug: bool,
}

/// What `dist` made.
pub struct Artifacts {
    pub tarball: PathBuf,
    pub deb: PathBuf,
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace_root().join(p)
    }
}

/// Builds the tool (the eBPF toolchain first) and returns the binary.
fn build(debug: bool) -> Result<PathBuf> {
    setup::setup(&setup::Options {
        test_packages: false,
    })?;
    if !debug {
        return crate::build_release();
    }
    eprintln!("xtask: building tcptrace (debug)");
    run(cargo().args(["build", "-p", "tcptrace"]))?;
    Ok(workspace_root().join("target/debug/tcptrace"))
}

pub fn docs(args: &DocsArgs) -> Result<()> {
    let bin = build(false)?;
    let out = absolute(&args.out);
    write_docs(&bin, &out)?;
    eprintln!(
        "xtask docs: man pages in {}, completions in {}",
        out.join("man").display(),
        out.join("completions").display()
    );
    Ok(())
}

/// The completion files: shell name for `tcptrace completions`, file name.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "tcptrace.bash"),
    ("zsh", "_tcptrace"),
    ("fish", "tcptrace.fish"),
];

/// Writes `out/man/*.1` and `out/completions/*` by running `bin`, and checks that the main
/// page renders and the bash completion knows the commands.
pub fn write_docs(bin: &Path, out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    run(Command::new(bin).arg("man").arg("--out").arg(&man))
        .context("generating the man pages with the built binary")?;
    for (shell, file) in COMPLETIONS {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running {} completions {shell}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} completions {shell} failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::write(completions.join(file), &out.stdout)
            .with_context(|| format!("writing {file}"))?;
    }
    check_docs(&man.join("tcptrace.1"), &completions.join("tcptrace.bash"))
}

/// The man page renders without warnings and names the commands; the bash completion
/// offers them.
fn check_docs(page: &Path, bash: &Path) -> Result<()> {
    let bash = fs::read_to_string(bash).with_context(|| format!("reading {}", bash.display()))?;
    if !["watch", "record", "report"]
        .iter()
        .all(|c| bash.contains(c))
    {
        bail!("the bash completion does not offer watch, record and report");
    }
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!(
            "xtask docs: `man` is not installed (apt-get install man-db): the man page was \
             written but not rendered"
        );
        return Ok(());
    }
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .output()
        .context("running man -l")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !warnings.trim().is_empty() {
        bail!(
            "man -l {} failed or warned: {}",
            page.display(),
            warnings.trim()
        );
    }
    for word in ["watch", "record", "report", "--format"] {
        if !text.contains(word) {
            bail!("the rendered man page does not mention {word}");
        }
    }
    Ok(())
}

pub fn dist(args: &DistArgs) -> Result<Artifacts> {
    let start = Instant::now();
    let bin = build(args.debug)?;
    // A debug binary is some 60 MB: compress it fast (it is only ever a test package).
    let a = package(&bin, &absolute(&args.out), args.debug)?;
    eprintln!(
        "xtask dist: {} and {} in {:.1}s",
        a.tarball.display(),
        a.deb.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(a)
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

/// Stages the tarball and the Debian tree from `bin` and builds both into `out`; `fast`
/// trades size for compression time.
pub fn package(bin: &Path, out: &Path, fast: bool) -> Result<Artifacts> {
    let root = workspace_root();
    let arch = cmd_output("dpkg", &["--print-architecture"])
        .context("dpkg --print-architecture (the .deb is built with Debian's dpkg tools)")?
        .trim()
        .to_owned();
    let stage = out.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let docs = stage.join("docs");
    write_docs(bin, &docs)?;
    let mut pages: Vec<PathBuf> = fs::read_dir(docs.join("man"))
        .context("listing the man pages")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pages.sort();
    let licenses: Vec<PathBuf> = fs::read_dir(&root)
        .context("listing the workspace")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("LICENSE") || n.starts_with("COPYING"))
        })
        .collect();

    // The tarball: everything side by side.
    let name = format!("tcptrace-{}-{arch}", version());
    let tree = stage.join(&name);
    copy(bin, &tree.join("tcptrace"), 0o755)?;
    copy(&root.join("README.md"), &tree.join("README.md"), 0o644)?;
    copy(&root.join(UNIT), &tree.join("tcptrace.service"), 0o644)?;
    for l in &licenses {
        copy(l, &tree.join(l.file_name().unwrap_or_default()), 0o644)?;
    }
    for p in &pages {
        copy(
            p,
            &tree.join("man").join(p.file_name().unwrap_or_default()),
            0o644,
        )?;
    }
    for (_, file) in COMPLETIONS {
        let from = docs.join("completions").join(file);
        copy(&from, &tree.join("completions").join(file), 0o644)?;
    }
    let tarball = out.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .arg("--owner=0")
        .arg("--group=0")
        .arg(if fast {
            "--use-compress-program=gzip -1"
        } else {
            "--gzip"
        })
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .arg(&name))
    .context("creating the tarball")?;

    // The Debian tree.
    let deb_root = stage.join("deb");
    copy(bin, &deb_root.join("usr/bin/tcptrace"), 0o755)?;
    for p in &pages {
        let file = p.file_name().unwrap_or_default();
        let to = deb_root.join("usr/share/man/man1").join(file);
        copy(p, &to, 0o644)?;
        run(Command::new("gzip").args(["-9n"]).arg(&to)).context("gzip (the man pages)")?;
    }
    let c = docs.join("completions");
    copy(
        &c.join("tcptrace.bash"),
        &deb_root.join("usr/share/bash-completion/completions/tcptrace"),
        0o644,
    )?;
    copy(
        &c.join("_tcptrace"),
        &deb_root.join("usr/share/zsh/vendor-completions/_tcptrace"),
        0o644,
    )?;
    copy(
        &c.join("tcptrace.fish"),
        &deb_root.join("usr/share/fish/vendor_completions.d/tcptrace.fish"),
        0o644,
    )?;
    copy(
        &root.join(UNIT),
        &deb_root.join(UNIT_DIR).join("tcptrace.service"),
        0o644,
    )?;
    let doc = deb_root.join("usr/share/doc").join(PACKAGE);
    copy(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    fs::write(
        doc.join("copyright"),
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: tcptrace\n\n\
             Files: *\nLicense: {}\n",
            env!("CARGO_PKG_LICENSE")
        ),
    )
    .context("writing the copyright file")?;
    let depends = shlib_depends(&deb_root.join("usr/bin/tcptrace"), &stage)?;
    let installed_kib = dir_size(&deb_root)?.div_ceil(1024);
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {}\n\
         Architecture: {arch}\n\
         Maintainer: tcptrace developers <tcptrace@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Conflicts: tcptrace\n\
         Replaces: tcptrace\n\
         Section: net\n\
         Priority: optional\n\
         Description: TCP connection life cycles from eBPF\n \
         Traces every TCP state transition with eBPF and reports handshake latencies,\n \
         teardown phase durations, CLOSE_WAIT leaks and resets; includes a systemd unit\n \
         for the Prometheus exporter (not enabled on install).\n",
        version()
    );
    let debian = deb_root.join("DEBIAN");
    fs::create_dir_all(&debian).context("creating DEBIAN/")?;
    fs::write(debian.join("control"), control).context("writing DEBIAN/control")?;
    let deb = out.join(format!("{PACKAGE}_{}_{arch}.deb", version()));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .args(if fast {
            &["-Zgzip", "-z1"][..]
        } else {
            &[][..]
        })
        .arg(&deb_root)
        .arg(&deb))
    .context("dpkg-deb --build")?;
    verify_unit(&deb_root.join(UNIT_DIR).join("tcptrace.service"), false)?;
    Ok(Artifacts { tarball, deb })
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

/// `Depends:` for the binary's shared libraries, from dpkg-shlibdeps (which wants a
/// debian/control next to it, so it runs in a scratch directory).
fn shlib_depends(bin: &Path, scratch: &Path) -> Result<String> {
    let dir = scratch.join("shlibdeps");
    fs::create_dir_all(dir.join("debian")).context("creating the dpkg-shlibdeps scratch dir")?;
    fs::write(
        dir.join("debian/control"),
        format!("Source: tcptrace\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )
    .context("writing the scratch debian/control")?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(bin)
        .current_dir(&dir)
        .output()
        .context("running dpkg-shlibdeps: install it with `apt-get install dpkg-dev`")?;
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

/// `systemd-analyze verify` on a unit (systemd need not be running for this). Before the
/// package is installed (`installed` false) the unit's /usr/bin/tcptrace and man pages do not
/// exist on this host yet: those two complaints are expected then and said, not hidden;
/// `--root=` on the staged tree does not help, as it lacks the system's own units.
pub fn verify_unit(unit: &Path, installed: bool) -> Result<()> {
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify");
    if !installed {
        cmd.arg("--man=no");
    }
    let out = cmd
        .arg(unit)
        .output()
        .context("running systemd-analyze (apt-get install systemd)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let not_yet = "Command /usr/bin/tcptrace is not executable";
    let expected = |l: &str| !installed && l.contains(not_yet) && !Path::new(BIN).exists();
    // verify also loads the units this one names (network.target, the tracefs mount) and
    // may warn about unrelated problems of the host's units: only our unit's lines count.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("tcptrace.service") && !expected(l))
        .collect();
    let only_expected = stderr.lines().any(expected) && ours.is_empty();
    if !ours.is_empty() || !(out.status.success() || only_expected) {
        bail!(
            "systemd-analyze verify {} failed ({}):\n{}",
            unit.display(),
            out.status,
            stderr.trim()
        );
    }
    if only_expected {
        eprintln!(
            "xtask: systemd-analyze verify: unit OK except that {BIN} is not installed yet \
             (the package check verifies the installed unit)"
        );
    }
    let others: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("tcptrace.service"))
        .collect();
    if !others.is_empty() {
        eprintln!(
            "xtask: systemd-analyze verify (other units): {}",
            others.join("; ")
        );
    }
    Ok(())
}

/// The root check of the package: build the .deb (debug build), install it, check what it
/// installed, verify the installed unit, and remove it again whatever happened. The service
/// is not started: systemd is not PID 1 in every test sandbox.
pub fn package_check() -> Result<()> {
    for pkg in [PACKAGE, "tcptrace"] {
        let status = cmd_output("dpkg-query", &["-W", "-f=${Status}", pkg]).unwrap_or_default();
        if status.contains("installed") && !status.contains("not-installed") {
            bail!(
                "the package {pkg} is already installed ({status}); this check installs and \
                 removes {PACKAGE}: remove {pkg} first (`dpkg --purge {pkg}`) or run \
                 `cargo xtask test --no-root`"
            );
        }
    }
    let a = dist(&DistArgs {
        out: workspace_root().join("target/dist-check"),
        debug: true,
    })?;
    run(Command::new("dpkg").arg("-i").arg(&a.deb)).context("dpkg -i")?;
    let checked = check_installed();
    let removed = run(Command::new("dpkg").args(["--purge", PACKAGE]))
        .context("dpkg --purge after the check");
    checked?;
    removed?;
    if Path::new(BIN).exists() {
        bail!("{BIN} is still there after dpkg --purge {PACKAGE}");
    }
    Ok(())
}

fn check_installed() -> Result<()> {
    let v = cmd_output(BIN, &["--version"])?;
    if !v.contains(version()) {
        bail!(
            "installed tcptrace --version says {v:?}, expected {}",
            version()
        );
    }
    for page in ["tcptrace", "tcptrace-watch", "tcptrace-report"] {
        let path = cmd_output("man", &["-w", page])
            .with_context(|| format!("man -w {page}: the page is not installed"))?;
        if !path.trim().starts_with("/usr/share/man/man1/") {
            bail!("man -w {page} found {path:?}, not the packaged page");
        }
    }
    for f in [
        "/usr/share/bash-completion/completions/tcptrace",
        "/usr/share/zsh/vendor-completions/_tcptrace",
        "/usr/share/fish/vendor_completions.d/tcptrace.fish",
    ] {
        if !Path::new(f).is_file() {
            bail!("{f} not installed");
        }
    }
    verify_unit(
        &Path::new("/").join(UNIT_DIR).join("tcptrace.service"),
        true,
    )
}
