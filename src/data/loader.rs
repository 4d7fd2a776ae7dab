//! Batches assembled on a background thread, every random choice from a stream keyed by batch.
//!
//! The images are in memory ([`Images::Memory`], CIFAR-style sets) or files decoded batch by
//! batch on the loader's thread ([`Images::Files`], ImageNet file lists); [`Transform`] says how
//! each becomes network input.

use super::imagenet::{self, FileSet};
use super::{Augment, ImageSet};
use crate::rng;
use anyhow::{anyhow, Result};
use candle_core::{Device, Tensor};
use rand::Rng as _;
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The images a loader reads.
#[derive(Clone, Debug)]
pub enum Images {
    /// Decoded images held in memory (CIFAR, ImageNet16, image folders).
    Memory(Arc<ImageSet>),
    /// Image files decoded batch by batch on the loader's thread (ImageNet file lists).
    Files(Arc<FileSet>),
}

impl Images {
    pub fn len(&self) -> usize {
        match self {
            Images::Memory(s) => s.len(),
            Images::Files(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The in-memory set, if the images are in memory.
    pub fn memory(&self) -> Option<&Arc<ImageSet>> {
        match self {
            Images::Memory(s) => Some(s),
            Images::Files(_) => None,
        }
    }
}

impl From<Arc<ImageSet>> for Images {
    fn from(s: Arc<ImageSet>) -> Self {
        Images::Memory(s)
    }
}

/// How an image becomes network input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// Crop with zero padding, flip, normalisation, cutout: same-size images in, same size out
    /// (CIFAR, ImageNet16).
    Augment(Augment),
    /// ImageNet's random-resized crop (training) or resize and centre crop (evaluation) to a
    /// fixed size.
    Imagenet(imagenet::Transform),
}

impl Transform {
    /// The CIFAR-style augmentation, if this is one.
    pub fn augment(&self) -> Option<&Augment> {
        match self {
            Transform::Augment(a) => Some(a),
            Transform::Imagenet(_) => None,
        }
    }
}

impl From<Augment> for Transform {
    fn from(a: Augment) -> Self {
        Transform::Augment(a)
    }
}

/// One batch on the target device: images (B, C, H, W) f32, labels (B,) u32.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
}

/// A seeded permutation of 0..n from stream (seed, name, indices).
pub fn shuffled(n: usize, seed: u64, name: &str, indices: &[u64]) -> Vec<usize> {
    let mut r = rng::stream(seed, name, indices);
    let mut p: Vec<usize> = (0..n).collect();
    // Fisher-Yates from the back; u64 draws keep the result the same on 32- and 64-bit hosts.
    for i in (1..n).rev() {
        let j = r.random_range(0..=i as u64) as usize;
        p.swap(i, j);
    }
    p
}

/// A batch as the worker thread builds it, before it goes to the device.
struct HostBatch {
    images: Vec<f32>,
    labels: Vec<u32>,
}

/// Iterator over batches, produced ahead by a background thread.
pub struct BatchIter {
    rx: Option<Receiver<Result<HostBatch>>>,
    worker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// An argument error, reported as the first item.
    early: Option<anyhow::Error>,
    device: Device,
    dims: (usize, usize, usize),
    remaining: usize,
    num_batches: usize,
}

impl BatchIter {
    /// Batches this iterator yields in total.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    fn finish(&mut self) -> Option<Result<Batch>> {
        self.rx = None;
        let worker = self.worker.take()?;
        match worker.join() {
            Ok(()) => None,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Some(Err(anyhow!("batch loader thread panicked: {msg}")))
            }
        }
    }

    fn to_device(&self, hb: HostBatch) -> Result<Batch> {
        let (c, h, w) = self.dims;
        let b = hb.labels.len();
        let images = Tensor::from_vec(hb.images, (b, c, h, w), &self.device)?;
        let labels = Tensor::from_vec(hb.labels, b, &self.device)?;
        Ok(Batch { images, labels })
    }
}

