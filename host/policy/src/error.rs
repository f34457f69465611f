//! Everything that can go wrong with a policy, in the user's words: a built-in one that cannot
//! work with what it was given, or a WebAssembly component that cannot be loaded or fails a call.
//!
//! Every message names the policy (the interval, or the component's file) and the call, and says
//! what to do where there is something to do. Trap causes are recovered by downcasting
//! [`wasmtime::Trap`] (never by matching error text), with the store's limiter consulted first
//! because a refused memory grow surfaces as the guest's own `abort` (see `wasm/limits.rs`).

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use crate::globs::GlobError;
use crate::interval::IntervalError;

/// Which call into the component failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Compiling and linking the component.
    Load,
    /// Creating an instance (runs the component's start functions).
    Instantiate,
    /// The component's `init(config)`.
    Init,
    /// `should-save(state, event)`.
    ShouldSave,
    /// `filter(state-dict)`.
    Filter,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Load => "loading",
            Call::Instantiate => "instantiation",
            Call::Init => "init",
            Call::ShouldSave => "should-save",
            Call::Filter => "filter",
        })
    }
}

/// A policy could not be built, or failed a call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A built-in `save_interval` that cannot decide with what it was given.
    #[error(transparent)]
    Interval(#[from] IntervalError),
    /// A built-in `ignore_keys` pattern that is not a valid glob.
    #[error(transparent)]
    Glob(#[from] GlobError),
    /// The file could not be read.
    #[error("cannot read policy {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The path names a directory, a device, a FIFO or a socket.
    #[error("cannot read policy {path}: it is {what}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is ("a directory", "a character device", ...).
        what: &'static str,
    },
    /// A file larger than a component may be.
    #[error(
        "policy {path} is {} bytes, more than the {} a component may be ([sandbox] max_component_mib)",
        .size, crate::wasm::text::human_bytes(*.limit)
    )]
    FileTooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit, bytes.
        limit: u64,
    },
    /// A zero-byte file.
    #[error("policy {policy} is an empty file: expected a WebAssembly component")]
    Empty {
        /// The policy file.
        policy: String,
    },
    /// Not WebAssembly at all.
    #[error("policy {policy} is not WebAssembly (it does not start with the '\\0asm' magic bytes)")]
    NotWasm {
        /// The policy file.
        policy: String,
    },
    /// A core module where a component was expected.
    #[error(
        "policy {policy} is a core WebAssembly module, not a component: build it for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule {
        /// The policy file.
        policy: String,
    },
    /// WebAssembly that wasmtime refuses (malformed, unsupported proposal, ...).
    #[error("policy {policy} is not a valid component: {reason}")]
    Invalid {
        /// The policy file.
        policy: String,
        /// wasmtime's reason.
        reason: String,
    },
    /// Compiling the component took longer than `compile_timeout_ms`.
    #[error(
        "policy {policy}: compiling it took longer than the deadline of {timeout_ms} ms, so it was stopped (a component whose code is pathological for the compiler; raise [sandbox] compile_timeout_ms if it is legitimately large)"
    )]
    CompileTimeout {
        /// The policy file.
        policy: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// Compiling the component needed more memory than `compile_memory_mib`.
    #[error(
        "policy {policy}: compiling it needed more than the compiler's memory limit of {limit_mib} MiB, so it was stopped (a component whose code is pathological for the compiler; raise [sandbox] compile_memory_mib if it is legitimately large)"
    )]
    CompileMemory {
        /// The policy file.
        policy: String,
        /// The limit.
        limit_mib: u64,
    },
    /// A component of another version of cairn's contract.
    #[error(
        "policy {policy} was built against {found}, which this cairn does not serve (it serves cairn:policy@0.1.0): rebuild it against cairn's wit/ folder"
    )]
    WrongVersion {
        /// The policy file.
        policy: String,
        /// The interface or export naming the other version.
        found: String,
    },
    /// Does not export what the world needs, or with another signature.
    #[error("policy {policy} does not implement cairn:policy/{world}: {reason}")]
    WrongWorld {
        /// The policy file.
        policy: String,
        /// `save-interval` or `state-dict-filter`.
        world: &'static str,
        /// What is missing or different.
        reason: String,
    },
    /// Lacks the world's main export.
    #[error(
        "policy {policy} does not implement cairn:policy/{world}: it has no '{export}' export (it exports {})",
        list(.exports)
    )]
    MissingExport {
        /// The policy file.
        policy: String,
        /// `save-interval` or `state-dict-filter`.
        world: &'static str,
        /// The export it lacks.
        export: &'static str,
        /// What it does export.
        exports: Vec<String>,
    },
    /// Imports something cairn does not provide.
    #[error(
        "policy {policy} imports {import}, which cairn does not provide (policies may import only cairn:policy/host and WASI 0.2, which is denied)"
    )]
    UnknownImport {
        /// The policy file.
        policy: String,
        /// The import's name.
        import: String,
    },
    /// `init` answered `err(message)`.
    #[error("policy {policy}: init refused its config: {message}")]
    InitRefused {
        /// The policy file.
        policy: String,
        /// The component's message.
        message: String,
    },
    /// `filter` answered `err(message)`.
    #[error("policy {policy}: filter refused the state dict: {message}")]
    FilterRefused {
        /// The policy file.
        policy: String,
        /// The component's message.
        message: String,
    },
    /// Used up `fuel_per_call` (or `init_fuel` while starting).
    #[error(
        "policy {policy}: {call} ran out of fuel (budget {fuel}; raise [sandbox] {} if the policy is legitimately expensive)",
        call.fuel_knob()
    )]
    OutOfFuel {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// The budget.
        fuel: u64,
    },
    /// Ran past `timeout_ms` (or `init_timeout_ms` while starting).
    #[error(
        "policy {policy}: {call} exceeded its deadline of {timeout_ms} ms (raise [sandbox] {} if the policy is legitimately slow)",
        call.deadline_knob()
    )]
    DeadlineExceeded {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// The deadline.
        timeout_ms: u64,
    },
    /// Tried to grow its memories and tables past `memory_limit_mib` in all.
    #[error(
        "policy {policy}: {call} exceeded the memory limit of {limit_mib} MiB (its memories and tables would have held {requested} bytes in all; raise [sandbox] memory_limit_mib if the policy needs more)"
    )]
    MemoryLimit {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// The limit.
        limit_mib: u64,
        /// The total the guest's memories and tables would have reached.
        requested: u64,
    },
    /// Recursed past `max_stack_kib`.
    #[error(
        "policy {policy}: {call} overflowed its stack of {stack_kib} KiB (deep or endless recursion)"
    )]
    StackOverflow {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// The stack size.
        stack_kib: u64,
    },
    /// Any other trap: a panic, an uncaught exception, `unreachable`, a bad memory access. The
    /// wasm backtrace is kept apart ([`PolicyError::backtrace`]): it is for the policy's author,
    /// and the CLI prints it only with `CAIRN_BACKTRACE=1`.
    #[error("policy {policy}: {call} trapped: {trap}{}", guest_message(.message))]
    Trap {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// wasmtime's description of the trap.
        trap: String,
        /// The tail of what the component wrote to stderr (a panic message, a traceback).
        message: String,
        /// The wasm backtrace, when there is one.
        backtrace: String,
    },
    /// The component answered something cairn cannot use.
    #[error("policy {policy}: {call} returned an invalid result: {reason}")]
    InvalidResult {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// What is wrong.
        reason: String,
    },
    /// A filter's answer nests deeper than cairn reads checkpoints back.
    #[error(
        "policy {policy}: filter returned a state dict nested {depth} containers deep at entry {entry} ({path}), deeper than the {limit} levels cairn reads back"
    )]
    TooDeep {
        /// The policy file.
        policy: String,
        /// The entry's position in the answer.
        entry: usize,
        /// Its path, escaped and shortened.
        path: String,
        /// How deep the entry would nest (at least).
        depth: usize,
        /// The limit, `cairn_format::MAX_DEPTH`.
        limit: usize,
    },
    /// Over one of the job's caps on what crosses the boundary.
    #[error("policy {policy}: {call} is over its limit: {what} ([sandbox] {key})")]
    TooLarge {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// What is too large, and by how much.
        what: String,
        /// The `[sandbox]` key that sets the cap.
        key: &'static str,
    },
    /// What the component handed over (a result, a host call's arguments) could not be copied
    /// out of it: malformed, or larger than `max_transfer_mib` once copied.
    #[error(
        "policy {policy}: {call} handed cairn data it cannot take: {reason} (a call may hand over at most {} once copied; [sandbox] max_transfer_mib)",
        mib_or_unlimited(*.transfer_mib)
    )]
    InvalidData {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// wasmtime's reason.
        reason: String,
        /// The cap in force.
        transfer_mib: u64,
    },
    /// wasmtime refused to create the instance: it needs more core instances, table elements
    /// or memory than the job's `[sandbox]` allows from the start.
    #[error(
        "policy {policy} could not be instantiated within the job's limits: {reason} (see [sandbox] max_instances, max_table_elements and memory_limit_mib)"
    )]
    Instantiate {
        /// The policy file.
        policy: String,
        /// wasmtime's reason.
        reason: String,
    },
    /// A failure in cairn's side of the call (should not happen; reported as it is).
    #[error("policy {policy}: {call} failed inside cairn: {reason}")]
    Host {
        /// The policy file.
        policy: String,
        /// The call.
        call: Call,
        /// The error chain.
        reason: String,
    },
}

