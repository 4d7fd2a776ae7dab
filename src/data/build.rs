//! From `[data]` config to training and validation sets.

use super::cifar::{self, BinaryLayout};
use super::{
    image_folder, imagenet, imagenet16, splits, Augment, ImageSet, Images, Normalize, Transform,
};
use crate::config::{self, Dataset, NormalizeKind};
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The images a run trains and validates on.
pub struct Split {
    /// In memory (CIFAR, ImageNet16) or files decoded per batch (ImageNet file lists).
    pub train: Images,
    /// Indices into `train` forming the training split.
    pub train_indices: Vec<usize>,
    pub valid: Images,
    /// Indices into `valid` forming the validation split.
    pub valid_indices: Vec<usize>,
    /// Transform of training (and recalibration) images.
    pub train_augment: Transform,
    /// Transform of validation images (the NB201 cifar10-valid quirk: training augmentation).
    pub valid_augment: Transform,
    pub num_classes: usize,
}

/// Classes of a dataset.
pub fn num_classes(d: Dataset) -> usize {
    match d {
        Dataset::Cifar10 => 10,
        Dataset::Cifar100 => 100,
        Dataset::ImageNet16_120 => imagenet16::NUM_CLASSES,
        Dataset::Imagenet => 1000,
        // A language model's "classes" are its vocabulary, which comes from the corpus.
        Dataset::Ptb => 0,
    }
}

/// NAS-Bench-201's normalisation constants of a dataset.
pub fn nb201_normalize(d: Dataset) -> Normalize {
    match d {
        Dataset::Cifar10 => Normalize::nb201_cifar10(),
        Dataset::Cifar100 => Normalize::nb201_cifar100(),
        Dataset::ImageNet16_120 => Normalize::nb201_imagenet16(),
        Dataset::Imagenet | Dataset::Ptb => Normalize::imagenet(),
    }
}

/// The normalisation `cfg` asks for: `auto` is DARTS's for `40k` / `50k`, NB201's otherwise.
pub fn normalize_for(cfg: &config::Data) -> Normalize {
    match cfg.normalize {
        NormalizeKind::Darts => Normalize::darts(),
        NormalizeKind::Nb201 => nb201_normalize(cfg.dataset),
        NormalizeKind::Auto => match cfg.split.as_str() {
            "40k" | "50k" => Normalize::darts(),
            _ => nb201_normalize(cfg.dataset),
        },
    }
}

/// Training augmentation for images of `height`: crop padding 4 (2 for 16-pixel images) and
/// flip when `augment` is on; cutout whenever `cutout > 0`.
pub fn train_augment(cfg: &config::Data, normalize: Normalize, height: usize) -> Augment {
    Augment {
        crop_padding: if !cfg.augment {
            0
        } else if height <= 16 {
            2
        } else {
            4
        },
        flip: cfg.augment,
        cutout: cfg.cutout,
        normalize,
    }
}

