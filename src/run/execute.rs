//! From a resolved configuration to a finished run: the space registry, device choice,
//! ground truth lookup.

use super::dir::RunDir;
use super::pipeline::{self, Outcome, Parts};
use crate::config::{self, DeviceKind, Resolved};
use crate::nn::Store;
use crate::rng;
use crate::space::{benchmark, nb201, GroundTruth, Space};
use crate::tricks::{self, TrickSet};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// The folder holding a space's shipped benchmark tables for `eval.ground_truth = "auto"`:
/// `benchmarks/<kind>` next to the experiment folder, inside it, or under the current folder.
fn auto_benchmark_dir(resolved: &Resolved, kind: &str) -> Option<PathBuf> {
    let exp_dir = resolved
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut candidates = vec![];
    for anc in exp_dir.ancestors().take(3) {
        candidates.push(anc.join("benchmarks").join(kind));
    }
    candidates.push(PathBuf::from("benchmarks").join(kind));
    candidates.into_iter().find(|p| p.is_dir())
}

/// The benchmark folder to read ground truth from, or `None` when the run has none.
pub fn ground_truth_dir(resolved: &Resolved, kind: &str) -> Result<Option<PathBuf>> {
    match resolved.config.eval.ground_truth.as_str() {
        "none" => Ok(None),
        "auto" => Ok(auto_benchmark_dir(resolved, kind)),
        p => {
            let p = PathBuf::from(p);
            if !p.exists() {
                bail!("eval.ground_truth: {} does not exist", p.display());
            }
            Ok(Some(p))
        }
    }
}

/// The NB201 benchmark table a run scores against.
fn nb201_dataset(cfg: &config::Config) -> Result<&str> {
    let dataset = match cfg.eval.ground_truth_dataset.as_str() {
        "auto" => cfg.data.split.as_str(),
        d => d,
    };
    if dataset == "custom" {
        bail!("eval.ground_truth_dataset must name the NB201 table to score against when data.split = \"custom\" (cifar10-valid, cifar10, cifar100 or imagenet-16-120)");
    }
    Ok(dataset)
}

/// NB201 parameter counts, read only when a trick needs them (focus-branch's nondominated and
/// lstsq metrics).
fn nb201_params(resolved: &Resolved) -> Result<Option<HashMap<nb201::Arch, f64>>> {
    let cfg = &resolved.config;
    let needed = cfg
        .tricks
        .focus_branch
        .as_ref()
        .is_some_and(|f| f.metric != config::FocusMetric::Accuracy);
    if !needed {
        return Ok(None);
    }
    let dir = ground_truth_dir(resolved, "nb201")?.context("tricks.focus_branch needs the NB201 benchmark tables for parameter counts, and none were found (set eval.ground_truth)")?;
    let p = nb201::params(&dir, nb201_dataset(cfg)?)
        .with_context(|| format!("parameter counts in {}", dir.display()))?;
    Ok(Some(p))
}

/// The NB201 space with its archset in the study's order (NAS-Bench-201 `arch_index`, from the
/// benchmark folder's `archs.csv`); without the tables, in lexicographic order (said in the log).
fn nb201_space(resolved: &Resolved) -> Result<nb201::Nb201> {
    let dir = match ground_truth_dir(resolved, "nb201")? {
        Some(d) if d.is_dir() => Some(d),
        _ => auto_benchmark_dir(resolved, "nb201"),
    };
    if let Some(d) = dir {
        if crate::data::text::locate(&d.join("archs.csv")).is_some() {
            return nb201::Nb201::in_benchmark_order(&d)
                .with_context(|| format!("NB201 archset order from {}", d.display()));
        }
    }
    tracing::warn!("benchmarks/nb201/archs.csv not found: the NB201 archset is in lexicographic order, not the study's (validation architectures and draws differ from the study's for the same seed)");
    Ok(nb201::Nb201::new())
}

fn nb201_ground_truth(resolved: &Resolved) -> Result<Option<GroundTruth<nb201::Arch>>> {
    let cfg = &resolved.config;
    let Some(dir) = ground_truth_dir(resolved, "nb201")? else {
        tracing::warn!("no ground truth: correlations are unavailable for this run");
        return Ok(None);
    };
    let dataset = nb201_dataset(cfg)?;
    let gt = nb201::ground_truth(&dir, dataset)
        .with_context(|| format!("ground truth in {}", dir.display()))?;
    tracing::info!("ground truth: {} ({} archs)", gt.source, gt.scores.len());
    Ok(Some(gt))
}

