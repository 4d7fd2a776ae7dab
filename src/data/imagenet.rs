//! ImageNet through the study's file lists (ProxylessNAS): `<list>_files.txt` holds one
//! `relative/path.JPEG label` per line under an image root (`tools/generate_imagenet_splits.py`
//! of the study writes `train`, `val` (50 images per class held out of train), `augment` (all
//! of train) and `test` (the official validation set)). Images stay on disk and are decoded
//! batch by batch on the loader thread; real ImageNet does not fit in memory.
//!
//! Transforms. The study's DALI pipeline trains on random-resized crops with colour jitter and
//! a flip, and evaluates on a resize of the shorter side plus a centre crop. runner follows
//! torchvision's definitions of the geometry (RandomResizedCrop's draws, Resize's sizes,
//! CenterCrop's rounding) with Pillow's bilinear resampling (antialiased when downscaling, as
//! DALI's triangular `min_filter`), and DALI's definitions of the colour operators: brightness /
//! contrast `out = b * (128 + c * (in - 128))`, then hue / saturation as a linear map in YIQ
//! space, each rounded to bytes, then flip and normalisation.

pub use super::resize::Window;
use super::resize::{crop_planes, resize_planes};
use super::{Normalize, Split};
use crate::config::{self, BadImages, ColorJitter};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use rand::Rng as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The images of one file list.
#[derive(Debug)]
pub struct FileSet {
    /// Folder the list's paths are relative to.
    pub root: PathBuf,
    /// The list file (for messages).
    pub list: PathBuf,
    /// (path relative to `root`, label) per line, in list order.
    pub entries: Vec<(PathBuf, u32)>,
    pub num_classes: usize,
    /// An undecodable image is left out of its batch (with a warning) instead of failing.
    pub skip_bad: bool,
}

impl FileSet {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn label(&self, i: usize) -> u32 {
        self.entries[i].1
    }

    pub fn path(&self, i: usize) -> PathBuf {
        self.root.join(&self.entries[i].0)
    }
}

/// Reads the file list `list`: every non-empty line is `path label` (separated by white space,
/// the label last); every file must exist under `root` and every label be below `num_classes`.
/// Errors name the list file and the line.
pub fn read_list(list: &Path, root: &Path, num_classes: usize, skip_bad: bool) -> Result<FileSet> {
    let text = std::fs::read_to_string(list)
        .with_context(|| format!("cannot read ImageNet file list {}", list.display()))?;
    let mut entries = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let at = || format!("{}:{line}", list.display());
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        let Some((path, label)) = l.rsplit_once(|c: char| c.is_whitespace()) else {
            bail!("{}: expected `relative/path.JPEG label`, got {l:?}", at());
        };
        let path = path.trim_end();
        let label: u32 = label.parse().map_err(|_| {
            anyhow::anyhow!("{}: label {label:?} is not a non-negative integer", at())
        })?;
        if label as usize >= num_classes {
            bail!(
                "{}: label {label} is out of range for {num_classes} classes (data.imagenet.num_classes)",
                at()
            );
        }
        let full = root.join(path);
        if !full.is_file() {
            bail!("{}: image {} does not exist", at(), full.display());
        }
        entries.push((PathBuf::from(path), label));
    }
    if entries.is_empty() {
        bail!("ImageNet file list {} lists no images", list.display());
    }
    Ok(FileSet {
        root: root.to_path_buf(),
        list: list.to_path_buf(),
        entries,
        num_classes,
        skip_bad,
    })
}

/// Colour jitter of training images (the study's `--color_jitter`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Jitter {
    /// Brightness and contrast multipliers U[0.6, 1.4], saturation U[0.6, 1.4], hue shift
    /// U[0.9, 1.1] degrees.
    Normal,
    /// Brightness U[1 - 32/255, 1 + 32/255], saturation U[0.5, 1.5].
    Tf,
    None,
}

impl From<ColorJitter> for Jitter {
    fn from(c: ColorJitter) -> Self {
        match c {
            ColorJitter::Normal => Jitter::Normal,
            ColorJitter::Tf => Jitter::Tf,
            ColorJitter::None => Jitter::None,
        }
    }
}

