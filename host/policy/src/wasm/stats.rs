//! Per-policy accounting: written by the policy's runner at every call, read by the run summary.
//!
//! A call of a Rust policy costs about half a microsecond, so the accounting must cost next to
//! nothing: one writer (the [`StatsWriter`] its runner owns) bumps plain relaxed atomics with a
//! load and a store — no lock, no read-modify-write instruction — and any number of
//! [`StatsHandle`]s read them. A reader may see one call's figures half added, which a summary
//! read between calls never does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What a policy has cost so far: for the run summary and per-tenant accounting.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyStats {
    /// Calls of `should-save` / `filter`.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Fuel consumed by all calls, trapped ones included (an out-of-fuel call used it all).
    pub fuel: u64,
    /// Wall-clock time spent in calls.
    pub time: Duration,
    /// Most memory its instances held at once, bytes: all memories and tables together.
    pub peak_memory: u64,
    /// Fresh instances made after a failure.
    pub reinstantiations: u64,
    /// Bytes of the policy's output and messages not shown because they went over
    /// `[sandbox] max_log_bytes_per_run`.
    pub output_dropped_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    fuel: AtomicU64,
    time_ns: AtomicU64,
    peak_memory: AtomicU64,
    reinstantiations: AtomicU64,
    output_dropped_bytes: AtomicU64,
}

/// A shared, read-only view of a policy's [`PolicyStats`], readable after the policy is boxed.
#[derive(Clone, Debug, Default)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    /// The figures so far.
    pub fn get(&self) -> PolicyStats {
        let c = &self.0;
        PolicyStats {
            calls: c.calls.load(Relaxed),
            errors: c.errors.load(Relaxed),
            fuel: c.fuel.load(Relaxed),
            time: Duration::from_nanos(c.time_ns.load(Relaxed)),
            peak_memory: c.peak_memory.load(Relaxed),
            reinstantiations: c.reinstantiations.load(Relaxed),
            output_dropped_bytes: c.output_dropped_bytes.load(Relaxed),
        }
    }
}

/// The one writer of a policy's counters. Not `Clone`: a second writer could lose updates,
/// since adding is a load and a store rather than an atomic read-modify-write.
#[derive(Debug, Default)]
pub struct StatsWriter(StatsHandle);

/// One finished call, as the runner measured it.
pub struct CallCost {
    /// Did it fail?
    pub failed: bool,
    /// Wall-clock time inside the call.
    pub time: Duration,
    /// Fuel it consumed.
    pub fuel: u64,
    /// The store's memories and tables so far, bytes.
    pub peak_memory: u64,
}

impl StatsWriter {
    /// A reader of these counters.
    pub fn handle(&self) -> StatsHandle {
        self.0.clone()
    }

    /// Add one call.
    pub fn record(&mut self, cost: CallCost) {
        let c = &(self.0).0;
        add(&c.calls, 1);
        add(&c.errors, u64::from(cost.failed));
        add(&c.fuel, cost.fuel);
        add(
            &c.time_ns,
            u64::try_from(cost.time.as_nanos()).unwrap_or(u64::MAX),
        );
        if cost.peak_memory > c.peak_memory.load(Relaxed) {
            c.peak_memory.store(cost.peak_memory, Relaxed);
        }
    }

    /// The bytes of output dropped so far (a running total kept by the runner).
    pub fn output_dropped(&mut self, total: u64) {
        (self.0).0.output_dropped_bytes.store(total, Relaxed);
    }

    /// Count a fresh instance made after a failure.
    pub fn reinstantiated(&mut self) {
        add(&(self.0).0.reinstantiations, 1);
    }
}

/// `counter += n` by its only writer.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).saturating_add(n), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_what_the_writer_recorded() {
        let mut w = StatsWriter::default();
        let r = w.handle();
        w.record(CallCost {
            failed: false,
            time: Duration::from_micros(3),
            fuel: 10,
            peak_memory: 1 << 16,
        });
        w.record(CallCost {
            failed: true,
            time: Duration::from_micros(2),
            fuel: 5,
            peak_memory: 1 << 10,
        });
        w.reinstantiated();
        assert_eq!(
            r.get(),
            PolicyStats {
                calls: 2,
                errors: 1,
                fuel: 15,
                time: Duration::from_micros(5),
                peak_memory: 1 << 16,
                reinstantiations: 1,
                output_dropped_bytes: 0,
            }
        );
    }
}
