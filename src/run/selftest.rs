//! `runner selftest`: each space's supernet on a fixed batch, on the CPU with runner's own
//! kernels and on a second device (a CUDA GPU, or the CPU through the portable ops that CUDA
//! runs), compared: train-mode logits, loss, every parameter gradient, the updated BatchNorm
//! buffers and eval-mode logits. It is how `scripts/gpu-check.sh` checks a GPU build on a GPU
//! machine, where no Rust toolchain (and so no test binary) exists.

use crate::config::{DartsSpace, FinalPool, Nb101Space, Nb201Space, ProxylessSpace, PtbSpace};
use crate::nn::{self, Mode, Store};
use crate::rng::{self, Rng};
use crate::space::ptb_model::{self, Masks, PtbNet};
use crate::space::{darts, nb101, nb201, proxyless, ptb, Ctx, Space, Supernet};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// The device compared with the native CPU path.
#[derive(Clone, Debug)]
pub enum Target {
    /// The CPU through the portable (candle-op) path: the code CUDA runs, checked on the host.
    Portable,
    /// CUDA device `index`.
    Cuda(usize),
}

/// One space's comparison: the largest relative error of each kind of output.
#[derive(Clone, Debug)]
pub struct SpaceCheck {
    pub space: &'static str,
    /// (what, max |a - b| / max |b|) for every compared tensor group.
    pub errors: Vec<(String, f64)>,
}

impl SpaceCheck {
    pub fn worst(&self) -> f64 {
        self.errors.iter().map(|e| e.1).fold(0.0, f64::max)
    }
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|y| y * y).sum::<f64>().sqrt()
}

/// Relative error of `got` against the CPU's `want`: `||got - want|| / max(||want||, floor)`
/// (Euclidean norms). A norm rather than a maximum because a few elements legitimately
/// differ: a value within rounding of a ReLU/ReLU6 kink can land on the other side on the
/// other device and pass or stop its gradient. `floor` (a small fraction of the largest norm
/// of the tensor's group) keeps analytically-zero gradients, such as a BatchNorm bias feeding
/// another BatchNorm, from dividing float32 noise by nothing.
fn rel(got: &Tensor, want: &Tensor, floor: f64) -> Result<f64> {
    let (a, b) = (host(got)?, host(want)?);
    if a.len() != b.len() {
        bail!("shapes differ: {} vs {} values", a.len(), b.len());
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Ok(f64::INFINITY);
    }
    let diff: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    Ok(norm(&diff) / norm(&b).max(floor).max(f64::MIN_POSITIVE))
}

/// The worst relative error over a group of named tensors (`want` from the CPU), each floored
/// at 1e-3 of the group's largest norm.
fn worst_of(
    group: &str,
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
) -> Result<(String, f64)> {
    let mut largest = 0f64;
    for t in want.values() {
        largest = largest.max(norm(&host(t)?));
    }
    let mut worst = (group.to_string(), 0f64);
    for (name, w) in want {
        let g = got
            .get(name)
            .with_context(|| format!("{group}: {name} missing on the compared device"))?;
        let e = rel(g, w, 1e-3 * largest).with_context(|| format!("{group}: {name}"))?;
        if e > worst.1 {
            worst = (format!("{group} (worst: {name})"), e);
        }
    }
    Ok(worst)
}

/// What one side computed.
struct Side {
    logits: Tensor,
    loss: Tensor,
    grads: BTreeMap<String, Tensor>,
    buffers: BTreeMap<String, Tensor>,
    eval_logits: Tensor,
}

fn compare(space: &'static str, cpu: &Side, other: &Side) -> Result<SpaceCheck> {
    if cpu.grads.keys().ne(other.grads.keys()) {
        bail!("{space}: the two sides give gradients to different parameters");
    }
    let errors = vec![
        (
            "train logits".to_string(),
            rel(&other.logits, &cpu.logits, 0.0)?,
        ),
        ("loss".to_string(), rel(&other.loss, &cpu.loss, 0.0)?),
        (
            "eval logits".to_string(),
            rel(&other.eval_logits, &cpu.eval_logits, 0.0)?,
        ),
        worst_of("gradients", &other.grads, &cpu.grads)?,
        worst_of("BN buffers", &other.buffers, &cpu.buffers)?,
    ];
    Ok(SpaceCheck { space, errors })
}

fn params_grads(
    store: &Store,
    grads: &candle_core::backprop::GradStore,
) -> BTreeMap<String, Tensor> {
    store
        .params()
        .into_iter()
        .filter_map(|(name, v)| grads.get(v.as_tensor()).map(|g| (name, g.clone())))
        .collect()
}

fn buffers(store: &Store) -> Result<BTreeMap<String, Tensor>> {
    store
        .buffers()
        .into_iter()
        .map(|(name, v)| Ok((name, v.as_tensor().copy()?)))
        .collect()
}