/// What happens to an ImageNet image on its way into a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// Random-resized crop to `size` x `size`, colour jitter, horizontal flip, normalisation.
    Train {
        size: usize,
        jitter: Jitter,
        flip: bool,
        normalize: Normalize,
    },
    /// Shorter side resized to `resize`, centre crop `size` x `size`, normalisation.
    Eval {
        size: usize,
        resize: usize,
        normalize: Normalize,
    },
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio (3/4, 4/3): up
/// to 10 attempts of a target area fraction U(scale) and a log-uniform aspect ratio (w / h),
/// sides rounded half to even; the first that fits is placed uniformly. Otherwise the whole
/// image, cropped to the nearest allowed ratio, centred. Each attempt draws area, ratio (and,
/// when it fits, top then left), all from `rng`.
pub fn random_resized_crop(h: usize, w: usize, rng: &mut Rng) -> Window {
    let (lo_s, hi_s) = (0.08f64, 1.0f64);
    let (lo_r, hi_r) = (3.0f64 / 4.0, 4.0f64 / 3.0);
    let area = (h * w) as f64;
    for _ in 0..10 {
        let target = area * (lo_s + (hi_s - lo_s) * rng.random::<f64>());
        let log_ratio = lo_r.ln() + (hi_r.ln() - lo_r.ln()) * rng.random::<f64>();
        let ratio = log_ratio.exp();
        let cw = (target * ratio).sqrt().round_ties_even();
        let ch = (target / ratio).sqrt().round_ties_even();
        if cw > 0.0 && cw <= w as f64 && ch > 0.0 && ch <= h as f64 {
            let (cw, ch) = (cw as usize, ch as usize);
            let top = rng.random_range(0..=(h - ch) as u64) as usize;
            let left = rng.random_range(0..=(w - cw) as u64) as usize;
            return Window {
                top,
                left,
                height: ch,
                width: cw,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < lo_r {
        (
            w,
            ((w as f64 / lo_r).round_ties_even() as usize).clamp(1, h),
        )
    } else if in_ratio > hi_r {
        (
            ((h as f64 * hi_r).round_ties_even() as usize).clamp(1, w),
            h,
        )
    } else {
        (w, h)
    };
    Window {
        top: (h - ch) / 2,
        left: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

/// torchvision's `Resize(size)` on an `h` x `w` image: the shorter side becomes `size`, the
/// longer `int(size * long / short)`. Returns (height, width).
pub fn resize_shorter(h: usize, w: usize, size: usize) -> (usize, usize) {
    if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    }
}

/// torchvision's `CenterCrop(size)` offset on a side of `len`: `int(round((len - size) / 2))`,
/// Python's round (half to even).
pub fn centre_offset(len: usize, size: usize) -> usize {
    ((len.saturating_sub(size)) as f64 / 2.0).round_ties_even() as usize
}

/// A byte from DALI's float arithmetic: rounded to nearest, saturated.
#[inline]
fn sat_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// DALI's `BrightnessContrast` on bytes: `out = b * (128 + c * (in - 128))`, computed as
/// `in * (b c) + b (128 - 128 c)`.
pub fn brightness_contrast(px: &mut [u8], brightness: f32, contrast: f32) {
    let mul = brightness * contrast;
    let add = brightness * (128.0 - contrast * 128.0);
    for v in px {
        *v = sat_u8(f32::from(*v) * mul + add);
    }
}

type Mat3 = [[f32; 3]; 3];

fn matmul3(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut m = [[0f32; 3]; 3];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

/// DALI's `Hsv` as one RGB -> RGB matrix: YIQ conversion, a rotation of the (I, Q) plane by
/// `hue` degrees, (I, Q) scaled by `saturation`, everything by `value`, back to RGB.
pub fn hsv_matrix(hue: f32, saturation: f32, value: f32) -> Mat3 {
    const RGB2YIQ: Mat3 = [
        [0.299, 0.587, 0.114],
        [0.596, -0.274, -0.321],
        [0.211, -0.523, 0.311],
    ];
    const YIQ2RGB: Mat3 = [
        [1.0, 0.956, 0.621],
        [1.0, -0.272, -0.647],
        [1.0, -1.107, 1.705],
    ];
    let rad = (f64::from(hue) * std::f64::consts::PI / 180.0) as f32;
    let (s, c) = (rad.sin(), rad.cos());
    let h = [[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]];
    let sat = [
        [1.0, 0.0, 0.0],
        [0.0, saturation, 0.0],
        [0.0, 0.0, saturation],
    ];
    let val = [[value, 0.0, 0.0], [0.0, value, 0.0], [0.0, 0.0, value]];
    matmul3(
        &matmul3(&matmul3(&matmul3(&YIQ2RGB, &h), &sat), &val),
        &RGB2YIQ,
    )
}

/// Applies `m` to every pixel of 3 planes of `n` bytes each, rounding to bytes.
pub fn apply_color_matrix(px: &mut [u8], n: usize, m: &Mat3) {
    let (r, rest) = px.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for i in 0..n {
        let v = [f32::from(r[i]), f32::from(g[i]), f32::from(b[i])];
        let out: [u8; 3] =
            [0, 1, 2].map(|o| sat_u8(m[o][0] * v[0] + m[o][1] * v[1] + m[o][2] * v[2]));
        r[i] = out[0];
        g[i] = out[1];
        b[i] = out[2];
    }
}

impl Transform {
    /// Output side length.
    pub fn size(&self) -> usize {
        match self {
            Transform::Train { size, .. } | Transform::Eval { size, .. } => *size,
        }
    }

    /// Transforms a 3 x `h` x `w` byte image into `out` (3 x size x size, f32). Random draws,
    /// in order: the crop (see [`random_resized_crop`]), the jitter factors (normal:
    /// brightness, contrast, saturation, hue; tf: brightness, saturation), the flip.
    pub fn apply(&self, chw: &[u8], h: usize, w: usize, rng: &mut Rng, out: &mut [f32]) {
        let size = self.size();
        let (px, normalize, flip) = match *self {
            Transform::Train {
                size,
                jitter,
                flip,
                normalize,
            } => {
                let win = random_resized_crop(h, w, rng);
                let crop = crop_planes(chw, 3, h, w, win);
                let mut px = resize_planes(&crop, 3, win.height, win.width, size, size);
                let n = size * size;
                let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * rng.random::<f32>();
                match jitter {
                    Jitter::Normal => {
                        let (b, c) = (uniform(0.6, 1.4), uniform(0.6, 1.4));
                        let (s, hue) = (uniform(0.6, 1.4), uniform(0.9, 1.1));
                        brightness_contrast(&mut px, b, c);
                        apply_color_matrix(&mut px, n, &hsv_matrix(hue, s, 1.0));
                    }
                    Jitter::Tf => {
                        let b = uniform(1.0 - 32.0 / 255.0, 1.0 + 32.0 / 255.0);
                        let s = uniform(0.5, 1.5);
                        brightness_contrast(&mut px, b, 1.0);
                        apply_color_matrix(&mut px, n, &hsv_matrix(0.0, s, 1.0));
                    }
                    Jitter::None => {}
                }
                let mirror = flip && rng.random::<f64>() < 0.5;
                (px, normalize, mirror)
            }
            Transform::Eval {
                size,
                resize,
                normalize,
            } => {
                let (rh, rw) = resize_shorter(h, w, resize);
                let r = resize_planes(chw, 3, h, w, rh, rw);
                let (top, left) = (centre_offset(rh, size), centre_offset(rw, size));
                let win = Window {
                    top,
                    left,
                    height: size,
                    width: size,
                };
                (crop_planes(&r, 3, rh, rw, win), normalize, false)
            }
        };
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let sx = if flip { size - 1 - x } else { x };
                    out[(c * size + y) * size + x] =
                        normalize.apply(c, px[(c * size + y) * size + sx]);
                }
            }
        }
    }
}

/// The ImageNet training and validation sets of `cfg` (`dataset = "imagenet"`): the training
/// list `<split>_files.txt` and the evaluation list `<valid_split>_files.txt`, both in
/// `data.imagenet.lists` (default `data.root`), paths relative to `data.root`.
pub fn build(cfg: &config::Data) -> Result<Split> {
    let Some(im) = &cfg.imagenet else {
        bail!("data.dataset = \"imagenet\" needs the [data.imagenet] table");
    };
    let lists = im.lists.clone().unwrap_or_else(|| cfg.root.clone());
    let skip = im.bad_images == BadImages::Skip;
    let list = |name: &str| -> Result<Arc<FileSet>> {
        let p = lists.join(format!("{name}_files.txt"));
        if !p.is_file() {
            bail!(
                "data: ImageNet file list {} does not exist (lists are read from data.imagenet.lists, default data.root)",
                p.display()
            );
        }
        Ok(Arc::new(read_list(&p, &cfg.root, im.num_classes, skip)?))
    };
    let train = match cfg.split.as_str() {
        s @ ("augment" | "train") => list(s)?,
        other => bail!("data: split `{other}` is not an ImageNet training list (augment or train)"),
    };
    let valid = list(im.valid_split.name())?;
    let normalize = Normalize::imagenet();
    let eval = Transform::Eval {
        size: im.image_size,
        resize: im.resize,
        normalize,
    };
    let train_transform = if cfg.augment {
        Transform::Train {
            size: im.image_size,
            jitter: im.color_jitter.into(),
            flip: true,
            normalize,
        }
    } else {
        eval
    };
    let train_indices = (0..train.len()).collect();
    let valid_indices = (0..valid.len()).collect();
    Ok(Split {
        train: super::Images::Files(train),
        train_indices,
        valid: super::Images::Files(valid),
        valid_indices,
        train_augment: super::Transform::Imagenet(train_transform),
        valid_augment: super::Transform::Imagenet(eval),
        num_classes: im.num_classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_list_errors_name_the_list_and_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("train/a")).unwrap();
        std::fs::write(d.path().join("train/a/x.JPEG"), b"not a jpeg").unwrap();
        let ok = write(
            d.path(),
            "ok.txt",
            "train/a/x.JPEG 3\n\ntrain/a/x.JPEG\t0\n",
        );
        let s = read_list(&ok, d.path(), 10, false).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s.label(0), s.label(1)), (3, 0));
        assert_eq!(s.path(1), d.path().join("train/a/x.JPEG"));
        let cases = [
            (
                "a.txt",
                "train/a/x.JPEG 1\ntrain/a/x.JPEG\n",
                "a.txt:2",
                "expected `relative/path.JPEG label`",
            ),
            (
                "b.txt",
                "train/a/x.JPEG -1\n",
                "b.txt:1",
                "not a non-negative integer",
            ),
            (
                "c.txt",
                "train/a/x.JPEG 1\ntrain/a/x.JPEG 10\n",
                "c.txt:2",
                "out of range for 10 classes",
            ),
            ("e.txt", "train/a/y.JPEG 1\n", "e.txt:1", "does not exist"),
            ("f.txt", "\n\n", "f.txt", "lists no images"),
        ];
        for (name, text, at, what) in cases {
            let p = write(d.path(), name, text);
            let e = format!("{:#}", read_list(&p, d.path(), 10, false).unwrap_err());
            assert!(e.contains(at) && e.contains(what), "{name}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = format!(
            "{:#}",
            read_list(&d.path().join("none.txt"), d.path(), 10, false).unwrap_err()
        );
        assert!(e.contains("none.txt"), "{e}");
    }

    #[test]
    fn random_resized_crop_keeps_torchvision_invariants() {
        let mut r = rng::stream(1, "rrc", &[]);
        for &(h, w) in &[
            (224usize, 224usize),
            (375, 500),
            (500, 333),
            (60, 400),
            (17, 13),
        ] {
            for _ in 0..2000 {
                let win = random_resized_crop(h, w, &mut r);
                assert!(win.height >= 1 && win.width >= 1);
                assert!(win.top + win.height <= h && win.left + win.width <= w);
                if (win.height, win.width) == (h, w) {
                    continue; // a full-image crop (drawn, or the fallback)
                }
                let frac = (win.height * win.width) as f64 / (h * w) as f64;
                let ratio = win.width as f64 / win.height as f64;
                // Rounding the sides moves area and ratio a little off the drawn values.
                let slack_a = (win.height + win.width) as f64 / (h * w) as f64;
                assert!(frac >= 0.08 - slack_a && frac <= 1.0, "{h}x{w}: {win:?}");
                let slack_r = 1.0 / win.height.min(win.width) as f64 + 1e-9;
                assert!(
                    ratio >= 0.75 * (1.0 - slack_r) - slack_r
                        && ratio <= 4.0 / 3.0 * (1.0 + slack_r) + slack_r,
                    "{h}x{w}: ratio {ratio} of {win:?}"
                );
            }
        }
        // A 10 x 200 strip fits no drawn crop (10 attempts fail): the fallback is the full
        // height at ratio 4/3 (width round(13.3) = 13), centred; 200 x 10 likewise at 3/4.
        let mut z = rng::stream(0, "z", &[]);
        for _ in 0..100 {
            let win = random_resized_crop(10, 200, &mut z);
            assert_eq!(
                win,
                Window {
                    top: 0,
                    left: 93,
                    height: 10,
                    width: 13
                }
            );
            let win = random_resized_crop(200, 10, &mut z);
            assert_eq!(
                win,
                Window {
                    top: 93,
                    left: 0,
                    height: 13,
                    width: 10
                }
            );
        }
        // Positions cover the whole range.
        let mut r = rng::stream(2, "pos", &[]);
        let tops: Vec<usize> = (0..4000)
            .map(|_| random_resized_crop(300, 300, &mut r))
            .filter(|w| w.height == 30)
            .map(|w| w.top)
            .collect();
        if let (Some(mn), Some(mx)) = (tops.iter().min(), tops.iter().max()) {
            assert!(*mn < 30 && *mx > 240, "{mn} {mx}");
        }
    }

    #[test]
    fn resize_and_centre_geometry_follow_torchvision() {
        assert_eq!(resize_shorter(375, 500, 256), (256, 341));
        assert_eq!(resize_shorter(500, 333, 256), (384, 256));
        assert_eq!(resize_shorter(224, 224, 256), (256, 256));
        assert_eq!(centre_offset(256, 224), 16);
        // (73 - 64) / 2 = 4.5 rounds half to even: 4; (75 - 64) / 2 = 5.5: 6.
        assert_eq!(centre_offset(73, 64), 4);
        assert_eq!(centre_offset(75, 64), 6);
    }

    #[test]
    fn colour_operators_follow_dali() {
        // Contrast pivots on 128; brightness scales.
        let mut px = vec![0u8, 128, 255, 100];
        brightness_contrast(&mut px, 1.0, 0.5);
        assert_eq!(px, vec![64, 128, 192, 114]);
        let mut px = vec![0u8, 128, 255, 100];
        brightness_contrast(&mut px, 1.2, 1.0);
        assert_eq!(px, vec![0, 154, 255, 120]);
        // Neutral settings are the identity up to the matrices' 3-digit constants.
        let m = hsv_matrix(0.0, 1.0, 1.0);
        for (i, row) in m.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 2e-3, "{m:?}");
            }
        }
        // Saturation 0 leaves the luma Y = 0.299 R + 0.587 G + 0.114 B in every channel.
        let y = 0.299 * 200.0 + 0.587 * 50.0 + 0.114 * 30.0_f32;
        let mut px = vec![200u8, 50, 30];
        apply_color_matrix(&mut px, 1, &hsv_matrix(0.0, 0.0, 1.0));
        for v in px {
            assert!((f32::from(v) - y).abs() <= 1.0, "{v} vs {y}");
        }
        // A grey pixel is unchanged by hue and saturation.
        let mut px = vec![90u8, 90, 90];
        apply_color_matrix(&mut px, 1, &hsv_matrix(1.05, 1.3, 1.0));
        assert_eq!(px, vec![90, 90, 90]);
    }

    #[test]
    fn eval_transform_is_deterministic_and_train_draws_from_the_stream() {
        let (h, w) = (40usize, 50usize);
        let img: Vec<u8> = (0..3 * h * w).map(|i| (i * 7 % 256) as u8).collect();
        let n = Normalize::imagenet();
        let eval = Transform::Eval {
            size: 16,
            resize: 18,
            normalize: n,
        };
        let mut a = vec![0f32; 3 * 16 * 16];
        let mut b = a.clone();
        let mut r1 = rng::stream(1, "e", &[]);
        let before = r1.clone();
        eval.apply(&img, h, w, &mut r1, &mut a);
        assert_eq!(r1, before, "evaluation draws nothing");
        eval.apply(&img, h, w, &mut rng::stream(9, "e", &[]), &mut b);
        assert_eq!(a, b);
        let train = Transform::Train {
            size: 16,
            jitter: Jitter::Normal,
            flip: true,
            normalize: n,
        };
        let mut r = rng::stream(1, "t", &[]);
        train.apply(&img, h, w, &mut r, &mut a);
        train.apply(&img, h, w, &mut rng::stream(1, "t", &[]), &mut b);
        assert_eq!(a, b);
        train.apply(&img, h, w, &mut r, &mut b);
        assert_ne!(a, b);
        assert!(a.iter().all(|v| v.is_finite()));
    }

    type Fixture = std::collections::HashMap<String, candle_core::Tensor>;

    fn fixture() -> Fixture {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/proxyless_augment.npz"
        );
        candle_core::Tensor::read_npz(p)
            .unwrap()
            .into_iter()
            .collect()
    }

    /// Bytes and (C, H, W) of a uint8 fixture array.
    fn planes(f: &Fixture, key: &str) -> (Vec<u8>, usize, usize) {
        let t = f.get(key).unwrap_or_else(|| panic!("fixture lacks {key}"));
        let d = t.dims().to_vec();
        assert_eq!(d[0], 3, "{key}");
        (
            t.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            d[1],
            d[2],
        )
    }

    /// Largest absolute byte difference and how many bytes differ.
    fn diff(a: &[u8], b: &[u8]) -> (u8, usize) {
        assert_eq!(a.len(), b.len());
        let d = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y));
        (d.clone().max().unwrap_or(0), d.filter(|v| *v > 0).count())
    }

    #[test]
    fn resize_matches_pillow() {
        let f = fixture();
        let real = planes(&f, "real");
        let names = [
            "real_down_73",
            "real_down_64",
            "up",
            "smooth_mixed",
            "noisy_mixed",
            "noisy_down_odd",
            "noisy_same",
        ];
        for name in names {
            let (src, h, w) = if name.starts_with("real_") {
                real.clone()
            } else {
                planes(&f, &format!("{name}.src"))
            };
            let (want, oh, ow) = planes(&f, &format!("{name}.out"));
            let got = resize_planes(&src, 3, h, w, oh, ow);
            // Tolerance: one grey level. The algorithm is Pillow's (same float coefficients,
            // same fixed-point sums), so the bytes are expected to be equal.
            let (max, count) = diff(&got, &want);
            assert!(max <= 1, "{name}: max diff {max}");
            assert_eq!(count, 0, "{name}: {count} bytes differ from Pillow");
        }
        let win: Vec<i64> = f["crop.window"].to_vec1().unwrap();
        let [top, left, ch, cw] = [win[0], win[1], win[2], win[3]].map(|v| v as usize);
        let (want, oh, ow) = planes(&f, "crop.out");
        let win = Window {
            top,
            left,
            height: ch,
            width: cw,
        };
        let crop = crop_planes(&real.0, 3, real.1, real.2, win);
        assert_eq!(
            diff(&resize_planes(&crop, 3, ch, cw, oh, ow), &want),
            (0, 0)
        );
    }

    #[test]
    fn eval_transform_matches_torchvision_on_pillow() {
        let f = fixture();
        let (src, h, w) = planes(&f, "eval.src");
        let geo: Vec<i64> = f["eval.geometry"].to_vec1().unwrap();
        let (rh, rw) = resize_shorter(h, w, 73);
        assert_eq!(
            [rh, rw, centre_offset(rh, 64), centre_offset(rw, 64)].map(|v| v as i64),
            [geo[0], geo[1], geo[2], geo[3]]
        );
        let want: Vec<f32> = f["eval.out"].flatten_all().unwrap().to_vec1().unwrap();
        let t = Transform::Eval {
            size: 64,
            resize: 73,
            normalize: Normalize::imagenet(),
        };
        let mut got = vec![0f32; 3 * 64 * 64];
        t.apply(&src, h, w, &mut rng::stream(0, "e", &[]), &mut got);
        // Tolerance: float32 rounding of the normalisation (the bytes are equal).
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "max diff {max}");
    }

    #[test]
    fn greyscale_jpegs_decode_to_three_equal_planes() {
        let p = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/grey16x12.jpg"
        ));
        let (h, w, px) = crate::data::image_folder::decode_jpeg(p).unwrap();
        assert_eq!((h, w), (12, 16));
        let n = h * w;
        assert_eq!(px[..n], px[n..2 * n]);
        assert_eq!(px[..n], px[2 * n..]);
    }

    /// A list of three real JPEGs with a broken one in the middle.
    fn list_with_bad_jpeg(dir: &Path) -> PathBuf {
        let mini = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/imagenet-mini"));
        let text = std::fs::read_to_string(mini.join("test_files.txt")).unwrap();
        std::fs::create_dir_all(dir.join("img")).unwrap();
        let picks: Vec<&str> = text.lines().step_by(70).take(2).collect();
        let mut list = String::new();
        for (k, line) in picks.iter().enumerate() {
            let (p, label) = line.rsplit_once(' ').unwrap();
            std::fs::copy(mini.join(p), dir.join(format!("img/{k}.JPEG"))).unwrap();
            list.push_str(&format!("img/{k}.JPEG {label}\n"));
            if k == 0 {
                std::fs::write(dir.join("img/bad.JPEG"), b"\xff\xd8 not really a jpeg").unwrap();
                list.push_str("img/bad.JPEG 9\n");
            }
        }
        write(dir, "test_files.txt", &list)
    }

    #[test]
    fn file_images_decode_per_batch_and_bad_jpegs_fail_or_skip() {
        let d = tempfile::tempdir().unwrap();
        let list = list_with_bad_jpeg(d.path());
        let eval = Transform::Eval {
            size: 16,
            resize: 18,
            normalize: Normalize::imagenet(),
        };
        let dev = candle_core::Device::Cpu;
        let run = |skip: bool, t: Transform| {
            let set = Arc::new(read_list(&list, d.path(), 10, skip).unwrap());
            crate::data::batches(
                crate::data::Images::Files(set),
                vec![0, 1, 2],
                3,
                false,
                crate::data::Transform::Imagenet(t),
                4,
                "v",
                &[7],
                &dev,
                1,
            )
            .collect::<Vec<_>>()
        };
        // fail (the default): one error naming the file and the list, then nothing.
        let got = run(false, eval);
        assert_eq!(got.len(), 1);
        let e = format!("{:#}", got[0].as_ref().err().unwrap());
        assert!(
            e.contains("bad.JPEG") && e.contains("test_files.txt"),
            "{e}"
        );
        assert!(e.contains("bad_images"), "{e}");
        // skip: the batch holds the two good images, in order, each as the transform makes it.
        let got = run(true, eval);
        assert_eq!(got.len(), 1);
        let b = got[0].as_ref().unwrap();
        assert_eq!(b.images.dims(), &[2, 3, 16, 16]);
        let labels: Vec<u32> = b.labels.to_vec1().unwrap();
        let set = read_list(&list, d.path(), 10, true).unwrap();
        assert_eq!(labels, vec![set.label(0), set.label(2)]);
        let imgs: Vec<f32> = b.images.flatten_all().unwrap().to_vec1().unwrap();
        for (slot, i) in [(0usize, 0usize), (1, 2)] {
            let (h, w, px) = crate::data::image_folder::decode_jpeg(&set.path(i)).unwrap();
            let mut want = vec![0f32; 3 * 16 * 16];
            eval.apply(&px, h, w, &mut rng::stream(0, "x", &[]), &mut want);
            assert_eq!(&imgs[slot * 768..(slot + 1) * 768], want.as_slice());
        }
        // Training draws: image k of batch b from stream (seed, name, [indices.., b, k]); the
        // left-out image does not shift the third image's draws.
        let train = Transform::Train {
            size: 16,
            jitter: Jitter::Normal,
            flip: true,
            normalize: Normalize::imagenet(),
        };
        let got = run(true, train);
        let imgs: Vec<f32> = got[0]
            .as_ref()
            .unwrap()
            .images
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (h, w, px) = crate::data::image_folder::decode_jpeg(&set.path(2)).unwrap();
        let mut want = vec![0f32; 768];
        train.apply(&px, h, w, &mut rng::stream(4, "v", &[7, 0, 2]), &mut want);
        assert_eq!(&imgs[768..], want.as_slice());
    }
}
