//! cairn-policy end to end: the policy components built from source (`policies/`), loaded into
//! the sandbox: hostile ones get their documented error within their limits, and the compile cache
//! loads only what cairn wrote.

mod bounds;
mod cache;
mod hostile;

/// Spawns the commands the tests measure (see `cairn_testkit::measure::SPAWNER_TEST`).
#[test]
fn measure_spawner() {
    cairn_testkit::measure::serve_spawner();
}
