//! `cairn filter IN -o OUT --ignore-keys GLOB...`: rewrite a checkpoint without the keys the
//! globs match (Composer's `ignore_keys` rules), in the format OUT's extension names.
//!
//! Objects cairn does not model are written back from their pickle recipes, so a filtered
//! Composer checkpoint still loads in Composer. Like Composer, a full checkpoint whose `state`
//! was removed gets an empty `state` back. OUT appears only complete: it is written to a
//! temporary sibling, fsynced, then renamed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::checkpoint_io::{format_of, read_checkpoint, write_checkpoint};
use crate::globs::{IgnoreGlobs, restore_state_key};
use crate::policy::KeyFilter;
use crate::wasm::{PolicyHost, PolicySpec, RunInfo, SandboxConfig};

/// Arguments of `cairn filter`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint to read.
    input: PathBuf,
    /// Where to write the filtered checkpoint; its extension picks the format.
    #[arg(short, long)]
    output: PathBuf,
    /// Glob patterns of paths to drop (e.g. 'state/optimizers/*').
    #[arg(long = "ignore-keys", num_args = 1.., required_unless_present = "filter", conflicts_with = "filter")]
    ignore_keys: Vec<String>,
    /// A state-dict-filter component to run instead of globs (sandboxed with default limits).
    #[arg(long, value_name = "FILE.wasm")]
    filter: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut filter: Box<dyn KeyFilter> = match &args.filter {
        Some(wasm) => {
            let spec = PolicySpec::new(wasm);
            Box::new(PolicyHost::default().key_filter(
                &spec,
                &SandboxConfig::default(),
                &RunInfo::default(),
            )?)
        }
        None => Box::new(IgnoreGlobs::new(&args.ignore_keys)?),
    };
    let format = format_of(&args.output)?;
    let tree = read_checkpoint(&args.input)?;
    let full = tree.as_dict().is_some_and(|d| d.get("state").is_some());
    let mut warnings = Vec::new();
    let mut tree = filter.filter(tree, &mut warnings)?;
    for warning in warnings {
        eprintln!("cairn: warning: {warning}");
    }
    if full {
        restore_state_key(&mut tree);
    }
    let bytes = write_atomically(&args.output, |file| {
        Ok(write_checkpoint(&args.output, format, &tree, file)?)
    })?;
    eprintln!(
        "cairn: wrote {} ({format}, {bytes} bytes)",
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Write through a temporary sibling, fsync it, and rename it over `path`.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> anyhow::Result<u64>,
) -> anyhow::Result<u64> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.cairn-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)
            .with_context(|| format!("{} could not be created", tmp.display()))?;
        let n = write(&mut file)?;
        file.sync_all()
            .with_context(|| format!("{} could not be synced", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{} could not be renamed into place", path.display()))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
