//! Max and average pooling with padding, with backward (candle's lack both).
//!
//! On the CPU each is a custom op over NCHW planes; other devices build the same function from
//! candle's differentiable ops (strided window gathers with `index_select`). Output size is
//! `floor((H + 2p - k) / s) + 1` (PyTorch's `ceil_mode = False`).

use super::host::{cpu_tensor, f32_data, is_cpu_f32, nchw, par_build, with_f32};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Input elements per parallel backward task (whole planes).
const PLANES_PER_TASK: usize = 1 << 15;

/// Average pooling over k x k windows; `count_include_pad = false` divides by the number of
/// in-bounds elements (PyTorch's `AvgPool2d(count_include_pad=False)`).
pub fn avg_pool2d(
    x: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
    count_include_pad: bool,
) -> Result<Tensor> {
    let op = Pool::new(k, stride, padding, Kind::Avg { count_include_pad })?;
    if is_cpu_f32(x) {
        x.apply_op1(op)
    } else {
        avg_pool2d_fallback(x, k, stride, padding, count_include_pad)
    }
}

/// Max pooling with implicit -inf padding; the gradient goes to the first maximum.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let op = Pool::new(k, stride, padding, Kind::Max)?;
    if is_cpu_f32(x) {
        x.apply_op1(op)
    } else {
        max_pool2d_fallback(x, k, stride, padding)
    }
}

/// Mean over the spatial axes: (N, C, H, W) -> (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(3)?.mean(2)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Max,
    Avg { count_include_pad: bool },
}

/// One output position's window along one axis: the in-bounds input range and the length the
/// window has when padded positions are counted.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: usize,
    end: usize,
    padded_len: usize,
}

#[derive(Clone, Copy, Debug)]
struct Pool {
    k: usize,
    stride: usize,
    padding: usize,
    kind: Kind,
}

impl Pool {
    fn new(k: usize, stride: usize, padding: usize, kind: Kind) -> Result<Self> {
        if k == 0 || stride == 0 {
            bail!("pooling needs a kernel and stride of at least 1 (got k={k}, stride={stride})");
        }
        // PyTorch's rule; it also guarantees that every window holds an in-bounds element.
        if 2 * padding > k {
            bail!("pooling padding {padding} exceeds half the kernel size {k}");
        }
        Ok(Self {
            k,
            stride,
            padding,
            kind,
        })
    }

    /// Windows along an axis of length `len`.
    fn windows(&self, len: usize) -> Result<Vec<Window>> {
        let (k, s, p) = (self.k, self.stride, self.padding);
        if len == 0 {
            bail!("pooling: empty spatial axis");
        }
        if len + 2 * p < k {
            bail!("pooling: input size {len} with padding {p} is smaller than the kernel {k}");
        }
        let out = (len + 2 * p - k) / s + 1;
        Ok((0..out)
            .map(|o| {
                // Coordinates in the padded frame, then clipped to the input.
                let lo = o * s;
                let hi = (lo + k).min(len + 2 * p);
                Window {
                    start: lo.saturating_sub(p).min(len),
                    end: hi.saturating_sub(p).min(len),
                    padded_len: hi - lo,
                }
            })
            .collect())
    }

    fn divisor(&self, r: &Window, c: &Window) -> f32 {
        match self.kind {
            Kind::Avg {
                count_include_pad: true,
            } => (r.padded_len * c.padded_len) as f32,
            _ => ((r.end - r.start) * (c.end - c.start)) as f32,
        }
    }

    /// For kernel offset `d` along an axis: the output positions whose tap lands inside the
    /// input (`0 <= o * s + d - p < len`), as a range `lo..hi`.
    fn tap_range(&self, d: usize, len: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = if d >= p { 0 } else { (p - d).div_ceil(s) };
        let hi = if len + p > d {
            (len + p - d).div_ceil(s)
        } else {
            0
        };
        (lo.min(out), hi.min(out))
    }

    /// Visits every in-bounds tap of output row `oh` in window scan order (kernel rows, then
    /// kernel columns): `f(input_row, input_col_of_first_output, first_output, end_output)`.
    /// Within a tap, output `o` reads input column `first_col + (o - first_output) * stride`.
    fn for_taps(
        &self,
        oh: usize,
        h: usize,
        cols: &[(usize, usize)],
        mut f: impl FnMut(usize, usize, usize, usize),
    ) {
        let (k, s, p) = (self.k, self.stride, self.padding);
        for dy in 0..k {
            let ih = oh * s + dy;
            if ih < p || ih - p >= h {
                continue;
            }
            for (dx, &(lo, hi)) in cols.iter().enumerate() {
                if lo < hi {
                    f(ih - p, lo * s + dx - p, lo, hi);
                }
            }
        }
    }

