//! Plain-Rust access to CPU tensor data for the custom ops of `batchnorm`, `pool`,
//! `activation`: borrowing a contiguous f32 slice when the layout allows it, copying otherwise,
//! and small reduction kernels written so that the compiler vectorises them.

use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Storage, Tensor, Var};
use rayon::prelude::*;
use std::borrow::Cow;
use std::mem::MaybeUninit;

/// Elements per parallel task below which splitting costs more than it saves (a few tens of
/// microseconds of memory-bound work).
const PAR_GRAIN: usize = 1 << 15;

/// The chunk length for parallel work over `n` elements in whole units of `unit` elements (an
/// image plane, say): at least [`PAR_GRAIN`] elements, and a fixed function of the shapes, so
/// that results never depend on the thread count.
fn chunk_len(unit: usize) -> usize {
    let unit = unit.max(1);
    PAR_GRAIN.div_ceil(unit) * unit
}

/// A new buffer of `n` floats filled in parallel: `fill(start, out)` must write every element
/// of `out`, which holds elements `start..start + out.len()` (chunks hold whole `unit`s). The
/// buffer is not zeroed first: elementwise ops write each element once, and zeroing would cost
/// a full extra pass over memory.
pub(crate) fn par_build(
    n: usize,
    unit: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    let per = chunk_len(unit);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(per)
        .enumerate()
        .for_each(|(i, out)| fill(i * per, out));
    // SAFETY: the chunks cover 0..n and `fill` writes every element of its chunk (the contract
    // above); a panic in `fill` propagates before this line, leaving the Vec empty.
    unsafe { v.set_len(n) };
    v
}

/// `f` applied to every element of `x`, in parallel.
pub(crate) fn par_map(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    par_build(x.len(), 1, |start, out| {
        for (o, &v) in out.iter_mut().zip(&x[start..]) {
            o.write(f(v));
        }
    })
}

/// `f` applied to every pair of elements of `a` and `b` (equally long), in parallel.
pub(crate) fn par_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    let n = a.len().min(b.len());
    par_build(n, 1, |start, out| {
        for ((o, &u), &v) in out.iter_mut().zip(&a[start..]).zip(&b[start..]) {
            o.write(f(u, v));
        }
    })
}

/// `f(plane_index, plane)` for every plane of `plane_len` elements of `x`, in parallel, with the
/// results in plane order (so that a caller's reduction over them is the same sequence of
/// floating-point operations whatever the thread count).
pub(crate) fn par_planes<R: Send>(
    x: &[f32],
    plane_len: usize,
    f: impl Fn(usize, &[f32]) -> R + Sync + Send,
) -> Vec<R> {
    let plane_len = plane_len.max(1);
    x.par_chunks(plane_len)
        .with_min_len(PAR_GRAIN.div_ceil(plane_len))
        .enumerate()
        .map(|(i, p)| f(i, p))
        .collect()
}

thread_local! {
    static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with runner's hand-written CPU kernels switched off on this thread: every op then
/// takes its portable path, built from candle's own differentiable ops, which is the path CUDA
/// devices run. Tests use it to check that path against the PyTorch fixtures on a machine
/// without a GPU.
pub fn with_portable_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PORTABLE.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PORTABLE.with(|p| p.replace(true)));
    f()
}

thread_local! {
    static NO_GRAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the layers reading detached views of their parameters on this thread, so
/// that no op records a backward graph (PyTorch's `torch.no_grad()`).
///
/// Why: candle records an op's inputs whenever one of them is a variable, so a forward pass
/// through the supernet's `Var`s keeps every intermediate activation alive until its output
/// is dropped. Evaluation at the study's batch of 200 (ProxylessNAS, 224x224) then held more
/// memory than a training step; with detached weights each activation is freed as soon as
/// the next layer has read it. Values are unchanged.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD.with(|p| p.replace(true)));
    f()
}

/// A parameter as a layer's forward pass reads it: the variable itself (recording the
/// graph), or a detached view of the same storage inside [`no_grad`].
pub(crate) fn param(v: &Var) -> Tensor {
    if NO_GRAD.with(|p| p.get()) {
        v.as_tensor().detach()
    } else {
        v.as_tensor().clone()
    }
}

