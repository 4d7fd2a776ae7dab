//! 2-D convolution (NCHW input, OIHW weight) with PyTorch semantics.
//!
//! On the CPU (f32, square kernels) the convolution is a candle custom op whose forward and
//! backward are written here: im2col + `gemm` for ordinary and grouped convolutions, direct
//! kernels for depthwise ones (groups == C_in == C_out). Candle's built-in conv computes the input
//! gradient with a slow transposed convolution even when the input is a constant, and runs grouped
//! convolutions as one conv per group with full-size zero tensors in the backward; this op avoids
//! both. Other devices and dtypes use candle's built-in `Tensor::conv2d`.
//!
//! Determinism: every output element is produced by one fixed sequence of floating-point
//! operations whatever the thread count or scheduling (work is split into chunks that depend only
//! on the shapes, and partial weight gradients are summed in chunk order), so repeated runs and
//! runs with 1 or 2 threads agree bit for bit.

use super::host::param;
#[cfg(runner_onednn)]
use super::onednn;
use super::onednn::Pass;
use super::store::Path;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, Var};
use rayon::prelude::*;
use std::borrow::Cow;
use std::cell::RefCell;

/// Geometry of a convolution (square kernels, same value on both axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

/// `y = conv(x, w)`: x (N, C_in, H, W), w (C_out, C_in / groups, K, K).
pub fn conv2d(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    let (xd, wd) = (x.dims(), w.dims());
    if xd.len() != 4 || wd.len() != 4 {
        bail!("conv2d: expected x (N, C, H, W) and w (C_out, C_in/groups, K, K), got x {xd:?}, w {wd:?}");
    }
    let fast = super::host::is_cpu_f32(x)
        && w.dtype() == DType::F32
        && w.device().is_cpu()
        && wd[2] == wd[3];
    if !fast {
        return x.conv2d(w, p.padding, p.stride, p.dilation, p.groups);
    }
    let g = Geom::new(xd, wd, p)?;
    x.apply_op2(w, ConvFwd(g))
}

/// A convolution layer with an optional bias.
pub struct Conv2d {
    pub weight: Var,
    pub bias: Option<Var>,
    pub params: ConvParams,
}

impl Conv2d {
    /// Registers `weight` (and `bias`) under `path` with the given initial values.
    pub fn new(
        path: &Path,
        weight: Tensor,
        bias: Option<Tensor>,
        params: ConvParams,
    ) -> Result<Self> {
        let weight = path.param("weight", weight)?;
        let bias = match bias {
            Some(b) => Some(path.param("bias", b)?),
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            params,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, self.params)
    }

    /// The layer's weights with other geometry (DARTS's dynamic stride on reduction inputs).
    pub fn forward_with(&self, x: &Tensor, params: ConvParams) -> Result<Tensor> {
        let y = conv2d(x, &param(&self.weight), params)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&param(b).reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    n: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    k: usize,
    ho: usize,
    wo: usize,
    s: usize,
    p: usize,
    d: usize,
    g: usize,
}

impl Geom {
    fn new(xd: &[usize], wd: &[usize], p: ConvParams) -> Result<Self> {
        let (n, ci, h, w) = (xd[0], xd[1], xd[2], xd[3]);
        let (co, cig, k) = (wd[0], wd[1], wd[2]);
        let ConvParams {
            stride: s,
            padding: pad,
            dilation: d,
            groups: g,
        } = p;
        if s == 0 || d == 0 || g == 0 {
            bail!("conv2d: stride, dilation and groups must be >= 1, got {p:?}");
        }
        if k == 0 || wd[3] != k {
            bail!("conv2d: expected a non-empty square kernel, got weight {wd:?}");
        }
        if ci % g != 0 || co % g != 0 || cig * g != ci {
            bail!("conv2d: input {xd:?} and weight {wd:?} do not match groups = {g}");
        }
        let span = d * (k - 1) + 1;
        if h + 2 * pad < span || w + 2 * pad < span {
            bail!("conv2d: kernel {k} (dilation {d}) larger than padded input {h}x{w} (padding {pad})");
        }
        let ho = (h + 2 * pad - span) / s + 1;
        let wo = (w + 2 * pad - span) / s + 1;
        Ok(Self {
            n,
            ci,
            co,
            h,
            w,
            k,
            ho,
            wo,
            s,
            p: pad,
            d,
            g,
        })
    }

