//! BatchNorm2d with PyTorch semantics and three modes (train, eval, recalibrate).
//!
//! On the CPU (f32) the batch statistics are computed in plain Rust and the normalisation is
//! one fused custom op whose backward yields dx, dweight and dbias in two passes; other
//! devices compose candle's differentiable ops to the same function.

use super::activation;
use super::host::{
    cpu_tensor, f32_data, is_cpu_f32, nchw, par_build, par_planes, par_zip, param, sum_g_gx,
    sum_shifted, sum_sq_shifted, with_f32,
};
use super::store::{Path, Recalibrate};
use super::Mode;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, Var,
};
use std::sync::{Arc, Mutex, MutexGuard};

/// An activation applied by the normalisation op itself (`BatchNorm::forward_act`).
///
/// Why fused: candle's graph keeps every op's input alive until the backward pass ends, so
/// BN followed by a separate ReLU holds three full-size tensors per layer (conv output, BN
/// output, activation output) where PyTorch's in-place ReLU holds two. The fused op keeps
/// only its input and its clipped output, and recovers the activation's mask from the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Act {
    /// The upper clip bound: `None` for no clipping, `Some(inf)` for ReLU.
    fn hi(self) -> Option<f32> {
        match self {
            Act::Identity => None,
            Act::Relu => Some(f32::INFINITY),
            Act::Relu6 => Some(6.0),
        }
    }
}

/// A BatchNorm2d layer. Running statistics are buffers (never trained); in `Mode::Train` they
/// follow PyTorch's momentum update with the unbiased batch variance; in `Mode::Recalibrate`
/// the per-batch mean and biased variance are recorded and averaged by
/// `Store::finish_recalibration`.
#[derive(Clone)]
pub struct BatchNorm {
    inner: Arc<BnInner>,
}

struct BnInner {
    weight: Option<Var>,
    bias: Option<Var>,
    running_mean: Var,
    running_var: Var,
    momentum: f64,
    eps: f64,
    channels: usize,
    /// The layer's name in the store, for error messages.
    label: String,
    recal: Mutex<RecalSums>,
}

/// Batch-size-weighted sums of the per-batch statistics recorded since the last
/// `begin_recalibration`, as f64 tensors on the layer's device.
#[derive(Default)]
struct RecalSums {
    count: f64,
    mean: Option<Tensor>,
    var: Option<Tensor>,
}

