//! `cairn-bench`: cairn's benchmarks, kept out of the product's command set. Each prints ratios
//! against a baseline measured in the same run (`dd` and `torch.save`; synchronous saves for
//! `async_save`; a single-stream upload and `aws s3 cp`; the built-in interval), because a 2-core machine's run-to-run noise is larger
//! than most of the differences measured.

mod async_save;
mod policy;
mod save;
mod sharded;
mod upload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// cairn's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "cairn-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a ~1.5 GB fp32 training state as .pt with fsync; compare with dd and torch.save.
    Save(save::SaveArgs),
    /// Training blocked per save with async_save against synchronous saves, `cairn run`'s way,
    /// interleaved; and the snapshot copy's bandwidth.
    AsyncSave(async_save::AsyncSaveArgs),
    /// Upload throughput of cairn's uploader against a single-stream upload of the same file.
    Upload(upload::BenchUploadArgs),
    /// Aggregate throughput of sharded saves for 1, 2, 4 ranks, and the commit's latency.
    Sharded(sharded::ShardedArgs),
    #[command(flatten)]
    Policy(policy::BenchCommand),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Save(args) => save::run(args),
        Command::AsyncSave(args) => async_save::run(args),
        Command::Upload(args) => upload::run(args),
        Command::Sharded(args) => sharded::run(args),
        Command::Policy(cmd) => policy::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cairn-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
