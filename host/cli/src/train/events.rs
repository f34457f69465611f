//! A simulated trainer loop that fires checkpoint events in Composer's order.
//!
//! Both `cairn simulate` (which saves nothing) and `cairn run` (which saves through the real
//! saver) walk the same [`Events`] iterator, so what `simulate` prints is what `run` does.
//! The order is Composer's `_train_loop`: after each batch `BATCH_CHECKPOINT`; when the
//! dataloader is exhausted `EPOCH_CHECKPOINT`, then `ITERATION_CHECKPOINT` when the epoch closes
//! an iteration; training stops mid-epoch as soon as `max_duration` is reached, and the epoch
//! events still fire if that batch was also the last of its epoch.

use std::time::Duration;

use cairn::policy::{Event, MaxDuration, Timestamp};

/// The shape of a simulated run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerSpec {
    /// When training ends.
    pub max_duration: MaxDuration,
    /// Batches per epoch (the dataloader length).
    pub batches_per_epoch: u64,
    /// Samples per batch, summed over ranks.
    pub samples_per_batch: u64,
    /// Tokens per batch, summed over ranks.
    pub tokens_per_batch: u64,
    /// Wall-clock time each batch takes (simulated, not slept).
    pub batch_duration: Duration,
    /// Epochs per iteration, if iterations are configured.
    pub epochs_per_iteration: Option<u64>,
}

impl TrainerSpec {
    /// Why this run cannot continue from `t` (a timestamp read back from a checkpoint), if it
    /// cannot: the counters within an epoch and an iteration must fit this run's loop. A
    /// checkpoint whose `epoch_in_iteration` is past `epochs_per_iteration` (a filter may write
    /// any value there) would otherwise never close an iteration, and the run never end.
    pub fn check_resume(&self, t: &Timestamp) -> Result<(), String> {
        let at = "state/timestamp/Timestamp";
        if t.batch_in_epoch > self.batches_per_epoch {
            return Err(format!(
                "{at}/batch_in_epoch is {}, past this run's {} batches per epoch",
                t.batch_in_epoch, self.batches_per_epoch
            ));
        }
        if let Some(n) = self.epochs_per_iteration
            && t.epoch_in_iteration >= n
        {
            return Err(format!(
                "{at}/epoch_in_iteration is {}, not below this run's {n} epochs per iteration",
                t.epoch_in_iteration
            ));
        }
        Ok(())
    }
}

/// One checkpoint event and the trainer's time around it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tick {
    /// Which event.
    pub event: Event,
    /// The timestamp at the event.
    pub timestamp: Timestamp,
    /// The timestamp before the last batch (Composer's `previous_timestamp`).
    pub previous: Option<Timestamp>,
}

/// The checkpoint events of a run, in order.
#[derive(Clone, Debug)]
pub struct Events {
    spec: TrainerSpec,
    timestamp: Timestamp,
    previous: Option<Timestamp>,
    pending: Vec<Tick>,
    done: bool,
}

impl Events {
    /// Events of a run starting from scratch.
    pub fn new(spec: TrainerSpec) -> Events {
        Events::resume(spec, Timestamp::default())
    }

    /// Events of a run resumed at `timestamp` (counters continue from it).
    pub fn resume(spec: TrainerSpec, timestamp: Timestamp) -> Events {
        Events {
            spec,
            timestamp,
            previous: None,
            pending: Vec::new(),
            done: false,
        }
    }

    /// The timestamp after the events yielded so far.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// Train one batch, queueing the events it fires (most recent last).
    fn step(&mut self) {
        if self.spec.batches_per_epoch == 0 || self.spec.max_duration.reached(&self.timestamp) {
            self.done = true;
            return;
        }
        if self.timestamp.batch_in_epoch >= self.spec.batches_per_epoch {
            // Resumed from a checkpoint taken at the last batch of an epoch, before the epoch
            // ended: Composer's loop finds the dataloader exhausted and ends the epoch at once.
            self.end_epoch();
            return;
        }
        let spec = &self.spec;
        let before = self.timestamp;
        self.timestamp = before.to_next_batch(
            spec.samples_per_batch,
            spec.tokens_per_batch,
            spec.batch_duration,
        );
        self.previous = Some(before);
        self.push(Event::Batch);
        let finished = self.spec.max_duration.reached(&self.timestamp);
        if self.timestamp.batch_in_epoch >= self.spec.batches_per_epoch {
            self.end_epoch();
        }
        self.done = finished;
    }

    /// `EPOCH_CHECKPOINT`, then `ITERATION_CHECKPOINT` if the epoch closes an iteration.
    fn end_epoch(&mut self) {
        self.timestamp = self.timestamp.to_next_epoch();
        self.push(Event::Epoch);
        if let Some(n) = self.spec.epochs_per_iteration
            && self.timestamp.epoch_in_iteration == n
        {
            self.timestamp = self.timestamp.to_next_iteration();
            self.push(Event::Iteration);
        }
    }

    fn push(&mut self, event: Event) {
        self.pending.push(Tick {
            event,
            timestamp: self.timestamp,
            previous: self.previous,
        });
    }
}

impl Iterator for Events {
    type Item = Tick;

    fn next(&mut self) -> Option<Tick> {
        while self.pending.is_empty() {
            if self.done {
                return None;
            }
            self.step();
        }
        Some(self.pending.remove(0))
    }
}

/// The loss a simulated run reports after `batch`: a decaying curve with a deterministic
/// wobble, so loss-driven policies see improvements and plateaus, identically in `simulate`
/// and `run`.
pub fn synthetic_loss(batch: u64) -> f64 {
    let b = batch as f64;
    let noise = ((b * 12.9898).sin() * 43758.5453).fract() * 0.02;
    2.0 * (-b / 50.0).exp() + 0.3 + noise.abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_timestamp_must_fit_the_loop() {
        let spec = TrainerSpec {
            max_duration: MaxDuration::new("2iter".parse().unwrap()).unwrap(),
            batches_per_epoch: 4,
            samples_per_batch: 1,
            tokens_per_batch: 0,
            batch_duration: Duration::ZERO,
            epochs_per_iteration: Some(1),
        };
        let ok = Timestamp {
            batch_in_epoch: 4,
            ..Timestamp::default()
        };
        assert_eq!(spec.check_resume(&ok), Ok(()));
        let never_ends = Timestamp {
            epoch_in_iteration: 1000,
            ..Timestamp::default()
        };
        let err = spec.check_resume(&never_ends).unwrap_err();
        assert!(err.contains("epoch_in_iteration is 1000"), "{err}");
        let past = Timestamp {
            batch_in_epoch: 5,
            ..Timestamp::default()
        };
        assert!(spec.check_resume(&past).is_err());
    }
}