    fn x_dims(&self) -> [usize; 4] {
        [self.n, self.ci, self.h, self.w]
    }
    fn w_dims(&self) -> [usize; 4] {
        [self.co, self.ci / self.g, self.k, self.k]
    }
    fn y_dims(&self) -> [usize; 4] {
        [self.n, self.co, self.ho, self.wo]
    }
    fn cig(&self) -> usize {
        self.ci / self.g
    }
    fn cog(&self) -> usize {
        self.co / self.g
    }
    fn kk(&self) -> usize {
        self.k * self.k
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn howo(&self) -> usize {
        self.ho * self.wo
    }
    fn depthwise(&self) -> bool {
        self.g == self.ci && self.ci == self.co
    }
    /// A 1x1 stride-1 unpadded conv reads the image itself as its im2col matrix.
    fn direct(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }
    /// Row stride of the im2col matrix: Ho*Wo rounded up to 16 floats and, when that is a
    /// multiple of 64 floats, moved off by 16 more, so that the K*K*C rows gemm walks down in
    /// step do not all map to the same few L1 sets (a 4 KiB row stride aliases).
    fn col_ld(&self) -> usize {
        let ld = self.howo().next_multiple_of(16);
        if ld.is_multiple_of(64) {
            ld + 16
        } else {
            ld
        }
    }
    /// Rows of the im2col matrix: (c, kh, kw) over all channels.
    fn col_rows(&self) -> usize {
        self.ci * self.kk()
    }
}

// ---------------------------------------------------------------------------------------------
// Custom ops

/// Forward op, differentiable with respect to both arguments.
struct ConvFwd(Geom);
/// `dx` from (grad_y, w).
struct ConvBwdInput(Geom);
/// `dw` from (x, grad_y).
struct ConvBwdWeight(Geom);

impl CustomOp2 for ConvFwd {
    fn name(&self) -> &'static str {
        "runner-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = f32_input(s1, l1, &g.x_dims(), "conv2d input")?;
        let w = f32_input(s2, l2, &g.w_dims(), "conv2d weight")?;
        let y = if let Some(out) = via_onednn(g, Pass::Forward, &x, &w, &g.y_dims())? {
            out
        } else if g.depthwise() {
            dw_forward(g, &x, &w)
        } else {
            gemm_forward(g, &x, &w)
        };
        Ok((CpuStorage::F32(y), Shape::from_dims(&g.y_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // A constant input (the stem's image batch) needs no gradient: skipping it saves the
        // most expensive of the three passes.
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &ConvBwdInput(self.0))?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(grad, &ConvBwdWeight(self.0))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for ConvBwdInput {
    fn name(&self) -> &'static str {
        "runner-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let dy = f32_input(s1, l1, &g.y_dims(), "conv2d output gradient")?;
        let w = f32_input(s2, l2, &g.w_dims(), "conv2d weight")?;
        let dx = if let Some(out) = via_onednn(g, Pass::GradInput, &dy, &w, &g.x_dims())? {
            out
        } else if g.depthwise() {
            dw_grad_input(g, &dy, &w)
        } else {
            gemm_grad_input(g, &dy, &w)
        };
        Ok((CpuStorage::F32(dx), Shape::from_dims(&g.x_dims())))
    }
}

impl CustomOp2 for ConvBwdWeight {
    fn name(&self) -> &'static str {
        "runner-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = f32_input(s1, l1, &g.x_dims(), "conv2d input")?;
        let dy = f32_input(s2, l2, &g.y_dims(), "conv2d output gradient")?;
        let dw = if let Some(out) = via_onednn(g, Pass::GradWeight, &x, &dy, &g.w_dims())? {
            out
        } else if g.depthwise() {
            dw_grad_weight(g, &x, &dy)
        } else {
            gemm_grad_weight(g, &x, &dy)
        };
        Ok((CpuStorage::F32(dw), Shape::from_dims(&g.w_dims())))
    }
}

/// A convolution pass through oneDNN when that engine is in use on this thread (see
/// `super::onednn`); `None` sends it to runner's own kernels. Dilated depthwise convolutions
/// always stay here: oneDNN's plain-layout kernels for them are 10x slower in the backward passes
/// (README, "Choosing the CPU engine by measurement").
fn via_onednn(
    g: &Geom,
    pass: Pass,
    a: &[f32],
    b: &[f32],
    out_dims: &[usize; 4],
) -> Result<Option<Vec<f32>>> {
    #[cfg(runner_onednn)]
    if onednn::engine() == onednn::ConvEngine::OneDnn && !(g.g > 1 && g.d > 1) {
        let len: usize = out_dims.iter().product();
        // Empty tensors stay with runner's kernels, which return the empty (or zero) result.
        if len > 0 && !a.is_empty() && !b.is_empty() {
            let geom = [g.n, g.ci, g.co, g.h, g.w, g.k, g.s, g.p, g.d, g.g].map(|v| v as i64);
            let mut out = vec![0.0f32; len];
            onednn::run(pass, &geom, a, b, &mut out, rayon::current_num_threads())?;
            return Ok(Some(out));
        }
    }
    let _ = (g, pass, a, b, out_dims);
    Ok(None)
}

/// The f32 elements of a tensor in row-major order, borrowed when already contiguous.
fn f32_input<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    dims: &[usize],
    what: &str,
) -> Result<Cow<'a, [f32]>> {
    if l.dims() != dims {
        bail!("{what}: expected shape {dims:?}, got {:?}", l.dims());
    }
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{what}: expected f32, got {:?}", other.dtype()),
    };
    let len: usize = dims.iter().product();
    if let Some((start, end)) = l.contiguous_offsets() {
        return match data.get(start..end) {
            Some(v) if v.len() == len => Ok(Cow::Borrowed(v)),
            _ => bail!(
                "{what}: storage of {} elements too short for {start}..{end}",
                data.len()
            ),
        };
    }
    // Strided view (a transpose, a narrow of a non-leading axis, a broadcast): gather it.
    let stride = l.stride();
    let mut max = l.start_offset();
    for (&dim, &st) in dims.iter().zip(stride) {
        max += dim.saturating_sub(1) * st;
    }
    if len > 0 && max >= data.len() {
        bail!(
            "{what}: strided view reaches element {max} of {}",
            data.len()
        );
    }
    let mut out = Vec::with_capacity(len);
    gather(data, dims, stride, l.start_offset(), &mut out);
    Ok(Cow::Owned(out))
}

fn gather(data: &[f32], dims: &[usize], stride: &[usize], offset: usize, out: &mut Vec<f32>) {
    match dims {
        [] => out.push(data[offset]),
        [d] => out.extend((0..*d).map(|i| data[offset + i * stride[0]])),
        [d, rest @ ..] => {
            for i in 0..*d {
                gather(data, rest, &stride[1..], offset + i * stride[0], out);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Threads, scratch buffers, SIMD dispatch

fn num_threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a per-thread buffer of `len` floats (contents unspecified), reused across calls so
/// that the im2col matrix is not re-allocated (and page-faulted in) for every image.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (rayon ran another conv task while this one waited).
        Err(_) => f(&mut vec![0.0; len]),
    })
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Defines `fn $name(args)` that runs `$body` compiled for AVX2+FMA when the CPU has them and
/// for the baseline target otherwise. Helpers called from the body must be `#[inline(always)]`
/// to be compiled with the same features.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if has_avx2_fma() {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    unsafe { avx2($($arg),*) };
                    return;
                }
            }
            body($($arg),*)
        }
    };
}

#[inline(always)]
fn add_into(y: &mut [f32], x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += x;
    }
}

/// `dst.copy_from_slice(src)` for the short runs (one image row, one pixel's channels) that
/// im2col moves: inline vector moves instead of a `memcpy` call per run.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let v: [f32; 8] = [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]];
        d.copy_from_slice(&v);
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = *s;
    }
}

/// Output positions o in 0..n_out whose input index o*s + off - p lies in 0..len.
#[inline(always)]
fn valid_range(n_out: usize, s: usize, off: usize, p: usize, len: usize) -> (usize, usize) {
    let lo = if p > off { (p - off).div_ceil(s) } else { 0 };
    let hi = if len + p > off {
        ((len + p - off - 1) / s + 1).min(n_out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

// ---------------------------------------------------------------------------------------------
// gemm path: im2col / col2im around the `gemm` crate

/// `dst (m x n) = [dst +] a (m x k) @ b (k x n)`, every matrix given by (slice, row stride,
/// column stride).
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: (&mut [f32], usize, usize),
    accumulate: bool,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let reach = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    // These shapes come from validated geometry; the asserts guard the unsafe call below.
    assert!(
        reach(m, n, dst.1, dst.2) < dst.0.len(),
        "gemm dst out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.0[i * dst.1 + j * dst.2] = 0.0;
                }
            }
        }
        return;
    }
    assert!(reach(m, k, a.1, a.2) < a.0.len(), "gemm lhs out of bounds");
    assert!(reach(k, n, b.1, b.2) < b.0.len(), "gemm rhs out of bounds");
    // SAFETY: all three matrices lie inside their slices (checked above) and dst does not alias
    // the inputs (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0.as_mut_ptr(),
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            a.0.as_ptr(),
            a.2 as isize,
            a.1 as isize,
            b.0.as_ptr(),
            b.2 as isize,
            b.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

