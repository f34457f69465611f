//! The benchmarks as a user runs them (smoke runs: the figures themselves are not asserted).

mod policy;
mod upload;
