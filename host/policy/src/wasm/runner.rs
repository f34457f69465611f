//! One live instance of a policy, and every call into it under the job's limits.
//!
//! The instance is kept across calls (a predicate may keep state, as Composer's does). Before
//! each call the fuel is refilled and the epoch deadline set; after a failed call the store is
//! dropped — a trapped component store refuses every later call (`CannotEnterComponent`), and
//! its memory may be inconsistent anyway — and the next call starts from a fresh instance,
//! re-running `init`, which is logged because the policy's own state is lost.

use std::time::{Duration, Instant};

use wasmtime::component::{Func, Instance};
use wasmtime::{Store, Trap, WasmBacktrace};

use super::component::Loaded;
use super::config::SandboxConfig;
use super::engine::ticks_for;
use super::limits::Limiter;
use super::state::HostState;
use super::stats::{CallCost, StatsHandle, StatsWriter};
use super::text::{self, TextBudget};
use super::{LogSink, RunInfo};
use crate::error::{Call, PolicyError, chain};

struct Live {
    store: Store<HostState>,
    main: Func,
}

/// A policy component with its limits and (when healthy) a live instance.
pub struct Runner {
    loaded: Loaded,
    sandbox: SandboxConfig,
    init_config: Vec<(String, String)>,
    run: RunInfo,
    log: LogSink,
    live: Option<Live>,
    stats: StatsWriter,
    /// What this policy may still make cairn print this run (logs and messages).
    text: TextBudget,
    fuel_on: bool,
    epoch_on: bool,
}

impl Runner {
    /// Instantiate `loaded` and run its `init`; errors are fatal to loading.
    pub fn start(
        loaded: Loaded,
        sandbox: SandboxConfig,
        init_config: Vec<(String, String)>,
        run: RunInfo,
        log: LogSink,
        fuel_on: bool,
        epoch_on: bool,
    ) -> Result<Runner, PolicyError> {
        let text = TextBudget::new(sandbox.max_log_bytes_per_run);
        let mut runner = Runner {
            loaded,
            text,
            sandbox,
            init_config,
            run,
            log,
            live: None,
            stats: StatsWriter::default(),
            fuel_on,
            epoch_on,
        };
        runner.live = Some(runner.instantiate()?);
        Ok(runner)
    }

    /// The policy's file name.
    pub fn policy(&self) -> &str {
        &self.loaded.policy
    }

    /// The job's sandbox settings.
    pub fn sandbox(&self) -> &SandboxConfig {
        &self.sandbox
    }

    /// Shared accounting.
    pub fn stats(&self) -> StatsHandle {
        self.stats.handle()
    }

    fn limiter(&self) -> Limiter {
        let s = &self.sandbox;
        Limiter {
            memory_bytes: (s.memory_limit_mib > 0).then_some((s.memory_limit_mib as usize) << 20),
            table_elements: (s.max_table_elements > 0).then_some(s.max_table_elements as usize),
            count: (s.max_instances > 0).then_some(s.max_instances as usize),
            ..Limiter::default()
        }
    }

    /// Set fuel and deadline for the next call.
    fn arm(
        &self,
        store: &mut Store<HostState>,
        fuel: u64,
        timeout_ms: u64,
    ) -> wasmtime::Result<()> {
        if self.fuel_on {
            store.set_fuel(if fuel == 0 { u64::MAX } else { fuel })?;
        }
        if self.epoch_on {
            store.set_epoch_deadline(if timeout_ms == 0 {
                u64::MAX / 2
            } else {
                ticks_for(timeout_ms)
            });
        }
        Ok(())
    }

