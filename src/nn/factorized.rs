//! DARTS's FactorizedReduce: halves the spatial size with two 1x1 stride-2 convolutions, one on
//! the input and one on the input shifted by one pixel (`x[:, :, 1:, 1:]`), so that together
//! they read every other pixel of both phases; their outputs are concatenated along channels
//! and batch-normalised. ReLU first.

use super::conv::{Conv2d, ConvParams};
use super::store::Path;
use super::{activation, init, BatchNorm, Mode};
use crate::rng::Rng;
use candle_core::{bail, Result, Tensor};

/// ReLU, conv1x1/2 on x and on x[:, :, 1:, 1:] (C_out / 2 channels each), concatenation, BN.
pub struct FactorizedReduce {
    pub conv_1: Conv2d,
    pub conv_2: Conv2d,
    pub bn: BatchNorm,
}

impl FactorizedReduce {
    /// Weights drawn from `rng` with PyTorch's default init (conv_1, then conv_2); the BN is
    /// affine. Tensors are named `conv_1.weight`, `conv_2.weight`, `bn.*` under `path`.
    pub fn new(
        path: &Path,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        bn_momentum: f64,
        bn_eps: f64,
    ) -> Result<Self> {
        if c_out == 0 || !c_out.is_multiple_of(2) {
            bail!(
                "FactorizedReduce {}: output channels must be even and > 0, got {c_out}",
                path.name("")
            );
        }
        let params = ConvParams {
            stride: 2,
            ..ConvParams::default()
        };
        let dev = path.device().clone();
        let w1 = init::pytorch_default_weight(rng, &[c_out / 2, c_in, 1, 1], &dev)?;
        let w2 = init::pytorch_default_weight(rng, &[c_out / 2, c_in, 1, 1], &dev)?;
        Ok(Self {
            conv_1: Conv2d::new(&path.pp("conv_1"), w1, None, params)?,
            conv_2: Conv2d::new(&path.pp("conv_2"), w2, None, params)?,
            bn: BatchNorm::new(&path.pp("bn"), c_out, true, bn_momentum, bn_eps)?,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if h < 2 || w < 2 || !h.is_multiple_of(2) || !w.is_multiple_of(2) {
            // Odd sizes give the two halves different shapes (the reference fails in `cat`).
            bail!(
                "FactorizedReduce: input {:?} needs an even height and width",
                x.dims()
            );
        }
        let x = activation::relu(x)?;
        let a = self.conv_1.forward(&x)?;
        let shifted = x.narrow(2, 1, h - 1)?.narrow(3, 1, w - 1)?;
        let b = self.conv_2.forward(&shifted)?;
        self.bn.forward(&Tensor::cat(&[a, b], 1)?, mode)
    }
}
