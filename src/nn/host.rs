//! Plain-Rust access to CPU tensor data for the custom ops of `batchnorm`, `pool`,
//! `activation`: borrowing a contiguous f32 slice when the layout allows it, copying otherwise,
//! and small reduction kernels written so that the compiler vectorises them.

use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Storage, Tensor};
use std::borrow::Cow;

/// Whether `t` can take the hand-written CPU path (f32 on the host).
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
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
}
