//! runner's side of a benchmark row, run in its own process (`runner bench-worker`) so that
//! its thread count and its peak memory are its own: build the space's supernet at the spec's
//! shape, then time the training step and the architecture evaluation after warm-up.
//!
//! The training step is the pipeline's: forward of the fixed architecture, the space's loss
//! (auxiliary head, label smoothing, PTB's TAR term), backward, gradient-norm clip where the
//! study clips, SGD step. The evaluation is `train::evaluate::score_with`'s work on tensors
//! already in memory (no data loading on either side): BN recalibration over the spec's
//! batches in train mode (drop-path and auxiliary head on), the recalibrated statistics
//! averaged, a validation pass (loss, top-1 and top-5), the buffers restored. PTB has no
//! BatchNorm: its evaluation is a validation pass over fixed-length windows from a zero
//! hidden state.
//!
//! On CUDA (`--device cuda`) every timed run starts and ends with a device synchronisation, so
//! that a phase's time covers the kernels it queued and not only their launch. Peak memory is
//! the process's resident memory on either device: runner does not measure its GPU memory
//! (candle keeps no allocator statistics to read), and says so in the table and the JSON.

use super::memory;
use super::spec::Spec;
use crate::config::Space as SpaceCfg;
use crate::nn::{self, Mode, Store};
use crate::rng::{self, Rng};
use crate::space::darts::{Darts, DartsNet};
use crate::space::nb101::{Nb101, Nb101Net};
use crate::space::nb201::{Nb201, Nb201Net};
use crate::space::proxyless::{Proxyless, ProxylessNet};
use crate::space::ptb::Ptb;
use crate::space::ptb_model::{self, Masks, PtbNet};
use crate::space::{Ctx, Space, Supernet};
use crate::train::clip;
use crate::train::sgd::{Sgd, SgdConfig};
use crate::tricks::multipath;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// What one side reports for one round (the PyTorch twins print the same fields).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SideResult {
    /// Milliseconds of each timed training step.
    pub train_step: Vec<f64>,
    /// Milliseconds of each timed evaluation.
    pub evaluate: Vec<f64>,
    /// Peak RSS (MiB) during the training phase (model build, warm-up and timed steps).
    pub train_peak_mib: Option<f64>,
    /// Peak RSS (MiB) during the evaluation phase (the model stays resident).
    pub eval_peak_mib: Option<f64>,
    /// Whether the peak could be reset between phases (otherwise the evaluation peak covers
    /// the whole process).
    pub peak_reset: bool,
    /// Peak GPU memory (MiB) held by the side's allocator during the training phase, where the
    /// side measures it: the PyTorch twins on CUDA (`torch.cuda.max_memory_allocated`, reset
    /// between the phases). runner never fills it in (see the module comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_gpu_peak_mib: Option<f64>,
    /// The same during the evaluation phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_gpu_peak_mib: Option<f64>,
    /// Threads the side computed with.
    pub threads: usize,
    /// The PyTorch version (twins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
}

/// The honesty check's numbers: two deterministic steps (drop-path and dropout off) on the
/// same batch from the same initial weights: the first step's loss (forward) and gradient
/// norm before clipping (backward), and the second step's loss (after the clip and the
/// optimizer step).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckResult {
    pub losses: Vec<f64>,
}

/// The two phases of a benchmark row.
trait Phases {
    /// One training step; `stochastic` false turns drop-path and dropout off (the check).
    /// Returns the training loss and, in a deterministic step, the gradient norm before
    /// clipping.
    fn step(&mut self, stochastic: bool) -> Result<(f64, Option<f64>)>;
    fn evaluate(&mut self) -> Result<()>;
    /// Every parameter and buffer under runner's names, plus the step's inputs as
    /// `bench.x` / `bench.y`.
    fn export(&self, path: &Path) -> Result<()>;
}

