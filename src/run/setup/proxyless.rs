//! ProxylessNAS set-up: ImageNet from file lists, the ground truth of `benchmarks/proxylessnas.csv`,
//! the supernet.

use super::{auto_benchmark_dir, describe_ground_truth, eval_table};
use crate::config::{ProxylessSpace, Resolved};
use crate::data::Split;
use crate::nn::Store;
use crate::rng;
use crate::run::dir::RunDir;
use crate::run::pipeline::{self, Outcome, Parts};
use crate::space::proxyless::{Proxyless, ProxylessNet, Widths};
use crate::space::{benchmark, GroundTruth, Space};
use crate::tricks::TrickSet;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::PathBuf;

/// The benchmark CSV scored against without `eval.archs`: `eval.ground_truth` (a CSV file, or a
/// folder holding `proxylessnas.csv`), or for `auto` the shipped `benchmarks/proxylessnas.csv`.
fn ground_truth_file(resolved: &Resolved) -> Result<Option<PathBuf>> {
    match resolved.config.eval.ground_truth.as_str() {
        "none" => Ok(None),
        "auto" => Ok(auto_benchmark_dir(resolved, "")
            .map(|d| d.join("proxylessnas.csv"))
            .filter(|p| p.is_file())),
        p => {
            let p = PathBuf::from(p);
            let file = if p.is_dir() {
                p.join("proxylessnas.csv")
            } else {
                p
            };
            if !file.is_file() {
                bail!("eval.ground_truth: {} does not exist", file.display());
            }
            Ok(Some(file))
        }
    }
}

/// Ground truth (top-1 accuracy of the study's stand-alone runs) when `eval.archs` is unset.
/// Sampled validation architectures are rarely among its 36: correlations then cover only
/// those that are (often none); `eval.archs` scores exactly the benchmark's architectures.
fn proxyless_ground_truth(
    resolved: &Resolved,
) -> Result<Option<GroundTruth<<Proxyless as Space>::Arch>>> {
    let Some(file) = ground_truth_file(resolved)? else {
        tracing::warn!("no ground truth: correlations are unavailable for this run");
        return Ok(None);
    };
    let t = benchmark::read::<Proxyless>(&file, Proxyless::BENCHMARK_SCORE)
        .with_context(|| format!("ground truth {}", file.display()))?;
    tracing::info!(
        "ground truth: {} ({} archs; sampled architectures are scored against it only where they coincide: set eval.archs to score the benchmark's own)",
        t.source,
        t.rows.len()
    );
    Ok(Some(t.ground_truth(None)))
}

fn describe_data(data: &Split) -> String {
    format!(
        "data: {} training images, {} validation images, {} classes\n",
        data.train_indices.len(),
        data.valid_indices.len(),
        data.num_classes
    )
}

fn space_of(resolved: &Resolved) -> Result<&ProxylessSpace> {
    match &resolved.config.space {
        crate::config::Space::Proxyless(s) => Ok(s),
        other => bail!("internal: proxyless set-up for space {}", other.kind()),
    }
}

/// What `runner check` reports for a ProxylessNAS experiment.
pub fn check(resolved: &Resolved) -> Result<String> {
    let cfg = &resolved.config;
    let sc = space_of(resolved)?;
    let data = crate::data::build(&cfg.data)?;
    let mut report = describe_data(&data);
    let w = Widths::new(sc.width_mult);
    report.push_str(&format!(
        "space: proxyless, width {} (stem {}, first block {}, stages {:?}, feature mix {}), 21 choice cells\n",
        sc.width_mult, w.stem, w.first, w.stages, w.last
    ));
    let gt = match eval_table::<Proxyless>(cfg)? {
        Some((t, gt)) => {
            report.push_str(&format!("eval.archs: {} architectures\n", t.rows.len()));
            Some(gt)
        }
        None => proxyless_ground_truth(resolved)?,
    };
    report.push_str(&describe_ground_truth(gt.as_ref()));
    if !cfg.tricks.is_empty() {
        let ts = TrickSet::new(&Proxyless, cfg, gt.as_ref(), None).context("tricks")?;
        for line in ts.report() {
            report.push_str(&format!("tricks: {line}\n"));
        }
    }
    Ok(report)
}

/// Builds the ProxylessNAS parts and runs the pipeline.
pub fn execute(
    resolved: &Resolved,
    sc: &ProxylessSpace,
    dir: &RunDir,
    device: &Device,
) -> Result<Outcome> {
    let cfg = &resolved.config;
    let data = crate::data::build(&cfg.data)?;
    let (eval_table, ground_truth) = match eval_table::<Proxyless>(cfg)? {
        Some((t, gt)) => (Some(t), Some(gt)),
        None => (None, proxyless_ground_truth(resolved)?),
    };
    let store = Store::new(device);
    let mut init_rng = rng::stream(cfg.experiment.seed, "init", &[]);
    let net = ProxylessNet::new(&store.root(), sc, data.num_classes, &mut init_rng)?;
    let parts = Parts {
        space: Proxyless,
        net,
        store,
        ground_truth,
        params: None,
        data,
        eval_table,
    };
    pipeline::run(resolved, parts, dir, device)
}
