//! Save every `n` batches: the WebAssembly twin of cairn's built-in `save_interval = "<n>ba"`.
//!
//! It follows Composer's interval scheduler step by step (cairn's `IntervalScheduler`), so the
//! test suite can check both agree on every event of a simulated run: no save before the first
//! batch, a save on the batch event whose batch count crosses a multiple of `n`, and one final
//! save when training reaches `max_duration` unless that batch was already saved.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../wit", world: "cairn:policy/save-interval" });

use cairn::policy::training;
use cairn::policy::types::TimestampField;

/// The configured interval and the last batch this policy said yes to.
struct Config {
    n: u64,
    last_batch_seen: Option<u64>,
}

static STATE: Mutex<Config> = Mutex::new(Config {
    n: 1,
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
        let Some(prev_batch) = training::previous(TimestampField::Batch) else {
            return false;
        };
        let batch = training::now(TimestampField::Batch);
        let final_event = matches!(event, Event::Batch | Event::Epoch);
        if final_event && training::elapsed() >= 1.0 && me.last_batch_seen != Some(batch) {
            return true;
        }
        let crossed = prev_batch / me.n != batch / me.n;
        if event == Event::Batch && crossed {
            me.last_batch_seen = Some(batch);
            return true;
        }
        false
    }
}

export!(EveryN);
