//! Orchestration for tcptrace: toolchain setup, running the tool as root, the test tiers and
//! the benchmarks. `cargo xtask --help` lists the commands.

mod setup;
mod util;

use anyhow::Result;
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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup { test_packages } => setup::setup(&setup::Options { test_packages }),
    }
}