fn sgd(store: &Store, spec: &Spec) -> Sgd {
    let t = &spec.train;
    Sgd::new(
        store.params(),
        SgdConfig {
            lr: t.lr,
            momentum: t.momentum,
            nesterov: t.nesterov,
            weight_decay: t.weight_decay,
            unsampled: crate::config::Unsampled::Pytorch1,
        },
    )
}

/// Clips where the study clips and returns the norm before clipping; a timed step without
/// clipping does no extra work (`None`), a check step measures the norm anyway.
fn grad_norm(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[Var],
    max_norm: f64,
    stochastic: bool,
) -> Result<Option<f64>> {
    Ok(if max_norm > 0.0 {
        Some(clip::clip_grad_norm(grads, vars, max_norm)?)
    } else if !stochastic {
        // An infinite bound scales nothing.
        Some(clip::clip_grad_norm(grads, vars, f64::INFINITY)?)
    } else {
        None
    })
}

fn labels(rng: &mut Rng, n: usize, classes: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..classes as u32))
        .collect();
    Ok(Tensor::new(v, dev)?)
}

fn export(store: &Store, inputs: &[(&str, &Tensor)], path: &Path) -> Result<()> {
    let mut all: Vec<(String, Tensor)> = store.tensors().into_iter().collect();
    for (k, t) in inputs {
        all.push((format!("bench.{k}"), (*t).clone()));
    }
    Tensor::write_npz(&all, path).with_context(|| format!("writing {}", path.display()))
}

/// An image classifier's benchmark.
struct ImageBench<N: Supernet> {
    net: N,
    store: Store,
    opt: Sgd,
    vars: Vec<Var>,
    arch: N::Arch,
    x: Tensor,
    y: Tensor,
    xr: Tensor,
    xv: Tensor,
    yv: Tensor,
    spec: Spec,
    calls: u64,
}

impl<N: Supernet> ImageBench<N> {
    fn new(net: N, store: Store, arch: N::Arch, spec: &Spec, rng: &mut Rng) -> Result<Self> {
        let dev = store.device().clone();
        let s = spec.image_size;
        let img = |rng: &mut Rng, n: usize| nn::init::normal(rng, &[n, 3, s, s], 1.0, &dev);
        let x = img(rng, spec.batch)?;
        let y = labels(rng, spec.batch, spec.classes, &dev)?;
        let xr = img(rng, spec.recal_batch.max(1))?;
        let xv = img(rng, spec.eval_batch)?;
        let yv = labels(rng, spec.eval_batch, spec.classes, &dev)?;
        let opt = sgd(&store, spec);
        let vars = store.params().into_iter().map(|(_, v)| v).collect();
        Ok(Self {
            net,
            store,
            opt,
            vars,
            arch,
            x,
            y,
            xr,
            xv,
            yv,
            spec: spec.clone(),
            calls: 0,
        })
    }
}

impl<N: Supernet> Phases for ImageBench<N> {
    fn step(&mut self, stochastic: bool) -> Result<(f64, Option<f64>)> {
        let t = &self.spec.train;
        let drop_path = if stochastic { t.drop_path } else { 0.0 };
        let (seed, call) = (self.spec.seed, self.calls);
        self.calls += 1;
        let (mut grads, out) = multipath::accumulate_smoothed(
            &self.net,
            &self.x,
            &self.y,
            std::slice::from_ref(&self.arch),
            drop_path,
            &self.vars,
            |_| rng::stream(seed, "bench-dropout", &[call]),
            t.label_smoothing,
        )?;
        let norm = grad_norm(&mut grads, &self.vars, t.grad_clip, stochastic)?;
        self.opt.step(&grads)?;
        Ok((out.first().map_or(f64::NAN, |o| o.loss), norm))
    }

