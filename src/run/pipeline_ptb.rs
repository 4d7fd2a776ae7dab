//! DARTS-PTB's training loop (the study's `trainers/ptb.py`): token sequences with a hidden
//! state carried across batches, the learning rate scaled per batch by seq_len / bptt, SGD
//! that switches to ASGD once the mean validation perplexity stops improving, evaluation with
//! ASGD's averaged weights, roll-back to the best state when the loss turns NaN, perplexity as
//! the score, and the best-perplexity model as the final checkpoint.
//!
//! Shares the results folder, checkpoints, records, metrics log, TensorBoard, report and
//! correlation code with the image pipeline ([`super::pipeline`]).

use super::checkpoint::{self, Checkpoint};
use super::dir::RunDir;
use super::pipeline::{
    append_metrics, bar, correlate_scores, csv_field, truncate_metrics, Outcome,
};
use super::records::{finite, EvalRecord, Progress, Summary};
use super::tensorboard::TbLog;
use crate::config::{Config, PtbSpace, Resolved, Unsampled};
use crate::data::ptb::{batchify, fixed_windows, windows, Batched, Corpus, SeqLen, Window};
use crate::nn::Store;
use crate::rng::{self, Rng};
use crate::space::ptb::{Arch, Ptb};
use crate::space::ptb_model::{self, Masks, PtbNet};
use crate::space::{benchmark, GroundTruth, Space};
use crate::train::asgd::{Asgd, AsgdConfig};
use crate::train::clip;
use crate::train::sgd::{Sgd, SgdConfig};
use crate::tricks::TrickSet;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The perplexity the study records when an evaluation's loss is NaN (and runner also when it
/// is infinite or its exponential overflows, where the study would crash).
pub const PPL_SENTINEL: f64 = 1e18;

/// The study's `_average`: the mean of the values below `bound` (1e6), NaN when none is.
pub fn average_below(values: &[f64], bound: f64) -> f64 {
    let kept: Vec<f64> = values.iter().copied().filter(|v| *v < bound).collect();
    if kept.is_empty() {
        f64::NAN
    } else {
        kept.iter().sum::<f64>() / kept.len() as f64
    }
}

/// The pieces the PTB set-up hands to [`run`].
pub struct PtbParts {
    pub net: PtbNet,
    pub store: Store,
    pub space: PtbSpace,
    pub corpus: Corpus,
    pub ground_truth: Option<GroundTruth<Arch>>,
    pub eval_table: Option<benchmark::Table<Arch>>,
}

/// A NaN roll-back: where it happened and which best state was restored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NanEvent {
    pub epoch: usize,
    pub step: u64,
    pub restored_epoch: usize,
}

/// Everything to continue a PTB run exactly (the image pipeline's [`Progress`] plus the
/// optimizer switch, the best state's bookkeeping and the patience counter).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PtbProgress {
    pub base: Progress,
    /// The optimizer is ASGD (since `asgd_epoch`).
    pub asgd: bool,
    pub asgd_epoch: Option<usize>,
    /// Consecutive evaluations whose mean perplexity did not improve on the best.
    pub patience: usize,
    pub best_epoch: usize,
    /// The best mean perplexity (the study starts from 1e9).
    pub best_ppl: f64,
    /// Whether the best state was saved under ASGD (its model then holds averaged weights).
    pub best_asgd: bool,
    pub nan_rollbacks: Vec<NanEvent>,
}

/// The best state, for roll-backs and the final checkpoint: deep copies of the model and the
/// optimizer state.
#[derive(Clone)]
pub struct Best {
    pub model: BTreeMap<String, Tensor>,
    pub optim: BTreeMap<String, Tensor>,
}

/// SGD before the switch, ASGD after it.
pub enum Opt {
    Sgd(Sgd),
    Asgd(Asgd),
}

impl Opt {
    pub fn is_asgd(&self) -> bool {
        matches!(self, Opt::Asgd(_))
    }

    fn set_lr(&mut self, lr: f64) {
        match self {
            Opt::Sgd(o) => o.set_lr(lr),
            Opt::Asgd(o) => o.set_lr(lr),
        }
    }

    fn step(&mut self, g: &candle_core::backprop::GradStore) -> Result<()> {
        match self {
            Opt::Sgd(o) => o.step(g)?,
            Opt::Asgd(o) => o.step(g)?,
        }
        Ok(())
    }

    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(match self {
            Opt::Sgd(o) => o.state()?,
            Opt::Asgd(o) => o.state()?,
        })
    }
}

/// The training settings the loop reads (from the configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    pub lr: f64,
    pub bptt: usize,
    pub seq_len: SeqLen,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub unsampled: Unsampled,
    pub alpha: f64,
    pub beta: f64,
    pub max_steps: usize,
    /// ASGD patience, t0, lambda (None: never switch).
    pub asgd: Option<(usize, f64, f64)>,
}

