//! cairn-policy: the two decisions of a checkpoint saver.
//!
//! *When to save* ([`SavePolicy`], Composer's `save_interval`) and *what to leave out*
//! ([`KeyFilter`], Composer's `ignore_keys`), with Composer's time model ([`time`]), the
//! built-in policies ([`IntervalScheduler`] for time strings, [`IgnoreGlobs`] for glob lists),
//! and the host that runs tenants' WebAssembly components in a sandbox ([`PolicyHost`]).

mod error;
mod globs;
mod interval;
mod policy;
mod pyrepr;
pub mod time;
mod training;
mod wasm;

pub use error::{Call, PolicyError};
pub use globs::{Glob, GlobError, IgnoreGlobs, flatten as tree_paths};
pub use interval::{IntervalError, IntervalScheduler};
pub use policy::{Filtered, KeyFilter, SavePolicy};
pub use pyrepr::float_repr;
pub use time::{CountUnit, Time, TimeError, TimeUnit, Timestamp};
pub use training::{Event, MaxDuration, Ranks, TrainingState};
pub use wasm::{
    CacheUsage, CheckReport, CompileCache, CompileWorker, ImportVerdict, Limit, LogSink, OnError,
    Origin, PolicyHost, PolicySpec, PolicyStats, RunInfo, SandboxConfig, StatsHandle,
    WasmKeyFilter, WasmSavePolicy, World, identify_component, serve_compile_worker,
};
