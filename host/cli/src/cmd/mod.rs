//! One module per subcommand.

pub mod cache;
pub mod filter;
pub mod inspect;
pub mod policy;
pub mod policy_new;
pub mod read;
pub mod run;
pub mod simulate;
pub mod verify;
