//! Policy components: `save_interval` and `ignore_keys` as sandboxed WebAssembly components
//! implementing the WIT package `cairn:policy@0.1.0` (`wit/policy.wit`).
//!
//! One [`PolicyHost`] per process holds the engine(s), the single epoch ticker and the compile
//! cache; each loaded policy has its own store, limits and accounting. Files, one concern each:
//! [`config`] (TOML shapes), [`engine`] (engine settings and ticker), [`limits`] (memory
//! limiter that remembers refusals), [`cache`] (compiled artifacts, only cairn's own),
//! [`wasi`] (deny-all WASI, captured output), [`component`] (recognise, compile, link),
//! [`runner`] (live instance, limits per call, trap classification), [`save_policy`] and
//! [`filter`] (the two worlds as cairn's traits), [`flat`] (state dict across the boundary),
//! [`check`] (`cairn policy check`); the error taxonomy is the crate's [`PolicyError`].

mod bindings;
#[cfg(test)]
mod boundary_tests;
mod cache;
mod check;
mod compile;
mod component;
mod config;
mod engine;
mod file;
mod filter;
mod flat;
mod limits;
mod runner;
mod save_policy;
mod state;
mod stats;
pub(crate) mod text;
mod wasi;

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::error::{Call, PolicyError};
pub use cache::{CacheUsage, CompileCache, Origin};
pub use check::CheckReport;
pub use compile::{CompileWorker, serve_compile_worker};
pub use component::{ImportVerdict, World};
pub use config::{Limit, OnError, PolicySpec, SandboxConfig};
pub use file::identify as identify_component;
pub use filter::WasmKeyFilter;
pub use save_policy::WasmSavePolicy;
pub use stats::{PolicyStats, StatsHandle};

use crate::training::Ranks;
use engine::{EngineSettings, Engines};
use runner::Runner;

/// Where cairn's log lines go (stderr by default; tests capture them).
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// What never changes during a run, offered to components through `host.describe-run`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    /// The run's name.
    pub run_name: String,
    /// This process's ranks.
    pub ranks: Ranks,
}

impl Default for RunInfo {
    fn default() -> Self {
        RunInfo {
            run_name: "cairn".into(),
            ranks: Ranks::default(),
        }
    }
}

/// The process-wide policy runtime: engines, the epoch ticker, the compile cache and the log.
/// Cheap to clone; every job of a process shares one.
#[derive(Clone)]
pub struct PolicyHost {
    engines: Arc<Engines>,
    cache: CompileCache,
    worker: Option<CompileWorker>,
    log: LogSink,
}

impl Default for PolicyHost {
    fn default() -> Self {
        PolicyHost::new(CompileCache::new(CompileCache::default_dir()))
    }
}

impl PolicyHost {
    /// A runtime with `cache`, logging to stderr.
    pub fn new(cache: CompileCache) -> PolicyHost {
        PolicyHost {
            engines: Arc::new(Engines::new()),
            cache,
            worker: None,
            log: Arc::new(|line: &str| eprintln!("cairn: {line}")),
        }
    }

    /// The same runtime compiling components in `worker`, a child process that the
    /// `[sandbox]` compile deadline and memory limit can stop (see [`CompileWorker`] and
    /// [`serve_compile_worker`]). Without one, components compile in a thread of this process
    /// and no compile deadline or memory limit applies.
    pub fn with_compile_worker(mut self, worker: CompileWorker) -> PolicyHost {
        self.worker = Some(worker);
        self
    }

    /// The same runtime logging to `log`.
    pub fn with_log(mut self, log: LogSink) -> PolicyHost {
        self.log = log;
        self
    }

    /// The compile cache.
    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// Compile (or fetch from the cache) and link the component at `path` for `world`,
    /// under the engine that `sandbox` calls for.
    pub fn load(
        &self,
        path: &std::path::Path,
        world: World,
        sandbox: &SandboxConfig,
    ) -> Result<component::Loaded, PolicyError> {
        let policy = file_name(path);
        let wasm = file::WasmFile::open(path, sandbox.max_component_bytes())?;
        let settings = settings(sandbox);
        let engine = self
            .engines
            .get(settings)
            .map_err(|reason| PolicyError::Host {
                policy: policy.clone(),
                call: Call::Load,
                reason,
            })?;
        let log = self.log.clone();
        let keepalive = self.engines.clone();
        let compiler = component::Compiler {
            cache: &self.cache,
            settings,
            worker: self.worker.as_ref(),
            limits: compile::CompileLimits {
                timeout: (sandbox.compile_timeout_ms > 0)
                    .then(|| std::time::Duration::from_millis(sandbox.compile_timeout_ms)),
                memory_bytes: (sandbox.compile_memory_mib > 0)
                    .then(|| sandbox.compile_memory_mib.saturating_mul(1 << 20)),
            },
        };
        component::load(
            &policy,
            &wasm,
            world,
            &engine,
            &compiler,
            &move |l| log(l),
            keepalive,
        )
    }

    fn runner(
        &self,
        spec: &PolicySpec,
        world: World,
        sandbox: &SandboxConfig,
        run: &RunInfo,
    ) -> Result<Runner, PolicyError> {
        let loaded = self.load(&spec.wasm, world, sandbox)?;
        let s = settings(sandbox);
        Runner::start(
            loaded,
            sandbox.clone(),
            spec.init_config(),
            run.clone(),
            self.log.clone(),
            s.fuel,
            s.epoch,
        )
    }

    /// Load a save-interval component, instantiate it and run its `init`.
    pub fn save_policy(
        &self,
        spec: &PolicySpec,
        sandbox: &SandboxConfig,
        run: &RunInfo,
    ) -> Result<WasmSavePolicy, PolicyError> {
        Ok(WasmSavePolicy::new(self.runner(
            spec,
            World::SaveInterval,
            sandbox,
            run,
        )?))
    }

    /// Which world the component at `path` implements, or exactly what it lacks, and the
    /// imports cairn will deny (`cairn policy check`).
    pub fn check(&self, path: &std::path::Path) -> Result<CheckReport, PolicyError> {
        check::check(self, path, &SandboxConfig::default())
    }

    /// [`PolicyHost::check`] under a job's `[sandbox]` limits instead of the defaults.
    pub fn check_with(
        &self,
        path: &std::path::Path,
        sandbox: &SandboxConfig,
    ) -> Result<CheckReport, PolicyError> {
        check::check(self, path, sandbox)
    }

    /// Load a state-dict-filter component, instantiate it and run its `init`.
    pub fn key_filter(
        &self,
        spec: &PolicySpec,
        sandbox: &SandboxConfig,
        run: &RunInfo,
    ) -> Result<WasmKeyFilter, PolicyError> {
        Ok(WasmKeyFilter::new(self.runner(
            spec,
            World::StateDictFilter,
            sandbox,
            run,
        )?))
    }
}

fn settings(sandbox: &SandboxConfig) -> EngineSettings {
    EngineSettings {
        fuel: sandbox.fuel_per_call > 0 || sandbox.init_fuel > 0,
        epoch: sandbox.timeout_ms > 0 || sandbox.init_timeout_ms > 0,
        stack_kib: sandbox.max_stack_kib.clamp(64, engine::MAX_STACK_KIB),
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| PathBuf::from(path).display().to_string())
}
