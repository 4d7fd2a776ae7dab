//! The training pipeline, generic over the search space: train the supernet by single-path
//! uniform sampling, evaluate sampled architectures with inherited weights, checkpoint, resume.

use super::checkpoint::{self, Checkpoint};
use super::dir::RunDir;
use super::dist::Dist;
use super::records::{finite, EvalRecord, Progress, Summary};
use super::tensorboard::TbLog;
use crate::config::{Config, Resolved, Schedule};
use crate::data::{self, Split};
use crate::nn::Store;
use crate::rng;
use crate::space::{benchmark, GroundTruth, Space, Supernet};
use crate::train::evaluate::{self, RecalStream, ValidSet};
use crate::train::{clip, metrics, schedule, sgd};
use crate::tricks::{focus_branch, multipath, TrickSet};
use anyhow::{Context, Result};
use candle_core::{Device, Var};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::Write;

/// What a finished call of [`run`] reports.
pub struct Outcome {
    pub summary: Summary,
    /// The run had already finished before this call; nothing was trained.
    pub already_finished: bool,
}

/// The pieces a space hands to the pipeline.
pub struct Parts<S: Space, N: Supernet<Arch = S::Arch>> {
    pub space: S,
    pub net: N,
    pub store: Store,
    pub ground_truth: Option<GroundTruth<S::Arch>>,
    /// Ground-truth parameter counts, when a trick needs them (focus-branch's nondominated and
    /// lstsq metrics).
    pub params: Option<HashMap<S::Arch, f64>>,
    pub data: Split,
    /// The `eval.archs` benchmark table: when present, every evaluation scores exactly its
    /// architectures (its scores are then `ground_truth`).
    pub eval_table: Option<benchmark::Table<S::Arch>>,
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb
}

