//! The `cairn` command end to end: every subcommand as a user runs it, with real files, real
//! policy components built from source, a real S3 server, and SIGKILL at random moments.

mod bounds;
mod crash;
mod data_safety;
mod failpoints;
mod formats;
mod newcomer;
mod platform;
mod policies;
mod policy_check;
mod reading;
mod run;
mod run_policies;
mod run_remote;
mod run_remote_faults;
mod simulate;

/// Spawns the commands the tests measure (see `cairn_testkit::measure::SPAWNER_TEST`).
#[test]
fn measure_spawner() {
    cairn_testkit::measure::serve_spawner();
}
