//! `cairn simulate`: which checkpoints a policy would save, without training or writing.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::Serialize;

use cairn::config::{
    SaveIntervalSpec, interval_epochs, max_duration_from, parse_interval_time, parse_max_duration,
};
use cairn::policy::{
    CountUnit, IntervalScheduler, PolicySpec, Ranks, RunInfo, SandboxConfig, SavePolicy, Time,
    Timestamp,
};
use cairn::{Schedule, Template};

use crate::train::{Events, Job, PlannedSave, Simulation, TrainerSpec};

/// Arguments of `cairn simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A time string (`500ba`, `0.25dur`, `1h`), an integer number of epochs, or a `.wasm`
    /// policy component.
    #[arg(long, value_name = "SPEC", required_unless_present = "config")]
    save_interval: Option<String>,
    /// How long training runs (a time string or integer epochs; not `dur`).
    #[arg(long, value_name = "TIME", required_unless_present = "config")]
    max_duration: Option<String>,
    /// Batches per epoch (the dataloader length).
    #[arg(long, value_name = "N", required_unless_present = "config")]
    batches_per_epoch: Option<u64>,
    /// Predict what `cairn run --config FILE` will save: the interval, names and run shape
    /// come from the file (flags given as well override it).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Samples per batch [default: 1].
    #[arg(long, value_name = "N")]
    samples_per_batch: Option<u64>,
    /// Tokens per batch [default: 0].
    #[arg(long, value_name = "N")]
    tokens_per_batch: Option<u64>,
    /// Simulated wall-clock seconds per batch, for `sec` intervals and `{total_wct}` [default: 0].
    #[arg(long, value_name = "S")]
    seconds_per_batch: Option<f64>,
    /// Epochs per iteration, for `iter` intervals.
    #[arg(long, value_name = "N")]
    epochs_per_iteration: Option<u64>,
    /// Checkpoint name template [default: ep{epoch}-ba{batch}-rank{rank}.pt].
    #[arg(long, value_name = "TEMPLATE")]
    filename: Option<String>,
    /// Run name for `{run_name}` [default: cairn-run].
    #[arg(long, value_name = "NAME")]
    run_name: Option<String>,
    /// A `KEY=VALUE` of a `.wasm` save-interval component's `config` table (repeatable); with
    /// `--config`, it adds to or replaces the keys the job's TOML gives the component.
    #[arg(long = "policy-config", value_name = "KEY=VALUE", value_parser = crate::policy_config::parse_pair)]
    policy_config: Vec<(String, String)>,
    /// One JSON object per save on stdout, and nothing else.
    #[arg(long)]
    json: bool,
    /// The tenant whose job `--config` is, under a platform file [default: $CAIRN_TENANT].
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
    /// Also draw the run's timeline with a mark at every save, as an SVG picture.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

/// One save in the `--json` contract.
#[derive(Serialize)]
struct SaveJson<'a> {
    event: &'static str,
    epoch: u64,
    batch: u64,
    batch_in_epoch: u64,
    sample: u64,
    sample_in_epoch: u64,
    token: u64,
    token_in_epoch: u64,
    path: &'a str,
}

impl<'a> From<&'a PlannedSave> for SaveJson<'a> {
    fn from(s: &'a PlannedSave) -> Self {
        let t = &s.tick.timestamp;
        SaveJson {
            event: s.tick.event.name(),
            epoch: t.epoch,
            batch: t.batch,
            batch_in_epoch: t.batch_in_epoch,
            sample: t.sample,
            sample_in_epoch: t.sample_in_epoch,
            token: t.token,
            token_in_epoch: t.token_in_epoch,
            path: &s.path,
        }
    }
}

