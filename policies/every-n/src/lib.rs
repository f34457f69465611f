//! Save every `n` batches: the WebAssembly twin of cairn's built-in `save_interval = "<n>ba"`.
//!
//! It gives Composer's interval scheduler's answer at every event (cairn's `IntervalScheduler`;
//! the test suite checks both agree on every event of simulated runs): no save before the first
//! batch, a save on the batch event whose batch count crosses a multiple of `n`, and one final
//! save when training reaches `max_duration` unless that batch was already saved.
//!
//! It reads as little of the `training` interface as that takes, because every value read is
//! one call into the host (about 50 ns from Rust, 1 µs from Python): one value at a batch
//! event, and `max_duration` once per run.
//! * At a batch event a batch has just run, so Composer's `previous_timestamp` is one batch
//!   back: the count crosses a multiple of `n` exactly when the batch count is one.
//! * At an epoch event after a resume no batch may have run yet (`previous` is `none`), and
//!   Composer says no.
//! * An iteration event is neither the interval's event nor a final one.
//! * `max_duration` does not change during a run. With a batch unit, the end is reached when
//!   the batch count reaches it (what `elapsed() >= 1.0` computes); otherwise `elapsed()`
//!   is asked.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../wit", world: "cairn:policy/save-interval" });

use cairn::policy::training;
use cairn::policy::types::{CountUnit, TimestampField};

/// Where training ends, read at the first event (during `init` it is a placeholder).
#[derive(Clone, Copy)]
enum End {
    /// After this many batches.
    Batch(u64),
    /// In another unit: ask `elapsed()`.
    Other,
}

/// The configured interval, the end of training once known, and the last batch this policy
/// said yes to.
struct Config {
    n: u64,
    end: Option<End>,
    last_batch_seen: Option<u64>,
}

impl Config {
    fn reached_end(&mut self, batch: u64) -> bool {
        let end = *self.end.get_or_insert_with(|| {
            let d = training::duration();
            match d.unit {
                CountUnit::Batch => End::Batch(d.value.max(0) as u64),
                _ => End::Other,
            }
        });
        match end {
            End::Batch(max) => batch >= max,
            End::Other => training::elapsed() >= 1.0,
        }
    }
}

static STATE: Mutex<Config> = Mutex::new(Config {
    n: 1,
    end: None,
    last_batch_seen: None,
});

struct EveryN;

impl Guest for EveryN {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut state = STATE.lock().map_err(|_| "state poisoned".to_string())?;
        for (key, value) in config {
            match key.as_str() {
                "n" => {
                    state.n = value
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            format!("n must be a positive whole number of batches, not '{value}'")
                        })?
                }
                other => {
                    return Err(format!(
                        "unknown config key '{other}' (this policy takes 'n')"
                    ));
                }
            }
        }
        Ok(())
    }

    fn should_save(event: Event) -> bool {
        let Ok(mut me) = STATE.lock() else {
            return false;
        };
        let batch = match event {
            Event::Batch => training::now(TimestampField::Batch),
            Event::Epoch if training::previous(TimestampField::Batch).is_some() => {
                training::now(TimestampField::Batch)
            }
            Event::Epoch | Event::Iteration => return false,
        };
        if me.reached_end(batch) && me.last_batch_seen != Some(batch) {
            return true;
        }
        if event == Event::Batch && batch % me.n == 0 {
            me.last_batch_seen = Some(batch);
            return true;
        }
        false
    }
}

export!(EveryN);
