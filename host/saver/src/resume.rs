//! Resume: which checkpoint to continue from, and why.
//!
//! The `latest` pointer is followed when the checkpoint it names verifies (every CRC, the
//! pickle, every storage record): it is this run's own record of its newest save, while the
//! folder may also hold other runs' checkpoints with later counters in their names. Two cases
//! override it:
//!
//! - a checkpoint written *after* the one `latest` names that continues the same run (its
//!   history lists that checkpoint): a crash between a save's durable rename and the pointer swap
//!   leaves exactly this, and resuming from the older one would collide with it at the next save;
//! - a missing or damaged target (HF Transformers #35782: never trust the pointer alone): then
//!   the most recently *written* checkpoint that verifies is taken, whatever its name says.
//!
//! Every choice comes with its reason ([`ResumeReason`]), and every candidate passed over with
//! why, so the caller can say what happened.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cairn_format::{ReadLimits, Value};
use cairn_policy::Timestamp;

use crate::checkpoint::{read_history, read_timestamp};
use crate::error::{Error, Result};
use crate::local::{latest, scan};
use crate::template::{Template, Vars};

/// A checkpoint to continue from, loaded and verified.
#[derive(Debug)]
pub struct ResumePoint {
    /// The file loaded.
    pub path: PathBuf,
    /// Its content.
    pub tree: Value,
    /// Where training was.
    pub timestamp: Timestamp,
    /// The saver history it carries (Composer's `all_saved_checkpoints_to_timestamp`).
    pub history: Vec<(String, Timestamp)>,
    /// Why this checkpoint was chosen.
    pub reason: ResumeReason,
    /// Checkpoints passed over because they failed verification, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Why [`ResumePoint::path`] was chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum ResumeReason {
    /// The local `latest` pointer names it.
    Latest,
    /// `latest` names an older checkpoint of the same run; this one was written after it (a
    /// crash between the save and the pointer swap).
    WrittenAfterLatest {
        /// What `latest` names.
        latest: PathBuf,
    },
    /// There is no usable `latest`; this is the most recently written checkpoint that verifies.
    NewestWritten {
        /// What was wrong with `latest` (`None`: the config has no local pointer).
        latest_problem: Option<String>,
    },
    /// Nothing local; downloaded from the remote `latest` pointer.
    Remote {
        /// The pointer's object name.
        pointer: String,
    },
}

impl fmt::Display for ResumeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumeReason::Latest => f.write_str("the latest pointer names it"),
            ResumeReason::WrittenAfterLatest { latest } => write!(
                f,
                "it continues the run from {}, which the latest pointer names, and was written after it (the pointer was not moved before the process stopped)",
                latest.display()
            ),
            ResumeReason::NewestWritten {
                latest_problem: Some(problem),
            } => write!(
                f,
                "it is the most recently written checkpoint that verifies ({problem})"
            ),
            ResumeReason::NewestWritten {
                latest_problem: None,
            } => f.write_str("it is the most recently written checkpoint that verifies"),
            ResumeReason::Remote { pointer } => {
                write!(f, "the remote latest pointer {pointer} names it")
            }
        }
    }
}

/// Where to look.
pub(crate) struct Search<'a> {
    /// The checkpoint folder.
    pub folder: &'a Path,
    /// The checkpoint filename template.
    pub filename: &'a Template,
    /// The local `latest` pointer, or why there is none to follow (`Ok(None)`: the config has
    /// no local pointer).
    pub latest: Result<Option<PathBuf>, String>,
    /// Dist variables for the names.
    pub vars: Vars<'a>,
    /// Bounds on reading each candidate.
    pub limits: ReadLimits,
}

