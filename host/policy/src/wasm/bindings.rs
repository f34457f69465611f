//! Rust types generated from `wit/` (package `cairn:policy@0.1.0`).
//!
//! Only the types and the `host` import are used from the generated code: exports are looked
//! up by hand (see [`super::component`]) so that `init` can be optional.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "cairn:policy/save-interval",
});

pub use self::cairn::policy::types;

/// The interface names cairn provides, with the version it serves.
pub const TYPES_INTERFACE: &str = "cairn:policy/types@0.1.0";
/// See [`TYPES_INTERFACE`].
pub const HOST_INTERFACE: &str = "cairn:policy/host@0.1.0";
/// See [`TYPES_INTERFACE`].
pub const TRAINING_INTERFACE: &str = "cairn:policy/training@0.1.0";
/// The package prefix that identifies cairn's own interfaces, of any version.
pub const PACKAGE_PREFIX: &str = "cairn:policy/";
