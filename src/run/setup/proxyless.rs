//! ProxylessNAS set-up (not yet implemented: `runner check` and `runner` refuse the space).

use crate::config::{ProxylessSpace, Resolved};
use crate::run::dir::RunDir;
use crate::run::pipeline::Outcome;
use anyhow::{bail, Result};
use candle_core::Device;

/// What `runner check` reports for a ProxylessNAS experiment.
pub fn check(_resolved: &Resolved) -> Result<String> {
    bail!("space.kind = \"proxyless\": the ProxylessNAS space is not implemented yet")
}

/// Builds the ProxylessNAS parts and runs the pipeline.
pub fn execute(
    _resolved: &Resolved,
    _space: &ProxylessSpace,
    _dir: &RunDir,
    _device: &Device,
) -> Result<Outcome> {
    bail!("space.kind = \"proxyless\": the ProxylessNAS space is not implemented yet")
}
