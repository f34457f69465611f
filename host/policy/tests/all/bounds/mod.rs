//! Issue 18: every class of attack gets a named, bounded error and leaves the host unharmed.
//! Each class has its own module and several attacks of different sizes and shapes; the costly
//! ones run in a child process of this test binary (`measure::isolated`), whose peak RSS the
//! kernel reports, so the memory bound is asserted on the attack alone.

mod aliases;
mod compile;
mod depth;
mod file;
mod memory;
mod text;

use cairn_testkit as common;

use cairn_format::{Dict, Tensor, Value};
use cairn_policy::{
    PolicyError, PolicySpec, RunInfo, SandboxConfig, WasmKeyFilter, WasmSavePolicy,
};

/// The hostile filter in `mode` with `arg` (see `policies/hostile/README.md`).
fn filter(mode: &str, arg: u64, sandbox: &SandboxConfig) -> WasmKeyFilter {
    let (host, _) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_filter"))
        .with("mode", mode)
        .with("arg", arg.to_string());
    host.key_filter(&spec, sandbox, &RunInfo::default())
        .unwrap()
}

/// A small state dict: a tensor, a scalar, a string.
fn small_tree() -> Value {
    Value::Dict(
        Dict::ordered()
            .with("w", Tensor::from_f32(vec![2], &[1.0, 2.0]))
            .with("n", 3)
            .with("s", "text"),
    )
}

/// A one-line message: no control character, no line break.
fn assert_one_clean_line(msg: &str) {
    assert!(
        !msg.chars().any(|c| c.is_control()),
        "control characters in {msg:?}"
    );
}

/// MiB, for bounds.
const MIB: u64 = 1 << 20;