impl Settings {
    pub fn from_config(cfg: &Config, space: &PtbSpace) -> Result<Self> {
        let text = cfg
            .data
            .text
            .as_ref()
            .context("space ptb needs [data.text]")?;
        Ok(Self {
            seed: cfg.experiment.seed,
            lr: cfg.train.learning_rate,
            bptt: text.bptt,
            seq_len: SeqLen::study(text.bptt, text.max_seq_len_delta),
            weight_decay: cfg.train.weight_decay,
            grad_clip: cfg.train.grad_clip,
            unsampled: cfg.train.unsampled,
            alpha: space.alpha,
            beta: space.beta,
            max_steps: cfg.train.max_steps,
            asgd: cfg
                .train
                .asgd
                .as_ref()
                .map(|a| (a.patience, a.t0, a.lambda)),
        })
    }

    pub fn new_sgd(&self, store: &Store) -> Sgd {
        Sgd::new(
            store.params(),
            SgdConfig {
                lr: self.lr,
                // The study's PTB SGD has no momentum (and so no Nesterov).
                momentum: 0.0,
                nesterov: false,
                weight_decay: self.weight_decay,
                unsampled: self.unsampled,
            },
        )
    }

    /// A fresh ASGD (the study's `optim.ASGD(lr=initial_lr, t0, lambd, weight_decay)`);
    /// parameters the SGD had touched keep counting as touched (PyTorch 1.x leaves their
    /// zeroed gradients in place).
    pub fn new_asgd(&self, store: &Store, from: Option<&Sgd>) -> Asgd {
        let (_, t0, lambd) = self.asgd.unwrap_or((0, 0.0, 0.0));
        let mut o = Asgd::new(
            store.params(),
            AsgdConfig {
                lr: self.lr,
                lambd,
                alpha: 0.75,
                t0,
                weight_decay: self.weight_decay,
                unsampled: self.unsampled,
            },
        );
        if let Some(sgd) = from {
            for (name, _) in store.params() {
                o.set_touched(&name, sgd.touched(&name).unwrap_or(false));
            }
        }
        o
    }

    /// An optimizer of the given kind holding `state`.
    pub fn restore_opt(
        &self,
        store: &Store,
        asgd: bool,
        state: &BTreeMap<String, Tensor>,
    ) -> Result<Opt> {
        Ok(if asgd {
            let mut o = self.new_asgd(store, None);
            o.load_state(state)?;
            Opt::Asgd(o)
        } else {
            let mut o = self.new_sgd(store);
            o.load_state(state)?;
            Opt::Sgd(o)
        })
    }
}

/// Deep copies of every model tensor (the optimizers update parameters in place, so the
/// store's own tensors would change under a shallow copy).
pub fn snapshot(store: &Store) -> Result<BTreeMap<String, Tensor>> {
    store
        .tensors()
        .into_iter()
        .map(|(k, v)| Ok((k, v.copy()?)))
        .collect()
}

