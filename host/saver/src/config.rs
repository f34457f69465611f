//! The TOML configuration of a saver.
//!
//! Every key of Composer's `CheckpointSaver` constructor has a key of the same name under
//! `[checkpoint]`, with Composer's default. Loading happens in two steps: serde reads the file
//! (`deny_unknown_fields`, so a typo is an error naming the key and its line), then
//! [`ConfigFile::validate`] turns strings into checked values (time strings, name templates)
//! and reports the first problem with the file, line, key and value at fault.
//!
//! A file may also hold tables that belong to the application embedding the saver (`cairn run`
//! reads its simulated trainer from `[train]`): [`ConfigDocument::take_section`] hands such a
//! table to the application, with the same `file:line:column` errors, before the rest is checked.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use cairn_format::{CheckpointFormat, ReadLimits};
use cairn_policy::{MaxDuration, PolicySpec, SandboxConfig, Time};

use crate::names;
use crate::platform::Platform;
use crate::remote::store::{self, url_scheme};
pub use crate::run_name::RunNameOrigin;
use crate::template::{Template, Var, Vars};

/// Longest `upload_timeout_in_seconds`: a year. A bound beyond that is no bound, and values
/// near 1e19 used to overflow the clock inside the upload task.
pub const MAX_UPLOAD_TIMEOUT_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Largest `[sandbox] memory_limit_mib`: 1 TiB (past 2^44 MiB the byte count wraps).
pub const MAX_MEMORY_LIMIT_MIB: u64 = 1 << 20;

/// Most uploads in flight at once (each holds a file open and a network connection).
pub const MAX_CONCURRENT_UPLOADS: i64 = 256;

/// Default `commit_timeout_s`: how long global rank 0 waits for every rank's shard of a sharded
/// step. Ten minutes covers the upload of a large shard on a slow link; a rank that died is
/// reported after that.
pub const DEFAULT_COMMIT_TIMEOUT_SECONDS: f64 = 600.0;
/// Largest `staging_budget_mib`: 1 TiB (past 2^44 MiB the byte count wraps).
pub const MAX_STAGING_BUDGET_MIB: i64 = 1 << 20;

/// A configuration problem: where it is and what is wrong, in one sentence.
#[derive(Debug, Error)]
#[error("{file}{location}: {message}")]
pub struct ConfigError {
    /// The config file (or `<embedded default>`).
    pub file: String,
    /// `:line:column` when known.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

/// A whole config file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The run's name (`{run_name}`); without it, chosen as Composer does (`RUN_NAME`, else a
    /// generated unique name).
    #[serde(default)]
    pub run_name: Option<Spanned<String>>,
    /// Composer's `CheckpointSaver` arguments.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Where remote names go.
    #[serde(default)]
    pub remote: RemoteSection,
    /// Limits for every policy component of this job.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Bounds on reading checkpoint files (resume, local or remote).
    #[serde(default)]
    pub read: ReadSection,
}

/// `[read]`: how much work reading one checkpoint may cost, whoever wrote it (see
/// `cairn_format::ReadLimits`). Not under `[checkpoint]`, whose keys are exactly Composer's
/// `CheckpointSaver` arguments: these bound every file the job reads, like `[sandbox]` bounds
/// every component it runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadSection {
    /// A compressed checkpoint may expand at most this many times its size.
    #[serde(default = "read_defaults::ratio")]
    pub max_expansion_ratio: Spanned<i64>,
    /// ... and to at most this many MiB in all.
    #[serde(default = "read_defaults::expanded")]
    pub max_expanded_mib: Spanned<i64>,
    /// Expansion allowed whatever the ratio, in MiB.
    #[serde(default = "read_defaults::floor")]
    pub expansion_floor_mib: Spanned<i64>,
    /// The largest pickle (`data.pkl`) read, in MiB.
    #[serde(default = "read_defaults::pickle")]
    pub max_pickle_mib: Spanned<i64>,
}

mod read_defaults {
    use cairn_format::ReadLimits;
    use toml::Spanned;

    fn spanned(n: u64) -> Spanned<i64> {
        Spanned::new(0..0, n as i64)
    }
    pub fn ratio() -> Spanned<i64> {
        spanned(ReadLimits::default().max_expansion_ratio)
    }
    pub fn expanded() -> Spanned<i64> {
        spanned(ReadLimits::default().max_expanded_bytes >> 20)
    }
    pub fn floor() -> Spanned<i64> {
        spanned(ReadLimits::default().ratio_floor_bytes >> 20)
    }
    pub fn pickle() -> Spanned<i64> {
        spanned(ReadLimits::default().max_pickle_bytes >> 20)
    }
}

impl Default for ReadSection {
    fn default() -> Self {
        ReadSection {
            max_expansion_ratio: read_defaults::ratio(),
            max_expanded_mib: read_defaults::expanded(),
            expansion_floor_mib: read_defaults::floor(),
            max_pickle_mib: read_defaults::pickle(),
        }
    }
}

impl ReadSection {
    fn limits(&self, at: &Locator<'_>) -> Result<ReadLimits, ConfigError> {
        let positive = |key: &str, v: &Spanned<i64>, max: i64| {
            let n = *v.get_ref();
            if (1..=max).contains(&n) {
                Ok(n as u64)
            } else {
                Err(at.at(
                    v,
                    format!("read.{key} must be between 1 and {max}, not {n}"),
                ))
            }
        };
        // MiB values up to 2^40 (an exbibyte) keep the byte counts far from overflow.
        Ok(ReadLimits {
            max_expansion_ratio: positive(
                "max_expansion_ratio",
                &self.max_expansion_ratio,
                1 << 40,
            )?,
            max_expanded_bytes: positive("max_expanded_mib", &self.max_expanded_mib, 1 << 40)?
                << 20,
            ratio_floor_bytes: positive("expansion_floor_mib", &self.expansion_floor_mib, 1 << 40)?
                << 20,
            max_pickle_bytes: positive("max_pickle_mib", &self.max_pickle_mib, 1 << 40)? << 20,
        })
    }
}

