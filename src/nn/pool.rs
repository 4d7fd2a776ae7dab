//! Max and average pooling with padding, with backward (candle's lack both).
//! TODO(helper nn-bn): CPU custom ops; composite fallback elsewhere.

use candle_core::{Result, Tensor};

/// Average pooling over k x k windows; `count_include_pad = false` divides by the number of
/// in-bounds elements (PyTorch's `AvgPool2d(count_include_pad=False)`).
pub fn avg_pool2d(
    x: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
    count_include_pad: bool,
) -> Result<Tensor> {
    let _ = (x, k, stride, padding, count_include_pad);
    todo!("nn-bn helper")
}

/// Max pooling with implicit -inf padding; the gradient goes to the first maximum.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let _ = (x, k, stride, padding);
    todo!("nn-bn helper")
}

/// Mean over the spatial axes: (N, C, H, W) -> (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(3)?.mean(2)
}
