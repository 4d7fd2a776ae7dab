//! Per-image transforms: random crop with zero padding, horizontal flip, normalisation, cutout.

use crate::rng::Rng;
use rand::Rng as _;

/// Per-channel normalisation applied to pixel values scaled to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// NAS-Bench-201's CIFAR-10 constants (x / 255 of the published 0..255 values).
    pub fn nb201_cifar10() -> Self {
        Self::from_255([125.3, 123.0, 113.9], [63.0, 62.1, 66.7])
    }

    /// NAS-Bench-201's CIFAR-100 constants.
    pub fn nb201_cifar100() -> Self {
        Self::from_255([129.3, 124.1, 112.4], [68.2, 65.4, 70.4])
    }

    /// NAS-Bench-201's ImageNet16-120 constants.
    pub fn nb201_imagenet16() -> Self {
        Self::from_255([122.68, 116.66, 104.01], [63.22, 61.26, 65.09])
    }

    /// ImageNet's constants (torchvision's, used by ProxylessNAS).
    pub fn imagenet() -> Self {
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// DARTS's CIFAR-10 constants (used by the study's 40k / 50k splits).
    pub fn darts() -> Self {
        Self {
            mean: [0.491_399_68, 0.482_158_27, 0.446_531_24],
            std: [0.247_032_33, 0.243_485_05, 0.261_587_68],
        }
    }

    /// Constants given on the 0..255 scale. Divides in f64 and rounds once to f32, as Python
    /// computes `x / 255` and torchvision then converts the list to a float32 tensor.
    pub fn from_255(mean: [f64; 3], std: [f64; 3]) -> Self {
        Self {
            mean: mean.map(|m| (m / 255.0) as f32),
            std: std.map(|s| (s / 255.0) as f32),
        }
    }

    /// Normalised value of byte `v` in channel `c`, in torchvision's float32 order of operations
    /// (`v / 255`, minus the mean, divided by the std).
    #[inline]
    pub fn apply(&self, c: usize, v: u8) -> f32 {
        (f32::from(v) / 255.0 - self.mean[c]) / self.std[c]
    }
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

/// The random choices for one image. Drawn in this order, each only when its transform is on:
/// crop row offset, crop column offset (each uniform in `0..=2 * padding`, as torchvision's
/// `RandomCrop` draws them), flip (probability 0.5), cutout centre row, cutout centre column
/// (uniform pixels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Draws {
    pub dy: usize,
    pub dx: usize,
    pub flip: bool,
    pub cut_y: usize,
    pub cut_x: usize,
}

impl Augment {
    /// Normalisation only (evaluation).
    pub fn plain(normalize: Normalize) -> Self {
        Self {
            crop_padding: 0,
            flip: false,
            cutout: 0,
            normalize,
        }
    }

    /// Draws the random choices for an `h` x `w` image.
    pub fn draw(&self, h: usize, w: usize, rng: &mut Rng) -> Draws {
        let mut d = Draws::default();
        if self.crop_padding > 0 {
            let span = 2 * self.crop_padding as u64 + 1;
            d.dy = rng.random_range(0..span) as usize;
            d.dx = rng.random_range(0..span) as usize;
        }
        if self.flip {
            d.flip = rng.random::<f64>() < 0.5;
        }
        if self.cutout > 0 {
            d.cut_y = rng.random_range(0..h.max(1) as u64) as usize;
            d.cut_x = rng.random_range(0..w.max(1) as u64) as usize;
        }
        d
    }

    /// Writes the transformed image (C x H x W, u8 input) into `out` as f32.
    pub fn apply(&self, img: &[u8], c: usize, h: usize, w: usize, rng: &mut Rng, out: &mut [f32]) {
        let d = self.draw(h, w, rng);
        self.apply_with(img, c, h, w, &d, out);
    }

