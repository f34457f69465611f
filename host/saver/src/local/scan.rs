//! Finding the checkpoints a folder holds, by the filename template that named them.
//!
//! Composer lists a folder with a regex built from `filename` for its overwrite check (§12),
//! but forgets to escape the literal parts and crashes on format specs and `{run_name}`; cairn
//! builds the regex from the parsed template ([`Template::match_regex`]), and uses the same scan
//! for retention across runs (Composer #2087) and for resume's fallback search.
//!
//! Two orders matter. *Training order* (the counters in the names) is what the overwrite check
//! compares. *Write order* (modification time, ties broken by training order) is what "newest"
//! means for retention and resume: a folder may hold an earlier run's checkpoints whose names
//! carry later counters than this run's, and they are older all the same.

use std::cmp::Ordering;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use regex::Regex;

use cairn_format::durable::TEMP_PREFIX;
use cairn_policy::Timestamp;

use crate::template::{Template, Var, Vars};

/// A checkpoint file found in a folder, with the counters its name carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// Full path.
    pub path: PathBuf,
    /// Path relative to the folder, with `/` separators.
    pub relative: String,
    /// The time variables read back from the name.
    pub counters: Vec<(Var, u64)>,
    /// When the file was last written (`None` if the filesystem cannot say).
    pub modified: Option<SystemTime>,
}

/// Order of significance when comparing two checkpoints' positions in training.
const ORDER: [Var; 7] = [
    Var::Epoch,
    Var::Batch,
    Var::Sample,
    Var::Token,
    Var::BatchInEpoch,
    Var::SampleInEpoch,
    Var::TokenInEpoch,
];

impl Found {
    /// The counter for `var`, if the name carries it.
    pub fn get(&self, var: Var) -> Option<u64> {
        self.counters
            .iter()
            .find(|(v, _)| *v == var)
            .map(|(_, n)| *n)
    }

    fn key(&self) -> Vec<u64> {
        ORDER.iter().map(|v| self.get(*v).unwrap_or(0)).collect()
    }

    /// Oldest first; names without counters fall back to modification time.
    pub fn training_order(&self, other: &Found) -> Ordering {
        self.key()
            .cmp(&other.key())
            .then_with(|| self.modified.cmp(&other.modified))
    }

    /// Least recently written first; equal times (a coarse clock) fall back to training order.
    pub fn write_order(&self, other: &Found) -> Ordering {
        self.modified
            .cmp(&other.modified)
            .then_with(|| self.key().cmp(&other.key()))
    }
}

/// Sort `found` least recently written first (see [`Found::write_order`]).
pub fn by_write_order(found: &mut [Found]) {
    found.sort_by(Found::write_order);
}

/// Every file under `folder` whose relative path the template could have produced for these
/// dist variables, oldest first. Symlinks and temporary files are skipped.
pub fn checkpoints(folder: &Path, filename: &Template, vars: &Vars<'_>) -> io::Result<Vec<Found>> {
    let (pattern, groups) = filename.match_regex(vars);
    let regex = Regex::new(&pattern).map_err(io::Error::other)?;
    let depth = filename
        .source()
        .trim_start_matches('/')
        .matches('/')
        .count();
    let mut found = Vec::new();
    walk(folder, "", depth, &mut |path, relative| {
        if let Some(caps) = regex.captures(relative) {
            let counters = groups
                .iter()
                .filter_map(|v| {
                    caps.name(v.name())
                        .and_then(|m| m.as_str().parse().ok())
                        .map(|n| (*v, n))
                })
                .collect();
            found.push(Found {
                path: path.to_path_buf(),
                relative: relative.to_owned(),
                counters,
                modified: fs::metadata(path).and_then(|m| m.modified()).ok(),
            });
        }
    })?;
    found.sort_by(Found::training_order);
    Ok(found)
}

fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    visit: &mut dyn FnMut(&Path, &str),
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_file() {
            visit(&entry.path(), &relative);
        } else if kind.is_dir() && depth > 0 {
            walk(&entry.path(), &relative, depth - 1, visit)?;
        }
    }
    Ok(())
}

