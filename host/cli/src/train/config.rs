//! The job a config file describes for `cairn run` and `cairn simulate --config`: the saver's
//! config plus `[train]`, the simulated run (which the saver does not know about).
//!
//! Both commands load a job through [`Job::load`], so `simulate --config` refuses exactly what
//! `run` refuses.

use std::path::Path;

use cairn::Platform;
use cairn::config::{
    ConfigDocument, ConfigError, SaveIntervalSpec, max_duration_from, parse_max_duration,
};
use cairn::policy::{CountUnit, MaxDuration, Time};
use serde::Deserialize;
use toml::Spanned;

/// The embedded default job of `cairn run`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default_run.toml");

/// Longest simulated step: a day.
const MAX_SECONDS_PER_BATCH: f64 = 86_400.0;
/// Largest synthetic model: 1 TiB of weights.
const MAX_MODEL_MIB: f64 = (1u64 << 20) as f64;

/// `[train]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// How long to train (a time string or integer epochs; not `dur`).
    pub max_duration: Spanned<toml::Value>,
    /// Batches per epoch.
    pub batches_per_epoch: Spanned<u64>,
    /// Samples per batch.
    pub samples_per_batch: u64,
    /// Tokens per batch.
    pub tokens_per_batch: u64,
    /// Simulated step time, slept for real so upload and save overlap is visible.
    pub seconds_per_batch: Spanned<f64>,
    /// Epochs per iteration, if iterations are used.
    pub epochs_per_iteration: Option<Spanned<u64>>,
    /// Size of the synthetic model's weights (Adam adds two moments of the same size).
    pub model_mib: Spanned<f64>,
    /// Seed of the synthetic model's values.
    pub seed: u64,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            max_duration: Spanned::new(0..0, toml::Value::String("2ep".into())),
            batches_per_epoch: Spanned::new(0..0, 8),
            samples_per_batch: 32,
            tokens_per_batch: 0,
            seconds_per_batch: Spanned::new(0..0, 0.02),
            epochs_per_iteration: None,
            model_mib: Spanned::new(0..0, 16.0),
            seed: 0,
        }
    }
}

/// `[train]` after checking.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// When training ends.
    pub max_duration: MaxDuration,
    /// Batches per epoch.
    pub batches_per_epoch: u64,
    /// Samples per batch.
    pub samples_per_batch: u64,
    /// Tokens per batch.
    pub tokens_per_batch: u64,
    /// Step time in seconds.
    pub seconds_per_batch: f64,
    /// Epochs per iteration.
    pub epochs_per_iteration: Option<u64>,
    /// Weights size in MiB.
    pub model_mib: f64,
    /// Value seed.
    pub seed: u64,
}

/// A job: the saver's config and the simulated run.
#[derive(Clone, Debug)]
pub struct Job {
    /// The saver's config.
    pub saver: cairn::Config,
    /// The simulated run.
    pub train: TrainConfig,
}

impl Job {
    /// Read and check a job file.
    pub fn load(path: &Path, platform: Option<&Platform>) -> Result<Job, ConfigError> {
        let text = cairn::config::read_text(path)?;
        let file = path.display().to_string();
        Job::parse(&text, &file, cairn::config::base_of(path), platform)
    }

    /// Check `text`, naming `file` in errors; relative `.wasm` paths resolve against `base`.
    pub fn parse(
        text: &str,
        file: &str,
        base: &Path,
        platform: Option<&Platform>,
    ) -> Result<Job, ConfigError> {
        let mut doc = ConfigDocument::parse(text, file, base)?;
        let section: TrainSection = doc.take_section("train")?;
        let train = check(&doc, &section)?;
        let saver = doc.check_with(platform)?;
        iterations_configured(&saver.save_interval, &train).map_err(|message| ConfigError {
            file: file.to_owned(),
            location: String::new(),
            message,
        })?;
        Ok(Job { saver, train })
    }

    /// The embedded default of `cairn run`.
    pub fn embedded_default() -> Job {
        Job::parse(EMBEDDED_DEFAULT, "<embedded default>", Path::new("."), None)
            .expect("the embedded default config is valid")
    }
}

