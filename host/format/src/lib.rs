//! cairn-format: the bytes of a checkpoint on disk.
//!
//! A checkpoint is a tree ([`Value`]: dicts, lists, tensors, scalars, and objects cairn does
//! not model, kept as the pickle recipe that rebuilds them) written as a `torch.save` archive
//! (zip + pickle), optionally inside a tar and/or a compressor, or as safetensors. This crate
//! reads, writes and verifies those files, and owns the one way cairn creates a file durably
//! ([`durable`]). It knows nothing of training, policies or storage: no wasmtime, no tokio.

mod container;
pub mod durable;
mod error;
mod io;
mod prebuilt;
mod pt;
mod safetensors_io;
pub mod state_dict;
#[cfg(test)]
mod tests;

pub use container::{CheckpointFormat, Compression};
pub use error::{FormatError, NameError};
pub use io::{
    VerifyReport, format_of, read_checkpoint, verify_checkpoint, write_checkpoint, write_prebuilt,
};
pub use prebuilt::{Prebuilt, PrebuiltError};
pub use pt::{PtError, PtSummary, count_tensors};
pub use safetensors_io::SafetensorsError;
pub use state_dict::{DType, Dict, DictKind, Key, Object, Storage, Tensor, Value};
