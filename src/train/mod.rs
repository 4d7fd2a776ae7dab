//! Optimizers, schedules, clipping and ranking metrics. Knows nothing of spaces.

pub mod asgd;
pub mod clip;
pub mod evaluate;
pub mod metrics;
pub mod schedule;
pub mod sgd;
