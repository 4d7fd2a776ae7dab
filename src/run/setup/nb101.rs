//! NAS-Bench-101 (1Shot1 space 3) set-up (not yet implemented: `runner check` and `runner` refuse the space).

use crate::config::{Nb101Space, Resolved};
use crate::run::dir::RunDir;
use crate::run::pipeline::Outcome;
use anyhow::{bail, Result};
use candle_core::Device;

/// What `runner check` reports for a NAS-Bench-101 (1Shot1 space 3) experiment.
pub fn check(_resolved: &Resolved) -> Result<String> {
    bail!("space.kind = \"nb101\": the NAS-Bench-101 (1Shot1 space 3) space is not implemented yet")
}

/// Builds the NAS-Bench-101 (1Shot1 space 3) parts and runs the pipeline.
pub fn execute(
    _resolved: &Resolved,
    _space: &Nb101Space,
    _dir: &RunDir,
    _device: &Device,
) -> Result<Outcome> {
    bail!("space.kind = \"nb101\": the NAS-Bench-101 (1Shot1 space 3) space is not implemented yet")
}
