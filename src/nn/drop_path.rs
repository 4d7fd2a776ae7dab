//! Drop-path (per-sample stochastic depth) with PyTorch semantics: in training, each sample of
//! a branch's output is kept with probability `keep = 1 - p` and scaled by `1 / keep`, or zeroed.
//!
//! The reference (DARTS's `DropPath_`) draws `bernoulli_(keep)` into an (N, 1, 1, 1) mask and
//! returns `x.div(keep).mul(mask)`. Here the mask comes from the caller's seeded stream (one
//! uniform draw per sample, in sample order), so a run is reproducible and resumable.

use crate::rng::Rng;
use candle_core::{bail, Result, Tensor};
use rand::Rng as _;

/// One Bernoulli(`keep`) draw per sample: 1.0 kept, 0.0 dropped.
pub fn draw_mask(rng: &mut Rng, n: usize, keep: f64) -> Vec<f32> {
    (0..n)
        .map(|_| if rng.random::<f64>() < keep { 1.0 } else { 0.0 })
        .collect()
}

/// `x / keep * mask`, the mask broadcast over every axis but the first. The two factors are
/// folded into one multiplication by `mask / keep` (an f32 rounding of `1 / keep` away from
/// dividing first).
pub fn apply_mask(x: &Tensor, keep: f64, mask: &[f32]) -> Result<Tensor> {
    let n = x.dim(0)?;
    if mask.len() != n {
        bail!("drop_path: {} mask values for a batch of {n}", mask.len());
    }
    if !(keep > 0.0 && keep <= 1.0) {
        bail!("drop_path: keep probability {keep} outside (0, 1]");
    }
    let mut shape = vec![n];
    shape.extend(std::iter::repeat_n(1, x.rank() - 1));
    let scale: Vec<f32> = mask.iter().map(|&m| (m as f64 / keep) as f32).collect();
    let m = Tensor::from_vec(scale, shape, x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&m)
}

/// Drop-path with probability `p` (the identity when `p` is 0: no draw is taken).
pub fn drop_path(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        bail!("drop_path: probability {p} must be below 1");
    }
    let keep = 1.0 - p;
    let mask = draw_mask(rng, x.dim(0)?, keep);
    apply_mask(x, keep, &mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;
    use candle_core::{Device, Var};

    #[test]
    fn masks_whole_samples_and_rescales_kept_ones() {
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 2, 2, 2))
            .unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let y = apply_mask(xv.as_tensor(), 0.8, &[1.0, 0.0, 1.0]).unwrap();
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, v) in got.iter().enumerate() {
            let want = if (8..16).contains(&i) {
                0.0
            } else {
                i as f32 / 0.8
            };
            assert!((v - want).abs() < 1e-5, "{i}: {v} vs {want}");
        }
        // The gradient is the same per-sample factor.
        let g = y.sum_all().unwrap().backward().unwrap();
        let dx = g.get(xv.as_tensor()).unwrap();
        let dx = dx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((dx[0] - 1.25).abs() < 1e-6 && dx[8] == 0.0 && (dx[23] - 1.25).abs() < 1e-6);
        assert!(apply_mask(&x, 0.8, &[1.0]).is_err());
    }

    #[test]
    fn keep_rate_is_bernoulli_and_seeded() {
        let mut r = stream(3, "dp", &[]);
        let m = draw_mask(&mut r, 100_000, 0.7);
        let kept = m.iter().filter(|&&v| v == 1.0).count() as f64 / 1e5;
        // Standard error sqrt(0.21 / 1e5) = 0.0014.
        assert!((kept - 0.7).abs() < 0.007, "{kept}");
        assert_eq!(m[..50], draw_mask(&mut stream(3, "dp", &[]), 50, 0.7)[..]);
        // p = 0 takes no draw and returns the input.
        let x = Tensor::ones((4, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut a = stream(1, "dp", &[]);
        let y = drop_path(&x, 0.0, &mut a).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), x.to_vec2::<f32>().unwrap());
        assert_eq!(a.random::<u64>(), stream(1, "dp", &[]).random::<u64>());
        assert!(drop_path(&x, 1.0, &mut a).is_err());
    }
}