/// An interval or a duration in iterations needs to know how many epochs an iteration is;
/// without it no iteration event ever fires, so nothing would be saved (or training never ends).
pub fn iterations_configured(
    interval: &SaveIntervalSpec,
    train: &TrainConfig,
) -> Result<(), String> {
    if train.epochs_per_iteration.is_some() {
        return Ok(());
    }
    let hint = "set [train] epochs_per_iteration (or --epochs-per-iteration for simulate)";
    if let SaveIntervalSpec::Time(t @ Time::Count(_, CountUnit::Iteration)) = interval {
        return Err(format!(
            "checkpoint.save_interval '{t}' counts iterations, but no iteration length is configured: {hint}"
        ));
    }
    if train.max_duration.unit == CountUnit::Iteration {
        return Err(format!(
            "train.max_duration '{}' counts iterations, but no iteration length is configured: {hint}",
            train.max_duration
        ));
    }
    Ok(())
}

fn check(doc: &ConfigDocument<'_>, t: &TrainSection) -> Result<TrainConfig, ConfigError> {
    let md = &t.max_duration;
    let max_duration = match md.get_ref() {
        toml::Value::String(s) => parse_max_duration(s),
        toml::Value::Integer(n) => max_duration_from(Time::epochs(*n), &n.to_string()),
        other => Err(format!("expected a time string, not {other}")),
    }
    .map_err(|e| doc.error(md.span(), format!("train.max_duration: {e}")))?;
    let at = |v: std::ops::Range<usize>, m: String| doc.error(v, format!("train.{m}"));
    let batches = &t.batches_per_epoch;
    if *batches.get_ref() == 0 {
        return Err(at(
            batches.span(),
            "batches_per_epoch must be at least 1".into(),
        ));
    }
    let step = &t.seconds_per_batch;
    if !(0.0..=MAX_SECONDS_PER_BATCH).contains(step.get_ref()) {
        return Err(at(
            step.span(),
            format!(
                "seconds_per_batch must be between 0 and {MAX_SECONDS_PER_BATCH}, not {}",
                step.get_ref()
            ),
        ));
    }
    let mib = &t.model_mib;
    if !(*mib.get_ref() > 0.0 && *mib.get_ref() <= MAX_MODEL_MIB) {
        return Err(at(
            mib.span(),
            format!(
                "model_mib must be above 0 and at most {MAX_MODEL_MIB}, not {}",
                mib.get_ref()
            ),
        ));
    }
    if let Some(e) = &t.epochs_per_iteration
        && *e.get_ref() == 0
    {
        return Err(at(
            e.span(),
            "epochs_per_iteration must be at least 1".into(),
        ));
    }
    Ok(TrainConfig {
        max_duration,
        batches_per_epoch: *batches.get_ref(),
        samples_per_batch: t.samples_per_batch,
        tokens_per_batch: t.tokens_per_batch,
        seconds_per_batch: *step.get_ref(),
        epochs_per_iteration: t.epochs_per_iteration.as_ref().map(|e| *e.get_ref()),
        model_mib: *mib.get_ref(),
        seed: t.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let job = Job::embedded_default();
        assert!(job.train.model_mib > 0.0);
    }

    #[test]
    fn train_errors_name_the_key_and_its_place() {
        let cases = [
            (
                "[train]\nmax_duration = \"0.5dur\"\n",
                "job.toml:2:16",
                "train.max_duration",
            ),
            (
                "[train]\nmax_duration = \"2 epochs\"\n",
                "job.toml:2:16",
                "train.max_duration",
            ),
            (
                "[train]\nbatches_per_epoch = 0\n",
                "job.toml:2:21",
                "train.batches_per_epoch",
            ),
            (
                "[train]\nbatches_per_epoch = \"3\"\n",
                "job.toml:2:21",
                "train.",
            ),
            (
                "[train]\nseconds_per_batch = 1e300\n",
                "job.toml:2:21",
                "train.seconds_per_batch",
            ),
            (
                "[train]\nmodel_mib = -1\n",
                "job.toml:2:13",
                "train.model_mib",
            ),
            ("[train]\nmodel_mb = 1\n", "job.toml:2:1", "model_mb"),
            (
                "[checkpoint]\nsave_interval = \"1iter\"\n",
                "job.toml:",
                "epochs_per_iteration",
            ),
            (
                "[train]\nmax_duration = \"2iter\"\n",
                "job.toml:",
                "epochs_per_iteration",
            ),
        ];
        for (text, location, needle) in cases {
            let e = match Job::parse(text, "job.toml", Path::new("."), None) {
                Ok(_) => panic!("{text:?} should fail"),
                Err(e) => e.to_string(),
            };
            assert!(e.starts_with(location), "{text:?}: {e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
