//! `cairn policy check FILE.wasm`: does a component implement one of cairn's worlds?

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use cairn::policy::{ImportVerdict, PolicyError, SandboxConfig};

/// Subcommands of `cairn policy`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Which cairn world a component implements (or what it lacks), its exports, and the
    /// imports cairn will deny.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
        /// Print one JSON object instead of sentences.
        #[arg(long)]
        json: bool,
        /// Check under this job config's `[sandbox]` limits instead of the defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Start a policy project: a save-interval policy ("save every n batches") with unit tests,
    /// a job.toml and a check against the built-in interval, ready to build.
    New {
        /// The project's name (lowercase letters, digits, '-', '_').
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: super::policy_new::Lang,
        /// Where to create it [default: ./NAME].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Run a `cairn policy` subcommand; `platform` is the operator's platform file, which a
/// `--config` is checked against (its tenant from `CAIRN_TENANT`).
pub fn run(cmd: PolicyCommand, platform: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { file, json, config } => {
            let sandbox = match config {
                Some(path) => {
                    let platform = platform
                        .map(|p| cairn::Platform::load(p, super::simulate::tenant_env().as_deref()))
                        .transpose()?;
                    crate::train::Job::load(&path, platform.as_ref())?
                        .saver
                        .sandbox
                }
                None => SandboxConfig::default(),
            };
            check_file(file, json, &sandbox)
        }
        PolicyCommand::New { name, lang, dir } => {
            super::policy_new::run(&name, lang, dir).map(|()| ExitCode::SUCCESS)
        }
    }
}

fn check_file(file: PathBuf, json: bool, sandbox: &SandboxConfig) -> anyhow::Result<ExitCode> {
    // A closed stdout drops the report; the exit status still says whether the check passed.
    let mut out = crate::out::Lines::stdout();
    let host = super::policy_host().with_log(std::sync::Arc::new(|_: &str| {}));
    let report = host.check_with(&file, sandbox)?;
    let name = file.display().to_string();
    let denied: Vec<&str> = report
        .imports
        .iter()
        .filter(|(_, v)| *v == ImportVerdict::Denied)
        .map(|(n, _)| n.as_str())
        .collect();
    if json {
        let imports: Vec<_> = report
            .imports
            .iter()
            .map(|(n, v)| {
                serde_json::json!({"name": n, "verdict": match v {
                    ImportVerdict::Provided => "provided",
                    ImportVerdict::Denied => "denied",
                    ImportVerdict::Missing => "missing",
                    ImportVerdict::OtherVersion => "other-version",
                }})
            })
            .collect();
        let value = serde_json::json!({
            "file": name,
            "world": report.world.map(|w| format!("cairn:policy/{}@0.1.0", w.name())),
            "init": report.has_init,
            "exports": report.exports,
            "imports": imports,
            "problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        });
        out.line(format_args!("{value}"));
        return Ok(if report.world.is_some() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let Some(world) = report.world else {
        // Prefer the sentence about an export that is there but wrong over "missing".
        let wrong = report
            .problems
            .iter()
            .find(|p| !matches!(p, PolicyError::MissingExport { .. }));
        match (wrong, report.problems.first()) {
            (Some(p), _) => eprintln!("cairn: {p}"),
            (None, Some(PolicyError::MissingExport { exports, .. })) => eprintln!(
                "cairn: {name} implements neither cairn:policy/save-interval nor cairn:policy/state-dict-filter: it has neither a 'should-save' nor a 'filter' export (it exports {})",
                if exports.is_empty() {
                    "nothing".to_owned()
                } else {
                    exports.join(", ")
                }
            ),
            _ => eprintln!("cairn: {name} implements no cairn world"),
        }
        return Ok(ExitCode::FAILURE);
    };
    out.line(format_args!(
        "{name} implements cairn:policy/{}@0.1.0 (exports: {}{}).",
        world.name(),
        report.exports.join(", "),
        if report.has_init {
            ""
        } else {
            "; no init, so its config is ignored"
        }
    ));
    if denied.is_empty() {
        out.line(format_args!("It imports no WASI interface."));
    } else {
        out.line(format_args!(
            "cairn will deny every capability of its WASI imports (no files, environment, sockets; fixed clocks and randomness): {}.",
            denied.join(", ")
        ));
    }
    Ok(ExitCode::SUCCESS)
}
