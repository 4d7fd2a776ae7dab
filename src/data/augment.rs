//! Per-image transforms: random crop with zero padding, horizontal flip, normalisation, cutout.

use crate::rng::Rng;

/// Per-channel normalisation applied to pixel values scaled to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// What happens to one image on its way into a batch, in the reference order:
/// crop (pad `crop_padding`), flip, to [0, 1], normalise, cutout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    pub crop_padding: usize,
    pub flip: bool,
    pub cutout: usize,
    pub normalize: Normalize,
}

impl Augment {
    /// Normalisation only (evaluation).
    pub fn plain(normalize: Normalize) -> Self {
        Self { crop_padding: 0, flip: false, cutout: 0, normalize }
    }

    /// Writes the transformed image (C x H x W, u8 input) into `out` as f32.
    pub fn apply(&self, img: &[u8], c: usize, h: usize, w: usize, rng: &mut Rng, out: &mut [f32]) {
        let _ = (img, c, h, w, rng, out);
        todo!("data helper")
    }
}
