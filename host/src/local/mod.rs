//! Local checkpoint storage: durable atomic writes, the `latest` pointer, and finding the
//! checkpoints a folder already holds.

pub mod durable;
pub mod latest;
pub mod scan;
