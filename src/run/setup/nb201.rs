//! NAS-Bench-201 set-up: the archset in the study's order, the ground truth of the dataset,
//! parameter counts for focus-branch, the supernet.

use super::{auto_benchmark_dir, describe_ground_truth, eval_table, ground_truth_dir};
use crate::config::{self, Nb201Space, Resolved};
use crate::data::Split;
use crate::nn::Store;
use crate::rng;
use crate::run::dir::RunDir;
use crate::run::pipeline::{self, Outcome, Parts};
use crate::space::{nb201, GroundTruth, Space};
use crate::tricks::{self, TrickSet};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::collections::HashMap;

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

/// What `runner check` reports for an NB201 experiment.
pub fn check(resolved: &Resolved) -> Result<String> {
    let cfg = &resolved.config;
    let mut report = String::new();
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
        let ts =
            TrickSet::new(&space, cfg, gt.as_ref(), nb201_params(resolved)?).context("tricks")?;
        for line in ts.report() {
            report.push_str(&format!("tricks: {line}\n"));
        }
    }
    Ok(report)
}

/// Builds the NB201 parts and runs the pipeline.
pub fn execute(
    resolved: &Resolved,
    sc: &Nb201Space,
    data: Split,
    dir: &RunDir,
    device: &Device,
) -> Result<Outcome> {
    let cfg = &resolved.config;
    let (eval_table, ground_truth) = match eval_table::<nb201::Nb201>(cfg)? {
        Some((t, gt)) => (Some(t), Some(gt)),
        None => (None, nb201_ground_truth(resolved)?),
    };
    let store = Store::new(device);
    let mut init_rng = rng::stream(cfg.experiment.seed, "init", &[]);
    let copies = tricks::replicate_copies(&cfg.tricks);
    let net =
        nb201::Nb201Net::with_copies(&store.root(), sc, data.num_classes, copies, &mut init_rng)?;
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
    pipeline::run(resolved, parts, dir, device)
}