    fn forward_planes(&self, x: &[f32], dims: (usize, usize, usize, usize)) -> Result<Vec<f32>> {
        let (n, c, h, w) = dims;
        let rows = self.windows(h)?;
        let cols = self.windows(w)?;
        let (ho, wo) = (rows.len(), cols.len());
        if x.len() < n * c * h * w {
            bail!("pooling: {} inputs for {dims:?}", x.len());
        }
        let taps: Vec<(usize, usize)> = (0..self.k).map(|d| self.tap_range(d, w, wo)).collect();
        let s = self.stride;
        let out_plane = ho * wo;
        // Planes in parallel (each output plane reads one input plane).
        let y = par_build(n * c * out_plane, out_plane, |start, out| {
            let mut acc = vec![0f32; wo];
            let first = start / out_plane;
            for (k, o_plane) in out.chunks_mut(out_plane).enumerate() {
                let plane = &x[(first + k) * h * w..(first + k + 1) * h * w];
                for ((oh, r), o_row) in rows.iter().enumerate().zip(o_plane.chunks_mut(wo)) {
                    match self.kind {
                        Kind::Max => {
                            acc.fill(f32::NEG_INFINITY);
                            self.for_taps(oh, h, &taps, |ih, ic, lo, hi| {
                                tap_max(&mut acc[lo..hi], &plane[ih * w + ic..], s)
                            });
                            for (o, &a) in o_row.iter_mut().zip(&acc) {
                                o.write(a);
                            }
                        }
                        Kind::Avg { .. } => {
                            acc.fill(0.0);
                            self.for_taps(oh, h, &taps, |ih, ic, lo, hi| {
                                tap_add(&mut acc[lo..hi], &plane[ih * w + ic..], s)
                            });
                            for ((o, &a), cw) in o_row.iter_mut().zip(&acc).zip(&cols) {
                                o.write(a / self.divisor(r, cw));
                            }
                        }
                    }
                }
            }
        });
        Ok(y)
    }

    /// Input gradient. `y` is the forward output (needed by max pooling to locate each
    /// window's maximum without replaying the data-dependent comparisons).
    fn backward_planes(
        &self,
        x: &[f32],
        y: &[f32],
        g: &[f32],
        dims: (usize, usize, usize, usize),
    ) -> Result<Vec<f32>> {
        let (n, c, h, w) = dims;
        let rows = self.windows(h)?;
        let cols = self.windows(w)?;
        let (ho, wo) = (rows.len(), cols.len());
        let out_len = n * c * ho * wo;
        if x.len() != n * c * h * w || g.len() != out_len || y.len() != out_len {
            bail!(
                "pooling backward: {} inputs and {} gradients for {dims:?}",
                x.len(),
                g.len()
            );
        }
        let taps: Vec<(usize, usize)> = (0..self.k).map(|d| self.tap_range(d, w, wo)).collect();
        let s = self.stride;
        let mut dx = vec![0f32; n * c * h * w];
        let planes = dx
            .par_chunks_mut(h * w)
            .with_min_len(PLANES_PER_TASK.div_ceil(h * w))
            .zip(x.par_chunks(h * w))
            .zip(g.par_chunks(ho * wo).zip(y.par_chunks(ho * wo)));
        planes.for_each(|((dplane, xplane), (gplane, yplane))| {
            let mut pending = vec![true; wo];
            let mut share = vec![0f32; wo];
            let out_rows = gplane.chunks_exact(wo).zip(yplane.chunks_exact(wo));
            for (oh, (r, (grow, yrow))) in rows.iter().zip(out_rows).enumerate() {
                match self.kind {
                    Kind::Max => {
                        pending.fill(true);
                        self.for_taps(oh, h, &taps, |ih, ic, lo, hi| {
                            let at = ih * w + ic;
                            tap_first_max_grad(
                                &mut dplane[at..],
                                &xplane[at..],
                                &yrow[lo..hi],
                                &grow[lo..hi],
                                &mut pending[lo..hi],
                                s,
                            )
                        });
                    }
                    Kind::Avg { .. } => {
                        for ((sh, &gv), cw) in share.iter_mut().zip(grow).zip(&cols) {
                            *sh = gv / self.divisor(r, cw);
                        }
                        self.for_taps(oh, h, &taps, |ih, ic, lo, hi| {
                            let dst = &mut dplane[ih * w + ic..];
                            if s == 1 {
                                for (d, &sh) in dst.iter_mut().zip(&share[lo..hi]) {
                                    *d += sh;
                                }
                            } else {
                                for (d, &sh) in dst.iter_mut().step_by(s).zip(&share[lo..hi]) {
                                    *d += sh;
                                }
                            }
                        });
                    }
                }
            }
        });
        Ok(dx)
    }