/// Whether every value of every tensor is finite.
pub fn all_finite(tensors: &BTreeMap<String, Tensor>) -> Result<bool> {
    for t in tensors.values() {
        let s = t
            .to_dtype(DType::F64)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !s.is_finite() {
            // A sum can overflow with finite values; check element-wise before refusing.
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if v.iter().any(|x| !x.is_finite()) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// One training step's numbers, for the metrics log.
pub struct StepLog {
    pub step: u64,
    pub seq_len: usize,
    pub lr: f64,
    pub loss: f64,
    pub reg: f64,
    pub accuracy: f64,
    pub grad_norm: Option<f64>,
}

/// What an epoch of training did.
#[derive(Default)]
pub struct EpochOutcome {
    /// Sum over steps of cross-entropy x tokens, correct predictions, tokens.
    pub loss_sum: f64,
    pub correct: f64,
    pub tokens: usize,
    pub steps: usize,
    /// Set when a non-finite loss ended the epoch (the best state has been restored).
    pub nan: Option<NanEvent>,
}

/// The mutable training state: the optimizer and the best state.
pub struct TrainState {
    pub opt: Opt,
    pub best: Best,
}

/// Restores the best model and optimizer (switching back to SGD when the best state predates
/// the switch), as the study does on NaN.
pub fn roll_back(
    store: &Store,
    settings: &Settings,
    st: &mut TrainState,
    progress: &mut PtbProgress,
) -> Result<()> {
    store
        .load(&st.best.model)
        .context("restoring the best model")?;
    st.opt = settings
        .restore_opt(store, progress.best_asgd, &st.best.optim)
        .context("restoring the best optimizer state")?;
    if progress.asgd && !progress.best_asgd {
        tracing::info!("switching back to SGD (the best state predates the switch to ASGD)");
    }
    progress.asgd = progress.best_asgd;
    Ok(())
}

/// Trains one epoch: windows of the study's variable length over `train`, a fresh zero hidden
/// state carried (detached) from batch to batch, one architecture per batch sampled through
/// `tricks` (`pruned` restricts it; `cosine_restarts` shapes the base learning rate over the
/// fractional epoch before the seq_len / bptt scaling). A
/// non-finite loss (checked after the optimizer step, as the study; an overflowing
/// perplexity counts too) drops the rest of the epoch and rolls back to the best state.
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    net: &PtbNet,
    store: &Store,
    train: &Batched,
    settings: &Settings,
    st: &mut TrainState,
    progress: &mut PtbProgress,
    sample_rng: &mut Rng,
    tricks: &TrickSet<Ptb>,
    epoch: usize,
    log: &mut dyn FnMut(&StepLog) -> Result<()>,
) -> Result<EpochOutcome> {
    let dev = store.device().clone();
    let vars: Vec<candle_core::Var> = store.params().into_iter().map(|(_, v)| v).collect();
    let b = train.cols;
    let h = net.hidden;
    let mut seq_rng = rng::stream(settings.seed, "bptt", &[epoch as u64]);
    let sl = settings.seq_len;
    let wins: Vec<Window> = {
        let it = windows(train.rows, || sl.draw(&mut seq_rng));
        if settings.max_steps > 0 {
            it.take(settings.max_steps).collect()
        } else {
            it.collect()
        }
    };
    let mut out = EpochOutcome::default();
    let mut hidden = net.zero_hidden(b)?;
    let n_wins = wins.len().max(1) as f64;
    for (i, w) in wins.into_iter().enumerate() {
        let base = tricks.constant_lr(
            settings.lr,
            epoch.saturating_sub(1) as f64 + i as f64 / n_wins,
        );
        let lr = base * w.len as f64 / settings.bptt as f64;
        st.opt.set_lr(lr);
        let arch = tricks.sample(&Ptb, sample_rng);
        let x = Tensor::from_slice(train.rows_slice(w.start, w.len), (w.len, b), &dev)?;
        let y = Tensor::from_slice(train.rows_slice(w.start + 1, w.len), (w.len, b), &dev)?;
        let step = progress.base.step;
        let mut mrng = rng::stream(settings.seed, "train-dropout", &[step]);
        let masks = Masks::draw(&mut mrng, &net.dropouts, net.vocab, b, h, h, &dev)?;
        let fwd = net.forward(&x, &hidden, &arch, &masks, true)?;
        hidden = fwd.hidden.detach();
        let l = ptb_model::loss(&fwd, &y, settings.alpha, settings.beta)?;
        let total = l.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let ce = l.cross_entropy.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let correct = ptb_model::correct(&fwd.logits, &y)?;
        let mut grads = l.total.backward()?;
        let grad_norm = if settings.grad_clip > 0.0 {
            Some(clip::clip_grad_norm(&mut grads, &vars, settings.grad_clip)?)
        } else {
            None
        };
        st.opt.step(&grads)?;
        progress.base.step += 1;
        // The study raises on a NaN loss after the step, and on an overflow of exp(loss)
        // (Python's OverflowError); an infinite loss is treated the same way here.
        if !total.is_finite() || !ce.exp().is_finite() {
            let ev = NanEvent {
                epoch,
                step: progress.base.step,
                restored_epoch: progress.best_epoch,
            };
            tracing::warn!(
                "epoch {epoch}, step {}: loss {total} (cross-entropy {ce}); rolling back to the best state (epoch {}) and dropping the rest of the epoch",
                progress.base.step,
                progress.best_epoch
            );
            roll_back(store, settings, st, progress)?;
            progress.nan_rollbacks.push(ev.clone());
            out.nan = Some(ev);
            return Ok(out);
        }
        let tokens = w.len * b;
        out.loss_sum += ce * tokens as f64;
        out.correct += correct as f64;
        out.tokens += tokens;
        out.steps += 1;
        log(&StepLog {
            step: progress.base.step,
            seq_len: w.len,
            lr,
            loss: ce,
            reg: total - ce,
            accuracy: correct as f64 / tokens as f64,
            grad_norm,
        })?;
    }
    // Beyond the study: a step can leave non-finite weights behind a finite loss (caught by
    // the study only at the next batch); at the end of an epoch that would reach evaluation
    // and the checkpoint, so it rolls back too.
    if !all_finite(&store.tensors())? {
        let ev = NanEvent {
            epoch,
            step: progress.base.step,
            restored_epoch: progress.best_epoch,
        };
        tracing::warn!("epoch {epoch}: non-finite weights after the last step; rolling back to the best state (epoch {})", progress.best_epoch);
        roll_back(store, settings, st, progress)?;
        progress.nan_rollbacks.push(ev.clone());
        out.nan = Some(ev);
    }
    Ok(out)
}

/// One architecture's validation score: (mean token cross-entropy, perplexity, next-token
/// accuracy), with a zero hidden state at the start and fixed-length windows.
pub fn score_arch(
    net: &PtbNet,
    arch: &Arch,
    valid: &Batched,
    bptt: usize,
    device: &Device,
) -> Result<(f64, f64, f64)> {
    let b = valid.cols;
    let mut hidden = net.zero_hidden(b)?;
    let (mut total, mut count, mut correct, mut tokens) = (0f64, 0usize, 0usize, 0usize);
    for w in fixed_windows(valid.rows, bptt) {
        let x = Tensor::from_slice(valid.rows_slice(w.start, w.len), (w.len, b), device)?;
        let y = Tensor::from_slice(valid.rows_slice(w.start + 1, w.len), (w.len, b), device)?;
        let out = net.forward(&x, &hidden, arch, &Masks::none(), false)?;
        hidden = out.hidden.clone();
        let ce = ptb_model::loss(&out, &y, 0.0, 0.0)?.cross_entropy;
        // As the study: the batch mean weighted by its length (batches are equally wide).
        total += ce.to_dtype(DType::F64)?.to_scalar::<f64>()? * w.len as f64;
        count += w.len;
        correct += ptb_model::correct(&out.logits, &y)?;
        tokens += w.len * b;
    }
    if count == 0 {
        bail!(
            "the validation data has no window of 2 rows (too few tokens for data.eval_batch_size)"
        );
    }
    let acc = correct as f64 / tokens as f64;
    if total.is_nan() {
        return Ok((PPL_SENTINEL, PPL_SENTINEL, acc));
    }
    let loss = total / count as f64;
    let ppl = loss.exp();
    Ok((
        if loss.is_finite() { loss } else { PPL_SENTINEL },
        if ppl.is_finite() { ppl } else { PPL_SENTINEL },
        acc,
    ))
}

/// Scores `archs`, writes `eval/epoch_NNNN.csv` and the metrics line; returns the record and
/// the perplexities.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    parts: &PtbParts,
    cfg: &Config,
    dir: &RunDir,
    archs: &[Arch],
    valid: &Batched,
    bptt: usize,
    epoch: usize,
    device: &Device,
) -> Result<(EvalRecord, Vec<f64>)> {
    let pb = bar(archs.len() as u64, "evaluate");
    let (mut losses, mut ppls, mut accs) = (vec![], vec![], vec![]);
    for arch in archs {
        let (l, p, a) = score_arch(&parts.net, arch, valid, bptt, device).with_context(|| {
            format!(
                "evaluating architecture {} at epoch {epoch}",
                Ptb::arch_string(arch)
            )
        })?;
        losses.push(l);
        ppls.push(p);
        accs.push(a);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let gt = parts.ground_truth.as_ref();
    let table = parts.eval_table.as_ref();
    let extra_cols: &[String] = table.map_or(&[], |t| &t.extra_columns);
    let bench_rows: HashMap<&Arch, &benchmark::Row<Arch>> = table
        .map(|t| t.rows.iter().map(|r| (&r.arch, r)).collect())
        .unwrap_or_default();
    let mut csv = String::from(
        "arch,arch_string,supernet_accuracy,supernet_loss,supernet_perplexity,ground_truth",
    );
    for c in extra_cols {
        csv.push_str(&format!(",{}", csv_field(&format!("bench_{c}"))));
    }
    csv.push('\n');
    for (i, a) in archs.iter().enumerate() {
        let g = gt
            .and_then(|g| g.scores.get(a))
            .map(|v| v.to_string())
            .unwrap_or_default();
        csv.push_str(&format!(
            "{},{},{},{},{},{g}",
            csv_field(&Ptb::encode(a).to_string()),
            csv_field(&Ptb::arch_string(a)),
            accs[i],
            losses[i],
            ppls[i]
        ));
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
    dir.write(&format!("eval/epoch_{epoch:04}.csv"), csv.as_bytes())?;
    let (n_gt, [tau, rho, r, topk], k, ceiling) =
        correlate_scores(archs, &ppls, gt, cfg.eval.top_k_fraction, true);
    let n = accs.len().max(1) as f64;
    let rec = EvalRecord {
        epoch,
        num_archs: archs.len(),
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
        mean_top5_accuracy: None,
        mean_perplexity: finite(average_below(&ppls, 1e6)),
        min_perplexity: finite(ppls.iter().cloned().fold(f64::INFINITY, f64::min)),
        max_perplexity: finite(ppls.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
    };
    let mut line = serde_json::to_value(&rec)?;
    if let Some(o) = line.as_object_mut() {
        o.insert("kind".into(), "eval".into());
    }
    append_metrics(dir, &line)?;
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into());
    tracing::info!(
        "eval epoch {epoch}: {} archs, mean ppl {} (min {}, max {}), kendall {} spearman {} pearson {} top-{k} {}",
        rec.num_archs,
        fmt(rec.mean_perplexity),
        fmt(rec.min_perplexity),
        fmt(rec.max_perplexity),
        fmt(tau),
        fmt(rho),
        fmt(r),
        fmt(topk)
    );
    Ok((rec, ppls))
}

/// Optimizer state under `cur.`, best model under `best.model.`, best optimizer under
/// `best.optim.` (the checkpoint module adds its own `optim.` prefix).
fn pack_optim(st: &TrainState) -> Result<BTreeMap<String, Tensor>> {
    let mut m = BTreeMap::new();
    for (k, v) in st.opt.state()? {
        m.insert(format!("cur.{k}"), v);
    }
    for (k, v) in &st.best.model {
        m.insert(format!("best.model.{k}"), v.clone());
    }
    for (k, v) in &st.best.optim {
        m.insert(format!("best.optim.{k}"), v.clone());
    }
    Ok(m)
}

fn unpack_optim(m: &BTreeMap<String, Tensor>) -> Result<[BTreeMap<String, Tensor>; 3]> {
    let mut out: [BTreeMap<String, Tensor>; 3] = Default::default();
    for (k, v) in m {
        let (i, rest) = if let Some(r) = k.strip_prefix("cur.") {
            (0, r)
        } else if let Some(r) = k.strip_prefix("best.model.") {
            (1, r)
        } else if let Some(r) = k.strip_prefix("best.optim.") {
            (2, r)
        } else {
            bail!("unexpected optimizer entry {k:?}");
        };
        out[i].insert(rest.to_string(), v.clone());
    }
    Ok(out)
}

/// Writes the checkpoint, refusing to write non-finite weights (a roll-back happens first).
fn save(
    path: &std::path::Path,
    hash: &str,
    store: &Store,
    st: &TrainState,
    progress: &PtbProgress,
) -> Result<()> {
    let model = store.tensors();
    if !all_finite(&model)? {
        bail!(
            "refusing to write {}: the model holds non-finite values",
            path.display()
        );
    }
    checkpoint::save(
        path,
        hash,
        &Checkpoint {
            model,
            optim: pack_optim(st)?,
            progress: progress.clone(),
        },
    )
}

/// Loads ASGD's averages into the model for an evaluation (the study's
/// `_use_ax_for_validation`); returns the raw weights to put back afterwards.
fn load_averages(store: &Store, opt: &Opt) -> Result<Option<BTreeMap<String, Tensor>>> {
    let Opt::Asgd(a) = opt else {
        return Ok(None);
    };
    let raw = snapshot(store)?;
    for (var, ax) in a.averages() {
        var.set(&ax)?;
    }
    Ok(Some(raw))
}

/// Runs (or resumes, or reports as finished) a DARTS-PTB experiment in `dir`.
pub fn run(resolved: &Resolved, parts: PtbParts, dir: &RunDir, device: &Device) -> Result<Outcome> {
    let cfg = &resolved.config;
    let seed = cfg.experiment.seed;
    let latest = dir.file("checkpoints/latest.safetensors");
    let summary_path = dir.file("summary.json");
    if summary_path.exists() && latest.exists() {
        let text = std::fs::read_to_string(&summary_path)
            .with_context(|| format!("reading {}", summary_path.display()))?;
        if let Ok(summary) = serde_json::from_str::<Summary>(&text) {
            return Ok(Outcome {
                summary,
                already_finished: true,
            });
        }
    }
    dir.write("config.toml", resolved.toml.as_bytes())?;
    let settings = Settings::from_config(cfg, &parts.space)?;
    let text = cfg
        .data
        .text
        .as_ref()
        .context("space ptb needs [data.text]")?;
    let cut = |v: &[u32], n: usize| -> Vec<u32> {
        if n > 0 && n < v.len() {
            v[..n].to_vec()
        } else {
            v.to_vec()
        }
    };
    let train = batchify(
        &cut(&parts.corpus.train, text.train_tokens),
        cfg.data.batch_size,
    );
    let valid = batchify(
        &cut(&parts.corpus.valid, text.valid_tokens),
        cfg.data.eval_batch_size,
    );
    if !train.has_windows() {
        bail!(
            "train.txt: {} tokens make {} rows of data.batch_size {}: at least 3 are needed",
            cut(&parts.corpus.train, text.train_tokens).len(),
            train.rows,
            cfg.data.batch_size
        );
    }
    if !valid.has_windows() {
        bail!(
            "valid.txt: {} tokens make {} rows of data.eval_batch_size {}: at least 3 are needed",
            cut(&parts.corpus.valid, text.valid_tokens).len(),
            valid.rows,
            cfg.data.eval_batch_size
        );
    }

    let tricks = TrickSet::new(&Ptb, cfg, parts.ground_truth.as_ref(), None).context("tricks")?;
    for line in tricks.report() {
        tracing::info!("tricks: {line}");
    }
    // The validation architectures: the table's, or the study's draws from the start of the
    // sampling stream. The draws are made either way, so training samples the same sequence
    // of architectures with and without eval.archs.
    let mut sample_rng = rng::stream(seed, "sample", &[]);
    let drawn: Vec<Arch> = tricks.draw_eval_archs(&Ptb, cfg.eval.num_archs, &mut sample_rng);
    let fixed_archs = parts.eval_table.is_some();
    let archs: Vec<Arch> = match &parts.eval_table {
        Some(t) => {
            tracing::info!(
                "evaluating the {} architectures of {} at every evaluation",
                t.rows.len(),
                t.source
            );
            super::pipeline::warn_untrained_table_rows(&tricks, &Ptb, t);
            t.rows.iter().map(|r| r.arch).collect()
        }
        None => drawn,
    };
    let per_eval = if fixed_archs {
        archs.len()
    } else {
        cfg.eval.num_archs_intermediate.min(archs.len())
    };

    let mut progress = PtbProgress {
        base: Progress {
            epoch: 0,
            step: 0,
            sample_rng: rng::save_state(&sample_rng),
            recal_consumed: 0,
            history: vec![],
            last_train_loss: None,
            last_train_accuracy: None,
            tricks: Default::default(),
        },
        asgd: false,
        asgd_epoch: None,
        patience: 0,
        best_epoch: 0,
        best_ppl: 1e9,
        best_asgd: false,
        nan_rollbacks: vec![],
    };
    let store = &parts.store;
    let sgd = settings.new_sgd(store);
    let mut st = TrainState {
        best: Best {
            model: snapshot(store)?,
            optim: sgd.state()?,
        },
        opt: Opt::Sgd(sgd),
    };
    if latest.exists() {
        let ck: Checkpoint<PtbProgress> = checkpoint::load(&latest, &resolved.hash, device)
            .with_context(|| super::pipeline::resume_context(dir.dist(), &latest))?;
        store
            .load(&ck.model)
            .with_context(|| format!("checkpoint {} does not fit the model", latest.display()))?;
        let [cur, best_model, best_optim] =
            unpack_optim(&ck.optim).with_context(|| format!("checkpoint {}", latest.display()))?;
        progress = ck.progress;
        st.opt = settings
            .restore_opt(store, progress.asgd, &cur)
            .with_context(|| format!("checkpoint {}: optimizer state", latest.display()))?;
        // The best model must fit the model too.
        let probe = snapshot(store)?;
        store
            .load(&best_model)
            .with_context(|| format!("checkpoint {}: best model", latest.display()))?;
        store.load(&probe)?;
        st.best = Best {
            model: best_model,
            optim: best_optim,
        };
        truncate_metrics(dir, progress.base.epoch)?;
        tracing::info!(
            "resuming from {} at epoch {} (step {}, {})",
            latest.display(),
            progress.base.epoch,
            progress.base.step,
            if progress.asgd { "ASGD" } else { "SGD" }
        );
    } else if dir.file("metrics.jsonl").exists() {
        std::fs::remove_file(dir.file("metrics.jsonl"))
            .with_context(|| format!("cannot remove {}", dir.file("metrics.jsonl").display()))?;
    }
    let mut sample_rng = rng::restore_state(&progress.base.sample_rng)?;
    let epochs = cfg.train.epochs;
    tracing::info!(
        "{} training tokens in {} rows of {}, {} validation tokens in {} rows of {}, vocabulary {}, {epochs} epochs, {} params",
        train.rows * train.cols,
        train.rows,
        train.cols,
        valid.rows * valid.cols,
        valid.rows,
        valid.cols,
        parts.corpus.vocab(),
        store.params().iter().map(|(_, v)| v.elem_count()).sum::<usize>()
    );

    let mut tb = TbLog::open(&dir.path);
    if progress.base.epoch == 0
        && cfg.eval.at_start
        && !progress.base.history.iter().any(|h| h.epoch == 0)
    {
        // Not the study's (it never evaluates before training); a record only, it does not
        // count for the best state or the ASGD patience.
        let (rec, _) = evaluate(
            &parts,
            cfg,
            dir,
            &archs[..per_eval],
            &valid,
            settings.bptt,
            0,
            device,
        )?;
        tb.eval(&rec);
        progress.base.history.push(rec);
    }

    for epoch in progress.base.epoch + 1..=epochs {
        let est = (train.rows / settings.bptt.max(1)).max(1);
        let est = if settings.max_steps > 0 {
            est.min(settings.max_steps)
        } else {
            est
        };
        let pb = bar(est as u64, &format!("epoch {epoch}/{epochs}"));
        let mut log = |s: &StepLog| -> Result<()> {
            let mut line = serde_json::json!({"kind": "train_step", "epoch": epoch, "step": s.step,
                "loss": s.loss, "accuracy": s.accuracy, "lr": s.lr, "seq_len": s.seq_len,
                "ppl": s.loss.exp(), "reg": s.reg});
            if let (Some(g), Some(o)) = (s.grad_norm, line.as_object_mut()) {
                o.insert("grad_norm".into(), g.into());
            }
            append_metrics(dir, &line)?;
            tb.train_step(s.step, s.loss, s.accuracy, s.lr);
            pb.inc(1);
            pb.set_message(format!("loss {:.3} ppl {:.1}", s.loss, s.loss.exp()));
            Ok(())
        };
        let out = train_epoch(
            &parts.net,
            store,
            &train,
            &settings,
            &mut st,
            &mut progress,
            &mut sample_rng,
            &tricks,
            epoch,
            &mut log,
        )?;
        pb.finish_and_clear();
        if let Some(ev) = &out.nan {
            append_metrics(
                dir,
                &serde_json::json!({"kind": "nan_rollback", "epoch": ev.epoch, "step": ev.step,
                    "restored_epoch": ev.restored_epoch, "asgd": progress.asgd}),
            )?;
        }
        if out.tokens > 0 {
            let tl = out.loss_sum / out.tokens as f64;
            let ta = out.correct / out.tokens as f64;
            progress.base.last_train_loss = Some(tl);
            progress.base.last_train_accuracy = Some(ta);
            append_metrics(
                dir,
                &serde_json::json!({"kind": "train_epoch", "epoch": epoch, "step": progress.base.step,
                    "loss": tl, "accuracy": ta, "ppl": tl.exp()}),
            )?;
            tracing::info!(
                "epoch {epoch}/{epochs}: train loss {tl:.4} ppl {:.2} acc {ta:.4} ({})",
                tl.exp(),
                if progress.asgd { "ASGD" } else { "SGD" }
            );
        }
        progress.base.epoch = epoch;
        progress.base.sample_rng = rng::save_state(&sample_rng);

        let last = epoch == epochs;
        if epoch % cfg.eval.every == 0 || last {
            let raw = load_averages(store, &st.opt)?;
            let result = evaluate(
                &parts,
                cfg,
                dir,
                &archs[..per_eval],
                &valid,
                settings.bptt,
                epoch,
                device,
            );
            let (rec, ppls) = match result {
                Ok(r) => r,
                Err(e) => {
                    if let Some(raw) = &raw {
                        store.load(raw)?;
                    }
                    return Err(e);
                }
            };
            tb.eval(&rec);
            progress.base.history.push(rec);
            let mean = average_below(&ppls, 1e6);
            if mean < progress.best_ppl {
                // Saved while the averaged weights are loaded, as the study.
                st.best = Best {
                    model: snapshot(store)?,
                    optim: st.opt.state()?,
                };
                progress.patience = 0;
                progress.best_ppl = mean;
                progress.best_epoch = epoch;
                progress.best_asgd = st.opt.is_asgd();
                tracing::info!("best mean perplexity so far: {mean:.4}");
            } else {
                progress.patience += 1;
                if let (Some((patience, _, _)), Opt::Sgd(sgd)) = (settings.asgd, &st.opt) {
                    if progress.patience >= patience {
                        tracing::info!(
                            "switching to ASGD after {} evaluations without improvement",
                            progress.patience
                        );
                        st.opt = Opt::Asgd(settings.new_asgd(store, Some(sgd)));
                        progress.asgd = true;
                        progress.asgd_epoch = Some(epoch);
                    }
                }
                tracing::info!(
                    "mean perplexity {mean:.4} is not better than {:.4}; patience {}",
                    progress.best_ppl,
                    progress.patience
                );
            }
            if let Some(raw) = raw {
                store.load(&raw)?;
            }
        }
        tb.flush();
        if epoch % cfg.experiment.checkpoint_every == 0 || last {
            save(&latest, &resolved.hash, store, &st, &progress)?;
        }
    }

    let final_eval = progress.base.history.last().cloned();
    let tau_fraction = final_eval
        .as_ref()
        .and_then(|e| Some(e.kendall_tau? / e.ground_truth_seed_tau?))
        .and_then(finite);
    let correlations_unavailable =
        super::pipeline::correlations_unavailable(parts.ground_truth.as_ref(), final_eval.as_ref());
    let summary = Summary {
        experiment: cfg.experiment.name.clone(),
        config_hash: resolved.hash.clone(),
        space: Ptb::KIND.into(),
        epochs,
        steps: progress.base.step,
        unsampled: serde_json::to_value(cfg.train.unsampled)?
            .as_str()
            .unwrap_or("?")
            .to_string(),
        ground_truth: parts.ground_truth.as_ref().map(|g| g.source.clone()),
        final_train_loss: progress.base.last_train_loss,
        final_train_accuracy: progress.base.last_train_accuracy,
        final_eval,
        history: progress.base.history.clone(),
        tau_fraction_of_noise_ceiling: tau_fraction,
        tricks: tricks.describe(),
        train_archset_size: None,
        train_space_size: tricks.space_size().map(|s| s.to_string()),
        score: Some("perplexity".into()),
        correlations_unavailable,
        space_details: Some(serde_json::json!({
            "score": "validation perplexity exp(mean token cross-entropy), lower is better; correlations are of supernet perplexity against the benchmark's",
            "best_epoch": progress.best_epoch,
            "best_mean_perplexity": finite(progress.best_ppl),
            "best_with_averaged_weights": progress.best_asgd,
            "asgd_from_epoch": progress.asgd_epoch,
            "nan_rollbacks": progress.nan_rollbacks,
            "final_checkpoint": "the best-perplexity model (the study's), not the last",
        })),
    };
    // The study's final checkpoint is the best-perplexity model.
    checkpoint::save(
        &dir.file("checkpoints/final.safetensors"),
        &resolved.hash,
        &Checkpoint {
            model: st.best.model.clone(),
            optim: Default::default(),
            progress: progress.clone(),
        },
    )?;
    drop(tb);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn space(h: usize) -> PtbSpace {
        match crate::config::defaults::ptb().space {
            crate::config::Space::Ptb(mut s) => {
                s.embedding = h;
                s.hidden = h;
                s
            }
            _ => unreachable!(),
        }
    }

    fn settings(lr: f64) -> Settings {
        Settings {
            seed: 0,
            lr,
            bptt: 6,
            seq_len: SeqLen::study(6, 2),
            weight_decay: 8e-7,
            grad_clip: 0.1,
            unsampled: Unsampled::Pytorch1,
            alpha: 0.0,
            beta: 1e-3,
            max_steps: 0,
            asgd: Some((5, 0.0, 0.0)),
        }
    }

    fn progress() -> PtbProgress {
        PtbProgress {
            base: Progress {
                epoch: 0,
                step: 0,
                sample_rng: rng::save_state(&rng::stream(0, "sample", &[])),
                recal_consumed: 0,
                history: vec![],
                last_train_loss: None,
                last_train_accuracy: None,
                tricks: Default::default(),
            },
            asgd: false,
            asgd_epoch: None,
            patience: 0,
            best_epoch: 0,
            best_ppl: 1e9,
            best_asgd: false,
            nan_rollbacks: vec![],
        }
    }

    fn tokens() -> Vec<u32> {
        let mut r = rng::stream(9, "tokens", &[]);
        (0..400)
            .map(|_| rand::Rng::random_range(&mut r, 0..13u32))
            .collect()
    }

    /// An absurd learning rate blows the loss up; the epoch stops, the best state (model and
    /// optimizer) comes back exactly, and a checkpoint of non-finite weights is refused.
    #[test]
    fn nan_rolls_back_to_the_best_state_and_never_checkpoints_nan() {
        let dev = Device::Cpu;
        let store = Store::new(&dev);
        let mut r = rng::stream(0, "init", &[]);
        let net = PtbNet::new(&store.root(), &space(8), 13, &mut r).unwrap();
        let train = batchify(&tokens(), 4);
        let s = settings(1e30);
        // A best state saved before the switch to ASGD, the current optimizer ASGD: the
        // roll-back must restore the model and switch back to SGD with the best SGD state.
        let best_model = snapshot(&store).unwrap();
        let mut p = progress();
        let mut st = TrainState {
            opt: Opt::Asgd(s.new_asgd(&store, None)),
            best: Best {
                model: best_model.clone(),
                optim: s.new_sgd(&store).state().unwrap(),
            },
        };
        p.asgd = true;
        p.best_asgd = false;
        // Move the weights away from the best state with a sane step first.
        let sane = settings(1.0);
        let mut sr = rng::stream(0, "sample", &[]);
        let plain = TrickSet::new(&Ptb, &crate::config::defaults::ptb(), None, None).unwrap();
        let mut none = |_: &StepLog| Ok(());
        let mut p2 = progress();
        let out = train_epoch(
            &net,
            &store,
            &train,
            &Settings {
                max_steps: 2,
                ..sane
            },
            &mut st,
            &mut p2,
            &mut sr,
            &plain,
            1,
            &mut none,
        )
        .unwrap();
        assert!(out.nan.is_none() && out.steps == 2);
        let moved = snapshot(&store).unwrap();
        assert_ne!(
            moved["rnn._W0"].to_vec2::<f32>().unwrap(),
            best_model["rnn._W0"].to_vec2::<f32>().unwrap()
        );
        assert!(st.opt.is_asgd());
        p.best_epoch = 7;
        let mut steps = 0;
        let mut count = |_: &StepLog| {
            steps += 1;
            Ok(())
        };
        let out = train_epoch(
            &net, &store, &train, &s, &mut st, &mut p, &mut sr, &plain, 2, &mut count,
        )
        .unwrap();
        let ev = out
            .nan
            .expect("the absurd learning rate must trip the NaN check");
        assert_eq!(ev.epoch, 2);
        assert_eq!(ev.restored_epoch, 7);
        assert_eq!(p.nan_rollbacks, vec![ev]);
        // The epoch was dropped at the failing step: ASGD's first step here still moves by
        // the previous (sane) lr, its second by 1e30 x a clipped gradient, so the loss of the
        // third step at the latest is non-finite; the windows of the epoch number far more.
        assert!(steps <= 2, "{steps} steps logged after the blow-up");
        assert!(windows(train.rows, || 8).count() > 8);
        for (k, v) in snapshot(&store).unwrap() {
            assert_eq!(
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                best_model[&k]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                "{k} not restored"
            );
        }
        assert!(!st.opt.is_asgd() && !p.asgd, "back to SGD");
        // Non-finite weights are never checkpointed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latest.safetensors");
        store.params()[0]
            .1
            .set(&(store.params()[0].1.as_tensor() * f64::NAN).unwrap())
            .unwrap();
        let e = save(&path, "h", &store, &st, &p).unwrap_err().to_string();
        assert!(e.contains("non-finite"), "{e}");
        assert!(!path.exists());
        store.load(&best_model).unwrap();
        save(&path, "h", &store, &st, &p).unwrap();
        let ck: Checkpoint<PtbProgress> = checkpoint::load(&path, "h", &dev).unwrap();
        assert!(all_finite(&ck.model).unwrap());
        let [cur, bm, bo] = unpack_optim(&ck.optim).unwrap();
        assert!(
            cur.contains_key("touched") && bm.contains_key("rnn._W0") && bo.contains_key("touched")
        );
    }

    #[test]
    fn study_average_skips_huge_values() {
        assert_eq!(average_below(&[100.0, 200.0, 1e18], 1e6), 150.0);
        assert!(average_below(&[1e18, 1e7], 1e6).is_nan());
    }
}
