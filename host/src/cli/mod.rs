//! The `cairn` command line. One module per subcommand; this file parses and dispatches, and
//! turns errors into one sentence on stderr with a non-zero exit status.

mod bench;
pub mod bench_policy;
pub mod bench_upload;
mod filter;
mod inspect;
pub mod policy;
mod run;
mod rusage;
mod simulate;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// cairn: Composer-compatible checkpoint saving with sandboxed WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: a simulated training run that saves through the real saver.
    Run(run::RunArgs),
    /// Which checkpoints a save_interval would save, without training or writing.
    Simulate(simulate::SimulateArgs),
    /// Show what a checkpoint holds (any supported format).
    Inspect(inspect::Args),
    /// Rewrite a checkpoint without the ignored keys, in the format OUT's extension names.
    Filter(filter::Args),
    /// Work with policy components (`cairn policy check FILE.wasm`).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Check a checkpoint file, or every checkpoint in a folder and what `latest` names.
    Verify(verify::Args),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::Bench),
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
        Command::Run(args) => run::run(args).map(|()| ExitCode::SUCCESS),
        Command::Simulate(args) => simulate::run(args).map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => inspect::run(args),
        Command::Filter(args) => filter::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Policy { command } => policy::run(command),
        Command::Bench(b) => bench::run(b),
    }
}
