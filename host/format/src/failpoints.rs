//! Failpoints: named places in the save pipeline where a test can make cairn fail on purpose.
//!
//! The `fail` crate (TiKV's) evaluates a failpoint only when the `failpoints` feature is on; a
//! release build compiles [`failpoint!`](crate::failpoint) to nothing. The fault-injection suite
//! (`host/cli/tests/all/failpoints.rs`) runs `cairn` with `FAILPOINTS="<name>=<actions>"`, using the
//! `fail` crate's action syntax (`return`, `2*off->return(abort)`, `sleep(500)`, ...). A `return`
//! action's argument decides what happens:
//!
//! - `return(abort)`: the process dies on the spot (`_exit`, no destructors, no buffered output), as
//!   under `kill -9`, with exit status [`DIED`] so a test can tell the failpoint fired;
//! - `return(enospc)`: the call fails with `ENOSPC`, as on a full disk;
//! - `return` (anything else): the call fails with an error naming the failpoint.
//!
//! Every failpoint of cairn is listed in [`NAMES`] (the save pipeline), [`ASYNC_NAMES`] (a save
//! written behind training) or [`SHARDED`] (the commit protocol of sharded saves). With
//! `FAILPOINTS_RANK=R` only the process whose `RANK` is `R` takes `FAILPOINTS`, so a test of
//! `cairn run --world-size N` can fail one rank.

/// Exit status of a process killed by `return(abort)`.
pub const DIED: i32 = 86;

/// Every failpoint of a save, in the order a save reaches them (a save behind training reaches
/// [`ASYNC_NAMES`] first).
pub const NAMES: [&str; 6] = [
    "durable::after-write",
    "durable::after-fsync",
    "durable::after-rename",
    "latest::before-rename",
    "upload::before-pointer",
    "rotate::before-delete",
];

/// The failpoints of sharded saves, in the order a step reaches them: a rank between its durable
/// shard (confirmed upload, with a store) and its record; global rank 0 with every record in place,
/// before the manifest; after the manifest, before `latest` moves.
pub const SHARDED: [&str; 3] = [
    "sharded::before-record",
    "sharded::before-manifest",
    "sharded::before-latest",
];

/// The failpoints only a save written behind training (`async_save`) reaches: `writer::start`, on
/// the writer thread before the checkpoint file is created.
pub const ASYNC_NAMES: [&str; 1] = ["writer::start"];

/// The failure a `return` action asks for at failpoint `name`: dies for `abort`, else the error.
pub fn injected(name: &str, action: Option<String>) -> std::io::Error {
    match action.as_deref() {
        Some("abort") => {
            // SAFETY: `_exit` takes no pointers; ending the process without unwinding is the point.
            unsafe { libc::_exit(DIED) }
        }
        Some("enospc") => std::io::Error::from_raw_os_error(libc::ENOSPC),
        _ => std::io::Error::other(format!("injected failure at failpoint {name}")),
    }
}

#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub use fail as __fail;

/// Evaluate the failpoint `$name`; when a test configured it, return `Err` from the enclosing
/// function (converting [`injected`]'s `io::Error` with `From`, or with `$map`) or die.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::failpoints::__fail::fail_point!($name, |action: Option<String>| Err(
            ::core::convert::From::from($crate::failpoints::injected($name, action))
        ))
    };
    ($name:literal, $map:expr) => {
        $crate::failpoints::__fail::fail_point!($name, |action: Option<String>| Err($map(
            $crate::failpoints::injected($name, action)
        )))
    };
}

/// Compiled out: the `failpoints` feature is off.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {};
    ($name:literal, $map:expr) => {};
}

/// Read `FAILPOINTS` from the environment (the `cairn` binary calls this first thing). Without the
/// `failpoints` feature it does nothing. The returned guard keeps the configuration until dropped.
#[must_use = "the failpoints stay configured only while the guard lives"]
pub fn setup_from_env() -> Guard {
    #[cfg(feature = "failpoints")]
    {
        let rank = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned());
        let this_rank = match rank("FAILPOINTS_RANK") {
            Some(wanted) => rank("RANK").unwrap_or_else(|| "0".to_owned()) == wanted,
            None => true,
        };
        Guard {
            _scenario: this_rank.then(fail::FailScenario::setup),
        }
    }
    #[cfg(not(feature = "failpoints"))]
    Guard {}
}

/// Keeps the failpoints read by [`setup_from_env`] configured.
pub struct Guard {
    #[cfg(feature = "failpoints")]
    _scenario: Option<fail::FailScenario<'static>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_return_names_the_failpoint_and_enospc_is_a_full_disk() {
        let e = injected("durable::after-write", None);
        assert_eq!(
            e.to_string(),
            "injected failure at failpoint durable::after-write"
        );
        let e = injected("durable::after-write", Some("enospc".into()));
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
}
