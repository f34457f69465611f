//! Errors as the Python exceptions a Composer user acts on, and the boundary that keeps a Rust
//! panic from crossing into Python as anything but a clear exception.
//!
//! | cairn                                              | Python                                 |
//! |----------------------------------------------------|----------------------------------------|
//! | a bad config value, a name the template does not give | `ValueError` (the message names the key) |
//! | a taken checkpoint name, a checkpoint from the run's future | `FileExistsError` (as Composer)   |
//! | a file, folder or store operation                  | `OSError` with errno and file name     |
//! | a WebAssembly policy that cannot load or fails     | `cairn.PolicyError` (`.policy`, `.kind`) |
//! | uploads that failed                                | `RuntimeError` (Composer's `check_workers`) |
//! | a panic (a bug)                                    | `cairn.InternalError`                  |

use std::panic::{AssertUnwindSafe, catch_unwind};

use cairn::format::FormatError;
use cairn::remote::StoreError;
use pyo3::create_exception;
use pyo3::exceptions::{PyFileExistsError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    cairn,
    PolicyError,
    PyRuntimeError,
    "A WebAssembly policy could not be loaded or failed a call (and its on_error did not forgive \
     it). `.policy` names the component, `.kind` the cause (`trap`, `out-of-fuel`, \
     `deadline-exceeded`, `memory-limit`, `invalid-result`, `not-wasm`, ...)."
);

create_exception!(
    cairn,
    InternalError,
    PyRuntimeError,
    "cairn hit a bug (a Rust panic). The message says where; the saver that hit it refuses further \
     calls, and the previous checkpoint is intact."
);

/// Why a call failed, carried out of a region that runs without the GIL and turned into a Python
/// exception once it is held again ([`Failure::into_py`]).
pub enum Failure {
    /// A saver error.
    Cairn(cairn::Error),
    /// Already a Python exception (lazily built, so it can be made without the GIL).
    Py(PyErr),
    /// A panic, with its message.
    Panic(String),
}

impl From<cairn::Error> for Failure {
    fn from(e: cairn::Error) -> Self {
        Failure::Cairn(e)
    }
}

impl From<PyErr> for Failure {
    fn from(e: PyErr) -> Self {
        Failure::Py(e)
    }
}

impl Failure {
    /// The Python exception for this failure.
    pub fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Cairn(e) => cairn_error(py, e),
            Failure::Py(e) => e,
            Failure::Panic(message) => InternalError::new_err(format!(
                "cairn hit an internal error (a bug; please report it): {message}"
            )),
        }
    }
}

/// Run `f` without the GIL (other Python threads run meanwhile), catching a panic. Whatever `f`
/// returns or fails with is turned into Python values or exceptions once the GIL is back.
pub fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, Failure> + Send,
) -> PyResult<T> {
    py.detach(|| guarded(f)).map_err(|e| e.into_py(py))
}

/// Run `f` (with the GIL held), turning a panic into `cairn.InternalError`.
pub fn with_gil<T>(py: Python<'_>, f: impl FnOnce() -> Result<T, Failure>) -> PyResult<T> {
    guarded(f).map_err(|e| e.into_py(py))
}

fn guarded<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(Failure::Panic(message))
        }
    }
}

/// The exception for a saver error; see the module table.
pub fn cairn_error(py: Python<'_>, e: cairn::Error) -> PyErr {
    use cairn::Error as E;
    let message = e.to_string();
    match e {
        E::Config(_) | E::Resume { .. } => PyValueError::new_err(message),
        E::AlreadyExists { .. } | E::FutureCheckpoint { .. } => PyFileExistsError::new_err(message),
        E::Format(f) => match *f {
            FormatError::Write { path, error } | FormatError::Read { path, error } => {
                os_error(error.raw_os_error(), message, path.display().to_string())
            }
            _ => PyValueError::new_err(message),
        },
        E::Io { path, source, .. } => {
            os_error(source.raw_os_error(), message, path.display().to_string())
        }
        E::Policy(p) => match *p {
            cairn::policy::PolicyError::Interval(_) | cairn::policy::PolicyError::Glob(_) => {
                PyValueError::new_err(message)
            }
            p => policy_error(py, &p),
        },
        E::Store(s) => match *s {
            StoreError::Unreachable { .. } | StoreError::LocalDirectory { .. } => {
                PyOSError::new_err(message)
            }
            _ => PyValueError::new_err(message),
        },
        E::Uploader(_) | E::Download(_) => PyOSError::new_err(message),
        E::UploadsFailed(_) | E::Snapshot(_) => PyRuntimeError::new_err(message),
        _ => PyRuntimeError::new_err(message),
    }
}

/// `OSError(errno, message, filename)`: Python picks the subclass from the errno
/// (`FileNotFoundError`, `PermissionError`, ...).
fn os_error(errno: Option<i32>, message: String, filename: String) -> PyErr {
    match errno {
        Some(errno) => PyOSError::new_err((errno, message, filename)),
        None => PyOSError::new_err(message),
    }
}

/// `cairn.PolicyError` with `.policy` and `.kind` set.
pub fn policy_error(py: Python<'_>, p: &cairn::policy::PolicyError) -> PyErr {
    let err = PolicyError::new_err(p.to_string());
    let value = err.value(py);
    // Setting attributes on a fresh exception instance cannot fail short of memory exhaustion;
    // the exception is still the right one without them.
    let _ = value.setattr("policy", p.policy());
    let _ = value.setattr("kind", p.kind());
    err
}

/// Panics inside cairn: the test suite checks that one becomes `cairn.InternalError` (and that
/// the GIL is back), both with the GIL held and without it. Not part of the API.
#[pyfunction]
#[pyo3(signature = (message, detach = false))]
pub fn _panic_for_tests(py: Python<'_>, message: String, detach: bool) -> PyResult<()> {
    let boom = move || -> Result<(), Failure> { panic!("{message}") };
    if detach {
        detached(py, boom)
    } else {
        with_gil(py, boom)
    }
}
