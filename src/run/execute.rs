//! From a resolved configuration to a finished run: device choice and the space registry
//! (the one `match` on `space.kind`; each space's set-up lives in `run::setup`).

use super::dir::RunDir;
use super::pipeline::Outcome;
use super::setup;
use crate::config::{self, DeviceKind, Resolved};
use anyhow::{bail, Context, Result};
use candle_core::Device;

pub use super::setup::{eval_table, ground_truth_dir, EvalTable};

/// Picks the device named by `[device]` for a single process.
pub fn device(cfg: &config::DeviceCfg) -> Result<Device> {
    match cfg.kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => {
            require_cuda_build("device.kind = \"cuda\"", "set device.kind = \"cpu\"")?;
            Device::new_cuda(cfg.index)
                .with_context(|| format!("cannot open CUDA device {}", cfg.index))
        }
        DeviceKind::Auto => Ok(Device::cuda_if_available(cfg.index).unwrap_or(Device::Cpu)),
    }
}

/// Refuses a request for CUDA (`asked`, e.g. `--device cuda`) in a build without the `cuda`
/// feature, with one line that says how to get a CUDA build or what to do instead. candle's
/// own error for this case (`Device::new_cuda` on a CPU build) does not name the feature.
pub fn require_cuda_build(asked: &str, instead: &str) -> Result<()> {
    if !candle_core::utils::cuda_is_available() {
        bail!("{asked} but this runner was built without the `cuda` feature (build one with scripts/build-cuda.sh, or --features cuda with a CUDA toolkit; or {instead})");
    }
    Ok(())
}

/// The CUDA devices of this machine, and why there are none where that has a reason worth
/// saying (a build without `cuda`, no driver).
pub fn cuda_devices() -> (usize, Option<String>) {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        match CudaContext::device_count() {
            Ok(n) => (n.max(0) as usize, None),
            Err(e) => (0, Some(format!("the CUDA driver is not usable: {e:?}"))),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        (
            0,
            Some("this runner was built without the `cuda` feature".into()),
        )
    }
}

/// `device.conv_engine = "onednn"` needs a build with the `onednn` feature: refused before any
/// work (by `runner check`, a sweep's plan, `runner launch`, a run and every rank), naming where
/// the value was set. A [`config::ConfigError`], so a sweep can re-place it at its sweep key.
pub fn check_conv_engine(resolved: &Resolved) -> Result<()> {
    let d = &resolved.config.device;
    if d.conv_engine == config::schema::ConvEngineCfg::Onednn && !crate::nn::onednn::available() {
        return Err(config::ConfigError::Invalid {
            at: resolved.origin("device.conv_engine"),
            message: "device.conv_engine = \"onednn\", but this runner was built without oneDNN \
                      (apt-get install libdnnl-dev, then cargo build --release --features onednn; \
                      or set device.conv_engine = \"auto\")"
                .into(),
        }
        .into());
    }
    Ok(())
}

/// Applies `device.conv_engine` to this process (after [`check_conv_engine`]).
pub fn apply_conv_engine(resolved: &Resolved) -> Result<()> {
    check_conv_engine(resolved)?;
    set_conv_engine(resolved.config.device.conv_engine)
}

/// Makes `e` this process's convolution engine (`auto` keeps the build's default); fails for
/// `onednn` in a build without it.
pub fn set_conv_engine(e: config::schema::ConvEngineCfg) -> Result<()> {
    use crate::nn::onednn::{set_engine, ConvEngine};
    match e {
        config::schema::ConvEngineCfg::Auto => Ok(()),
        config::schema::ConvEngineCfg::Onednn => Ok(set_engine(ConvEngine::OneDnn)?),
        config::schema::ConvEngineCfg::Rust => Ok(set_engine(ConvEngine::Rust)?),
    }
}

/// Refuses data parallelism this machine or the space cannot run, before anything starts:
/// `local_ranks` ranks of `device.gpus` run here (all of them at `runner check` and for
/// `runner FILE`; `--nproc` for `runner launch`; one for a rank started by srun or torchrun).
pub fn check_devices(cfg: &config::Config, local_ranks: usize) -> Result<()> {
    let d = &cfg.device;
    if d.gpus <= 1 {
        return Ok(());
    }
    if matches!(cfg.space, config::Space::Ptb(_)) {
        bail!(
            "device.gpus = {}: DARTS-PTB trains on one device (the study ran it on one GPU; its loop has no data-parallel version): run it with --set device.gpus=1",
            d.gpus
        );
    }
    if d.kind == DeviceKind::Cpu {
        return Ok(());
    }
    let (n, why) = cuda_devices();
    if d.index + local_ranks > n {
        let at = if d.index > 0 {
            format!(" from device.index = {} on", d.index)
        } else {
            String::new()
        };
        let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
        bail!(
            "device.gpus = {}{at} but this machine has {n} CUDA device{}{why}: run on one device with --set device.gpus=1 (the learning rate is then not multiplied by {}), or as {} CPU processes with --set device.kind=\"cpu\"",
            d.gpus,
            if n == 1 { "" } else { "s" },
            d.gpus,
            d.gpus
        );
    }
    Ok(())
}

/// The device of the rank with local index `local_rank` (`device.index + local_rank` on a GPU
/// machine, as torchrun's LOCAL_RANK is used).
pub fn rank_device(cfg: &config::Config, local_rank: usize) -> Result<Device> {
    check_devices(cfg, local_rank + 1)?;
    let d = &cfg.device;
    match d.kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda | DeviceKind::Auto => {
            let i = d.index + local_rank;
            Device::new_cuda(i).with_context(|| {
                format!(
                    "cannot open CUDA device {i} (device.index {} + LOCAL_RANK {local_rank})",
                    d.index
                )
            })
        }
    }
}

/// The `data parallel:` line of `runner check` (none for one device).
fn describe_ranks(cfg: &config::Config) -> String {
    let d = &cfg.device;
    if d.gpus <= 1 {
        return String::new();
    }
    let on = match d.kind {
        DeviceKind::Cpu => "CPU processes".to_string(),
        _ => format!("CUDA devices {}..{}", d.index, d.index + d.gpus - 1),
    };
    format!(
        "data parallel: {} ranks ({on}), learning rate x {}, {}\n",
        d.gpus,
        d.gpus,
        if cfg.train.parallel_sampling {
            "parallel sampling (each rank its own architecture per step)"
        } else {
            "the same architecture on every rank"
        }
    )
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
    check_devices(cfg, cfg.device.gpus)?;
    check_conv_engine(resolved)?;
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
    Ok(format!("{}{space_report}", describe_ranks(cfg)))
}

/// Runs the experiment of `resolved` in its results folder, as the rank `dir.dist()` says.
pub fn execute(resolved: &Resolved, dir: &RunDir) -> Result<Outcome> {
    let cfg = &resolved.config;
    let dist = dir.dist();
    if dist.world() != cfg.device.gpus {
        bail!(
            "device.gpus = {} needs as many processes, this one is rank {} of {}: start it with `runner FILE` or `runner launch --nproc {}`",
            cfg.device.gpus,
            dist.rank(),
            dist.world(),
            cfg.device.gpus
        );
    }
    let device = match dist.device() {
        Some(d) => d.clone(),
        None => device(&cfg.device)?,
    };
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
