//! Parameter initialisers drawn from a caller's seeded RNG (candle's own use an unseeded RNG).
//!
//! Values are drawn in row-major element order, one draw (or one accepted draw, for the
//! truncated normal) per element, so a tensor's contents depend only on the stream position.

use crate::rng::Rng;
use candle_core::{bail, Device, Result, Tensor};
use rand::distr::{Distribution, Uniform};
use rand_distr::StandardNormal;

/// (fan_in, fan_out) as PyTorch's `_calculate_fan_in_and_fan_out`: dims[1] and dims[0] times
/// the receptive field prod(dims[2..]).
fn fans(dims: &[usize], what: &str) -> Result<(usize, usize)> {
    if dims.len() < 2 {
        bail!("{what}: fan-in/fan-out need at least 2 dimensions, got shape {dims:?}");
    }
    let receptive: usize = dims[2..].iter().product();
    let fan_in = dims[1] * receptive;
    let fan_out = dims[0] * receptive;
    if fan_in == 0 || fan_out == 0 {
        bail!("{what}: zero fan-in or fan-out for shape {dims:?}");
    }
    Ok((fan_in, fan_out))
}

fn uniform_vec(rng: &mut Rng, n: usize, lo: f64, hi: f64, what: &str) -> Result<Vec<f32>> {
    let (lo32, hi32) = (lo as f32, hi as f32);
    if !(lo32.is_finite() && hi32.is_finite()) || lo32 > hi32 {
        bail!("{what}: invalid uniform range [{lo}, {hi})");
    }
    if lo32 == hi32 {
        // rand's Uniform rejects an empty range; PyTorch's uniform_(a, a) fills with a.
        return Ok(vec![lo32; n]);
    }
    let dist = Uniform::new(lo32, hi32)
        .map_err(|e| candle_core::Error::Msg(format!("{what}: uniform [{lo}, {hi}): {e}")))?;
    Ok((0..n).map(|_| dist.sample(rng)).collect())
}

fn check_std(std: f64, what: &str) -> Result<()> {
    if !std.is_finite() || std < 0.0 {
        bail!("{what}: standard deviation must be finite and >= 0, got {std}");
    }
    Ok(())
}

/// PyTorch's default conv / linear weight init: kaiming_uniform(a = sqrt(5)), i.e.
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = dims[1] * prod(dims[2..]).
pub fn pytorch_default_weight(rng: &mut Rng, dims: &[usize], device: &Device) -> Result<Tensor> {
    let (fan_in, _) = fans(dims, "pytorch_default_weight")?;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let n = dims.iter().product();
    let v = uniform_vec(rng, n, -bound, bound, "pytorch_default_weight")?;
    Tensor::from_vec(v, dims, device)
}

/// PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub fn pytorch_default_bias(
    rng: &mut Rng,
    fan_in: usize,
    len: usize,
    device: &Device,
) -> Result<Tensor> {
    if fan_in == 0 {
        bail!("pytorch_default_bias: fan_in must be > 0");
    }
    let bound = 1.0 / (fan_in as f64).sqrt();
    let v = uniform_vec(rng, len, -bound, bound, "pytorch_default_bias")?;
    Tensor::from_vec(v, len, device)
}

/// Normal(0, std) truncated to [-2 std, 2 std] (resampled), as NAS-Bench-101's conv init.
pub fn truncated_normal(
    rng: &mut Rng,
    dims: &[usize],
    std: f64,
    device: &Device,
) -> Result<Tensor> {
    check_std(std, "truncated_normal")?;
    let n = dims.iter().product();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let z: f64 = StandardNormal.sample(rng);
        // Scaling by a positive std and rounding to f32 are monotone, so |z| <= 2 keeps every
        // value inside [-2 std, 2 std] as f32 too.
        if z.abs() <= 2.0 {
            v.push((z * std) as f32);
        }
    }
    Tensor::from_vec(v, dims, device)
}

