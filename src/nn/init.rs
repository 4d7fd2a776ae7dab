//! Parameter initialisers drawn from a caller's seeded RNG (candle's own use an unseeded RNG).
//! TODO(helper nn-conv)

use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};

/// PyTorch's default conv / linear weight init: kaiming_uniform(a = sqrt(5)), i.e.
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = dims[1] * prod(dims[2..]).
pub fn pytorch_default_weight(rng: &mut Rng, dims: &[usize], device: &Device) -> Result<Tensor> {
    let _ = (rng, dims, device);
    todo!("nn-conv helper")
}

/// PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub fn pytorch_default_bias(rng: &mut Rng, fan_in: usize, len: usize, device: &Device) -> Result<Tensor> {
    let _ = (rng, fan_in, len, device);
    todo!("nn-conv helper")
}

/// Normal(0, std) truncated to [-2 std, 2 std] (resampled), as NAS-Bench-101's conv init.
pub fn truncated_normal(rng: &mut Rng, dims: &[usize], std: f64, device: &Device) -> Result<Tensor> {
    let _ = (rng, dims, std, device);
    todo!("nn-conv helper")
}

/// Normal(0, std).
pub fn normal(rng: &mut Rng, dims: &[usize], std: f64, device: &Device) -> Result<Tensor> {
    let _ = (rng, dims, std, device);
    todo!("nn-conv helper")
}

/// Uniform(lo, hi).
pub fn uniform(rng: &mut Rng, dims: &[usize], lo: f64, hi: f64, device: &Device) -> Result<Tensor> {
    let _ = (rng, dims, lo, hi, device);
    todo!("nn-conv helper")
}

/// Xavier (Glorot) uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
pub fn xavier_uniform(rng: &mut Rng, dims: &[usize], device: &Device) -> Result<Tensor> {
    let _ = (rng, dims, device);
    todo!("nn-conv helper")
}
