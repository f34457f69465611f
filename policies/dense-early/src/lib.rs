//! Save densely early and sparsely later: at batches 1, 2, 4, 8, … (powers of `base`),
//! optionally never more than `max_gap` batches apart.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../wit", world: "cairn:policy/save-interval" });

use cairn::policy::training;
use cairn::policy::types::TimestampField;

struct Config {
    base: u64,
    max_gap: u64,
    next: u64,
}

static STATE: Mutex<Config> = Mutex::new(Config {
    base: 2,
    max_gap: 0,
    next: 1,
});

fn positive(key: &str, value: &str, min: u64) -> Result<u64, String> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|v| *v >= min)
        .ok_or_else(|| format!("{key} must be a whole number ≥ {min}, not '{value}'"))
}

struct DenseEarly;

impl Guest for DenseEarly {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut me = STATE.lock().map_err(|_| "state poisoned".to_string())?;
        for (key, value) in config {
            match key.as_str() {
                "base" => me.base = positive("base", &value, 2)?,
                "max_gap" => me.max_gap = positive("max_gap", &value, 1)?,
                other => {
                    return Err(format!(
                        "unknown config key '{other}' (this policy takes 'base' and 'max_gap')"
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
        let batch = training::now(TimestampField::Batch);
        if event != Event::Batch || batch < me.next {
            return false;
        }
        while me.next <= batch {
            let grown = me.next.saturating_mul(me.base);
            me.next = if me.max_gap > 0 {
                grown.min(me.next.saturating_add(me.max_gap))
            } else {
                grown
            };
        }
        true
    }
}

export!(DenseEarly);
