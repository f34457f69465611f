//! The TOML shapes of a policy component and of the sandbox that runs it.
//!
//! `PolicySpec` is what `save_interval = { wasm = "...", config = {...} }` and
//! `ignore_keys = { wasm = "...", config = {...} }` deserialize into; `SandboxConfig` is the
//! job's `[sandbox]` table. Every limit has a safe default, so an empty `[sandbox]` is valid.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A policy component and its configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Path of the `.wasm` component.
    pub wasm: PathBuf,
    /// Handed to the component's `init` as key/value strings (see [`PolicySpec::init_config`]).
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

impl PolicySpec {
    /// A spec for `wasm` with no configuration.
    pub fn new(wasm: impl Into<PathBuf>) -> PolicySpec {
        PolicySpec {
            wasm: wasm.into(),
            config: BTreeMap::new(),
        }
    }

    /// Builder: add one config entry.
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> PolicySpec {
        self.config.insert(key.to_owned(), value.into());
        self
    }

    /// The config as `init` receives it: strings stay as they are (no quotes), numbers and
    /// booleans as TOML writes them, arrays and tables as inline TOML.
    pub fn init_config(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    /// The file name, for messages (`every_n.wasm`).
    pub fn name(&self) -> String {
        self.wasm
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.wasm.display().to_string())
    }
}

/// What training does when a policy fails (trap, limit, invalid result, `err` from `filter`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop the job with the error (the default: a broken policy should be noticed).
    #[default]
    Fail,
    /// Log the error and carry on as if the policy had not been there: a save-interval
    /// answers "don't save", a filter leaves the state dict unchanged.
    Skip,
    /// Log the error and err on the side of keeping data: a save-interval answers "save", a
    /// filter leaves the state dict unchanged (nothing is dropped that should have been kept).
    Save,
}

/// The `[sandbox]` table: limits for every policy component of a job.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Fuel (≈ wasm instructions) per call; refilled before every call. 0 turns fuel off.
    pub fuel_per_call: u64,
    /// Cap of the component's memory, in MiB: every linear memory of every core instance and
    /// every table (8 bytes an element) together. Python components need ≥ 24, JS ≥ 96.
    pub memory_limit_mib: u64,
    /// Wall-clock deadline of one call, in milliseconds. 0 turns the deadline off.
    pub timeout_ms: u64,
    /// Wall-clock deadline of instantiation + `init`, in milliseconds (Python starts slower).
    pub init_timeout_ms: u64,
    /// Fuel for instantiation + `init`.
    pub init_fuel: u64,
    /// Most entries a filter may return.
    pub max_filter_entries: u64,
    /// Most bytes of strings and bytes (keys and values together) a filter may return.
    pub max_filter_string_bytes: u64,
    /// Most host memory, in MiB, that what a component hands cairn in one call (a filter's
    /// answer, a host call's arguments) may take once copied out of the component; 0 turns the
    /// cap off. The canonical ABI lets many strings or lists of an answer point at one buffer,
    /// so an answer can be far larger on the host than in the component's memory: this caps
    /// the copy while it is made, before the entry and string caps above can look at it. The
    /// default, wasmtime's own, holds about 600 000 entries of a typical state dict (an entry
    /// of three path segments takes ~200 bytes on the host).
    pub max_transfer_mib: u64,
    /// WebAssembly stack per call, in KiB (at most 1024, so it fits in any host thread).
    pub max_stack_kib: u64,
    /// Most table elements, all tables of the component together.
    pub max_table_elements: u64,
    /// Most core instances a component may create (componentize-py needs about 10).
    pub max_instances: u64,
    /// Bytes of log lines cairn writes for one call's stdout and stderr (each line counted
    /// with its `[policy NAME]` prefix and 8 bytes for the log's own prefix and newline, so many
    /// short lines cost what they show); the rest is cut, and one line says how much.
    pub max_log_bytes: u64,
    /// Bytes of the component's own text in one error message (its `err` answer, the tail of
    /// what it wrote before a trap); longer text is cut, saying how much.
    pub max_message_bytes: u64,
    /// Bytes of the component's text cairn writes over the whole run (log lines, counted as
    /// for `max_log_bytes`, and error messages together), so a policy called at every batch
    /// cannot flood the job's log; once
    /// spent, its output is dropped (said once) and its messages are replaced by a note.
    /// 0 turns the budget off.
    pub max_log_bytes_per_run: u64,
    /// Largest component file accepted, in MiB (checked with `fstat` before anything is
    /// read; a Python component is ~18 MiB, a JavaScript one ~12). 0 turns the check off.
    pub max_component_mib: u64,
    /// Wall-clock deadline of compiling a component that is not in the compile cache, in
    /// milliseconds; 0 turns it off. Enforced only where the embedding application provides a
    /// compile worker (the `cairn` CLI does): Cranelift cannot be stopped in a thread. The
    /// default is 60 s in a release build of cairn and 30 min in a debug build, whose compiler
    /// is ~40x slower (an 18 MB Python component: ~5 s released, ~3 CPU-minutes in debug).
    pub compile_timeout_ms: u64,
    /// Memory the compile worker may use (its `RLIMIT_DATA`), in MiB; 0 turns it off.
    pub compile_memory_mib: u64,
    /// What training does when the policy fails.
    pub on_error: OnError,
}

