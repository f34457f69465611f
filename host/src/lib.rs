//! cairn: Composer's `CheckpointSaver`, re-implemented in Rust as a WebAssembly plugin host.
//!
//! The native host does everything that touches bytes; the two programmable decisions — when to
//! save ([`policy::SavePolicy`]) and what to leave out ([`policy::KeyFilter`]) — are built in
//! ([`interval`], [`globs`]) or supplied as sandboxed WebAssembly components.

pub mod globs;
pub mod interval;
pub mod policy;
pub mod pyrepr;
pub mod state_dict;
pub mod template;
pub mod time;
pub mod cli;
pub mod checkpoint_io;
pub mod container;
pub mod pt;
pub mod safetensors_io;

pub use checkpoint_io::{
    FormatError, VerifyReport, read_checkpoint, verify_checkpoint, write_checkpoint,
};
pub use container::CheckpointFormat;