/// Names the component chose, listed: the first few, escaped (see `wasm/text.rs`).
fn list(items: &[String]) -> String {
    const SHOWN: usize = 16;
    if items.is_empty() {
        return "nothing".to_owned();
    }
    let mut out = items
        .iter()
        .take(SHOWN)
        .map(|i| crate::wasm::text::one_line(i, crate::wasm::text::MAX_NAME_BYTES))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        out.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    out
}

fn mib_or_unlimited(mib: u64) -> String {
    if mib == 0 {
        "any amount (the cap is off)".to_owned()
    } else {
        format!("{mib} MiB")
    }
}

fn guest_message(message: &str) -> String {
    let m = message.trim();
    if m.is_empty() {
        String::new()
    } else {
        format!("; the policy said: {m}")
    }
}

impl Call {
    /// The `[sandbox]` key that bounds this call's fuel.
    fn fuel_knob(self) -> &'static str {
        match self {
            Call::Load | Call::Instantiate | Call::Init => "init_fuel",
            Call::ShouldSave | Call::Filter => "fuel_per_call",
        }
    }

    /// The `[sandbox]` key that bounds this call's wall-clock time.
    fn deadline_knob(self) -> &'static str {
        match self {
            Call::Load | Call::Instantiate | Call::Init => "init_timeout_ms",
            Call::ShouldSave | Call::Filter => "timeout_ms",
        }
    }
}

