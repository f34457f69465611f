//! A `state-dict-filter` component as a [`KeyFilter`].

use wasmtime::component::TypedFunc;

use super::bindings::types as wit;
use super::config::OnError;
use super::flat::{self, OutputCaps};
use super::runner::Runner;
use super::stats::StatsHandle;
use crate::error::{Call, PolicyError};
use crate::policy::{Filtered, KeyFilter};
use cairn_format::state_dict::Value;

/// A filter component with its live instance.
pub struct WasmKeyFilter {
    runner: Runner,
}

impl WasmKeyFilter {
    pub(crate) fn new(runner: Runner) -> WasmKeyFilter {
        WasmKeyFilter { runner }
    }

    /// Run the filter over `tree`, with its errors typed (no `on_error` applied).
    pub fn apply(&mut self, tree: &Value) -> Result<Value, PolicyError> {
        let policy = self.runner.policy().to_owned();
        let (entries, issued) = flat::flatten(tree).map_err(|reason| PolicyError::Host {
            policy: policy.clone(),
            call: Call::Filter,
            reason,
        })?;
        let answer = self.runner.call(Call::Filter, |store, func| {
            // SAFETY: `func` was type-checked against exactly this signature when the
            // instance was made (`Runner::main_func`).
            let typed = unsafe {
                TypedFunc::<(&[wit::Entry],), (Result<Vec<wit::Entry>, String>,)>::new_unchecked(
                    func,
                )
            };
            let entries: &[wit::Entry] = &entries;
            Ok(typed.call(store, (entries,))?.0)
        })?;
        let out = match answer {
            Ok(out) => out,
            Err(message) => {
                return Err(PolicyError::FilterRefused {
                    message: self.runner.guest_message(&message),
                    policy,
                });
            }
        };
        let s = self.runner.sandbox();
        let caps = OutputCaps {
            max_entries: s.max_filter_entries,
            max_string_bytes: s.max_filter_string_bytes,
        };
        flat::rebuild(out, &issued, caps).map_err(|reason| PolicyError::InvalidResult {
            policy,
            call: Call::Filter,
            reason,
        })
    }

    /// Accounting so far; stays readable after the filter is boxed.
    pub fn stats(&self) -> StatsHandle {
        self.runner.stats()
    }
}

impl KeyFilter for WasmKeyFilter {
    /// Applies `on_error`: `fail` returns the error; `skip` writes nothing this time (the
    /// filter may exist to keep data out of checkpoints, so an unfiltered one is the unsafe
    /// side); `save` writes the state dict unfiltered and says so.
    fn filter(&mut self, tree: Value, warnings: &mut Vec<String>) -> Result<Filtered, PolicyError> {
        match self.apply(&tree) {
            Ok(v) => Ok(Filtered::Keep(v)),
            Err(err) if !err.is_call_failure() => Err(err),
            Err(err) => match self.runner.sandbox().on_error {
                OnError::Fail => Err(err),
                OnError::Skip => Ok(Filtered::Skip(err)),
                OnError::Save => {
                    warnings.push(format!("{err}; the checkpoint was saved unfiltered"));
                    Ok(Filtered::Keep(tree))
                }
            },
        }
    }

    fn describe(&self) -> String {
        self.runner.policy().to_owned()
    }
}
