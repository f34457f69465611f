//! The staging buffers of saves written behind training (`async_save`).
//!
//! A snapshot must not change once training goes on, but the tensors a training loop hands the
//! saver may borrow its memory: the Python package passes storages by pointer, kept alive by
//! their owner, and the optimizer step right after the checkpoint event overwrites them. So before
//! a save returns, every storage's bytes are copied into a staging buffer, and the tree handed to
//! the background writer points there instead.
//!
//! The buffer is one allocation sized by the state (at most the budget), kept across saves and
//! reused: a fresh buffer costs a page fault per page, and on this project's 2-core VM a copy
//! into fresh memory ran at 0.2–0.9 GB/s against ~6 GB/s into memory touched before (the
//! `cairn-bench async-save` figures are in the README). Reuse also keeps host memory flat, where
//! asynchronous checkpointing elsewhere is known for doubling or leaking it over many saves.
//!
//! The copies are `Bytes` views sharing the buffer. The pool writes into the buffer again only
//! when it holds the sole reference ([`Arc::get_mut`]), that is once the previous save's tree
//! was dropped by its writer: reuse can never overwrite bytes a write is still reading.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cairn_format::{Prebuilt, Storage, Value};

/// Each copy starts on a cache line, so `memcpy` runs on aligned destinations.
const ALIGN: usize = 64;

/// Copies are cut into pieces of this size when spread over several threads.
const PIECE: usize = 64 << 20;

/// What staging has done so far (for summaries and the memory test).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StagingStats {
    /// The size of the staging buffer (0 before the first save behind training).
    pub capacity_bytes: u64,
    /// How many times a buffer was allocated: 1 in a run whose state does not grow.
    pub allocations: u64,
    /// Saves copied into the buffer.
    pub saves: u64,
    /// Bytes copied into it, over all saves.
    pub bytes: u64,
    /// Seconds spent copying, over all saves (the part of the blocked time that scales with the
    /// state: memory bandwidth bounds it).
    pub copy_seconds: f64,
}

/// A state whose tensors do not fit the staging budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// Bytes the state's storages need in staging.
    pub need: u64,
    /// `staging_budget_mib`, in bytes.
    pub budget: u64,
}

/// One staging allocation.
struct Slab(Box<[u8]>);

/// A copy in the slab: what a staged storage's `Bytes` owns.
struct View {
    slab: Arc<Slab>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        &self.slab.0[self.start..self.start + self.len]
    }
}

/// Staging buffers allocated once and reused by every save behind training. See the module docs.
pub struct StagingPool {
    budget: u64,
    threads: usize,
    slab: Option<Arc<Slab>>,
    stats: StagingStats,
}

impl StagingPool {
    /// A pool that never holds more than `budget` bytes; it allocates at the first save (or at
    /// [`StagingPool::reserve`]).
    pub fn new(budget: u64) -> StagingPool {
        StagingPool {
            budget,
            threads: 1,
            slab: None,
            stats: StagingStats::default(),
        }
    }

    /// Copy with `threads` threads (at least 1; one by default). Memory bandwidth bounds the
    /// copy, so more threads help only up to the channels one core cannot fill: the saver uses
    /// its share of the cores, at most four.
    pub fn set_copy_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// What staging has done so far.
    pub fn stats(&self) -> StagingStats {
        self.stats
    }

    /// Bytes a state whose storages have these sizes needs in staging.
    pub fn need(sizes: impl IntoIterator<Item = u64>) -> u64 {
        sizes.into_iter().map(aligned).sum()
    }

    /// Allocate the buffer for storages of these sizes now, and touch every page, so that the
    /// first save does not pay the page faults (call it before training starts). Does nothing
    /// when the buffer is already that large.
    pub fn reserve(&mut self, sizes: impl IntoIterator<Item = u64>) -> Result<(), TooLarge> {
        let need = StagingPool::need(sizes);
        if need > self.budget {
            return Err(TooLarge {
                need,
                budget: self.budget,
            });
        }
        let slab = self.exclusive(need as usize);
        // Writing one byte per page makes the kernel back the whole buffer now.
        for page in slab.0.chunks_mut(4096) {
            page[0] = 0;
        }
        Ok(())
    }

