//! `cairn filter IN -o OUT --ignore-keys GLOB...`: rewrite a checkpoint without the keys the
//! globs match (Composer's `ignore_keys` rules), in the format OUT's extension names.
//!
//! OUT must name a checkpoint format by its extension (a name Composer would silently write as a
//! plain `.pt` is refused), and it replaces neither an existing file nor IN unless `--force`.
//!
//! Objects cairn does not model are written back from their pickle recipes, so a filtered
//! Composer checkpoint still loads in Composer. Like Composer, a full checkpoint whose `state`
//! was removed gets an empty `state` back. OUT appears only complete: it is written the way the
//! saver writes checkpoints (`cairn_format::durable`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::read::ReadArgs;
use cairn::format::durable::{self, Replace};
use cairn::format::{CheckpointFormat, format_of, write_checkpoint};
use cairn::policy::{Filtered, IgnoreGlobs, KeyFilter, RunInfo, SandboxConfig};
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
    /// A `KEY=VALUE` of the filter component's `config` table (repeatable), as
    /// `ignore_keys = { wasm = "...", config = { KEY = "VALUE" } }` gives it in a job's TOML.
    #[arg(long = "policy-config", value_name = "KEY=VALUE", value_parser = crate::policy_config::parse_pair, requires = "filter")]
    policy_config: Vec<(String, String)>,
    /// Replace OUT if it exists (even when it is IN).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    read: ReadArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format = output_format(&args.output)?;
    refuse_to_replace(&args)?;
    let mut filter: Box<dyn KeyFilter> = match &args.filter {
        Some(wasm) => {
            let spec = crate::policy_config::spec(wasm, &args.policy_config);
            Box::new(super::policy_host().key_filter(
                &spec,
                &SandboxConfig::default(),
                &RunInfo::default(),
            )?)
        }
        None => Box::new(IgnoreGlobs::new(&args.ignore_keys)?),
    };
    let tree = args.read.read(&args.input)?.tree;
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
    let replace = if args.force {
        Replace::Allowed
    } else {
        Replace::Never
    };
    let bytes = durable::try_write_durably(&args.output, replace, |file| {
        write_checkpoint(&args.output, format, &tree, file)
    })
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => already_exists(&args.output),
        _ => anyhow::anyhow!("cannot write {}: {e}", args.output.display()),
    })??;
    eprintln!(
        "cairn: wrote {} ({format}, {bytes} bytes)",
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The format OUT's extension names; a name with no checkpoint extension is refused (Composer
/// would write it as a plain `.pt`, which is rarely what a `cairn filter` user meant).
fn output_format(output: &Path) -> anyhow::Result<CheckpointFormat> {
    let format = format_of(output)?;
    let name = output.to_string_lossy();
    let known = name.ends_with(&format!(".{}", format.name()))
        || (format == CheckpointFormat::Tar(Some(cairn::format::Compression::Gzip))
            && name.ends_with(".tgz"));
    anyhow::ensure!(
        known,
        "{} names no checkpoint format: end it with .pt, .tar, .tar.gz, .tgz, .tar.bz2, .tar.lzma, .pt.gz, .pt.bz2, .pt.lz4, .pt.lzma, .pt.xz, .pt.zst or .safetensors",
        output.display()
    );
    Ok(format)
}

/// Refuse, before any work, to replace IN or an existing OUT without `--force`.
fn refuse_to_replace(args: &Args) -> anyhow::Result<()> {
    if args.force {
        return Ok(());
    }
    let same = match (args.input.canonicalize(), args.output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    anyhow::ensure!(
        !same,
        "-o {} is the input checkpoint; write elsewhere, or pass --force to replace it",
        args.output.display()
    );
    if args.output.exists() {
        return Err(already_exists(&args.output));
    }
    Ok(())
}

fn already_exists(output: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} already exists; pass --force to replace it",
        output.display()
    )
}