simd_fn! {
    /// col (C*K*K, Ho*Wo) of one image x_n (C, H, W); rows ordered (c, kh, kw).
    fn im2col(g: &Geom, x: &[f32], col: &mut [f32]) {
        let (howo, wo, hw, w, s, k, d, p) = (g.howo(), g.wo, g.hw(), g.w, g.s, g.k, g.d, g.p);
        let ld = g.col_ld();
        for c in 0..g.ci {
            let plane = &x[c * hw..(c + 1) * hw];
            for kh in 0..k {
                let (oh_lo, oh_hi) = valid_range(g.ho, s, kh * d, p, g.h);
                for kw in 0..k {
                    let row = &mut col[((c * k + kh) * k + kw) * ld..][..howo];
                    let (ow_lo, ow_hi) = valid_range(wo, s, kw * d, p, w);
                    row[..oh_lo * wo].fill(0.0);
                    row[oh_hi * wo..].fill(0.0);
                    for oh in oh_lo..oh_hi {
                        let ih = oh * s + kh * d - p;
                        let src = &plane[ih * w..(ih + 1) * w];
                        let dst = &mut row[oh * wo..(oh + 1) * wo];
                        dst[..ow_lo].fill(0.0);
                        dst[ow_hi..].fill(0.0);
                        if ow_lo < ow_hi {
                            let first = ow_lo * s + kw * d - p;
                            if s == 1 {
                                copy_short(&mut dst[ow_lo..ow_hi], &src[first..first + ow_hi - ow_lo]);
                            } else {
                                for (o, v) in dst[ow_lo..ow_hi].iter_mut().zip(src[first..].iter().step_by(s)) {
                                    *o = *v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// dx_n (C, H, W) = col2im(dcol): the adjoint of `im2col`, overwriting dx.
    fn col2im(g: &Geom, dcol: &[f32], dx: &mut [f32]) {
        let (howo, wo, hw, w, s, k, d, p) = (g.howo(), g.wo, g.hw(), g.w, g.s, g.k, g.d, g.p);
        let ld = g.col_ld();
        dx.fill(0.0);
        for c in 0..g.ci {
            let plane = &mut dx[c * hw..(c + 1) * hw];
            for kh in 0..k {
                let (oh_lo, oh_hi) = valid_range(g.ho, s, kh * d, p, g.h);
                for kw in 0..k {
                    let row = &dcol[((c * k + kh) * k + kw) * ld..][..howo];
                    let (ow_lo, ow_hi) = valid_range(wo, s, kw * d, p, w);
                    if ow_lo >= ow_hi {
                        continue;
                    }
                    for oh in oh_lo..oh_hi {
                        let ih = oh * s + kh * d - p;
                        let dst = &mut plane[ih * w..(ih + 1) * w];
                        let src = &row[oh * wo + ow_lo..oh * wo + ow_hi];
                        let first = ow_lo * s + kw * d - p;
                        if s == 1 {
                            add_into(&mut dst[first..first + src.len()], src);
                        } else {
                            for (o, v) in dst[first..].iter_mut().step_by(s).zip(src) {
                                *o += *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Images are processed in parallel (one single-threaded gemm each) when there are enough of
/// them; otherwise one image at a time with a multi-threaded gemm.
fn per_image_parallel(g: &Geom) -> bool {
    g.n >= num_threads()
}

fn inner_par(g: &Geom) -> gemm::Parallelism {
    let t = num_threads();
    if t > 1 && !per_image_parallel(g) {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    }
}

fn gemm_forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (cog, ckk, howo) = (g.cog(), g.cig() * g.kk(), g.howo());
    let par = inner_par(g);
    let one = |x_n: &[f32], y_n: &mut [f32]| {
        let run = |col: &[f32], ld: usize, y_n: &mut [f32]| {
            for grp in 0..g.g {
                matmul(
                    cog,
                    howo,
                    ckk,
                    (&mut y_n[grp * cog * howo..], howo, 1),
                    false,
                    (&w[grp * cog * ckk..], ckk, 1),
                    (&col[grp * ckk * ld..], ld, 1),
                    par,
                );
            }
        };
        if g.direct() {
            run(x_n, howo, y_n);
        } else {
            with_scratch(g.col_rows() * g.col_ld(), |col| {
                im2col(g, x_n, col);
                run(col, g.col_ld(), y_n);
            });
        }
    };
    let mut y = vec![0.0f32; g.n * g.co * howo];
    let (xs, ys) = (g.ci * g.hw(), g.co * howo);
    // No input channels (or pixels) leaves the zero output; chunking by 0 would panic.
    if ys == 0 || xs == 0 {
        return y;
    }
    if per_image_parallel(g) {
        y.par_chunks_mut(ys)
            .zip(x.par_chunks(xs))
            .for_each(|(y_n, x_n)| one(x_n, y_n));
    } else {
        y.chunks_mut(ys)
            .zip(x.chunks(xs))
            .for_each(|(y_n, x_n)| one(x_n, y_n));
    }
    y
}

fn gemm_grad_input(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (cog, ckk, howo) = (g.cog(), g.cig() * g.kk(), g.howo());
    let par = inner_par(g);
    let one = |dy_n: &[f32], dx_n: &mut [f32]| {
        // dcol_g (C_in/g*K*K, HoWo) = W_g^T @ dy_g
        let run = |dcol: &mut [f32], ld: usize| {
            for grp in 0..g.g {
                matmul(
                    ckk,
                    howo,
                    cog,
                    (&mut dcol[grp * ckk * ld..], ld, 1),
                    false,
                    (&w[grp * cog * ckk..], 1, ckk),
                    (&dy_n[grp * cog * howo..], howo, 1),
                    par,
                );
            }
        };
        if g.direct() {
            run(dx_n, howo);
        } else {
            with_scratch(g.col_rows() * g.col_ld(), |dcol| {
                run(dcol, g.col_ld());
                col2im(g, dcol, dx_n);
            });
        }
    };
    let mut dx = vec![0.0f32; g.n * g.ci * g.hw()];
    let (xs, ys) = (g.ci * g.hw(), g.co * howo);
    if xs == 0 || ys == 0 {
        return dx;
    }
    if per_image_parallel(g) {
        dx.par_chunks_mut(xs)
            .zip(dy.par_chunks(ys))
            .for_each(|(dx_n, dy_n)| one(dy_n, dx_n));
    } else {
        dx.chunks_mut(xs)
            .zip(dy.chunks(ys))
            .for_each(|(dx_n, dy_n)| one(dy_n, dx_n));
    }
    dx
}

/// Number of image chunks whose partial weight gradients are summed in order: a function of the
/// shapes only (never of the thread count) so that results are reproducible.
fn weight_grad_chunks(n: usize, partial_len: usize) -> usize {
    const MAX_PARTIAL_FLOATS: usize = 8 << 20;
    n.min(16)
        .min((MAX_PARTIAL_FLOATS / partial_len.max(1)).max(1))
        .max(1)
}

simd_fn! {
    /// x_n (C, H*W) -> (H*W, C), in blocks of positions so that both sides stay in cache.
    fn to_hwc(c: usize, hw: usize, x: &[f32], out: &mut [f32]) {
        const B: usize = 64;
        for p0 in (0..hw).step_by(B) {
            let p1 = (p0 + B).min(hw);
            for ch in 0..c {
                let src = &x[ch * hw + p0..ch * hw + p1];
                for (i, &v) in src.iter().enumerate() {
                    out[(p0 + i) * c + ch] = v;
                }
            }
        }
    }
}

simd_fn! {
    /// colT_g (Ho*Wo, K*K*C_in/g) of group `grp` from x_hwc (H, W, C_in); columns ordered
    /// (kh, kw, c). Unlike `im2col`, every row of the result (one output position) is a
    /// run of channel vectors copied whole, and the matrix is column-major for gemm's lhs, which
    /// spares gemm a strided (scalar) packing pass over the largest operand.
    fn im2col_hwc(g: &Geom, grp: usize, xhwc: &[f32], colt: &mut [f32]) {
        let (k, s, d, p, w, c, cg) = (g.k, g.s, g.d, g.p, g.w, g.ci, g.cig());
        let kkc = g.kk() * cg;
        let (ow_lo, ow_hi) = (0..k).fold((0, g.wo), |(lo, hi), kw| {
            let (l, h) = valid_range(g.wo, s, kw * d, p, w);
            (lo.max(l), hi.min(h))
        });
        // With one group and no dilation the K channel vectors of a kernel row are adjacent.
        let row_run = g.g == 1 && d == 1;
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                let row = &mut colt[(oh * g.wo + ow) * kkc..][..kkc];
                for kh in 0..k {
                    let seg = &mut row[kh * k * cg..(kh + 1) * k * cg];
                    let ih = (oh * s + kh * d) as isize - p as isize;
                    if ih < 0 || ih >= g.h as isize {
                        seg.fill(0.0);
                        continue;
                    }
                    let base = ih as usize * w;
                    if row_run && ow >= ow_lo && ow < ow_hi {
                        let iw = ow * s - p;
                        copy_short(seg, &xhwc[(base + iw) * c..(base + iw + k) * c]);
                        continue;
                    }
                    for kw in 0..k {
                        let dst = &mut seg[kw * cg..(kw + 1) * cg];
                        let iw = (ow * s + kw * d) as isize - p as isize;
                        if iw < 0 || iw >= w as isize {
                            dst.fill(0.0);
                        } else {
                            let at = (base + iw as usize) * c + grp * cg;
                            copy_short(dst, &xhwc[at..at + cg]);
                        }
                    }
                }
            }
        }
    }
}

fn gemm_grad_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (cog, cg, kk, howo, hw) = (g.cog(), g.cig(), g.kk(), g.howo(), g.hw());
    let kkc = kk * cg;
    let wlen = g.co * kkc;
    let (xs, ys) = (g.ci * hw, g.co * howo);
    let par = inner_par(g);
    // dW'_g (C_out/g, K*K*C_in/g) += dy_g (C_out/g, HoWo) @ colT_g, columns ordered (kh, kw, c).
    let accumulate = |x_n: &[f32], dy_n: &[f32], dw: &mut [f32], first: bool| {
        let col_len = if g.direct() { 0 } else { howo * kkc };
        with_scratch(xs + col_len, |buf| {
            let (xhwc, colt) = buf.split_at_mut(xs);
            to_hwc(g.ci, hw, x_n, xhwc);
            for grp in 0..g.g {
                // A 1x1 stride-1 conv's colT_g is a column slice of x_hwc itself.
                let b: (&[f32], usize, usize) = if g.direct() {
                    (&xhwc[grp * cg..], g.ci, 1)
                } else {
                    im2col_hwc(g, grp, xhwc, colt);
                    (colt, kkc, 1)
                };
                matmul(
                    cog,
                    kkc,
                    howo,
                    (&mut dw[grp * cog * kkc..], kkc, 1),
                    !first,
                    (&dy_n[grp * cog * howo..], howo, 1),
                    b,
                    par,
                );
            }
        })
    };
    if g.n == 0 || wlen == 0 {
        return vec![0.0; wlen];
    }
    let chunks = weight_grad_chunks(g.n, wlen);
    let per = g.n.div_ceil(chunks);
    let partial = |c: usize| {
        let mut dw = vec![0.0f32; wlen];
        for (i, img) in (c * per..((c + 1) * per).min(g.n)).enumerate() {
            accumulate(
                &x[img * xs..(img + 1) * xs],
                &dy[img * ys..(img + 1) * ys],
                &mut dw,
                i == 0,
            );
        }
        dw
    };
    let chunks = g.n.div_ceil(per);
    let partials: Vec<Vec<f32>> = if per_image_parallel(g) {
        (0..chunks).into_par_iter().map(partial).collect()
    } else {
        (0..chunks).map(partial).collect()
    };
    let mut it = partials.into_iter();
    let mut sum = it.next().unwrap_or_else(|| vec![0.0; wlen]);
    for p in it {
        add_into(&mut sum, &p);
    }
    // (C_out, kh, kw, c) -> (C_out, c, kh, kw)
    let mut dw = vec![0.0f32; wlen];
    for (o, src) in dw.chunks_mut(kkc).zip(sum.chunks(kkc)) {
        for t in 0..kk {
            for ch in 0..cg {
                o[ch * kk + t] = src[t * cg + ch];
            }
        }
    }
    dw
}

// ---------------------------------------------------------------------------------------------
// Depthwise path: direct kernels on a padded, phase-split copy of each plane.
//
// A plane (H, W) with padding p and stride s is stored as P[r][ph][q] = xpad[r][q*s + ph]
// (r < H + 2p, ph < s, q < ceil((W + 2p) / s)). Output column ow of tap (kh, kw) then reads
// P[oh*s + kh*d][(kw*d) % s][ow + (kw*d) / s]: contiguous in ow for every stride, so each output
// row is a weighted sum of K*K contiguous runs ("gather"), accumulated in registers. Scatter forms
// (adding shifted runs into one row tap after tap) stall on store-to-load forwarding.

#[derive(Clone, Copy)]
struct Phased {
    wq: usize,
    s: usize,
    len: usize,
}

impl Phased {
    fn new(g: &Geom) -> Self {
        let wq = (g.w + 2 * g.p).div_ceil(g.s);
        Self {
            wq,
            s: g.s,
            len: (g.h + 2 * g.p) * g.s * wq,
        }
    }
    /// Distance between the runs read by consecutive output rows.
    fn row_step(&self) -> usize {
        self.s * self.s * self.wq
    }
    /// Start of the run read by output row 0 for tap (kh, kw).
    fn tap(&self, g: &Geom, kh: usize, kw: usize) -> usize {
        let col = kw * g.d;
        (kh * g.d * self.s + col % self.s) * self.wq + col / self.s
    }
}

#[inline(always)]
fn phase_split(g: &Geom, ph: &Phased, plane: &[f32], buf: &mut [f32]) {
    buf.fill(0.0);
    let (w, p, s, wq) = (g.w, g.p, g.s, ph.wq);
    for ih in 0..g.h {
        let src = &plane[ih * w..(ih + 1) * w];
        let r = ih + p;
        if s == 1 {
            copy_short(&mut buf[r * wq + p..r * wq + p + w], src);
        } else {
            for (iw, &v) in src.iter().enumerate() {
                let c = iw + p;
                buf[(r * s + c % s) * wq + c / s] = v;
            }
        }
    }
}

/// out[i] = sum over taps (off, w) of w * src[off + i], in tap order.
#[inline(always)]
fn gather_row(out: &mut [f32], src: &[f32], taps: &[(usize, f32)]) {
    #[inline(always)]
    fn block<const L: usize>(out: &mut [f32], src: &[f32], taps: &[(usize, f32)], i: usize) {
        let mut acc = [0.0f32; L];
        for &(off, w) in taps {
            let s = &src[off + i..off + i + L];
            for l in 0..L {
                acc[l] += w * s[l];
            }
        }
        out[i..i + L].copy_from_slice(&acc);
    }
    let n = out.len();
    let mut i = 0;
    while i + 16 <= n {
        block::<16>(out, src, taps, i);
        i += 16;
    }
    if i + 8 <= n {
        block::<8>(out, src, taps, i);
        i += 8;
    }
    for i in i..n {
        let mut acc = 0.0f32;
        for &(off, w) in taps {
            acc += w * src[off + i];
        }
        out[i] = acc;
    }
}

/// lanes[l] += sum over rows r of a[r*a_step + i + l] * b[r*b_step + i + l] for a block of L
/// columns starting at i (rows accumulated in registers first).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dot_block<const L: usize>(
    lanes: &mut [f32],
    a: &[f32],
    a_step: usize,
    b: &[f32],
    b_step: usize,
    rows: usize,
    i: usize,
) {
    let mut acc = [0.0f32; L];
    for r in 0..rows {
        let x = &a[r * a_step + i..r * a_step + i + L];
        let y = &b[r * b_step + i..r * b_step + i + L];
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    for l in 0..L {
        lanes[l] += acc[l];
    }
}

simd_fn! {
    fn dw_fwd_planes(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32], first_plane: usize, buf: &mut [f32]) {
        let ph = Phased::new(g);
        let (hw, howo, wo, k, kk, step) = (g.hw(), g.howo(), g.wo, g.k, g.kk(), ph.row_step());
        let mut taps: Vec<(usize, f32)> = Vec::with_capacity(kk);
        for (i, y_p) in y.chunks_mut(howo).enumerate() {
            let plane_idx = first_plane + i;
            let c = plane_idx % g.co;
            taps.clear();
            for kh in 0..k {
                for kw in 0..k {
                    taps.push((ph.tap(g, kh, kw), w[c * kk + kh * k + kw]));
                }
            }
            phase_split(g, &ph, &x[plane_idx * hw..(plane_idx + 1) * hw], buf);
            for oh in 0..g.ho {
                gather_row(&mut y_p[oh * wo..(oh + 1) * wo], &buf[oh * step..], &taps);
            }
        }
    }
}

/// Layout of the column-padded copy of a dy plane used by the depthwise input gradient.
#[derive(Clone, Copy)]
struct DyPad {
    /// Zero columns on the left: the largest (kw*d) / s.
    left: usize,
    /// Row length: ceil((W + 2p) / s) + left.
    width: usize,
}

impl DyPad {
    fn new(g: &Geom) -> Self {
        let left = (g.k - 1) * g.d / g.s;
        Self {
            left,
            width: Phased::new(g).wq + left,
        }
    }
}

/// Which taps feed each (input row, output phase) of the depthwise input gradient, as
/// (offset into the column-padded dy plane, tap index kh*K + kw), and where each list starts.
/// Padded input row r = ih + p in phase φ (columns with (iw + p) % s == φ) receives tap (kh, kw)
/// when r - kh*d is a multiple of s naming a real output row and (kw*d) % s == φ; the dy column
/// is then q - (kw*d) / s for phase-split column q.
fn dw_input_taps(g: &Geom, pad: &DyPad) -> (Vec<(usize, usize)>, Vec<usize>) {
    let (k, s, d) = (g.k, g.s, g.d);
    let mut taps = Vec::new();
    let mut starts = Vec::with_capacity(g.h * s + 1);
    for ih in 0..g.h {
        let r = ih + g.p;
        for phase in 0..s {
            starts.push(taps.len());
            for kh in 0..k {
                let Some(rr) = r.checked_sub(kh * d) else {
                    break;
                };
                if rr % s != 0 || rr / s >= g.ho {
                    continue;
                }
                for kw in 0..k {
                    if (kw * d) % s == phase {
                        taps.push(((rr / s) * pad.width + pad.left - (kw * d) / s, kh * k + kw));
                    }
                }
            }
        }
    }
    starts.push(taps.len());
    (taps, starts)
}

simd_fn! {
    /// dx of planes first_plane.. as a gather over dy (see `dw_input_taps`).
    fn dw_grad_input_planes(
        g: &Geom,
        table: &(Vec<(usize, usize)>, Vec<usize>),
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        first_plane: usize,
        buf: &mut [f32],
    ) {
        let ph = Phased::new(g);
        let pad = DyPad::new(g);
        let (hw, howo, wo, kk, s, p, wq) = (g.hw(), g.howo(), g.wo, g.kk(), g.s, g.p, ph.wq);
        let (taps, starts) = table;
        let mut weighted: Vec<(usize, f32)> = Vec::with_capacity(taps.len());
        let (dyc, out) = buf.split_at_mut(g.ho * pad.width);
        let out = &mut out[..s * wq];
        for (i, dx_p) in dx.chunks_mut(hw).enumerate() {
            let plane_idx = first_plane + i;
            let c = plane_idx % g.ci;
            let wc = &w[c * kk..(c + 1) * kk];
            weighted.clear();
            weighted.extend(taps.iter().map(|&(off, t)| (off, wc[t])));
            let dy_p = &dy[plane_idx * howo..(plane_idx + 1) * howo];
            dyc.fill(0.0);
            for oh in 0..g.ho {
                let at = oh * pad.width + pad.left;
                copy_short(&mut dyc[at..at + wo], &dy_p[oh * wo..(oh + 1) * wo]);
            }
            for ih in 0..g.h {
                let dst = &mut dx_p[ih * g.w..(ih + 1) * g.w];
                if s == 1 {
                    // Only the columns of the real input: phase-split column q = iw + p.
                    let row = &weighted[starts[ih]..starts[ih + 1]];
                    gather_row(dst, &dyc[p..], row);
                    continue;
                }
                for phase in 0..s {
                    let row = &weighted[starts[ih * s + phase]..starts[ih * s + phase + 1]];
                    gather_row(&mut out[phase * wq..(phase + 1) * wq], dyc, row);
                }
                // Crop the padding and interleave the phases back.
                for (iw, o) in dst.iter_mut().enumerate() {
                    let col = iw + p;
                    *o = out[(col % s) * wq + col / s];
                }
            }
        }
    }
}

simd_fn! {
    /// dw[c] for channels first_c.. (one K*K block per channel in `dw`), summed over all images.
    fn dw_grad_weight_channels(g: &Geom, x: &[f32], dy: &[f32], dw: &mut [f32], first_c: usize, buf: &mut [f32]) {
        let ph = Phased::new(g);
        let (hw, howo, wo, k, kk, step) = (g.hw(), g.howo(), g.wo, g.k, g.kk(), ph.row_step());
        let (plane_buf, acc) = buf.split_at_mut(ph.len);
        // Per tap: 16 lane sums for the full 16-column blocks, 8 for an 8-column block, then one
        // scalar for the remaining columns; reduced once per channel in a fixed order.
        let per_tap = 16 + 8 + 1;
        let acc = &mut acc[..kk * per_tap];
        let full16 = wo / 16 * 16;
        let has8 = wo - full16 >= 8;
        let tail_start = full16 + if has8 { 8 } else { 0 };
        for (i, dw_c) in dw.chunks_mut(kk).enumerate() {
            let c = first_c + i;
            acc.fill(0.0);
            for n in 0..g.n {
                let plane_idx = n * g.ci + c;
                phase_split(g, &ph, &x[plane_idx * hw..(plane_idx + 1) * hw], plane_buf);
                let dy_p = &dy[plane_idx * howo..(plane_idx + 1) * howo];
                for kh in 0..k {
                    for kw in 0..k {
                        let t = kh * k + kw;
                        let src = &plane_buf[ph.tap(g, kh, kw)..];
                        let a = &mut acc[t * per_tap..(t + 1) * per_tap];
                        let mut col = 0;
                        while col < full16 {
                            dot_block::<16>(&mut a[..16], dy_p, wo, src, step, g.ho, col);
                            col += 16;
                        }
                        if has8 {
                            dot_block::<8>(&mut a[16..24], dy_p, wo, src, step, g.ho, col);
                        }
                        if tail_start < wo {
                            let mut sum = 0.0f32;
                            for oh in 0..g.ho {
                                for ow in tail_start..wo {
                                    sum += dy_p[oh * wo + ow] * src[oh * step + ow];
                                }
                            }
                            a[24] += sum;
                        }
                    }
                }
            }
            for (t, out) in dw_c.iter_mut().enumerate() {
                *out = acc[t * per_tap..(t + 1) * per_tap].iter().sum();
            }
        }
    }
}

/// Planes per parallel task: enough work per task to amortise scheduling, fixed by the shapes.
fn planes_per_task(plane_work: usize) -> usize {
    (65536 / plane_work.max(1)).max(1)
}

fn dw_forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let howo = g.howo();
    let mut y = vec![0.0f32; g.n * g.co * howo];
    if y.is_empty() {
        return y;
    }
    let per = planes_per_task(howo * g.kk());
    let blen = Phased::new(g).len;
    y.par_chunks_mut(per * howo)
        .enumerate()
        .for_each(|(t, y_t)| {
            with_scratch(blen, |buf| dw_fwd_planes(g, x, w, y_t, t * per, buf));
        });
    y
}

fn dw_grad_input(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let hw = g.hw();
    let mut dx = vec![0.0f32; g.n * g.ci * hw];
    if dx.is_empty() || g.howo() == 0 {
        return dx;
    }
    let per = planes_per_task(g.howo() * g.kk());
    let pad = DyPad::new(g);
    let blen = g.ho * pad.width + g.s * Phased::new(g).wq;
    let table = dw_input_taps(g, &pad);
    dx.par_chunks_mut(per * hw)
        .enumerate()
        .for_each(|(t, dx_t)| {
            with_scratch(blen, |buf| {
                dw_grad_input_planes(g, &table, dy, w, dx_t, t * per, buf)
            });
        });
    dx
}

fn dw_grad_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let kk = g.kk();
    let mut dw = vec![0.0f32; g.co * kk];
    if dw.is_empty() {
        return dw;
    }
    let blen = Phased::new(g).len + kk * 25;
    dw.par_chunks_mut(kk).enumerate().for_each(|(c, dw_c)| {
        with_scratch(blen, |buf| dw_grad_weight_channels(g, x, dy, dw_c, c, buf));
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::init;
    use crate::nn::onednn;
    use crate::rng::stream;
    use candle_core::Device;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/conv.npz");
    const TOL: f32 = 1e-4;

    struct Case {
        name: String,
        p: ConvParams,
        x: Tensor,
        w: Tensor,
        g: Tensor,
        y: Tensor,
        dx: Tensor,
        dw: Tensor,
    }

    /// The cases of `tests/fixtures/gen_conv.py` (see its docstring for the layout).
    fn load_cases() -> Vec<Case> {
        let all = Tensor::read_npz(FIXTURE).unwrap();
        let get = |key: &str| {
            all.iter()
                .find(|(k, _)| k == key)
                .map(|(_, t)| t.clone())
                .unwrap()
        };
        let mut names: Vec<String> = all
            .iter()
            .filter_map(|(k, _)| k.strip_suffix(".meta").map(str::to_string))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let m = get(&format!("{name}.meta")).to_vec1::<i64>().unwrap();
                let m: Vec<usize> = m.iter().map(|&v| v as usize).collect();
                let (n, ci, co, h, w, k, s, p, d, g) =
                    (m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9]);
                let ho = (h + 2 * p - d * (k - 1) - 1) / s + 1;
                let wo = (w + 2 * p - d * (k - 1) - 1) / s + 1;
                let data = get(&format!("{name}.data"));
                let shapes: [Vec<usize>; 6] = [
                    vec![n, ci, h, w],
                    vec![co, ci / g, k, k],
                    vec![n, co, ho, wo],
                    vec![n, co, ho, wo],
                    vec![n, ci, h, w],
                    vec![co, ci / g, k, k],
                ];
                let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
                assert_eq!(data.dims(), &[total], "{name}: data length");
                let mut off = 0;
                let mut parts = shapes.iter().map(|s| {
                    let len = s.iter().product::<usize>();
                    let t = data
                        .narrow(0, off, len)
                        .unwrap()
                        .reshape(s.as_slice())
                        .unwrap();
                    off += len;
                    t
                });
                let mut next = || parts.next().unwrap();
                Case {
                    p: ConvParams {
                        stride: s,
                        padding: p,
                        dilation: d,
                        groups: g,
                    },
                    x: next(),
                    w: next(),
                    g: next(),
                    y: next(),
                    dx: next(),
                    dw: next(),
                    name,
                }
            })
            .collect()
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        let scale = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max).max(1e-6);
        diff / scale
    }

    /// (y, dx, dw) of loss = sum(y * g), with x either a Var or a constant.
    fn run(
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
        p: ConvParams,
        x_var: bool,
    ) -> (Tensor, Option<Tensor>, Tensor) {
        let xv = Var::from_tensor(x).unwrap();
        let wv = Var::from_tensor(w).unwrap();
        let xin = if x_var {
            xv.as_tensor().clone()
        } else {
            x.clone()
        };
        let y = conv2d(&xin, wv.as_tensor(), p).unwrap();
        let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(&xin).cloned();
        let dw = grads.get(wv.as_tensor()).unwrap().clone();
        (y, dx, dw)
    }

    #[test]
    fn matches_pytorch_forward_and_gradients() {
        let cases = load_cases();
        assert!(cases.len() >= 26, "fixture has {} cases", cases.len());
        for engine in engines() {
            onednn::with_engine(engine, || {
                for c in &cases {
                    let (y, dx, dw) = run(&c.x, &c.w, &c.g, c.p, true);
                    let dx = dx.unwrap_or_else(|| panic!("{}: no input gradient", c.name));
                    let (ey, edx, edw) =
                        (rel_err(&y, &c.y), rel_err(&dx, &c.dx), rel_err(&dw, &c.dw));
                    assert!(
                        ey <= TOL && edx <= TOL && edw <= TOL,
                        "{engine:?} {}: rel err y {ey} dx {edx} dw {edw}",
                        c.name
                    );
                }
            });
        }
    }

    /// The engines this build has: runner's own, and oneDNN with the `onednn` feature.
    fn engines() -> Vec<onednn::ConvEngine> {
        let mut e = vec![onednn::ConvEngine::Rust];
        if onednn::available() {
            e.push(onednn::ConvEngine::OneDnn);
        }
        e
    }

    /// oneDNN gives the same bits when run twice with the same thread count (what a resumed run
    /// relies on), from any calling thread (cached primitives outlive the thread that built them).
    #[test]
    fn onednn_is_repeatable_across_calling_threads() {
        if !onednn::available() {
            eprintln!("skipped: built without the onednn feature");
            return;
        }
        let cases = load_cases();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let once = |c: &Case| {
            onednn::with_engine(onednn::ConvEngine::OneDnn, || {
                let (y, dx, dw) = run(&c.x, &c.w, &c.g, c.p, true);
                (flat(&y), flat(&dx.unwrap()), flat(&dw))
            })
        };
        for c in &cases {
            let here = once(c);
            let there = std::thread::scope(|s| s.spawn(|| once(c)).join().unwrap());
            assert!(
                here == there,
                "{}: oneDNN results differ between calls",
                c.name
            );
        }
    }

    #[test]
    fn non_contiguous_input_and_gradient() {
        for c in load_cases()
            .iter()
            .filter(|c| ["k3p1_s2", "dw3_s2", "g2_k3", "k1"].contains(&c.name.as_str()))
        {
            let (n, ci, h, w) = c.x.dims4().unwrap();
            // A transposed view: stored as (N, C, W, H), read as (N, C, H, W).
            let xt = Var::from_tensor(&c.x.transpose(2, 3).unwrap().contiguous().unwrap()).unwrap();
            let view = xt.as_tensor().transpose(2, 3).unwrap();
            assert!(!view.is_contiguous());
            let wv = Var::from_tensor(&c.w).unwrap();
            let y = conv2d(&view, wv.as_tensor(), c.p).unwrap();
            let grads = (&y * &c.g).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(rel_err(&y, &c.y) <= TOL, "{}: transposed forward", c.name);
            let dxt = grads.get(xt.as_tensor()).unwrap().transpose(2, 3).unwrap();
            assert!(rel_err(&dxt, &c.dx) <= TOL, "{}: transposed dx", c.name);
            assert!(
                rel_err(grads.get(wv.as_tensor()).unwrap(), &c.dw) <= TOL,
                "{}: transposed dw",
                c.name
            );

            // A narrowed view (the FactorizedReduce pattern x[:, :, 1:, 1:] on a larger map) whose
            // gradient arrives as a non-contiguous upstream gradient too.
            let big = Tensor::zeros((n, ci, h + 1, w + 1), DType::F32, &Device::Cpu).unwrap();
            let big = big
                .slice_assign(&[0..n, 0..ci, 1..h + 1, 1..w + 1], &c.x)
                .unwrap();
            let bv = Var::from_tensor(&big).unwrap();
            let view = bv
                .as_tensor()
                .narrow(2, 1, h)
                .unwrap()
                .narrow(3, 1, w)
                .unwrap();
            assert!(!view.is_contiguous());
            let y = conv2d(&view, &c.w, c.p).unwrap();
            assert!(rel_err(&y, &c.y) <= TOL, "{}: narrowed forward", c.name);
            let gt =
                c.g.transpose(2, 3)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .transpose(2, 3)
                    .unwrap();
            let grads = (&y * &gt).unwrap().sum_all().unwrap().backward().unwrap();
            let db = grads.get(bv.as_tensor()).unwrap();
            let dx = db.narrow(2, 1, h).unwrap().narrow(3, 1, w).unwrap();
            assert!(rel_err(&dx, &c.dx) <= TOL, "{}: narrowed dx", c.name);
            // Row 0 and column 0 of the larger map are not read by the view.
            let edge = db
                .narrow(2, 0, 1)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                + db.narrow(3, 0, 1)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
            assert_eq!(edge, 0.0, "{}: gradient leaked outside the view", c.name);
        }
    }

    #[test]
    fn constant_input_gets_no_gradient() {
        for c in load_cases()
            .iter()
            .filter(|c| ["k3p1", "dw5_s2", "k1_s2"].contains(&c.name.as_str()))
        {
            let (y, dx, dw) = run(&c.x, &c.w, &c.g, c.p, false);
            assert!(
                dx.is_none(),
                "{}: constant input received a gradient",
                c.name
            );
            assert!(rel_err(&y, &c.y) <= TOL, "{}", c.name);
            assert!(rel_err(&dw, &c.dw) <= TOL, "{}", c.name);
        }
    }

    /// Larger random shapes against candle's built-in conv (its own backward), covering the
    /// batch-parallel and the gemm-parallel paths and the chunked weight-gradient sum.
    #[test]
    fn matches_candle_builtin_on_larger_shapes() {
        let dev = Device::Cpu;
        let shapes = [
            // n, ci, co, hw, k, s, p, d, g
            (8, 16, 24, 12, 3, 1, 1, 1, 1),
            (1, 16, 8, 10, 3, 2, 1, 1, 1),
            (20, 8, 8, 9, 1, 1, 0, 1, 1),
            (5, 12, 12, 11, 5, 2, 2, 1, 12),
            (6, 8, 16, 8, 3, 1, 1, 1, 4),
            (17, 4, 6, 7, 3, 1, 2, 2, 1),
            // Depthwise rows wide enough for the 16- and 8-column register blocks plus a tail.
            (3, 4, 4, 29, 3, 1, 1, 1, 4),
            (2, 3, 3, 40, 5, 2, 4, 2, 3),
            (2, 2, 2, 45, 7, 1, 3, 1, 2),
        ];
        for (i, &(n, ci, co, hw, k, s, p, d, g)) in shapes.iter().enumerate() {
            let mut r = stream(11, "conv-test", &[i as u64]);
            let x = init::uniform(&mut r, &[n, ci, hw, hw], -1.0, 1.0, &dev).unwrap();
            let w = init::pytorch_default_weight(&mut r, &[co, ci / g, k, k], &dev).unwrap();
            let p = ConvParams {
                stride: s,
                padding: p,
                dilation: d,
                groups: g,
            };
            let y0 = conv2d(&x, &w, p).unwrap();
            let gy = init::uniform(&mut r, y0.dims(), -1.0, 1.0, &dev).unwrap();
            let (y, dx, dw) = run(&x, &w, &gy, p, true);

            let xv = Var::from_tensor(&x).unwrap();
            let wv = Var::from_tensor(&w).unwrap();
            let yb = xv
                .as_tensor()
                .conv2d(wv.as_tensor(), p.padding, p.stride, p.dilation, p.groups)
                .unwrap();
            let grads = (&yb * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let what = format!("shape {i} {:?}", shapes[i]);
            assert!(rel_err(&y, &yb) <= TOL, "{what}: forward");
            assert!(
                rel_err(&dx.unwrap(), grads.get(xv.as_tensor()).unwrap()) <= TOL,
                "{what}: dx"
            );
            assert!(
                rel_err(&dw, grads.get(wv.as_tensor()).unwrap()) <= TOL,
                "{what}: dw"
            );
        }
    }

    #[test]
    fn bit_identical_with_one_or_two_threads() {
        let dev = Device::Cpu;
        let mut r = stream(12, "conv-det", &[]);
        // Batch-parallel gemm, depthwise, a small batch, and one image (a multi-threaded gemm).
        let cases = [
            (24, 8, 8, 10, 3, 1, 1, 1),
            (24, 8, 8, 10, 3, 2, 1, 8),
            (3, 8, 16, 10, 3, 1, 1, 1),
            (1, 16, 24, 20, 3, 1, 1, 1),
        ];
        for (n, ci, co, hw, k, s, p, g) in cases {
            let x = init::uniform(&mut r, &[n, ci, hw, hw], -1.0, 1.0, &dev).unwrap();
            let w = init::pytorch_default_weight(&mut r, &[co, ci / g, k, k], &dev).unwrap();
            let p = ConvParams {
                stride: s,
                padding: p,
                dilation: 1,
                groups: g,
            };
            let gy =
                init::uniform(&mut r, conv2d(&x, &w, p).unwrap().dims(), -1.0, 1.0, &dev).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let once = || {
                let (y, dx, dw) = run(&x, &w, &gy, p, true);
                (flat(&y), flat(&dx.unwrap()), flat(&dw))
            };
            let pool = |t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
            };
            let a = pool(1).install(once);
            let b = pool(2).install(once);
            assert!(
                a == b,
                "results differ between 1 and 2 threads for {:?}",
                (n, ci, co, hw, k, s, g)
            );
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4, 5, 5), DType::F32, &dev).unwrap();
        let p = ConvParams::default();
        let w = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &dev).unwrap();
        assert!(
            conv2d(&x, &w(&[4, 3, 3, 3]), p).is_err(),
            "channel mismatch"
        );
        assert!(
            conv2d(&x, &w(&[3, 2, 3, 3]), ConvParams { groups: 2, ..p }).is_err(),
            "C_out % groups"
        );
        assert!(
            conv2d(&x, &w(&[4, 4, 7, 7]), p).is_err(),
            "kernel larger than input"
        );
        assert!(
            conv2d(&x, &w(&[4, 4, 3, 3]), ConvParams { stride: 0, ..p }).is_err(),
            "stride 0"
        );
        assert!(
            conv2d(&x.flatten_all().unwrap(), &w(&[4, 4, 3, 3]), p).is_err(),
            "rank"
        );
        // An empty batch gives an empty output and empty gradients.
        let empty =
            Var::from_tensor(&Tensor::zeros((0, 4, 5, 5), DType::F32, &dev).unwrap()).unwrap();
        let wv = Var::from_tensor(&w(&[4, 4, 3, 3])).unwrap();
        let y = conv2d(
            empty.as_tensor(),
            wv.as_tensor(),
            ConvParams { padding: 1, ..p },
        )
        .unwrap();
        assert_eq!(y.dims(), &[0, 4, 5, 5]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            grads
                .get(wv.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        // Exactly fitting kernel: 7x7 with padding 1 on 5x5 gives 1x1.
        let y = conv2d(&x, &w(&[2, 4, 7, 7]), ConvParams { padding: 1, ..p }).unwrap();
        assert_eq!(y.dims(), &[2, 2, 1, 1]);
    }

    #[test]
    fn f64_falls_back_to_candle_and_layer_adds_bias() {
        let c = load_cases()
            .into_iter()
            .find(|c| c.name == "g2_k3")
            .unwrap();
        let y64 = conv2d(
            &c.x.to_dtype(DType::F64).unwrap(),
            &c.w.to_dtype(DType::F64).unwrap(),
            c.p,
        )
        .unwrap();
        assert_eq!(y64.dtype(), DType::F64);
        assert!(rel_err(&y64.to_dtype(DType::F32).unwrap(), &c.y) <= TOL);

        let store = crate::nn::Store::new(&Device::Cpu);
        let co = c.w.dim(0).unwrap();
        let bias = Tensor::arange(0f32, co as f32, &Device::Cpu).unwrap();
        let layer = Conv2d::new(
            &store.root().pp("conv"),
            c.w.clone(),
            Some(bias.clone()),
            c.p,
        )
        .unwrap();
        let y = layer.forward(&c.x).unwrap();
        let want =
            c.y.broadcast_add(&bias.reshape((1, co, 1, 1)).unwrap())
                .unwrap();
        assert!(rel_err(&y, &want) <= TOL);
    }

    /// Timings, not a check: `RAYON_NUM_THREADS=2 cargo test --release --lib
    /// nn::conv::tests::bench_conv -- --ignored --nocapture` (optional env: BENCH_ONLY=<name
    /// substring>, BENCH_CANDLE=1 to time candle's built-in conv too); with `--features onednn` it times
    /// both engines. Compare with
    /// `/usr/bin/python3 tests/fixtures/bench_conv_torch.py`.
    #[test]
    #[ignore]
    fn bench_conv() {
        let dev = Device::Cpu;
        let shapes = [
            ("3x3 16->16 64x16x32x32", 64, 16, 16, 32, 3, 1, 1, 1, 1),
            ("3x3 32->32 64x32x16x16", 64, 32, 32, 16, 3, 1, 1, 1, 1),
            ("1x1 16->16 64x16x32x32", 64, 16, 16, 32, 1, 1, 0, 1, 1),
            ("3x3 s2 16->32 64x16x32x32", 64, 16, 32, 32, 3, 2, 1, 1, 1),
            ("dw3x3 64x32x32x32", 64, 32, 32, 32, 3, 1, 1, 1, 32),
            ("dw5x5 d2 64x32x32x32", 64, 32, 32, 32, 5, 1, 4, 2, 32),
            ("dw3x3 s2 64x32x32x32", 64, 32, 32, 32, 3, 2, 1, 1, 32),
        ];
        // Process CPU time (all threads) from /proc: on a shared, oversubscribed machine wall time
        // mostly measures the other tenants.
        let cpu_s = || {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
            let f: Vec<f64> = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0.0))
                .collect();
            (f[11] + f[12]) / 100.0
        };
        // (median wall ms, mean CPU ms) per call.
        let median_ms = |f: &mut dyn FnMut()| {
            f();
            let reps = 20;
            let c0 = cpu_s();
            let mut ts: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let cpu = (cpu_s() - c0) * 1e3 / reps as f64;
            ts.sort_by(f64::total_cmp);
            (ts[ts.len() / 2], cpu)
        };
        println!("threads {}", num_threads());
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        // BENCH_BATCH overrides the batch size of every shape (the study trains NB201 at 256).
        let batch: Option<usize> = std::env::var("BENCH_BATCH")
            .ok()
            .and_then(|b| b.parse().ok());
        for (name, n, ci, co, hw, k, s, p, d, g) in shapes {
            let n = batch.unwrap_or(n);
            if !name.contains(only.as_str()) {
                continue;
            }
            let mut r = stream(1, "bench", &[]);
            let x = init::uniform(&mut r, &[n, ci, hw, hw], -1.0, 1.0, &dev).unwrap();
            let w = init::pytorch_default_weight(&mut r, &[co, ci / g, k, k], &dev).unwrap();
            let p = ConvParams {
                stride: s,
                padding: p,
                dilation: d,
                groups: g,
            };
            let geom = Geom::new(x.dims(), w.dims(), p).unwrap();
            let gy = init::uniform(&mut r, &geom.y_dims(), -1.0, 1.0, &dev).unwrap();
            // Each engine this build has (`--features onednn` adds oneDNN's), one line each.
            for engine in engines() {
                let (fwd, dx, dw) = onednn::with_engine(engine, || {
                    (
                        median_ms(&mut || drop(x.apply_op2_no_bwd(&w, &ConvFwd(geom)).unwrap())),
                        median_ms(&mut || {
                            drop(gy.apply_op2_no_bwd(&w, &ConvBwdInput(geom)).unwrap())
                        }),
                        median_ms(&mut || {
                            drop(x.apply_op2_no_bwd(&gy, &ConvBwdWeight(geom)).unwrap())
                        }),
                    )
                });
                println!(
                    "{name:26} {:6} wall fwd {:6.2} dx {:6.2} dw {:6.2} | cpu/2 fwd {:6.2} dx {:6.2} dw {:6.2} ms",
                    format!("{engine:?}"),
                    fwd.0,
                    dx.0,
                    dw.0,
                    fwd.1 / 2.0,
                    dx.1 / 2.0,
                    dw.1 / 2.0,
                );
            }
            let xv = Var::from_tensor(&x).unwrap();
            let wv = Var::from_tensor(&w).unwrap();
            let mut builtin = || {
                let y = xv
                    .as_tensor()
                    .conv2d(wv.as_tensor(), p.padding, p.stride, p.dilation, p.groups)
                    .unwrap();
                drop((&y * &gy).unwrap().sum_all().unwrap().backward().unwrap());
            };
            let candle = if std::env::var("BENCH_CANDLE").is_ok() {
                median_ms(&mut builtin)
            } else {
                (0.0, 0.0)
            };
            if std::env::var("BENCH_CANDLE").is_ok() {
                println!(
                    "{name:26} candle's own conv2d, fwd+bwd: wall {:7.1} cpu/2 {:7.1} ms",
                    candle.0,
                    candle.1 / 2.0
                );
            }
        }
    }
}
