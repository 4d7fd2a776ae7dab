//! CIFAR-10 / CIFAR-100 readers: the Python pickle batches and the binary record files.

use super::pickle::{self, Value};
use super::ImageSet;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// Bytes of one 32x32 RGB image (R, G and B planes).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Layout of a binary record file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryLayout {
    /// CIFAR-10: label byte, 3072 pixel bytes.
    Cifar10,
    /// CIFAR-100: coarse label byte, fine label byte, 3072 pixel bytes (the fine label is kept).
    Cifar100,
}

impl BinaryLayout {
    fn header(self) -> usize {
        match self {
            BinaryLayout::Cifar10 => 1,
            BinaryLayout::Cifar100 => 2,
        }
    }
}

/// Reads a binary CIFAR record file; labels must lie in `0..num_classes`.
pub fn read_binary(path: &Path, layout: BinaryLayout, num_classes: usize) -> Result<ImageSet> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_binary(&bytes, layout, num_classes, path)
}

/// Decodes binary CIFAR records held in memory; `path` names them in errors.
pub fn parse_binary(
    bytes: &[u8],
    layout: BinaryLayout,
    num_classes: usize,
    path: &Path,
) -> Result<ImageSet> {
    let rec = layout.header() + IMAGE_BYTES;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        bail!(
            "{}: {} bytes is not a whole number of {rec}-byte {:?} records ({} complete, {} bytes left over)",
            path.display(),
            bytes.len(),
            layout,
            bytes.len() / rec,
            bytes.len() % rec
        );
    }
    let n = bytes.len() / rec;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[layout.header() - 1];
        if usize::from(label) >= num_classes {
            bail!(
                "{}: record {i} of {n} has label {label}, outside 0..{num_classes}",
                path.display()
            );
        }
        labels.push(u32::from(label));
        images.extend_from_slice(&r[layout.header()..]);
    }
    Ok(ImageSet {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        num_classes,
    })
}

/// The `data` array of a batch pickle as (rows, row bytes, bytes); rows are C x S x S planes.
pub(crate) fn take_data(batch: &mut Value, path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    if batch.as_dict().is_none() {
        bail!(
            "{}: not a dataset batch (the pickle holds a {}, not a dict)",
            path.display(),
            batch.kind()
        );
    }
    let keys = batch.keys();
    let data = batch.take("data").ok_or_else(|| {
        anyhow!(
            "{}: not a dataset batch (no `data` key; keys: {})",
            path.display(),
            keys.join(", ")
        )
    })?;
    let kind = data.kind();
    let arr = data
        .into_array()
        .ok_or_else(|| anyhow!("{}: `data` is a {kind}, not a numpy array", path.display()))?;
    if arr.as_u8().is_none() || arr.dtype != pickle::DType::U8 {
        bail!(
            "{}: `data` has dtype {}, expected uint8",
            path.display(),
            arr.dtype.code()
        );
    }
    let (rows, cols) = match arr.shape.as_slice() {
        [n, d] => (*n, *d),
        [n, c, h, w] => (*n, c * h * w),
        s => bail!(
            "{}: `data` has shape {s:?}, expected (N, C*H*W)",
            path.display()
        ),
    };
    Ok((rows, cols, arr.data))
}

/// Integer labels under `key` (a list or a numpy array), as i64.
pub(crate) fn labels_of(batch: &Value, key: &str, path: &Path) -> Result<Vec<i64>> {
    let v = batch
        .get(key)
        .ok_or_else(|| anyhow!("{}: no `{key}` key", path.display()))?;
    v.to_i64_vec().ok_or_else(|| {
        anyhow!(
            "{}: `{key}` is a {} that is not a sequence of integers",
            path.display(),
            v.kind()
        )
    })
}

/// Reads a CIFAR-10 (`labels`) or CIFAR-100 (`fine_labels`) pickle batch.
pub fn read_pickle(path: &Path, num_classes: usize) -> Result<ImageSet> {
    let mut batch = pickle::load(path)?;
    from_batch(&mut batch, num_classes, path)
}