/// An image batch and labels drawn from a fixed stream, on `dev`.
fn image_batch(n: usize, hw: usize, classes: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut r = rng::stream(7, "selftest-batch", &[]);
    let x = nn::init::uniform(&mut r, &[n, 3, hw, hw], -2.0, 2.0, &Device::Cpu)?;
    let y: Vec<u32> = (0..n).map(|i| (i * 7 % classes) as u32).collect();
    Ok((x.to_device(dev)?, Tensor::new(y.as_slice(), dev)?))
}

/// One image supernet on one device: build with the fixed seed, train-mode forward, loss
/// (plus the weighted auxiliary loss), backward, then eval-mode forward.
fn image_side<N: Supernet>(
    build: &dyn Fn(&Store, &mut Rng) -> Result<N>,
    arch: &N::Arch,
    hw: usize,
    classes: usize,
    dev: &Device,
    portable: bool,
) -> Result<Side> {
    let run = || -> Result<Side> {
        let store = Store::new(dev);
        let mut init = rng::stream(0, "init", &[]);
        let net = build(&store, &mut init)?;
        let (x, y) = image_batch(16, hw, classes, dev)?;
        let mut r = rng::stream(0, "selftest-forward", &[]);
        let out = net.forward(&x, arch, &mut Ctx::new(Mode::Train, &mut r))?;
        let mut loss = nn::loss::cross_entropy(&out.logits, &y, 0.0)?;
        if let Some(aux) = &out.aux_logits {
            loss = (loss + (nn::loss::cross_entropy(aux, &y, 0.0)? * net.aux_weight())?)?;
        }
        let grads = loss.backward()?;
        let eval = |r: &mut Rng| -> Result<Tensor> {
            Ok(net.forward(&x, arch, &mut Ctx::new(Mode::Eval, r))?.logits)
        };
        let eval_logits = eval(&mut rng::stream(0, "selftest-eval", &[]))?;
        // Evaluation runs under `nn::no_grad`: same logits, and no parameter may still be
        // recorded in a backward graph (one that is keeps every activation alive).
        let free = nn::no_grad(|| eval(&mut rng::stream(0, "selftest-eval", &[])))?;
        let diff = (&free - &eval_logits)?.abs()?.flatten_all()?.max(0)?;
        if diff.to_scalar::<f32>()? != 0.0 {
            bail!("evaluation under no_grad changed the logits");
        }
        let g = free.sum_all()?.backward()?;
        if let Some((name, _)) = store
            .params()
            .iter()
            .find(|(_, v)| g.get(v.as_tensor()).is_some())
        {
            bail!("evaluation under no_grad still records a backward graph through {name}");
        }
        Ok(Side {
            logits: out.logits.to_device(&Device::Cpu)?,
            loss: loss.to_device(&Device::Cpu)?,
            grads: params_grads(&store, &grads),
            buffers: buffers(&store)?,
            eval_logits: eval_logits.to_device(&Device::Cpu)?,
        })
    };
    if portable {
        nn::with_portable_ops(run)
    } else {
        run()
    }
}

fn check_image<N: Supernet>(
    space: &'static str,
    build: &dyn Fn(&Store, &mut Rng) -> Result<N>,
    arch: &N::Arch,
    hw: usize,
    classes: usize,
    target: &Target,
) -> Result<SpaceCheck> {
    let cpu = image_side(build, arch, hw, classes, &Device::Cpu, false)
        .with_context(|| format!("{space} on the CPU"))?;
    let other = match target {
        Target::Portable => image_side(build, arch, hw, classes, &Device::Cpu, true),
        Target::Cuda(i) => {
            let dev =
                Device::new_cuda(*i).with_context(|| format!("cannot open CUDA device {i}"))?;
            image_side(build, arch, hw, classes, &dev, false)
        }
    }
    .with_context(|| format!("{space} on the compared device"))?;
    compare(space, &cpu, &other)
}

