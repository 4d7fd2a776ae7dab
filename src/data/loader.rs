//! Batches assembled on a background thread, every random choice from a stream keyed by batch.

use super::{Augment, ImageSet};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// One batch on the target device: images (B, C, H, W) f32, labels (B,) u32.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
}

/// A seeded permutation of 0..n from stream (seed, name, indices).
pub fn shuffled(n: usize, seed: u64, name: &str, indices: &[u64]) -> Vec<usize> {
    let _ = (n, seed, name, indices);
    todo!("data helper")
}

/// Iterator over batches, produced ahead by a background thread.
pub struct BatchIter {
    _private: (),
}

impl Iterator for BatchIter {
    type Item = anyhow::Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        todo!("data helper")
    }
}

/// Batches of `set` in the order `order`. Batch b's augmentation draws from
/// `rng::stream(seed, name, [indices.., b])`, so the result does not depend on threading and a
/// batch can be reproduced alone. `drop_last` drops a final short batch.
#[allow(clippy::too_many_arguments)]
pub fn batches(
    set: Arc<ImageSet>,
    order: Vec<usize>,
    batch_size: usize,
    drop_last: bool,
    augment: Augment,
    seed: u64,
    name: &str,
    indices: &[u64],
    device: &Device,
    prefetch: usize,
) -> BatchIter {
    let _ = (set, order, batch_size, drop_last, augment, seed, name, indices, device, prefetch);
    todo!("data helper")
}
