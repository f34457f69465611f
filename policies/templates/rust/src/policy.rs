//! The decision itself, kept apart from WebAssembly so that `cargo test` can run it on your
//! own machine: nothing in this file knows about components, only about the few values of
//! the training state it reads through the [`Training`] trait.
//!
//! The rule is "save every `n` batches", exactly like cairn's built-in
//! `save_interval = "<n>ba"` (which is Composer's): no save before the first batch, a save at
//! the batch event whose batch count is a multiple of `n`, and one extra save when training
//! reaches `max_duration` unless that batch was just saved. Change [`EveryN::should_save`]
//! to change the rule.

/// The checkpoint events cairn asks about, in the order it fires them after a batch:
/// `Batch` after every batch, `Epoch` after the last batch of an epoch, `Iteration` after
/// the last epoch of an iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Batch,
    Epoch,
    Iteration,
}

/// The part of the training state this policy reads. `src/lib.rs` implements it with cairn's
/// `training` interface; the tests below implement it with plain numbers.
///
/// Every method is one call into cairn (about 50 ns each from Rust), so a policy reads only
/// what it needs: here one value per batch event.
pub trait Training {
    /// Completed batches so far (`training.now(batch)`).
    fn batch(&self) -> u64;
    /// Completed batches before the last batch, `None` before the first batch of a (resumed)
    /// run (`training.previous(batch)`).
    fn previous_batch(&self) -> Option<u64>;
    /// `max_duration` in batches, or `None` when it is in another unit (epochs, samples, ...)
    /// (`training.duration()`). It never changes during a run.
    fn duration_in_batches(&self) -> Option<u64>;
    /// Fraction of training done, 1.0 at the end (`training.elapsed()`).
    fn elapsed(&self) -> f64;
}

/// What the policy remembers between calls. cairn keeps one instance of the component for
/// the whole run and calls it at every event, in order.
#[derive(Debug)]
pub struct EveryN {
    /// Save every `n` batches (config key `n`).
    pub n: u64,
    /// `max_duration` in batches (`Some(None)` when it is in another unit), read once.
    end: Option<Option<u64>>,
    /// The last batch this policy said yes to at a batch event.
    last_saved: Option<u64>,
}

impl Default for EveryN {
    fn default() -> Self {
        EveryN::new(1)
    }
}

impl EveryN {
    /// A policy saving every `n` batches.
    pub const fn new(n: u64) -> EveryN {
        EveryN {
            n,
            end: None,
            last_saved: None,
        }
    }

    /// Apply the policy's `config` table (keys and values are strings, as cairn renders the
    /// TOML). An `Err` refuses the configuration: cairn stops the job with that message.
    pub fn configure(&mut self, config: &[(String, String)]) -> Result<(), String> {
        for (key, value) in config {
            match key.as_str() {
                "n" => {
                    self.n = value
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            format!("n must be a positive whole number of batches, not '{value}'")
                        })?
                }
                other => return Err(format!("unknown config key '{other}' (this policy takes 'n')")),
            }
        }
        Ok(())
    }

    /// Should cairn save a checkpoint at this event?
    pub fn should_save(&mut self, event: Event, training: &impl Training) -> bool {
        let batch = match event {
            // A batch has just run.
            Event::Batch => training.batch(),
            // After a resume an epoch can end before any batch ran: then Composer says no.
            Event::Epoch if training.previous_batch().is_some() => training.batch(),
            Event::Epoch | Event::Iteration => return false,
        };
        // The end of training always gets a checkpoint (once).
        if self.reached_end(batch, training) && self.last_saved != Some(batch) {
            return true;
        }
        if event == Event::Batch && batch % self.n == 0 {
            self.last_saved = Some(batch);
            return true;
        }
        false
    }

    /// Has training reached `max_duration`? Without a call into cairn when it is in batches.
    fn reached_end(&mut self, batch: u64, training: &impl Training) -> bool {
        match *self.end.get_or_insert_with(|| training.duration_in_batches()) {
            Some(max) => batch >= max,
            None => training.elapsed() >= 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake training state: where training is, and how long it runs.
    struct Fake {
        batch: u64,
        max_batches: u64,
    }

    impl Training for Fake {
        fn batch(&self) -> u64 {
            self.batch
        }
        fn previous_batch(&self) -> Option<u64> {
            self.batch.checked_sub(1)
        }
        fn duration_in_batches(&self) -> Option<u64> {
            Some(self.max_batches)
        }
        fn elapsed(&self) -> f64 {
            self.batch as f64 / self.max_batches as f64
        }
    }

    /// The batches at which `policy` saves over a run of `epochs` epochs of `per_epoch`
    /// batches, firing events in cairn's order.
    fn saves(policy: &mut EveryN, epochs: u64, per_epoch: u64) -> Vec<u64> {
        let max_batches = epochs * per_epoch;
        let mut saved = Vec::new();
        for batch in 1..=max_batches {
            let state = Fake { batch, max_batches };
            let mut events = vec![Event::Batch];
            if batch % per_epoch == 0 {
                events.push(Event::Epoch);
            }
            for event in events {
                // cairn saves at most once per batch.
                if policy.should_save(event, &state) && saved.last() != Some(&batch) {
                    saved.push(batch);
                }
            }
        }
        saved
    }

    #[test]
    fn saves_every_n_batches_and_at_the_end() {
        // Like `cairn simulate --save-interval 3ba --max-duration 2ep --batches-per-epoch 4`.
        assert_eq!(saves(&mut EveryN::new(3), 2, 4), vec![3, 6, 8]);
        assert_eq!(saves(&mut EveryN::new(1), 1, 3), vec![1, 2, 3]);
        assert_eq!(saves(&mut EveryN::new(4), 2, 4), vec![4, 8]);
    }

    #[test]
    fn config_sets_n() {
        let mut policy = EveryN::default();
        policy.configure(&[("n".into(), " 500 ".into())]).unwrap();
        assert_eq!(policy.n, 500);
    }

    #[test]
    fn config_refuses_bad_values() {
        let mut policy = EveryN::default();
        assert!(policy.configure(&[("n".into(), "0".into())]).is_err());
        assert!(policy.configure(&[("n".into(), "ten".into())]).is_err());
        assert!(policy.configure(&[("every".into(), "3".into())]).is_err());
    }

    #[test]
    fn never_saves_at_an_iteration_event() {
        let state = Fake { batch: 3, max_batches: 3 };
        assert!(!EveryN::new(1).should_save(Event::Iteration, &state));
    }
}
