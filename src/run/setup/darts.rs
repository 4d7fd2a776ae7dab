//! DARTS-CIFAR10 set-up (not yet implemented: `runner check` and `runner` refuse the space).

use crate::config::{DartsSpace, Resolved};
use crate::run::dir::RunDir;
use crate::run::pipeline::Outcome;
use anyhow::{bail, Result};
use candle_core::Device;

/// What `runner check` reports for a DARTS-CIFAR10 experiment.
pub fn check(_resolved: &Resolved) -> Result<String> {
    bail!("space.kind = \"darts\": the DARTS-CIFAR10 space is not implemented yet")
}

/// Builds the DARTS-CIFAR10 parts and runs the pipeline.
pub fn execute(
    _resolved: &Resolved,
    _space: &DartsSpace,
    _dir: &RunDir,
    _device: &Device,
) -> Result<Outcome> {
    bail!("space.kind = \"darts\": the DARTS-CIFAR10 space is not implemented yet")
}
