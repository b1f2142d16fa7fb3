//! The hidden `completions` and `man` commands: shell completions and man pages generated
//! from this binary's own clap definitions, so what a package ships always describes the
//! binary next to it. `cargo xtask docs` builds the tool and runs these (the xtask cannot
//! import this binary crate's `cli` module, and compiling `cli.rs` a second time inside the
//! xtask would break as soon as it used anything of the tool's).

use std::{
    fs,
    io::{self, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `bytes` to stdout; a closed pipe (`tcptrace man | head`) is a normal exit.
fn print(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// The command line as users see it: clap_complete (unlike clap_mangen) offers hidden
/// subcommands too, and clap cannot remove a subcommand, so this rebuilds the top-level
/// command from the derived one without them.
fn public_command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("tcptrace")
        .version(env!("CARGO_PKG_VERSION"))
        .args_conflicts_with_subcommands(true)
        .args(full.get_arguments().cloned())
        .groups(full.get_groups().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(about) = full.get_long_about() {
        cmd = cmd.long_about(about.clone());
    }
    if let Some(after) = full.get_after_long_help() {
        cmd = cmd.after_long_help(after.clone());
    }
    cmd
}

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut public_command(), "tcptrace", &mut buf);
    buf
}

/// `tcptrace completions SHELL`.
pub fn completions(shell: Shell) -> Result<()> {
    print(&completion_script(shell))
}

/// The roff of the main page, tcptrace(1).
pub fn man_page() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .context("rendering the man page")?;
    Ok(buf)
}

/// `tcptrace man [--out DIR]`.
pub fn man(out: Option<&Path>) -> Result<()> {
    let Some(dir) = out else {
        return print(&man_page()?);
    };
    fs::create_dir_all(dir)
        .with_context(|| format!("creating --out directory {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_names_every_command_and_flag() {
        let page = String::from_utf8(man_page().expect("render")).expect("utf8");
        assert!(
            page.starts_with(".ie") || page.contains(".TH tcptrace 1"),
            "{page}"
        );
        for word in [
            "watch",
            "record",
            "report",
            "\\-\\-format",
            "\\-\\-per",
            "\\-\\-lport",
            "\\-\\-wide",
        ] {
            assert!(page.contains(word), "{word} missing from the man page");
        }
        for hidden in ["generate\\-recording", "completions"] {
            assert!(
                !page.contains(hidden),
                "hidden command {hidden} in the man page"
            );
        }
    }

    #[test]
    fn man_out_writes_one_page_per_command() {
        let dir = std::env::temp_dir().join(format!("tcptrace-man-{}", std::process::id()));
        man(Some(&dir)).expect("write");
        for page in [
            "tcptrace.1",
            "tcptrace-watch.1",
            "tcptrace-record.1",
            "tcptrace-report.1",
        ] {
            assert!(dir.join(page).is_file(), "{page} not written");
        }
        assert!(
            !dir.join("tcptrace-man.1").exists(),
            "hidden command got a page"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn public_command_lacks_only_the_hidden_commands() {
        let full = Cli::command();
        let public = public_command();
        let names = |c: &clap::Command| {
            c.get_arguments()
                .map(|a| a.get_id().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&full), names(&public));
        let visible: Vec<&str> = full
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name())
            .collect();
        let public_subs: Vec<&str> = public.get_subcommands().map(|s| s.get_name()).collect();
        assert_eq!(visible, public_subs);
        public.debug_assert();
    }

    #[test]
    fn completions_know_the_commands_and_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completion_script(shell)).expect("utf8");
            for word in ["watch", "record", "report", "format", "per", "csv", "wide"] {
                assert!(script.contains(word), "{shell}: {word} missing");
            }
            for hidden in ["generate-recording", "completions", "powershell"] {
                assert!(!script.contains(hidden), "{shell}: hidden {hidden} offered");
            }
        }
    }
}
