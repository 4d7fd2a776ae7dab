//! Bilinear resizing of 8-bit image planes as Pillow does it (`Image.resize(size, BILINEAR)`,
//! which torchvision's `Resize` and `RandomResizedCrop` call on PIL images): a separable
//! triangle filter whose support widens with the downscaling factor (so downscaling is
//! antialiased, upscaling is plain bilinear interpolation with half-pixel centres), weights in
//! 22-bit fixed point, a horizontal pass then a vertical pass with rounding to bytes in between.
//! Written from the algorithm's description; the tests compare with Pillow 9.4 output.

/// Fixed-point precision of Pillow's 8-bit resampling (32 - 8 - 2 bits).
const PRECISION_BITS: u32 = 22;

/// Per output pixel: the first input pixel and the weights of the input pixels it reads.
struct Coeffs {
    /// Weights per output pixel (`ksize` slots, the used ones first).
    ksize: usize,
    /// (first input index, number of inputs) per output pixel.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `ksize` per output pixel.
    weights: Vec<i32>,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` for the whole input range [0, in_size) and its
/// `normalize_coeffs_8bpc`.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    // The bilinear filter's support is 1 input pixel, widened when downscaling.
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero; negative starts clamp to 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = triangle((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, slot) in row.iter_mut().enumerate().take(n) {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *slot = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: the accumulated fixed-point sum to a byte.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `c` planes of `h` x `w` bytes (planes back to back) to `out_h` x `out_w`, as Pillow
/// resizes an image with `Image.BILINEAR` and no box. Same size: a copy.
pub fn resize_planes(
    src: &[u8],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<u8> {
    assert_eq!(src.len(), c * h * w, "resize_planes: {c}x{h}x{w} input");
    assert!(out_h > 0 && out_w > 0, "resize_planes: empty output");
    let round = 1i32 << (PRECISION_BITS - 1);
    // Horizontal pass over the rows the vertical pass reads.
    let vert = (out_h != h).then(|| coeffs(h, out_h));
    let (row0, row1) = match &vert {
        Some(v) => {
            let first = v.bounds[0].0;
            let (lo, n) = v.bounds[out_h - 1];
            (first, lo + n)
        }
        None => (0, h),
    };
    let rows = row1 - row0;
    let horiz_out: Vec<u8>;
    let (tmp, tmp_w): (&[u8], usize) = if out_w != w {
        let co = coeffs(w, out_w);
        let mut out = vec![0u8; c * rows * out_w];
        for ch in 0..c {
            for y in 0..rows {
                let src_row = &src[(ch * h + row0 + y) * w..(ch * h + row0 + y + 1) * w];
                let dst = &mut out[(ch * rows + y) * out_w..(ch * rows + y + 1) * out_w];
                for (xx, d) in dst.iter_mut().enumerate() {
                    let (xmin, n) = co.bounds[xx];
                    let k = &co.weights[xx * co.ksize..xx * co.ksize + n];
                    let mut ss = round;
                    for (px, kx) in src_row[xmin..xmin + n].iter().zip(k) {
                        ss += i32::from(*px) * kx;
                    }
                    *d = clip8(ss);
                }
            }
        }
        horiz_out = out;
        (&horiz_out, out_w)
    } else {
        // No horizontal pass: the vertical pass reads the source rows directly.
        (src, w)
    };
    let Some(v) = vert else {
        return if out_w != w {
            tmp.to_vec()
        } else {
            src.to_vec()
        };
    };
    // Rows of `tmp` per plane, and the row of `tmp` that source row `row0` became.
    let (plane_rows, shift) = if out_w != w { (rows, row0) } else { (h, 0) };
    let mut out = vec![0u8; c * out_h * tmp_w];
    for ch in 0..c {
        let plane = &tmp[ch * plane_rows * tmp_w..(ch + 1) * plane_rows * tmp_w];
        for yy in 0..out_h {
            let (ymin, n) = v.bounds[yy];
            let k = &v.weights[yy * v.ksize..yy * v.ksize + n];
            let dst = &mut out[(ch * out_h + yy) * tmp_w..(ch * out_h + yy + 1) * tmp_w];
            for (x, d) in dst.iter_mut().enumerate() {
                let mut ss = round;
                for (y, ky) in k.iter().enumerate() {
                    ss += i32::from(plane[(ymin - shift + y) * tmp_w + x]) * ky;
                }
                *d = clip8(ss);
            }
        }
    }
    out
}

/// A crop window: top row, left column, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// The window `win` of `c` planes of `h` x `w`.
pub fn crop_planes(src: &[u8], c: usize, h: usize, w: usize, win: Window) -> Vec<u8> {
    let Window {
        top,
        left,
        height,
        width,
    } = win;
    assert!(
        top + height <= h && left + width <= w && src.len() == c * h * w,
        "crop_planes: window {win:?} of {c}x{h}x{w}"
    );
    let mut out = Vec::with_capacity(c * height * width);
    for ch in 0..c {
        for y in top..top + height {
            let row = (ch * h + y) * w;
            out.extend_from_slice(&src[row + left..row + left + width]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy_and_constant_planes_stay_constant() {
        let src: Vec<u8> = (0..3 * 5 * 7).map(|i| (i * 13 % 256) as u8).collect();
        assert_eq!(resize_planes(&src, 3, 5, 7, 5, 7), src);
        let flat = vec![77u8; 2 * 9 * 11];
        for (oh, ow) in [(3, 4), (20, 30), (9, 4), (2, 11)] {
            let r = resize_planes(&flat, 2, 9, 11, oh, ow);
            assert_eq!(r.len(), 2 * oh * ow);
            assert!(r.iter().all(|&v| v == 77), "{oh}x{ow}");
        }
    }

    #[test]
    fn halving_averages_pixel_pairs_with_the_triangle_filter() {
        // A 1 x 4 row to 1 x 2: output pixel 0 is centred at 1.0 with support 2 and reads
        // inputs 0..=2 at distances 0.5, 0.5, 1.5 (scaled by 1/2: weights 0.75 0.75 0.25);
        // pixel 1 (centre 3.0) reads inputs 1..=3 with 0.25 0.75 0.75. Pillow gives [71, 117].
        let src = [0u8, 100, 200, 40];
        let r = resize_planes(&src, 1, 1, 4, 1, 2);
        // (100 * .75 + 200 * .25) / 1.75 = 71.4; (100 * .25 + 200 * .75 + 40 * .75) / 1.75 = 117.1.
        assert_eq!(r, vec![71, 117]);
    }

    #[test]
    fn crop_takes_the_window() {
        let src: Vec<u8> = (0..2 * 4 * 5).map(|i| i as u8).collect();
        let win = Window {
            top: 1,
            left: 2,
            height: 2,
            width: 3,
        };
        let c = crop_planes(&src, 2, 4, 5, win);
        assert_eq!(c, vec![7, 8, 9, 12, 13, 14, 27, 28, 29, 32, 33, 34]);
    }
}
