//! Resume: find the newest complete checkpoint of a folder and load it.
//!
//! Candidates are the folder's checkpoints, newest first, and the file the `latest` pointer
//! names; the first that verifies (every CRC, the pickle, every storage record) wins. The
//! pointer alone is never trusted (HF Transformers #35782): it may name a damaged file, and a
//! crash between a checkpoint's durable rename and the pointer swap leaves a complete checkpoint
//! newer than the one `latest` names — resuming from the older one would then collide with it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::checkpoint::{read_history, read_timestamp};
use crate::checkpoint_io as container;
use crate::local::{latest, scan};
use crate::state_dict::Value;
use crate::template::{Template, Vars};
use crate::time::Timestamp;

/// A checkpoint to continue from.
#[derive(Debug)]
pub struct ResumePoint {
    /// The file loaded.
    pub path: PathBuf,
    /// Its content.
    pub tree: Value,
    /// Where training was.
    pub timestamp: Timestamp,
    /// The saver history it carries.
    pub history: Vec<(String, Timestamp)>,
    /// Checkpoints passed over because they failed verification, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Where to look.
pub struct ResumeSearch<'a> {
    /// The checkpoint folder.
    pub folder: &'a Path,
    /// The checkpoint filename template.
    pub filename: &'a Template,
    /// The local `latest` pointer, if the config has one.
    pub latest: Option<PathBuf>,
    /// Dist variables for the names.
    pub vars: Vars<'a>,
}

impl ResumeSearch<'_> {
    /// The newest checkpoint that verifies, loaded; `None` when the folder has none.
    pub fn find(&self) -> Result<Option<ResumePoint>> {
        let mut skipped = Vec::new();
        let found = scan::checkpoints(self.folder, self.filename, &self.vars)
            .with_context(|| format!("cannot list {}", self.folder.display()))?;
        let mut candidates: Vec<PathBuf> = found.into_iter().rev().map(|f| f.path).collect();
        if let Some(link) = &self.latest
            && let Some(target) = latest::resolve(link)
                .with_context(|| format!("cannot read the latest pointer {}", link.display()))?
        {
            let same = |p: &PathBuf| p.canonicalize().ok() == target.canonicalize().ok();
            if !candidates.iter().any(same) {
                // A pointer to a name the template does not produce (an older config).
                candidates.insert(0, target);
            }
        }
        for path in candidates {
            match load(&path) {
                Ok((tree, timestamp)) => {
                    let history = read_history(&tree);
                    return Ok(Some(ResumePoint {
                        path,
                        tree,
                        timestamp,
                        history,
                        skipped,
                    }));
                }
                Err(e) => skipped.push((path, format!("{e:#}"))),
            }
        }
        Ok(None)
    }
}

/// Verify and read one checkpoint, with its timestamp.
pub fn load(path: &Path) -> Result<(Value, Timestamp)> {
    container::verify_checkpoint(path)?;
    let tree = container::read_checkpoint(path)?;
    let timestamp = read_timestamp(&tree)
        .with_context(|| format!("{} has no state/timestamp to resume from", path.display()))?;
    Ok((tree, timestamp))
}
