//! cairn: Composer's `CheckpointSaver`, re-implemented in Rust as a WebAssembly plugin host.
//!
//! The native host does everything that touches bytes; the two programmable decisions — when to
//! save ([`policy::SavePolicy`]) and what to leave out ([`policy::KeyFilter`]) — are built in
//! ([`interval`], [`globs`]) or supplied as sandboxed WebAssembly components.

pub mod checkpoint;
pub mod checkpoint_io;
pub mod cli;
pub mod config;
pub mod container;
pub mod globs;
pub mod interval;
pub mod local;
pub mod policy;
pub mod pt;
pub mod pyrepr;
pub mod remote;
pub mod resume;
pub mod safetensors_io;
pub mod saver;
pub mod simulate;
pub mod state_dict;
pub mod synthetic;
pub mod template;
pub mod time;
pub mod trainer;
pub mod wasm;

pub use checkpoint_io::{
    FormatError, VerifyReport, read_checkpoint, verify_checkpoint, write_checkpoint,
};
pub use container::CheckpointFormat;
