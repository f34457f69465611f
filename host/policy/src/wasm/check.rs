//! `cairn policy check`: which world a component implements, or exactly what it lacks.

use std::path::Path;

use super::component::{ImportVerdict, World};
use super::config::SandboxConfig;
use super::{PolicyHost, RunInfo};
use crate::error::PolicyError;

/// The verdict on one file.
#[derive(Debug)]
pub struct CheckReport {
    /// The world implemented, if any.
    pub world: Option<World>,
    /// Whether `init` is exported.
    pub has_init: bool,
    /// Every export name.
    pub exports: Vec<String>,
    /// Every import and what cairn does with it.
    pub imports: Vec<(String, ImportVerdict)>,
    /// Why the component implements neither world (one sentence per world tried).
    pub problems: Vec<PolicyError>,
}

/// Check `path` against both worlds: load, link and instantiate it (without calling `init`)
/// in a sandbox with the limits of `sandbox`.
pub fn check(
    host: &PolicyHost,
    path: &Path,
    sandbox: &SandboxConfig,
) -> Result<CheckReport, PolicyError> {
    let sandbox = sandbox.clone();
    let engine = super::settings(&sandbox);
    let mut problems = Vec::new();
    let mut last_loaded = None;
    for world in [World::SaveInterval, World::StateDictFilter] {
        match host.load(path, world, &sandbox) {
            Ok(loaded) => {
                // Instantiating type-checks the exports against the world's signatures.
                let runner = super::runner::Runner::start(
                    super::component::Loaded {
                        init: None,
                        ..loaded.clone()
                    },
                    sandbox.clone(),
                    Vec::new(),
                    RunInfo::default(),
                    std::sync::Arc::new(|_: &str| {}),
                    engine.fuel,
                    engine.epoch,
                );
                match runner {
                    Ok(_) => {
                        return Ok(CheckReport {
                            world: Some(world),
                            has_init: loaded.init.is_some(),
                            exports: loaded.exports,
                            imports: loaded.imports,
                            problems,
                        });
                    }
                    Err(e) => {
                        problems.push(e);
                        last_loaded = Some(loaded);
                    }
                }
            }
            // Problems with the file itself are the same for both worlds: report once.
            Err(
                e @ (PolicyError::Read { .. }
                | PolicyError::NotAFile { .. }
                | PolicyError::FileTooLarge { .. }
                | PolicyError::Empty { .. }
                | PolicyError::NotWasm { .. }
                | PolicyError::CoreModule { .. }
                | PolicyError::Invalid { .. }
                | PolicyError::CompileTimeout { .. }
                | PolicyError::CompileMemory { .. }
                | PolicyError::WrongVersion { .. }
                | PolicyError::UnknownImport { .. }),
            ) => return Err(e),
            Err(e) => problems.push(e),
        }
    }
    let (exports, imports) = last_loaded
        .map(|l| (l.exports, l.imports))
        .unwrap_or_default();
    Ok(CheckReport {
        world: None,
        has_init: false,
        exports,
        imports,
        problems,
    })
}
