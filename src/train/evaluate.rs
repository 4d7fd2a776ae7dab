//! Scoring one architecture with inherited weights: recalibrate BatchNorm, then validate.

use crate::data::{self, Images, Transform};
use crate::nn::{self, Mode, Store};
use crate::rng;
use crate::space::{Ctx, Supernet};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

/// The persistent, shuffled, cycling stream of training batches that recalibration draws from:
/// each architecture takes the next `steps` batches; the stream is never reset. Batch `g` of the
/// stream is a pure function of `g`, so the stream's whole state is the count `consumed`.
pub struct RecalStream {
    pub set: Images,
    pub indices: Vec<usize>,
    pub batch_size: usize,
    pub augment: Transform,
    pub seed: u64,
    pub consumed: u64,
    pub prefetch: usize,
}

impl RecalStream {
    fn batches_per_cycle(&self) -> u64 {
        (self.indices.len() / self.batch_size).max(1) as u64
    }

    /// The next `n` batches (a background thread prepares them).
    pub fn take(&mut self, n: usize, device: &Device) -> anyhow::Result<data::BatchIter> {
        if self.indices.len() < self.batch_size {
            anyhow::bail!(
                "BN recalibration batch size {} exceeds the {} training images",
                self.batch_size,
                self.indices.len()
            );
        }
        let per = self.batches_per_cycle();
        let start = self.consumed;
        let mut order = Vec::with_capacity(n * self.batch_size);
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for g in start..start + n as u64 {
            let cycle = g / per;
            if cached.as_ref().map(|c| c.0) != Some(cycle) {
                let perm = data::shuffled(self.indices.len(), self.seed, "recal-order", &[cycle]);
                cached = Some((cycle, perm));
            }
            let perm = &cached
                .as_ref()
                .map(|c| &c.1)
                .ok_or_else(|| anyhow::anyhow!("internal: no permutation"))?;
            let pos = ((g % per) as usize) * self.batch_size;
            order.extend(
                perm[pos..pos + self.batch_size]
                    .iter()
                    .map(|&i| self.indices[i]),
            );
        }
        self.consumed += n as u64;
        Ok(data::batches(
            self.set.clone(),
            order,
            self.batch_size,
            true,
            self.augment,
            self.seed,
            "recal-augment",
            &[start],
            device,
            self.prefetch,
        ))
    }
}

/// The validation images of an evaluation.
pub struct ValidSet {
    pub set: Images,
    pub indices: Vec<usize>,
    pub batch_size: usize,
    pub augment: Transform,
    pub seed: u64,
    pub prefetch: usize,
}

/// Accuracy and loss of one architecture.
#[derive(Clone, Copy, Debug)]
pub struct Score {
    pub accuracy: f64,
    pub loss: f64,
    /// Top-5 accuracy, when asked for ([`ScoreOptions::top5`]).
    pub top5: Option<f64>,
}

/// What an evaluation measures besides top-1 accuracy and the plain cross-entropy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScoreOptions {
    /// Label smoothing of the reported loss (the study's ProxylessNAS evaluates with its
    /// training criterion).
    pub label_smoothing: f64,
    /// Also count top-5 hits.
    pub top5: bool,
}

/// Recalibrates BN over `steps` batches of `recal` (skipped when 0), evaluates on `valid`, and
/// restores every buffer that recalibration changed. Weights are never modified.
/// `key` identifies this evaluation (e.g. epoch and architecture index) for the validation
/// augmentation stream, used by the NB201 `cifar10-valid` quirk.
#[allow(clippy::too_many_arguments)]
pub fn score<N: Supernet>(
    net: &N,
    store: &Store,
    arch: &N::Arch,
    recal: &mut RecalStream,
    steps: usize,
    drop_path: f64,
    valid: &ValidSet,
    key: &[u64],
    device: &Device,
) -> anyhow::Result<Score> {
    score_with(
        net,
        store,
        arch,
        recal,
        steps,
        drop_path,
        valid,
        key,
        device,
        ScoreOptions::default(),
    )
}

/// [`score`] with a smoothed loss and / or top-5 accuracy.
#[allow(clippy::too_many_arguments)]
pub fn score_with<N: Supernet>(
    net: &N,
    store: &Store,
    arch: &N::Arch,
    recal: &mut RecalStream,
    steps: usize,
    drop_path: f64,
    valid: &ValidSet,
    key: &[u64],
    device: &Device,
    opts: ScoreOptions,
) -> anyhow::Result<Score> {
    let saved: Vec<(String, Tensor)> = store
        .buffers()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().copy().map_err(anyhow::Error::from)))
        .map(|(k, r)| r.map(|t| (k, t)))
        .collect::<anyhow::Result<_>>()?;
    // Neither pass needs a backward graph (see `nn::no_grad`).
    let result = nn::no_grad(|| -> anyhow::Result<Score> {
        if steps > 0 {
            store.begin_recalibration();
            // Train mode as in the reference: drop-path active at the current probability,
            // auxiliary head run (its output unused).
            let mut r = rng::stream(recal.seed, "recal-dropout", &[recal.consumed]);
            for b in recal.take(steps, device)? {
                let b = b?;
                let mut ctx = Ctx {
                    mode: Mode::Recalibrate,
                    drop_path,
                    rng: &mut r,
                };
                net.forward(&b.images, arch, &mut ctx)?;
            }
            store.finish_recalibration()?;
        }
        let mut correct = 0usize;
        let mut correct5 = 0usize;
        let mut total = 0usize;
        let mut loss_sum = 0f64;
        let it = data::batches(
            valid.set.clone(),
            valid.indices.clone(),
            valid.batch_size,
            false,
            valid.augment,
            valid.seed,
            "valid-augment",
            key,
            device,
            valid.prefetch,
        );
        // One stream per architecture, advancing over its batches, so that per-call draws (the
        // replicate trick's copy choice) differ from batch to batch as in the reference.
        let mut r = rng::stream(valid.seed, "eval-dropout", key);
        for b in it {
            let b = b?;
            let mut ctx = Ctx::new(Mode::Eval, &mut r);
            let logits = net
                .forward(&b.images.detach(), arch, &mut ctx)?
                .logits
                .detach();
            let n = b.labels.dims1()?;
            let loss = nn::loss::cross_entropy(&logits, &b.labels, opts.label_smoothing)?
                .to_scalar::<f32>()? as f64;
            let (c, c5) = nn::loss::correct_topk(&logits, &b.labels, 5)?;
            correct += c;
            correct5 += c5;
            total += n;
            loss_sum += loss * n as f64;
        }
        if total == 0 {
            anyhow::bail!("the validation split is empty");
        }
        Ok(Score {
            accuracy: correct as f64 / total as f64,
            loss: loss_sum / total as f64,
            top5: opts.top5.then(|| correct5 as f64 / total as f64),
        })
    });
    let vals: BTreeMap<String, Tensor> = saved.into_iter().collect();
    for (k, v) in store.buffers() {
        if let Some(t) = vals.get(&k) {
            v.set(t)?;
        }
    }
    result
}