/// The default [`SandboxConfig::compile_timeout_ms`]: see there.
pub const DEFAULT_COMPILE_TIMEOUT_MS: u64 = if cfg!(debug_assertions) {
    30 * 60_000
} else {
    60_000
};

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            fuel_per_call: 10_000_000,
            memory_limit_mib: 128,
            timeout_ms: 100,
            init_timeout_ms: 5_000,
            init_fuel: 2_000_000_000,
            max_filter_entries: 1_000_000,
            max_filter_string_bytes: 64 << 20,
            max_transfer_mib: 128,
            max_stack_kib: 512,
            max_table_elements: 100_000,
            max_instances: 64,
            max_log_bytes: 16 << 10,
            max_message_bytes: 2 << 10,
            max_log_bytes_per_run: 1 << 20,
            max_component_mib: 64,
            compile_timeout_ms: DEFAULT_COMPILE_TIMEOUT_MS,
            compile_memory_mib: 2048,
            on_error: OnError::Fail,
        }
    }
}

/// One numeric `[sandbox]` limit, as an operator's ceiling compares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The `[sandbox]` key.
    pub key: &'static str,
    /// Its value.
    pub value: u64,
    /// 0 switches this limit off, so 0 is the largest value, not the smallest.
    pub zero_is_off: bool,
}

impl Limit {
    /// The value as a bound: `None` for "no limit".
    pub fn bound(self) -> Option<u64> {
        (!(self.zero_is_off && self.value == 0)).then_some(self.value)
    }

    /// Is this value above `ceiling`'s (the same key)? A ceiling that is off bounds nothing.
    pub fn above(self, ceiling: Limit) -> bool {
        match (self.bound(), ceiling.bound()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(v), Some(c)) => v > c,
        }
    }
}

/// Lists every numeric key once, so the ceilings and defaults of a platform file cover every key:
/// a key added to [`SandboxConfig`] without a line here fails `every_key_has_a_limit`.
macro_rules! limits {
    ($($field:ident: $zero_is_off:expr),* $(,)?) => {
        impl SandboxConfig {
            /// Every numeric limit, by key.
            pub fn limits(&self) -> Vec<Limit> {
                vec![$(Limit { key: stringify!($field), value: self.$field, zero_is_off: $zero_is_off }),*]
            }

            /// Take from `defaults` every key for which `set` says the job's own table is silent
            /// (an operator's defaults replace cairn's own, never a tenant's explicit value).
            pub fn fill_unset_from(&mut self, defaults: &SandboxConfig, set: &dyn Fn(&str) -> bool) {
                $(if !set(stringify!($field)) {
                    self.$field = defaults.$field;
                })*
                if !set("on_error") {
                    self.on_error = defaults.on_error;
                }
            }
        }
    };
}

