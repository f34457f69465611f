//! What every store carries: the deny-all WASI context, the limiter and the run's identity.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::RunInfo;
use super::bindings::cairn::policy::{host, training, types};
use super::limits::Limiter;
use super::wasi::{CappedOutput, deny_all};

/// The data of one store (one live instance of a policy).
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory, table and instance limits, and what they refused.
    pub limiter: Limiter,
    /// The component's standard output.
    pub stdout: CappedOutput,
    /// The component's standard error.
    pub stderr: CappedOutput,
    run: types::RunInfo,
    /// What the `training` interface answers: the state at the event being decided.
    pub training: TrainingView,
}

/// The training state as a save-interval component reads it, refreshed before each call.
#[derive(Clone, Debug)]
pub struct TrainingView {
    /// The current timestamp, indexed by `timestamp-field`.
    pub now: [u64; TIMESTAMP_FIELDS],
    /// The timestamp before the last batch, same layout.
    pub previous: Option<[u64; TIMESTAMP_FIELDS]>,
    /// Fraction of training elapsed.
    pub elapsed: f64,
    /// How long training runs.
    pub max_duration: types::MaxDuration,
    /// Batches per epoch.
    pub dataloader_len: Option<u64>,
    /// Latest value of each metric, by name.
    pub metrics: Vec<(String, f64)>,
}

/// Values in a timestamp: one per `timestamp-field`.
pub const TIMESTAMP_FIELDS: usize = 14;

impl Default for TrainingView {
    fn default() -> Self {
        TrainingView {
            now: [0; TIMESTAMP_FIELDS],
            previous: None,
            elapsed: 0.0,
            max_duration: types::MaxDuration {
                value: 1,
                unit: types::CountUnit::Batch,
            },
            dataloader_len: None,
            metrics: Vec::new(),
        }
    }
}

impl HostState {
    /// Fresh state: deny-all WASI writing into capped buffers of `log_cap` bytes.
    pub fn new(limiter: Limiter, log_cap: usize, run: &RunInfo) -> HostState {
        let stdout = CappedOutput::new(log_cap);
        let stderr = CappedOutput::new(log_cap);
        HostState {
            wasi: deny_all(&stdout, &stderr),
            table: ResourceTable::new(),
            limiter,
            stdout,
            stderr,
            run: types::RunInfo {
                run_name: run.run_name.clone(),
                rank: run.ranks.rank,
                local_rank: run.ranks.local_rank,
                world_size: run.ranks.world_size,
                local_world_size: run.ranks.local_world_size,
                node_rank: run.ranks.node_rank,
            },
            training: TrainingView::default(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn describe_run(&mut self) -> types::RunInfo {
        self.run.clone()
    }
}

impl training::Host for HostState {
    fn now(&mut self, field: types::TimestampField) -> u64 {
        self.training.now[field as usize]
    }

    fn previous(&mut self, field: types::TimestampField) -> Option<u64> {
        self.training.previous.map(|p| p[field as usize])
    }

    fn elapsed(&mut self) -> f64 {
        self.training.elapsed
    }

    fn duration(&mut self) -> types::MaxDuration {
        self.training.max_duration
    }

    fn dataloader_len(&mut self) -> Option<u64> {
        self.training.dataloader_len
    }

    fn metric(&mut self, name: String) -> Option<f64> {
        let metrics = &self.training.metrics;
        metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn metrics(&mut self) -> Vec<(String, f64)> {
        self.training.metrics.clone()
    }
}
