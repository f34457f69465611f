//! A `save-interval` component as a [`SavePolicy`].

use wasmtime::component::TypedFunc;

use super::bindings::types as wit;
use super::config::OnError;
use super::runner::Runner;
use super::state::TrainingView;
use super::stats::StatsHandle;
use crate::error::{Call, PolicyError};
use crate::policy::SavePolicy;
use crate::training::{Event, TrainingState};

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
    view.now = state.timestamp;
    view.previous = state.previous_timestamp;
    view.max_duration = state.max_duration;
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
    /// "yes"; both of the latter log the error (once).
    fn should_save(
        &mut self,
        state: &TrainingState<'_>,
        event: Event,
    ) -> Result<bool, PolicyError> {
        match self.ask(state, event) {
            Ok(yes) => Ok(yes),
            Err(err) => match self.runner.sandbox().on_error {
                OnError::Fail => Err(err),
                OnError::Skip => {
                    self.runner
                        .log(&format!("{err}; not saving (on_error = \"skip\")"));
                    Ok(false)
                }
                OnError::Save => {
                    self.runner
                        .log(&format!("{err}; saving (on_error = \"save\")"));
                    Ok(true)
                }
            },
        }
    }

    fn describe(&self) -> String {
        self.runner.policy().to_owned()
    }
}

fn wit_event(e: Event) -> wit::Event {
    match e {
        Event::Batch => wit::Event::Batch,
        Event::Epoch => wit::Event::Epoch,
        Event::Iteration => wit::Event::Iteration,
    }
}