/// Converts a decoded CIFAR batch (dict with `data` N x 3072 and labels) into images.
pub fn from_batch(batch: &mut Value, num_classes: usize, path: &Path) -> Result<ImageSet> {
    let (rows, cols, images) = take_data(batch, path)?;
    if cols != IMAGE_BYTES {
        bail!(
            "{}: `data` rows have {cols} bytes, a 32x32 RGB image has {IMAGE_BYTES}",
            path.display()
        );
    }
    let key = if batch.get("labels").is_some() {
        "labels"
    } else if batch.get("fine_labels").is_some() {
        "fine_labels"
    } else {
        bail!(
            "{}: not a CIFAR batch (no `labels` or `fine_labels` key; keys: {})",
            path.display(),
            batch.keys().join(", ")
        );
    };
    let raw = labels_of(batch, key, path)?;
    if raw.len() != rows {
        bail!(
            "{}: {} `{key}` for {rows} images",
            path.display(),
            raw.len()
        );
    }
    let labels = raw
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            u32::try_from(l)
                .ok()
                .filter(|&l| (l as usize) < num_classes)
                .ok_or_else(|| {
                    anyhow!(
                        "{}: image {i} has label {l}, outside 0..{num_classes}",
                        path.display()
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ImageSet {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        num_classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
    }

    #[test]
    fn binary_and_python2_pickle_agree() {
        let bin = read_binary(&fixture("cifar10_16.bin"), BinaryLayout::Cifar10, 10).unwrap();
        let pkl = read_pickle(&fixture("cifar10_16_py2.pkl"), 10).unwrap();
        assert_eq!(bin.len(), 16);
        assert_eq!(bin.labels, pkl.labels);
        assert_eq!(bin.images, pkl.images);
        // Record 0 of data_batch_1 is a ship (label 8) in the shared mini set's manifest.
        assert_eq!(bin.labels[0], 8);
        assert_eq!((bin.channels, bin.height, bin.width), (3, 32, 32));
    }

    #[test]
    fn cifar100_binary_and_protocol4_pickle_agree() {
        let bin = read_binary(&fixture("cifar100_4.bin"), BinaryLayout::Cifar100, 100).unwrap();
        let pkl = read_pickle(&fixture("cifar100_4_p4.pkl"), 100).unwrap();
        assert_eq!(bin.labels, vec![42, 7, 99, 0]);
        assert_eq!(pkl.labels, bin.labels);
        assert_eq!(pkl.images, bin.images);
        // The images are records 0..4 of the CIFAR-10 fixture.
        let c10 = read_binary(&fixture("cifar10_16.bin"), BinaryLayout::Cifar10, 10).unwrap();
        assert_eq!(bin.images[..], c10.images[..4 * IMAGE_BYTES]);
    }

    #[test]
    fn truncated_and_mislabelled_binaries_are_refused() {
        let good = std::fs::read(fixture("cifar10_16.bin")).unwrap();
        let p = Path::new("cut.bin");
        let e = parse_binary(&good[..good.len() - 5], BinaryLayout::Cifar10, 10, p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("cut.bin") && msg.contains("15 complete"),
            "{msg}"
        );
        let mut bad = good.clone();
        bad[3073 * 2] = 10;
        let msg = parse_binary(&bad, BinaryLayout::Cifar10, 10, p)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("record 2 of 16") && msg.contains("label 10"),
            "{msg}"
        );
        // The same bytes are not whole CIFAR-100 records.
        assert!(parse_binary(&good, BinaryLayout::Cifar100, 100, p).is_err());
        assert!(parse_binary(&[], BinaryLayout::Cifar10, 10, p).is_err());
    }

    #[test]
    fn pickles_that_are_not_cifar_batches_are_refused() {
        // A dict without `data`.
        let e = read_pickle(&fixture("py2_p0.pkl"), 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("py2_p0.pkl") && e.contains("no `data` key"),
            "{e}"
        );
        // `data` rows of 16x16 images, not 32x32.
        let e = read_pickle(&fixture("imagenet16/val_data"), 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("val_data") && e.contains("768 bytes"), "{e}");
        // A pickle that is not a dict at all.
        let tmp = tempfile::tempdir().unwrap();
        let list = tmp.path().join("list.pkl");
        std::fs::write(&list, b"\x80\x02]q\x00.").unwrap();
        let e = read_pickle(&list, 10).unwrap_err().to_string();
        assert!(e.contains("list.pkl") && e.contains("holds a list"), "{e}");
        // A CIFAR-shaped batch whose labels exceed the class count.
        let e = read_pickle(&fixture("cifar100_4_p4.pkl"), 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cifar100_4_p4.pkl") && e.contains("label 42"),
            "{e}"
        );
    }

    #[test]
    fn python2_batch_fixture_reads() {
        let s = read_pickle(&fixture("py2_p2.pkl"), 10).unwrap();
        assert_eq!(s.labels, vec![6, 9]);
        let expect: Vec<u8> = (0..2 * 3072).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(s.images, expect);
    }
}