/// A string that may be disabled with `false` (Composer's `None`).
#[derive(Clone, Debug, PartialEq)]
pub enum MaybeName {
    /// A name template.
    Name(String),
    /// `false`: disabled.
    Disabled,
}

impl<'de> Deserialize<'de> for MaybeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Flag(bool),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Name(s)) => Ok(MaybeName::Name(s)),
            Ok(Raw::Flag(false)) => Ok(MaybeName::Disabled),
            _ => Err(serde::de::Error::custom(
                "expected a name template (a string) or false to disable it",
            )),
        }
    }
}

/// `[checkpoint]`: Composer's constructor arguments.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Local folder template (dist variables and `{run_name}` only).
    #[serde(default = "defaults::folder")]
    pub folder: Spanned<String>,
    /// Checkpoint file name template; its extension selects the format.
    #[serde(default = "defaults::filename")]
    pub filename: Spanned<String>,
    /// Object name template for uploads, or `false`. Unset: Composer's default, or for a
    /// `folder` given as a URL, `filename` under the URL's path (as Composer's `Trainer` names it).
    #[serde(default)]
    pub remote_file_name: Option<Spanned<MaybeName>>,
    /// Local `latest` pointer name, or `false`.
    #[serde(default = "defaults::latest_filename")]
    pub latest_filename: Spanned<MaybeName>,
    /// Remote `latest` pointer name (`.symlink` is appended), or `false`. Unset: as for
    /// `remote_file_name`, with `latest_filename`.
    #[serde(default)]
    pub latest_remote_file_name: Option<Spanned<MaybeName>>,
    /// Time string, integer epochs, or `{ wasm = "...", config = {...} }`.
    #[serde(default = "defaults::save_interval")]
    pub save_interval: Spanned<toml::Value>,
    /// Replace existing checkpoints (and skip the conflict scan).
    #[serde(default)]
    pub overwrite: bool,
    /// Local retention: -1 keeps all, 0 keeps none, k keeps the newest k.
    #[serde(default = "defaults::keep")]
    pub num_checkpoints_to_keep: i64,
    /// Save only `state/{model, integrations, metadata}`.
    #[serde(default)]
    pub weights_only: bool,
    /// Glob list or `{ wasm = "...", config = {...} }`.
    #[serde(default)]
    pub ignore_keys: Option<Spanned<toml::Value>>,
    /// Uploads in flight at once.
    #[serde(default = "defaults::one")]
    pub num_concurrent_uploads: Spanned<i64>,
    /// Bound on each checkpoint's upload.
    #[serde(default = "defaults::upload_timeout")]
    pub upload_timeout_in_seconds: Spanned<f64>,
    /// Every rank saves its own shard (a name with `{rank}`), and global rank 0 commits each step
    /// once every shard is in place (see the `sharded` module).
    #[serde(default)]
    pub sharded: bool,
    /// How long global rank 0 waits for every rank's shard of a sharded step.
    #[serde(default = "defaults::commit_timeout")]
    pub commit_timeout_s: Spanned<f64>,
    /// Write checkpoints behind training: a due save copies the tensors into staging buffers and
    /// returns; the rest runs on a background writer.
    #[serde(default)]
    pub async_save: bool,
    /// Most MiB of staging buffers `async_save` may hold; a larger state saves synchronously.
    /// Unset: half the machine's memory over its local ranks, at most 32 GiB.
    #[serde(default)]
    pub staging_budget_mib: Option<Spanned<i64>>,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        toml::from_str("").expect("every [checkpoint] key has a default")
    }
}

mod defaults {
    use super::*;
    fn s(v: &str) -> Spanned<String> {
        Spanned::new(0..0, v.to_owned())
    }
    fn n(v: &str) -> Spanned<MaybeName> {
        Spanned::new(0..0, MaybeName::Name(v.to_owned()))
    }
    pub fn folder() -> Spanned<String> {
        s("{run_name}/checkpoints")
    }
    pub fn filename() -> Spanned<String> {
        s("ep{epoch}-ba{batch}-rank{rank}.pt")
    }
    pub fn remote_file_name() -> Spanned<MaybeName> {
        n(REMOTE_FILE_NAME)
    }
    pub const REMOTE_FILE_NAME: &str = "{run_name}/checkpoints/ep{epoch}-ba{batch}-rank{rank}.pt";
    pub fn latest_filename() -> Spanned<MaybeName> {
        n("latest-rank{rank}.pt")
    }
    pub fn latest_remote_file_name() -> Spanned<MaybeName> {
        n("{run_name}/checkpoints/latest-rank{rank}.pt")
    }
    pub fn save_interval() -> Spanned<toml::Value> {
        Spanned::new(0..0, toml::Value::String("1ep".into()))
    }
    pub fn keep() -> i64 {
        -1
    }
    pub fn one() -> Spanned<i64> {
        Spanned::new(0..0, 1)
    }
    pub fn upload_timeout() -> Spanned<f64> {
        Spanned::new(0..0, 3600.0)
    }
    pub fn commit_timeout() -> Spanned<f64> {
        Spanned::new(0..0, DEFAULT_COMMIT_TIMEOUT_SECONDS)
    }
}

/// `[remote]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSection {
    /// Store URL: `file://`, `memory://`, `s3://`, `gs://`, `az://`.
    #[serde(default = "default_remote_url")]
    pub url: Spanned<String>,
    /// What a failed upload does to training.
    #[serde(default)]
    pub on_failure: OnUploadFailure,
}

impl Default for RemoteSection {
    fn default() -> Self {
        RemoteSection {
            url: default_remote_url(),
            on_failure: OnUploadFailure::default(),
        }
    }
}

