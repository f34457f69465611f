//! The built-in `save_interval`: Composer's `create_interval_scheduler` (reference §4), and the
//! saver-level rule of at most one checkpoint per batch.
//!
//! The predicate is stateful, as Composer's is: it remembers the last batch it said yes to, so
//! the end-of-training save does not repeat an interval save of the same batch.

use anyhow::{Result, bail};
use thiserror::Error;

use crate::policy::{Event, SavePolicy, TrainingState};
use crate::time::{CountUnit, Time};

/// Why a time cannot be a save interval.
#[derive(Debug, Error, PartialEq)]
pub enum IntervalError {
    /// `0dur` would divide by zero at the first batch (Composer crashes there); refused early.
    #[error("save_interval '{0}' is zero: a fraction of the run must be non-zero")]
    ZeroFraction(Time),
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
    fn fraction_hit(&self, frac: f64, state: &TrainingState<'_>) -> Result<bool> {
        let max = state.max_duration;
        let ts = &state.timestamp;
        let modulo_hit = |n: f64| -> Result<bool> {
            let n = n.ceil() as i64;
            if n == 0 {
                bail!("save_interval '{}' rounds to zero batches", self.interval);
            }
            Ok((ts.batch as i64) % n == 0)
        };
        let crossing_hit = |n: f64, unit: CountUnit| -> Result<bool> {
            let n = n.ceil();
            if n == 0.0 {
                bail!("save_interval '{}' rounds to zero", self.interval);
            }
            let prev = state.previous_timestamp.map_or(0, |p| p.get(unit)) as f64;
            Ok((prev / n).floor() != (ts.get(unit) as f64 / n).floor())
        };
        match max.unit {
            CountUnit::Epoch => {
                let Some(len) = state.dataloader_len else {
                    bail!("save_interval in 'dur' requires the dataloader to be sized");
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
    fn should_save(&mut self, state: &TrainingState<'_>, event: Event) -> Result<bool> {
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
                    bail!("save_interval in 'dur' requires the dataloader to be sized");
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

/// The saver's own gate around any [`SavePolicy`]: the policy is asked at every event, and a
/// "yes" saves only if no checkpoint was taken at this batch yet (Composer issue #681).
pub struct Schedule {
    policy: Box<dyn SavePolicy>,
    last_checkpoint_batch: Option<u64>,
}

impl Schedule {
    /// Gate `policy`.
    pub fn new(policy: Box<dyn SavePolicy>) -> Schedule {
        Schedule {
            policy,
            last_checkpoint_batch: None,
        }
    }

    /// Ask the policy, then apply the per-batch dedup. The policy is asked even when the batch
    /// already has a checkpoint, so its own state advances exactly as in Composer.
    pub fn should_save(&mut self, state: &TrainingState<'_>, event: Event) -> Result<bool> {
        let yes = self.policy.should_save(state, event)?;
        Ok(yes && self.last_checkpoint_batch != Some(state.timestamp.batch))
    }

    /// Record that a checkpoint was taken at `batch` (also for saves forced outside the policy).
    pub fn saved_at(&mut self, batch: u64) {
        self.last_checkpoint_batch = Some(batch);
    }

    /// The policy's description.
    pub fn describe(&self) -> String {
        self.policy.describe()
    }

    /// The gated policy.
    pub fn policy_mut(&mut self) -> &mut dyn SavePolicy {
        self.policy.as_mut()
    }
}
