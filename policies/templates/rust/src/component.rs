//! The component: cairn's exports (`init`, `should-save`) implemented with the decision of
//! `policy.rs`, and cairn's `training` interface read on its behalf. Compiled only for
//! WebAssembly (see `lib.rs`).

use std::sync::Mutex;

use crate::policy::{Event as PolicyEvent, EveryN, Training};

// Generates, from wit/policy.wit:
// * a `Guest` trait with one method per export of the world (`init`, `should_save`), which
//   `Component` below implements;
// * Rust functions for its imports: `cairn::policy::training::now(...)` and the rest;
// * the WIT types (`Event`, `TimestampField`, `CountUnit`, ...).
wit_bindgen::generate!({ path: "wit", world: "cairn:policy/save-interval" });

use cairn::policy::training;
use cairn::policy::types::{CountUnit, TimestampField};

/// cairn's `training` interface, seen through the [`Training`] trait of `policy.rs`.
/// (Each method is one call into cairn.)
struct Cairn;

impl Training for Cairn {
    fn batch(&self) -> u64 {
        training::now(TimestampField::Batch)
    }
    fn previous_batch(&self) -> Option<u64> {
        training::previous(TimestampField::Batch)
    }
    fn duration_in_batches(&self) -> Option<u64> {
        let d = training::duration();
        (d.unit == CountUnit::Batch).then_some(d.value.max(0) as u64)
    }
    fn elapsed(&self) -> f64 {
        training::elapsed()
    }
}

/// The policy's state. cairn keeps one instance of the component for the whole run (a new
/// one only after a trap), so a global is the policy's memory between calls.
static STATE: Mutex<EveryN> = Mutex::new(EveryN::new(1));

/// The component: implements the world's exports.
struct Component;

impl Guest for Component {
    /// Called once, before any `should-save`, with the `config` table as strings.
    /// `Err(message)` stops the job with your message.
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut policy = STATE.lock().map_err(|_| "state poisoned".to_string())?;
        policy.configure(&config)
    }

    /// Called at every checkpoint event; `true` saves a checkpoint.
    fn should_save(event: Event) -> bool {
        let Ok(mut policy) = STATE.lock() else {
            return false;
        };
        let event = match event {
            Event::Batch => PolicyEvent::Batch,
            Event::Epoch => PolicyEvent::Epoch,
            Event::Iteration => PolicyEvent::Iteration,
        };
        policy.should_save(event, &Cairn)
    }
}

export!(Component);