    /// A fresh store and instance, `init` called, under the init limits.
    fn instantiate(&mut self) -> Result<Live, PolicyError> {
        let mut store = Store::new(
            &self.loaded.engine,
            HostState::new(
                self.limiter(),
                self.sandbox.max_log_bytes as usize,
                &self.run,
            ),
        );
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(match self.sandbox.max_transfer_mib {
            0 => usize::MAX,
            mib => usize::try_from(mib).map_or(usize::MAX, |m| m.saturating_mul(1 << 20)),
        });
        let (fuel, ms) = (self.sandbox.init_fuel, self.sandbox.init_timeout_ms);
        let result = self.arm(&mut store, fuel, ms).and_then(|()| {
            let instance = self.loaded.pre.instantiate(&mut store)?;
            Ok(instance)
        });
        let instance = match result {
            Ok(i) => i,
            Err(e) => {
                let stderr = self.drain_output(&store, true);
                return Err(self.failure(&store, e, Call::Instantiate, fuel, ms, &stderr));
            }
        };
        let main = self.main_func(&mut store, &instance)?;
        if let Some(init_idx) = &self.loaded.init {
            let init = instance
                .get_typed_func::<(&[(String, String)],), (Result<(), String>,)>(
                    &mut store, init_idx,
                )
                .map_err(|e| PolicyError::WrongWorld {
                    policy: self.loaded.policy.clone(),
                    world: self.loaded.world.name(),
                    reason: format!("its 'init' has the wrong signature: {}", chain(&e)),
                })?;
            let outcome = init.call(&mut store, (&self.init_config,));
            let stderr = self.drain_output(&store, !matches!(outcome, Ok((Ok(()),))));
            match outcome {
                Ok((Ok(()),)) => {}
                Ok((Err(message),)) => {
                    return Err(PolicyError::InitRefused {
                        policy: self.loaded.policy.clone(),
                        message: self.guest_message(&message),
                    });
                }
                Err(e) => return Err(self.failure(&store, e, Call::Init, fuel, ms, &stderr)),
            }
        }
        Ok(Live { store, main })
    }

