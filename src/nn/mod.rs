//! Neural-network building blocks that candle lacks or does differently from PyTorch.
//!
//! Each op family lives in its own file as a candle custom op with its own backward, usable
//! outside any search space. Nothing here knows about spaces or training loops.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod drop_path;
pub mod dropout;
pub mod factorized;
mod host;
pub mod init;
pub mod linear;
pub mod loss;
pub mod onednn;
pub mod pool;
pub mod store;

pub use batchnorm::{Act, BatchNorm};
pub use conv::{conv2d, Conv2d, ConvParams};
pub use factorized::FactorizedReduce;
pub use host::{no_grad, with_portable_ops};
pub use linear::Linear;
pub use store::{Path, Recalibrate, Store};

/// How a layer with state (BatchNorm, dropout, drop-path) behaves in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics, running statistics updated with momentum, dropout active.
    Train,
    /// Running statistics, no dropout.
    Eval,
    /// Batch statistics (train-mode normalisation, augmentation and drop-path on) with the
    /// per-batch mean and biased variance recorded for BN recalibration; running statistics are
    /// not updated by momentum.
    Recalibrate,
}

impl Mode {
    /// Whether the layer normalises with batch statistics.
    pub fn batch_stats(self) -> bool {
        !matches!(self, Mode::Eval)
    }
}
