//! What every store carries: the deny-all WASI context, the limiter and the run's identity.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::RunInfo;
use super::bindings::cairn::policy::{host, training, types};
use super::limits::Limiter;
use super::wasi::{CappedOutput, deny_all};
use crate::time::{CountUnit, Timestamp};
use crate::training::MaxDuration;

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
///
/// It keeps the trainer's own values and each `training` function converts only what it is
/// asked for: a policy reads one or two of the ~35 values, and converting all of them at every
/// call cost more than the reads.
#[derive(Clone, Debug)]
pub struct TrainingView {
    /// The current timestamp.
    pub now: Timestamp,
    /// The timestamp before the last batch.
    pub previous: Option<Timestamp>,
    /// How long training runs.
    pub max_duration: MaxDuration,
    /// Batches per epoch.
    pub dataloader_len: Option<u64>,
    /// Latest value of each metric, by name.
    pub metrics: Vec<(String, f64)>,
}

impl Default for TrainingView {
    /// What `init` sees: no event yet, so zero counters and a placeholder of one batch.
    fn default() -> Self {
        TrainingView {
            now: Timestamp::default(),
            previous: None,
            max_duration: MaxDuration {
                value: 1,
                unit: CountUnit::Batch,
            },
            dataloader_len: None,
            metrics: Vec::new(),
        }
    }
}

/// The value of `field` in `t` (wall-clock durations in nanoseconds, saturating).
pub fn timestamp_field(t: &Timestamp, field: types::TimestampField) -> u64 {
    use types::TimestampField as F;
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match field {
        F::Iteration => t.iteration,
        F::Epoch => t.epoch,
        F::Batch => t.batch,
        F::Sample => t.sample,
        F::Token => t.token,
        F::EpochInIteration => t.epoch_in_iteration,
        F::TokenInIteration => t.token_in_iteration,
        F::BatchInEpoch => t.batch_in_epoch,
        F::SampleInEpoch => t.sample_in_epoch,
        F::TokenInEpoch => t.token_in_epoch,
        F::TotalWctNs => ns(t.total_wct),
        F::IterationWctNs => ns(t.iteration_wct),
        F::EpochWctNs => ns(t.epoch_wct),
        F::BatchWctNs => ns(t.batch_wct),
    }
}

fn wit_unit(u: CountUnit) -> types::CountUnit {
    match u {
        CountUnit::Iteration => types::CountUnit::Iteration,
        CountUnit::Epoch => types::CountUnit::Epoch,
        CountUnit::Batch => types::CountUnit::Batch,
        CountUnit::Sample => types::CountUnit::Sample,
        CountUnit::Token => types::CountUnit::Token,
        CountUnit::Second => types::CountUnit::Second,
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
        timestamp_field(&self.training.now, field)
    }

    fn previous(&mut self, field: types::TimestampField) -> Option<u64> {
        self.training
            .previous
            .as_ref()
            .map(|p| timestamp_field(p, field))
    }

    fn elapsed(&mut self) -> f64 {
        self.training.max_duration.elapsed(&self.training.now)
    }

    fn duration(&mut self) -> types::MaxDuration {
        let d = self.training.max_duration;
        types::MaxDuration {
            value: d.value,
            unit: wit_unit(d.unit),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use types::TimestampField as F;

    /// Each WIT field reads the trainer's counter of the same name.
    #[test]
    fn timestamp_fields_read_the_counter_they_name() {
        let t = Timestamp {
            iteration: 1,
            epoch: 2,
            batch: 3,
            sample: 4,
            token: 5,
            epoch_in_iteration: 6,
            token_in_iteration: 7,
            batch_in_epoch: 8,
            sample_in_epoch: 9,
            token_in_epoch: 10,
            total_wct: Duration::from_nanos(11),
            iteration_wct: Duration::from_nanos(12),
            epoch_wct: Duration::from_nanos(13),
            batch_wct: Duration::from_nanos(14),
        };
        let expect = [
            (F::Iteration, 1),
            (F::Epoch, 2),
            (F::Batch, 3),
            (F::Sample, 4),
            (F::Token, 5),
            (F::EpochInIteration, 6),
            (F::TokenInIteration, 7),
            (F::BatchInEpoch, 8),
            (F::SampleInEpoch, 9),
            (F::TokenInEpoch, 10),
            (F::TotalWctNs, 11),
            (F::IterationWctNs, 12),
            (F::EpochWctNs, 13),
            (F::BatchWctNs, 14),
        ];
        for (field, value) in expect {
            assert_eq!(timestamp_field(&t, field), value, "{field:?}");
        }
        let long = Timestamp {
            total_wct: Duration::MAX,
            ..t
        };
        assert_eq!(timestamp_field(&long, F::TotalWctNs), u64::MAX);
    }
}
