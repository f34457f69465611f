//! Save when a metric improves on its best value by more than a margin.
//!
//! The first value seen is the baseline (no save); afterwards a batch event whose metric is
//! below `best - margin` saves and becomes the new best. Events without the metric are ignored.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../wit", world: "cairn:policy/save-interval" });

struct Config {
    metric: String,
    margin: f64,
    best: Option<f64>,
}

static STATE: Mutex<Config> = Mutex::new(Config {
    metric: String::new(),
    margin: 0.0,
    best: None,
});

struct LossMargin;

impl Guest for LossMargin {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut me = STATE.lock().map_err(|_| "state poisoned".to_string())?;
        me.metric = "loss".into();
        for (key, value) in config {
            match key.as_str() {
                "metric" => me.metric = value,
                "margin" => {
                    me.margin = value
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|m| m.is_finite() && *m >= 0.0)
                        .ok_or_else(|| {
                            format!("margin must be a non-negative number, not '{value}'")
                        })?
                }
                other => {
                    return Err(format!(
                        "unknown config key '{other}' (this policy takes 'metric' and 'margin')"
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
        if event != Event::Batch {
            return false;
        }
        let name = if me.metric.is_empty() {
            "loss"
        } else {
            me.metric.as_str()
        };
        let Some(value) = cairn::policy::training::metric(name) else {
            return false;
        };
        if value.is_nan() {
            return false;
        }
        match me.best {
            None => {
                me.best = Some(value);
                false
            }
            Some(best) if value < best - me.margin => {
                me.best = Some(value);
                true
            }
            Some(_) => false,
        }
    }
}

export!(LossMargin);
