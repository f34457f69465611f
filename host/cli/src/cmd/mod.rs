//! One module per subcommand.

pub mod cache;
pub mod filter;
pub mod inspect;
pub mod policy;
pub mod policy_new;
pub mod read;
pub mod run;
pub mod simulate;
pub mod verify;

use cairn::policy::{CompileWorker, PolicyHost};

/// The hidden subcommand that serves one compilation for the policy host (see
/// `cairn_policy::serve_compile_worker`).
pub const COMPILE_WORKER: &str = "__compile-worker";

/// The process's policy runtime, compiling components in a child `cairn __compile-worker`
/// where the `[sandbox]` compile deadline and memory limit can stop it. Every subcommand that
/// loads a component gets its host here.
pub fn policy_host() -> PolicyHost {
    let host = PolicyHost::default();
    match std::env::current_exe() {
        Ok(exe) => host.with_compile_worker(CompileWorker::new(exe).arg(COMPILE_WORKER)),
        // No path to re-run: compile in-process (no compile deadline), as a library does.
        Err(_) => host,
    }
}