pub(crate) fn append_metrics(dir: &RunDir, line: &serde_json::Value) -> Result<()> {
    let path = dir.file("metrics.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot append to {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("cannot append to {}", path.display()))?;
    Ok(())
}

/// Drops metrics lines written after the checkpoint being resumed (they will be written again),
/// and any partial line left by a kill.
pub(crate) fn truncate_metrics(dir: &RunDir, epoch: usize) -> Result<()> {
    let path = dir.file("metrics.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
                .is_some_and(|e| e as usize <= epoch)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    super::dir::write_atomic(&path, kept.as_bytes())
}

/// Correlations of `scores` with the ground truth over the architectures that have one:
/// (count, [Kendall tau-b, Spearman, Pearson, top-k overlap], k, ground-truth seed-to-seed tau).
fn correlate<A: std::hash::Hash + Eq>(
    archs: &[A],
    scores: &[f64],
    gt: Option<&GroundTruth<A>>,
    frac: f64,
) -> (usize, [Option<f64>; 4], usize, Option<f64>) {
    correlate_scores(archs, scores, gt, frac, false)
}

/// [`correlate`] for scores where lower is better on both sides (perplexity): the rank
/// correlations are unchanged, and the top-k overlap compares the k LOWEST of each.
pub(crate) fn correlate_scores<A: std::hash::Hash + Eq>(
    archs: &[A],
    scores: &[f64],
    gt: Option<&GroundTruth<A>>,
    frac: f64,
    lower_is_better: bool,
) -> (usize, [Option<f64>; 4], usize, Option<f64>) {
    let Some(gt) = gt else {
        return (0, [None; 4], 0, None);
    };
    let mut x = vec![];
    let mut y = vec![];
    let mut pairs2 = (vec![], vec![]);
    for (a, s) in archs.iter().zip(scores) {
        if let Some(g) = gt.scores.get(a) {
            x.push(*s);
            y.push(*g);
            if let Some(g2) = gt.second_seed.as_ref().and_then(|m| m.get(a)) {
                pairs2.0.push(*g);
                pairs2.1.push(*g2);
            }
        }
    }
    if lower_is_better {
        // Negating both sides leaves tau, rho and r as they are and turns "top" into "lowest".
        for v in x.iter_mut().chain(y.iter_mut()) {
            *v = -*v;
        }
    }
    let k = ((x.len() as f64 * frac).round() as usize)
        .max(1)
        .min(x.len());
    let m = [
        finite(metrics::kendall_tau_b(&x, &y)),
        finite(metrics::spearman(&x, &y)),
        finite(metrics::pearson(&x, &y)),
        if x.is_empty() {
            None
        } else {
            finite(metrics::top_k_overlap(&x, &y, k))
        },
    ];
    let ceiling = if pairs2.0.len() >= 2 {
        finite(metrics::kendall_tau_b(&pairs2.0, &pairs2.1))
    } else {
        None
    };
    (x.len(), m, k, ceiling)
}

pub(crate) fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Scores `archs` at `epoch`, writes `eval/epoch_NNNN.csv` (rank 0), returns the record and
/// the accuracy of each architecture (on every rank).
///
/// With several ranks, architecture i is scored by rank i mod world, and it recalibrates BN on
/// the batches of the recalibration stream a single process would give it (position
/// `start + i x steps`; batch g of the stream is a function of g alone), so the scores are the
/// same whatever the number of ranks, bit for bit. The study instead gave each rank its own
/// recalibration loader, so its scores depended on the rank count; this is deliberate.
#[allow(clippy::too_many_arguments)]
fn evaluate_epoch<S: Space, N: Supernet<Arch = S::Arch>>(
    parts: &Parts<S, N>,
    cfg: &Config,
    dir: &RunDir,
    archs: &[S::Arch],
    recal: &mut RecalStream,
    valid: &ValidSet,
    epoch: usize,
    device: &Device,
) -> Result<(EvalRecord, Vec<f64>)> {
    let dist = dir.dist();
    let mine = archs
        .len()
        .saturating_sub(dist.rank())
        .div_ceil(dist.world());
    let pb = bar(mine as u64, "evaluate");
    // Per architecture: accuracy, loss, top-5 (NaN when not measured); zeros where another
    // rank scores it.
    let mut scored = vec![0f64; 3 * archs.len()];
    let start = recal.consumed;
    let steps = cfg.eval.bn_recalibration.steps as u64;
    // The loss is reported with the training criterion's smoothing, as the study's ProxylessNAS
    // trainer does; top-5 where the space reports it.
    let opts = evaluate::ScoreOptions {
        label_smoothing: cfg.train.label_smoothing,
        top5: S::TOP5,
    };
    for (i, arch) in archs.iter().enumerate() {
        if i % dist.world() != dist.rank() {
            continue;
        }
        recal.consumed = start + i as u64 * steps;
        let drop_path = parts.net.drop_path(epoch, cfg.train.epochs);
        let s = evaluate::score_with(
            &parts.net,
            &parts.store,
            arch,
            recal,
            cfg.eval.bn_recalibration.steps,
            drop_path,
            valid,
            &[epoch as u64, i as u64],
            device,
            opts,
        )
        .with_context(|| {
            format!(
                "evaluating architecture {} at epoch {epoch}",
                S::arch_string(arch)
            )
        })?;
        scored[3 * i] = s.accuracy;
        scored[3 * i + 1] = s.loss;
        scored[3 * i + 2] = s.top5.unwrap_or(f64::NAN);
        pb.inc(1);
    }
    pb.finish_and_clear();
    recal.consumed = start + archs.len() as u64 * steps;
    let all = dist.gather_f64(&scored)?;
    let owner = |i: usize| &all[i % dist.world()];
    let accs: Vec<f64> = (0..archs.len()).map(|i| owner(i)[3 * i]).collect();
    let losses: Vec<f64> = (0..archs.len()).map(|i| owner(i)[3 * i + 1]).collect();
    let top5s: Vec<f64> = if S::TOP5 {
        (0..archs.len()).map(|i| owner(i)[3 * i + 2]).collect()
    } else {
        vec![]
    };
    let gt = parts.ground_truth.as_ref();
    // Benchmark columns (FLOPs, params, top-5...) ride along as `bench_<name>`, and the
    // supernet's own count of FLOPs and params sits next to them where the space has one.
    let table = parts.eval_table.as_ref();
    let extra_cols: &[String] = table.map_or(&[], |t| &t.extra_columns);
    let bench_rows: HashMap<&S::Arch, &benchmark::Row<S::Arch>> = table
        .map(|t| t.rows.iter().map(|r| (&r.arch, r)).collect())
        .unwrap_or_default();
    let with_cost = archs.first().is_some_and(|a| parts.net.cost(a).is_some());
    let mut csv = String::from("arch,arch_string,supernet_accuracy,supernet_loss,ground_truth");
    let with_top5 = top5s.len() == accs.len() && !top5s.is_empty();
    if with_top5 {
        csv.push_str(",supernet_top5");
    }
    if with_cost {
        csv.push_str(",flops,params");
    }
    for c in extra_cols {
        csv.push_str(&format!(",{}", csv_field(&format!("bench_{c}"))));
    }
    csv.push('\n');
    for (i, ((a, acc), loss)) in archs.iter().zip(&accs).zip(&losses).enumerate() {
        let g = gt
            .and_then(|g| g.scores.get(a))
            .map(|v| v.to_string())
            .unwrap_or_default();
        csv.push_str(&format!(
            "{},{},{acc},{loss},{g}",
            csv_field(&S::encode(a).to_string()),
            csv_field(&S::arch_string(a))
        ));
        if with_top5 {
            csv.push_str(&format!(",{}", top5s[i]));
        }
        if with_cost {
            match parts.net.cost(a) {
                Some(c) => csv.push_str(&format!(",{},{}", c.flops, c.params)),
                None => csv.push_str(",,"),
            }
        }
        for c in extra_cols {
            let v = bench_rows
                .get(a)
                .and_then(|r| r.extra.get(c))
                .map(String::as_str)
                .unwrap_or("");
            csv.push_str(&format!(",{}", csv_field(v)));
        }
        csv.push('\n');
    }
    if dist.is_root() {
        dir.write(&format!("eval/epoch_{epoch:04}.csv"), csv.as_bytes())?;
    }
    let (n_gt, [tau, rho, r, topk], k, ceiling) =
        correlate(archs, &accs, gt, cfg.eval.top_k_fraction);
    let n = accs.len().max(1) as f64;
    let rec = EvalRecord {
        epoch,
        num_archs: accs.len(),
        num_with_ground_truth: n_gt,
        mean_accuracy: accs.iter().sum::<f64>() / n,
        min_accuracy: accs.iter().cloned().fold(f64::INFINITY, f64::min),
        max_accuracy: accs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        mean_loss: losses.iter().sum::<f64>() / n,
        kendall_tau: tau,
        spearman: rho,
        pearson: r,
        top_k_overlap: topk,
        top_k: k,
        ground_truth_seed_tau: ceiling,
        mean_top5_accuracy: with_top5.then(|| top5s.iter().sum::<f64>() / n),
        ..Default::default()
    };
    let mut line = serde_json::to_value(&rec)?;
    if let Some(o) = line.as_object_mut() {
        o.insert("kind".into(), "eval".into());
    }
    if dist.is_root() {
        append_metrics(dir, &line)?;
    }
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into());
    tracing::info!(
        "eval epoch {epoch}: {} archs, mean acc {:.4} (min {:.4}, max {:.4}), kendall {} spearman {} pearson {} top-{k} {}",
        rec.num_archs, rec.mean_accuracy, rec.min_accuracy, rec.max_accuracy, fmt(tau), fmt(rho), fmt(r), fmt(topk)
    );
    Ok((rec, accs))
}

/// Rewrites `focus_branch.jsonl` from `decisions` (the checkpoint's, on resume: lines written
/// after it by a killed run are dropped and written again when their epoch comes).
/// What a failed resume says: how to start over, and for a data-parallel rank, that every
/// rank reads rank 0's folder.
pub(crate) fn resume_context(dist: &Dist, latest: &std::path::Path) -> String {
    let start_over = format!(
        "cannot resume (run with --fresh to start over in a new folder, or delete {})",
        latest.display()
    );
    if dist.world() == 1 {
        start_over
    } else {
        format!(
            "rank {} {start_over}; results must be on a file system every rank shares",
            dist.rank()
        )
    }
}

fn write_decisions(dir: &RunDir, decisions: &[focus_branch::Decision]) -> Result<()> {
    let mut text = String::new();
    for d in decisions {
        text.push_str(&serde_json::to_string(d)?);
        text.push('\n');
    }
    dir.write("focus_branch.jsonl", text.as_bytes())
}

fn param_vars(store: &Store) -> Vec<Var> {
    store.params().into_iter().map(|(_, v)| v).collect()
}

/// Why the final evaluation has no correlations (no ground truth, or fewer than 2 evaluated
/// architectures with ground truth), logged as a warning; `None` when it has them.
pub(crate) fn correlations_unavailable<A>(
    gt: Option<&GroundTruth<A>>,
    final_eval: Option<&EvalRecord>,
) -> Option<String> {
    let why = match (gt, final_eval) {
        (None, _) => Some("no ground truth for this run (eval.ground_truth)".to_string()),
        (Some(gt), Some(e)) if e.kendall_tau.is_none() && e.num_with_ground_truth < 2 => {
            Some(format!(
                "{} of the {} evaluated architectures have ground truth in {}",
                e.num_with_ground_truth,
                e.num_archs,
                gt.source.split(':').next().unwrap_or(&gt.source)
            ))
        }
        _ => None,
    };
    if let Some(why) = &why {
        tracing::warn!("correlations are unavailable: {why}");
    }
    why
}

/// An `eval.archs` table is evaluated as given, also where tricks restrict training (`pruned`
/// on a space without archset): it is the benchmark the ranking is measured on. Says how many
/// of its architectures training never samples.
pub(crate) fn warn_untrained_table_rows<S: Space>(
    tricks: &TrickSet<S>,
    space: &S,
    table: &benchmark::Table<S::Arch>,
) {
    if tricks.names().is_empty() {
        return;
    }
    let archs: Vec<S::Arch> = table.rows.iter().map(|r| r.arch.clone()).collect();
    let outside = tricks.count_outside(space, &archs);
    if outside > 0 {
        tracing::warn!(
            "{outside} of the {} eval.archs architectures lie outside the space the tricks train on; they are evaluated as given",
            table.rows.len()
        );
    }
}

/// The finished run's summary, when `dir` holds one (and its checkpoint).
fn finished_summary(dir: &RunDir) -> Result<Option<Summary>> {
    let summary_path = dir.file("summary.json");
    if !(summary_path.exists() && dir.file("checkpoints/latest.safetensors").exists()) {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&summary_path)
        .with_context(|| format!("reading {}", summary_path.display()))?;
    Ok(serde_json::from_str::<Summary>(&text).ok())
}

/// Runs (or resumes, or reports as finished) the experiment in `dir`, as rank
/// `dir.dist().rank()` of a data-parallel run (see [`super::dist`]); only rank 0 writes.
pub fn run<S: Space, N: Supernet<Arch = S::Arch>>(
    resolved: &Resolved,
    mut parts: Parts<S, N>,
    dir: &RunDir,
    device: &Device,
) -> Result<Outcome> {
    let cfg = &resolved.config;
    let seed = cfg.experiment.seed;
    let dist = dir.dist();
    let root = dist.is_root();
    let world = dist.world();
    let latest = dir.file("checkpoints/latest.safetensors");
    // Rank 0 decides from the folder it holds; the others follow (the folder is shared).
    let finished = if root { finished_summary(dir)? } else { None };
    if dist.root_decides(finished.is_some())? {
        let summary = match finished {
            Some(s) => s,
            None => finished_summary(dir)?.with_context(|| {
                format!(
                    "rank {}: rank 0 found a finished run in {}, which this rank cannot read (results must be on a file system every rank shares)",
                    dist.rank(),
                    dir.path.display()
                )
            })?,
        };
        return Ok(Outcome {
            summary,
            already_finished: true,
        });
    }
    if root {
        dir.write("config.toml", resolved.toml.as_bytes())?;
    }

    let train_cfg = &cfg.train;
    let mut opt = sgd::Sgd::new(
        parts.store.params(),
        sgd::SgdConfig {
            lr: train_cfg.learning_rate,
            momentum: train_cfg.momentum,
            nesterov: train_cfg.nesterov,
            weight_decay: train_cfg.weight_decay,
            unsampled: train_cfg.unsampled,
        },
    );
    let vars = param_vars(&parts.store);
    let mut tricks = TrickSet::new(
        &parts.space,
        cfg,
        parts.ground_truth.as_ref(),
        parts.params.take(),
    )?;
    for line in tricks.report() {
        tracing::info!("tricks: {line}");
    }

    let mut progress = Progress {
        epoch: 0,
        step: 0,
        sample_rng: rng::save_state(&rng::stream(seed, "sample", &[])),
        recal_consumed: 0,
        history: vec![],
        last_train_loss: None,
        last_train_accuracy: None,
        tricks: tricks.progress(),
    };
    let resumed = dist.root_decides(latest.exists())?;
    if resumed {
        let ck: Checkpoint<Progress> = checkpoint::load(&latest, &resolved.hash, device)
            .with_context(|| resume_context(dist, &latest))?;
        parts
            .store
            .load(&ck.model)
            .with_context(|| format!("checkpoint {} does not fit the model", latest.display()))?;
        opt.load_state(&ck.optim)
            .with_context(|| format!("checkpoint {}: optimizer state", latest.display()))?;
        progress = ck.progress;
        tricks
            .restore(&parts.space, &progress.tricks)
            .with_context(|| format!("checkpoint {}", latest.display()))?;
        if root {
            truncate_metrics(dir, progress.epoch)?;
        }
        tracing::info!(
            "resuming from {} at epoch {} (step {})",
            latest.display(),
            progress.epoch,
            progress.step
        );
    } else if root && dir.file("metrics.jsonl").exists() {
        // A run killed before its first checkpoint starts over.
        std::fs::remove_file(dir.file("metrics.jsonl"))
            .with_context(|| format!("cannot remove {}", dir.file("metrics.jsonl").display()))?;
    }
    let mut sample_rng = rng::restore_state(&progress.sample_rng)?;
    if root && cfg.tricks.focus_branch.is_some() {
        write_decisions(dir, tricks.decisions())?;
    }
    // Parallel sampling under PyTorch 1: the study fills every gradient with zeros before
    // training, so every parameter takes weight decay and momentum from the first step.
    let parallel = cfg.train.parallel_sampling && world > 1;
    if parallel && train_cfg.unsampled == crate::config::Unsampled::Pytorch1 {
        opt.mark_all_touched();
    }

    let d = &parts.data;
    let mut recal = RecalStream {
        set: d.train.clone(),
        indices: d.train_indices.clone(),
        batch_size: cfg.eval.bn_recalibration.batch_size,
        augment: d.train_augment,
        seed,
        consumed: progress.recal_consumed,
        prefetch: cfg.data.prefetch,
    };
    let mut valid_indices = d.valid_indices.clone();
    if cfg.eval.valid_images > 0 && cfg.eval.valid_images < valid_indices.len() {
        // A seeded subset in the original order: files are often sorted by class, so a prefix
        // would cover only some classes.
        let mut pick: Vec<usize> = data::shuffled(valid_indices.len(), seed, "valid-subset", &[])
            .into_iter()
            .take(cfg.eval.valid_images)
            .collect();
        pick.sort_unstable();
        valid_indices = pick.into_iter().map(|i| valid_indices[i]).collect();
    }
    let valid = ValidSet {
        set: d.valid.clone(),
        indices: valid_indices,
        batch_size: cfg.data.eval_batch_size,
        augment: d.valid_augment,
        seed,
        prefetch: cfg.data.prefetch,
    };
    let fixed_archs = parts.eval_table.is_some();
    let mut archs = match &parts.eval_table {
        Some(t) => {
            tracing::info!(
                "evaluating the {} architectures of {} at every evaluation",
                t.rows.len(),
                t.source
            );
            warn_untrained_table_rows(&tricks, &parts.space, t);
            t.rows.iter().map(|r| r.arch.clone()).collect()
        }
        None => {
            let archs = tricks.eval_archs(&parts.space, cfg.eval.num_archs);
            if tricks.archset(&parts.space).is_none() && !resumed {
                // Training sampling continues the stream the validation draws came from (a
                // resumed run restored the stream's later position from its checkpoint).
                tricks.draw_eval_archs(&parts.space, cfg.eval.num_archs, &mut sample_rng);
                progress.sample_rng = rng::save_state(&sample_rng);
            }
            archs
        }
    };
    let n_train = d.train_indices.len();
    let bs = cfg.data.batch_size;
    // Each rank trains on its share of every epoch (DistributedSampler), in full batches.
    let per_rank = dist.samples_per_rank(n_train);
    let mut steps_per_epoch = per_rank / bs;
    if train_cfg.max_steps > 0 {
        steps_per_epoch = steps_per_epoch.min(train_cfg.max_steps);
    }
    if steps_per_epoch == 0 {
        if world > 1 {
            anyhow::bail!(
                "data.batch_size {bs} exceeds the {per_rank} training images of each of the {world} ranks: no full batch to train on"
            );
        }
        anyhow::bail!(
            "data.batch_size {bs} exceeds the {n_train} training images: no full batch to train on"
        );
    }
    let epochs = train_cfg.epochs;
    let total_steps = epochs * steps_per_epoch;
    tracing::info!(
        "{} training images, {} validation images, {steps_per_epoch} steps per epoch, {epochs} epochs, {} params",
        n_train,
        valid.indices.len(),
        vars.iter().map(|v| v.elem_count()).sum::<usize>()
    );

    if world > 1 {
        tracing::info!(
            "rank {} of {world}: {steps_per_epoch} steps of {bs} images per epoch, learning rate x {world}, {}",
            dist.rank(),
            if parallel {
                "parallel sampling (each rank its own architecture)"
            } else {
                "the same architecture on every rank"
            }
        );
    }

    let save = |progress: &Progress, opt: &sgd::Sgd, path: &std::path::Path| -> Result<()> {
        if !root {
            return Ok(());
        }
        let ck = Checkpoint {
            model: parts.store.tensors(),
            optim: opt.state()?,
            progress: progress.clone(),
        };
        checkpoint::save(path, &resolved.hash, &ck)
    };

    // A resumed run writes a new events file; TensorBoard keeps the later value of a step.
    let mut tb = if root {
        TbLog::open(&dir.path)
    } else {
        TbLog::off()
    };
    if progress.epoch == 0 && cfg.eval.at_start && !progress.history.iter().any(|h| h.epoch == 0) {
        let k = if fixed_archs {
            archs.len()
        } else {
            cfg.eval.num_archs_intermediate.min(archs.len())
        };
        let (rec, _) =
            evaluate_epoch(&parts, cfg, dir, &archs[..k], &mut recal, &valid, 0, device)?;
        tb.eval(&rec);
        progress.history.push(rec);
        progress.recal_consumed = recal.consumed;
    }

    for epoch in progress.epoch + 1..=epochs {
        let order: Vec<usize> = dist
            .shard(&data::shuffled(
                n_train,
                seed,
                "train-order",
                &[epoch as u64],
            ))
            .into_iter()
            .map(|i| d.train_indices[i])
            .take(steps_per_epoch * bs)
            .collect();
        // Rank r > 0 augments from its own stream (rank 0 keeps the single-process one).
        let augment_key: Vec<u64> = match dist.rank() {
            0 => vec![epoch as u64],
            r => vec![epoch as u64, r as u64],
        };
        let batches = data::batches(
            d.train.clone(),
            order,
            bs,
            true,
            d.train_augment,
            seed,
            "train-augment",
            &augment_key,
            device,
            cfg.data.prefetch,
        );
        let pb = bar(steps_per_epoch as u64, &format!("epoch {epoch}/{epochs}"));
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0f64, 0usize);
        for (i, batch) in batches.enumerate() {
            let batch = batch?;
            let paths = dist.pick(parallel, || tricks.paths(&parts.space, &mut sample_rng))?;
            if world > 1 {
                tracing::debug!(
                    "step {}: rank {} trains {}",
                    progress.step + 1,
                    dist.rank(),
                    paths
                        .iter()
                        .map(S::arch_string)
                        .collect::<Vec<_>>()
                        .join(" + ")
                );
            }
            let lr = match train_cfg.schedule {
                // Data parallel: the study multiplies the learning rate by the world size.
                Schedule::Cosine if world > 1 => {
                    tricks.lr(progress.step as usize, steps_per_epoch, total_steps) * world as f64
                }
                Schedule::Cosine => tricks.lr(progress.step as usize, steps_per_epoch, total_steps),
                // ProxylessNAS: set before each step at the fractional epoch; the warm-up
                // rises to learning_rate * device.gpus (none with one device).
                Schedule::WarmupCosine => tricks.warmup_lr(
                    cfg.device.gpus,
                    train_cfg.warmup_epochs,
                    epochs,
                    schedule::fractional_epoch(epoch, i, steps_per_epoch),
                ),
            };
            let step = progress.step;
            let rank = dist.rank() as u64;
            // Path 0 keeps the single-path stream, so runs without multipath are unchanged;
            // ranks > 0 draw from their own streams.
            let rng_for = |p: usize| {
                if rank > 0 {
                    rng::stream(seed, "train-dropout-rank", &[rank, step, p as u64])
                } else if p == 0 {
                    rng::stream(seed, "train-dropout", &[step])
                } else {
                    rng::stream(seed, "train-dropout", &[step, p as u64])
                }
            };
            let (mut grads, outcomes) = multipath::accumulate_smoothed(
                &parts.net,
                &batch.images,
                &batch.labels,
                &paths,
                parts.net.drop_path(epoch, epochs),
                &vars,
                rng_for,
                train_cfg.label_smoothing,
            )?;
            let k = outcomes.len() as f64;
            // With several paths: the mean per-path loss and accuracy (their sum was trained).
            let mut loss_v = outcomes.iter().map(|o| o.loss).sum::<f64>() / k;
            let mut n = batch.labels.dims1()?;
            let mut c = outcomes.iter().map(|o| o.correct as f64).sum::<f64>() / k;
            if world > 1 {
                // The logged loss is the mean of the ranks' losses, the accuracy that of the
                // global batch (the study's reduce_metrics: equal when batches are equal).
                let all = dist.gather_f64(&[loss_v, c, n as f64])?;
                loss_v = all.iter().map(|m| m[0]).sum::<f64>() / world as f64;
                c = all.iter().map(|m| m[1]).sum::<f64>();
                n = all.iter().map(|m| m[2] as usize).sum();
            }
            // Every rank sees the same mean loss, so all stop together.
            if !loss_v.is_finite() {
                anyhow::bail!("training loss became {loss_v} at epoch {epoch}, step {}; the last checkpoint is kept", progress.step);
            }
            dist.reduce_grads(&mut grads, &vars)?;
            let grad_norm = if train_cfg.grad_clip > 0.0 {
                Some(clip::clip_grad_norm(
                    &mut grads,
                    &vars,
                    train_cfg.grad_clip,
                )?)
            } else {
                None
            };
            opt.set_lr(lr);
            opt.step(&grads)?;
            loss_sum += loss_v * n as f64;
            correct += c;
            seen += n;
            progress.step += 1;
            let mut line = serde_json::json!({"kind": "train_step", "epoch": epoch, "step": progress.step, "loss": loss_v, "accuracy": c / n as f64, "lr": lr});
            if let (Some(g), Some(o)) = (grad_norm, line.as_object_mut()) {
                o.insert("grad_norm".into(), g.into());
            }
            if let (true, Some(o)) = (outcomes.len() > 1, line.as_object_mut()) {
                o.insert("paths".into(), outcomes.len().into());
            }
            if root {
                append_metrics(dir, &line)?;
            }
            tb.train_step(progress.step, loss_v, c / n as f64, lr);
            pb.inc(1);
            pb.set_message(format!(
                "loss {:.3} acc {:.3}",
                loss_sum / seen as f64,
                correct / seen as f64
            ));
        }
        pb.finish_and_clear();
        let (tl, ta) = (loss_sum / seen.max(1) as f64, correct / seen.max(1) as f64);
        progress.last_train_loss = Some(tl);
        progress.last_train_accuracy = Some(ta);
        if root {
            append_metrics(
                dir,
                &serde_json::json!({"kind": "train_epoch", "epoch": epoch, "step": progress.step, "loss": tl, "accuracy": ta}),
            )?;
        }
        // One model from here on: rank 0's BatchNorm statistics (the ones it checkpoints).
        dist.sync_buffers(&parts.store)?;
        tracing::info!("epoch {epoch}/{epochs}: train loss {tl:.4} acc {ta:.4}");
        progress.epoch = epoch;
        progress.sample_rng = rng::save_state(&sample_rng);

        let last = epoch == epochs;
        let focus = tricks.focus_due(epoch);
        let regular = epoch % cfg.eval.every == 0;
        if regular || last || focus.is_some() {
            let mut k = if fixed_archs || (last && !S::LAST_EVAL_INTERMEDIATE) {
                archs.len()
            } else if regular || last {
                cfg.eval.num_archs_intermediate
            } else {
                0
            };
            if let Some(f) = focus {
                k = k.max(f);
            }
            let k = k.min(archs.len());
            let (rec, accs) = evaluate_epoch(
                &parts,
                cfg,
                dir,
                &archs[..k],
                &mut recal,
                &valid,
                epoch,
                device,
            )?;
            tb.eval(&rec);
            progress.history.push(rec);
            progress.recal_consumed = recal.consumed;
            if focus.is_some() {
                let d = tricks.focus_decide(&parts.space, epoch, &archs[..k], &accs)?;
                match &d.chosen {
                    Some(c) => {
                        tracing::info!(
                            "focus_branch epoch {epoch}: fix {} = {} ({:?} score {:.6}); archset {} -> {}",
                            c.key, c.choice, d.metric, c.score, d.archs_before, d.archs_after
                        );
                        // The reference rebuilds its mutator with the same seed: a fresh
                        // sampling stream and a new validation subset of the smaller archset.
                        sample_rng = rng::stream(seed, "sample", &[]);
                        progress.sample_rng = rng::save_state(&sample_rng);
                        archs = tricks.eval_archs(&parts.space, cfg.eval.num_archs);
                    }
                    None => tracing::warn!("focus_branch epoch {epoch}: no choice qualified among {} evaluated architectures, nothing fixed", d.num_evaluated),
                }
                if root {
                    write_decisions(dir, tricks.decisions())?;
                }
            }
        }
        progress.tricks = tricks.progress();
        tb.flush();
        if epoch % cfg.experiment.checkpoint_every == 0 || last {
            save(&progress, &opt, &latest)?;
        }
    }

    let final_eval = progress.history.last().cloned();
    let tau_fraction = final_eval
        .as_ref()
        .and_then(|e| Some(e.kendall_tau? / e.ground_truth_seed_tau?))
        .and_then(finite);
    let correlations_unavailable =
        correlations_unavailable(parts.ground_truth.as_ref(), final_eval.as_ref());
    let summary = Summary {
        experiment: cfg.experiment.name.clone(),
        config_hash: resolved.hash.clone(),
        space: S::KIND.into(),
        epochs,
        steps: progress.step,
        unsampled: serde_json::to_value(train_cfg.unsampled)?
            .as_str()
            .unwrap_or("?")
            .to_string(),
        ground_truth: parts.ground_truth.as_ref().map(|g| g.source.clone()),
        final_train_loss: progress.last_train_loss,
        final_train_accuracy: progress.last_train_accuracy,
        final_eval,
        history: progress.history.clone(),
        tau_fraction_of_noise_ceiling: tau_fraction,
        tricks: tricks.describe(),
        train_archset_size: tricks.train_archset_size(),
        train_space_size: tricks.space_size().map(|s| s.to_string()),
        score: None,
        space_details: None,
        correlations_unavailable,
    };
    if !root {
        return Ok(Outcome {
            summary,
            already_finished: false,
        });
    }
    let final_ck = Checkpoint {
        model: parts.store.tensors(),
        optim: Default::default(),
        progress: progress.clone(),
    };
    checkpoint::save(
        &dir.file("checkpoints/final.safetensors"),
        &resolved.hash,
        &final_ck,
    )?;
    drop(tb);
    // The report is a view of the results, not a result: failing to draw it does not fail the run.
    if let Err(e) = super::report::write_report_with(&dir.path, Some(&summary)) {
        tracing::warn!("report.html not written: {e:#}");
    }
    dir.write(
        "summary.json",
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(Outcome {
        summary,
        already_finished: false,
    })
}