    /// The world's main export of `instance`, type-checked once here so that each call can
    /// skip the check.
    fn main_func(
        &self,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> Result<Func, PolicyError> {
        let policy = &self.loaded.policy;
        let func = instance
            .get_func(&mut *store, self.loaded.main)
            .ok_or_else(|| PolicyError::WrongWorld {
                policy: policy.clone(),
                world: self.loaded.world.name(),
                reason: format!(
                    "its '{}' export is not a function",
                    self.loaded.world.main_export()
                ),
            })?;
        let checked = match self.loaded.world {
            super::component::World::SaveInterval => func
                .typed::<(super::bindings::types::Event,), (bool,)>(&*store)
                .map(|_| ()),
            super::component::World::StateDictFilter => func
                .typed::<(&[super::bindings::types::Entry],), (Result<Vec<super::bindings::types::Entry>, String>,)>(&*store)
                .map(|_| ()),
        };
        checked.map_err(|e| PolicyError::WrongWorld {
            policy: policy.clone(),
            world: self.loaded.world.name(),
            reason: format!(
                "its '{}' export has the wrong signature: {}",
                self.loaded.world.main_export(),
                chain(&e)
            ),
        })?;
        Ok(func)
    }

    /// Run `f` against the live instance (making one if the last call failed) under the
    /// per-call limits; on failure the instance is discarded.
    pub fn call<R>(
        &mut self,
        call: Call,
        f: impl FnOnce(&mut Store<HostState>, Func) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        if self.live.is_none() {
            (self.log)(&format!(
                "[policy {}] starting a fresh instance after the last failure; the policy's own state was reset",
                self.loaded.policy
            ));
            self.stats.reinstantiated();
            // A fresh instance that cannot even start fails this call (and counts as it).
            match self.instantiate() {
                Ok(live) => self.live = Some(live),
                Err(e) => return self.count(Err(e), Duration::ZERO, 0, 0),
            }
        }
        let (fuel, ms) = (self.sandbox.fuel_per_call, self.sandbox.timeout_ms);
        let mut live = self.live.take().expect("set above");
        live.store.data_mut().limiter.denied_memory = None;
        if let Err(e) = self.arm(&mut live.store, fuel, ms) {
            return Err(PolicyError::Host {
                policy: self.loaded.policy.clone(),
                call,
                reason: chain(&e),
            });
        }
        let started = Instant::now();
        let result = f(&mut live.store, live.main);
        let elapsed = started.elapsed();
        let stderr = self.drain_output(&live.store, result.is_err());
        let used = if self.fuel_on && fuel > 0 {
            fuel.saturating_sub(live.store.get_fuel().unwrap_or(fuel))
        } else {
            0
        };
        let peak = live.store.data().limiter.peak_memory as u64;
        let result = match result {
            Ok(v) => {
                self.live = Some(live);
                Ok(v)
            }
            Err(e) => {
                let err = self.failure(&live.store, e, call, fuel, ms, &stderr);
                // The error itself is reported once, by whoever handles it (`on_error`).
                (self.log)(&format!(
                    "[policy {}] {call} failed ({}); discarding the instance",
                    self.loaded.policy,
                    err.kind()
                ));
                Err(err)
            }
        };
        self.count(result, elapsed, used, peak)
    }

    /// Write a line to the host's log, as this policy.
    pub fn log(&self, line: &str) {
        (self.log)(&format!("[policy {}] {line}", self.loaded.policy));
    }

    /// Add one call to the accounting.
    fn count<R>(
        &mut self,
        result: Result<R, PolicyError>,
        time: Duration,
        fuel: u64,
        peak_memory: u64,
    ) -> Result<R, PolicyError> {
        self.stats.record(CallCost {
            failed: result.is_err(),
            time,
            fuel,
            peak_memory,
        });
        result
    }

    /// A message the component wrote (an `err` answer), as cairn may show it: escaped, cut to
    /// `max_message_bytes` and charged to the run's budget.
    pub fn guest_message(&mut self, message: &str) -> String {
        let max = usize::try_from(self.sandbox.max_message_bytes).unwrap_or(usize::MAX);
        let line = text::one_line(message, max);
        self.text.admit(line, message.len())
    }

    /// Log one line on the policy's behalf, charged to the run's budget (with
    /// [`LINE_OVERHEAD`]); false once the budget is spent (the first refusal logs the one line
    /// saying so).
    fn log_line(&mut self, line: &str) -> bool {
        let line = format!("[policy {}] {line}", self.loaded.policy);
        if self.text.charge(line.len() + LINE_OVERHEAD) {
            (self.log)(&line);
            return true;
        }
        if let Some(notice) = self.text.exhausted_notice() {
            (self.log)(&format!("[policy {}] {notice}", self.loaded.policy));
        }
        false
    }

    /// Send what the component printed to the log, one escaped line each, prefixed with its
    /// name, at most `max_log_bytes` per call (then one line saying how much was cut) and
    /// within the run's budget; returns the tail of what it wrote to stderr (a panic message,
    /// a traceback) as one line for the error, charged to the budget too. When the call
    /// `failed`, stderr is not logged: the error carries it, and it is said once.
    fn drain_output(&mut self, store: &Store<HostState>, failed: bool) -> String {
        let cap = usize::try_from(self.sandbox.max_log_bytes).unwrap_or(usize::MAX);
        let prefix = self.loaded.policy.len() + "[policy ] ".len() + LINE_OVERHEAD;
        let mut written = 0usize;
        let mut stderr = String::new();
        let outputs = [
            ("stdout", store.data().stdout.drain()),
            ("stderr", store.data().stderr.drain()),
        ];
        for (stream, (text, dropped)) in outputs {
            let carried_by_error = failed && stream == "stderr";
            let mut cut = if carried_by_error { 0 } else { dropped };
            let mut at = 0usize;
            for raw in text.split_inclusive('\n') {
                if carried_by_error {
                    break;
                }
                let start = at;
                at += raw.len();
                if raw.trim().is_empty() {
                    continue;
                }
                let line = text::one_line(raw, cap);
                if written + prefix + line.len() > cap {
                    cut += (text.len() - start) as u64;
                    break;
                }
                written += prefix + line.len();
                if !self.log_line(&line) {
                    break;
                }
            }
            if cut > 0 && self.text.left() > 0 {
                self.log_line(&format!(
                    "… {} more of its {stream} cut (over [sandbox] max_log_bytes = {} per call)",
                    text::human_bytes(cut),
                    self.sandbox.max_log_bytes
                ));
            }
            if carried_by_error && !text.trim().is_empty() {
                let max = usize::try_from(self.sandbox.max_message_bytes).unwrap_or(usize::MAX);
                let tail = text::tail_line(&text, max);
                stderr = self.text.admit(tail, text.len());
            }
        }
        self.stats.output_dropped(self.text.dropped());
        stderr
    }

    /// Classify a failed call by its trap (downcast, never string matching), consulting the
    /// limiter first: a refused memory grow ends in the guest's own abort.
    fn failure(
        &self,
        store: &Store<HostState>,
        err: wasmtime::Error,
        call: Call,
        fuel: u64,
        timeout_ms: u64,
        stderr: &str,
    ) -> PolicyError {
        let policy = self.loaded.policy.clone();
        if let Some(requested) = store.data().limiter.denied_memory {
            return PolicyError::MemoryLimit {
                policy,
                call,
                limit_mib: self.sandbox.memory_limit_mib,
                requested,
            };
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => PolicyError::OutOfFuel { policy, call, fuel },
            Some(Trap::Interrupt) => PolicyError::DeadlineExceeded {
                policy,
                call,
                timeout_ms,
            },
            Some(Trap::StackOverflow) => PolicyError::StackOverflow {
                policy,
                call,
                stack_kib: self.sandbox.max_stack_kib,
            },
            Some(trap) => PolicyError::Trap {
                policy,
                call,
                trap: trap.to_string(),
                message: stderr.to_owned(),
                backtrace: err
                    .downcast_ref::<WasmBacktrace>()
                    .map(backtrace)
                    .unwrap_or_default(),
            },
            None => match err.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) => PolicyError::Trap {
                    policy,
                    call,
                    trap: format!("the component exited with status {}", exit.0),
                    message: stderr.to_owned(),
                    backtrace: String::new(),
                },
                // Not a trap while instantiating: a limit refused the instance (its count, a
                // table's size). A memory the limiter refused was reported above.
                None if call == Call::Instantiate => PolicyError::Instantiate {
                    policy,
                    reason: chain(&err),
                },
                // Not a trap during a call: wasmtime refused what the component handed over
                // while copying it out (a string that is not UTF-8, a pointer outside its
                // memory, more than `max_transfer_mib`). The calls' closures add no errors of
                // their own.
                None => PolicyError::InvalidData {
                    policy,
                    call,
                    reason: chain(&err),
                    transfer_mib: self.sandbox.max_transfer_mib,
                },
            },
        }
    }
}

