//! Compiling policy components in a child Python: `sys.executable -m cairn._compile`.
//!
//! A component the compile cache does not hold is compiled by a *compile worker*, a child
//! process that the `[sandbox]` compile deadline (`compile_timeout_ms`) and memory limit
//! (`compile_memory_mib`) can stop: Cranelift cannot be stopped in a thread, and a small
//! component can keep it busy for minutes (see `cairn_policy::CompileWorker`). The `cairn` CLI
//! runs itself as the worker; inside Python there is no `cairn` binary to run, so the worker is
//! this extension in a fresh interpreter: `cairn/_compile.py` calls
//! [`_serve_compile_worker`], which serves the one request on stdin exactly as the CLI's
//! `cairn __compile-worker` does. Only the first load of a component starts one (then the
//! cache has it); the child's interpreter start-up (~30 ms) is small beside compiling.

use cairn::policy::{CompileWorker, PolicyHost};
use pyo3::prelude::*;

/// The module the worker runs (`python -m cairn._compile`).
const WORKER_MODULE: &str = "cairn._compile";

/// The policy host of a saver made from Python: cairn's default host, compiling in
/// `sys.executable -m cairn._compile`. An interpreter that does not know its own executable
/// (`sys.executable` empty or `None`, as in some embedded interpreters) compiles in-process,
/// without the compile deadline and memory limit, as a library without a worker does.
pub fn policy_host(py: Python<'_>) -> PyResult<PolicyHost> {
    let host = PolicyHost::default();
    let Some(python) = py
        .import("sys")?
        .getattr("executable")?
        .extract::<Option<String>>()?
        .filter(|p| !p.is_empty())
    else {
        return Ok(host);
    };
    let mut worker = CompileWorker::new(python)
        .arg("-m")
        .arg(WORKER_MODULE)
        // `-m` puts the working directory first on sys.path, where a folder named `cairn`
        // would shadow the package (Python 3.11+; ignored by 3.10).
        .env("PYTHONSAFEPATH", "1");
    // The child imports the package this process imported, wherever it came from: a folder
    // this process put on sys.path is handed down (a site-packages folder never is: ahead of
    // the standard library it could shadow it, and the child's own `site` adds it anyway).
    if let Some(root) = package_root(py)? {
        let path = match std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
            Some(rest) => {
                let mut joined = root.into_os_string();
                joined.push(if cfg!(windows) { ";" } else { ":" });
                joined.push(rest);
                joined
            }
            None => root.into_os_string(),
        };
        worker = worker.env("PYTHONPATH", path);
    }
    Ok(host.with_compile_worker(worker))
}

/// The folder that holds the imported `cairn` package (the parent of `cairn/__init__.py`'s
/// folder), unless Python does not say or it is one of the interpreter's site-packages folders
/// (which a child of the same interpreter finds by itself).
fn package_root(py: Python<'_>) -> PyResult<Option<std::path::PathBuf>> {
    let file = py.import("cairn")?.getattr("__file__")?;
    let Some(root) = file
        .extract::<Option<std::path::PathBuf>>()?
        .and_then(|f| f.parent()?.parent().map(std::path::Path::to_path_buf))
    else {
        return Ok(None);
    };
    let same = |dir: &str| {
        std::fs::canonicalize(dir).ok() == std::fs::canonicalize(&root).ok()
            || std::path::Path::new(dir) == root
    };
    let site = py.import("site")?;
    let mut sites: Vec<String> = site
        .getattr("getsitepackages")
        .and_then(|f| f.call0())
        .and_then(|l| l.extract())
        .unwrap_or_default();
    if let Ok(user) = site
        .getattr("getusersitepackages")
        .and_then(|f| f.call0())
        .and_then(|u| u.extract::<String>())
    {
        sites.push(user);
    }
    Ok((!sites.iter().any(|s| same(s))).then_some(root))
}

/// The compile worker's whole job: read one request on stdin, compile, write the artifact.
/// Returns the exit status the process must exit with (`cairn/_compile.py` does). Not an API.
#[pyfunction]
pub fn _serve_compile_worker(py: Python<'_>) -> i32 {
    py.detach(cairn::policy::serve_compile_worker)
}