    /// Copy every storage of `tree` into the buffer (storages that tensors share, once) and point
    /// the tree's tensors at the copies. Returns the bytes copied; on [`TooLarge`] the tree is
    /// left as it was.
    pub fn stage(&mut self, tree: &mut Value) -> Result<u64, TooLarge> {
        let mut order: Vec<Storage> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        cairn_format::count_tensors(tree, &mut |t| {
            index.entry(t.storage.id()).or_insert_with(|| {
                order.push(t.storage.clone());
                order.len() - 1
            });
        });
        let sources: Vec<&[u8]> = order.iter().map(|s| &s.bytes()[..]).collect();
        let copies = self.copy(&sources)?;
        let staged: Vec<Storage> = order
            .iter()
            .zip(copies)
            .map(|(s, bytes)| Storage::new(s.dtype(), bytes))
            .collect();
        drop(sources);
        tree.for_each_tensor_mut(&mut |t| {
            if let Some(&i) = index.get(&t.storage.id()) {
                t.storage = staged[i].clone();
            }
        });
        Ok(staged.iter().map(|s| s.bytes().len() as u64).sum())
    }

    /// Copy a prebuilt checkpoint's records into the buffer and point it at the copies. Returns
    /// the bytes copied; on [`TooLarge`] it is left as it was.
    pub fn stage_prebuilt(&mut self, checkpoint: &mut Prebuilt) -> Result<u64, TooLarge> {
        let sources: Vec<Bytes> = checkpoint
            .records()
            .iter()
            .map(|(_, b)| b.clone())
            .collect();
        let slices: Vec<&[u8]> = sources.iter().map(|b| &b[..]).collect();
        let copies = self.copy(&slices)?;
        let bytes = copies.iter().map(|c| c.len() as u64).sum();
        for (slot, copy) in checkpoint.storages_mut().zip(copies) {
            *slot = copy;
        }
        Ok(bytes)
    }

    /// Copy `sources` into the buffer, in order: views of the copies. The buffer grows (once,
    /// by a new allocation) when they do not fit it; [`TooLarge`] beyond the budget.
    pub fn copy(&mut self, sources: &[&[u8]]) -> Result<Vec<Bytes>, TooLarge> {
        let need = StagingPool::need(sources.iter().map(|s| s.len() as u64));
        if need > self.budget {
            return Err(TooLarge {
                need,
                budget: self.budget,
            });
        }
        let started = Instant::now();
        let threads = self.threads;
        let slab = self.exclusive(need as usize);
        let mut pieces = Vec::with_capacity(sources.len());
        let mut starts = Vec::with_capacity(sources.len());
        let mut rest: &mut [u8] = &mut slab.0;
        let mut at = 0;
        for src in sources {
            let step = aligned(src.len() as u64) as usize;
            let (dst, tail) = rest.split_at_mut(step);
            pieces.push((*src, &mut dst[..src.len()]));
            starts.push(at);
            at += step;
            rest = tail;
        }
        copy_all(pieces, threads);
        let slab = Arc::clone(self.slab.as_ref().expect("exclusive() allocated it"));
        let views = sources
            .iter()
            .zip(starts)
            .map(|(src, start)| {
                Bytes::from_owner(View {
                    slab: Arc::clone(&slab),
                    start,
                    len: src.len(),
                })
            })
            .collect();
        self.stats.saves += 1;
        self.stats.bytes += sources.iter().map(|s| s.len() as u64).sum::<u64>();
        self.stats.copy_seconds += started.elapsed().as_secs_f64();
        Ok(views)
    }

    /// The buffer, at least `need` bytes, for writing. It is reused when no view of an earlier
    /// save is alive and it is large enough; otherwise a new one is allocated (the old one goes
    /// when its last view does).
    fn exclusive(&mut self, need: usize) -> &mut Slab {
        let reusable = self
            .slab
            .as_mut()
            .is_some_and(|s| s.0.len() >= need && Arc::get_mut(s).is_some());
        if !reusable {
            // Release the old buffer before allocating the new one, so the two never add up
            // (when a view still holds it, it goes with that view).
            self.slab = None;
            self.slab = Some(Arc::new(Slab(vec![0u8; need].into_boxed_slice())));
            self.stats.allocations += 1;
            self.stats.capacity_bytes = need as u64;
        }
        Arc::get_mut(self.slab.as_mut().expect("allocated above")).expect("no view is alive")
    }
}

/// A source and the staging bytes it is copied to.
type Copy<'a> = (&'a [u8], &'a mut [u8]);

