//! A `save-interval` component as a [`SavePolicy`].

use wasmtime::component::TypedFunc;

use super::bindings::types as wit;
use super::config::OnError;
use super::error::{Call, PolicyError};
use super::runner::{Runner, StatsHandle};
use crate::policy::{Event, SavePolicy, TrainingState};
use crate::time::{CountUnit, Timestamp};

/// A save-interval component with its live instance.
pub struct WasmSavePolicy {
    runner: Runner,
    /// Reused between calls so that an unchanged metric list costs no allocation.
    state: wit::TrainingState,
}

impl WasmSavePolicy {
    pub(crate) fn new(runner: Runner) -> WasmSavePolicy {
        WasmSavePolicy {
            runner,
            state: wit::TrainingState {
                timestamp: wit_timestamp(&Timestamp::default()),
                previous: None,
                max_duration: wit::MaxDuration {
                    value: 1,
                    unit: wit::CountUnit::Batch,
                },
                dataloader_len: None,
                elapsed: 0.0,
                metrics: Vec::new(),
            },
        }
    }

    /// Ask the component, with its errors typed (no `on_error` applied).
    pub fn ask(&mut self, state: &TrainingState<'_>, event: Event) -> Result<bool, PolicyError> {
        self.update(state);
        let arg = &self.state;
        let event = wit_event(event);
        self.runner.call(Call::ShouldSave, |store, func| {
            // SAFETY: `func` was type-checked against exactly this signature when the
            // instance was made (`Runner::main_func`).
            let typed = unsafe {
                TypedFunc::<(&wit::TrainingState, wit::Event), (bool,)>::new_unchecked(func)
            };
            Ok(typed.call(store, (arg, event))?.0)
        })
    }

    /// Accounting so far; stays readable after the policy is boxed.
    pub fn stats(&self) -> StatsHandle {
        self.runner.stats()
    }

    /// Copy `state` into the reusable WIT record.
    fn update(&mut self, state: &TrainingState<'_>) {
        let s = &mut self.state;
        s.timestamp = wit_timestamp(&state.timestamp);
        s.previous = state.previous_timestamp.as_ref().map(wit_timestamp);
        s.max_duration = wit::MaxDuration {
            value: state.max_duration.value,
            unit: wit_unit(state.max_duration.unit),
        };
        s.dataloader_len = state.dataloader_len;
        s.elapsed = state.elapsed();
        let same_names = s.metrics.len() == state.metrics.len()
            && s.metrics.iter().zip(state.metrics).all(|(a, b)| a.0 == b.0);
        if same_names {
            for (slot, (_, v)) in s.metrics.iter_mut().zip(state.metrics) {
                slot.1 = *v;
            }
        } else {
            s.metrics = state.metrics.to_vec();
        }
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

fn wit_timestamp(t: &Timestamp) -> wit::Timestamp {
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    wit::Timestamp {
        iteration: t.iteration,
        epoch: t.epoch,
        batch: t.batch,
        sample: t.sample,
        token: t.token,
        epoch_in_iteration: t.epoch_in_iteration,
        token_in_iteration: t.token_in_iteration,
        batch_in_epoch: t.batch_in_epoch,
        sample_in_epoch: t.sample_in_epoch,
        token_in_epoch: t.token_in_epoch,
        total_wct_ns: ns(t.total_wct),
        iteration_wct_ns: ns(t.iteration_wct),
        epoch_wct_ns: ns(t.epoch_wct),
        batch_wct_ns: ns(t.batch_wct),
    }
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
