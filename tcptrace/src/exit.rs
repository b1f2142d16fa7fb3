//! What tcptrace's exit code says: one table for every command ([`Exit`]), so scripts and
//! service managers can tell a normal end from a signal, a closed pipe, a failed output and
//! an internal error. `cli::EXIT_CODES` is the same table as text for `--help` and the man
//! page, and the README carries it too; a test keeps the three in step.
//!
//! The signal codes follow the shell's 128 + signal number convention, but tcptrace exits
//! with them after a clean shutdown (the program detached, the summary and the recording
//! flushed), rather than dying of the signal.

use std::io;

use crate::live::{Finished, Stop};

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `--duration` elapsed, `q` in `top`, a replay played to its end, a command done.
    Done,
    /// SIGHUP: the terminal or SSH session went away.
    HungUp,
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// Whoever read stdout went away (`tcptrace watch | head`).
    PipeClosed,
    /// SIGTERM.
    Terminated,
    /// An output (the stream, the recording) failed while running, other than a closed pipe,
    /// or one failed at exit (the `--summary-json` file, finishing the recording, the charts).
    OutputFailed,
    /// A bug: a panic (in a sink or elsewhere).
    Internal,
}

/// An error (start-up, input, a file that cannot be written): said on stderr.
pub const ERROR: u8 = 1;

/// A usage error: a bad flag or value. clap exits with it for what it checks; [`Usage`]
/// carries the values checked after parsing to it.
pub const USAGE: u8 = 2;

/// A flag's value refused after parsing (a filter naming no process, cgroup or namespace, an
/// output name that is not a recording's, a format the command does not write): `main`
/// exits with [`USAGE`], as clap does for the values it checks itself.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error with this message, for `?` and `map_err`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// The exit code of an error that ended a command: [`USAGE`] for a [`Usage`] error (however
/// deep in the chain), [`ERROR`] for any other.
pub fn code_of(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<Usage>()) {
        USAGE
    } else {
        ERROR
    }
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::HungUp => 128 + 1,
            Self::Interrupted => 128 + 2,
            Self::PipeClosed => 128 + 13,
            Self::Terminated => 128 + 15,
            Self::OutputFailed => 74,
            Self::Internal => 101,
        }
    }

    /// What ended a live run.
    pub fn of(done: &Finished) -> Self {
        match done.stop {
            Stop::Interrupt => Self::Interrupted,
            Stop::Terminate => Self::Terminated,
            Stop::Hangup => Self::HungUp,
            Stop::Deadline | Stop::Requested | Stop::End => Self::Done,
            Stop::SinkFailed => done
                .sink_error()
                .map_or(Self::Internal, Self::of_sink_error),
        }
    }

    /// The code once an output has also failed at exit: a panic stays the worst (101);
    /// anything else, a signal or a closed pipe included, becomes 74, since something the
    /// caller asked for is missing.
    pub fn with_output_failed(self) -> Self {
        match self {
            Self::Internal => Self::Internal,
            _ => Self::OutputFailed,
        }
    }

    /// What a sink's error means for the exit code.
    pub fn of_sink_error(e: &io::Error) -> Self {
        if crate::sink::is_panic(e) {
            Self::Internal
        } else if e.kind() == io::ErrorKind::BrokenPipe {
            Self::PipeClosed
        } else {
            Self::OutputFailed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Exit; 7] = [
        Exit::Done,
        Exit::HungUp,
        Exit::Interrupted,
        Exit::PipeClosed,
        Exit::Terminated,
        Exit::OutputFailed,
        Exit::Internal,
    ];

    /// The rows of a table whose lines start with a code: `  130  ...` or `| 130 | ...`.
    fn codes_in(text: &str) -> Vec<u8> {
        text.lines()
            .filter_map(|l| {
                l.trim_start_matches(['|', ' ', '`'])
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .filter(|d| !d.is_empty())?
                    .parse()
                    .ok()
            })
            .collect()
    }

    #[test]
    fn a_refused_value_exits_as_a_usage_error_and_any_other_error_with_1() {
        assert_eq!(code_of(&usage("--pid 1: no such process")), USAGE);
        let wrapped = usage("--comm too long").context("starting");
        assert_eq!(code_of(&wrapped), USAGE);
        assert_eq!(code_of(&anyhow::anyhow!("tracefs is not mounted")), ERROR);
    }

    #[test]
    fn an_output_failing_at_exit_gives_74_unless_there_was_a_panic() {
        for e in ALL {
            let want = if e == Exit::Internal { 101 } else { 74 };
            assert_eq!(e.with_output_failed().code(), want, "{e:?}");
        }
    }

    #[test]
    fn the_help_text_lists_every_code_once() {
        let mut want: Vec<u8> = ALL.iter().map(|e| e.code()).collect();
        want.extend([ERROR, 2]);
        want.sort_unstable();
        let mut got = codes_in(crate::cli::EXIT_CODES);
        got.sort_unstable();
        assert_eq!(got, want, "cli::EXIT_CODES and exit::Exit differ");
    }

    #[test]
    fn the_readme_has_the_same_table() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("## Exit codes")
            .expect("README has an Exit codes section");
        let section = &readme[start..];
        let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
        let mut got = codes_in(&section[..end]);
        got.sort_unstable();
        let mut want = codes_in(crate::cli::EXIT_CODES);
        want.sort_unstable();
        assert_eq!(
            got, want,
            "README's exit code table and cli::EXIT_CODES differ"
        );
    }

    #[test]
    fn sink_errors_map_to_their_codes() {
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(Exit::of_sink_error(&pipe), Exit::PipeClosed);
        assert_eq!(Exit::PipeClosed.code(), 141);
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(Exit::of_sink_error(&full), Exit::OutputFailed);
        let panic = crate::sink::panic_error("boom");
        assert_eq!(Exit::of_sink_error(&panic), Exit::Internal);
        assert_eq!(Exit::Internal.code(), 101);
    }
}