/// `[remote] on_failure`: what an upload that failed after its retries does to training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUploadFailure {
    /// The next checkpoint event returns the upload's error, and so does `fit_end` (Composer's
    /// `RemoteUploader`, which re-raises at the next `BATCH_END`).
    #[default]
    Fail,
    /// Training goes on with a warning at the next event; `fit_end` still returns the error.
    Warn,
}

fn default_remote_url() -> Spanned<String> {
    Spanned::new(0..0, "file://./remote".to_owned())
}

/// A checked `save_interval`.
#[derive(Clone, Debug, PartialEq)]
pub enum SaveIntervalSpec {
    /// A Composer time (time string or integer epochs).
    Time(Time),
    /// A WebAssembly component.
    Wasm(PolicySpec),
}

/// A checked `ignore_keys`.
#[derive(Clone, Debug, PartialEq)]
pub enum IgnoreKeysSpec {
    /// Nothing is left out (`None` or `[]`).
    None,
    /// A glob list.
    Globs(Vec<String>),
    /// A WebAssembly component.
    Wasm(PolicySpec),
}

/// A configuration after every value was checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// The run's name.
    pub run_name: String,
    /// Where the run's name came from.
    pub run_name_origin: RunNameOrigin,
    /// Local folder template.
    pub folder: Template,
    /// Checkpoint file name template.
    pub filename: Template,
    /// Remote object name template.
    pub remote_file_name: Option<Template>,
    /// Local `latest` name template.
    pub latest_filename: Option<Template>,
    /// Remote `latest` name template.
    pub latest_remote_file_name: Option<Template>,
    /// When to save.
    pub save_interval: SaveIntervalSpec,
    /// Replace existing checkpoints.
    pub overwrite: bool,
    /// Local retention.
    pub num_checkpoints_to_keep: i64,
    /// Weights-only checkpoints.
    pub weights_only: bool,
    /// What to leave out.
    pub ignore_keys: IgnoreKeysSpec,
    /// Uploads in flight.
    pub num_concurrent_uploads: usize,
    /// Bound on one upload, in seconds.
    pub upload_timeout_in_seconds: f64,
    /// Every rank saves its own shard; global rank 0 commits each step.
    pub sharded: bool,
    /// How long global rank 0 waits for every shard of a step, in seconds.
    pub commit_timeout_s: f64,
    /// Remote store URL (`[remote] url`; a `folder` given as a URL takes its place).
    pub remote_url: String,
    /// What a failed upload does to training.
    pub on_upload_failure: OnUploadFailure,
    /// Write checkpoints behind training.
    pub async_save: bool,
    /// The staging budget in MiB, if set (else the saver picks one from the machine's memory).
    pub staging_budget_mib: Option<u64>,
    /// Policy limits.
    pub sandbox: SandboxConfig,
    /// Bounds on reading checkpoint files.
    pub read: ReadLimits,
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text(path)?;
        ConfigDocument::parse(&text, &path.display().to_string(), base_of(path))?.check()
    }

    /// Check `text`, naming `file` in errors; relative `.wasm` paths resolve against `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        ConfigDocument::parse(text, file, base)?.check()
    }
}

/// The text of a config file, or an error naming it.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        location: String::new(),
        message: format!("cannot read the config file: {e}"),
    })
}

/// The folder relative `.wasm` paths of the file at `path` resolve against.
pub fn base_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A parsed config file whose values are not checked yet: the application takes the tables it
/// owns ([`ConfigDocument::take_section`]), then [`ConfigDocument::check`] checks the saver's.
pub struct ConfigDocument<'a> {
    at: Locator<'a>,
    base: &'a Path,
    table: Spanned<DeTable<'a>>,
}

impl<'a> ConfigDocument<'a> {
    /// Parse `text` (TOML syntax only), naming `file` in errors.
    pub fn parse(text: &'a str, file: &'a str, base: &'a Path) -> Result<Self, ConfigError> {
        let at = Locator { text, file };
        let table = DeTable::parse(text).map_err(|e| at.error(e.span(), e.message()))?;
        Ok(ConfigDocument { at, base, table })
    }

    /// Remove the table `name` (which the saver does not know) and deserialize it as the
    /// application's `T`; `T::default()` when the file has none. Errors carry the file, line and
    /// column, and name the key as `name.key`.
    pub fn take_section<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
    ) -> Result<T, ConfigError> {
        let table = self.table.get_mut();
        let Some(key) = table.keys().find(|k| k.get_ref().as_ref() == name).cloned() else {
            return Ok(T::default());
        };
        let value: Spanned<DeValue<'a>> = table.remove(&key).expect("the key was just found");
        T::deserialize(toml::de::ValueDeserializer::from(value))
            .map_err(|e| self.at.error(e.span(), format!("{name}.{}", e.message())))
    }

    /// Where `span` lies, as `file:line:column`, for the application's own checks of a section.
    pub fn error(&self, span: std::ops::Range<usize>, message: impl fmt::Display) -> ConfigError {
        self.at.error(Some(span), message)
    }

    /// Check the saver's keys; any table left that the saver does not know is an error.
    pub fn check(self) -> Result<Config, ConfigError> {
        self.check_with(None)
    }

    /// [`ConfigDocument::check`], then the operator's platform file: its `[sandbox]` defaults
    /// fill the keys this file leaves out, and anything the platform does not allow is refused
    /// with the key's place in this file.
    pub fn check_with(self, platform: Option<&Platform>) -> Result<Config, ConfigError> {
        let mut keys = Vec::new();
        key_spans(self.table.get_ref(), "", &mut keys);
        let raw =
            ConfigFile::deserialize(toml::de::Deserializer::from(self.table)).map_err(|e| {
                let message = match e.span().and_then(|s| key_at(&keys, &s)) {
                    Some(key) if !e.message().contains(key) => format!("{key}: {}", e.message()),
                    _ => e.message().to_owned(),
                };
                self.at.error(e.span(), message)
            })?;
        let mut config = raw.validate(&self.at, self.base)?;
        if let Some(platform) = platform {
            let at = |key: &str, message: String| {
                let span = keys.iter().find(|(_, k)| k == key).map(|(s, _)| s.clone());
                self.at.error(span, message)
            };
            let set = |k: &str| keys.iter().any(|(_, key)| *key == format!("sandbox.{k}"));
            platform.apply(&mut config, &set, &at)?;
            confine(platform, &config, &at)?;
        }
        Ok(config)
    }
}

