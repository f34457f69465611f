//! The wasmtime engines and the one epoch ticker that bounds wall-clock time.
//!
//! Engine settings that change generated code (fuel metering, epoch checks, stack size) cannot
//! vary per store, so a process keeps one engine per distinct [`EngineSettings`] — in practice
//! one — and a single ticker thread advances the epoch of all of them every [`TICK`]. One
//! ticker and never a per-call one: two tickers would make deadlines fire twice as fast, and
//! bumping the epoch to stop one guest would interrupt every guest (reference §3.7).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use wasmtime::{Config, Engine, EngineWeak};

/// How often the epoch advances. A deadline of `t` ms fires after between `t` and `t + TICK`.
pub const TICK: Duration = Duration::from_millis(5);

/// Most wasm stack a call may use: well below the 2 MiB of Rust's spawned threads, so an
/// overflow is a clean `StackOverflow` trap rather than a host crash.
pub const MAX_STACK_KIB: u64 = 1024;

/// The code-generation settings of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EngineSettings {
    /// Meter fuel (deterministic instruction budget).
    pub fuel: bool,
    /// Check the epoch deadline (wall-clock bound).
    pub epoch: bool,
    /// WebAssembly stack per call, KiB.
    pub stack_kib: u64,
}

impl EngineSettings {
    /// The wasmtime configuration (the same in the host and in a compile worker).
    pub(crate) fn config(&self) -> Config {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Sync exports only: the async machinery makes every call ~3.5x dearer (reference §7).
        config.concurrency_support(false);
        config.consume_fuel(self.fuel);
        config.epoch_interruption(self.epoch);
        config.max_wasm_stack((self.stack_kib.clamp(64, MAX_STACK_KIB) as usize) << 10);
        // Keep the default 4 GiB memory reservation: shrinking it adds bounds checks that make
        // guests 20-35% slower (reference §7). Backtraces name the guest's functions.
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        config
    }
}

/// The engines of a process and their ticker.
pub(crate) struct Engines {
    engines: Mutex<HashMap<EngineSettings, Engine>>,
    ticked: Arc<Mutex<Vec<EngineWeak>>>,
    ticker_started: Mutex<bool>,
}

impl Engines {
    pub(crate) fn new() -> Engines {
        Engines {
            engines: Mutex::new(HashMap::new()),
            ticked: Arc::new(Mutex::new(Vec::new())),
            ticker_started: Mutex::new(false),
        }
    }

    /// The engine for `settings`, created on first use.
    pub(crate) fn get(&self, settings: EngineSettings) -> Result<Engine, String> {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = engines.get(&settings) {
            return Ok(engine.clone());
        }
        let engine = Engine::new(&settings.config()).map_err(|e| crate::error::chain(&e))?;
        if settings.epoch {
            self.ticked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(engine.weak());
            self.start_ticker();
        }
        engines.insert(settings, engine.clone());
        Ok(engine)
    }

    /// Start the one ticker thread. It holds only weak references (to the list and the
    /// engines), so it ends by itself once the [`super::PolicyHost`] is gone.
    fn start_ticker(&self) {
        let mut started = self
            .ticker_started
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *started {
            return;
        }
        let list: Weak<Mutex<Vec<EngineWeak>>> = Arc::downgrade(&self.ticked);
        let spawned = thread::Builder::new()
            .name("cairn-epoch".into())
            .spawn(move || {
                loop {
                    thread::sleep(TICK);
                    let Some(list) = list.upgrade() else { return };
                    let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
                    list.retain(|weak| match weak.upgrade() {
                        Some(engine) => {
                            engine.increment_epoch();
                            true
                        }
                        None => false,
                    });
                }
            });
        *started = spawned.is_ok();
    }
}

/// Epoch ticks that cover at least `ms` milliseconds (plus one for the partial first tick).
pub(crate) fn ticks_for(ms: u64) -> u64 {
    ms.div_ceil(TICK.as_millis() as u64).saturating_add(1)
}