/// Run `cairn simulate`.
pub fn run(args: SimulateArgs, platform: Option<&std::path::Path>) -> Result<()> {
    let platform = platform
        .map(|p| cairn::Platform::load(p, args.tenant.as_deref().or(tenant_env().as_deref())))
        .transpose()?;
    let config = args
        .config
        .as_deref()
        .map(|c| Job::load(c, platform.as_ref()))
        .transpose()?;
    let (spec, schedule, filename, run_name) = resolve(&args, config.as_ref())?;
    let mut schedule = schedule;
    let sim = Simulation {
        spec,
        start: Timestamp::default(),
        run_name: &run_name,
        ranks: Ranks::from_env(),
        filename: &filename,
    };
    let saves = sim.run(&mut schedule)?;
    if let Some(file) = &args.plot {
        let total = Events::resume(sim.spec.clone(), sim.start)
            .last()
            .map_or(0, |t| t.timestamp.batch);
        let title = format!("save_interval {}", schedule.describe());
        let picture = crate::train::plot::svg(&saves, &sim.spec, total, &title);
        std::fs::write(file, picture)
            .with_context(|| format!("cannot write the plot {}", file.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &saves {
            serde_json::to_writer(&mut out, &SaveJson::from(s))?;
            writeln!(out)?;
        }
    } else {
        for s in &saves {
            let t = &s.tick.timestamp;
            writeln!(
                out,
                "{:<9} ep{:<4} ba{:<7} {}",
                s.tick.event, t.epoch, t.batch, s.path
            )?;
        }
        let what = schedule.describe();
        let over = sim.spec.max_duration;
        let saved = crate::plural::count(saves.len() as u64, "save", "saves");
        writeln!(out, "{saved} with save_interval {what} over {over}")?;
    }
    Ok(())
}

/// Merge flags over the config file over the defaults.
fn resolve(
    args: &SimulateArgs,
    job: Option<&Job>,
) -> Result<(TrainerSpec, Schedule, Template, String)> {
    let train = job.map(|j| &j.train);
    let config = job.map(|j| &j.saver);
    let max_duration = match (&args.max_duration, train) {
        (Some(text), _) => match text.trim().parse::<i64>() {
            Ok(n) => max_duration_from(Time::epochs(n), text),
            Err(_) => parse_max_duration(text),
        }
        .map_err(|e| anyhow!("--max-duration: {e}"))?,
        (None, Some(t)) => t.max_duration,
        (None, None) => bail!("--max-duration is required without --config"),
    };
    let batches_per_epoch = args
        .batches_per_epoch
        .or(train.map(|t| t.batches_per_epoch))
        .context("--batches-per-epoch is required without --config")?;
    if batches_per_epoch == 0 {
        bail!("--batches-per-epoch must be at least 1");
    }
    let seconds = args
        .seconds_per_batch
        .or(train.map(|t| t.seconds_per_batch))
        .unwrap_or(0.0);
    if !(seconds >= 0.0 && seconds.is_finite()) {
        bail!("--seconds-per-batch must be a non-negative number, not {seconds}");
    }
    let spec = TrainerSpec {
        max_duration,
        batches_per_epoch,
        samples_per_batch: args
            .samples_per_batch
            .or(train.map(|t| t.samples_per_batch))
            .unwrap_or(1),
        tokens_per_batch: args
            .tokens_per_batch
            .or(train.map(|t| t.tokens_per_batch))
            .unwrap_or(0),
        batch_duration: Duration::from_secs_f64(seconds),
        epochs_per_iteration: args
            .epochs_per_iteration
            .or(train.and_then(|t| t.epochs_per_iteration)),
    };
    let run_name = args
        .run_name
        .clone()
        .or(config.map(|c| c.run_name.clone()))
        .unwrap_or_else(|| "cairn-run".into());
    let sandbox = config.map(|c| &c.sandbox);
    let policy = match (&args.save_interval, config) {
        (Some(spec), _) if spec.ends_with(".wasm") => {
            let spec = crate::policy_config::spec(spec.as_ref(), &args.policy_config);
            wasm_policy(
                &spec,
                sandbox.unwrap_or(&SandboxConfig::default()),
                &run_name,
            )?
        }
        (Some(spec), _) => time_policy(spec, &args.policy_config)?,
        (None, Some(c)) => match &c.save_interval {
            SaveIntervalSpec::Time(t) => {
                no_component_config(&args.policy_config, &t.to_string())?;
                Box::new(IntervalScheduler::new(*t)?)
            }
            SaveIntervalSpec::Wasm(p) => {
                let mut p = p.clone();
                for (k, v) in &args.policy_config {
                    p = p.with(k, v.as_str());
                }
                wasm_policy(&p, &c.sandbox, &c.run_name)?
            }
        },
        (None, None) => bail!("--save-interval is required without --config"),
    };
    let filename = match (&args.filename, config) {
        (Some(f), _) => Template::parse(f).context("--filename")?,
        (None, Some(c)) => c.filename.clone(),
        (None, None) => Template::parse(DEFAULT_FILENAME).expect("default template is valid"),
    };
    if spec.epochs_per_iteration.is_none() {
        let iterations = |t: Time| matches!(t, Time::Count(_, CountUnit::Iteration));
        let interval_iters = match (&args.save_interval, config) {
            (Some(s), _) => s.parse::<Time>().is_ok_and(iterations),
            (None, Some(c)) => {
                matches!(&c.save_interval, SaveIntervalSpec::Time(t) if iterations(*t))
            }
            (None, None) => false,
        };
        if interval_iters || spec.max_duration.unit == CountUnit::Iteration {
            bail!(
                "an interval or duration in iterations needs --epochs-per-iteration (or [train] epochs_per_iteration with --config)"
            );
        }
    }
    Ok((spec, Schedule::new(policy), filename, run_name))
}

const DEFAULT_FILENAME: &str = "ep{epoch}-ba{batch}-rank{rank}.pt";

/// `--policy-config` configures a component; a time string has nothing to configure.
fn no_component_config(pairs: &[(String, String)], interval: &str) -> Result<()> {
    if let Some((k, _)) = pairs.first() {
        bail!(
            "--policy-config {k}=... configures a .wasm component, but save_interval is '{interval}'"
        );
    }
    Ok(())
}

/// The built-in interval a `--save-interval` time string (or integer epochs) names.
fn time_policy(spec: &str, pairs: &[(String, String)]) -> Result<Box<dyn SavePolicy>> {
    no_component_config(pairs, spec)?;
    let time = match spec.trim().parse::<i64>() {
        Ok(epochs) => interval_epochs(epochs),
        Err(_) => parse_interval_time(spec),
    }
    .map_err(|e| anyhow!("--save-interval: {e}"))?;
    Ok(Box::new(IntervalScheduler::new(time)?))
}

/// A WebAssembly save-interval component, run exactly as `cairn run` runs it (same limits,
/// same deterministic clock and randomness), so the prediction holds.
fn wasm_policy(
    spec: &PolicySpec,
    sandbox: &SandboxConfig,
    run_name: &str,
) -> Result<Box<dyn SavePolicy>> {
    let run = RunInfo {
        run_name: run_name.to_owned(),
        ranks: Ranks::from_env(),
    };
    Ok(Box::new(
        super::policy_host().save_policy(spec, sandbox, &run)?,
    ))
}

/// `CAIRN_TENANT`, the tenant id a platform's operator sets for a tenant's process.
pub fn tenant_env() -> Option<String> {
    std::env::var(cairn::platform::TENANT_ENV).ok()
}