/// Refuse what a platform does not let this config reach: its folder, its store, its components.
fn confine(
    platform: &Platform,
    config: &Config,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let vars = crate::template::Vars {
        run_name: &config.run_name,
        ranks: cairn_policy::Ranks::from_env(),
        timestamp: None,
    };
    let folder = config.folder.render(&vars);
    platform
        .check_folder(&folder)
        .map_err(|m| at("checkpoint.folder", m))?;
    if config.remote_file_name.is_some() && !crate::remote::is_remote_url(&folder) {
        platform
            .check_remote(&config.remote_url)
            .map_err(|m| at("remote.url", m))?;
    }
    for name in [&config.filename]
        .into_iter()
        .chain(config.latest_filename.as_ref())
    {
        if name.source().split('/').any(|s| s == "..") {
            let key = if std::ptr::eq(name, &config.filename) {
                "checkpoint.filename"
            } else {
                "checkpoint.latest_filename"
            };
            return Err(at(
                key,
                format!(
                    "{key} '{name}' climbs out of the checkpoint folder with '..', which the platform does not allow"
                ),
            ));
        }
    }
    let components = [
        (
            "checkpoint.save_interval",
            match &config.save_interval {
                SaveIntervalSpec::Wasm(spec) => Some(spec),
                SaveIntervalSpec::Time(_) => None,
            },
        ),
        (
            "checkpoint.ignore_keys",
            match &config.ignore_keys {
                IgnoreKeysSpec::Wasm(spec) => Some(spec),
                _ => None,
            },
        ),
    ];
    for (key, spec) in components {
        if let Some(spec) = spec {
            let (digest, len) =
                cairn_policy::identify_component(&spec.wasm, config.sandbox.max_component_bytes())
                    .map_err(|e| at(key, format!("{key}: {e}")))?;
            platform
                .check_component(&spec.wasm, &digest, len)
                .map_err(|m| at(key, format!("{key}: {m}")))?;
        }
    }
    Ok(())
}

/// Every key of `table` (dotted from the top: `checkpoint.num_concurrent_uploads`) with the span of
/// its value, so a type error serde reports by position can name its key.
fn key_spans(table: &DeTable<'_>, prefix: &str, out: &mut Vec<(std::ops::Range<usize>, String)>) {
    for (key, value) in table {
        let name = format!("{prefix}{}", key.get_ref());
        if let DeValue::Table(inner) = value.get_ref() {
            key_spans(inner, &format!("{name}."), out);
        }
        out.push((value.span(), name));
    }
}

/// The innermost key whose value contains `span`.
fn key_at<'k>(
    keys: &'k [(std::ops::Range<usize>, String)],
    span: &std::ops::Range<usize>,
) -> Option<&'k str> {
    keys.iter()
        .filter(|(s, _)| s.start <= span.start && span.end <= s.end)
        .min_by_key(|(s, _)| s.end - s.start)
        .map(|(_, k)| k.as_str())
}

