//! {{name}}: a cairn `save_interval` policy.
//!
//! This file connects the decision in `policy.rs` to cairn. cairn loads the compiled component
//! (`target/wasm32-wasip2/release/{{name_snake}}.wasm`), calls `init` once with the policy's
//! `config` table, then `should-save` at every checkpoint event of the run:
//!
//! ```toml
//! [checkpoint]
//! save_interval = { wasm = "{{name_snake}}.wasm", config = { n = 500 } }
//! ```
//!
//! The contract is the WIT file `wit/policy.wit` (package `cairn:policy@0.1.0`, world
//! `save-interval`); read it for every function cairn offers. The component runs sandboxed:
//! no files, environment, network, a fixed clock, and every call is bounded by fuel, time and
//! memory (`[sandbox]` in the job's TOML).

use std::sync::Mutex;

mod policy;
pub use policy::{Event as PolicyEvent, EveryN, Training};

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
