//! Loading a policy component: read, recognise, compile (through the cache), link against
//! what cairn provides, and find the world's exports.
//!
//! Linking happens once per component (`InstancePre`); each live instance then costs a store
//! and an instantiation (microseconds for Rust, about a millisecond for Python).

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{ComponentExportIndex, HasSelf, InstancePre, Linker};

use super::bindings::{self, HOST_INTERFACE, PACKAGE_PREFIX, TRAINING_INTERFACE, TYPES_INTERFACE};
use super::cache::{CompileCache, Origin};
use super::compile::{self, CompileError, CompileLimits, CompileWorker};
use super::engine::EngineSettings;
use super::file::WasmFile;
use super::state::HostState;
use super::text;
use crate::error::{Call, PolicyError, chain};

/// The two worlds a policy can implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    /// `cairn:policy/save-interval`
    SaveInterval,
    /// `cairn:policy/state-dict-filter`
    StateDictFilter,
}

impl World {
    /// The world's name inside the package.
    pub fn name(self) -> &'static str {
        match self {
            World::SaveInterval => "save-interval",
            World::StateDictFilter => "state-dict-filter",
        }
    }

    /// The export that does the world's work.
    pub fn main_export(self) -> &'static str {
        match self {
            World::SaveInterval => "should-save",
            World::StateDictFilter => "filter",
        }
    }

    fn other(self) -> World {
        match self {
            World::SaveInterval => World::StateDictFilter,
            World::StateDictFilter => World::SaveInterval,
        }
    }
}

/// What kind of binary a file holds, judged by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    /// A component (what cairn runs).
    Component,
    /// A core module.
    CoreModule,
}

/// Recognise `bytes` without compiling them: empty, not wasm, core module or component.
pub fn sniff(policy: &str, bytes: &[u8]) -> Result<BinaryKind, PolicyError> {
    let policy = policy.to_owned();
    if bytes.is_empty() {
        return Err(PolicyError::Empty { policy });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PolicyError::NotWasm { policy });
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Ok(BinaryKind::CoreModule),
        [_, _, 1, 0] => Ok(BinaryKind::Component),
        _ => Err(PolicyError::Invalid {
            policy,
            reason: "unknown WebAssembly binary version".into(),
        }),
    }
}

/// An import of a component and what cairn does with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportVerdict {
    /// cairn's own interface: provided.
    Provided,
    /// A WASI interface: linked, but every capability is denied.
    Denied,
    /// Nothing provides it: the component cannot be instantiated.
    Missing,
    /// cairn's package at a version this cairn does not serve.
    OtherVersion,
}

/// Judge one import name.
pub fn judge_import(name: &str) -> ImportVerdict {
    if [HOST_INTERFACE, TYPES_INTERFACE, TRAINING_INTERFACE].contains(&name) {
        ImportVerdict::Provided
    } else if name.starts_with(PACKAGE_PREFIX) {
        ImportVerdict::OtherVersion
    } else if name.starts_with("wasi:") && name.contains("@0.2.") {
        ImportVerdict::Denied
    } else {
        ImportVerdict::Missing
    }
}

/// A compiled, linked component ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Loaded {
    /// The policy's file name, for messages.
    pub policy: String,
    /// Which world it implements.
    pub world: World,
    /// The engine it was compiled for.
    pub engine: Engine,
    /// Linked once; instantiated per store.
    pub pre: Arc<InstancePre<HostState>>,
    /// `init`, when exported.
    pub init: Option<ComponentExportIndex>,
    /// `should-save` or `filter`.
    pub main: ComponentExportIndex,
    /// How the compiled form was obtained.
    pub origin: Origin,
    /// Every import, with cairn's verdict.
    pub imports: Vec<(String, ImportVerdict)>,
    /// Every export's name.
    pub exports: Vec<String>,
    /// Keeps the process's engines — and so the epoch ticker — alive while this component
    /// is in use, even if the [`super::PolicyHost`] that loaded it is dropped: a ticker that
    /// stops would leave every deadline unenforced.
    pub keepalive: Arc<dyn std::any::Any + Send + Sync>,
}