/// `len` rounded up to [`ALIGN`].
fn aligned(len: u64) -> u64 {
    len.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// Copy each `(source, destination)` pair, on `threads` threads when there are several: the
/// pairs are cut into [`PIECE`]-sized pieces dealt out so each thread copies about as much.
fn copy_all(pairs: Vec<Copy<'_>>, threads: usize) {
    if threads <= 1 {
        for (src, dst) in pairs {
            dst.copy_from_slice(src);
        }
        return;
    }
    // Each lane: the bytes dealt to it so far, and its pieces.
    let mut lanes: Vec<(usize, Vec<Copy<'_>>)> = (0..threads).map(|_| (0, Vec::new())).collect();
    for (src, dst) in pairs {
        for (s, d) in src.chunks(PIECE).zip(dst.chunks_mut(PIECE)) {
            let lane = lanes
                .iter_mut()
                .min_by_key(|(bytes, _)| *bytes)
                .expect("at least two lanes");
            lane.0 += s.len();
            lane.1.push((s, d));
        }
    }
    std::thread::scope(|scope| {
        for (_, lane) in lanes {
            scope.spawn(move || {
                for (src, dst) in lane {
                    dst.copy_from_slice(src);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::{DType, Dict, Tensor};

    fn tensor(storage: &Storage, offset: u64, n: u64) -> Value {
        Value::Tensor(Tensor {
            storage: storage.clone(),
            storage_offset: offset,
            shape: vec![n],
            stride: vec![1],
            requires_grad: false,
            parameter: false,
        })
    }

    fn storages(tree: &Value) -> Vec<Storage> {
        let mut out = Vec::new();
        cairn_format::count_tensors(tree, &mut |t| out.push(t.storage.clone()));
        out
    }

    #[test]
    fn a_staged_tree_owns_copies_and_keeps_shared_storages_shared() {
        let shared = Storage::new(DType::F32, (0u8..16).collect::<Vec<_>>());
        let other = Storage::new(DType::U8, vec![7u8; 5]);
        let mut tree = Value::Dict(
            Dict::new()
                .with("a", tensor(&shared, 0, 2))
                .with("view", tensor(&shared, 2, 2))
                .with("b", tensor(&other, 0, 5)),
        );
        let before = tree.clone();
        let mut pool = StagingPool::new(1 << 20);
        assert_eq!(pool.stage(&mut tree).unwrap(), 21);
        // Equal content, none of it in the original buffers; the view still shares with `a`.
        assert_eq!(tree, before);
        let s = storages(&tree);
        assert!(s.iter().all(|x| !x.same(&shared) && !x.same(&other)));
        assert!(s[0].same(&s[1]) && !s[0].same(&s[2]));
        assert_eq!(s[2].dtype(), DType::U8);
        let source = shared.bytes().as_ptr() as usize;
        assert_ne!(s[0].bytes().as_ptr() as usize, source);
    }

    #[test]
    fn the_buffer_is_reused_once_the_last_view_is_gone() {
        let mut pool = StagingPool::new(1 << 20);
        let a = vec![1u8; 1000];
        let first = pool.copy(&[&a]).unwrap();
        let address = first[0].as_ptr();
        drop(first);
        let b = vec![2u8; 900];
        let second = pool.copy(&[&b]).unwrap();
        assert_eq!(second[0].as_ptr(), address);
        assert_eq!(&second[0][..], &b[..]);
        assert_eq!(pool.stats().allocations, 1);
        // A view still alive is never overwritten: the pool allocates instead.
        let third = pool.copy(&[&a]).unwrap();
        assert_eq!(&second[0][..], &b[..]);
        assert_eq!(&third[0][..], &a[..]);
        assert_eq!(pool.stats().allocations, 2);
    }

    #[test]
    fn a_state_beyond_the_budget_is_refused_and_left_alone() {
        let mut pool = StagingPool::new(100);
        let mut tree = tensor(&Storage::new(DType::U8, vec![0u8; 101]), 0, 101);
        let before = storages(&tree)[0].clone();
        assert_eq!(
            pool.stage(&mut tree),
            Err(TooLarge {
                need: 128,
                budget: 100
            })
        );
        assert!(storages(&tree)[0].same(&before));
        assert_eq!(pool.stats().allocations, 0);
    }

    #[test]
    fn several_threads_copy_the_same_bytes() {
        let mut pool = StagingPool::new(1 << 30);
        pool.set_copy_threads(3);
        let big: Vec<u8> = (0..(PIECE * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        let small = vec![9u8; 3];
        let copies = pool.copy(&[&big, &small, &[]]).unwrap();
        assert_eq!(&copies[0][..], &big[..]);
        assert_eq!(&copies[1][..], &small[..]);
        assert!(copies[2].is_empty());
    }

    #[test]
    fn reserve_allocates_once_for_the_saves_that_follow() {
        let mut pool = StagingPool::new(1 << 20);
        pool.reserve([1000, 3]).unwrap();
        assert_eq!(pool.stats().capacity_bytes, 1024 + 64);
        for _ in 0..3 {
            pool.copy(&[&[1u8; 1000], &[2u8; 3]]).unwrap();
        }
        assert_eq!(pool.stats().allocations, 1);
        assert!(pool.reserve([1 << 21]).is_err());
    }
}
