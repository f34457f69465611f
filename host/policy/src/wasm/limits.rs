//! Per-store resource limits that remember *why* they refused.
//!
//! A refused `memory.grow` returns -1 to the guest, whose allocator then aborts: the host only
//! sees `unreachable`, indistinguishable from a panic. The limiter records the refusal so the
//! error can say "memory limit" (reference §3.2), and tracks peak memory for accounting.

use wasmtime::ResourceLimiter;

/// Limits of one store, and what happened to them.
#[derive(Debug, Default)]
pub struct Limiter {
    /// Cap of each linear memory, bytes; `None` = unlimited.
    pub memory_bytes: Option<usize>,
    /// Cap of each table, elements; `None` = unlimited.
    pub table_elements: Option<usize>,
    /// Most instances, tables and memories (each); `None` = wasmtime's defaults.
    pub count: Option<usize>,
    /// Size (bytes) of the last memory growth that was refused.
    pub denied_memory: Option<u64>,
    /// Largest memory size granted, bytes.
    pub peak_memory: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if self.memory_bytes.is_some_and(|cap| desired > cap) {
            self.denied_memory = Some(desired as u64);
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.table_elements.is_none_or(|cap| desired <= cap))
    }

    fn instances(&self) -> usize {
        self.count.unwrap_or(10_000)
    }

    fn tables(&self) -> usize {
        self.count.unwrap_or(10_000)
    }

    fn memories(&self) -> usize {
        self.count.unwrap_or(10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_remembered_and_peak_tracked() {
        let mut l = Limiter {
            memory_bytes: Some(1 << 20),
            ..Limiter::default()
        };
        assert!(l.memory_growing(0, 65536, None).unwrap());
        assert!(!l.memory_growing(65536, 2 << 20, None).unwrap());
        assert_eq!((l.denied_memory, l.peak_memory), (Some(2 << 20), 65536));
        let mut free = Limiter::default();
        assert!(free.memory_growing(0, 1 << 40, None).unwrap());
    }
}