/// Reads the data named by `cfg` (paths already absolute).
pub fn build(cfg: &config::Data) -> anyhow::Result<Split> {
    if cfg.dataset == Dataset::Imagenet {
        return imagenet::build(cfg);
    }
    let classes = num_classes(cfg.dataset);
    let normalize = normalize_for(cfg);
    let need = |want: Dataset| -> Result<()> {
        if cfg.dataset != want {
            bail!(
                "data: split `{}` is for dataset {want:?}, but dataset is {:?}",
                cfg.split,
                cfg.dataset
            );
        }
        Ok(())
    };
    let (train, train_indices, valid, valid_indices, same_transform) = match cfg.split.as_str() {
        "40k" | "50k" | "cifar10" | "cifar10-valid" => {
            need(Dataset::Cifar10)?;
            let mut names = vec![
                "data_batch_1",
                "data_batch_2",
                "data_batch_3",
                "data_batch_4",
                "data_batch_5",
            ];
            if matches!(cfg.split.as_str(), "50k" | "cifar10") {
                names.push("test_batch");
            }
            let files = locate(&cfg.root, &cfg.split, &names, &CIFAR10_PLACES)?;
            let read = |f: &[Found]| concat_files(f, |p| read_cifar_file(p, cfg.dataset, classes));
            match cfg.split.as_str() {
                "40k" => {
                    let train = read(&files[..4])?;
                    let valid = read(&files[4..])?;
                    let (ti, vi) = (all(&train), all(&valid));
                    (Arc::new(train), ti, Arc::new(valid), vi, false)
                }
                "cifar10-valid" => {
                    let set = Arc::new(read(&files)?);
                    let sf = splits::read(&split_file(cfg)?)?;
                    let ti = sf.indices("train", set.len())?;
                    let vi = sf.indices("valid", set.len())?;
                    // NB201 quirk: the validation half is read with the training transform.
                    (set.clone(), ti, set, vi, true)
                }
                _ => {
                    let train = read(&files[..5])?;
                    let valid = read(&files[5..])?;
                    let (ti, vi) = (all(&train), all(&valid));
                    (Arc::new(train), ti, Arc::new(valid), vi, false)
                }
            }
        }
        "cifar100" => {
            need(Dataset::Cifar100)?;
            let files = locate(&cfg.root, &cfg.split, &["train", "test"], &CIFAR100_PLACES)?;
            let read = |f: &[Found]| concat_files(f, |p| read_cifar_file(p, cfg.dataset, classes));
            let train = read(&files[..1])?;
            let test = read(&files[1..])?;
            let sf = splits::read(&split_file(cfg)?)?;
            let vi = sf.indices("xvalid", test.len())?;
            let ti = all(&train);
            (Arc::new(train), ti, Arc::new(test), vi, false)
        }
        "imagenet-16-120" => {
            need(Dataset::ImageNet16_120)?;
            let mut names = imagenet16::train_files();
            names.push(imagenet16::VAL_FILE.to_string());
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let files = locate(&cfg.root, &cfg.split, &names, &IMAGENET16_PLACES)?;
            let train = concat_files(&files[..10], imagenet16::read)?;
            let val = concat_files(&files[10..], imagenet16::read)?;
            let sf = splits::read(&split_file(cfg)?)?;
            let vi = sf.indices("xvalid", val.len())?;
            let ti = all(&train);
            (Arc::new(train), ti, Arc::new(val), vi, false)
        }
        "custom" => {
            let read_list = |list: &[PathBuf], what: &str| -> Result<ImageSet> {
                if list.is_empty() {
                    bail!("data: split `custom` needs a non-empty `{what}` list of files or folders");
                }
                let found: Vec<Found> = list.iter().map(|p| Found(cfg.root.join(p))).collect();
                concat_files(&found, |p| read_custom(p, cfg.dataset, classes))
            };
            let train = read_list(&cfg.train, "train")?;
            let valid = read_list(&cfg.valid, "valid")?;
            if train.image_len() != valid.image_len() || train.height != valid.height {
                bail!(
                    "data: training images are {}x{}x{} but validation images are {}x{}x{}",
                    train.channels,
                    train.height,
                    train.width,
                    valid.channels,
                    valid.height,
                    valid.width
                );
            }
            let (ti, vi) = (all(&train), all(&valid));
            (Arc::new(train), ti, Arc::new(valid), vi, false)
        }
        other => bail!(
            "data: unknown split `{other}` (expected 40k, 50k, cifar10, cifar10-valid, cifar100, imagenet-16-120 or custom)"
        ),
    };
    let train_augment = train_augment(cfg, normalize, train.height);
    let valid_augment = if same_transform {
        train_augment
    } else {
        Augment::plain(normalize)
    };
    Ok(Split {
        train: Images::Memory(train),
        train_indices,
        valid: Images::Memory(valid),
        valid_indices,
        train_augment: Transform::Augment(train_augment),
        valid_augment: Transform::Augment(valid_augment),
        num_classes: classes,
    })
}

fn all(s: &ImageSet) -> Vec<usize> {
    (0..s.len()).collect()
}

/// A file that exists.
struct Found(PathBuf);

/// Where a dataset's files may be: a sub-folder of `root` (`""` = root itself) and the
/// suffix its files carry there (`.bin` for binary layouts).
struct Place {
    dir: &'static str,
    suffix: &'static str,
}

