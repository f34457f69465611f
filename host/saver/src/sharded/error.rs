//! How a step can fail to commit, or a committed step fail to be read.

use std::time::Duration;

use crate::remote::StoreError;

/// A commit-protocol error, in one sentence naming the step, the rank or the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A name is not a valid key.
    #[error(transparent)]
    Name(#[from] StoreError),
    /// The store failed a request.
    #[error("cannot {action} '{key}' in '{url}': {}", crate::remote::error_chain(.source.as_ref()))]
    Store {
        /// What the protocol was doing.
        action: &'static str,
        /// The key.
        key: String,
        /// The store's URL.
        url: String,
        /// The store's own error (boxed: it is large, and errors travel on every save's path).
        source: Box<object_store::Error>,
    },
    /// A record or manifest is not one cairn can read.
    #[error("'{key}' in '{url}' is not a usable commit object: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// The store's URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Not every rank's shard was in place before `commit_timeout_s`.
    #[error(
        "step '{step}' was not committed: {} within {:.1} s (commit_timeout_s){}; the step stays uncommitted and latest still names the previous one",
        missing_ranks(.missing),
        .waited.as_secs_f64(),
        stale_note(.stale)
    )]
    TimedOut {
        /// The step.
        step: String,
        /// Ranks whose record never came.
        missing: Vec<u32>,
        /// Ranks whose record came but did not match their shard, or was left by an earlier
        /// attempt, with why.
        stale: Vec<(u32, String)>,
        /// How long the coordinator waited.
        waited: Duration,
    },
    /// The store did not answer before the step's deadline.
    #[error(
        "step '{step}' was not committed: the store '{url}' did not answer within {:.1} s (commit_timeout_s); the step stays uncommitted and latest still names the previous one",
        .waited.as_secs_f64()
    )]
    Unanswered {
        /// The step.
        step: String,
        /// The store's URL.
        url: String,
        /// How long the coordinator waited.
        waited: Duration,
    },
    /// Another coordinator committed the step with other shards (the store refused the
    /// create-only put).
    #[error(
        "step '{step}' was already committed in '{url}' by another coordinator, with other shards; the store refused a second manifest and latest was not moved"
    )]
    CommittedByAnother {
        /// The step.
        step: String,
        /// The store's URL.
        url: String,
    },
    /// Moving `latest` after the commit failed.
    #[error("step '{step}' is committed, but moving latest to it failed: {reason}")]
    Latest {
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// A local file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The protocol's threads could not start.
    #[error("cannot start the commit thread: {0}")]
    Runtime(std::io::Error),
}

fn missing_ranks(missing: &[u32]) -> String {
    match missing {
        [] => "every rank's record came".to_owned(),
        [one] => format!("rank {one} never published its shard record"),
        many => format!(
            "ranks {} never published their shard records",
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn stale_note(stale: &[(u32, String)]) -> String {
    stale
        .iter()
        .map(|(rank, why)| format!("; rank {rank}'s record was not usable: {why}"))
        .collect()
}
