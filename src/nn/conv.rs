//! 2-D convolution (NCHW input, OIHW weight) with PyTorch semantics.
//! TODO(helper nn-conv): fast CPU custom op with its own backward; other devices use candle's.

use super::store::Path;
use candle_core::{Result, Tensor, Var};

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
        Self { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

/// `y = conv(x, w)`: x (N, C_in, H, W), w (C_out, C_in / groups, K, K).
pub fn conv2d(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    let _ = (x, w, p);
    todo!("nn-conv helper")
}

/// A convolution layer with an optional bias.
pub struct Conv2d {
    pub weight: Var,
    pub bias: Option<Var>,
    pub params: ConvParams,
}

impl Conv2d {
    /// Registers `weight` (and `bias`) under `path` with the given initial values.
    pub fn new(path: &Path, weight: Tensor, bias: Option<Tensor>, params: ConvParams) -> Result<Self> {
        let weight = path.param("weight", weight)?;
        let bias = match bias {
            Some(b) => Some(path.param("bias", b)?),
            None => None,
        };
        Ok(Self { weight, bias, params })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d(x, self.weight.as_tensor(), self.params)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.as_tensor().reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}
