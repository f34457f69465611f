//! What can go wrong with a checkpoint file, in one sentence naming the file and the fault.
//!
//! One error type for the crate, so a caller (the saver, the CLI, a Python binding) can tell a
//! damaged file from a name that selects no format from an operating-system error, with the
//! cause kept as a source.

use std::io;
use std::path::PathBuf;

use crate::pt::PtError;
use crate::safetensors_io::SafetensorsError;

/// A checkpoint file that cannot be read, written or trusted; each message is one sentence
/// naming the file and the fault.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The name selects no supported format.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A `.pt` (possibly inside a container) is damaged or cannot be written.
    #[error("{path} {error}")]
    Pt {
        /// The file.
        path: PathBuf,
        /// The fault.
        error: PtError,
    },
    /// A safetensors file is damaged or cannot be written.
    #[error("{path} {error}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The fault.
        error: SafetensorsError,
    },
    /// The container (tar, compression) is damaged.
    #[error("{path} is damaged: {message}")]
    Container {
        /// The file.
        path: PathBuf,
        /// The fault.
        message: String,
    },
    /// The file's content is no checkpoint format cairn reads.
    #[error("{path} is not a checkpoint: {message}")]
    Unrecognised {
        /// The file.
        path: PathBuf,
        /// What its first bytes are.
        message: String,
    },
    /// Reading the file would exceed a bound of [`crate::ReadLimits`].
    #[error("{path} {message}")]
    Limit {
        /// The file.
        path: PathBuf,
        /// Which bound, and by how much.
        message: String,
    },
    /// The file could not be opened or read.
    #[error("{path} could not be read: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// Writing failed.
    #[error("{path} could not be written: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
}

impl FormatError {
    /// True when the file was refused because reading it would exceed a bound (a decompression
    /// bomb, a pickle past its budget, nesting past the depth limit) rather than because it is
    /// damaged.
    pub fn is_limit(&self) -> bool {
        use crate::pt::pickle_read::PickleFault;
        match self {
            FormatError::Limit { .. } => true,
            FormatError::Pt {
                error: PtError::Limit(_),
                ..
            } => true,
            FormatError::Pt {
                error: PtError::Pickle(e),
                ..
            } => matches!(e.fault, PickleFault::TooDeep | PickleFault::TooLarge),
            _ => false,
        }
    }
}

/// A checkpoint name that selects no format cairn can write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint name '{name}' {reason}")]
pub struct NameError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}
