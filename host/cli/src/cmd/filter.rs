//! `cairn filter IN -o OUT --ignore-keys GLOB...`: rewrite a checkpoint without the keys the
//! globs match (Composer's `ignore_keys` rules), in the format OUT's extension names.
//!
//! Objects cairn does not model are written back from their pickle recipes, so a filtered
//! Composer checkpoint still loads in Composer. Like Composer, a full checkpoint whose `state`
//! was removed gets an empty `state` back. OUT appears only complete: it is written the way the
//! saver writes checkpoints (`cairn_format::durable`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use cairn::format::durable::{self, Replace};
use cairn::format::{format_of, read_checkpoint, write_checkpoint};
use cairn::policy::{Filtered, IgnoreGlobs, KeyFilter, PolicySpec, RunInfo, SandboxConfig};
use cairn::restore_state_key;

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
            Box::new(super::policy_host().key_filter(
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
    let mut tree = match filter.filter(tree, &mut warnings)? {
        Filtered::Keep(tree) => tree,
        Filtered::Skip(why) => anyhow::bail!("{why}; nothing was written"),
    };
    for warning in warnings {
        eprintln!("cairn: warning: {warning}");
    }
    if full {
        restore_state_key(&mut tree);
    }
    let bytes = durable::try_write_durably(&args.output, Replace::Allowed, |file| {
        write_checkpoint(&args.output, format, &tree, file)
    })
    .with_context(|| format!("cannot write {}", args.output.display()))??;
    eprintln!(
        "cairn: wrote {} ({format}, {bytes} bytes)",
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
