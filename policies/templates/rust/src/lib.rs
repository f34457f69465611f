//! {{name}}: a cairn `save_interval` policy.
//!
//! Two modules: `policy.rs` decides, `component.rs` connects that decision to cairn. cairn
//! loads the compiled component
//! (`target/wasm32-wasip2/release/{{name_snake}}.wasm`), calls `init` once with the policy's
//! `config` table, then `should-save` at every checkpoint event of the run:
//!
//! ```toml
//! [checkpoint]
//! save_interval = { wasm = "{{name_snake}}.wasm", config = { n = 500 } }
//! ```
//!
//! The contract is the WIT file `wit/policy.wit` (package `cairn:policy@0.1.0`, world
//! `save-interval`); read it for every function cairn offers. The component runs sandboxed:
//! no files, environment, network, a fixed clock, and every call is bounded by fuel, time and
//! memory (`[sandbox]` in the job's TOML).

// The decision: plain Rust, tested by `cargo test` on your machine.
pub mod policy;

// The component: the glue between cairn and `policy`. It exists only when compiling for
// WebAssembly (`--target wasm32-wasip2`), so `cargo test` builds the decision alone, in seconds,
// without wit-bindgen (which is a dependency only for that target, see Cargo.toml).
#[cfg(target_arch = "wasm32")]
mod component;