/// Whether `t` can take the hand-written CPU path (f32 on the host, portable ops not forced).
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !PORTABLE.with(|p| p.get())
}

/// The elements of an f32 CPU storage in row-major order of `layout`: borrowed when the
/// layout is contiguous, gathered into a new buffer otherwise.
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, layout: &Layout) -> Result<Cow<'a, [f32]>> {
    let data = s.as_slice::<f32>()?;
    if let Some((start, end)) = layout.contiguous_offsets() {
        return match data.get(start..end) {
            Some(d) => Ok(Cow::Borrowed(d)),
            None => bail!(
                "layout {layout:?} exceeds a storage of {} elements",
                data.len()
            ),
        };
    }
    gather(data, layout).map(Cow::Owned)
}

/// Copies a strided view into a new row-major buffer.
fn gather(data: &[f32], layout: &Layout) -> Result<Vec<f32>> {
    let dims = layout.dims();
    let stride = layout.stride();
    let count = layout.shape().elem_count();
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return Ok(out);
    }
    // The innermost axis is copied as a run; the outer axes are walked with an odometer.
    let rank = dims.len();
    let (inner_len, inner_stride) = match rank {
        0 => (1, 1),
        _ => (dims[rank - 1], stride[rank - 1]),
    };
    let outer = rank.saturating_sub(1);
    let mut index = vec![0usize; outer];
    let mut offset = layout.start_offset();
    loop {
        for i in 0..inner_len {
            match data.get(offset + i * inner_stride) {
                Some(v) => out.push(*v),
                None => bail!(
                    "layout {layout:?} exceeds a storage of {} elements",
                    data.len()
                ),
            }
        }
        let mut axis = outer;
        loop {
            if axis == 0 {
                return Ok(out);
            }
            axis -= 1;
            index[axis] += 1;
            offset += stride[axis];
            if index[axis] < dims[axis] {
                break;
            }
            offset -= index[axis] * stride[axis];
            index[axis] = 0;
        }
    }
}

/// Runs `f` on the row-major f32 elements of a CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => {
            let data = f32_data(s, layout)?;
            f(&data)
        }
        _ => bail!("expected a CPU tensor, found one on {:?}", t.device()),
    }
}

/// The dimensions of an NCHW tensor.
pub(crate) fn nchw(dims: &[usize], what: &str) -> Result<(usize, usize, usize, usize)> {
    match dims {
        [n, c, h, w] => Ok((*n, *c, *h, *w)),
        _ => bail!("{what}: expected an (N, C, H, W) tensor, got shape {dims:?}"),
    }
}

const LANES: usize = 8;

/// Sum of `x - shift`, with independent lane accumulators so that the loop vectorises.
pub(crate) fn sum_shifted(x: &[f32], shift: f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l] - shift;
        }
    }
    let mut total: f64 = acc.iter().map(|&a| a as f64).sum();
    for &v in tail {
        total += (v - shift) as f64;
    }
    total
}

/// Sum of `(x - shift)^2`.
pub(crate) fn sum_sq_shifted(x: &[f32], shift: f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - shift;
            acc[l] += d * d;
        }
    }
    let mut total: f64 = acc.iter().map(|&a| a as f64).sum();
    for &v in tail {
        let d = (v - shift) as f64;
        total += d * d;
    }
    total
}

/// `(sum g, sum g * (x - shift))` over two equally long slices.
pub(crate) fn sum_g_gx(g: &[f32], x: &[f32], shift: f32) -> (f64, f64) {
    let mut acc_g = [0f32; LANES];
    let mut acc_gx = [0f32; LANES];
    let gc = g.chunks_exact(LANES);
    let xc = x.chunks_exact(LANES);
    let (gt, xt) = (gc.remainder(), xc.remainder());
    for (gs, xs) in gc.zip(xc) {
        for l in 0..LANES {
            acc_g[l] += gs[l];
            acc_gx[l] += gs[l] * (xs[l] - shift);
        }
    }
    let mut sg: f64 = acc_g.iter().map(|&a| a as f64).sum();
    let mut sgx: f64 = acc_gx.iter().map(|&a| a as f64).sum();
    for (&gv, &xv) in gt.iter().zip(xt) {
        sg += gv as f64;
        sgx += gv as f64 * (xv - shift) as f64;
    }
    (sg, sgx)
}

