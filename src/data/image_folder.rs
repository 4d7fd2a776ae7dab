//! Image folders: `<dir>/<class>/*.jpg`, all images of one size, decoded to u8 CHW.

use super::ImageSet;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// An image folder as read: the images plus where each came from.
pub struct ImageFolder {
    pub set: ImageSet,
    /// Source file of each image, in set order.
    pub paths: Vec<PathBuf>,
    /// Class names; the index is the label.
    pub classes: Vec<String>,
}

/// Reads `<dir>/<class>/*.jpg|*.jpeg` into an [`ImageSet`].
pub fn read(dir: &Path) -> Result<ImageSet> {
    Ok(read_folder(dir)?.set)
}

/// Class names from `classes.txt` in `dir` or its parent (line index = label), else the sorted
/// sub-folder names.
pub fn class_names(dir: &Path) -> Result<Vec<String>> {
    let mut candidates = vec![dir.join("classes.txt")];
    if let Some(parent) = dir.parent() {
        candidates.push(parent.join("classes.txt"));
    }
    for c in candidates {
        if c.is_file() {
            let text =
                std::fs::read_to_string(&c).with_context(|| format!("reading {}", c.display()))?;
            let names: Vec<String> = text
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            if names.is_empty() {
                bail!("{}: no class names", c.display());
            }
            for (i, n) in names.iter().enumerate() {
                if names[..i].contains(n) {
                    bail!("{}: class {n:?} is listed twice", c.display());
                }
            }
            return Ok(names);
        }
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if e.path().is_dir() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("{}: no class folders", dir.display());
    }
    Ok(names)
}

/// Reads an image folder, keeping the source path of every image.
pub fn read_folder(dir: &Path) -> Result<ImageFolder> {
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    let classes = class_names(dir)?;
    // Every class folder must be a known class: an unlisted one would be silently dropped.
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() && !classes.contains(&name) {
            bail!(
                "{}: folder {name:?} is not one of the {} classes in classes.txt",
                dir.display(),
                classes.len()
            );
        }
    }
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let cdir = dir.join(class);
        if !cdir.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        for e in std::fs::read_dir(&cdir).with_context(|| format!("listing {}", cdir.display()))? {
            let p = e
                .with_context(|| format!("listing {}", cdir.display()))?
                .path();
            let ext = p
                .extension()
                .map(|x| x.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            match ext.as_str() {
                "jpg" | "jpeg" => files.push(p),
                "png" => bail!(
                    "{}: PNG images are not supported, convert them to JPEG",
                    p.display()
                ),
                _ => {}
            }
        }
        files.sort();
        labels.extend(std::iter::repeat_n(label as u32, files.len()));
        paths.extend(files);
    }
    if paths.is_empty() {
        bail!(
            "{}: no .jpg / .jpeg images in its class folders",
            dir.display()
        );
    }
    let mut images = Vec::new();
    let mut size = None;
    for p in &paths {
        let (h, w, chw) = decode_jpeg(p)?;
        match size {
            None => size = Some((h, w)),
            Some(s) if s != (h, w) => bail!(
                "{}: image is {h}x{w}, the folder's first image ({}) is {}x{}",
                p.display(),
                paths[0].display(),
                s.0,
                s.1
            ),
            _ => {}
        }
        images.extend_from_slice(&chw);
    }
    let (height, width) = size.ok_or_else(|| anyhow!("{}: no images", dir.display()))?;
    Ok(ImageFolder {
        set: ImageSet {
            images,
            labels,
            channels: 3,
            height,
            width,
            num_classes: classes.len(),
        },
        paths,
        classes,
    })
}