/// Turns byte spans into `file:line:column` for error messages.
struct Locator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Locator<'_> {
    fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl fmt::Display,
    ) -> ConfigError {
        let location = match span {
            Some(s) if s.end > 0 => {
                let before = &self.text[..s.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(":{line}:{column}")
            }
            _ => String::new(),
        };
        ConfigError {
            file: self.file.to_owned(),
            location,
            message: message.to_string().trim_end().to_owned(),
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>, message: impl fmt::Display) -> ConfigError {
        self.error(Some(spanned.span()), message)
    }
}

impl ConfigFile {
    fn validate(self, at: &Locator<'_>, base: &Path) -> Result<Config, ConfigError> {
        let c = &self.checkpoint;
        let (run_name, run_name_origin) = match &self.run_name {
            Some(name) if name.get_ref().is_empty() => {
                return Err(at.at(name, "run_name is empty"));
            }
            Some(name) if name.get_ref().contains('\0') => {
                return Err(at.at(name, "run_name contains a NUL character"));
            }
            Some(name) => (name.get_ref().clone(), RunNameOrigin::Config),
            None => crate::run_name::default_run_name(),
        };
        let template = |key: &str, s: &Spanned<String>| {
            Template::parse(s.get_ref()).map_err(|e| at.at(s, format!("checkpoint.{key}: {e}")))
        };
        let maybe = |key: &str, s: &Spanned<MaybeName>| match s.get_ref() {
            MaybeName::Disabled => Ok(None),
            MaybeName::Name(n) if n.is_empty() => Ok(None),
            MaybeName::Name(n) => Template::parse(n)
                .map(Some)
                .map_err(|e| at.at(s, format!("checkpoint.{key}: {e}"))),
        };
        let folder = template("folder", &c.folder)?;
        if let Some(v) = folder.vars().find(|v| v.is_time()) {
            return Err(at.at(
                &c.folder,
                format!(
                    "checkpoint.folder '{}' uses the time variable {{{}}}; put time variables in filename instead",
                    folder,
                    v.name()
                ),
            ));
        }
        let rendered_folder = folder.render(&Vars {
            run_name: &run_name,
            ranks: Default::default(),
            timestamp: None,
        });
        let folder_is_url = url_scheme(&rendered_folder).is_some();
        if folder_is_url {
            store::check_url(&rendered_folder)
                .map_err(|e| at.at(&c.folder, format!("checkpoint.folder: {e}")))?;
        }
        let checked = |key: &str, span: std::ops::Range<usize>, result: Result<(), String>| {
            result.map_err(|e| at.error(Some(span), format!("checkpoint.{key} {e}")))
        };
        let filename = template("filename", &c.filename)?;
        checked(
            "filename",
            c.filename.span(),
            names::check_file_name(&filename, &run_name),
        )?;
        CheckpointFormat::from_name(filename.source())
            .map_err(|e| at.at(&c.filename, format!("checkpoint.filename: {e}")))?;
        let latest_filename = maybe("latest_filename", &c.latest_filename)?;
        if let Some(latest) = &latest_filename {
            let s = c.latest_filename.span();
            checked(
                "latest_filename",
                s.clone(),
                names::check_file_name(latest, &run_name),
            )?;
            checked(
                "latest_filename",
                s.clone(),
                names::check_compression(latest),
            )?;
            checked(
                "latest_filename",
                s,
                names::check_latest_apart(latest, &filename, &run_name),
            )?;
        }
        // A `folder` given as a URL names its objects `<url path>/<filename>`, as Composer's
        // `Trainer` does (`composer/trainer/trainer.py`, the `save_folder` branch), unless the
        // names are set explicitly; the URL's path is the store's prefix.
        let (remote_file_name, latest_remote_file_name) =
            match (&c.remote_file_name, &c.latest_remote_file_name) {
                (remote, latest) if folder_is_url => (
                    match remote {
                        Some(r) => maybe("remote_file_name", r)?,
                        None => Some(filename.clone()),
                    },
                    match latest {
                        Some(l) => maybe("latest_remote_file_name", l)?,
                        None => latest_filename.clone(),
                    },
                ),
                (remote, latest) => (
                    maybe(
                        "remote_file_name",
                        remote.as_ref().unwrap_or(&defaults::remote_file_name()),
                    )?,
                    maybe(
                        "latest_remote_file_name",
                        latest
                            .as_ref()
                            .unwrap_or(&defaults::latest_remote_file_name()),
                    )?,
                ),
            };
        let span_of = |s: &Option<Spanned<MaybeName>>| s.as_ref().map_or(0..0, |s| s.span());
        if let Some(name) = &remote_file_name {
            let s = span_of(&c.remote_file_name);
            checked(
                "remote_file_name",
                s.clone(),
                names::check_object_name(name, &run_name, ""),
            )?;
            checked("remote_file_name", s, names::check_compression(name))?;
        }
        if let Some(name) = &latest_remote_file_name {
            let s = span_of(&c.latest_remote_file_name);
            let suffix = crate::remote::SYMLINK_SUFFIX;
            checked(
                "latest_remote_file_name",
                s.clone(),
                names::check_object_name(name, &run_name, suffix),
            )?;
            checked("latest_remote_file_name", s, names::check_compression(name))?;
        }
        let url = &self.remote.url;
        store::check_url(url.get_ref()).map_err(|e| at.at(url, format!("remote.url: {e}")))?;
        let uploads = *c.num_concurrent_uploads.get_ref();
        if !(1..=MAX_CONCURRENT_UPLOADS).contains(&uploads) {
            return Err(at.at(
                &c.num_concurrent_uploads,
                format!(
                    "checkpoint.num_concurrent_uploads must be between 1 and {MAX_CONCURRENT_UPLOADS}, not {uploads}"
                ),
            ));
        }
        let timeout = *c.upload_timeout_in_seconds.get_ref();
        if !(timeout > 0.0 && timeout <= MAX_UPLOAD_TIMEOUT_SECONDS) {
            return Err(at.at(
                &c.upload_timeout_in_seconds,
                format!(
                    "checkpoint.upload_timeout_in_seconds must be above 0 and at most {MAX_UPLOAD_TIMEOUT_SECONDS} (a year), not {timeout}"
                ),
            ));
        }
        let commit_timeout = *c.commit_timeout_s.get_ref();
        if !(commit_timeout > 0.0 && commit_timeout <= MAX_UPLOAD_TIMEOUT_SECONDS) {
            return Err(at.at(
                &c.commit_timeout_s,
                format!(
                    "checkpoint.commit_timeout_s must be above 0 and at most {MAX_UPLOAD_TIMEOUT_SECONDS} (a year), not {commit_timeout}"
                ),
            ));
        }
        if c.sharded {
            checked(
                "filename",
                c.filename.span(),
                names::check_sharded(&filename),
            )?;
            if let Some(name) = &remote_file_name {
                checked(
                    "remote_file_name",
                    span_of(&c.remote_file_name),
                    names::check_sharded(name),
                )?;
            }
            checked(
                "folder",
                c.folder.span(),
                names::check_shared_folder(&folder),
            )?;
        }
        let staging_budget_mib = match &c.staging_budget_mib {
            None => None,
            Some(mib) if (1..=MAX_STAGING_BUDGET_MIB).contains(mib.get_ref()) => {
                Some(*mib.get_ref() as u64)
            }
            Some(mib) => {
                return Err(at.at(
                    mib,
                    format!(
                        "checkpoint.staging_budget_mib must be between 1 and {MAX_STAGING_BUDGET_MIB} (1 TiB), not {}",
                        mib.get_ref()
                    ),
                ));
            }
        };
        if self.sandbox.memory_limit_mib > MAX_MEMORY_LIMIT_MIB {
            return Err(at.error(
                None,
                format!(
                    "sandbox.memory_limit_mib must be at most {MAX_MEMORY_LIMIT_MIB} (1 TiB; 0 means no limit), not {}",
                    self.sandbox.memory_limit_mib
                ),
            ));
        }
        Ok(Config {
            run_name,
            run_name_origin,
            remote_file_name,
            latest_filename,
            latest_remote_file_name,
            save_interval: save_interval(at, &c.save_interval, base)?,
            ignore_keys: ignore_keys(at, c.ignore_keys.as_ref(), base)?,
            overwrite: c.overwrite,
            num_checkpoints_to_keep: c.num_checkpoints_to_keep,
            weights_only: c.weights_only,
            num_concurrent_uploads: uploads as usize,
            upload_timeout_in_seconds: timeout,
            sharded: c.sharded,
            commit_timeout_s: commit_timeout,
            remote_url: url.get_ref().clone(),
            on_upload_failure: self.remote.on_failure,
            async_save: c.async_save,
            staging_budget_mib,
            sandbox: self.sandbox,
            read: self.read.limits(at)?,
            folder,
            filename,
        })
    }
}

/// A time for `save_interval` from a time string (a TOML integer or a bare integer on the
/// command line means epochs; a bare number in a string is refused like any unitless string).
pub fn parse_interval_time(value: &str) -> Result<Time, String> {
    let time: Time = value
        .parse()
        .map_err(|e: cairn_policy::TimeError| e.to_string())?;
    positive_interval(time, value)
}

/// A `save_interval` of `n` epochs (a TOML integer, or a bare integer on the command line).
pub fn interval_epochs(n: i64) -> Result<Time, String> {
    positive_interval(Time::epochs(n), &n.to_string())
}

/// Composer accepts a zero or negative interval and then never saves, and divides by zero on
/// `0dur`: both can only be mistakes, so both are refused.
fn positive_interval(time: Time, text: &str) -> Result<Time, String> {
    match time {
        Time::Fraction(f) if f <= 0.0 => Err(format!(
            "'{text}' is not positive: a fraction of the run must be above zero"
        )),
        Time::Count(n, _) if n <= 0 => Err(format!(
            "'{text}' is not positive, so nothing would ever be saved (\"1dur\" saves only at the end of training)"
        )),
        t => Ok(t),
    }
}

/// A `max_duration` from a time string: positive, not in `dur`.
pub fn parse_max_duration(value: &str) -> Result<MaxDuration, String> {
    let time = value
        .parse()
        .map_err(|e: cairn_policy::TimeError| e.to_string())?;
    max_duration_from(time, value)
}

/// A `max_duration` from a parsed time (`text` is how the user wrote it).
pub fn max_duration_from(time: Time, text: &str) -> Result<MaxDuration, String> {
    match time {
        Time::Fraction(_) => Err(format!(
            "max_duration '{text}' cannot be a fraction of itself: use ep, ba, sp, tok, iter or sec"
        )),
        t => MaxDuration::new(t).ok_or_else(|| format!("max_duration '{text}' must be positive")),
    }
}

fn save_interval(
    at: &Locator<'_>,
    v: &Spanned<toml::Value>,
    base: &Path,
) -> Result<SaveIntervalSpec, ConfigError> {
    let err = |m: String| at.at(v, format!("checkpoint.save_interval: {m}"));
    match v.get_ref() {
        toml::Value::String(s) => parse_interval_time(s)
            .map(SaveIntervalSpec::Time)
            .map_err(err),
        toml::Value::Integer(n) => interval_epochs(*n).map(SaveIntervalSpec::Time).map_err(err),
        toml::Value::Table(_) => policy_spec(v.get_ref(), base)
            .map(SaveIntervalSpec::Wasm)
            .map_err(err),
        other => Err(err(format!(
            "expected a time string, an integer number of epochs, or {{ wasm = \"...\" }}, not {other}"
        ))),
    }
}

fn ignore_keys(
    at: &Locator<'_>,
    v: Option<&Spanned<toml::Value>>,
    base: &Path,
) -> Result<IgnoreKeysSpec, ConfigError> {
    let Some(v) = v else {
        return Ok(IgnoreKeysSpec::None);
    };
    let err = |m: String| at.at(v, format!("checkpoint.ignore_keys: {m}"));
    match v.get_ref() {
        toml::Value::Array(items) => {
            let globs = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => {
                        cairn_policy::Glob::new(s).map_err(|e| err(e.to_string()))?;
                        Ok(s.clone())
                    }
                    other => Err(err(format!("expected glob strings, found {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if globs.is_empty() {
                IgnoreKeysSpec::None
            } else {
                IgnoreKeysSpec::Globs(globs)
            })
        }
        toml::Value::Table(_) => policy_spec(v.get_ref(), base)
            .map(IgnoreKeysSpec::Wasm)
            .map_err(err),
        other => Err(err(format!(
            "expected a list of globs or {{ wasm = \"...\" }}, not {other}"
        ))),
    }
}

fn policy_spec(v: &toml::Value, base: &Path) -> Result<PolicySpec, String> {
    let mut spec: PolicySpec = v
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())?;
    if spec.wasm.is_relative() {
        spec.wasm = base.join(&spec.wasm);
    }
    // Only existence: a path that names a directory, a device or a FIFO is refused when the
    // component is loaded, with what it is (`cairn_policy::PolicyError::NotAFile`).
    if !spec.wasm.exists() {
        return Err(format!(
            "policy component {} does not exist",
            spec.wasm.display()
        ));
    }
    Ok(spec)
}

/// True when `var` may appear in the local folder template.
pub fn allowed_in_folder(var: Var) -> bool {
    !var.is_time()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_policy::OnError;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "cairn.toml", Path::new("."))
    }

    #[test]
    fn read_limits_have_defaults_and_are_checked() {
        assert_eq!(parse("").unwrap().read, ReadLimits::default());
        let c =
            parse("[read]\nmax_expansion_ratio = 8\nmax_expanded_mib = 100\nmax_pickle_mib = 1\n")
                .unwrap();
        assert_eq!(c.read.max_expansion_ratio, 8);
        assert_eq!(c.read.max_expanded_bytes, 100 << 20);
        assert_eq!(c.read.max_pickle_bytes, 1 << 20);
        let e = parse("[read]\nmax_expansion_ratio = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cairn.toml:2:23") && e.contains("read.max_expansion_ratio"),
            "{e}"
        );
        let e = parse("[read]\nmax_ratio = 3\n").unwrap_err().to_string();
        assert!(e.contains("max_ratio"), "{e}");
    }

    #[test]
    fn an_empty_file_has_composer_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.folder.source(), "{run_name}/checkpoints");
        assert_eq!(c.filename.source(), "ep{epoch}-ba{batch}-rank{rank}.pt");
        assert_eq!(c.latest_filename.unwrap().source(), "latest-rank{rank}.pt");
        assert_eq!(
            c.remote_file_name.unwrap().source(),
            "{run_name}/checkpoints/ep{epoch}-ba{batch}-rank{rank}.pt"
        );
        assert_eq!(c.save_interval, SaveIntervalSpec::Time(Time::epochs(1)));
        assert!(!c.overwrite && !c.weights_only);
        assert_eq!(c.num_checkpoints_to_keep, -1);
        assert_eq!(c.ignore_keys, IgnoreKeysSpec::None);
        assert_eq!(
            (c.num_concurrent_uploads, c.upload_timeout_in_seconds),
            (1, 3600.0)
        );
        assert_eq!(c.sandbox, SandboxConfig::default());
        assert!(!c.async_save);
        assert_eq!(c.staging_budget_mib, None);
    }

    #[test]
    fn the_product_example_parses() {
        let text = r#"
run_name = "gpt-small"
[checkpoint]
folder = "{run_name}/checkpoints"
filename = "ep{epoch}-ba{batch}-rank{rank}.pt"
remote_file_name = false
latest_filename = "latest-rank{rank}.pt"
latest_remote_file_name = false
save_interval = "500ba"
overwrite = false
num_checkpoints_to_keep = -1
weights_only = false
ignore_keys = ["state/optimizers/*"]
num_concurrent_uploads = 1
upload_timeout_in_seconds = 3600
[remote]
url = "file://./remote"
[sandbox]
fuel_per_call = 10_000_000
memory_limit_mib = 128
timeout_ms = 100
on_error = "skip"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.run_name, "gpt-small");
        assert_eq!(c.save_interval, SaveIntervalSpec::Time(Time::batches(500)));
        assert!(c.remote_file_name.is_none());
        assert_eq!(
            c.ignore_keys,
            IgnoreKeysSpec::Globs(vec!["state/optimizers/*".into()])
        );
        assert_eq!(c.sandbox.on_error, OnError::Skip);
        let c = parse("[checkpoint]\nsave_interval = 3").unwrap();
        assert_eq!(c.save_interval, SaveIntervalSpec::Time(Time::epochs(3)));
    }

    #[test]
    fn errors_name_file_line_key_and_value() {
        let cases = [
            (
                "[checkpoint]\nfolder = \"x\"\nfoo = 1\n",
                "cairn.toml:3:1",
                "foo",
            ),
            (
                "[checkpoint]\nsave_interval = \"1\"\n",
                "cairn.toml:2:17",
                "'1'",
            ),
            (
                "[checkpoint]\nfilename = \"ep{epoch\"\n",
                "cairn.toml:2:12",
                "ep{epoch",
            ),
            (
                "[checkpoint]\nfolder = \"ck/ep{epoch}\"\n",
                "cairn.toml:2:10",
                "{epoch}",
            ),
            (
                "[checkpoint]\nsave_interval = \"1.5ba\"\n",
                "cairn.toml:2:17",
                "1.5ba",
            ),
            (
                "[checkpoint]\nsave_interval = \"0dur\"\n",
                "cairn.toml:2:17",
                "0dur",
            ),
            (
                "[checkpoint]\nsave_interval = \"0ba\"\n",
                "cairn.toml:2:17",
                "'0ba' is not positive",
            ),
            (
                "[checkpoint]\nsave_interval = -2\n",
                "cairn.toml:2:17",
                "'-2' is not positive",
            ),
            (
                "[checkpoint]\nnum_concurrent_uploads = 0\n",
                "cairn.toml:2:26",
                "between 1 and 256",
            ),
            (
                "[checkpoint]\nignore_keys = { wasm = \"nope.wasm\" }\n",
                "cairn.toml:2:15",
                "nope.wasm",
            ),
            (
                "[sandbox]\non_error = \"explode\"\n",
                "cairn.toml:2:12",
                "explode",
            ),
            ("run_name = 3\n", "cairn.toml:1:12", "string"),
            (
                "[checkpoint]\nnum_concurrent_uploads = \"3\"\n",
                "cairn.toml:2:26",
                "checkpoint.num_concurrent_uploads: invalid type",
            ),
            (
                "[sandbox]\nfuel_per_call = -1\n",
                "cairn.toml:2:17",
                "sandbox.fuel_per_call",
            ),
        ];
        for (text, location, needle) in cases {
            let e = match parse(text) {
                Ok(_) => panic!("{text:?} should fail"),
                Err(e) => e.to_string(),
            };
            assert!(e.starts_with(location), "{text:?}: {e}");
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    /// A name without time variables is Composer's too (a job that saves once, at the end, needs
    /// no more); a second save under it is refused then, and the first checkpoint kept.
    #[test]
    fn constant_names_load() {
        parse("[checkpoint]\nfilename = \"final.pt\"\nsave_interval = \"1dur\"\n").unwrap();
        parse("[checkpoint]\nremote_file_name = \"{run_name}/m.pt\"\n").unwrap();
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("{text:?} should fail"),
            Err(e) => {
                let e = e.to_string();
                assert!(!e.contains('\n'), "one line: {e}");
                e
            }
        }
    }

    /// Issue 11, item 3: a scheme cairn does not serve is refused at load, for the folder and the
    /// remote URL, naming what cairn serves (Composer raises `NotImplementedError` at
    /// construction); `gcs://` is pointed to `gs://`.
    #[test]
    fn unknown_url_schemes_are_refused_at_load() {
        for folder in [
            "gcs://bucket/ckpts",
            "oci://b/ckpts",
            "dbfs:/Volumes/ckpts",
            "wandb://project/ckpts",
            "sftp://host/ckpts",
        ] {
            let e = error(&format!("[checkpoint]\nfolder = \"{folder}\"\n"));
            assert!(e.starts_with("cairn.toml:2:10: checkpoint.folder"), "{e}");
            assert!(e.contains("s3://") && e.contains("gs://"), "{e}");
        }
        let e = error("[checkpoint]\nfolder = \"gcs://bucket/ckpts\"\n");
        assert!(e.contains("gs://bucket/ckpts"), "{e}");
        for url in [
            "gcs://b/p",
            "ftp://x",
            "dbfs:/x",
            "remote",
            "s3://",
            "file://",
        ] {
            let e = error(&format!("[remote]\nurl = \"{url}\"\n"));
            assert!(e.starts_with("cairn.toml:2:7: remote.url"), "{e}");
        }
        let c = parse("[checkpoint]\nfolder = \"s3://bucket/runs\"\n").unwrap();
        assert_eq!(c.folder.source(), "s3://bucket/runs");
    }

    /// Issue 11, item 5: every key's whole range is checked at load, including the values that
    /// used to panic or fail after a checkpoint was written.
    #[test]
    fn out_of_range_values_are_refused_at_load() {
        for (text, needle) in [
            (
                "[checkpoint]\nupload_timeout_in_seconds = 1e20\n",
                "at most",
            ),
            (
                "[checkpoint]\nupload_timeout_in_seconds = 9.2e18\n",
                "at most",
            ),
            ("[checkpoint]\nupload_timeout_in_seconds = nan\n", "NaN"),
            ("[checkpoint]\nupload_timeout_in_seconds = -1\n", "above 0"),
            (
                "[checkpoint]\nnum_concurrent_uploads = 9223372036854775807\n",
                "256",
            ),
            (
                "[checkpoint]\nremote_file_name = \"./ckpts/ep{epoch}.pt\"\n",
                "'./ckpts/ep0.pt', which is not a valid object name",
            ),
            (
                "[checkpoint]\nremote_file_name = \"a//b.pt\"\n",
                "not a valid object name",
            ),
            (
                "[checkpoint]\nlatest_remote_file_name = \"../latest\"\n",
                "not a valid object name",
            ),
            ("[checkpoint]\nfilename = \"x.pt.lzo\"\n", "lzop"),
            ("[checkpoint]\nfilename = \"ckpts/\"\n", "names a folder"),
            ("[checkpoint]\nlatest_filename = \"/\"\n", "names no file"),
            (
                "[checkpoint]\nlatest_filename = \"latest.pt.rar\"\n",
                "unknown compressor",
            ),
            (
                "[checkpoint]\nremote_file_name = \"r/ep{epoch}.pt.lzo\"\n",
                "lzop",
            ),
            (
                "[checkpoint]\nfilename = \"ck.pt\"\noverwrite = true\nlatest_filename = \"ck.pt\"\n",
                "would replace that checkpoint",
            ),
            ("run_name = \"\"\n", "run_name is empty"),
            (
                "[sandbox]\nmemory_limit_mib = 17592186044416\n",
                "at most 1048576",
            ),
            (
                "[checkpoint]\nstaging_budget_mib = 0\n",
                "checkpoint.staging_budget_mib must be between 1 and 1048576 (1 TiB), not 0",
            ),
            (
                "[checkpoint]\nstaging_budget_mib = 1048577\n",
                "between 1 and 1048576",
            ),
            ("[checkpoint]\nasync_save = \"yes\"\n", "async_save"),
        ] {
            let e = error(text);
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let c = parse("[checkpoint]\nupload_timeout_in_seconds = 31536000\n").unwrap();
        assert_eq!(c.upload_timeout_in_seconds, MAX_UPLOAD_TIMEOUT_SECONDS);
        let c = parse("[checkpoint]\nasync_save = true\nstaging_budget_mib = 1048576\n").unwrap();
        assert!(c.async_save);
        assert_eq!(c.staging_budget_mib, Some(1 << 20));
    }

    /// Issue 17, item 2: a `folder` given as a URL names its objects `<url path>/<filename>`
    /// (the store's prefix is the URL's path), as Composer's `Trainer` does, unless the names are
    /// set; without a local `latest`, there is no remote one either (the `Trainer`'s rule).
    #[test]
    fn a_url_folder_names_objects_after_filename() {
        let c = parse("[checkpoint]\nfolder = \"s3://b/{run_name}/ck\"\n").unwrap();
        assert_eq!(c.remote_file_name.unwrap().source(), c.filename.source());
        assert_eq!(
            c.latest_remote_file_name.unwrap().source(),
            "latest-rank{rank}.pt"
        );
        let c = parse(
            "[checkpoint]\nfolder = \"s3://b/ck\"\nlatest_filename = false\nremote_file_name = \"x/ep{epoch}.pt\"\n",
        )
        .unwrap();
        assert_eq!(c.remote_file_name.unwrap().source(), "x/ep{epoch}.pt");
        assert!(c.latest_remote_file_name.is_none());
        let c = parse("[checkpoint]\nfolder = \"ck\"\n").unwrap();
        assert_eq!(
            c.remote_file_name.unwrap().source(),
            defaults::REMOTE_FILE_NAME
        );
    }

    /// Issue 11, item 11: without `run_name`, Composer's choice: `COMPOSER_RUN_NAME`, else
    /// `RUN_NAME`, else a generated unique name.
    #[test]
    fn the_default_run_name_follows_composer() {
        let c = parse("run_name = \"mine\"").unwrap();
        assert_eq!(
            (c.run_name.as_str(), c.run_name_origin),
            ("mine", RunNameOrigin::Config)
        );
        // The environment is the process's: only read here, never set (tests run in parallel).
        let c = parse("").unwrap();
        let env = ["COMPOSER_RUN_NAME", "RUN_NAME"]
            .into_iter()
            .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()));
        match env {
            Some(name) => assert_eq!(c.run_name, name),
            None => {
                assert_eq!(c.run_name_origin, RunNameOrigin::Generated);
                assert!(c.run_name.split('-').next().unwrap().parse::<u64>().is_ok());
            }
        }
    }
}