    fn out_dims(&self, dims: &[usize]) -> Result<[usize; 4]> {
        let (n, c, h, w) = nchw(dims, "pooling")?;
        Ok([n, c, self.windows(h)?.len(), self.windows(w)?.len()])
    }
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Max => "runner-max-pool2d",
            Kind::Avg { .. } => "runner-avg-pool2d",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = nchw(l.dims(), self.name())?;
        let x = f32_data(s, l)?;
        let y = self.forward_planes(&x, dims)?;
        Ok((
            CpuStorage::F32(y),
            Shape::from(self.out_dims(l.dims())?.to_vec()),
        ))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dims = nchw(arg.dims(), self.name())?;
        let out = self.out_dims(arg.dims())?;
        if grad.dims() != out || grad.dtype() != DType::F32 {
            bail!(
                "{}: gradient of shape {:?}, expected {out:?}",
                self.name(),
                grad.shape()
            );
        }
        let dx = with_f32(arg, |x| {
            with_f32(res, |y| {
                with_f32(grad, |g| self.backward_planes(x, y, g, dims))
            })
        })?;
        cpu_tensor(dx, arg.dims()).map(Some)
    }
}

/// `acc[o] = max(acc[o], src[o * s])` with PyTorch's rule (strictly greater, or NaN), written
/// as a select so that the unit-stride case vectorises.
fn tap_max(acc: &mut [f32], src: &[f32], s: usize) {
    let pick = |b: f32, v: f32| if v > b || v.is_nan() { v } else { b };
    if s == 1 {
        for (b, &v) in acc.iter_mut().zip(src) {
            *b = pick(*b, v);
        }
    } else {
        for (b, &v) in acc.iter_mut().zip(src.iter().step_by(s)) {
            *b = pick(*b, v);
        }
    }
}

/// Max-pool backward for one tap of one output row: output `o` reads `src[o * s]`; if that
/// is the window's maximum `max[o]` and no earlier tap of the window was, its gradient goes to
/// `dst[o * s]`. This is the position PyTorch's strictly-greater scan ends on (for a NaN
/// maximum PyTorch picks the last NaN, this the first). Written with selects and no scatter,
/// since a branch per tap would mispredict on the data-dependent ties.
fn tap_first_max_grad(
    dst: &mut [f32],
    src: &[f32],
    max: &[f32],
    g: &[f32],
    pending: &mut [bool],
    s: usize,
) {
    let step = |d: &mut f32, v: f32, m: f32, g: f32, p: &mut bool| {
        let hit = ((v == m) | (v.is_nan() & m.is_nan())) & *p;
        *d += if hit { g } else { 0.0 };
        *p &= !hit;
    };
    if s == 1 {
        let n = max
            .len()
            .min(g.len())
            .min(pending.len())
            .min(src.len())
            .min(dst.len());
        let (dst, src, max, g, pending) = (
            &mut dst[..n],
            &src[..n],
            &max[..n],
            &g[..n],
            &mut pending[..n],
        );
        for j in 0..n {
            step(&mut dst[j], src[j], max[j], g[j], &mut pending[j]);
        }
    } else {
        let items = dst.iter_mut().step_by(s).zip(src.iter().step_by(s));
        for ((d, &v), ((&m, &gv), p)) in items.zip(max.iter().zip(g).zip(pending.iter_mut())) {
            step(d, v, m, gv, p);
        }
    }
}

/// `acc[o] += src[o * s]`.
fn tap_add(acc: &mut [f32], src: &[f32], s: usize) {
    if s == 1 {
        for (a, &v) in acc.iter_mut().zip(src) {
            *a += v;
        }
    } else {
        for (a, &v) in acc.iter_mut().zip(src.iter().step_by(s)) {
            *a += v;
        }
    }
}

