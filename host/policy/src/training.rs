//! What a policy sees of training: the checkpoint [`Event`]s a trainer fires, the
//! [`TrainingState`] at each, how long training runs ([`MaxDuration`]) and this process's
//! [`Ranks`].

use std::fmt;

use crate::time::{CountUnit, Time, Timestamp};

/// The checkpoint events a trainer fires, in Composer's order within a run: `BATCH_CHECKPOINT`
/// after every batch, `EPOCH_CHECKPOINT` after every epoch, `ITERATION_CHECKPOINT` after every
/// iteration (when iterations are configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// `BATCH_CHECKPOINT`
    Batch,
    /// `EPOCH_CHECKPOINT`
    Epoch,
    /// `ITERATION_CHECKPOINT`
    Iteration,
}

impl Event {
    /// The name used in the CLI's JSON (`batch`, `epoch`, `iteration`).
    pub fn name(self) -> &'static str {
        match self {
            Event::Batch => "batch",
            Event::Epoch => "epoch",
            Event::Iteration => "iteration",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// How long training runs. Composer forbids `dur` here, so the type cannot hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxDuration {
    /// The amount, in `unit`.
    pub value: i64,
    /// A counting unit.
    pub unit: CountUnit,
}

impl MaxDuration {
    /// `max_duration` from a parsed time; `None` for a `dur` time or a non-positive value.
    pub fn new(time: Time) -> Option<MaxDuration> {
        match time {
            Time::Count(value, unit) if value > 0 => Some(MaxDuration { value, unit }),
            _ => None,
        }
    }

    /// Fraction of training elapsed at `ts` (Composer's `get_elapsed_duration`).
    pub fn elapsed(&self, ts: &Timestamp) -> f64 {
        ts.get(self.unit) as f64 / self.value as f64
    }

    /// True once `ts` has reached the end of training.
    pub fn reached(&self, ts: &Timestamp) -> bool {
        ts.get(self.unit) >= self.value as u64
    }
}

impl fmt::Display for MaxDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Time::Count(self.value, self.unit).fmt(f)
    }
}

/// The ranks of this process, from the launcher's environment (`RANK`, `LOCAL_RANK`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranks {
    /// Global rank.
    pub rank: u32,
    /// Rank on this node.
    pub local_rank: u32,
    /// Number of processes.
    pub world_size: u32,
    /// Number of processes on this node.
    pub local_world_size: u32,
    /// Index of this node.
    pub node_rank: u32,
}

impl Default for Ranks {
    fn default() -> Self {
        Ranks {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            local_world_size: 1,
            node_rank: 0,
        }
    }
}

impl Ranks {
    /// Read the torch launcher's variables, defaulting as Composer does (rank 0 of 1).
    pub fn from_env() -> Ranks {
        let var = |name: &str, default: u32| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Ranks {
            rank: var("RANK", 0),
            local_rank: var("LOCAL_RANK", 0),
            world_size: var("WORLD_SIZE", 1),
            local_world_size: var("LOCAL_WORLD_SIZE", 1),
            node_rank: var("NODE_RANK", 0),
        }
    }
}

/// What a save-interval policy sees at a checkpoint event: everything a Composer callable
/// `(state, event) -> bool` could use for the decision.
#[derive(Clone, Debug)]
pub struct TrainingState<'a> {
    /// Where training is now.
    pub timestamp: Timestamp,
    /// Where it was before the last batch; `None` before the first batch of a (resumed) run.
    pub previous_timestamp: Option<Timestamp>,
    /// How long training runs.
    pub max_duration: MaxDuration,
    /// Batches per epoch, when the dataloader is sized.
    pub dataloader_len: Option<u64>,
    /// The run's name.
    pub run_name: &'a str,
    /// This process's ranks.
    pub ranks: Ranks,
    /// The latest value of each metric, by name (e.g. `loss`).
    pub metrics: &'a [(String, f64)],
}

impl TrainingState<'_> {
    /// Fraction of training elapsed.
    pub fn elapsed(&self) -> f64 {
        self.max_duration.elapsed(&self.timestamp)
    }
}