impl Iterator for BatchIter {
    type Item = anyhow::Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.early.take() {
            return Some(Err(e));
        }
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(Ok(hb)) => {
                self.remaining = self.remaining.saturating_sub(1);
                Some(self.to_device(hb))
            }
            Ok(Err(e)) => {
                // The worker stops after an error.
                self.finish();
                Some(Err(e))
            }
            Err(_) => self.finish(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.rx.is_none() {
            return (
                usize::from(self.early.is_some()),
                Some(usize::from(self.early.is_some())),
            );
        }
        (0, Some(self.remaining + 1))
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver wakes a worker blocked on a full channel; it then exits.
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Builds batch `b` (images `order[start..end]`) on the host.
#[allow(clippy::too_many_arguments)]
fn host_batch(
    set: &ImageSet,
    idx: &[usize],
    augment: &Augment,
    seed: u64,
    name: &str,
    indices: &[u64],
    b: usize,
    stop: &AtomicBool,
) -> Option<HostBatch> {
    let n = set.image_len();
    let mut key = indices.to_vec();
    key.push(b as u64);
    let mut r = rng::stream(seed, name, &key);
    let mut images = vec![0f32; idx.len() * n];
    let mut labels = Vec::with_capacity(idx.len());
    for (k, &i) in idx.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        augment.apply(
            set.image(i),
            set.channels,
            set.height,
            set.width,
            &mut r,
            &mut images[k * n..(k + 1) * n],
        );
        labels.push(set.labels[i]);
    }
    Some(HostBatch { images, labels })
}

/// One image of a decoded batch (pixels and label), or `None` when left out.
type Decoded = Option<(Vec<f32>, u32)>;

/// Builds batch `b` with an ImageNet transform, decoding files when the images are files.
/// Image k of the batch draws from `rng::stream(seed, name, [indices.., b, k])`, so images can
/// be decoded in parallel and an image left out (`skip_bad`) does not shift the others' draws.
/// `None` when stopped.
#[allow(clippy::too_many_arguments)]
fn decoded_batch(
    set: &Images,
    idx: &[usize],
    t: &imagenet::Transform,
    seed: u64,
    name: &str,
    indices: &[u64],
    b: usize,
    stop: &AtomicBool,
) -> Option<Result<HostBatch>> {
    let n = 3 * t.size() * t.size();
    let one = |k: usize, i: usize| -> Result<Decoded> {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let (h, w, px, label) = match set {
            Images::Memory(s) => (s.height, s.width, Cow::Borrowed(s.image(i)), s.labels[i]),
            Images::Files(f) => match super::image_folder::decode_jpeg(&f.path(i)) {
                Ok((h, w, px)) => (h, w, Cow::Owned(px), f.label(i)),
                Err(e) if f.skip_bad => {
                    tracing::warn!("image left out of its batch (data.imagenet.bad_images = \"skip\"): {e:#}");
                    return Ok(None);
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "image {} of {} (set data.imagenet.bad_images = \"skip\" to leave undecodable images out)",
                        i + 1,
                        f.list.display()
                    )))
                }
            },
        };
        let mut key = indices.to_vec();
        key.extend([b as u64, k as u64]);
        let mut r = rng::stream(seed, name, &key);
        let mut out = vec![0f32; n];
        t.apply(&px, h, w, &mut r, &mut out);
        Ok(Some((out, label)))
    };
    let done: Vec<Result<Decoded>> = idx
        .par_iter()
        .enumerate()
        .map(|(k, &i)| one(k, i))
        .collect();
    if stop.load(Ordering::Relaxed) {
        return None;
    }
    let mut images = Vec::with_capacity(idx.len() * n);
    let mut labels = Vec::with_capacity(idx.len());
    for r in done {
        match r {
            Ok(Some((img, label))) => {
                images.extend_from_slice(&img);
                labels.push(label);
            }
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(HostBatch { images, labels }))
}

