//! ImageNet16-120 reader: the down-sampled ImageNet pickles (`train_data_batch_1..10`,
//! `val_data`), 16x16 RGB planes, 1-based labels of which only 1..120 are kept.

use super::cifar::{labels_of, take_data};
use super::pickle;
use super::ImageSet;
use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// Classes kept (labels 1..=120, stored 0-based).
pub const NUM_CLASSES: usize = 120;
/// Bytes of one 16x16 RGB image.
pub const IMAGE_BYTES: usize = 3 * 16 * 16;

/// Names of the ten training batches.
pub fn train_files() -> Vec<String> {
    (1..=10).map(|i| format!("train_data_batch_{i}")).collect()
}

/// Name of the validation file.
pub const VAL_FILE: &str = "val_data";

/// Reads one ImageNet16 pickle, keeping the images labelled 1..=120 (in file order).
pub fn read(path: &Path) -> Result<ImageSet> {
    let mut batch = pickle::load(path)?;
    let (rows, cols, data) = take_data(&mut batch, path)?;
    if cols != IMAGE_BYTES {
        bail!(
            "{}: `data` rows have {cols} bytes, a 16x16 RGB image has {IMAGE_BYTES}",
            path.display()
        );
    }
    let raw = labels_of(&batch, "labels", path)?;
    if raw.len() != rows {
        bail!("{}: {} labels for {rows} images", path.display(), raw.len());
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (i, (&l, img)) in raw.iter().zip(data.chunks_exact(IMAGE_BYTES)).enumerate() {
        if l < 1 {
            return Err(anyhow!(
                "{}: image {i} has label {l}; ImageNet16 labels start at 1",
                path.display()
            ));
        }
        if l as u64 <= NUM_CLASSES as u64 {
            labels.push((l - 1) as u32);
            images.extend_from_slice(img);
        }
    }
    Ok(ImageSet {
        images,
        labels,
        channels: 3,
        height: 16,
        width: 16,
        num_classes: NUM_CLASSES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/imagenet16"
        ))
    }

    #[test]
    fn keeps_labels_up_to_120_zero_based() {
        // gen_cifar.py: batch b has labels [b, 120 if b odd else 121, 1000 - b].
        for b in 1..=10u32 {
            let s = read(&dir().join(format!("train_data_batch_{b}"))).unwrap();
            let expect = if b % 2 == 1 {
                vec![b - 1, 119]
            } else {
                vec![b - 1]
            };
            assert_eq!(s.labels, expect, "batch {b}");
            assert_eq!(s.images.len(), expect.len() * IMAGE_BYTES);
            assert_eq!(
                (s.channels, s.height, s.width, s.num_classes),
                (3, 16, 16, 120)
            );
        }
        // The Python-2 style val_data: labels [1,500,2,120,121,3,4,999,5,6,7,8].
        let v = read(&dir().join(VAL_FILE)).unwrap();
        assert_eq!(v.labels, vec![0, 1, 119, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn kept_images_are_the_right_rows() {
        let full = pickle::load(&dir().join(VAL_FILE)).unwrap();
        let all = full.get("data").and_then(|d| d.as_array()).unwrap();
        let all = all.as_u8().unwrap();
        let v = read(&dir().join(VAL_FILE)).unwrap();
        // Kept rows of the 12: 0, 2, 3, 5, 6, 8, 9, 10, 11.
        for (k, row) in [0usize, 2, 3, 5, 6, 8, 9, 10, 11].iter().enumerate() {
            assert_eq!(v.image(k), &all[row * IMAGE_BYTES..(row + 1) * IMAGE_BYTES]);
        }
    }

    #[test]
    fn cifar_batch_is_not_imagenet16() {
        let p = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cifar10_16_py2.pkl"
        ));
        let e = read(&p).unwrap_err().to_string();
        assert!(
            e.contains("cifar10_16_py2.pkl") && e.contains("3072"),
            "{e}"
        );
    }
}
