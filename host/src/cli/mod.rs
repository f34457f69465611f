//! The `cairn` command line. One module per subcommand; this file parses and dispatches, and
//! turns errors into one sentence on stderr with a non-zero exit status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod policy;

/// cairn: Composer-compatible checkpoint saving with sandboxed WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with policy components (`cairn policy check FILE.wasm`).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Measure cairn (`cairn bench policy FILE.wasm ...`).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

/// Run the command line; the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cairn: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy { command } => policy::run(command),
        Command::Bench { command } => bench::run(command),
    }
}
