//! The `cairn` command line. One module per subcommand; this file parses and dispatches, and
//! turns errors into one sentence on stderr with a non-zero exit status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench_upload;
mod run;
mod simulate;

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
    /// Measure cairn's components.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Upload throughput of cairn's uploader against a single-stream upload of the same file.
    Upload(bench_upload::BenchUploadArgs),
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
        Command::Run(args) => run::run(args)?,
        Command::Simulate(args) => simulate::run(args)?,
        Command::Bench(BenchCommand::Upload(args)) => return bench_upload::run(args),
    }
    Ok(ExitCode::SUCCESS)
}
