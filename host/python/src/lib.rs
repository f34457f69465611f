//! `cairn._native`: cairn's saver for Python, under the pure-Python package in `python/cairn`
//! (which is what users import: `cairn.composer.CheckpointSaver`, `cairn.Saver`).
//!
//! The interface is `python/cairn/_native.pyi`. Python hands over a finished checkpoint: the
//! pickle, made by Python's own pickler the way `torch.save` makes it, and one `(key, owner,
//! data_ptr, nbytes)` per tensor storage. Tensor bytes are read from that memory and never copied
//! into Python objects; the GIL is released for everything that formats, writes, fsyncs, uploads
//! or runs a WebAssembly policy ([`failure::detached`]). Every error becomes the Python exception
//! a Composer user expects, and a panic becomes `cairn.InternalError`, never an abort.

mod compile;
mod config;
mod failure;
mod memory;
mod saver;
mod state;
mod store;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PolicyError", py.get_type::<failure::PolicyError>())?;
    m.add("InternalError", py.get_type::<failure::InternalError>())?;
    m.add_class::<config::Config>()?;
    m.add_class::<saver::Saver>()?;
    m.add_class::<saver::SaveResult>()?;
    m.add_class::<store::ObjectStore>()?;
    m.add_function(wrap_pyfunction!(failure::_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(compile::_serve_compile_worker, m)?)?;
    Ok(())
}