/// An `eval.archs` table with the ground truth it gives.
pub type EvalTable<S> = (
    benchmark::Table<<S as Space>::Arch>,
    GroundTruth<<S as Space>::Arch>,
);

/// The `eval.archs` table of space `S` (a seeded subset when `eval.archs_limit` is set) and
/// the ground truth it gives (with `eval.archs_second_seed` for the noise ceiling), or `None`
/// when `eval.archs` is not set.
pub fn eval_table<S: Space>(cfg: &config::Config) -> Result<Option<EvalTable<S>>> {
    let Some(path) = &cfg.eval.archs else {
        return Ok(None);
    };
    let column = match cfg.eval.archs_score.as_str() {
        "auto" => S::BENCHMARK_SCORE,
        c => c,
    };
    let table = benchmark::read::<S>(path, column)
        .context("eval.archs")?
        .subset(cfg.eval.archs_limit, cfg.experiment.seed);
    let second = match &cfg.eval.archs_second_seed {
        Some(p) => Some(benchmark::read::<S>(p, column).context("eval.archs_second_seed")?),
        None => None,
    };
    let gt = table.ground_truth(second.as_ref());
    tracing::info!("ground truth: {} ({} archs)", gt.source, gt.scores.len());
    Ok(Some((table, gt)))
}

fn describe_ground_truth<A>(gt: Option<&GroundTruth<A>>) -> String {
    match gt {
        Some(gt) => format!("ground truth: {} ({} archs)\n", gt.source, gt.scores.len()),
        None => "ground truth: none (correlations unavailable)\n".into(),
    }
}

/// Everything `runner check` verifies without training: data, ground truth, the model builds.
pub fn check(resolved: &Resolved) -> Result<String> {
    let cfg = &resolved.config;
    device(&cfg.device)?;
    let data = crate::data::build(&cfg.data)?;
    let mut report = format!(
        "data: {} training images, {} validation images, {} classes\n",
        data.train_indices.len(),
        data.valid_indices.len(),
        data.num_classes
    );
    match &cfg.space {
        config::Space::Nb201(_) => {
            let space = nb201_space(resolved)?;
            report.push_str(&format!(
                "space: nb201, archset of {} cells\n",
                space.archset().map_or(0, |a| a.len())
            ));
            let gt = match eval_table::<nb201::Nb201>(cfg)? {
                Some((t, gt)) => {
                    report.push_str(&format!("eval.archs: {} architectures\n", t.rows.len()));
                    Some(gt)
                }
                None => nb201_ground_truth(resolved)?,
            };
            report.push_str(&describe_ground_truth(gt.as_ref()));
            if !cfg.tricks.is_empty() {
                let ts = TrickSet::new(&space, cfg, gt.as_ref(), nb201_params(resolved)?)
                    .context("tricks")?;
                for line in ts.report() {
                    report.push_str(&format!("tricks: {line}\n"));
                }
            }
        }
    }
    Ok(report)
}

/// Runs the experiment of `resolved` in its results folder.
pub fn execute(resolved: &Resolved, dir: &RunDir) -> Result<Outcome> {
    let cfg = &resolved.config;
    let device = device(&cfg.device)?;
    tracing::info!("device: {:?}", device);
    let data = crate::data::build(&cfg.data)?;
    match &cfg.space {
        config::Space::Nb201(sc) => {
            let (eval_table, ground_truth) = match eval_table::<nb201::Nb201>(cfg)? {
                Some((t, gt)) => (Some(t), Some(gt)),
                None => (None, nb201_ground_truth(resolved)?),
            };
            let store = Store::new(&device);
            let mut init_rng = rng::stream(cfg.experiment.seed, "init", &[]);
            let copies = tricks::replicate_copies(&cfg.tricks);
            let net = nb201::Nb201Net::with_copies(
                &store.root(),
                sc,
                data.num_classes,
                copies,
                &mut init_rng,
            )?;
            let params = nb201_params(resolved)?;
            let parts = Parts {
                space: nb201_space(resolved)?,
                net,
                store,
                ground_truth,
                params,
                data,
                eval_table,
            };
            pipeline::run(resolved, parts, dir, &device)
        }
    }
}
