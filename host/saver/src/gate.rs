//! The saver's gate around any `save_interval`: at most one checkpoint per batch.
//!
//! The rule belongs to the saver, not to a policy: Composer's `CheckpointSaver` keeps
//! `last_checkpoint_batch` and skips a second save at the same batch whatever the policy says
//! (Composer issue #681), which is what makes the end-of-training save not repeat an interval save.

use cairn_policy::{Event, PolicyError, SavePolicy, TrainingState};

/// The saver's own gate around any [`SavePolicy`]: the policy is asked at every event, and a
/// "yes" saves only if no checkpoint was taken at this batch yet (Composer issue #681).
pub struct Schedule {
    policy: Box<dyn SavePolicy>,
    last_checkpoint_batch: Option<u64>,
}

impl Schedule {
    /// Gate `policy`.
    pub fn new(policy: Box<dyn SavePolicy>) -> Schedule {
        Schedule {
            policy,
            last_checkpoint_batch: None,
        }
    }

    /// Ask the policy, then apply the per-batch dedup. The policy is asked even when the batch
    /// already has a checkpoint, so its own state advances exactly as in Composer.
    pub fn should_save(
        &mut self,
        state: &TrainingState<'_>,
        event: Event,
    ) -> Result<bool, PolicyError> {
        let yes = self.policy.should_save(state, event)?;
        Ok(yes && self.last_checkpoint_batch != Some(state.timestamp.batch))
    }

    /// Record that a checkpoint was taken at `batch` (also for saves forced outside the policy).
    pub fn saved_at(&mut self, batch: u64) {
        self.last_checkpoint_batch = Some(batch);
    }

    /// The policy's description.
    pub fn describe(&self) -> String {
        self.policy.describe()
    }

    /// The gated policy.
    pub fn policy_mut(&mut self) -> &mut dyn SavePolicy {
        self.policy.as_mut()
    }
}
