//! Datasets, augmentation and loaders. Knows nothing of spaces or training.
//!
//! Readers: [`pickle`] (a safe pickle decoder), [`cifar`] (pickle batches and binary records),
//! [`imagenet16`], [`image_folder`] (JPEG class folders), [`splits`] (NB201 split files) and
//! [`imagenet`] (the study's ImageNet file lists, decoded lazily); [`build()`] turns the `[data]`
//! config into a [`Split`]; [`loader`] makes augmented batches on a background thread.

pub mod augment;
pub mod build;
pub mod cifar;
pub mod image_folder;
pub mod imagenet;
pub mod imagenet16;
pub mod loader;
pub mod pickle;
pub mod ptb;
pub mod resize;
pub mod splits;
pub mod text;

pub use augment::{Augment, Draws, Normalize};
pub use build::{build, Split};
pub use loader::{batches, shuffled, Batch, BatchIter, Images, Transform};
pub use text::read_maybe_gz;

/// Images held in memory as u8, each image C x H x W contiguous, images back to back.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }
}