/// The linker cairn offers every policy: deny-all WASI and cairn's `host`, `types` and
/// `training` interfaces (a filter that imports `training` reads the state before any event).
fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    bindings::cairn::policy::types::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut linker,
        |s| s,
    )?;
    bindings::cairn::policy::host::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut linker,
        |s| s,
    )?;
    bindings::cairn::policy::training::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut linker,
        |s| s,
    )?;
    Ok(linker)
}

/// Where a compiled component comes from: the cache, else a compilation.
pub struct Compiler<'a> {
    /// The compile cache.
    pub cache: &'a CompileCache,
    /// The engine's settings (a worker builds the same engine).
    pub settings: EngineSettings,
    /// The embedding application's compile worker, if it named one.
    pub worker: Option<&'a CompileWorker>,
    /// The worker's bounds.
    pub limits: CompileLimits,
}

/// Load `wasm` (the file `policy`) as a component of `world`.
pub fn load(
    policy: &str,
    wasm: &WasmFile,
    world: World,
    engine: &Engine,
    compiler: &Compiler<'_>,
    log: &dyn Fn(&str),
    keepalive: Arc<dyn std::any::Any + Send + Sync>,
) -> Result<Loaded, PolicyError> {
    let limits = compiler.limits;
    let compile = |bytes: Vec<u8>| {
        compile::compile(engine, compiler.settings, bytes, compiler.worker, limits)
    };
    let owned = || policy.to_owned();
    if sniff(policy, wasm.head())? == BinaryKind::CoreModule {
        return Err(PolicyError::CoreModule { policy: owned() });
    }
    let (component, origin) =
        compiler
            .cache
            .load(engine, wasm, &compile, log)
            .map_err(|e| match e {
                CompileError::Invalid(reason) => PolicyError::Invalid {
                    policy: owned(),
                    reason,
                },
                CompileError::Timeout => PolicyError::CompileTimeout {
                    policy: owned(),
                    timeout_ms: limits.timeout.map_or(0, |t| t.as_millis() as u64),
                },
                CompileError::Memory => PolicyError::CompileMemory {
                    policy: owned(),
                    limit_mib: limits.memory_bytes.map_or(0, |b| b >> 20),
                },
                CompileError::Other(reason) => PolicyError::Host {
                    policy: owned(),
                    call: Call::Load,
                    reason,
                },
            })?;
    let ty = component.component_type();
    let imports: Vec<(String, ImportVerdict)> = ty
        .imports(engine)
        .map(|(name, _)| (name.to_owned(), judge_import(name)))
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if let Some((name, _)) = imports
        .iter()
        .find(|(_, v)| *v == ImportVerdict::OtherVersion)
    {
        return Err(PolicyError::WrongVersion {
            policy: owned(),
            found: text::one_line(name, text::MAX_NAME_BYTES),
        });
    }
    if let Some((name, _)) = imports.iter().find(|(_, v)| *v == ImportVerdict::Missing) {
        return Err(PolicyError::UnknownImport {
            policy: owned(),
            import: text::one_line(name, text::MAX_NAME_BYTES),
        });
    }
    let wrong = |reason: String| PolicyError::WrongWorld {
        policy: owned(),
        world: world.name(),
        reason,
    };
    let main = match component.get_export_index(None, world.main_export()) {
        Some(i)
            if ty
                .get_export(engine, world.main_export())
                .is_some_and(|e| matches!(e.ty, ComponentItem::ComponentFunc(_))) =>
        {
            i
        }
        Some(_) => {
            return Err(wrong(format!(
                "its export '{}' is not a function",
                world.main_export()
            )));
        }
        None if exports.iter().any(|e| e == world.other().main_export()) => {
            return Err(wrong(format!(
                "it exports '{}', so it implements cairn:policy/{} instead",
                world.other().main_export(),
                world.other().name()
            )));
        }
        None => {
            return Err(PolicyError::MissingExport {
                policy: owned(),
                world: world.name(),
                export: world.main_export(),
                exports,
            });
        }
    };
    let init = component.get_export_index(None, "init");
    let linker = linker(engine).map_err(|e| PolicyError::Host {
        policy: owned(),
        call: Call::Load,
        reason: chain(&e),
    })?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| PolicyError::Invalid {
            policy: owned(),
            reason: chain(&e),
        })?;
    Ok(Loaded {
        policy: owned(),
        world,
        engine: engine.clone(),
        pre: Arc::new(pre),
        init,
        main,
        origin,
        imports,
        exports,
        keepalive,
    })
}
