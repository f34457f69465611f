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

use cairn_policy::{MaxDuration, PolicySpec, SandboxConfig, Time};

use crate::template::{Template, Var};

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
    /// The run's name (`{run_name}`).
    #[serde(default = "default_run_name")]
    pub run_name: Spanned<String>,
    /// Composer's `CheckpointSaver` arguments.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Where remote names go.
    #[serde(default)]
    pub remote: RemoteSection,
    /// Limits for every policy component of this job.
    #[serde(default)]
    pub sandbox: SandboxConfig,
}

fn default_run_name() -> Spanned<String> {
    Spanned::new(0..0, "cairn-run".to_owned())
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
    /// Object name template for uploads, or `false`.
    #[serde(default = "defaults::remote_file_name")]
    pub remote_file_name: Spanned<MaybeName>,
    /// Local `latest` pointer name, or `false`.
    #[serde(default = "defaults::latest_filename")]
    pub latest_filename: Spanned<MaybeName>,
    /// Remote `latest` pointer name (`.symlink` is appended), or `false`.
    #[serde(default = "defaults::latest_remote_file_name")]
    pub latest_remote_file_name: Spanned<MaybeName>,
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
        n("{run_name}/checkpoints/ep{epoch}-ba{batch}-rank{rank}.pt")
    }
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
}

/// `[remote]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSection {
    /// Store URL: `file://`, `memory://`, `s3://`, `gs://`, `az://`.
    #[serde(default = "default_remote_url")]
    pub url: Spanned<String>,
}

impl Default for RemoteSection {
    fn default() -> Self {
        RemoteSection {
            url: default_remote_url(),
        }
    }
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
    /// Remote store URL.
    pub remote_url: String,
    /// Policy limits.
    pub sandbox: SandboxConfig,
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
        let raw = ConfigFile::deserialize(toml::de::Deserializer::from(self.table))
            .map_err(|e| self.at.error(e.span(), e.message()))?;
        raw.validate(&self.at, self.base)
    }
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
        let filename = template("filename", &c.filename)?;
        if filename.source().trim_start_matches('/').is_empty() {
            return Err(at.at(&c.filename, "checkpoint.filename is empty"));
        }
        let uploads = *c.num_concurrent_uploads.get_ref();
        if uploads < 1 {
            return Err(at.at(
                &c.num_concurrent_uploads,
                format!("checkpoint.num_concurrent_uploads must be at least 1, not {uploads}"),
            ));
        }
        let timeout = *c.upload_timeout_in_seconds.get_ref();
        if !(timeout > 0.0 && timeout.is_finite()) {
            return Err(at.at(
                &c.upload_timeout_in_seconds,
                format!(
                    "checkpoint.upload_timeout_in_seconds must be a positive number, not {timeout}"
                ),
            ));
        }
        Ok(Config {
            run_name: self.run_name.get_ref().clone(),
            remote_file_name: maybe("remote_file_name", &c.remote_file_name)?,
            latest_filename: maybe("latest_filename", &c.latest_filename)?,
            latest_remote_file_name: maybe("latest_remote_file_name", &c.latest_remote_file_name)?,
            save_interval: save_interval(at, &c.save_interval, base)?,
            ignore_keys: ignore_keys(at, c.ignore_keys.as_ref(), base)?,
            overwrite: c.overwrite,
            num_checkpoints_to_keep: c.num_checkpoints_to_keep,
            weights_only: c.weights_only,
            num_concurrent_uploads: uploads as usize,
            upload_timeout_in_seconds: timeout,
            remote_url: self.remote.url.get_ref().clone(),
            sandbox: self.sandbox,
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
    if time == Time::Fraction(0.0) {
        return Err(format!(
            "'{value}' is zero: a fraction of the run must be non-zero"
        ));
    }
    Ok(time)
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
        toml::Value::Integer(n) => Ok(SaveIntervalSpec::Time(Time::epochs(*n))),
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
                "[checkpoint]\nnum_concurrent_uploads = 0\n",
                "cairn.toml:2:26",
                "at least 1",
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
}
