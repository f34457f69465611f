//! `Config`: a cairn TOML (or none) with explicit keyword arguments on top, checked exactly like
//! file keys.
//!
//! The keyword arguments are rendered as TOML values into the file's `[checkpoint]` table and the
//! result goes through the same checker as a file ([`cairn::ConfigDocument`]), so a keyword gets
//! the same checks and messages as the key in a file. Each keyword is first checked on its own
//! over the file, so the `ValueError` names the keyword at fault.

use std::path::{Path, PathBuf};

use cairn::config::{IgnoreKeysSpec, SaveIntervalSpec, base_of, read_text};
use cairn::policy::PolicySpec;
use cairn::{ConfigDocument, ConfigError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use toml::{Table, Value};

/// Keys whose `None` is TOML's `false` (disabled), as Composer's `None` disables them.
const NAMES: [&str; 3] = [
    "remote_file_name",
    "latest_filename",
    "latest_remote_file_name",
];

/// A checked configuration (see `_native.pyi`).
#[pyclass(frozen, module = "cairn._native")]
pub struct Config {
    pub(crate) inner: cairn::Config,
    /// The merged `[checkpoint]` table as written (file keys, then keywords).
    checkpoint: Table,
    run_name: Option<String>,
    remote_url: Option<String>,
    python_callables: bool,
}

#[pymethods]
impl Config {
    #[new]
    #[pyo3(signature = (path = None, *, checkpoint = None))]
    fn new(path: Option<PathBuf>, checkpoint: Option<&Bound<'_, PyDict>>) -> PyResult<Config> {
        let (text, file) = match &path {
            Some(p) => (read_text(p).map_err(value_error)?, p.display().to_string()),
            None => (String::new(), "<no config file>".to_owned()),
        };
        let base = path.as_deref().map_or(Path::new("."), base_of);
        // The operator's platform file (CAIRN_PLATFORM, for the tenant CAIRN_TENANT) bounds this
        // job as it bounds `cairn run`.
        let platform = cairn::Platform::from_env(None).map_err(value_error)?;
        let check = |text: &str| check(text, &file, base, platform.as_ref());
        // The file alone first: its own mistakes are reported at its own lines.
        check(&text).map_err(value_error)?;
        let mut table: Table = toml::from_str(&text)
            .map_err(|e| PyValueError::new_err(format!("{file}: {}", e.message().trim_end())))?;
        table.remove("train");
        let run_name = table
            .get("run_name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let remote_url = table
            .get("remote")
            .and_then(|r| r.get("url"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut section = match table.remove("checkpoint") {
            Some(Value::Table(t)) => t,
            _ => Table::new(),
        };
        let overrides = match checkpoint {
            Some(d) => keywords(d)?,
            None => Vec::new(),
        };
        for (key, value, shown) in &overrides {
            let mut one = section.clone();
            set(&mut one, key, value.clone());
            let text = render(&table, one);
            check(&text).map_err(|e| {
                let message = e.message;
                if message.starts_with(&format!("checkpoint.{key}")) {
                    PyValueError::new_err(format!("{message} (keyword argument {key}={shown})"))
                } else {
                    PyValueError::new_err(format!(
                        "checkpoint.{key}={shown} (keyword argument): {message}"
                    ))
                }
            })?;
        }
        for (key, value, _) in overrides {
            set(&mut section, &key, value);
        }
        let inner = check(&render(&table, section.clone())).map_err(value_error)?;
        Ok(Config {
            inner,
            checkpoint: section,
            run_name,
            remote_url,
            python_callables: platform
                .as_ref()
                .is_none_or(|p| p.allows_python_callables()),
        })
    }

    /// Every `[checkpoint]` key, resolved (keyword > file > Composer's default), as Python values.
    fn checkpoint<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.inner;
        let d = PyDict::new(py);
        let raw = |key: &str| self.checkpoint.get(key);
        d.set_item("folder", c.folder.source())?;
        d.set_item("filename", c.filename.source())?;
        let name = |t: &Option<cairn::Template>| t.as_ref().map(|t| t.source().to_owned());
        d.set_item("remote_file_name", name(&c.remote_file_name))?;
        d.set_item("latest_filename", name(&c.latest_filename))?;
        d.set_item("latest_remote_file_name", name(&c.latest_remote_file_name))?;
        match &c.save_interval {
            SaveIntervalSpec::Wasm(spec) => d.set_item("save_interval", policy_dict(py, spec)?)?,
            SaveIntervalSpec::Time(_) => match raw("save_interval") {
                // As written (Composer parses it again, with its own rules).
                Some(v) => d.set_item("save_interval", to_python(py, v)?)?,
                None => d.set_item("save_interval", "1ep")?,
            },
        }
        match &c.ignore_keys {
            IgnoreKeysSpec::None => d.set_item("ignore_keys", py.None())?,
            IgnoreKeysSpec::Globs(g) => d.set_item("ignore_keys", g.clone())?,
            IgnoreKeysSpec::Wasm(spec) => d.set_item("ignore_keys", policy_dict(py, spec)?)?,
        }
        d.set_item("overwrite", c.overwrite)?;
        d.set_item("num_checkpoints_to_keep", c.num_checkpoints_to_keep)?;
        d.set_item("weights_only", c.weights_only)?;
        d.set_item("num_concurrent_uploads", c.num_concurrent_uploads)?;
        match raw("upload_timeout_in_seconds") {
            Some(Value::Integer(n)) => d.set_item("upload_timeout_in_seconds", *n)?,
            _ => match c.upload_timeout_in_seconds {
                t if t.fract() == 0.0 && t < 1e15 => {
                    d.set_item("upload_timeout_in_seconds", t as i64)?
                }
                t => d.set_item("upload_timeout_in_seconds", t)?,
            },
        }
        Ok(d)
    }

    /// The file's top-level `run_name`, if it sets one.
    #[getter]
    fn run_name(&self) -> Option<String> {
        self.run_name.clone()
    }

    /// The `[checkpoint]` keys the file or the keywords set (the rest are defaults).
    #[getter]
    fn written_keys(&self) -> Vec<String> {
        self.checkpoint.keys().cloned().collect()
    }

    /// May this job run Python callables (unsandboxed, in-process)? `False` only when the
    /// operator's platform file says `python_callables = false`.
    #[getter]
    fn python_callables_allowed(&self) -> bool {
        self.python_callables
    }

    /// The file's `[remote] url`, if it sets one (`None`: no store configured).
    #[getter]
    fn remote_url(&self) -> Option<String> {
        self.remote_url.clone()
    }
}

fn value_error(e: ConfigError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Check a whole config text as a file would be checked (`[train]` belongs to `cairn run`'s
/// simulated trainer: accepted and ignored here).
fn check(
    text: &str,
    file: &str,
    base: &Path,
    platform: Option<&cairn::Platform>,
) -> Result<cairn::Config, ConfigError> {
    let mut doc = ConfigDocument::parse(text, file, base)?;
    doc.take_section::<Table>("train")?;
    doc.check_with(platform)
}

fn render(table: &Table, checkpoint: Table) -> String {
    let mut whole = table.clone();
    whole.insert("checkpoint".to_owned(), Value::Table(checkpoint));
    toml::to_string(&whole).expect("a table of TOML values always renders")
}

/// Set `key` in `[checkpoint]`; `None` removes it (only `ignore_keys` maps there).
fn set(section: &mut Table, key: &str, value: Option<Value>) {
    match value {
        Some(v) => section.insert(key.to_owned(), v),
        None => section.remove(key),
    };
}

/// The keyword arguments as `[checkpoint]` values: `(key, value, repr)`.
fn keywords(d: &Bound<'_, PyDict>) -> PyResult<Vec<(String, Option<Value>, String)>> {
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        let shown = v.repr()?.to_string();
        let value = if v.is_none() {
            if NAMES.contains(&key.as_str()) {
                Some(Value::Boolean(false))
            } else if key == "ignore_keys" {
                None
            } else {
                return Err(PyValueError::new_err(format!(
                    "checkpoint.{key}=None (keyword argument): it cannot be None"
                )));
            }
        } else {
            let mut value = to_toml(&v).map_err(|why| {
                PyValueError::new_err(format!(
                    "checkpoint.{key}={shown} (keyword argument): {why}"
                ))
            })?;
            absolute_wasm(&mut value);
            Some(value)
        };
        out.push((key, value, shown));
    }
    Ok(out)
}

/// A `{"wasm": "p.wasm"}` given as a keyword names a file relative to the working directory (in a
/// TOML it is relative to the file's folder).
fn absolute_wasm(value: &mut Value) {
    if let Some(Value::String(p)) = value.get_mut("wasm")
        && Path::new(p.as_str()).is_relative()
        && let Ok(cwd) = std::env::current_dir()
    {
        *p = cwd.join(&*p).display().to_string();
    }
}

/// A Python value as a TOML value.
fn to_toml(v: &Bound<'_, PyAny>) -> Result<Value, String> {
    if v.is_instance_of::<PyBool>() {
        return v
            .extract::<bool>()
            .map(Value::Boolean)
            .map_err(|e| e.to_string());
    }
    if v.is_instance_of::<PyInt>() {
        return v
            .extract::<i64>()
            .map(Value::Integer)
            .map_err(|_| "the integer does not fit in 64 bits".to_owned());
    }
    if v.is_instance_of::<PyFloat>() {
        return v
            .extract::<f64>()
            .map(Value::Float)
            .map_err(|e| e.to_string());
    }
    if v.is_instance_of::<PyString>() {
        return v
            .extract::<String>()
            .map(Value::String)
            .map_err(|e| e.to_string());
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let items = v.try_iter().map_err(|e| e.to_string())?;
        return items
            .map(|item| to_toml(&item.map_err(|e| e.to_string())?))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if let Ok(d) = v.cast::<PyDict>() {
        let mut t = Table::new();
        for (k, item) in d.iter() {
            let k: String = k
                .extract()
                .map_err(|_| "table keys must be strings".to_owned())?;
            if !item.is_none() {
                t.insert(k, to_toml(&item)?);
            }
        }
        return Ok(Value::Table(t));
    }
    if let Ok(path) = v.extract::<PathBuf>() {
        return Ok(Value::String(path.display().to_string()));
    }
    let type_name = v
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
    Err(format!(
        "a {type_name} is not a config value (use str, int, float, bool, list or dict)"
    ))
}

/// A TOML value as a Python value.
fn to_python<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Integer(n) => n.into_pyobject(py)?.into_any(),
        Value::Float(x) => PyFloat::new(py, *x).into_any(),
        Value::Boolean(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Datetime(d) => PyString::new(py, &d.to_string()).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Table(t) => {
            let d = PyDict::new(py);
            for (k, item) in t {
                d.set_item(k, to_python(py, item)?)?;
            }
            d.into_any()
        }
    })
}

/// `{"wasm": path, "config": {...}}` with the path as cairn resolved it.
fn policy_dict<'py>(py: Python<'py>, spec: &PolicySpec) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("wasm", spec.wasm.display().to_string())?;
    let config = PyDict::new(py);
    for (k, v) in &spec.config {
        config.set_item(k, to_python(py, v)?)?;
    }
    d.set_item("config", config)?;
    Ok(d)
}
