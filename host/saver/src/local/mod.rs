//! Local checkpoint storage: the `latest` pointer, and finding the checkpoints a folder already
//! holds. (Durable writes are `cairn_format::durable`, shared with the CLI and the compile cache.)

pub mod latest;
pub mod scan;
pub mod staging;