/// The `k * k` strided window views of `xp` (already padded): element (dy, dx) of every window,
/// each of shape (N, C, Ho, Wo), in scan order.
fn window_views(xp: &Tensor, k: usize, s: usize, ho: usize, wo: usize) -> Result<Vec<Tensor>> {
    let dev = xp.device();
    let mut views = Vec::with_capacity(k * k);
    for dy in 0..k {
        let ri: Vec<u32> = (0..ho).map(|o| (o * s + dy) as u32).collect();
        let xr = xp.index_select(&Tensor::new(ri, dev)?, 2)?;
        for dx in 0..k {
            let ci: Vec<u32> = (0..wo).map(|o| (o * s + dx) as u32).collect();
            views.push(xr.index_select(&Tensor::new(ci, dev)?, 3)?);
        }
    }
    Ok(views)
}

/// Average pooling from candle's differentiable ops (any device).
pub fn avg_pool2d_fallback(
    x: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
    count_include_pad: bool,
) -> Result<Tensor> {
    let pool = Pool::new(k, stride, padding, Kind::Avg { count_include_pad })?;
    let (_, _, h, w) = nchw(x.dims(), "avg_pool2d")?;
    let (rows, cols) = (pool.windows(h)?, pool.windows(w)?);
    let xp = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let mut sum: Option<Tensor> = None;
    for v in window_views(&xp, k, stride, rows.len(), cols.len())? {
        sum = Some(match sum {
            None => v,
            Some(acc) => acc.add(&v)?,
        });
    }
    let Some(sum) = sum else {
        bail!("avg_pool2d: empty window")
    };
    let div: Vec<f32> = rows
        .iter()
        .flat_map(|r| cols.iter().map(|c| pool.divisor(r, c)))
        .collect();
    let div =
        Tensor::from_vec(div, (1, 1, rows.len(), cols.len()), x.device())?.to_dtype(x.dtype())?;
    sum.broadcast_div(&div)
}

