//! The two programmable decisions of a checkpoint saver, as traits: *when to save*
//! ([`SavePolicy`], Composer's `save_interval`) and *what to leave out* ([`KeyFilter`],
//! Composer's `ignore_keys`).
//!
//! Built-in implementations live in [`crate::interval`] (time strings) and [`crate::globs`]
//! (glob lists); WebAssembly components implement the same traits in `wasm/`.

use cairn_format::Value;

use crate::error::PolicyError;
use crate::training::{Event, TrainingState};

/// Composer's `save_interval` predicate: called at every checkpoint event, before the saver's
/// at-most-one-save-per-batch check. It may keep state between calls.
pub trait SavePolicy: Send {
    /// Should a checkpoint be saved at this event? An error names the policy and the cause.
    fn should_save(&mut self, state: &TrainingState<'_>, event: Event)
    -> Result<bool, PolicyError>;

    /// A short description for logs and summaries (`"500ba"`, `"every_n.wasm"`).
    fn describe(&self) -> String;
}

/// Composer's `ignore_keys`: rewrites the checkpoint tree before it is written.
pub trait KeyFilter: Send {
    /// The tree without the entries to leave out, or [`Filtered::Skip`] when this checkpoint
    /// must not be written at all. `warnings` collects what the user should hear about without
    /// failing the save (a glob that matched nothing, a filter error forgiven by `on_error`).
    fn filter(&mut self, tree: Value, warnings: &mut Vec<String>) -> Result<Filtered, PolicyError>;

    /// A short description for logs and summaries.
    fn describe(&self) -> String;
}

/// What a [`KeyFilter`] decided for one checkpoint.
#[derive(Debug)]
pub enum Filtered {
    /// Write this tree.
    Keep(Value),
    /// Write nothing this time: the filter failed and its `on_error = "skip"` says a checkpoint
    /// it could not filter must not be written (it may hold what the filter exists to remove).
    Skip(PolicyError),
}