const CIFAR10_PLACES: [Place; 4] = [
    Place {
        dir: "cifar-10-batches-py",
        suffix: "",
    },
    Place {
        dir: "",
        suffix: "",
    },
    Place {
        dir: "cifar-10-batches-bin",
        suffix: ".bin",
    },
    Place {
        dir: "",
        suffix: ".bin",
    },
];

const CIFAR100_PLACES: [Place; 4] = [
    Place {
        dir: "cifar-100-python",
        suffix: "",
    },
    Place {
        dir: "",
        suffix: "",
    },
    Place {
        dir: "cifar-100-binary",
        suffix: ".bin",
    },
    Place {
        dir: "",
        suffix: ".bin",
    },
];

const IMAGENET16_PLACES: [Place; 3] = [
    Place {
        dir: "",
        suffix: "",
    },
    Place {
        dir: "ImageNet16",
        suffix: "",
    },
    Place {
        dir: "imagenet16",
        suffix: "",
    },
];

/// Finds all `names` in one place; when no place has them all, fails with one line listing the
/// files missing from the most complete place.
fn locate(root: &Path, split: &str, names: &[&str], places: &[Place]) -> Result<Vec<Found>> {
    let mut best: Option<(usize, Vec<PathBuf>)> = None;
    for place in places {
        let dir = if place.dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(place.dir)
        };
        let paths: Vec<PathBuf> = names
            .iter()
            .map(|n| dir.join(format!("{n}{}", place.suffix)))
            .collect();
        let missing: Vec<PathBuf> = paths.iter().filter(|p| !p.is_file()).cloned().collect();
        if missing.is_empty() {
            return Ok(paths.into_iter().map(Found).collect());
        }
        let have = paths.len() - missing.len();
        if best.as_ref().is_none_or(|(h, _)| have > *h) {
            best = Some((have, missing));
        }
    }
    let missing = best.map(|(_, m)| m).unwrap_or_default();
    let places: Vec<String> = places
        .iter()
        .map(|p| {
            let d = if p.dir.is_empty() {
                root.display().to_string()
            } else {
                root.join(p.dir).display().to_string()
            };
            if p.suffix.is_empty() {
                d
            } else {
                format!("{d} (*{})", p.suffix)
            }
        })
        .collect();
    Err(anyhow!(
        "data: split `{split}` is incomplete, missing {} (searched {})",
        missing
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        places.join("; ")
    ))
}

/// The NB201 split file: `cfg.split_file`, else `split-<name>.txt` in `root` or `root/../nb201`.
fn split_file(cfg: &config::Data) -> Result<PathBuf> {
    if let Some(p) = &cfg.split_file {
        if !p.is_file() {
            bail!("data: split file {} does not exist", p.display());
        }
        return Ok(p.clone());
    }
    let name = format!("split-{}.txt", cfg.split);
    let mut tried = vec![cfg.root.join(&name)];
    if let Some(parent) = cfg.root.parent() {
        tried.push(parent.join("nb201").join(&name));
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        anyhow!(
            "data: split `{}` needs {name}; not found at {}",
            cfg.split,
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )
    })
}

fn is_bin(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("bin"))
}

/// A CIFAR file: binary when named `*.bin`, else a pickle batch.
fn read_cifar_file(p: &Path, d: Dataset, classes: usize) -> Result<ImageSet> {
    if is_bin(p) {
        let layout = if d == Dataset::Cifar100 {
            BinaryLayout::Cifar100
        } else {
            BinaryLayout::Cifar10
        };
        cifar::read_binary(p, layout, classes)
    } else {
        cifar::read_pickle(p, classes)
    }
}

/// A `custom` entry: a folder is an image folder, `*.bin` a binary CIFAR file, anything else a
/// pickle batch of the dataset's kind.
fn read_custom(p: &Path, d: Dataset, classes: usize) -> Result<ImageSet> {
    if p.is_dir() {
        let mut s = image_folder::read(p)?;
        if s.num_classes > classes {
            bail!(
                "{}: {} classes, dataset {d:?} has {classes}",
                p.display(),
                s.num_classes
            );
        }
        s.num_classes = classes;
        return Ok(s);
    }
    if !p.is_file() {
        bail!("data: {} does not exist", p.display());
    }
    match d {
        Dataset::ImageNet16_120 if is_bin(p) => {
            bail!(
                "{}: there is no binary ImageNet16 layout; use the pickle batches",
                p.display()
            )
        }
        Dataset::ImageNet16_120 => imagenet16::read(p),
        _ => read_cifar_file(p, d, classes),
    }
}