/// Normal(0, std).
pub fn normal(rng: &mut Rng, dims: &[usize], std: f64, device: &Device) -> Result<Tensor> {
    check_std(std, "normal")?;
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            (z * std) as f32
        })
        .collect();
    Tensor::from_vec(v, dims, device)
}

/// Uniform(lo, hi).
pub fn uniform(rng: &mut Rng, dims: &[usize], lo: f64, hi: f64, device: &Device) -> Result<Tensor> {
    let n = dims.iter().product();
    let v = uniform_vec(rng, n, lo, hi, "uniform")?;
    Tensor::from_vec(v, dims, device)
}

/// Xavier (Glorot) uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
pub fn xavier_uniform(rng: &mut Rng, dims: &[usize], device: &Device) -> Result<Tensor> {
    let (fan_in, fan_out) = fans(dims, "xavier_uniform")?;
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    let n = dims.iter().product();
    let v = uniform_vec(rng, n, -a, a, "xavier_uniform")?;
    Tensor::from_vec(v, dims, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    const N: usize = 100_000;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    /// Checks the bounds exactly and mean / std of a uniform sample against U(-b, b).
    fn check_uniform(v: &[f32], lo: f64, hi: f64) {
        let (lo32, hi32) = (lo as f32, hi as f32);
        assert!(
            v.iter().all(|&x| x >= lo32 && x < hi32),
            "value outside [{lo}, {hi})"
        );
        let (mean, std) = mean_std(v);
        let want_std = (hi - lo) / 12f64.sqrt();
        // Standard error of the mean is want_std / sqrt(N) ~ 0.003 want_std; allow 5 of them.
        assert!(
            (mean - (lo + hi) / 2.0).abs() < 5.0 * want_std / (v.len() as f64).sqrt(),
            "mean {mean}"
        );
        assert!(
            (std / want_std - 1.0).abs() < 0.01,
            "std {std} vs {want_std}"
        );
        // The extremes are approached: a clipped or shrunk range would fail this.
        let span = hi - lo;
        let min = v.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
        let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        assert!(
            min < lo + 0.001 * span && max > hi - 0.001 * span,
            "range [{min}, {max}]"
        );
    }

    #[test]
    fn default_weight_bounds_and_moments() {
        // Conv weight (C_out, C_in, K, K): fan_in = 10 * 3 * 3 = 90.
        let dims = [1250, 10, 3, 3];
        let t = pytorch_default_weight(&mut stream(1, "w", &[]), &dims, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &dims);
        let b = 1.0 / 90f64.sqrt();
        check_uniform(&values(&t), -b, b);
        // Linear weight (out, in): fan_in = in.
        let t =
            pytorch_default_weight(&mut stream(1, "w", &[]), &[1000, 100], &Device::Cpu).unwrap();
        check_uniform(&values(&t), -0.1, 0.1);
        assert!(pytorch_default_weight(&mut stream(1, "w", &[]), &[5], &Device::Cpu).is_err());
    }

    #[test]
    fn default_bias_bounds_and_moments() {
        let t = pytorch_default_bias(&mut stream(2, "b", &[]), 25, N, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[N]);
        check_uniform(&values(&t), -0.2, 0.2);
        assert!(pytorch_default_bias(&mut stream(2, "b", &[]), 0, 4, &Device::Cpu).is_err());
    }

    #[test]
    fn uniform_and_xavier() {
        let t = uniform(
            &mut stream(3, "u", &[]),
            &[100, 1000],
            -0.04,
            0.04,
            &Device::Cpu,
        )
        .unwrap();
        check_uniform(&values(&t), -0.04, 0.04);
        let t = uniform(&mut stream(3, "u", &[]), &[N], 1.0, 3.0, &Device::Cpu).unwrap();
        check_uniform(&values(&t), 1.0, 3.0);
        assert!(uniform(&mut stream(3, "u", &[]), &[4], 1.0, 0.0, &Device::Cpu).is_err());
        // (out 250, in 400): a = sqrt(6 / 650).
        let t = xavier_uniform(&mut stream(3, "x", &[]), &[250, 400], &Device::Cpu).unwrap();
        let a = (6.0f64 / 650.0).sqrt();
        check_uniform(&values(&t), -a, a);
        // Conv shape: fan_in = 8 * 9, fan_out = 16 * 9 (not divided by anything else).
        let t = xavier_uniform(&mut stream(3, "x", &[]), &[16, 8, 3, 3], &Device::Cpu).unwrap();
        let a = (6.0f64 / (72.0 + 144.0)).sqrt() as f32;
        let v = values(&t);
        assert!(v.iter().all(|&x| x.abs() <= a));
        assert!(v.iter().any(|&x| x.abs() > 0.9 * a));
    }

    #[test]
    fn normal_moments() {
        let t = normal(&mut stream(4, "n", &[]), &[N], 0.5, &Device::Cpu).unwrap();
        let v = values(&t);
        let (mean, std) = mean_std(&v);
        assert!(mean.abs() < 5.0 * 0.5 / (N as f64).sqrt(), "mean {mean}");
        assert!((std / 0.5 - 1.0).abs() < 0.01, "std {std}");
        // Tails of a true normal: P(|z| > 3) = 0.27%, so ~270 of 100k.
        let tail = v.iter().filter(|&&x| x.abs() > 1.5).count();
        assert!((150..400).contains(&tail), "tail count {tail}");
        assert!(normal(&mut stream(4, "n", &[]), &[3], -1.0, &Device::Cpu).is_err());
    }

    #[test]
    fn truncated_normal_bounds_and_moments() {
        let std = 0.3;
        let t =
            truncated_normal(&mut stream(5, "t", &[]), &[10, N / 10], std, &Device::Cpu).unwrap();
        let v = values(&t);
        let bound = (2.0 * std) as f32;
        assert!(v.iter().all(|&x| x.abs() <= bound));
        let (mean, s) = mean_std(&v);
        // Std of N(0,1) truncated to [-2, 2]: sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)) = 0.879626.
        let want = 0.879_626 * std;
        assert!(mean.abs() < 5.0 * want / (N as f64).sqrt(), "mean {mean}");
        assert!((s / want - 1.0).abs() < 0.01, "std {s} vs {want}");
        // Resampling (not clamping) leaves no mass piled at the bounds.
        let at_edge = v.iter().filter(|&&x| x.abs() > 0.999 * bound).count();
        assert!(at_edge < 100, "{at_edge} values at the truncation bound");
    }

    #[test]
    fn same_seed_same_tensor_other_seed_differs() {
        type Init = fn(&mut Rng) -> Tensor;
        let inits: [Init; 6] = [
            |r| pytorch_default_weight(r, &[8, 4, 3, 3], &Device::Cpu).unwrap(),
            |r| pytorch_default_bias(r, 36, 8, &Device::Cpu).unwrap(),
            |r| truncated_normal(r, &[8, 4, 3, 3], 0.1, &Device::Cpu).unwrap(),
            |r| normal(r, &[8, 4, 3, 3], 0.1, &Device::Cpu).unwrap(),
            |r| uniform(r, &[8, 4], -0.04, 0.04, &Device::Cpu).unwrap(),
            |r| xavier_uniform(r, &[8, 4], &Device::Cpu).unwrap(),
        ];
        for (i, init) in inits.iter().enumerate() {
            let a = values(&init(&mut stream(9, "init", &[i as u64])));
            let b = values(&init(&mut stream(9, "init", &[i as u64])));
            let c = values(&init(&mut stream(10, "init", &[i as u64])));
            assert_eq!(a, b, "init {i} not reproducible");
            assert_ne!(a, c, "init {i} ignores the seed");
            // Consecutive draws from one stream differ too.
            let mut r = stream(9, "init", &[i as u64]);
            let first = values(&init(&mut r));
            let second = values(&init(&mut r));
            assert_ne!(first, second, "init {i} does not advance the stream");
        }
    }
}