/// Composer's overwrite check (§12.1): a file whose name says it comes *after* `now` would be
/// overwritten or confused with a checkpoint of this run. Returns the newest such file.
pub fn future_conflict(found: &[Found], now: &Timestamp) -> Result<Option<PathBuf>, String> {
    for f in found.iter().rev() {
        for (var, value) in &f.counters {
            let current = match var {
                Var::Epoch => now.epoch,
                Var::Batch => now.batch,
                Var::Sample => now.sample,
                Var::Token => now.token,
                Var::BatchInEpoch | Var::SampleInEpoch | Var::TokenInEpoch => {
                    let Some(epoch) = f.get(Var::Epoch) else {
                        return Err(format!(
                            "filename uses {{{}}} but not {{epoch}}, so {} cannot be placed in training",
                            var.name(),
                            f.relative
                        ));
                    };
                    if epoch != now.epoch {
                        continue;
                    }
                    match var {
                        Var::BatchInEpoch => now.batch_in_epoch,
                        Var::SampleInEpoch => now.sample_in_epoch,
                        _ => now.token_in_epoch,
                    }
                }
                _ => continue,
            };
            if *value > current {
                return Ok(Some(f.path.clone()));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Ranks;

    fn vars() -> Vars<'static> {
        Vars {
            run_name: "run",
            ranks: Ranks::default(),
            timestamp: None,
        }
    }

    fn scan(files: &[&str], filename: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        checkpoints(dir.path(), &Template::parse(filename).unwrap(), &vars())
            .unwrap()
            .into_iter()
            .map(|f| f.relative)
            .collect()
    }

    fn conflict(files: &[&str], filename: &str, now: Timestamp) -> Result<Option<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        let found = checkpoints(dir.path(), &Template::parse(filename).unwrap(), &vars()).unwrap();
        future_conflict(&found, &now).map(|o| {
            o.map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
        })
    }

    fn at(epoch: u64, batch: u64) -> Timestamp {
        Timestamp {
            epoch,
            batch,
            ..Timestamp::default()
        }
    }

    const DEFAULT: &str = "ep{epoch}-ba{batch}-rank{rank}.pt";

    /// Reference §12.1, with the rows where Composer crashes or mis-matches fixed.
    #[test]
    fn composer_conflict_table() {
        let ok = |files: &[&str], filename: &str, now| {
            assert_eq!(conflict(files, filename, now), Ok(None), "{files:?}")
        };
        let clash = |files: &[&str], filename: &str, now| {
            assert_eq!(
                conflict(files, filename, now),
                Ok(Some(files[0].to_owned())),
                "{files:?}"
            )
        };
        ok(&["ep0-ba0-rank0.pt"], DEFAULT, at(0, 0));
        clash(&["ep1-ba5-rank0.pt"], DEFAULT, at(0, 0));
        ok(&["ep1-ba5-rank1.pt"], DEFAULT, at(0, 0));
        ok(&["ep1-ba5-rank0.pt"], DEFAULT, at(1, 5));
        clash(&["ep1-ba6-rank0.pt"], DEFAULT, at(1, 5));
        ok(&["latest-rank0.pt", "other.txt"], DEFAULT, at(0, 0));
        // Composer: FileExistsError, because its '.' is an unescaped regex wildcard.
        ok(&["ep1-ba5-rank0Xpt"], DEFAULT, at(0, 0));
        ok(&["sub/ep1-ba5-rank0.pt"], DEFAULT, at(0, 0));
        ok(&["ckpt.pt"], "ckpt.pt", at(3, 9));
        // Composer: KeyError on format specs and on {run_name}.
        clash(&["ep001.pt"], "ep{epoch:03d}.pt", at(0, 0));
        clash(&["run/ep1.pt"], "{run_name}/ep{epoch}.pt", at(0, 0));
        assert!(conflict(&["ba3.pt"], "ba{batch_in_epoch}.pt", at(0, 0)).is_err());
        clash(&["ep0-ba3.pt"], "ep{epoch}-ba{batch_in_epoch}.pt", at(0, 0));
        ok(
            &["ep1-ba3.pt"],
            "ep{epoch}-ba{batch_in_epoch}.pt",
            at(1, 0)
                .to_next_batch(0, 0, Default::default())
                .to_next_batch(0, 0, Default::default())
                .to_next_batch(0, 0, Default::default()),
        );
        // Composer: re.error (duplicate group); here the second occurrence just has to match.
        clash(&["ep5-ep5.pt"], "ep{epoch}-ep{epoch}.pt", at(0, 0));
        ok(
            &["ep1-ba5-rank0.pt"],
            "ep{epoch}-ba{batch}-rank{rank}.pt.lz4",
            at(0, 0),
        );
    }

    #[test]
    fn write_order_is_modification_time_then_counters() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, secs: u64| {
            let p = dir.path().join(name);
            fs::write(&p, b"x").unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        // An earlier run's later counters, written long before this run's first checkpoints.
        at("ep5-ba20-rank0.pt", 1_000);
        at("ep1-ba4-rank0.pt", 2_000);
        at("ep2-ba8-rank0.pt", 2_000);
        at("ep0-ba1-rank0.pt", 3_000);
        let mut found =
            checkpoints(dir.path(), &Template::parse(DEFAULT).unwrap(), &vars()).unwrap();
        by_write_order(&mut found);
        let names: Vec<&str> = found.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(
            names,
            [
                "ep5-ba20-rank0.pt",
                "ep1-ba4-rank0.pt",
                "ep2-ba8-rank0.pt",
                "ep0-ba1-rank0.pt"
            ]
        );
    }

    #[test]
    fn scan_orders_by_training_position() {
        let got = scan(
            &[
                "ep1-ba10-rank0.pt",
                "ep0-ba2-rank0.pt",
                "ep1-ba9-rank0.pt",
                "x.pt",
            ],
            DEFAULT,
        );
        assert_eq!(
            got,
            ["ep0-ba2-rank0.pt", "ep1-ba9-rank0.pt", "ep1-ba10-rank0.pt"]
        );
        let got = scan(
            &["run/ep2.pt", "run/ep10.pt", "ep3.pt"],
            "{run_name}/ep{epoch}.pt",
        );
        assert_eq!(got, ["run/ep2.pt", "run/ep10.pt"]);
    }
}
