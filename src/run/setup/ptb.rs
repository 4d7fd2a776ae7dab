//! DARTS-PTB set-up (not yet implemented: `runner check` and `runner` refuse the space).

use crate::config::{PtbSpace, Resolved};
use crate::run::dir::RunDir;
use crate::run::pipeline::Outcome;
use anyhow::{bail, Result};
use candle_core::Device;

/// What `runner check` reports for a DARTS-PTB experiment.
pub fn check(_resolved: &Resolved) -> Result<String> {
    bail!("space.kind = \"ptb\": the DARTS-PTB space is not implemented yet")
}

/// Builds the DARTS-PTB parts and runs the pipeline.
pub fn execute(
    _resolved: &Resolved,
    _space: &PtbSpace,
    _dir: &RunDir,
    _device: &Device,
) -> Result<Outcome> {
    bail!("space.kind = \"ptb\": the DARTS-PTB space is not implemented yet")
}
