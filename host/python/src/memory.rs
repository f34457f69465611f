//! Tensor memory lent by Python: each storage arrives as `(key, owner, data_ptr, nbytes)` and is
//! read in place, never copied into a Python object.
//!
//! The bytes are wrapped in a [`Bytes`] that owns a strong reference to `owner` (a
//! `torch.UntypedStorage`, or a pinned host tensor a GPU storage was staged into), so the memory
//! stays alive for as long as cairn holds the bytes, even past the call. A later asynchronous save
//! copies these records into reusable staging buffers before the GIL is taken back and the
//! training thread may change the tensors again.

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// `nbytes` bytes at `ptr`, owned by the Python object `owner`.
struct PyMemory {
    ptr: usize,
    len: usize,
    /// Keeps the memory alive. Dropping it without the GIL (when the last `Bytes` goes away
    /// in a detached region) is deferred by PyO3 until the GIL is held again.
    _owner: Py<PyAny>,
}

impl AsRef<[u8]> for PyMemory {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is the memory of `_owner` (cairn's Python layer takes both from
        // the same `torch.UntypedStorage`: `data_ptr()` and `nbytes()`), which lives as long as
        // this value; `ptr` is non-null (checked in `records`). Torch storages are not resized
        // while a save runs (the caller is the training thread, blocked in the save).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

/// The `data/<key>` records of a checkpoint, from `[(key, owner, data_ptr, nbytes), ...]`.
///
/// This trusts the pointer and length as `torch.save` trusts a storage: it is a private
/// interface of cairn's own Python layer (`cairn._pickle`), not a way to read arbitrary memory
/// safely.
pub fn records(storages: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Bytes)>> {
    let items: Vec<(String, Py<PyAny>, usize, usize)> = storages.extract()?;
    items
        .into_iter()
        .map(|(key, owner, ptr, len)| {
            if len == 0 {
                return Ok((key, Bytes::new()));
            }
            if ptr == 0 {
                return Err(PyValueError::new_err(format!(
                    "storage '{key}' has {len} bytes at address 0"
                )));
            }
            let memory = PyMemory {
                ptr,
                len,
                _owner: owner,
            };
            Ok((key, Bytes::from_owner(memory)))
        })
        .collect()
}
