//! A `state-dict-filter` component as a [`KeyFilter`].

use wasmtime::component::TypedFunc;

use super::bindings::types as wit;
use super::config::OnError;
use super::config::SandboxConfig;
use super::flat::{self, OutputCaps, Refusal};
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
        let caps = caps(self.runner.sandbox());
        let refused = |r: Refusal| refusal(&policy, r);
        let (entries, issued) = flat::flatten(tree, caps).map_err(|r| match r {
            Refusal::Invalid(reason) => PolicyError::Host {
                policy: policy.clone(),
                call: Call::Filter,
                reason,
            },
            r => refused(r),
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
        drop(entries);
        let out = match answer {
            Ok(out) => out,
            Err(message) => {
                return Err(PolicyError::FilterRefused {
                    message: self.runner.guest_message(&message),
                    policy,
                });
            }
        };
        flat::rebuild(out, issued, caps).map_err(refused)
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

/// The job's caps on what crosses the boundary.
fn caps(s: &SandboxConfig) -> OutputCaps {
    let unlimited = |n: u64| if n == 0 { u64::MAX } else { n };
    OutputCaps {
        max_entries: s.max_filter_entries,
        max_string_bytes: s.max_filter_string_bytes,
        max_offered_bytes: unlimited(s.max_transfer_mib.saturating_mul(1 << 20)),
    }
}

/// A refused answer (or state dict) as the policy's error.
fn refusal(policy: &str, r: Refusal) -> PolicyError {
    let policy = policy.to_owned();
    match r {
        Refusal::Invalid(reason) => PolicyError::InvalidResult {
            policy,
            call: Call::Filter,
            reason,
        },
        Refusal::TooDeep { entry, path, depth } => PolicyError::TooDeep {
            policy,
            entry,
            path,
            depth,
            limit: cairn_format::MAX_DEPTH,
        },
        Refusal::TooLarge { what, key } => PolicyError::TooLarge {
            policy,
            call: Call::Filter,
            what,
            key,
        },
    }
}