impl Search<'_> {
    /// The checkpoint to continue from; `None` when the folder has none that verifies. Every
    /// candidate passed over (damaged, a decompression bomb, a value out of range) is added
    /// to `passed_over` with why, also when none is found.
    pub fn find(&self, passed_over: &mut Vec<(PathBuf, String)>) -> Result<Option<ResumePoint>> {
        let mut skipped = Vec::new();
        let mut written = self.newest_written_first()?;
        let (target, latest_problem) = self.latest_target();
        if let Some(target) = target {
            match load(&target, &self.limits) {
                Ok((tree, timestamp)) => {
                    let latest = point(target, tree, timestamp, ResumeReason::Latest);
                    let after = latest_mtime(&latest.path);
                    written.retain(|(p, m)| *m > after && !same_file(p, &latest.path));
                    for (path, _) in written {
                        match load(&path, &self.limits) {
                            Ok((tree, ts)) if continues(&tree, &latest) => {
                                let reason = ResumeReason::WrittenAfterLatest {
                                    latest: latest.path.clone(),
                                };
                                return Ok(Some(with_skipped(
                                    point(path, tree, ts, reason),
                                    skipped,
                                )));
                            }
                            Ok(_) => {}
                            Err(e) => skipped.push((path, e.to_string())),
                        }
                    }
                    return Ok(Some(with_skipped(latest, skipped)));
                }
                Err(e) => {
                    skipped.push((target.clone(), e.to_string()));
                    written.retain(|(p, _)| !same_file(p, &target));
                }
            }
        }
        let reason = ResumeReason::NewestWritten { latest_problem };
        for (path, _) in written {
            match load(&path, &self.limits) {
                Ok((tree, ts)) => {
                    let found = point(path, tree, ts, reason);
                    return Ok(Some(with_skipped(found, skipped)));
                }
                Err(e) => skipped.push((path, e.to_string())),
            }
        }
        passed_over.extend(skipped);
        Ok(None)
    }

    /// What `latest` names, or why there is nothing to follow.
    fn latest_target(&self) -> (Option<PathBuf>, Option<String>) {
        let link = match &self.latest {
            Ok(Some(link)) => link,
            Ok(None) => return (None, None),
            Err(why) => return (None, Some(why.clone())),
        };
        match latest::resolve(link) {
            Ok(Some(target)) => (Some(target), Some(format!("{} is damaged", link.display()))),
            Ok(None) => (None, Some(format!("there is no {}", link.display()))),
            Err(e) => (
                None,
                Some(format!("{} cannot be read: {e}", link.display())),
            ),
        }
    }

    /// The folder's checkpoints, most recently written first.
    fn newest_written_first(&self) -> Result<Vec<(PathBuf, Option<SystemTime>)>> {
        let mut found = scan::checkpoints(self.folder, self.filename, &self.vars)
            .map_err(Error::io("list", self.folder))?;
        scan::by_write_order(&mut found);
        Ok(found
            .into_iter()
            .rev()
            .map(|f| (f.path, f.modified))
            .collect())
    }
}

fn latest_mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || a.canonicalize()
            .ok()
            .is_some_and(|a| Some(a) == b.canonicalize().ok())
}

/// Does `tree` continue the run whose newest checkpoint is `latest`? Its history extends
/// `latest`'s (every checkpoint of that run, `latest` itself included, with its timestamp).
fn continues(tree: &Value, latest: &ResumePoint) -> bool {
    let history = read_history(tree).unwrap_or_default();
    !latest.history.is_empty()
        && history.len() > latest.history.len()
        && history.starts_with(&latest.history)
}

fn point(path: PathBuf, tree: Value, timestamp: Timestamp, reason: ResumeReason) -> ResumePoint {
    // `load` checked the history; a damaged one was an error there.
    let history = read_history(&tree).unwrap_or_default();
    ResumePoint {
        path,
        tree,
        timestamp,
        history,
        reason,
        skipped: Vec::new(),
    }
}

fn with_skipped(mut point: ResumePoint, skipped: Vec<(PathBuf, String)>) -> ResumePoint {
    point.skipped = skipped;
    point
}

/// Read one checkpoint within `limits`, verifying it in the same pass (every CRC, the pickle,
/// every storage record; a compressed file is decompressed once), and check every value resume
/// reads back from it: the timestamp and the saver history, in range, or an error naming the
/// file and the key.
pub(crate) fn load(path: &Path, limits: &ReadLimits) -> Result<(Value, Timestamp)> {
    let tree = cairn_format::read_checkpoint_with(path, limits)?.tree;
    let bad = |e: crate::checkpoint::BadValue| Error::Resume {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let timestamp = read_timestamp(&tree)
        .map_err(bad)?
        .ok_or_else(|| Error::Resume {
            path: path.to_owned(),
            reason: "it has no state/timestamp to resume from".into(),
        })?;
    read_history(&tree).map_err(bad)?;
    Ok((tree, timestamp))
}
