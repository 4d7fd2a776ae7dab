//! From `[data]` config to training and validation sets.

use super::{Augment, ImageSet};
use crate::config;
use std::sync::Arc;

/// The images a run trains and validates on.
pub struct Split {
    pub train: Arc<ImageSet>,
    /// Indices into `train` forming the training split.
    pub train_indices: Vec<usize>,
    pub valid: Arc<ImageSet>,
    /// Indices into `valid` forming the validation split.
    pub valid_indices: Vec<usize>,
    /// Transform of training (and recalibration) images.
    pub train_augment: Augment,
    /// Transform of validation images (the NB201 cifar10-valid quirk: training augmentation).
    pub valid_augment: Augment,
    pub num_classes: usize,
}

/// Reads the data named by `cfg` (paths already absolute).
pub fn build(cfg: &config::Data) -> anyhow::Result<Split> {
    let _ = cfg;
    todo!("data helper")
}
