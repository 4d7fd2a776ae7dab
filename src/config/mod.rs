//! Configuration: schema, built-in defaults, layering, validation.
//!
//! Layers, lowest first: the space's built-in defaults < `extends = "base.toml"` (recursively,
//! relative to the extending file) < the experiment file < `RUNNER_*` environment variables
//! (`RUNNER_TRAIN__LEARNING_RATE=0.05`) < `--set key=value` overrides.

pub mod arch_keys;
pub mod defaults;
pub mod schema;

pub use schema::*;
pub mod errors;
pub mod load;
mod spans;
pub mod suggest;
pub mod sweep;
pub mod validate;

pub use errors::{ConfigError, Place};
pub use load::{load, load_from, load_str, sweep_source, Resolved, SweepSource};