impl BatchNorm {
    /// `affine`: learnable weight (init 1) and bias (init 0). Registers itself with the store
    /// for recalibration.
    pub fn new(
        path: &Path,
        channels: usize,
        affine: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<Self> {
        if channels == 0 {
            bail!(
                "BatchNorm {}: zero channels",
                path.name("").trim_end_matches('.')
            );
        }
        let dev = path.device();
        let ones = Tensor::ones(channels, DType::F32, dev)?;
        let zeros = Tensor::zeros(channels, DType::F32, dev)?;
        let (weight, bias) = if affine {
            (
                Some(path.param("weight", ones.clone())?),
                Some(path.param("bias", zeros.clone())?),
            )
        } else {
            (None, None)
        };
        let running_mean = path.buffer("running_mean", zeros)?;
        let running_var = path.buffer("running_var", ones)?;
        let label = path.name("running_mean");
        let label = match label.strip_suffix(".running_mean") {
            Some(l) => l.to_string(),
            None => "<root>".to_string(),
        };
        let inner = Arc::new(BnInner {
            weight,
            bias,
            running_mean,
            running_var,
            momentum,
            eps,
            channels,
            label,
            recal: Mutex::new(RecalSums::default()),
        });
        path.store().register_recalibrate(inner.clone());
        Ok(Self { inner })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_act(x, mode, Act::Identity)
    }

    /// The normalisation followed by `act`, as one op on the CPU (same values and gradients
    /// as `forward` then `activation::relu`/`relu6`, bit for bit, with one tensor less kept
    /// for the backward pass).
    pub fn forward_act(&self, x: &Tensor, mode: Mode, act: Act) -> Result<Tensor> {
        let me = &self.inner;
        let (n, c, h, w) = nchw(x.dims(), &format!("BatchNorm {}", me.label))?;
        if c != me.channels {
            bail!(
                "BatchNorm {}: input has {c} channels, layer has {}",
                me.label,
                me.channels
            );
        }
        let count = n * h * w;
        if count == 0 {
            bail!(
                "BatchNorm {}: empty input of shape {:?}",
                me.label,
                x.dims()
            );
        }
        if mode.batch_stats() && count < 2 {
            // PyTorch refuses too: the unbiased variance of one value is undefined.
            bail!(
                "BatchNorm {}: batch statistics need more than 1 value per channel, got input {:?}",
                me.label,
                x.dims()
            );
        }
        if is_cpu_f32(x) {
            self.forward_cpu(x, mode, act)
        } else {
            let y = self.forward_fallback(x, mode)?;
            match act {
                Act::Identity => Ok(y),
                Act::Relu => activation::relu_fallback(&y),
                Act::Relu6 => activation::relu6_fallback(&y),
            }
        }
    }

    /// The fused CPU path (f32 tensors on the host).
    fn forward_cpu(&self, x: &Tensor, mode: Mode, act: Act) -> Result<Tensor> {
        let me = &self.inner;
        let (mean, invstd, train) = match mode {
            Mode::Eval => {
                let rm = me
                    .running_mean
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?;
                let rv = me
                    .running_var
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?;
                (
                    rm,
                    rv.iter()
                        .map(|v| 1.0 / (v + me.eps).sqrt())
                        .collect::<Vec<_>>(),
                    false,
                )
            }
            Mode::Train | Mode::Recalibrate => {
                let (mean, var) = batch_stats_cpu(x)?;
                let invstd = var.iter().map(|v| 1.0 / (v + me.eps).sqrt()).collect();
                match mode {
                    Mode::Train => self.update_running(&mean, &var, x.dims())?,
                    _ => self.record(
                        Tensor::new(mean.as_slice(), x.device())?,
                        Tensor::new(var.as_slice(), x.device())?,
                        x.dims()[0],
                    )?,
                }
                (mean, invstd, true)
            }
        };
        let op = BnOp {
            mean: mean.iter().map(|&v| v as f32).collect(),
            invstd: invstd.iter().map(|&v| v as f32).collect(),
            train,
            hi: act.hi(),
        };
        match (&me.weight, &me.bias) {
            (Some(w), Some(b)) => x.apply_op3(&param(w), &param(b), op),
            _ => x.apply_op1(op),
        }
    }

    /// The same function from candle's differentiable ops, used for other devices and dtypes
    /// (public so that tests can compare it with the CPU op).
    pub fn forward_fallback(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let me = &self.inner;
        let dt = x.dtype();
        let c = me.channels;
        let (centered, invstd) = match mode {
            Mode::Eval => {
                let rm = me
                    .running_mean
                    .as_tensor()
                    .detach()
                    .to_dtype(dt)?
                    .reshape((1, c, 1, 1))?;
                let rv = me
                    .running_var
                    .as_tensor()
                    .detach()
                    .to_dtype(dt)?
                    .reshape((1, c, 1, 1))?;
                (x.broadcast_sub(&rm)?, (rv + me.eps)?.sqrt()?.recip()?)
            }
            Mode::Train | Mode::Recalibrate => {
                let mean = x.mean_keepdim((0, 2, 3))?;
                let centered = x.broadcast_sub(&mean)?;
                let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
                let (m, v) = (mean.detach().flatten_all()?, var.detach().flatten_all()?);
                match mode {
                    Mode::Train => self.update_running_tensors(&m, &v, x.dims())?,
                    _ => self.record(
                        m.to_dtype(DType::F64)?,
                        v.to_dtype(DType::F64)?,
                        x.dims()[0],
                    )?,
                }
                (centered, (var + me.eps)?.sqrt()?.recip()?)
            }
        };
        let y = centered.broadcast_mul(&invstd)?;
        match (&me.weight, &me.bias) {
            (Some(w), Some(b)) => {
                let w = param(w).to_dtype(dt)?.reshape((1, c, 1, 1))?;
                let b = param(b).to_dtype(dt)?.reshape((1, c, 1, 1))?;
                y.broadcast_mul(&w)?.broadcast_add(&b)
            }
            _ => Ok(y),
        }
    }

    /// `running = (1 - m) running + m batch`, with the unbiased batch variance.
    fn update_running(&self, mean: &[f64], var: &[f64], dims: &[usize]) -> Result<()> {
        let me = &self.inner;
        let count = (dims[0] * dims[2] * dims[3]) as f64;
        let unbias = count / (count - 1.0);
        let m = me.momentum;
        let rm = me
            .running_mean
            .as_tensor()
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let rv = me
            .running_var
            .as_tensor()
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let new_rm: Vec<f32> = rm
            .iter()
            .zip(mean)
            .map(|(&r, &b)| ((1.0 - m) * r + m * b) as f32)
            .collect();
        let new_rv: Vec<f32> = rv
            .iter()
            .zip(var)
            .map(|(&r, &b)| ((1.0 - m) * r + m * b * unbias) as f32)
            .collect();
        let dev = me.running_mean.device();
        me.running_mean
            .set(&Tensor::new(new_rm, dev)?.to_dtype(me.running_mean.dtype())?)?;
        me.running_var
            .set(&Tensor::new(new_rv, dev)?.to_dtype(me.running_var.dtype())?)?;
        Ok(())
    }

    fn update_running_tensors(&self, mean: &Tensor, var: &Tensor, dims: &[usize]) -> Result<()> {
        let me = &self.inner;
        let count = (dims[0] * dims[2] * dims[3]) as f64;
        let m = me.momentum;
        for (buf, batch, scale) in [
            (&me.running_mean, mean, 1.0),
            (&me.running_var, var, count / (count - 1.0)),
        ] {
            let batch = batch.to_dtype(buf.dtype())?;
            let new = ((buf.as_tensor().detach() * (1.0 - m))? + (batch * (m * scale))?)?;
            buf.set(&new)?;
        }
        Ok(())
    }

    /// Adds one batch's statistics (f64 tensors of shape (C,)) to the recalibration sums.
    fn record(&self, mean: Tensor, var: Tensor, batch: usize) -> Result<()> {
        let mut r = self.inner.lock_recal();
        let w = batch as f64;
        let (mean, var) = ((mean * w)?, (var * w)?);
        r.mean = Some(match r.mean.take() {
            Some(s) => s.add(&mean)?,
            None => mean,
        });
        r.var = Some(match r.var.take() {
            Some(s) => s.add(&var)?,
            None => var,
        });
        r.count += w;
        Ok(())
    }

    pub fn channels(&self) -> usize {
        self.inner.channels
    }

    pub fn weight(&self) -> Option<&Var> {
        self.inner.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Var> {
        self.inner.bias.as_ref()
    }

    pub fn running_mean(&self) -> &Var {
        &self.inner.running_mean
    }

    pub fn running_var(&self) -> &Var {
        &self.inner.running_var
    }
}

impl BnInner {
    fn lock_recal(&self) -> MutexGuard<'_, RecalSums> {
        // A panic elsewhere while holding the lock leaves the sums usable (each update is a
        // whole replacement), so poisoning is ignored.
        self.recal.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Recalibrate for BnInner {
    fn begin_recalibration(&self) {
        *self.lock_recal() = RecalSums::default();
    }

    fn finish_recalibration(&self) -> Result<()> {
        let sums = std::mem::take(&mut *self.lock_recal());
        let (Some(mean), Some(var)) = (sums.mean, sums.var) else {
            return Ok(());
        };
        for (buf, sum) in [(&self.running_mean, mean), (&self.running_var, var)] {
            let avg = (sum / sums.count)?
                .to_dtype(buf.dtype())?
                .to_device(buf.device())?;
            buf.set(&avg)?;
        }
        Ok(())
    }
}

/// Per-channel mean and biased variance over (N, H, W), accumulated in f64 over planes.
/// Each channel is shifted by its first value so that the one-pass variance does not cancel.
fn batch_stats_cpu(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, c, h, w) = nchw(x.dims(), "BatchNorm")?;
    let hw = h * w;
    let count = (n * hw) as f64;
    with_f32(x, |data| {
        let shift: Vec<f32> = (0..c).map(|ch| data[ch * hw]).collect();
        let mut s1 = vec![0f64; c];
        let mut s2 = vec![0f64; c];
        // Per-plane sums in parallel, added per channel in plane order (thread-count
        // independent).
        let sums = par_planes(&data[..n * c * hw], hw, |i, plane| {
            let sh = shift[i % c];
            (sum_shifted(plane, sh), sum_sq_shifted(plane, sh))
        });
        for (i, (a, b)) in sums.into_iter().enumerate() {
            s1[i % c] += a;
            s2[i % c] += b;
        }
        let mean = (0..c).map(|ch| shift[ch] as f64 + s1[ch] / count).collect();
        let var = (0..c)
            .map(|ch| (s2[ch] / count - (s1[ch] / count).powi(2)).max(0.0))
            .collect();
        Ok((mean, var))
    })
}

/// The fused normalisation `y = (x - mean) * invstd * w + b` with the statistics fixed at
/// construction. `train`: the statistics are the batch's own, so the backward differentiates
/// through them; otherwise they are constants (eval mode).
struct BnOp {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    train: bool,
    /// Clip the output to `[0, hi]` (ReLU: `hi = inf`); `None`: no activation.
    hi: Option<f32>,
}

impl BnOp {
    fn forward(
        &self,
        x: &[f32],
        dims: &[usize],
        w: Option<&[f32]>,
        b: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let (_, c, h, wd) = nchw(dims, "BatchNorm")?;
        let hw = h * wd;
        if c != self.mean.len() {
            bail!("BatchNorm: input {dims:?} for {} channels", self.mean.len());
        }
        let hw = hw.max(1);
        let n = x.len() / hw * hw;
        let y = par_build(n, hw, |start, out| {
            for (k, (o_plane, plane)) in out
                .chunks_mut(hw)
                .zip(x[start..].chunks_exact(hw))
                .enumerate()
            {
                let ch = (start / hw + k) % c;
                let scale = self.invstd[ch] * w.map_or(1.0, |w| w[ch]);
                let (m, shift) = (self.mean[ch], b.map_or(0.0, |b| b[ch]));
                match self.hi {
                    None => {
                        for (o, &v) in o_plane.iter_mut().zip(plane) {
                            o.write((v - m) * scale + shift);
                        }
                    }
                    Some(hi) => {
                        // The compare-select of `activation::relu6`: NaN passes through.
                        for (o, &v) in o_plane.iter_mut().zip(plane) {
                            let y = (v - m) * scale + shift;
                            o.write(if y <= 0.0 {
                                0.0
                            } else if y >= hi {
                                hi
                            } else {
                                y
                            });
                        }
                    }
                }
            }
        });
        Ok(y)
    }

    /// Returns dx and the per-channel dweight and dbias.
    fn backward(
        &self,
        x: &[f32],
        g: &[f32],
        dims: &[usize],
        w: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (n, c, h, wd) = nchw(dims, "BatchNorm")?;
        let hw = h * wd;
        if hw == 0 || c != self.mean.len() {
            bail!(
                "BatchNorm backward: input {dims:?} for {} channels",
                self.mean.len()
            );
        }
        if g.len() != x.len() || x.len() != n * c * hw {
            bail!(
                "BatchNorm backward: gradient of {} values for an input of {:?}",
                g.len(),
                dims
            );
        }
        let mut sg = vec![0f64; c];
        let mut sgx = vec![0f64; c];
        let sums = par_planes(g, hw, |i, gp| {
            sum_g_gx(gp, &x[i * hw..(i + 1) * hw], self.mean[i % c])
        });
        for (i, (a, b)) in sums.into_iter().enumerate() {
            sg[i % c] += a;
            sgx[i % c] += b;
        }
        let count = (n * hw) as f64;
        // dx = w invstd (g - mean(g) - xhat mean(g xhat)) in train mode; w invstd g in eval.
        let coef: Vec<(f32, f32, f32)> = (0..c)
            .map(|ch| {
                let inv = self.invstd[ch] as f64;
                let k1 = inv * w.map_or(1.0, |w| w[ch] as f64);
                if self.train {
                    (
                        k1 as f32,
                        (sg[ch] / count) as f32,
                        (inv * inv * sgx[ch] / count) as f32,
                    )
                } else {
                    (k1 as f32, 0.0, 0.0)
                }
            })
            .collect();
        let dx = par_build(x.len(), hw, |start, out| {
            let planes = out
                .chunks_mut(hw)
                .zip(g[start..].chunks_exact(hw).zip(x[start..].chunks_exact(hw)));
            for (k, (o_plane, (gp, xp))) in planes.enumerate() {
                let ch = (start / hw + k) % c;
                let (k1, k2, k3) = coef[ch];
                let m = self.mean[ch];
                if self.train {
                    for ((o, &gv), &xv) in o_plane.iter_mut().zip(gp).zip(xp) {
                        o.write(k1 * (gv - k2 - (xv - m) * k3));
                    }
                } else {
                    for (o, &gv) in o_plane.iter_mut().zip(gp) {
                        o.write(k1 * gv);
                    }
                }
            }
        });
        let dw = (0..c)
            .map(|ch| (sgx[ch] * self.invstd[ch] as f64) as f32)
            .collect();
        let db = sg.iter().map(|&v| v as f32).collect();
        Ok((dx, dw, db))
    }

    /// The activation's backward: the output's gradient where the clipped output lies strictly
    /// inside `(0, hi)` (the input did too), 0 elsewhere; `None` when there is no activation.
    fn masked_grad(&self, res: &Tensor, grad: &Tensor) -> Result<Option<Vec<f32>>> {
        let Some(hi) = self.hi else {
            return Ok(None);
        };
        if res.dims() != grad.dims() {
            bail!(
                "BatchNorm: gradient {:?} does not match output {:?}",
                grad.dims(),
                res.dims()
            );
        }
        with_f32(res, |y| {
            with_f32(grad, |g| {
                Ok(Some(par_zip(y, g, move |v, gv| {
                    if v <= 0.0 || v >= hi {
                        0.0
                    } else {
                        gv
                    }
                })))
            })
        })
    }

    fn check_channel_vec(&self, data: &[f32], what: &str) -> Result<()> {
        if data.len() != self.mean.len() {
            bail!(
                "BatchNorm: {what} has {} values for {} channels",
                data.len(),
                self.mean.len()
            );
        }
        Ok(())
    }
}

impl CustomOp1 for BnOp {
    fn name(&self) -> &'static str {
        "runner-batchnorm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l)?;
        let y = self.forward(&x, l.dims(), None, None)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let masked = self.masked_grad(res, grad)?;
        let (dx, _, _) = with_f32(arg, |x| match &masked {
            Some(g) => self.backward(x, g, arg.dims(), None),
            None => with_f32(grad, |g| self.backward(x, g, arg.dims(), None)),
        })?;
        cpu_tensor(dx, arg.dims()).map(Some)
    }
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "runner-batchnorm-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1)?;
        let w = f32_data(s2, l2)?;
        let b = f32_data(s3, l3)?;
        self.check_channel_vec(&w, "weight")?;
        self.check_channel_vec(&b, "bias")?;
        let y = self.forward(&x, l1.dims(), Some(&w), Some(&b))?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let masked = self.masked_grad(res, grad)?;
        let (dx, dw, db) = with_f32(x, |xd| {
            with_f32(w, |wd| {
                self.check_channel_vec(wd, "weight")?;
                match &masked {
                    Some(g) => self.backward(xd, g, x.dims(), Some(wd)),
                    None => with_f32(grad, |g| self.backward(xd, g, x.dims(), Some(wd))),
                }
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, x.dims())?),
            Some(cpu_tensor(dw, w.dims())?),
            Some(cpu_tensor(db, b.dims())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Store;
    use candle_core::Device;
    use std::collections::HashMap;

    fn fixture() -> Result<HashMap<String, Tensor>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/batchnorm.npz");
        Ok(Tensor::read_npz(path)?.into_iter().collect())
    }

    fn get<'a>(f: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
        f.get(k).unwrap_or_else(|| panic!("fixture lacks {k}"))
    }

    /// max |a - b| / max |b|.
    fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        let d = a.sub(b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let s = b
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?
            .max(1e-6);
        Ok(d / s)
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
        let e = rel(a, b)?;
        assert!(e <= 1e-4, "{what}: relative error {e}");
        Ok(())
    }

    /// A layer with the fixture's weight and bias.
    fn layer(
        f: &HashMap<String, Tensor>,
        affine: bool,
        momentum: f64,
    ) -> Result<(Store, BatchNorm)> {
        let store = Store::new(&Device::Cpu);
        let bn = BatchNorm::new(&store.root().pp("bn"), 3, affine, momentum, 1e-5)?;
        if let (Some(w), Some(b)) = (bn.weight(), bn.bias()) {
            w.set(get(f, "w"))?;
            b.set(get(f, "b"))?;
        }
        Ok((store, bn))
    }

    fn forward(bn: &BatchNorm, x: &Tensor, mode: Mode, fallback: bool) -> Result<Tensor> {
        if fallback {
            bn.forward_fallback(x, mode)
        } else {
            bn.forward(x, mode)
        }
    }

    /// The output and the gradients of sum(y * g) w.r.t. x, weight and bias.
    fn run(
        bn: &BatchNorm,
        x: &Tensor,
        g: &Tensor,
        mode: Mode,
        fallback: bool,
    ) -> Result<Vec<Tensor>> {
        let xv = Var::from_tensor(x)?;
        let y = forward(bn, xv.as_tensor(), mode, fallback)?;
        let grads = y.mul(g)?.sum_all()?.backward()?;
        let mut out = vec![y];
        let mut tensors = vec![xv.as_tensor().clone()];
        tensors.extend(bn.weight().map(|v| v.as_tensor().clone()));
        tensors.extend(bn.bias().map(|v| v.as_tensor().clone()));
        for t in tensors {
            out.push(
                grads
                    .get(&t)
                    .cloned()
                    .unwrap_or_else(|| panic!("no gradient")),
            );
        }
        Ok(out)
    }

    #[test]
    fn train_forward_backward_and_running_stats_match_torch() -> Result<()> {
        let f = fixture()?;
        for fallback in [false, true] {
            for (tag, m) in [("m01", 0.1), ("m0003", 0.003)] {
                let (_s, bn) = layer(&f, true, m)?;
                let got = run(&bn, get(&f, "x1"), get(&f, "g"), Mode::Train, fallback)?;
                for (t, key) in got
                    .iter()
                    .zip(["train_y", "train_dx", "train_dw", "train_db"])
                {
                    assert_close(t, get(&f, key), &format!("{key} fallback={fallback}"))?;
                }
                forward(&bn, get(&f, "x2"), Mode::Train, fallback)?;
                let what = format!("{tag} fallback={fallback}");
                assert_close(
                    bn.running_mean().as_tensor(),
                    get(&f, &format!("rm_{tag}")),
                    &what,
                )?;
                assert_close(
                    bn.running_var().as_tensor(),
                    get(&f, &format!("rv_{tag}")),
                    &what,
                )?;
            }
        }
        Ok(())
    }

    /// Output and gradients of sum(act(bn(x)) * g), fused or as two ops.
    fn run_act(
        bn: &BatchNorm,
        x: &Tensor,
        g: &Tensor,
        mode: Mode,
        act: Act,
        fused: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let xv = Var::from_tensor(x)?;
        let y = if fused {
            bn.forward_act(xv.as_tensor(), mode, act)?
        } else {
            let y = bn.forward(xv.as_tensor(), mode)?;
            match act {
                Act::Identity => y,
                Act::Relu => activation::relu(&y)?,
                Act::Relu6 => activation::relu6(&y)?,
            }
        };
        let grads = y.mul(g)?.sum_all()?.backward()?;
        let mut out = vec![y.flatten_all()?.to_vec1()?];
        let mut tensors = vec![xv.as_tensor().clone()];
        tensors.extend(bn.weight().map(|v| v.as_tensor().clone()));
        tensors.extend(bn.bias().map(|v| v.as_tensor().clone()));
        for t in tensors {
            let gt = grads.get(&t).unwrap_or_else(|| panic!("no gradient"));
            out.push(gt.flatten_all()?.to_vec1()?);
        }
        Ok(out)
    }

    #[test]
    fn fused_activation_equals_separate_ops_bit_for_bit() -> Result<()> {
        let f = fixture()?;
        // Spread the normalised values over [-9, 9] so that both ReLU6 bounds are crossed.
        let x = (get(&f, "x1") * 3.0)?;
        let g = get(&f, "g");
        for affine in [true, false] {
            for act in [Act::Relu, Act::Relu6] {
                for mode in [Mode::Train, Mode::Eval] {
                    let (_s, bn) = layer(&f, affine, 0.1)?;
                    if affine {
                        bn.weight()
                            .unwrap()
                            .set(&Tensor::new(&[3f32, -2.5, 4.0], &Device::Cpu)?)?;
                    }
                    let fused = run_act(&bn, &x, g, mode, act, true)?;
                    let rm = bn.running_mean().as_tensor().to_vec1::<f32>()?;
                    let (_s2, bn2) = layer(&f, affine, 0.1)?;
                    if affine {
                        bn2.weight()
                            .unwrap()
                            .set(&Tensor::new(&[3f32, -2.5, 4.0], &Device::Cpu)?)?;
                    }
                    let apart = run_act(&bn2, &x, g, mode, act, false)?;
                    let what = format!("affine={affine} {act:?} {mode:?}");
                    assert_eq!(fused, apart, "{what}");
                    assert_eq!(
                        rm,
                        bn2.running_mean().as_tensor().to_vec1::<f32>()?,
                        "{what}"
                    );
                    // The clip is really exercised: outputs at both bounds and inside.
                    let y = &fused[0];
                    assert!(y.contains(&0.0), "{what}: nothing clipped at 0");
                    assert!(y.iter().any(|&v| v > 0.0 && v < 6.0), "{what}");
                    // (Without the weight of up to 4 the normalised values stay below 6.)
                    if affine && act == Act::Relu6 {
                        assert!(y.contains(&6.0), "{what}: nothing clipped at 6");
                    } else if affine {
                        assert!(y.iter().any(|&v| v > 6.0), "{what}");
                    }
                    // And the fallback (the CUDA path) composes to the same function.
                    let (_s3, bn3) = layer(&f, affine, 0.1)?;
                    if affine {
                        bn3.weight()
                            .unwrap()
                            .set(&Tensor::new(&[3f32, -2.5, 4.0], &Device::Cpu)?)?;
                    }
                    let fb =
                        crate::nn::with_portable_ops(|| run_act(&bn3, &x, g, mode, act, true))?;
                    for (a, b) in fb.iter().zip(&fused) {
                        let d = a
                            .iter()
                            .zip(b)
                            .map(|(u, v)| (u - v).abs())
                            .fold(0f32, f32::max);
                        assert!(d <= 1e-4, "{what}: portable differs by {d}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn non_affine_and_strided_inputs_match_torch() -> Result<()> {
        let f = fixture()?;
        let x = get(&f, "x1");
        // The same values behind a non-contiguous layout.
        let strided = x.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
        assert!(!strided.is_contiguous());
        for fallback in [false, true] {
            let (_s, bn) = layer(&f, false, 0.1)?;
            let got = run(&bn, &strided, get(&f, "g"), Mode::Train, fallback)?;
            assert_eq!(got.len(), 2);
            assert_close(&got[0], get(&f, "na_y"), "non-affine y")?;
            assert_close(&got[1], get(&f, "na_dx"), "non-affine dx")?;
            let (_s, bn) = layer(&f, true, 0.1)?;
            let got = run(&bn, &strided, get(&f, "g"), Mode::Train, fallback)?;
            assert_close(&got[1], get(&f, "train_dx"), "strided dx")?;
        }
        Ok(())
    }

    #[test]
    fn eval_uses_running_stats_and_matches_torch() -> Result<()> {
        let f = fixture()?;
        for fallback in [false, true] {
            let (_s, bn) = layer(&f, true, 0.1)?;
            bn.running_mean().set(get(&f, "eval_rm"))?;
            bn.running_var().set(get(&f, "eval_rv"))?;
            let got = run(&bn, get(&f, "x1"), get(&f, "g"), Mode::Eval, fallback)?;
            for (t, key) in got.iter().zip(["eval_y", "eval_dx", "eval_dw", "eval_db"]) {
                assert_close(t, get(&f, key), &format!("{key} fallback={fallback}"))?;
            }
            // Eval never moves the running statistics.
            assert_eq!(
                bn.running_mean().as_tensor().to_vec1::<f32>()?,
                get(&f, "eval_rm").to_vec1::<f32>()?
            );
        }
        Ok(())
    }

    #[test]
    fn recalibration_averages_batch_statistics() -> Result<()> {
        let f = fixture()?;
        for fallback in [false, true] {
            let (store, bn) = layer(&f, true, 0.1)?;
            // Registered in the same store but never run: keeps its buffers.
            let idle = BatchNorm::new(&store.root().pp("idle"), 3, true, 0.1, 1e-5)?;
            idle.running_mean()
                .set(&Tensor::new(&[7f32, 8., 9.], &Device::Cpu)?)?;
            // A stale record from before `begin` must not count.
            forward(&bn, get(&f, "x1"), Mode::Recalibrate, fallback)?;
            store.begin_recalibration();
            for i in 0..3 {
                let x = get(&f, &format!("recal_x{i}"));
                let y = forward(&bn, x, Mode::Recalibrate, fallback)?;
                if i == 1 {
                    assert_close(&y, get(&f, "recal_y1"), "recalibrate-mode output")?;
                }
            }
            // Nothing moves until the end.
            assert_eq!(
                bn.running_mean().as_tensor().to_vec1::<f32>()?,
                vec![0.0; 3]
            );
            assert_eq!(bn.running_var().as_tensor().to_vec1::<f32>()?, vec![1.0; 3]);
            store.finish_recalibration()?;
            assert_close(
                bn.running_mean().as_tensor(),
                get(&f, "recal_mean"),
                "recal mean",
            )?;
            assert_close(
                bn.running_var().as_tensor(),
                get(&f, "recal_var"),
                "recal var",
            )?;
            assert_eq!(
                idle.running_mean().as_tensor().to_vec1::<f32>()?,
                vec![7.0, 8.0, 9.0]
            );
            assert_eq!(
                idle.running_var().as_tensor().to_vec1::<f32>()?,
                vec![1.0; 3]
            );
            // A second finish without new records changes nothing.
            store.finish_recalibration()?;
            assert_close(
                bn.running_mean().as_tensor(),
                get(&f, "recal_mean"),
                "recal mean again",
            )?;
        }
        Ok(())
    }

    #[test]
    fn registers_tensors_and_rejects_bad_inputs() -> Result<()> {
        let store = Store::new(&Device::Cpu);
        let bn = BatchNorm::new(&store.root().pp("a").pp("bn"), 2, true, 0.1, 1e-5)?;
        let names: Vec<String> = store.tensors().into_keys().collect();
        assert_eq!(
            names,
            [
                "a.bn.bias",
                "a.bn.running_mean",
                "a.bn.running_var",
                "a.bn.weight"
            ]
        );
        assert_eq!(store.params().len(), 2);
        let wrong_c = Tensor::zeros((2, 3, 2, 2), DType::F32, &Device::Cpu)?;
        let err = bn
            .forward(&wrong_c, Mode::Train)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("a.bn") && err.contains("3 channels"), "{err}");
        let single = Tensor::zeros((1, 2, 1, 1), DType::F32, &Device::Cpu)?;
        assert!(bn.forward(&single, Mode::Train).is_err());
        assert!(bn.forward(&single, Mode::Eval).is_ok());
        assert!(bn
            .forward(
                &Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?,
                Mode::Eval
            )
            .is_err());
        Ok(())
    }
}