/// Batches of `set` in the order `order`. Batch b's augmentation draws from
/// `rng::stream(seed, name, [indices.., b])` (with an ImageNet transform, image k of it from
/// `[indices.., b, k]`), so the result does not depend on threading and a batch can be
/// reproduced alone. `drop_last` drops a final short batch. With file images, an undecodable
/// file ends the iteration with an error naming it, or (`skip_bad`) is left out of its batch.
#[allow(clippy::too_many_arguments)]
pub fn batches(
    set: impl Into<Images>,
    order: Vec<usize>,
    batch_size: usize,
    drop_last: bool,
    augment: impl Into<Transform>,
    seed: u64,
    name: &str,
    indices: &[u64],
    device: &Device,
    prefetch: usize,
) -> BatchIter {
    let set: Images = set.into();
    let transform: Transform = augment.into();
    let stop = Arc::new(AtomicBool::new(false));
    let dims = match (&set, &transform) {
        (Images::Memory(s), Transform::Augment(_)) => Some((s.channels, s.height, s.width)),
        (Images::Memory(s), Transform::Imagenet(t)) if s.channels == 3 => {
            Some((3, t.size(), t.size()))
        }
        (Images::Files(_), Transform::Imagenet(t)) => Some((3, t.size(), t.size())),
        _ => None,
    };
    let mut it = BatchIter {
        rx: None,
        worker: None,
        stop: stop.clone(),
        early: None,
        device: device.clone(),
        dims: dims.unwrap_or_default(),
        remaining: 0,
        num_batches: 0,
    };
    let Some(_) = dims else {
        it.early = Some(anyhow!(
            "batch loader `{name}`: image files need the ImageNet transform (and it needs 3 channels)"
        ));
        return it;
    };
    if batch_size == 0 {
        it.early = Some(anyhow!("batch loader `{name}`: batch size 0"));
        return it;
    }
    if let Some((pos, &i)) = order.iter().enumerate().find(|(_, &i)| i >= set.len()) {
        it.early = Some(anyhow!(
            "batch loader `{name}`: order entry {pos} is image {i}, the set has {}",
            set.len()
        ));
        return it;
    }
    if let Images::Memory(set) = &set {
        if set.images.len() != set.len() * set.image_len() || set.channels > 3 {
            it.early = Some(anyhow!(
                "batch loader `{name}`: image set holds {} bytes for {} images of {}x{}x{}",
                set.images.len(),
                set.len(),
                set.channels,
                set.height,
                set.width
            ));
            return it;
        }
    }
    let num_batches = if drop_last {
        order.len() / batch_size
    } else {
        order.len().div_ceil(batch_size)
    };
    it.num_batches = num_batches;
    it.remaining = num_batches;
    let (tx, rx) = sync_channel::<Result<HostBatch>>(prefetch);
    let name = name.to_string();
    let indices = indices.to_vec();
    let worker = std::thread::Builder::new()
        .name(format!("loader-{name}"))
        .spawn(move || {
            for b in 0..num_batches {
                let end = ((b + 1) * batch_size).min(order.len());
                let idx = &order[b * batch_size..end];
                let hb = match (&set, &transform) {
                    (Images::Memory(s), Transform::Augment(a)) => {
                        host_batch(s, idx, a, seed, &name, &indices, b, &stop).map(Ok)
                    }
                    (_, Transform::Imagenet(t)) => {
                        decoded_batch(&set, idx, t, seed, &name, &indices, b, &stop)
                    }
                    // Refused before the thread started.
                    (Images::Files(_), Transform::Augment(_)) => None,
                };
                let Some(hb) = hb else {
                    return;
                };
                // Every image of the batch left out: nothing to send.
                if matches!(&hb, Ok(h) if h.labels.is_empty()) {
                    continue;
                }
                let failed = hb.is_err();
                if tx.send(hb).is_err() || failed {
                    return;
                }
            }
        });
    match worker {
        Ok(w) => {
            it.rx = Some(rx);
            it.worker = Some(w);
        }
        Err(e) => it.early = Some(anyhow!("batch loader: cannot start its thread: {e}")),
    }
    it
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Normalize;

    fn set(n: usize) -> Arc<ImageSet> {
        let (c, h, w) = (3, 6, 5);
        Arc::new(ImageSet {
            images: (0..n * c * h * w).map(|i| (i * 37 % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u32).collect(),
            channels: c,
            height: h,
            width: w,
            num_classes: 10,
        })
    }

    fn aug() -> Augment {
        Augment {
            crop_padding: 2,
            flip: true,
            cutout: 2,
            normalize: Normalize::nb201_cifar10(),
        }
    }

    fn collect(it: BatchIter) -> Vec<(Vec<f32>, Vec<u32>, Vec<usize>)> {
        it.map(|b| {
            let b = b.unwrap();
            let dims = b.images.dims().to_vec();
            let img = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (img, b.labels.to_vec1::<u32>().unwrap(), dims)
        })
        .collect()
    }

    #[test]
    fn shuffled_is_a_seeded_permutation() {
        let p = shuffled(1000, 3, "order", &[1]);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, shuffled(1000, 3, "order", &[1]));
        assert_ne!(p, shuffled(1000, 3, "order", &[2]));
        assert_ne!(p, shuffled(1000, 4, "order", &[1]));
        assert_eq!(shuffled(0, 1, "x", &[]), Vec::<usize>::new());
        assert_eq!(shuffled(1, 1, "x", &[]), vec![0]);
        // Every position receives every element about equally often (uniformity check).
        let mut first = [0usize; 4];
        for e in 0..4000u64 {
            first[shuffled(4, 7, "u", &[e])[0]] += 1;
        }
        assert!(first.iter().all(|&c| (850..1150).contains(&c)), "{first:?}");
    }

    #[test]
    fn batches_match_augment_on_the_ordered_images() {
        let s = set(10);
        let order = shuffled(10, 1, "o", &[]);
        let a = aug();
        let got = collect(batches(
            s.clone(),
            order.clone(),
            4,
            false,
            a,
            11,
            "train",
            &[2],
            &Device::Cpu,
            2,
        ));
        // 4 + 4 + 2: the last batch is partial.
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].2, vec![2, 3, 6, 5]);
        assert_eq!(got[0].2, vec![4, 3, 6, 5]);
        for (b, (img, labels, _)) in got.iter().enumerate() {
            let mut r = rng::stream(11, "train", &[2, b as u64]);
            let idx = &order[b * 4..((b + 1) * 4).min(10)];
            let n = s.image_len();
            for (k, &i) in idx.iter().enumerate() {
                let mut want = vec![0f32; n];
                a.apply(s.image(i), 3, 6, 5, &mut r, &mut want);
                assert_eq!(
                    &img[k * n..(k + 1) * n],
                    want.as_slice(),
                    "batch {b} image {k}"
                );
                assert_eq!(labels[k], s.labels[i]);
            }
        }
    }

    #[test]
    fn same_arguments_same_batches_and_drop_last() {
        let s = set(10);
        let order: Vec<usize> = (0..10).rev().collect();
        let run = |prefetch, drop_last| {
            collect(batches(
                s.clone(),
                order.clone(),
                3,
                drop_last,
                aug(),
                5,
                "t",
                &[],
                &Device::Cpu,
                prefetch,
            ))
        };
        let a = run(1, false);
        assert_eq!(a, run(4, false));
        assert_eq!(a, run(0, false));
        assert_eq!(a.len(), 4);
        assert_eq!(a[3].1, vec![0]);
        let d = run(2, true);
        assert_eq!(d.len(), 3);
        assert_eq!(d[..], a[..3]);
        let it = batches(
            s.clone(),
            order.clone(),
            3,
            true,
            aug(),
            5,
            "t",
            &[],
            &Device::Cpu,
            2,
        );
        assert_eq!(it.num_batches(), 3);
        // Another seed changes the augmentation, not the labels.
        let other = collect(batches(
            s.clone(),
            order,
            3,
            false,
            aug(),
            6,
            "t",
            &[],
            &Device::Cpu,
            1,
        ));
        assert_ne!(other[0].0, a[0].0);
        assert_eq!(other[0].1, a[0].1);
    }

    #[test]
    fn early_drop_stops_the_worker() {
        let s = set(64);
        let mut it = batches(
            s,
            (0..64).collect(),
            1,
            false,
            aug(),
            1,
            "t",
            &[],
            &Device::Cpu,
            1,
        );
        assert!(it.next().unwrap().is_ok());
        let stop = it.stop.clone();
        // Returns only after the worker has exited (Drop joins it).
        drop(it);
        assert!(stop.load(Ordering::Relaxed));
        assert_eq!(
            Arc::strong_count(&stop),
            1,
            "the worker still holds its handle"
        );
    }

    #[test]
    fn bad_arguments_arrive_as_errors() {
        let s = set(3);
        let mut it = batches(
            s.clone(),
            vec![0, 5],
            2,
            false,
            aug(),
            1,
            "v",
            &[],
            &Device::Cpu,
            1,
        );
        let e = it.next().unwrap().err().unwrap().to_string();
        assert!(e.contains("entry 1 is image 5"), "{e}");
        assert!(it.next().is_none());
        let mut it = batches(s, vec![0], 0, false, aug(), 1, "v", &[], &Device::Cpu, 1);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn empty_order_yields_nothing() {
        let mut it = batches(
            set(3),
            vec![],
            2,
            false,
            aug(),
            1,
            "v",
            &[],
            &Device::Cpu,
            1,
        );
        assert!(it.next().is_none());
    }
}
