//! The read bounds every command that opens a checkpoint accepts (`inspect`, `verify`,
//! `filter`): the same knobs as a config's `[read]` section, defaults from
//! `cairn_format::ReadLimits`.

use cairn::format::{CheckpointRead, ReadLimits, VerifyReport, read_checkpoint_with};
use std::path::Path;

/// `--max-expansion-ratio`, `--max-expanded-mib`, `--expansion-floor-mib`, `--max-pickle-mib`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// A compressed checkpoint may expand to at most N times its size [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_expansion_ratio: Option<u64>,
    /// ... and to at most N MiB in all [default: 262144, i.e. 256 GiB].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    max_expanded_mib: Option<u64>,
    /// Expansion allowed whatever the ratio, in MiB [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    expansion_floor_mib: Option<u64>,
    /// The largest pickle (data.pkl) read, in MiB [default: 32].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    max_pickle_mib: Option<u64>,
}

impl ReadArgs {
    /// The limits these flags select.
    pub fn limits(&self) -> ReadLimits {
        let d = ReadLimits::default();
        ReadLimits {
            max_expansion_ratio: self.max_expansion_ratio.unwrap_or(d.max_expansion_ratio),
            max_expanded_bytes: self
                .max_expanded_mib
                .map_or(d.max_expanded_bytes, |m| m << 20),
            ratio_floor_bytes: self
                .expansion_floor_mib
                .map_or(d.ratio_floor_bytes, |m| m << 20),
            max_pickle_bytes: self.max_pickle_mib.map_or(d.max_pickle_bytes, |m| m << 20),
        }
    }

    /// Read `path` within these limits; a name that disagrees with the content is noted on
    /// stderr in one line.
    pub fn read(&self, path: &Path) -> Result<CheckpointRead, cairn::format::FormatError> {
        let read = read_checkpoint_with(path, &self.limits())?;
        note_mismatch(&read.report, path);
        Ok(read)
    }
}

/// One line on stderr when a file's name and content disagree.
pub fn note_mismatch(report: &VerifyReport, path: &Path) {
    if let Some(note) = report.mismatch(path) {
        eprintln!("cairn: note: {}", crate::out::printable(&note));
    }
}