/// DARTS-PTB on one device: a fixed token batch through the language model (dropout masks
/// off), loss with AR/TAR, backward, eval forward.
fn ptb_side(cfg: &PtbSpace, arch: &ptb::Arch, dev: &Device, portable: bool) -> Result<Side> {
    let run = || -> Result<Side> {
        let (vocab, len, n) = (50usize, 6usize, 4usize);
        let store = Store::new(dev);
        let mut init = rng::stream(0, "init", &[]);
        let net = PtbNet::new(&store.root(), cfg, vocab, &mut init)?;
        let tok: Vec<u32> = (0..len * n).map(|i| (i * 13 % vocab) as u32).collect();
        let tgt: Vec<u32> = (0..len * n)
            .map(|i| ((i * 17 + 3) % vocab) as u32)
            .collect();
        let tokens = Tensor::from_vec(tok, (len, n), dev)?;
        let targets = Tensor::from_vec(tgt, (len, n), dev)?;
        let hidden = net.zero_hidden(n)?;
        let out = net.forward(&tokens, &hidden, arch, &Masks::none(), true)?;
        let loss = ptb_model::loss(&out, &targets, cfg.alpha, cfg.beta)?;
        let grads = loss.total.backward()?;
        let ev = net.forward(&tokens, &hidden, arch, &Masks::none(), false)?;
        Ok(Side {
            logits: out.logits.to_device(&Device::Cpu)?,
            loss: loss.total.to_device(&Device::Cpu)?,
            grads: params_grads(&store, &grads),
            buffers: BTreeMap::new(),
            eval_logits: ev.logits.to_device(&Device::Cpu)?,
        })
    };
    if portable {
        nn::with_portable_ops(run)
    } else {
        run()
    }
}

fn check_ptb(target: &Target) -> Result<SpaceCheck> {
    let cfg = PtbSpace {
        embedding: 16,
        hidden: 16,
        dropout: 0.0,
        dropout_rnn_h: 0.0,
        dropout_rnn_x: 0.0,
        dropout_inp: 0.0,
        dropout_emb: 0.0,
        init_range: 0.04,
        alpha: 0.5,
        beta: 0.5,
    };
    let arch = ptb::Ptb.sample(&mut rng::stream(3, "selftest-arch", &[]));
    let cpu = ptb_side(&cfg, &arch, &Device::Cpu, false).context("ptb on the CPU")?;
    let other = match target {
        Target::Portable => ptb_side(&cfg, &arch, &Device::Cpu, true),
        Target::Cuda(i) => {
            let dev =
                Device::new_cuda(*i).with_context(|| format!("cannot open CUDA device {i}"))?;
            ptb_side(&cfg, &arch, &dev, false)
        }
    }
    .context("ptb on the compared device")?;
    compare("ptb", &cpu, &other)
}

/// Runs the comparison for every space.
pub fn run(target: &Target) -> Result<Vec<SpaceCheck>> {
    let mut out = vec![];
    let mut r = rng::stream(3, "selftest-arch", &[]);

    let sc = Nb201Space {
        channels: 4,
        cells_per_stage: 1,
        bn_momentum: 0.1,
    };
    let space = nb201::Nb201::new();
    let arch = space.sample(&mut r);
    out.push(check_image(
        "nb201",
        &|s: &Store, r: &mut Rng| Ok(nb201::Nb201Net::new(&s.root(), &sc, 10, r)?),
        &arch,
        16,
        10,
        target,
    )?);

    let sc = Nb101Space {
        channels: 8,
        stacks: 2,
        cells_per_stack: 1,
        bn_momentum: 0.003,
        bn_eps: 1e-5,
    };
    let space = nb101::Nb101::new();
    let arch = space.sample(&mut r);
    out.push(check_image(
        "nb101",
        &|s: &Store, r: &mut Rng| Ok(nb101::Nb101Net::new(&s.root(), &sc, 10, r)?),
        &arch,
        16,
        10,
        target,
    )?);

    let sc = DartsSpace {
        channels: 4,
        layers: 5,
        auxiliary_weight: 0.4,
        drop_path: 0.0,
        final_pool: FinalPool::default(),
    };
    let arch = darts::Darts::new().sample(&mut r);
    out.push(check_image(
        "darts",
        &|s: &Store, r: &mut Rng| Ok(darts::DartsNet::new(&s.root(), &sc, 10, r)?),
        &arch,
        32,
        10,
        target,
    )?);

    let sc = ProxylessSpace {
        width_mult: 0.25,
        bn_momentum: 0.1,
        bn_eps: 1e-3,
    };
    let arch = proxyless::Proxyless.sample(&mut r);
    out.push(check_image(
        "proxyless",
        &|s: &Store, r: &mut Rng| Ok(proxyless::ProxylessNet::new(&s.root(), &sc, 10, r)?),
        &arch,
        48,
        10,
        target,
    )?);

    out.push(check_ptb(target)?);
    Ok(out)
}

/// The printed report; `Err` when any space exceeds `tolerance`.
pub fn report(checks: &[SpaceCheck], what: &str, tolerance: f64) -> (String, bool) {
    let mut t = format!("native CPU kernels vs {what}: max relative error per output\n");
    let mut ok = true;
    for c in checks {
        let worst = c.worst();
        let verdict = if worst <= tolerance { "ok" } else { "FAIL" };
        ok &= worst <= tolerance;
        t.push_str(&format!("{:<10} {verdict:<4} worst {worst:.2e}\n", c.space));
        for (what, e) in &c.errors {
            t.push_str(&format!("    {what:<40} {e:.2e}\n"));
        }
    }
    (t, ok)
}
