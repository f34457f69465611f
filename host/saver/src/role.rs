//! Which part of a save this process does.
//!
//! Composer's non-sharded checkpoints are written by global rank 0 alone ("By default, only the
//! rank zero process will save a checkpoint file", `CheckpointSaver`'s docs): every rank runs the
//! save interval, so all agree on when, and builds the state dict, which is collective in PyTorch
//! (RNG all-gather, FSDP gathers), but only rank 0 writes, links, uploads and rotates
//! (`composer/callbacks/checkpoint_saver.py`, `_save_checkpoint`). In sharded mode every rank
//! writes its own shard, and global rank 0 alone commits each step and moves `latest` (Composer's
//! sharded saves: rank 0 uploads `.metadata` and writes the symlinks); see [`crate::sharded`].

use cairn_policy::Ranks;

/// This process's part in each save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Non-sharded, global rank 0: writes the checkpoint, moves `latest`, uploads, applies
    /// retention.
    Writer,
    /// Non-sharded, any other rank: asks the policy and takes part in the snapshot, then writes
    /// nothing.
    Follower,
    /// Sharded: writes (and uploads) its own shard and publishes its record; the coordinator
    /// (global rank 0) also commits each step, moves `latest` and applies retention.
    Shard {
        /// Global rank 0.
        coordinator: bool,
    },
}

impl Role {
    /// The role of a process with these ranks.
    pub(crate) fn of(ranks: Ranks, sharded: bool) -> Role {
        match (sharded, ranks.rank == 0) {
            (true, coordinator) => Role::Shard { coordinator },
            (false, true) => Role::Writer,
            (false, false) => Role::Follower,
        }
    }

    /// Whether this process writes a file at each save.
    pub(crate) fn writes(self) -> bool {
        self != Role::Follower
    }

    /// Whether this process moves `latest` and decides retention for the run.
    pub(crate) fn leads(self) -> bool {
        matches!(self, Role::Writer | Role::Shard { coordinator: true })
    }

    /// The ranks of global rank 0, whose names `latest` and each step are known by: the names a
    /// follower looks for when it resumes, and the name of a sharded step.
    pub(crate) fn writer_ranks(ranks: Ranks) -> Ranks {
        Ranks {
            rank: 0,
            local_rank: 0,
            node_rank: 0,
            ..ranks
        }
    }
}
