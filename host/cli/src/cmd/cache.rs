//! `cairn cache [clear]`: where compiled policy components are kept, how much they take, and a
//! way to reclaim it (a Python component's compiled form is ~100 MB).

use std::process::ExitCode;

use cairn::policy::{CacheUsage, CompileCache};

/// Arguments of `cairn cache`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Remove every compiled component (they are compiled again at their next use).
    Clear,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(dir) = CompileCache::default_dir() else {
        println!("the compile cache is off (no $CAIRN_CACHE_DIR, $XDG_CACHE_HOME or $HOME)");
        return Ok(ExitCode::SUCCESS);
    };
    let cache = CompileCache::new(Some(dir.clone()));
    match args.action {
        None => {
            let usage = cache.usage()?;
            println!("{}: {}", dir.display(), describe(usage));
        }
        Some(Action::Clear) => {
            let removed = cache.clear()?;
            println!("{}: removed {}", dir.display(), describe(removed));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(usage: CacheUsage) -> String {
    format!(
        "{} ({:.1} MB)",
        crate::plural::count(usage.entries, "compiled component", "compiled components"),
        usage.bytes as f64 / 1e6
    )
}