    /// [`Augment::apply`] with the random choices given.
    pub fn apply_with(&self, img: &[u8], c: usize, h: usize, w: usize, d: &Draws, out: &mut [f32]) {
        let n = c * h * w;
        assert!(
            img.len() == n && out.len() == n && c <= 3,
            "augment: image of {} bytes / output of {} for {c}x{h}x{w}",
            img.len(),
            out.len()
        );
        let p = self.crop_padding;
        for ch in 0..c {
            // Padding pixels are black bytes, normalised like any other pixel.
            let pad = self.normalize.apply(ch, 0);
            let plane = &img[ch * h * w..(ch + 1) * h * w];
            let dst = &mut out[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                // Row y of the crop is row y + dy of the padded image.
                let sy = (y + d.dy).checked_sub(p).filter(|&r| r < h);
                for x in 0..w {
                    let xc = if d.flip { w - 1 - x } else { x };
                    let sx = (xc + d.dx).checked_sub(p).filter(|&r| r < w);
                    dst[y * w + x] = match (sy, sx) {
                        (Some(sy), Some(sx)) => self.normalize.apply(ch, plane[sy * w + sx]),
                        _ => pad,
                    };
                }
            }
            if self.cutout > 0 {
                let half = self.cutout / 2;
                let (y0, y1) = (d.cut_y.saturating_sub(half), (d.cut_y + half).min(h));
                let (x0, x1) = (d.cut_x.saturating_sub(half), (d.cut_x + half).min(w));
                for y in y0..y1 {
                    dst[y * w + x0..y * w + x1].fill(0.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;
    use candle_core::Tensor;

    fn plain_unit() -> Normalize {
        // mean 0, std 1/255: the output is the byte value itself, so layouts are easy to read.
        Normalize {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
        }
    }

    fn bytes_of(out: &[f32]) -> Vec<i32> {
        out.iter().map(|v| v.round() as i32).collect()
    }

    #[test]
    fn normalisation_matches_torch_bit_for_bit() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/augment_norm.npz"
        );
        let arrays: std::collections::HashMap<String, Tensor> =
            Tensor::read_npz(path).unwrap().into_iter().collect();
        let img: Vec<u8> = arrays["img"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(img.len(), 3 * 256);
        for (key, norm) in [
            ("nb201_cifar10", Normalize::nb201_cifar10()),
            ("nb201_cifar100", Normalize::nb201_cifar100()),
            ("nb201_imagenet16", Normalize::nb201_imagenet16()),
            ("darts", Normalize::darts()),
        ] {
            let want: Vec<f32> = arrays[key].flatten_all().unwrap().to_vec1().unwrap();
            let mut got = vec![0f32; img.len()];
            let mut r = rng::stream(0, "t", &[]);
            Augment::plain(norm).apply(&img, 3, 16, 16, &mut r, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{key} element {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn crop_offsets_pad_with_normalised_black() {
        // One 3x3 channel holding 1..9.
        let img: Vec<u8> = (1..=9).collect();
        let a = Augment {
            crop_padding: 1,
            flip: false,
            cutout: 0,
            normalize: plain_unit(),
        };
        let mut out = vec![0f32; 9];
        // dy = dx = 0: the window starts one pixel above / left of the image.
        a.apply_with(&img, 1, 3, 3, &Draws::default(), &mut out);
        assert_eq!(bytes_of(&out), vec![0, 0, 0, 0, 1, 2, 0, 4, 5]);
        // dy = 2, dx = 1: shifted down by one row.
        let d = Draws {
            dy: 2,
            dx: 1,
            ..Draws::default()
        };
        a.apply_with(&img, 1, 3, 3, &d, &mut out);
        assert_eq!(bytes_of(&out), vec![4, 5, 6, 7, 8, 9, 0, 0, 0]);
        // dy = dx = 1 is the identity.
        let d = Draws {
            dy: 1,
            dx: 1,
            ..Draws::default()
        };
        a.apply_with(&img, 1, 3, 3, &d, &mut out);
        assert_eq!(bytes_of(&out), (1..=9).collect::<Vec<_>>());
        // Padding is black before normalisation: with a real mean it is -mean/std, not 0.
        let n = Normalize::nb201_cifar10();
        let b = Augment { normalize: n, ..a };
        b.apply_with(&img, 1, 3, 3, &Draws::default(), &mut out);
        assert_eq!(out[0], (0.0 - n.mean[0]) / n.std[0]);
        assert!(out[0] < -1.9);
    }

    #[test]
    fn flip_mirrors_after_cropping() {
        let img: Vec<u8> = (1..=6).collect(); // 2 rows x 3 columns
        let a = Augment {
            crop_padding: 1,
            flip: true,
            cutout: 0,
            normalize: plain_unit(),
        };
        let mut out = vec![0f32; 6];
        let d = Draws {
            dy: 1,
            dx: 1,
            flip: true,
            ..Draws::default()
        };
        a.apply_with(&img, 1, 2, 3, &d, &mut out);
        assert_eq!(bytes_of(&out), vec![3, 2, 1, 6, 5, 4]);
        // Crop (dx = 2 shifts left, zero column on the right), then mirror.
        let d = Draws {
            dy: 1,
            dx: 2,
            flip: true,
            ..Draws::default()
        };
        a.apply_with(&img, 1, 2, 3, &d, &mut out);
        assert_eq!(bytes_of(&out), vec![0, 3, 2, 0, 6, 5]);
    }

    #[test]
    fn cutout_zeroes_a_clipped_square_after_normalisation() {
        let img = vec![255u8; 2 * 5 * 5];
        let a = Augment {
            crop_padding: 0,
            flip: false,
            cutout: 4,
            normalize: Normalize::nb201_cifar10(),
        };
        let mut out = vec![0f32; 50];
        // Centre (0, 0): rows [-2, 2) x cols [-2, 2) clipped to [0, 2) x [0, 2).
        let d = Draws {
            cut_y: 0,
            cut_x: 0,
            ..Draws::default()
        };
        a.apply_with(&img, 2, 5, 5, &d, &mut out);
        for ch in 0..2 {
            for y in 0..5 {
                for x in 0..5 {
                    let v = out[ch * 25 + y * 5 + x];
                    let cut = y < 2 && x < 2;
                    assert_eq!(v == 0.0, cut, "ch {ch} ({y},{x}) = {v}");
                }
            }
        }
        // Centre (4, 3): rows [2, 6) -> [2, 5), cols [1, 5).
        let d = Draws {
            cut_y: 4,
            cut_x: 3,
            ..Draws::default()
        };
        a.apply_with(&img, 2, 5, 5, &d, &mut out);
        let zeros: Vec<(usize, usize)> = (0..25)
            .filter(|i| out[*i] == 0.0)
            .map(|i| (i / 5, i % 5))
            .collect();
        let want: Vec<(usize, usize)> = (2..5).flat_map(|y| (1..5).map(move |x| (y, x))).collect();
        assert_eq!(zeros, want);
        // Odd length 3: half = 1, rows [y-1, y+1).
        let a3 = Augment { cutout: 3, ..a };
        let d = Draws {
            cut_y: 2,
            cut_x: 2,
            ..Draws::default()
        };
        a3.apply_with(&img, 2, 5, 5, &d, &mut out);
        let zeros: Vec<usize> = (0..25).filter(|i| out[*i] == 0.0).collect();
        assert_eq!(zeros, vec![6, 7, 11, 12]);
    }

    #[test]
    fn apply_uses_the_documented_draw_order() {
        let a = Augment {
            crop_padding: 4,
            flip: true,
            cutout: 8,
            normalize: Normalize::darts(),
        };
        let img: Vec<u8> = (0..3 * 32 * 32).map(|i| (i * 31 % 256) as u8).collect();
        let mut r1 = rng::stream(5, "augment", &[1]);
        let mut r2 = r1.clone();
        let mut out1 = vec![0f32; img.len()];
        a.apply(&img, 3, 32, 32, &mut r1, &mut out1);
        // The same draws made by hand.
        let dy = r2.random_range(0..9u64) as usize;
        let dx = r2.random_range(0..9u64) as usize;
        let flip = r2.random::<f64>() < 0.5;
        let cut_y = r2.random_range(0..32u64) as usize;
        let cut_x = r2.random_range(0..32u64) as usize;
        let d = Draws {
            dy,
            dx,
            flip,
            cut_y,
            cut_x,
        };
        let mut out2 = vec![0f32; img.len()];
        a.apply_with(&img, 3, 32, 32, &d, &mut out2);
        assert_eq!(out1, out2);
        // Both generators are at the same position afterwards.
        assert_eq!(r1.random::<u64>(), r2.random::<u64>());
        // Offsets cover 0..=8 and flips happen about half the time.
        let mut r = rng::stream(9, "augment", &[]);
        let draws: Vec<Draws> = (0..2000).map(|_| a.draw(32, 32, &mut r)).collect();
        assert_eq!(draws.iter().map(|d| d.dy).max(), Some(8));
        assert_eq!(draws.iter().map(|d| d.dx).min(), Some(0));
        let flips = draws.iter().filter(|d| d.flip).count();
        assert!((900..1100).contains(&flips), "{flips}");
        assert_eq!(draws.iter().map(|d| d.cut_y).max(), Some(31));
    }

    #[test]
    fn plain_draws_nothing() {
        let a = Augment::plain(Normalize::darts());
        let mut r = rng::stream(1, "x", &[]);
        let before = r.clone();
        assert_eq!(a.draw(32, 32, &mut r), Draws::default());
        assert_eq!(r, before);
    }
}