impl PolicyError {
    /// The component's wasm backtrace, for a trap that has one.
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            PolicyError::Trap { backtrace, .. } if !backtrace.trim().is_empty() => Some(backtrace),
            _ => None,
        }
    }
    /// True for failures of a call at run time (the ones `on_error` may forgive), false for a
    /// component that cannot be loaded or configured (always fatal: fix the config).
    pub fn is_call_failure(&self) -> bool {
        matches!(
            self,
            PolicyError::FilterRefused { .. }
                | PolicyError::OutOfFuel { .. }
                | PolicyError::DeadlineExceeded { .. }
                | PolicyError::MemoryLimit { .. }
                | PolicyError::StackOverflow { .. }
                | PolicyError::Trap { .. }
                | PolicyError::InvalidResult { .. }
                | PolicyError::TooDeep { .. }
                | PolicyError::TooLarge { .. }
                | PolicyError::InvalidData { .. }
                | PolicyError::Instantiate { .. }
                | PolicyError::Host { .. }
        )
    }

    /// The policy at fault, as messages name it (the component's file); `None` for a built-in
    /// interval or glob list.
    pub fn policy(&self) -> Option<String> {
        match self {
            PolicyError::Interval(_) | PolicyError::Glob(_) => None,
            PolicyError::Read { path, .. }
            | PolicyError::NotAFile { path, .. }
            | PolicyError::FileTooLarge { path, .. } => Some(path.display().to_string()),
            PolicyError::Empty { policy }
            | PolicyError::NotWasm { policy }
            | PolicyError::CoreModule { policy }
            | PolicyError::Invalid { policy, .. }
            | PolicyError::CompileTimeout { policy, .. }
            | PolicyError::CompileMemory { policy, .. }
            | PolicyError::WrongVersion { policy, .. }
            | PolicyError::WrongWorld { policy, .. }
            | PolicyError::MissingExport { policy, .. }
            | PolicyError::UnknownImport { policy, .. }
            | PolicyError::InitRefused { policy, .. }
            | PolicyError::FilterRefused { policy, .. }
            | PolicyError::OutOfFuel { policy, .. }
            | PolicyError::DeadlineExceeded { policy, .. }
            | PolicyError::MemoryLimit { policy, .. }
            | PolicyError::StackOverflow { policy, .. }
            | PolicyError::Trap { policy, .. }
            | PolicyError::InvalidResult { policy, .. }
            | PolicyError::TooDeep { policy, .. }
            | PolicyError::TooLarge { policy, .. }
            | PolicyError::InvalidData { policy, .. }
            | PolicyError::Instantiate { policy, .. }
            | PolicyError::Host { policy, .. } => Some(policy.clone()),
        }
    }

    /// A short, stable name of the cause, for summaries and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyError::Interval(_) => "interval",
            PolicyError::Glob(_) => "glob",
            PolicyError::Read { .. } => "read",
            PolicyError::NotAFile { .. } => "not-a-file",
            PolicyError::FileTooLarge { .. } => "file-too-large",
            PolicyError::Empty { .. } => "empty",
            PolicyError::NotWasm { .. } => "not-wasm",
            PolicyError::CoreModule { .. } => "core-module",
            PolicyError::Invalid { .. } => "invalid",
            PolicyError::CompileTimeout { .. } => "compile-timeout",
            PolicyError::CompileMemory { .. } => "compile-memory",
            PolicyError::WrongVersion { .. } => "wrong-version",
            PolicyError::WrongWorld { .. } => "wrong-world",
            PolicyError::MissingExport { .. } => "missing-export",
            PolicyError::UnknownImport { .. } => "unknown-import",
            PolicyError::InitRefused { .. } => "init-refused",
            PolicyError::FilterRefused { .. } => "filter-refused",
            PolicyError::OutOfFuel { .. } => "out-of-fuel",
            PolicyError::DeadlineExceeded { .. } => "deadline-exceeded",
            PolicyError::MemoryLimit { .. } => "memory-limit",
            PolicyError::StackOverflow { .. } => "stack-overflow",
            PolicyError::Trap { .. } => "trap",
            PolicyError::InvalidResult { .. } => "invalid-result",
            PolicyError::TooDeep { .. } => "too-deep",
            PolicyError::TooLarge { .. } => "too-large",
            PolicyError::InvalidData { .. } => "invalid-data",
            PolicyError::Instantiate { .. } => "instantiate",
            PolicyError::Host { .. } => "host",
        }
    }
}

/// Most bytes of a wasmtime error chain kept in a message.
const MAX_CHAIN_BYTES: usize = 4096;

/// The chain of a wasmtime error as one line. It may quote the component's own names (a core
/// module's export, a function in a backtrace), so it goes through the guest-text sanitiser.
pub(crate) fn chain(err: &wasmtime::Error) -> String {
    let text = err
        .chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    crate::wasm::text::one_line(&text, MAX_CHAIN_BYTES)
}