    fn evaluate(&mut self) -> Result<()> {
        let saved: Vec<Tensor> = self
            .store
            .buffers()
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        let spec = &self.spec;
        // As `train::evaluate::score_with`: no backward graph.
        let result = nn::no_grad(|| -> Result<()> {
            if spec.recal_steps > 0 {
                self.store.begin_recalibration();
                let mut r = rng::stream(spec.seed, "bench-recal", &[self.calls]);
                for _ in 0..spec.recal_steps {
                    let mut ctx = Ctx {
                        mode: Mode::Recalibrate,
                        drop_path: spec.train.drop_path,
                        rng: &mut r,
                    };
                    self.net.forward(&self.xr, &self.arch, &mut ctx)?;
                }
                self.store.finish_recalibration()?;
            }
            let mut r = rng::stream(spec.seed, "bench-eval", &[]);
            let (mut correct, mut loss_sum) = (0usize, 0f64);
            for _ in 0..spec.valid_batches {
                let logits = self
                    .net
                    .forward(&self.xv, &self.arch, &mut Ctx::new(Mode::Eval, &mut r))?
                    .logits
                    .detach();
                let l = nn::loss::cross_entropy(&logits, &self.yv, spec.train.label_smoothing)?;
                loss_sum += l.to_scalar::<f32>()? as f64;
                correct += nn::loss::correct_topk(&logits, &self.yv, 5)?.0;
            }
            std::hint::black_box((correct, loss_sum));
            Ok(())
        });
        for ((_, v), t) in self.store.buffers().iter().zip(saved) {
            v.set(&t)?;
        }
        result
    }

    fn export(&self, path: &Path) -> Result<()> {
        export(&self.store, &[("x", &self.x), ("y", &self.y)], path)
    }
}

/// DARTS-PTB's benchmark: one training batch of `bptt` x `batch` tokens with the hidden state
/// carried (detached) from step to step, as the study's training loop.
struct PtbBench {
    net: PtbNet,
    store: Store,
    opt: Sgd,
    vars: Vec<Var>,
    arch: <Ptb as Space>::Arch,
    x: Tensor,
    y: Tensor,
    hidden: Tensor,
    valid: Tensor,
    alpha: f64,
    beta: f64,
    spec: Spec,
    calls: u64,
}

impl PtbBench {
    fn new(spec: &Spec, cfg: &crate::config::PtbSpace, dev: &Device) -> Result<Self> {
        let store = Store::new(dev);
        let mut rng = rng::stream(spec.seed, "bench-init", &[]);
        let net = PtbNet::new(&store.root(), cfg, spec.classes, &mut rng)?;
        let arch = Ptb::decode(&spec.arch)?;
        let mut tokens = |rows: usize, cols: usize| -> Result<Tensor> {
            let v: Vec<u32> = (0..rows * cols)
                .map(|_| rng.random_range(0..spec.classes as u32))
                .collect();
            Ok(Tensor::from_vec(v, (rows, cols), dev)?)
        };
        let x = tokens(spec.bptt, spec.batch)?;
        let y = tokens(spec.bptt, spec.batch)?;
        let valid = tokens(spec.valid_batches * spec.bptt + 1, spec.eval_batch)?;
        let hidden = net.zero_hidden(spec.batch)?;
        let opt = sgd(&store, spec);
        let vars = store.params().into_iter().map(|(_, v)| v).collect();
        Ok(Self {
            net,
            store,
            opt,
            vars,
            arch,
            x,
            y,
            hidden,
            valid,
            alpha: cfg.alpha,
            beta: cfg.beta,
            spec: spec.clone(),
            calls: 0,
        })
    }
}

