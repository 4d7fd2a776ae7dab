//! BatchNorm2d with PyTorch semantics and three modes (train, eval, recalibrate).
//! TODO(helper nn-bn): fused CPU custom op with its own backward; composite ops elsewhere.

use super::store::{Path, Recalibrate};
use super::Mode;
use candle_core::{Result, Tensor, Var};
use std::sync::Arc;

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
        let _ = (path, channels, affine, momentum, eps);
        todo!("nn-bn helper")
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let _ = (
            x,
            mode,
            &self.inner.weight,
            &self.inner.bias,
            &self.inner.running_mean,
        );
        let _ = (&self.inner.running_var, self.inner.momentum, self.inner.eps);
        todo!("nn-bn helper")
    }
}

impl Recalibrate for BnInner {
    fn begin_recalibration(&self) {
        todo!("nn-bn helper")
    }
    fn finish_recalibration(&self) -> Result<()> {
        todo!("nn-bn helper")
    }
}
