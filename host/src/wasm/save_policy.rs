//! A `save-interval` component as a [`SavePolicy`].

use wasmtime::component::TypedFunc;

use super::bindings::types as wit;
use super::config::OnError;
use super::error::{Call, PolicyError};
use super::runner::Runner;
use super::state::{TIMESTAMP_FIELDS, TrainingView};
use super::stats::StatsHandle;
use crate::policy::{Event, SavePolicy, TrainingState};
use crate::time::{CountUnit, Timestamp};

/// A save-interval component with its live instance.
pub struct WasmSavePolicy {
    runner: Runner,
}

impl WasmSavePolicy {
    pub(crate) fn new(runner: Runner) -> WasmSavePolicy {
        WasmSavePolicy { runner }
    }

    /// Ask the component, with its errors typed (no `on_error` applied).
    pub fn ask(&mut self, state: &TrainingState<'_>, event: Event) -> Result<bool, PolicyError> {
        let event = wit_event(event);
        self.runner.call(Call::ShouldSave, |store, func| {
            update(&mut store.data_mut().training, state);
            // SAFETY: `func` was type-checked against exactly this signature when the
            // instance was made (`Runner::main_func`).
            let typed = unsafe { TypedFunc::<(wit::Event,), (bool,)>::new_unchecked(func) };
            Ok(typed.call(store, (event,))?.0)
        })
    }

    /// Accounting so far; stays readable after the policy is boxed.
    pub fn stats(&self) -> StatsHandle {
        self.runner.stats()
    }
}

/// Copy `state` into what the `training` interface answers, reusing the metric list when
/// the trainer reports the same names as last time (it almost always does).
fn update(view: &mut TrainingView, state: &TrainingState<'_>) {
    view.now = timestamp_fields(&state.timestamp);
    view.previous = state.previous_timestamp.as_ref().map(timestamp_fields);
    view.elapsed = state.elapsed();
    view.max_duration = wit::MaxDuration {
        value: state.max_duration.value,
        unit: wit_unit(state.max_duration.unit),
    };
    view.dataloader_len = state.dataloader_len;
    let same_names = view.metrics.len() == state.metrics.len()
        && view
            .metrics
            .iter()
            .zip(state.metrics)
            .all(|(a, b)| a.0 == b.0);
    if same_names {
        for (slot, (_, v)) in view.metrics.iter_mut().zip(state.metrics) {
            slot.1 = *v;
        }
    } else {
        view.metrics = state.metrics.to_vec();
    }
}

impl SavePolicy for WasmSavePolicy {
    /// Applies `on_error`: `fail` returns the error, `skip` answers "no", `save` answers
    /// "yes"; both of the latter log the error.
    fn should_save(&mut self, state: &TrainingState<'_>, event: Event) -> anyhow::Result<bool> {
        match self.ask(state, event) {
            Ok(yes) => Ok(yes),
            Err(err) => match self.runner.sandbox().on_error {
                OnError::Fail => Err(err.into()),
                OnError::Skip => Ok(false),
                OnError::Save => Ok(true),
            },
        }
    }

    fn describe(&self) -> String {
        self.runner.policy().to_owned()
    }
}

/// `t`'s values in `timestamp-field` order.
fn timestamp_fields(t: &Timestamp) -> [u64; TIMESTAMP_FIELDS] {
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    [
        t.iteration,
        t.epoch,
        t.batch,
        t.sample,
        t.token,
        t.epoch_in_iteration,
        t.token_in_iteration,
        t.batch_in_epoch,
        t.sample_in_epoch,
        t.token_in_epoch,
        ns(t.total_wct),
        ns(t.iteration_wct),
        ns(t.epoch_wct),
        ns(t.batch_wct),
    ]
}

fn wit_unit(u: CountUnit) -> wit::CountUnit {
    match u {
        CountUnit::Iteration => wit::CountUnit::Iteration,
        CountUnit::Epoch => wit::CountUnit::Epoch,
        CountUnit::Batch => wit::CountUnit::Batch,
        CountUnit::Sample => wit::CountUnit::Sample,
        CountUnit::Token => wit::CountUnit::Token,
        CountUnit::Second => wit::CountUnit::Second,
    }
}

fn wit_event(e: Event) -> wit::Event {
    match e {
        Event::Batch => wit::Event::Batch,
        Event::Epoch => wit::Event::Epoch,
        Event::Iteration => wit::Event::Iteration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wit::TimestampField as F;

    /// The host's field order is the WIT enum's order, field by field.
    #[test]
    fn timestamp_fields_follow_the_wit_field_order() {
        let t = Timestamp {
            iteration: 1,
            epoch: 2,
            batch: 3,
            sample: 4,
            token: 5,
            epoch_in_iteration: 6,
            token_in_iteration: 7,
            batch_in_epoch: 8,
            sample_in_epoch: 9,
            token_in_epoch: 10,
            total_wct: Duration::from_nanos(11),
            iteration_wct: Duration::from_nanos(12),
            epoch_wct: Duration::from_nanos(13),
            batch_wct: Duration::from_nanos(14),
        };
        let list = timestamp_fields(&t);
        let expect = [
            (F::Iteration, 1),
            (F::Epoch, 2),
            (F::Batch, 3),
            (F::Sample, 4),
            (F::Token, 5),
            (F::EpochInIteration, 6),
            (F::TokenInIteration, 7),
            (F::BatchInEpoch, 8),
            (F::SampleInEpoch, 9),
            (F::TokenInEpoch, 10),
            (F::TotalWctNs, 11),
            (F::IterationWctNs, 12),
            (F::EpochWctNs, 13),
            (F::BatchWctNs, 14),
        ];
        assert_eq!(list.len(), expect.len());
        for (field, value) in expect {
            assert_eq!(list[field as usize], value, "{field:?}");
        }
    }
}