impl Phases for PtbBench {
    fn step(&mut self, stochastic: bool) -> Result<(f64, Option<f64>)> {
        let (b, h) = (self.spec.batch, self.net.hidden);
        let dev = self.store.device().clone();
        let masks = if stochastic {
            let mut r = rng::stream(self.spec.seed, "bench-dropout", &[self.calls]);
            Masks::draw(&mut r, &self.net.dropouts, self.net.vocab, b, h, h, &dev)?
        } else {
            Masks::none()
        };
        self.calls += 1;
        let fwd = self
            .net
            .forward(&self.x, &self.hidden, &self.arch, &masks, true)?;
        self.hidden = fwd.hidden.detach();
        let l = ptb_model::loss(&fwd, &self.y, self.alpha, self.beta)?;
        let total = l.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let ce = l.cross_entropy.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let correct = ptb_model::correct(&fwd.logits, &self.y)?;
        std::hint::black_box((ce, correct));
        let mut grads = l.total.backward()?;
        let norm = grad_norm(
            &mut grads,
            &self.vars,
            self.spec.train.grad_clip,
            stochastic,
        )?;
        self.opt.step(&grads)?;
        Ok((total, norm))
    }

    fn evaluate(&mut self) -> Result<()> {
        let (bptt, n) = (self.spec.bptt, self.spec.eval_batch);
        let mut hidden = self.net.zero_hidden(n)?;
        let (mut total, mut correct) = (0f64, 0usize);
        for w in 0..self.spec.valid_batches {
            let x = self.valid.narrow(0, w * bptt, bptt)?;
            let y = self.valid.narrow(0, w * bptt + 1, bptt)?;
            let out = self
                .net
                .forward(&x, &hidden, &self.arch, &Masks::none(), false)?;
            hidden = out.hidden.clone();
            let ce = ptb_model::loss(&out, &y, 0.0, 0.0)?.cross_entropy;
            total += ce.to_dtype(DType::F64)?.to_scalar::<f64>()? * bptt as f64;
            correct += ptb_model::correct(&out.logits, &y)?;
        }
        std::hint::black_box((total, correct));
        Ok(())
    }

    fn export(&self, path: &Path) -> Result<()> {
        export(
            &self.store,
            &[("x", &self.x), ("y", &self.y), ("hidden", &self.hidden)],
            path,
        )
    }
}

fn image<S: Space, N: Supernet<Arch = S::Arch> + 'static>(
    spec: &Spec,
    build: impl FnOnce(&Store, &mut Rng) -> candle_core::Result<N>,
    dev: &Device,
) -> Result<Box<dyn Phases>> {
    let store = Store::new(dev);
    let mut rng = rng::stream(spec.seed, "bench-init", &[]);
    let net = build(&store, &mut rng)?;
    let arch = S::decode(&spec.arch).context("the benchmark architecture")?;
    Ok(Box::new(ImageBench::new(net, store, arch, spec, &mut rng)?))
}

fn build(spec: &Spec, dev: &Device) -> Result<Box<dyn Phases>> {
    let k = spec.classes;
    Ok(match &spec.space {
        SpaceCfg::Nb101(s) => {
            image::<Nb101, _>(spec, |st, r| Nb101Net::new(&st.root(), s, k, r), dev)?
        }
        SpaceCfg::Nb201(s) => {
            image::<Nb201, _>(spec, |st, r| Nb201Net::new(&st.root(), s, k, r), dev)?
        }
        SpaceCfg::Darts(s) => {
            image::<Darts, _>(spec, |st, r| DartsNet::new(&st.root(), s, k, r), dev)?
        }
        SpaceCfg::Proxyless(s) => {
            image::<Proxyless, _>(spec, |st, r| ProxylessNet::new(&st.root(), s, k, r), dev)?
        }
        SpaceCfg::Ptb(s) => Box::new(PtbBench::new(spec, s, dev)?),
    })
}

