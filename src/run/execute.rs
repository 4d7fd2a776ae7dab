//! From a resolved configuration to a finished run: device choice and the space registry
//! (the one `match` on `space.kind`; each space's set-up lives in `run::setup`).

use super::dir::RunDir;
use super::pipeline::Outcome;
use super::setup;
use crate::config::{self, DeviceKind, Resolved};
use anyhow::{bail, Context, Result};
use candle_core::Device;

pub use super::setup::{eval_table, ground_truth_dir, EvalTable};

/// Picks the device named by `[device]`.
pub fn device(cfg: &config::DeviceCfg) -> Result<Device> {
    if cfg.gpus > 1 {
        bail!(
            "device.gpus = {}: data-parallel training on several devices is not available in this build (one device only); run on one with --set device.gpus=1 (the learning rate is then not multiplied by {})",
            cfg.gpus, cfg.gpus
        );
    }
    match cfg.kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                bail!("device.kind = \"cuda\" but this runner was built without the `cuda` feature (rebuild with --features cuda, or set device.kind = \"cpu\")");
            }
            Device::new_cuda(cfg.index)
                .with_context(|| format!("cannot open CUDA device {}", cfg.index))
        }
        DeviceKind::Auto => Ok(Device::cuda_if_available(cfg.index).unwrap_or(Device::Cpu)),
    }
}

/// The `data:` line of `runner check`.
fn describe_data(data: &crate::data::Split) -> String {
    format!(
        "data: {} training images, {} validation images, {} classes\n",
        data.train_indices.len(),
        data.valid_indices.len(),
        data.num_classes
    )
}

/// Everything `runner check` verifies without training: data, ground truth, the model builds.
pub fn check(resolved: &Resolved) -> Result<String> {
    let cfg = &resolved.config;
    device(&cfg.device)?;
    let space_report = match &cfg.space {
        config::Space::Nb101(_) => {
            let data = crate::data::build(&cfg.data)?;
            let mut r = describe_data(&data);
            r.push_str(&setup::nb101::check(resolved)?);
            r
        }
        config::Space::Nb201(_) => {
            let data = crate::data::build(&cfg.data)?;
            let mut r = describe_data(&data);
            r.push_str(&setup::nb201::check(resolved)?);
            r
        }
        config::Space::Darts(_) => setup::darts::check(resolved)?,
        config::Space::Ptb(_) => setup::ptb::check(resolved)?,
        config::Space::Proxyless(_) => setup::proxyless::check(resolved)?,
    };
    Ok(space_report)
}

/// Runs the experiment of `resolved` in its results folder.
pub fn execute(resolved: &Resolved, dir: &RunDir) -> Result<Outcome> {
    let cfg = &resolved.config;
    let device = device(&cfg.device)?;
    tracing::info!("device: {:?}", device);
    match &cfg.space {
        config::Space::Nb101(sc) => {
            let data = crate::data::build(&cfg.data)?;
            setup::nb101::execute(resolved, sc, data, dir, &device)
        }
        config::Space::Nb201(sc) => {
            let data = crate::data::build(&cfg.data)?;
            setup::nb201::execute(resolved, sc, data, dir, &device)
        }
        config::Space::Darts(sc) => setup::darts::execute(resolved, sc, dir, &device),
        config::Space::Ptb(sc) => setup::ptb::execute(resolved, sc, dir, &device),
        config::Space::Proxyless(sc) => setup::proxyless::execute(resolved, sc, dir, &device),
    }
}
