//! Waiting for a background worker (the uploader's threads, the sharded coordinator) to have
//! nothing pending: both keep a count under a mutex and signal a condition variable when it
//! drops to zero.

use std::sync::{Condvar, MutexGuard};
use std::time::{Duration, Instant};

/// Wait on `idle` while `pending` says work remains, at most `limit` (`None`: as long as it
/// takes); whether nothing is pending. A poisoned lock is waited on all the same: the count
/// stays meaningful when a worker panicked.
pub(crate) fn wait_until_idle<T>(
    mut state: MutexGuard<'_, T>,
    idle: &Condvar,
    limit: Option<Duration>,
    pending: impl Fn(&T) -> bool,
) -> bool {
    let deadline = limit.and_then(|l| Instant::now().checked_add(l));
    while pending(&state) {
        state = match deadline {
            None => idle.wait(state).unwrap_or_else(|p| p.into_inner()),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                idle.wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
    true
}