limits!(
    fuel_per_call: true,
    memory_limit_mib: true,
    timeout_ms: true,
    init_timeout_ms: true,
    init_fuel: true,
    max_filter_entries: false,
    max_filter_string_bytes: false,
    max_transfer_mib: true,
    max_stack_kib: false,
    max_table_elements: true,
    max_instances: true,
    max_log_bytes: false,
    max_message_bytes: false,
    max_log_bytes_per_run: true,
    max_component_mib: true,
    compile_timeout_ms: true,
    compile_memory_mib: true,
);

impl SandboxConfig {
    /// Every limit switched off (for benchmarks that compare limited and unlimited calls).
    pub fn unlimited() -> SandboxConfig {
        SandboxConfig {
            fuel_per_call: 0,
            memory_limit_mib: 0,
            timeout_ms: 0,
            init_timeout_ms: 0,
            init_fuel: 0,
            max_table_elements: 0,
            max_instances: 0,
            max_transfer_mib: 0,
            max_log_bytes_per_run: 0,
            max_component_mib: 0,
            compile_timeout_ms: 0,
            compile_memory_mib: 0,
            ..SandboxConfig::default()
        }
    }

    /// The largest component file accepted, in bytes (`u64::MAX` when `max_component_mib` is 0).
    pub fn max_component_bytes(&self) -> u64 {
        match self.max_component_mib {
            0 => u64::MAX,
            mib => mib.saturating_mul(1 << 20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sandbox_table_has_defaults() {
        let c: SandboxConfig = toml::from_str("").unwrap();
        assert_eq!(c, SandboxConfig::default());
        let c: SandboxConfig = toml::from_str("on_error = \"save\"\ntimeout_ms = 5").unwrap();
        assert_eq!((c.on_error, c.timeout_ms), (OnError::Save, 5));
    }

    #[test]
    fn every_key_has_a_limit() {
        let table = toml::Table::try_from(SandboxConfig::default()).unwrap();
        let limits = SandboxConfig::default().limits();
        for (key, value) in &table {
            if value.is_integer() {
                assert!(
                    limits.iter().any(|l| l.key == key),
                    "{key} is missing from limits!()"
                );
            }
        }
        assert_eq!(
            limits.len(),
            table.values().filter(|v| v.is_integer()).count()
        );
        // What 0 means follows from what "unlimited" is.
        let off = SandboxConfig::unlimited().limits();
        for (l, o) in limits.iter().zip(&off) {
            assert_eq!(l.zero_is_off, o.value == 0 && l.value != 0, "{}", l.key);
        }
    }

    #[test]
    fn zero_is_the_largest_value_of_a_limit_it_switches_off() {
        let fuel = |value| Limit {
            key: "fuel_per_call",
            value,
            zero_is_off: true,
        };
        assert!(fuel(0).above(fuel(10)) && fuel(11).above(fuel(10)));
        assert!(!fuel(10).above(fuel(10)) && !fuel(0).above(fuel(0)) && !fuel(5).above(fuel(0)));
        let entries = |value| Limit {
            key: "max_filter_entries",
            value,
            zero_is_off: false,
        };
        assert!(!entries(0).above(entries(10)) && entries(11).above(entries(10)));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = toml::from_str::<SandboxConfig>("fuel = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fuel"), "{e}");
        let e = toml::from_str::<PolicySpec>("wasm = \"a.wasm\"\nconfg = {}").unwrap_err();
        assert!(e.to_string().contains("confg"));
    }

    #[test]
    fn config_values_render_as_strings() {
        let spec: PolicySpec =
            toml::from_str("wasm = \"p.wasm\"\nconfig = { n = 5, prefix = \"enc.\", on = true }")
                .unwrap();
        assert_eq!(
            spec.init_config(),
            vec![
                ("n".into(), "5".into()),
                ("on".into(), "true".into()),
                ("prefix".into(), "enc.".into())
            ]
        );
        assert_eq!(spec.name(), "p.wasm");
    }
}
