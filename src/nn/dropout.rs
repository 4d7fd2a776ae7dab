//! Dropout masks drawn from a caller's seeded RNG (candle's `ops::dropout` uses an unseeded
//! thread RNG). A mask holds `1 / (1 - p)` where the unit is kept (probability `1 - p`) and 0
//! where it is dropped, as PyTorch's inverted dropout; the caller multiplies by it, so the same
//! mask can be reused across time steps (locked / variational dropout).

use crate::rng::Rng;
use candle_core::{bail, Device, Result, Tensor};
use rand::Rng as _;

/// The mask values in row-major order: one uniform draw per element, kept when the draw is
/// below `1 - p` (PyTorch's `bernoulli_(1 - p)`).
pub fn mask_values(rng: &mut Rng, n: usize, p: f64) -> Result<Vec<f32>> {
    if !(0.0..1.0).contains(&p) {
        bail!("dropout probability {p} is outside [0, 1)");
    }
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    if p == 0.0 {
        return Ok(vec![1.0; n]);
    }
    Ok((0..n)
        .map(|_| {
            if rng.random::<f64>() < keep {
                scale
            } else {
                0.0
            }
        })
        .collect())
}

/// A mask tensor of shape `dims` (f32) for dropout probability `p`.
pub fn mask(rng: &mut Rng, dims: &[usize], p: f64, device: &Device) -> Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_vec(mask_values(rng, n, p)?, dims, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_right_fraction_with_inverted_scale() {
        let mut r = crate::rng::stream(0, "dropout", &[]);
        let v = mask_values(&mut r, 100_000, 0.75).unwrap();
        let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.25).abs() < 0.005, "{kept}");
        assert!(v.iter().all(|&x| x == 0.0 || x == 4.0));
        // Mean 1: the expectation of the masked activation is unchanged.
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        assert_eq!(mask_values(&mut r, 3, 0.0).unwrap(), vec![1.0; 3]);
        assert!(mask_values(&mut r, 3, 1.0).is_err());
        // Seeded: the same stream gives the same mask.
        let a = mask(
            &mut crate::rng::stream(1, "m", &[]),
            &[4, 5],
            0.5,
            &Device::Cpu,
        )
        .unwrap();
        let b = mask(
            &mut crate::rng::stream(1, "m", &[]),
            &[4, 5],
            0.5,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }
}
