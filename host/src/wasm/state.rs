//! What every store carries: the deny-all WASI context, the limiter and the run's identity.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::RunInfo;
use super::bindings::cairn::policy::{host, types};
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