/// Milliseconds of one run of `f`. CUDA queues kernels and returns, so the device is
/// synchronised before the clock starts (nothing earlier still running is counted) and before
/// it is read (everything `f` queued is); on the CPU `synchronize` does nothing.
fn time_ms(dev: &Device, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    dev.synchronize()?;
    let t = Instant::now();
    f()?;
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Builds the spec's model on `dev` and times its phases.
pub fn run(spec: &Spec, dev: &Device) -> Result<SideResult> {
    let mut b = build(spec, dev)?;
    let mut out = SideResult {
        threads: candle_core::utils::get_num_threads(),
        ..Default::default()
    };
    for _ in 0..spec.warmup {
        b.step(true)?;
    }
    for _ in 0..spec.repeats {
        out.train_step
            .push(time_ms(dev, &mut || b.step(true).map(|_| ()))?);
    }
    out.train_peak_mib = memory::peak_mib();
    crate::alloc::release_free_memory();
    out.peak_reset = memory::reset_peak();
    for _ in 0..spec.warmup {
        b.evaluate()?;
    }
    for _ in 0..spec.repeats {
        out.evaluate.push(time_ms(dev, &mut || b.evaluate())?);
    }
    out.eval_peak_mib = memory::peak_mib();
    Ok(out)
}

/// Where the check writes the weights after its first step, next to `npz`.
pub fn after_path(npz: &Path) -> std::path::PathBuf {
    npz.with_extension("after.npz")
}

/// The honesty check's runner side: writes the initial weights and the inputs to `npz` and
/// the weights after the first step to [`after_path`], and returns the first step's loss and
/// gradient norm (before clipping) and the second step's loss, computed on `dev`.
pub fn check(spec: &Spec, npz: &Path, dev: &Device) -> Result<CheckResult> {
    let mut b = build(spec, dev)?;
    b.export(npz)?;
    let (l1, g1) = b.step(false)?;
    b.export(&after_path(npz))?;
    let (l2, _) = b.step(false)?;
    Ok(CheckResult {
        losses: vec![l1, g1.unwrap_or(f64::NAN), l2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::bench::spec::{self, Timing, SPACES};

    #[test]
    fn every_space_runs_at_the_tiny_shape_and_its_loss_falls_on_a_repeated_batch() {
        let t = Timing {
            threads: 1,
            warmup: 0,
            repeats: 1,
        };
        for k in SPACES {
            let s = spec::spec(k, "tiny", t).unwrap();
            let r = run(&s, &Device::Cpu).unwrap();
            assert_eq!((r.train_step.len(), r.evaluate.len()), (1, 1), "{k}");
            assert_eq!(
                (r.train_gpu_peak_mib, r.eval_gpu_peak_mib),
                (None, None),
                "{k}"
            );
            assert!(r.train_step[0] > 0.0 && r.evaluate[0] > 0.0, "{k}");
            // Deterministic steps on one batch: the losses are finite and one SGD step on the
            // batch lowers its loss (PTB's lr 40 may overshoot later, so only the first step).
            let mut b = build(&s, &Device::Cpu).unwrap();
            let l: Vec<f64> = (0..3).map(|_| b.step(false).unwrap().0).collect();
            assert!(l.iter().all(|v| v.is_finite()), "{k}: {l:?}");
            assert!(l[1] < l[0], "{k}: {l:?}");
        }
    }

    #[test]
    fn evaluation_restores_the_buffers() {
        let t = Timing {
            threads: 1,
            warmup: 0,
            repeats: 1,
        };
        let s = spec::spec("nb201", "tiny", t).unwrap();
        let dev = Device::Cpu;
        let store = Store::new(&dev);
        let mut rng = rng::stream(0, "bench-init", &[]);
        let SpaceCfg::Nb201(c) = &s.space else {
            panic!()
        };
        let net = Nb201Net::new(&store.root(), c, s.classes, &mut rng).unwrap();
        let arch = Nb201::decode(&s.arch).unwrap();
        let mut b = ImageBench::new(net, store.clone(), arch, &s, &mut rng).unwrap();
        b.step(true).unwrap();
        let before: Vec<(String, Tensor)> = store
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.copy().unwrap()))
            .collect();
        b.evaluate().unwrap();
        let after = store.tensors();
        for (k, v) in before {
            let d = (v - &after[&k]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
        }
    }
}
