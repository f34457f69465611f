//! The `cairn` command line. One module per subcommand in `cmd/`; the simulated training run that
//! `cairn run` drives (and `cairn simulate` predicts) in `train/`. This file parses and dispatches,
//! and turns errors into one sentence on stderr with a non-zero exit status.
//!
//! It is a library too, only so the benchmarks (`host/bench`) reuse the simulated trainer.

mod cmd;
mod out;
mod plural;
pub mod policy_config;
pub mod rusage;
pub mod train;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// cairn: Composer-compatible checkpoint saving with sandboxed WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The operator's platform file: ceilings, defaults and confinement every job's config must
    /// respect (read before any job's config).
    #[arg(long, global = true, value_name = "FILE", env = "CAIRN_PLATFORM")]
    platform: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: a simulated training run that saves through the real saver.
    Run(cmd::run::RunArgs),
    /// Which checkpoints a save_interval would save, without training or writing.
    Simulate(cmd::simulate::SimulateArgs),
    /// Show what a checkpoint holds (any supported format).
    Inspect(cmd::inspect::Args),
    /// Rewrite a checkpoint without the ignored keys, in the format OUT's extension names.
    Filter(cmd::filter::Args),
    /// Work with policy components (`cairn policy check FILE.wasm`).
    Policy {
        #[command(subcommand)]
        command: cmd::policy::PolicyCommand,
    },
    /// Check a checkpoint file, or every checkpoint in a folder and what `latest` names.
    Verify(cmd::verify::Args),
    /// Show the compile cache of policy components (`cairn cache clear` empties it).
    Cache(cmd::cache::Args),
}

/// Run the command line; the process exit status.
pub fn main() -> ExitCode {
    // `cairn __compile-worker` (hidden): one compilation for the policy host, which runs it as
    // a child so a compile deadline and memory limit can stop it. It answers its parent and
    // nothing else: no argument parsing, no output.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == cmd::COMPILE_WORKER)
    {
        return ExitCode::from(u8::try_from(cairn::policy::serve_compile_worker()).unwrap_or(1));
    }
    // `FAILPOINTS` is read only by test builds (the `failpoints` feature); a release build
    // carries no failpoint.
    let _failpoints = cairn::failpoints::setup_from_env();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // The reader of stdout went away (`cairn inspect FILE | head`): nothing is wrong.
        Err(err) if out::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // The error and its causes, each cause only if its text is not already in the line
            // (cairn's errors name their cause in their own sentence). Messages may quote text a
            // checkpoint or a guest chose: print it inert.
            let mut stderr = std::io::stderr();
            let line = cairn::remote::error_chain(err.as_ref());
            let _ = writeln!(stderr, "cairn: {}", out::printable(&line));
            if let Some(backtrace) = policy_backtrace(&err) {
                if std::env::var_os("CAIRN_BACKTRACE").is_some_and(|v| v == "1") {
                    let _ = writeln!(stderr, "{backtrace}");
                } else {
                    let _ = writeln!(
                        stderr,
                        "cairn: CAIRN_BACKTRACE=1 shows the policy's wasm backtrace"
                    );
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// The wasm backtrace of a policy's trap somewhere in `err`'s chain.
fn policy_backtrace(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        let policy = match cause.downcast_ref::<cairn::Error>() {
            Some(cairn::Error::Policy(p)) => Some(&**p),
            _ => cause.downcast_ref::<cairn::policy::PolicyError>(),
        };
        policy.and_then(|p| p.backtrace()).map(str::to_owned)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            cmd::run::run(args, cli.platform.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            cmd::simulate::run(args, cli.platform.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Filter(args) => cmd::filter::run(args),
        Command::Verify(args) => cmd::verify::run(args),
        Command::Policy { command } => cmd::policy::run(command, cli.platform.as_deref()),
        Command::Cache(args) => cmd::cache::run(args),
    }
}