/// What a log line costs beyond its text: the log's own prefix and newline (`cairn: ` and `\n`
/// in the CLI), so that many short lines cost what they take on the terminal.
const LINE_OVERHEAD: usize = 8;

/// Most bytes of a backtrace kept in an error.
const MAX_BACKTRACE_BYTES: usize = 4096;

/// A wasm backtrace as lines cairn can show: one per frame, innermost first, with the
/// function's (demangled) name and source position when the component carries them. The names
/// come from the component's name section, so each goes through the guest-text sanitiser: a
/// function named with a newline and a forged `cairn:` line stays on its frame's line.
fn backtrace(bt: &WasmBacktrace) -> String {
    let mut out = String::new();
    for (i, frame) in bt.frames().iter().enumerate() {
        let module = frame.module().name().unwrap_or("<unknown>");
        let func = match frame.func_name() {
            Some(name) => rustc_demangle::demangle(name).to_string(),
            None => format!("<wasm function {}>", frame.func_index()),
        };
        let mut line = format!(
            "  {i:>3}: {}!{}",
            text::one_line(module, text::MAX_NAME_BYTES),
            text::one_line(&func, text::MAX_NAME_BYTES)
        );
        if let Some(sym) = frame.symbols().first()
            && let Some(file) = sym.file()
        {
            line.push_str(&format!(
                " at {}:{}",
                text::one_line(file, text::MAX_NAME_BYTES),
                sym.line().unwrap_or(0)
            ));
        }
        if out.len() + line.len() > MAX_BACKTRACE_BYTES {
            out.push_str(&format!("  … {} more frames", bt.frames().len() - i));
            break;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&line);
    }
    out
}
