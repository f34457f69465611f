//! The simulated training run of `cairn run`: its `[train]` config, the order in which Composer's
//! trainer fires checkpoint events, the synthetic model it trains, and the prediction of what a
//! policy would save (`cairn simulate`).

pub mod config;
pub mod events;
pub mod model;
pub mod plot;
pub mod predict;

pub use config::{EMBEDDED_DEFAULT, Job, TrainConfig};
pub use events::{Events, Tick, TrainerSpec, synthetic_loss};
pub use model::{SplitMix, SyntheticModel};
pub use predict::{PlannedSave, Simulation};
