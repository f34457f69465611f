//! Which part of a save this process does.
//!
//! Composer's non-sharded checkpoints are written by global rank 0 alone ("By default, only the
//! rank zero process will save a checkpoint file", `CheckpointSaver`'s docs): every rank runs the
//! save interval, so all agree on when, and builds the state dict, which is collective in PyTorch
//! (RNG all-gather, FSDP gathers), but only rank 0 writes, links, uploads and rotates
//! (`composer/callbacks/checkpoint_saver.py`, `_save_checkpoint`). Sharded saving, where every
//! rank writes its shard, would be a third role here.

use cairn_policy::Ranks;

/// This process's part in each save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Global rank 0: writes the checkpoint, moves `latest`, uploads, applies retention.
    Writer,
    /// Any other rank: asks the policy and takes part in the snapshot, then writes nothing.
    Follower,
}

impl Role {
    /// The role of a process with these ranks, for non-sharded checkpoints.
    pub(crate) fn non_sharded(ranks: Ranks) -> Role {
        if ranks.rank == 0 {
            Role::Writer
        } else {
            Role::Follower
        }
    }

    /// The ranks of the process that writes: the names a follower looks for when it resumes.
    pub(crate) fn writer_ranks(ranks: Ranks) -> Ranks {
        Ranks {
            rank: 0,
            local_rank: 0,
            node_rank: 0,
            ..ranks
        }
    }
}