/// Reads every file and concatenates the images; all must have the same shape.
fn concat_files(files: &[Found], read: impl Fn(&Path) -> Result<ImageSet>) -> Result<ImageSet> {
    let mut out: Option<ImageSet> = None;
    for Found(p) in files {
        // Readers name the file in their errors.
        let s = read(p)?;
        match &mut out {
            None => out = Some(s),
            Some(o) => {
                if (o.channels, o.height, o.width) != (s.channels, s.height, s.width) {
                    bail!(
                        "{}: images are {}x{}x{}, earlier files have {}x{}x{}",
                        p.display(),
                        s.channels,
                        s.height,
                        s.width,
                        o.channels,
                        o.height,
                        o.width
                    );
                }
                o.images.extend_from_slice(&s.images);
                o.labels.extend_from_slice(&s.labels);
                o.num_classes = o.num_classes.max(s.num_classes);
            }
        }
    }
    out.ok_or_else(|| anyhow!("data: no files to read"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory set of a CIFAR-style split.
    fn mem(i: &Images) -> &Arc<ImageSet> {
        i.memory().expect("an in-memory image set")
    }

    /// The CIFAR-style augmentation of a split.
    fn aug(t: &Transform) -> Augment {
        *t.augment().expect("a CIFAR-style augmentation")
    }

    fn fixtures() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
    }

    fn cfg(dataset: Dataset, root: &Path, split: &str) -> config::Data {
        config::Data {
            dataset,
            root: root.to_path_buf(),
            split: split.into(),
            train: vec![],
            valid: vec![],
            split_file: None,
            normalize: NormalizeKind::Auto,
            batch_size: 4,
            eval_batch_size: 4,
            augment: true,
            cutout: 0,
            prefetch: 1,
            text: None,
            imagenet: None,
        }
    }

    /// `n` binary CIFAR-10 records all labelled `label`, pixel bytes from `seed`.
    fn records(n: usize, label: u8, seed: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(label);
            out.extend((0..3072).map(|k| (k as u8).wrapping_mul(seed).wrapping_add(i as u8)));
        }
        out
    }

    fn binary_cifar10(dir: &Path, batches: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for (i, b) in batches.iter().enumerate() {
            let label = if *b == "test_batch" { 9 } else { i as u8 + 1 };
            std::fs::write(dir.join(format!("{b}.bin")), records(2, label, i as u8 + 3)).unwrap();
        }
    }

    const ALL: [&str; 6] = [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ];

    #[test]
    fn forty_k_and_fifty_k_from_binary_batches() {
        let tmp = tempfile::tempdir().unwrap();
        binary_cifar10(&tmp.path().join("cifar-10-batches-bin"), &ALL);
        let s = build(&cfg(Dataset::Cifar10, tmp.path(), "40k")).unwrap();
        assert_eq!(mem(&s.train).labels, vec![1, 1, 2, 2, 3, 3, 4, 4]);
        assert_eq!(mem(&s.valid).labels, vec![5, 5]);
        assert_eq!(s.train_indices, (0..8).collect::<Vec<_>>());
        assert_eq!(s.valid_indices, vec![0, 1]);
        assert_eq!(s.num_classes, 10);
        // 40k / 50k are the DARTS protocol: DARTS constants, crop 4 + flip, plain validation.
        assert_eq!(aug(&s.train_augment).normalize, Normalize::darts());
        assert_eq!(
            (
                aug(&s.train_augment).crop_padding,
                aug(&s.train_augment).flip
            ),
            (4, true)
        );
        assert_eq!(aug(&s.valid_augment), Augment::plain(Normalize::darts()));
        // The second image of batch 3 is record 1 of data_batch_3.bin.
        assert_eq!(mem(&s.train).image(5), &records(2, 3, 5)[3073 + 1..]);

        let s = build(&cfg(Dataset::Cifar10, tmp.path(), "50k")).unwrap();
        assert_eq!(mem(&s.train).len(), 10);
        assert_eq!(mem(&s.valid).labels, vec![9, 9]);

        let mut c = cfg(Dataset::Cifar10, tmp.path(), "cifar10");
        c.cutout = 16;
        c.augment = false;
        let s = build(&c).unwrap();
        assert_eq!(mem(&s.train).len(), 10);
        assert_eq!(aug(&s.train_augment).normalize, Normalize::nb201_cifar10());
        assert_eq!(
            (
                aug(&s.train_augment).crop_padding,
                aug(&s.train_augment).flip,
                aug(&s.train_augment).cutout
            ),
            (0, false, 16)
        );
        assert_eq!(
            aug(&s.valid_augment),
            Augment::plain(Normalize::nb201_cifar10())
        );
        c.normalize = NormalizeKind::Darts;
        assert_eq!(
            aug(&build(&c).unwrap().train_augment).normalize,
            Normalize::darts()
        );
    }

    #[test]
    fn incomplete_data_lists_every_missing_file_in_one_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar-10-batches-bin");
        binary_cifar10(&dir, &ALL[..2]);
        let e = build(&cfg(Dataset::Cifar10, tmp.path(), "50k"))
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        for missing in [
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ] {
            assert!(
                e.contains(&dir.join(missing).display().to_string()),
                "{missing}: {e}"
            );
        }
        assert!(!e.contains("data_batch_1.bin,"), "{e}");
        // 40k does not need the test batch.
        let e = build(&cfg(Dataset::Cifar10, tmp.path(), "40k"))
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("test_batch"), "{e}");
        // A split for another dataset.
        let e = build(&cfg(Dataset::Cifar100, tmp.path(), "40k"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("Cifar10") && e.contains("Cifar100"), "{e}");
        let e = build(&cfg(Dataset::Cifar10, tmp.path(), "60k"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown split `60k`"), "{e}");
    }

    #[test]
    fn cifar10_valid_reads_pickles_and_the_split_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cifar10");
        let py = root.join("cifar-10-batches-py");
        std::fs::create_dir_all(&py).unwrap();
        for b in &ALL[..5] {
            std::fs::copy(fixtures().join("cifar10_16_py2.pkl"), py.join(b)).unwrap();
        }
        let c = cfg(Dataset::Cifar10, &root, "cifar10-valid");
        let e = build(&c).err().unwrap().to_string();
        assert!(e.contains("split-cifar10-valid.txt"), "{e}");
        // The split file in root/../nb201, as in the study's data folder.
        std::fs::create_dir_all(tmp.path().join("nb201")).unwrap();
        let train: Vec<usize> = (0..80).step_by(2).collect();
        let valid: Vec<usize> = (1..80).step_by(2).collect();
        let json = serde_json::json!({"train": ["train", train], "valid": ["train", valid]});
        std::fs::write(
            tmp.path().join("nb201/split-cifar10-valid.txt"),
            json.to_string(),
        )
        .unwrap();
        let s = build(&c).unwrap();
        assert!(Arc::ptr_eq(mem(&s.train), mem(&s.valid)));
        assert_eq!(mem(&s.train).len(), 80);
        assert_eq!(
            (s.train_indices.clone(), s.valid_indices.clone()),
            (train, valid)
        );
        // The NB201 quirk: validation images get the training augmentation.
        assert_eq!(aug(&s.valid_augment), aug(&s.train_augment));
        assert_eq!(aug(&s.train_augment).crop_padding, 4);
        assert_eq!(aug(&s.train_augment).normalize, Normalize::nb201_cifar10());
        // Batch 5 is a copy of batch 1.
        assert_eq!(mem(&s.train).image(64), mem(&s.train).image(0));

        // An explicit split file wins; indices beyond the 80 images are refused with its name.
        let bad = tmp.path().join("bad.txt");
        std::fs::write(
            &bad,
            r#"{"train": ["train", [0, 80]], "valid": ["train", [1]]}"#,
        )
        .unwrap();
        let mut c2 = c.clone();
        c2.split_file = Some(bad.clone());
        let e = build(&c2).err().unwrap().to_string();
        assert!(e.contains("bad.txt") && e.contains("index 80"), "{e}");
    }

    #[test]
    fn cifar100_uses_fine_labels_and_xvalid() {
        let tmp = tempfile::tempdir().unwrap();
        let py = tmp.path().join("cifar-100-python");
        std::fs::create_dir_all(&py).unwrap();
        std::fs::copy(fixtures().join("cifar100_4_p4.pkl"), py.join("train")).unwrap();
        std::fs::copy(fixtures().join("cifar100_4_p4.pkl"), py.join("test")).unwrap();
        std::fs::write(
            tmp.path().join("split-cifar100.txt"),
            r#"{"xvalid": ["test", [1, 3]], "xtest": ["test", [0, 2]]}"#,
        )
        .unwrap();
        let s = build(&cfg(Dataset::Cifar100, tmp.path(), "cifar100")).unwrap();
        assert_eq!(s.num_classes, 100);
        assert_eq!(mem(&s.train).labels, vec![42, 7, 99, 0]);
        assert_eq!(s.train_indices, vec![0, 1, 2, 3]);
        assert_eq!(s.valid_indices, vec![1, 3]);
        assert_eq!(aug(&s.train_augment).normalize, Normalize::nb201_cifar100());
        assert_eq!(
            aug(&s.valid_augment),
            Augment::plain(Normalize::nb201_cifar100())
        );
    }

    #[test]
    fn imagenet16_keeps_120_classes_and_xvalid() {
        let root = fixtures().join("imagenet16");
        let s = build(&cfg(Dataset::ImageNet16_120, &root, "imagenet-16-120")).unwrap();
        // 10 batches x 3 images, of which 1 + (1 in odd batches) have labels <= 120.
        assert_eq!(mem(&s.train).len(), 15);
        assert_eq!(mem(&s.train).labels[..3], [0, 119, 1]);
        assert_eq!(mem(&s.valid).len(), 9);
        assert_eq!(s.valid_indices, vec![0, 2, 4, 6, 8]);
        assert_eq!(s.num_classes, 120);
        assert_eq!(
            (mem(&s.train).height, aug(&s.train_augment).crop_padding),
            (16, 2)
        );
        assert_eq!(
            aug(&s.train_augment).normalize,
            Normalize::nb201_imagenet16()
        );
        assert_eq!(
            aug(&s.valid_augment),
            Augment::plain(Normalize::nb201_imagenet16())
        );
    }

    #[test]
    fn custom_concatenates_folders_binaries_and_pickles() {
        let mut c = cfg(Dataset::Cifar10, &fixtures(), "custom");
        c.train = vec!["cifar_jpg16/train".into(), "cifar10_16.bin".into()];
        c.valid = vec!["cifar10_16_py2.pkl".into()];
        let s = build(&c).unwrap();
        assert_eq!(mem(&s.train).len(), 32);
        assert_eq!(mem(&s.valid).len(), 16);
        assert_eq!(mem(&s.train).labels[16..], mem(&s.valid).labels[..]);
        assert_eq!(mem(&s.train).image(16), mem(&s.valid).image(0));
        assert_eq!(aug(&s.train_augment).normalize, Normalize::nb201_cifar10());
        assert_eq!(s.valid_indices.len(), 16);

        // Labels beyond the dataset's classes name the file.
        c.valid = vec!["cifar100_4_p4.pkl".into()];
        let e = build(&c).err().unwrap().to_string();
        assert!(
            e.contains("cifar100_4_p4.pkl") && e.contains("label 42"),
            "{e}"
        );
        // Images of another size name the file.
        c.valid = vec!["imagenet16/val_data".into()];
        let e = build(&c).err().unwrap().to_string();
        assert!(e.contains("val_data"), "{e}");
        c.valid = vec![];
        assert!(build(&c).err().unwrap().to_string().contains("`valid`"));
        c.valid = vec!["nothing-here.bin".into()];
        assert!(build(&c)
            .err()
            .unwrap()
            .to_string()
            .contains("nothing-here.bin"));
    }
}
