//! The saver crate end to end, through its public API: Composer's scenarios with real files
//! (`saver`), saves written behind training (`async_save`), checkpoints the caller pickled
//! (`prebuilt`), the remote behaviour on every store (`remote`), what only a real S3 server shows
//! (`remote_s3`), and uploads through a fault-injecting proxy (`remote_faults`).

mod async_save;
mod config_surface;
mod lifecycle;
mod prebuilt;
mod remote;
mod remote_faults;
mod remote_s3;
mod resume;
mod saver;
mod sharded;
mod support;
