//! The built-in `save_interval`: Composer's `create_interval_scheduler`
//! (`composer/callbacks/checkpoint_saver.py` and `composer/utils/misc.py` in Composer 0.32).
//!
//! The predicate is stateful, as Composer's is: it remembers the last batch it said yes to, so
//! the end-of-training save does not repeat an interval save of the same batch.

use thiserror::Error;

use crate::error::PolicyError;
use crate::policy::SavePolicy;
use crate::time::{CountUnit, Time};
use crate::training::{Event, TrainingState};

/// Why a time cannot be a save interval.
#[derive(Debug, Error, PartialEq)]
pub enum IntervalError {
    /// `0dur` would divide by zero at the first batch (Composer crashes there); refused early.
    #[error("save_interval '{0}' is zero: a fraction of the run must be non-zero")]
    ZeroFraction(Time),
    /// A `dur` interval that rounds to zero batches (or samples, tokens) of this run.
    #[error("save_interval '{0}' rounds to zero {1} of this run")]
    RoundsToZero(Time, &'static str),
    /// A `dur` interval over epochs needs the dataloader's length.
    #[error("save_interval '{0}' is a fraction of the run, which needs the dataloader to be sized")]
    UnsizedDataloader(Time),
}

/// Composer's interval predicate for a time-string `save_interval`.
#[derive(Clone, Debug)]
pub struct IntervalScheduler {
    interval: Time,
    /// Batch of the last interval hit (Composer's `last_batch_seen`, initially -1).
    last_batch_seen: Option<u64>,
}

impl IntervalScheduler {
    /// A scheduler for `interval`. Zero and negative counts are accepted and never save (as in
    /// Composer); `0dur` is refused.
    pub fn new(interval: Time) -> Result<IntervalScheduler, IntervalError> {
        if interval == Time::Fraction(0.0) {
            return Err(IntervalError::ZeroFraction(interval));
        }
        Ok(IntervalScheduler {
            interval,
            last_batch_seen: None,
        })
    }

    /// The event at which this interval can hit.
    fn interval_event(&self) -> Event {
        match self.interval {
            Time::Count(_, CountUnit::Epoch) => Event::Epoch,
            Time::Count(_, CountUnit::Iteration) => Event::Iteration,
            _ => Event::Batch,
        }
    }

    fn hit(&mut self, state: &TrainingState<'_>) -> bool {
        self.last_batch_seen = Some(state.timestamp.batch);
        true
    }

    /// Step 7 of §4.2: `dur` intervals, evaluated in f64 in Composer's order.
    fn fraction_hit(&self, frac: f64, state: &TrainingState<'_>) -> Result<bool, IntervalError> {
        let max = state.max_duration;
        let ts = &state.timestamp;
        let modulo_hit = |n: f64| -> Result<bool, IntervalError> {
            let n = n.ceil() as i64;
            if n == 0 {
                return Err(IntervalError::RoundsToZero(self.interval, "batches"));
            }
            Ok((ts.batch as i64) % n == 0)
        };
        let crossing_hit = |n: f64, unit: CountUnit| -> Result<bool, IntervalError> {
            let n = n.ceil();
            if n == 0.0 {
                return Err(IntervalError::RoundsToZero(
                    self.interval,
                    unit_plural(unit),
                ));
            }
            let prev = state.previous_timestamp.map_or(0, |p| p.get(unit)) as f64;
            Ok((prev / n).floor() != (ts.get(unit) as f64 / n).floor())
        };
        match max.unit {
            CountUnit::Epoch => {
                let Some(len) = state.dataloader_len else {
                    return Err(IntervalError::UnsizedDataloader(self.interval));
                };
                modulo_hit(max.value as f64 * frac * len as f64)
            }
            CountUnit::Batch => modulo_hit(max.value as f64 * frac),
            CountUnit::Sample => crossing_hit(max.value as f64 * frac, CountUnit::Sample),
            CountUnit::Token => crossing_hit(max.value as f64 * frac, CountUnit::Token),
            CountUnit::Iteration | CountUnit::Second => Ok(false),
        }
    }
}

impl SavePolicy for IntervalScheduler {
    /// Reference §4.2, step by step.
    fn should_save(
        &mut self,
        state: &TrainingState<'_>,
        event: Event,
    ) -> Result<bool, PolicyError> {
        if let Time::Count(n, _) = self.interval
            && n <= 0
        {
            return Ok(false);
        }
        let Some(prev) = state.previous_timestamp else {
            return Ok(false);
        };
        let ts = &state.timestamp;
        let final_event = matches!(event, Event::Batch | Event::Epoch);
        if final_event && state.elapsed() >= 1.0 && self.last_batch_seen != Some(ts.batch) {
            return Ok(true);
        }
        match self.interval {
            Time::Count(v, unit) => {
                let crossed = prev.get(unit) / v as u64 != ts.get(unit) / v as u64;
                Ok(event == self.interval_event() && crossed && self.hit(state))
            }
            Time::Fraction(frac) => {
                if state.dataloader_len.is_none() {
                    return Err(IntervalError::UnsizedDataloader(self.interval).into());
                }
                if event == Event::Batch && self.fraction_hit(frac, state)? {
                    return Ok(self.hit(state));
                }
                Ok(false)
            }
        }
    }

    fn describe(&self) -> String {
        self.interval.to_string()
    }
}

fn unit_plural(unit: CountUnit) -> &'static str {
    match unit {
        CountUnit::Sample => "samples",
        CountUnit::Token => "tokens",
        _ => "batches",
    }
}
