//! cairn-format: the bytes of a checkpoint on disk.
//!
//! A checkpoint is a tree ([`Value`]: dicts, lists, tensors, scalars, and objects cairn does
//! not model, kept as the pickle recipe that rebuilds them) written as a `torch.save` archive
//! (zip + pickle), optionally inside a tar and/or a compressor, or as safetensors. This crate
//! reads, writes and verifies those files, and owns the one way cairn creates a file durably
//! ([`durable`]). It knows nothing of training, policies or storage: no wasmtime, no tokio.

mod checksum;
mod container;
pub mod durable;
mod error;
pub mod failpoints;
mod io;
mod limits;
mod prebuilt;
mod pt;
mod safetensors_io;
pub mod state_dict;
#[cfg(test)]
mod tests;

pub use container::{CheckpointFormat, Compression};
pub use error::{FormatError, NameError};
pub use io::{
    CheckpointRead, VerifyReport, Written, format_of, read_checkpoint, read_checkpoint_with,
    verify_checkpoint, verify_checkpoint_with, write_checkpoint, write_checkpoint_summed,
    write_prebuilt, write_prebuilt_summed,
};
pub use limits::{
    DEFAULT_MAX_EXPANDED_BYTES, DEFAULT_MAX_EXPANSION_RATIO, DEFAULT_MAX_PICKLE_BYTES,
    DEFAULT_RATIO_FLOOR_BYTES, ReadLimits, human_bytes,
};
pub use prebuilt::{Prebuilt, PrebuiltError};
pub use pt::pickle_read::{PickleError, PickleFault};
pub use pt::{PtError, PtSummary, count_tensors};
pub use safetensors_io::SafetensorsError;
pub use state_dict::{
    DType, DepthError, Dict, DictKind, Key, MAX_DEPTH, Object, Shared, Storage, Tensor, Value,
};
