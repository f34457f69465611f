//! Per-store resource limits that bound the component's total and remember *why* they refused.
//!
//! A component is many core instances, each with its own memories and tables, all in one store.
//! The cap is on their sum: every memory of every instance plus every table (at the host's
//! size of an element), so sixty memories of 60 MiB each cannot add up to 3.6 GiB under a
//! 128 MiB cap. Memories and tables never shrink and the store is dropped whole, so the running
//! total only grows.
//!
//! A refused `memory.grow` returns -1 to the guest, whose allocator then aborts: the host only
//! sees `unreachable`, indistinguishable from a panic. The limiter records the refusal so the
//! error can say "memory limit" (reference §3.2), and tracks the peak for accounting.

use wasmtime::ResourceLimiter;

/// Host bytes of one table element (a function or GC reference is one pointer).
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Limits of one store, and what happened to them.
#[derive(Debug, Default)]
pub struct Limiter {
    /// Cap of all memories and tables together, bytes; `None` = unlimited.
    pub memory_bytes: Option<usize>,
    /// Cap of all tables' elements together; `None` = unlimited.
    pub table_elements: Option<usize>,
    /// Most instances, tables and memories (each); `None` = wasmtime's defaults.
    pub count: Option<usize>,
    /// The total the last refused growth asked for, bytes.
    pub denied_memory: Option<u64>,
    /// Bytes of all memories and tables granted so far.
    pub total: usize,
    /// Elements of all tables granted so far.
    pub elements: usize,
    /// Largest total granted, bytes (the total, since it never shrinks).
    pub peak_memory: usize,
}

impl Limiter {
    /// Grant growing something from `current` to `desired` bytes if the total stays under the
    /// cap.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if self.memory_bytes.is_some_and(|cap| total > cap) {
            self.denied_memory = Some(total as u64);
            return false;
        }
        self.total = total;
        self.peak_memory = self.peak_memory.max(total);
        true
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = self
            .elements
            .saturating_sub(current)
            .saturating_add(desired);
        if self.table_elements.is_some_and(|cap| elements > cap) {
            return Ok(false);
        }
        let granted = self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        );
        if granted {
            self.elements = elements;
        }
        Ok(granted)
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

    #[test]
    fn the_cap_is_on_all_memories_and_tables_together() {
        let mut l = Limiter {
            memory_bytes: Some(128 << 20),
            table_elements: Some(100_000),
            ..Limiter::default()
        };
        // Two memories of 60 MiB fit; a third, each under the cap alone, does not.
        assert!(l.memory_growing(0, 60 << 20, None).unwrap());
        assert!(l.memory_growing(0, 60 << 20, None).unwrap());
        assert!(!l.memory_growing(0, 60 << 20, None).unwrap());
        assert_eq!(l.denied_memory, Some(180 << 20));
        // Growing one of them counts only the growth.
        assert!(l.memory_growing(60 << 20, 64 << 20, None).unwrap());
        assert_eq!((l.total, l.peak_memory), (124 << 20, 124 << 20));
        // Tables count their elements (all tables together) and their bytes.
        assert!(l.table_growing(0, 60_000, None).unwrap());
        assert!(!l.table_growing(0, 60_000, None).unwrap(), "elements");
        assert_eq!(l.total, (124 << 20) + 60_000 * TABLE_ELEMENT_BYTES);
        let near = (68 << 20) - 60_000 * TABLE_ELEMENT_BYTES + 1;
        assert!(
            !l.memory_growing(64 << 20, near, None).unwrap(),
            "tables count"
        );
    }
}
