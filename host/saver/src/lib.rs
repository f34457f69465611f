//! cairn: MosaicML Composer's `CheckpointSaver`, re-implemented in Rust.
//!
//! A [`CheckpointSaver`] is built from a checked [`Config`] and called by a training loop at every
//! checkpoint event; when its `save_interval` says so it takes a [`Snapshot`] of the training
//! state, leaves out what `ignore_keys` names, writes the checkpoint durably, moves the `latest`
//! pointer, uploads it in the background and applies retention, in Composer's order. The two
//! decisions are built in or sandboxed WebAssembly components ([`policy`]); the bytes on disk are
//! [`format`]'s.
//!
//! ```no_run
//! use cairn::{CheckpointSaver, Config};
//! let config = Config::load("job.toml".as_ref())?;
//! let mut saver = CheckpointSaver::new(&config)?;
//! let resumed = saver.resume()?; // where to continue from, if anywhere
//! # Ok::<(), cairn::Error>(())
//! ```

mod background;
mod checkpoint;
mod commit;
pub mod config;
mod error;
mod gate;
mod idle;
mod local;
mod names;
pub mod platform;
pub mod remote;
mod resume;
mod role;
mod run_name;
mod saver;
pub mod sharded;
mod template;

pub use cairn_format as format;
pub use cairn_format::failpoints;
pub use cairn_policy as policy;

pub use background::pool::{StagingPool, StagingStats, TooLarge};
pub use checkpoint::{
    BadValue, MAX_COUNTER, MAX_WALL_CLOCK_SECS, Snapshot, build as build_checkpoint, read_history,
    read_timestamp, restore_state_key, timedelta,
};
pub use config::{Config, ConfigDocument, ConfigError, OnUploadFailure, RunNameOrigin};
pub use error::{Error, Result, SnapshotError};
pub use gate::Schedule;
pub use local::latest::{PointerKind, resolve as resolve_latest};
pub use platform::Platform;
pub use resume::{ResumePoint, ResumeReason};
pub use saver::{
    CheckpointSaver, CommitReport, PrebuiltOptions, SavedCheckpoint, StagedCheckpoint, Taken,
};
pub use template::{Template, TemplateError, Var, Vars};