/// Max pooling from candle's differentiable ops (any device). The first maximum of each window
/// is picked explicitly, so the gradient does not depend on how a backend breaks ties.
pub fn max_pool2d_fallback(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let pool = Pool::new(k, stride, padding, Kind::Max)?;
    let (_, _, h, w) = nchw(x.dims(), "max_pool2d")?;
    let (rows, cols) = (pool.windows(h)?, pool.windows(w)?);
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    let dev = x.device();
    let border: Vec<f32> = (0..hp * wp)
        .map(|i| {
            let (r, c) = (i / wp, i % wp);
            let inside = (padding..padding + h).contains(&r) && (padding..padding + w).contains(&c);
            if inside {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let border = Tensor::from_vec(border, (1, 1, hp, wp), dev)?.to_dtype(x.dtype())?;
    let xp = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?
        .broadcast_add(&border)?;
    let stacked = Tensor::stack(&window_views(&xp, k, stride, rows.len(), cols.len())?, 2)?;
    let best = stacked.max_keepdim(2)?.detach();
    let is_best = stacked.detach().broadcast_eq(&best)?.to_dtype(x.dtype())?;
    // Earlier positions score higher, so the arg-max of the score is the first maximum.
    let rank: Vec<f32> = (0..k * k).map(|j| (k * k - j) as f32).collect();
    let rank = Tensor::from_vec(rank, (1, 1, k * k, 1, 1), dev)?.to_dtype(x.dtype())?;
    let first = is_best.broadcast_mul(&rank)?.argmax_keepdim(2)?;
    stacked.gather(&first, 2)?.squeeze(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use std::collections::HashMap;

    fn fixture() -> Result<HashMap<String, Tensor>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pool.npz");
        Ok(Tensor::read_npz(path)?.into_iter().collect())
    }

    fn get<'a>(f: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
        f.get(k).unwrap_or_else(|| panic!("fixture lacks {k}"))
    }

    fn max_rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
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

    type PoolFn = Box<dyn Fn(&Tensor) -> Result<Tensor>>;

    fn check(f: &HashMap<String, Tensor>, key: &str, op: PoolFn, strided: bool) -> Result<()> {
        let x = get(f, &format!("{key}_x"));
        let g = get(f, &format!("{key}_g"));
        // A strided input: the same values behind a transposed layout.
        let xin = if strided {
            x.transpose(2, 3)?.contiguous()?.transpose(2, 3)?
        } else {
            x.clone()
        };
        assert_eq!(xin.is_contiguous(), !strided);
        let v = Var::from_tensor(&xin)?;
        let y = op(v.as_tensor())?;
        let grads = y.mul(g)?.sum_all()?.backward()?;
        let dx = grads
            .get(v.as_tensor())
            .cloned()
            .unwrap_or(v.as_tensor().zeros_like()?);
        let ey = max_rel_err(&y, get(f, &format!("{key}_y")))?;
        let edx = max_rel_err(&dx, get(f, &format!("{key}_dx")))?;
        assert!(
            ey < 1e-6 && edx < 1e-6,
            "{key}: forward {ey}, gradient {edx}"
        );
        Ok(())
    }

    const CONFIGS: [(&str, usize, usize, usize); 6] = [
        ("k3s1p1", 3, 1, 1),
        ("k3s2p1", 3, 2, 1),
        ("k2s2p0", 2, 2, 0),
        ("k2s2p0odd", 2, 2, 0),
        ("k5s3p0", 5, 3, 0),
        ("k7s7p0", 7, 7, 0),
    ];

    #[test]
    fn pools_match_torch_on_cpu_op_and_fallback() -> Result<()> {
        let f = fixture()?;
        for (name, k, s, p) in CONFIGS {
            for fallback in [false, true] {
                for strided in [false, true] {
                    let max: PoolFn = if fallback {
                        Box::new(move |x| max_pool2d_fallback(x, k, s, p))
                    } else {
                        Box::new(move |x| max_pool2d(x, k, s, p))
                    };
                    check(&f, &format!("max_{name}"), max, strided)?;
                    for inc in [true, false] {
                        let avg: PoolFn = if fallback {
                            Box::new(move |x| avg_pool2d_fallback(x, k, s, p, inc))
                        } else {
                            Box::new(move |x| avg_pool2d(x, k, s, p, inc))
                        };
                        check(&f, &format!("avg{}_{name}", inc as u8), avg, strided)?;
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn max_pool_gradient_goes_to_first_tie_and_sums_over_windows() -> Result<()> {
        // All equal: every window's first element is its top-left in-bounds input.
        let x = Var::from_tensor(&Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu)?)?;
        for fallback in [false, true] {
            let y = if fallback {
                max_pool2d_fallback(x.as_tensor(), 3, 1, 1)?
            } else {
                max_pool2d(x.as_tensor(), 3, 1, 1)?
            };
            let grads = y.sum_all()?.backward()?;
            let dx = grads
                .get(x.as_tensor())
                .map(|t| t.flatten_all()?.to_vec1::<f32>());
            let dx = dx.transpose()?.unwrap_or_default();
            // Windows start at clipped (row, col) in {0, 0, 1} x {0, 0, 1}.
            assert_eq!(
                dx,
                vec![4.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                "fallback {fallback}"
            );
        }
        Ok(())
    }

    #[test]
    fn max_pool_propagates_nan() -> Result<()> {
        let vals = [f32::NAN, f32::NAN, 5., 2., 3., 0., 3., 4., 1.];
        let x = Var::from_tensor(&Tensor::new(&vals, &Device::Cpu)?.reshape((1, 1, 3, 3))?)?;
        let y = max_pool2d(x.as_tensor(), 2, 1, 0)?;
        let yv = y.flatten_all()?.to_vec1::<f32>()?;
        assert!(yv[0].is_nan() && yv[1].is_nan() && yv[2] == 4.0 && yv[3] == 4.0);
        let grads = y.sum_all()?.backward()?;
        let dx = grads
            .get(x.as_tensor())
            .map(|t| t.flatten_all()?.to_vec1::<f32>());
        let dx = dx.transpose()?.unwrap_or_default();
        // A NaN window sends its gradient to its first NaN (PyTorch: the last one).
        assert_eq!(dx, vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
        Ok(())
    }

    #[test]
    fn rejects_bad_geometry() {
        let x =
            Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        assert!(max_pool2d(&x, 3, 1, 2).is_err()); // padding over half the kernel
        assert!(avg_pool2d(&x, 5, 1, 0, true).is_err()); // kernel larger than the input
        assert!(max_pool2d(&x, 2, 0, 0).is_err());
        assert!(max_pool2d(&x.flatten_all().unwrap_or_else(|e| panic!("{e}")), 2, 2, 0).is_err());
    }
}