/// Wraps a host buffer as a CPU tensor of the given shape.
pub(crate) fn cpu_tensor(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_grad_records_no_graph_and_keeps_values() -> Result<()> {
        use crate::nn::{Act, BatchNorm, Conv2d, ConvParams, Linear, Mode, Store};
        let dev = Device::Cpu;
        let store = Store::new(&dev);
        let root = store.root();
        let w = Tensor::arange(0f32, 54., &dev)?.reshape((2, 3, 3, 3))? / 50.0;
        let p = ConvParams {
            stride: 1,
            padding: 1,
            dilation: 1,
            groups: 1,
        };
        let conv = Conv2d::new(&root.pp("conv"), w?, None, p)?;
        let bn = BatchNorm::new(&root.pp("bn"), 2, true, 0.1, 1e-5)?;
        let lin = Linear::new(
            &root.pp("fc"),
            Tensor::ones((4, 2), DType::F32, &dev)?,
            None,
        )?;
        let x = Tensor::arange(0f32, 96., &dev)?
            .reshape((2, 3, 4, 4))?
            .sin()?;
        let run = |mode| -> Result<Tensor> {
            let h = bn.forward_act(&conv.forward(&x)?, mode, Act::Relu)?;
            lin.forward(&h.mean((2, 3))?)
        };
        for mode in [Mode::Eval, Mode::Recalibrate] {
            let tracked = run(mode)?;
            let free = no_grad(|| run(mode))?;
            assert_eq!(tracked.to_vec2::<f32>()?, free.to_vec2::<f32>()?);
            let g = tracked.sum_all()?.backward()?;
            assert!(
                g.get(conv.weight.as_tensor()).is_some(),
                "{mode:?}: graph expected"
            );
            let g = free.sum_all()?.backward()?;
            for (name, v) in store.params() {
                assert!(
                    g.get(v.as_tensor()).is_none(),
                    "{mode:?}: {name} has a gradient"
                );
            }
        }
        // The switch is scoped: outside it the parameters record again.
        let g = run(Mode::Train)?.sum_all()?.backward()?;
        assert!(g.get(lin.weight.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn gather_matches_candle_for_strided_views() -> Result<()> {
        let t = Tensor::arange(0f32, 120., &Device::Cpu)?.reshape((2, 3, 4, 5))?;
        let views = [
            t.transpose(2, 3)?,
            t.narrow(1, 1, 2)?.narrow(3, 1, 3)?,
            t.permute((1, 0, 3, 2))?,
            t.narrow(2, 1, 1)?,
        ];
        for v in views {
            assert!(!v.is_contiguous() || v.layout().start_offset() > 0);
            let ours = with_f32(&v, |d| Ok(d.to_vec()))?;
            let theirs = v.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(ours, theirs);
        }
        Ok(())
    }

    #[test]
    fn shifted_sums_match_f64_reference() {
        let x: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.5)
            .collect();
        let g: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let shift = 1.25f32;
        let s: f64 = x.iter().map(|&v| (v - shift) as f64).sum();
        let s2: f64 = x.iter().map(|&v| ((v - shift) as f64).powi(2)).sum();
        let sg: f64 = g.iter().map(|&v| v as f64).sum();
        let sgx: f64 = g
            .iter()
            .zip(&x)
            .map(|(&a, &b)| a as f64 * (b - shift) as f64)
            .sum();
        assert!((sum_shifted(&x, shift) - s).abs() < 1e-4);
        assert!((sum_sq_shifted(&x, shift) - s2).abs() < 1e-4);
        let (a, b) = sum_g_gx(&g, &x, shift);
        assert!((a - sg).abs() < 1e-4 && (b - sgx).abs() < 1e-4);
    }

    /// The parallel CPU paths on inputs spanning several tasks (and planes that do not divide
    /// the task size): the same values as candle's own ops, and the same bits with 1 and 2
    /// threads.
    #[test]
    fn parallel_ops_split_correctly_and_deterministically() -> Result<()> {
        use crate::nn::{activation, pool, BatchNorm, Mode, Store};
        use candle_core::Var;
        let dev = Device::Cpu;
        let mut r = crate::rng::stream(3, "parallel-test", &[]);
        let x = crate::nn::init::uniform(&mut r, &[8, 5, 61, 67], -1.0, 1.0, &dev)?;
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let max_diff = |a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        };
        type Op = fn(&Tensor) -> Result<Tensor>;
        let ops: [(&str, Op, Op); 4] = [
            ("relu", activation::relu, activation::relu_fallback),
            (
                "avg_pool",
                |t| pool::avg_pool2d(t, 3, 1, 1, false),
                |t| pool::avg_pool2d_fallback(t, 3, 1, 1, false),
            ),
            (
                "max_pool",
                |t| pool::max_pool2d(t, 3, 2, 1),
                |t| pool::max_pool2d_fallback(t, 3, 2, 1),
            ),
            (
                "avg_pool_s2",
                |t| pool::avg_pool2d(t, 2, 2, 0, true),
                |t| pool::avg_pool2d_fallback(t, 2, 2, 0, true),
            ),
        ];
        let threads = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        };
        for (name, fast, slow) in ops {
            let run = |f: Op| -> Result<(Vec<f32>, Vec<f32>)> {
                let v = Var::from_tensor(&x)?;
                let y = f(v.as_tensor())?;
                // A non-uniform upstream gradient.
                let g = (y.sin()? * y.cos()?)?;
                let loss = (&y * &g.detach())?.sum_all()?;
                let dx = loss
                    .backward()?
                    .remove(v.as_tensor())
                    .ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))?;
                Ok((flat(&y)?, flat(&dx)?))
            };
            let one = threads(1)?.install(|| run(fast))?;
            let two = threads(2)?.install(|| run(fast))?;
            assert!(one == two, "{name}: 1 and 2 threads differ");
            let reference = run(slow)?;
            assert!(max_diff(&one.0, &reference.0) < 1e-6, "{name} forward");
            assert!(max_diff(&one.1, &reference.1) < 1e-6, "{name} backward");
        }
        // BatchNorm in training mode: statistics, normalisation and the three gradients.
        let bn_run = |fallback: bool| -> Result<Vec<Vec<f32>>> {
            let store = Store::new(&dev);
            let bn = BatchNorm::new(&store.root().pp("bn"), 5, true, 0.1, 1e-5)?;
            let v = Var::from_tensor(&x)?;
            let y = if fallback {
                bn.forward_fallback(v.as_tensor(), Mode::Train)?
            } else {
                bn.forward(v.as_tensor(), Mode::Train)?
            };
            let loss = (&y * &y.detach().sin()?)?.sum_all()?;
            let grads = loss.backward()?;
            let mut out = vec![flat(&y)?, flat(bn.running_mean().as_tensor())?];
            out.push(flat(bn.running_var().as_tensor())?);
            for t in [v.as_tensor(), bn.weight().unwrap_or(&v).as_tensor()] {
                let g = grads
                    .get(t)
                    .ok_or_else(|| candle_core::Error::Msg("batchnorm: no gradient".into()))?;
                out.push(flat(g)?);
            }
            Ok(out)
        };
        let one = threads(1)?.install(|| bn_run(false))?;
        let two = threads(2)?.install(|| bn_run(false))?;
        assert!(one == two, "batchnorm: 1 and 2 threads differ");
        let reference = bn_run(true)?;
        for (i, (a, b)) in one.iter().zip(&reference).enumerate() {
            let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            assert!(max_diff(a, b) / scale < 1e-4, "batchnorm output {i}");
        }
        Ok(())
    }
}