/// Decodes a JPEG file to (height, width, RGB planes).
pub fn decode_jpeg(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = JpegDecoder::new_with_options(bytes.as_slice(), opts);
    let hwc = dec
        .decode()
        .map_err(|e| anyhow!("{}: cannot decode JPEG: {e:?}", path.display()))?;
    let info = dec
        .info()
        .ok_or_else(|| anyhow!("{}: JPEG without a header", path.display()))?;
    let (h, w) = (usize::from(info.height), usize::from(info.width));
    let channels = dec
        .get_output_colorspace()
        .map_or(3, |c| c.num_components());
    let plane = h * w;
    if channels == 1 && hwc.len() == plane {
        // A greyscale JPEG (the decoder keeps one channel): R = G = B, as PIL's convert("RGB").
        return Ok((h, w, hwc.repeat(3)));
    }
    if channels != 3 || hwc.len() != h * w * 3 {
        bail!(
            "{}: decoded to {} bytes with {channels} channels, expected {h}x{w} RGB",
            path.display(),
            hwc.len()
        );
    }
    let mut chw = vec![0u8; 3 * plane];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[plane + i] = px[1];
        chw[2 * plane + i] = px[2];
    }
    Ok((h, w, chw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::cifar::{read_binary, BinaryLayout, IMAGE_BYTES};

    fn fixtures() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
    }

    /// (record, label, source path) rows of a mini-set manifest.
    fn manifest(path: &Path) -> Vec<(usize, u32, String)> {
        let mut r = csv::Reader::from_path(path).unwrap();
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                (
                    rec[0].parse().unwrap(),
                    rec[1].parse().unwrap(),
                    rec[3].to_string(),
                )
            })
            .collect()
    }

    /// Mean absolute difference between the binary records and the JPEG folder, matched by the
    /// manifest; also checks the labels agree.
    fn compare(
        bin: &ImageSet,
        folder: &ImageFolder,
        root: &Path,
        rows: &[(usize, u32, String)],
    ) -> f64 {
        let pos: std::collections::HashMap<&Path, usize> = folder
            .paths
            .iter()
            .enumerate()
            .map(|(k, p)| (p.as_path(), k))
            .collect();
        let mut total = 0u64;
        for (rec, label, src) in rows {
            let k = *pos
                .get(root.join(src).as_path())
                .unwrap_or_else(|| panic!("{src} not in the folder"));
            assert_eq!(bin.labels[*rec], *label);
            assert_eq!(folder.set.labels[k], *label, "{src}");
            total += bin
                .image(*rec)
                .iter()
                .zip(folder.set.image(k))
                .map(|(&a, &b)| u64::from(a.abs_diff(b)))
                .sum::<u64>();
        }
        total as f64 / (rows.len() * IMAGE_BYTES) as f64
    }

    #[test]
    fn jpeg_folder_matches_binary_records() {
        let root = fixtures().join("cifar_jpg16");
        let folder = read_folder(&root.join("train")).unwrap();
        assert_eq!(folder.classes.len(), 10);
        assert_eq!(folder.classes[0], "airplane");
        assert_eq!(folder.set.num_classes, 10);
        assert_eq!(folder.set.len(), 16);
        assert_eq!((folder.set.height, folder.set.width), (32, 32));
        // Sorted by class (classes.txt order), then file name.
        assert!(folder.set.labels.windows(2).all(|w| w[0] <= w[1]));
        assert!(folder.paths[0].ends_with("automobile/0873.jpg"));
        let bin = read_binary(
            &fixtures().join("cifar10_16.bin"),
            BinaryLayout::Cifar10,
            10,
        )
        .unwrap();
        let rows = manifest(&fixtures().join("cifar10_16.manifest.csv"));
        let mad = compare(&bin, &folder, &root, &rows);
        assert!(mad < 2.0, "mean absolute pixel difference {mad}");
    }

    #[test]
    fn shared_mini_set_jpegs_match_binary() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let Some(shared) = [dir.join("../shared/data"), dir.join("../../shared/data")]
            .into_iter()
            .find(|p| p.join("cifar10-mini/data_batch_1.bin").is_file())
        else {
            println!("skipped: no ../shared/data with the CIFAR-10 mini set");
            return;
        };
        for (bin_name, split) in [("data_batch_1", "train"), ("test_batch", "test")] {
            let bin = read_binary(
                &shared.join(format!("cifar10-mini/{bin_name}.bin")),
                BinaryLayout::Cifar10,
                10,
            )
            .unwrap();
            let root = shared.join("cifar10-mini-jpg");
            let folder = read_folder(&root.join(split)).unwrap();
            assert_eq!(folder.set.len(), bin.len());
            let rows = manifest(&shared.join(format!("cifar10-mini/{bin_name}.manifest.csv")));
            assert_eq!(rows.len(), bin.len());
            let mad = compare(&bin, &folder, &root, &rows);
            println!(
                "{split}: {} images, mean absolute pixel difference {mad:.4}",
                bin.len()
            );
            assert!(mad < 2.0, "{split}: mean absolute pixel difference {mad}");
        }
    }

    #[test]
    fn bad_folders_are_refused_with_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("set");
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        let src = fixtures().join("cifar_jpg16/train/cat/0061.jpg");
        std::fs::copy(&src, d.join("a/1.jpg")).unwrap();
        std::fs::copy(&src, d.join("b/2.JPEG")).unwrap();
        // No classes.txt anywhere: sorted folder names.
        let f = read_folder(&d).unwrap();
        assert_eq!(f.classes, vec!["a", "b"]);
        assert_eq!(f.set.labels, vec![0, 1]);
        assert_eq!(f.set.image(0), f.set.image(1));

        // A corrupt JPEG names its path.
        std::fs::write(d.join("b/3.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
        let e = read(&d).unwrap_err().to_string();
        assert!(e.contains("3.jpg"), "{e}");
        std::fs::remove_file(d.join("b/3.jpg")).unwrap();

        // A 16x16 image among 32x32 ones names its path.
        let small = fixtures().join("small16.jpg");
        std::fs::copy(&small, d.join("b/4.jpg")).unwrap();
        let e = read(&d).unwrap_err().to_string();
        assert!(e.contains("4.jpg") && e.contains("16x16"), "{e}");
        std::fs::remove_file(d.join("b/4.jpg")).unwrap();

        // classes.txt next to the class folders sets the order; unlisted folders are errors.
        std::fs::write(d.join("classes.txt"), "b\na\n").unwrap();
        assert_eq!(read(&d).unwrap().labels, vec![0, 1]);
        std::fs::write(d.join("classes.txt"), "b\n").unwrap();
        let e = read(&d).unwrap_err().to_string();
        assert!(e.contains("\"a\""), "{e}");
    }
}
