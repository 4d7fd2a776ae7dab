//! Checkpoints: model tensors, optimizer state and the run's progress in one safetensors file.
//!
//! Tensors are stored as `model.<name>` and `optim.<name>`; the progress (epoch, step, RNG
//! positions, evaluation history) travels as JSON in the safetensors metadata under `runner`,
//! together with the config hash, so a checkpoint of another configuration is refused.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Everything in a checkpoint file.
pub struct Checkpoint<P> {
    pub model: BTreeMap<String, Tensor>,
    pub optim: BTreeMap<String, Tensor>,
    pub progress: P,
}

/// SHA-256 over every tensor's name, dtype, shape and bytes in name order: the safetensors
/// header guards only its own structure, so a flipped byte in the data would otherwise load.
fn checksum<'a>(tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Result<String> {
    use safetensors::View;
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<(&String, &Tensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, t) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype(), t.dims()).as_bytes());
        h.update(t.data());
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// SHA-256 over the metadata a resume trusts (config hash and progress record): the tensor
/// checksum does not cover them, and an edited epoch would otherwise resume at the wrong place.
fn meta_checksum(hash: &str, progress: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((hash.len() as u64).to_le_bytes());
    h.update(hash.as_bytes());
    h.update(progress.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Serialises a checkpoint and writes it atomically.
pub fn save<P: Serialize>(path: &Path, hash: &str, ck: &Checkpoint<P>) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "runner-checkpoint-v1".to_string());
    meta.insert("config_hash".to_string(), hash.to_string());
    let progress = serde_json::to_string(&ck.progress)?;
    meta.insert("meta_checksum".to_string(), meta_checksum(hash, &progress));
    meta.insert("runner".to_string(), progress);
    let tensors: Vec<(String, Tensor)> = ck
        .model
        .iter()
        .map(|(k, v)| (format!("model.{k}"), v.clone()))
        .chain(
            ck.optim
                .iter()
                .map(|(k, v)| (format!("optim.{k}"), v.clone())),
        )
        .collect();
    meta.insert(
        "checksum".to_string(),
        checksum(tensors.iter().map(|(k, v)| (k, v)))?,
    );
    let bytes =
        safetensors::tensor::serialize(tensors, Some(meta)).context("serialising checkpoint")?;
    super::dir::write_atomic(path, &bytes)
}

/// Reads a checkpoint, refusing a corrupt file or one written for another configuration.
pub fn load<P: DeserializeOwned>(
    path: &Path,
    hash: &str,
    device: &Device,
) -> Result<Checkpoint<P>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("checkpoint {} is corrupt: {e}", path.display()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some("runner-checkpoint-v1") {
        bail!("{} is not a runner checkpoint", path.display());
    }
    match meta.get("config_hash") {
        Some(h) if h == hash => {}
        other => bail!(
            "checkpoint {} belongs to config hash {:?}, not {hash}; refusing to resume from it (use --fresh to start a new run)",
            path.display(),
            other.map(String::as_str).unwrap_or("?")
        ),
    }
    let record = meta.get("runner").map(String::as_str).unwrap_or("");
    // Checkpoints written before `meta_checksum` existed carry none; they still resume.
    if let Some(want) = meta.get("meta_checksum") {
        if *want != meta_checksum(hash, record) {
            bail!(
                "checkpoint {} is corrupt: its progress record does not match its checksum",
                path.display()
            );
        }
    }
    let progress: P = serde_json::from_str(record)
        .with_context(|| format!("checkpoint {}: unreadable progress record", path.display()))?;
    let all = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| anyhow::anyhow!("checkpoint {} is corrupt: {e}", path.display()))?;
    let want = meta.get("checksum").map(String::as_str).unwrap_or("");
    if checksum(all.iter())? != want {
        bail!(
            "checkpoint {} is corrupt: tensor data does not match its checksum",
            path.display()
        );
    }
    let mut model = BTreeMap::new();
    let mut optim = BTreeMap::new();
    for (k, v) in all {
        if let Some(n) = k.strip_prefix("model.") {
            model.insert(n.to_string(), v);
        } else if let Some(n) = k.strip_prefix("optim.") {
            optim.insert(n.to_string(), v);
        } else {
            bail!("checkpoint {}: unexpected tensor {k}", path.display());
        }
    }
    Ok(Checkpoint {
        model,
        optim,
        progress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("latest.safetensors");
        let dev = Device::Cpu;
        let mut model = BTreeMap::new();
        model.insert(
            "a.weight".to_string(),
            Tensor::new(&[1.5f32, -2.0, 3.25], &dev).unwrap(),
        );
        let mut optim = BTreeMap::new();
        optim.insert(
            "momentum.a.weight".to_string(),
            Tensor::new(&[0.5f32, 0.0, 1.0], &dev).unwrap(),
        );
        save(
            &p,
            "h1",
            &Checkpoint {
                model,
                optim,
                progress: (7usize, "x".to_string()),
            },
        )
        .unwrap();
        let back: Checkpoint<(usize, String)> = load(&p, "h1", &dev).unwrap();
        assert_eq!(back.progress, (7, "x".to_string()));
        assert_eq!(
            back.model["a.weight"].to_vec1::<f32>().unwrap(),
            vec![1.5, -2.0, 3.25]
        );
        assert_eq!(
            back.optim["momentum.a.weight"].to_vec1::<f32>().unwrap(),
            vec![0.5, 0.0, 1.0]
        );
        let err = load::<(usize, String)>(&p, "h2", &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("belongs to config hash \"h1\""), "{err}");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 5);
        std::fs::write(&p, &bytes).unwrap();
        let err = load::<(usize, String)>(&p, "h1", &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("corrupt"), "{err}");
        // A flipped byte inside the tensor data (the header intact) is caught by the checksum.
        save(
            &p,
            "h1",
            &Checkpoint {
                model: back.model.clone(),
                optim: back.optim.clone(),
                progress: (7usize, "x".to_string()),
            },
        )
        .unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let err = load::<(usize, String)>(&p, "h1", &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not match its checksum"), "{err}");
        std::fs::write(&p, b"garbage").unwrap();
        assert!(load::<(usize, String)>(&p, "h1", &dev).is_err());
    }

    /// An edited progress record (same length, still valid JSON) is refused; a checkpoint from
    /// before the metadata checksum (none in the file) still loads.
    #[test]
    fn edited_progress_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("latest.safetensors");
        let dev = Device::Cpu;
        let mut model = BTreeMap::new();
        model.insert("w".to_string(), Tensor::new(&[1f32, 2.0], &dev).unwrap());
        let ck = Checkpoint {
            model,
            optim: BTreeMap::new(),
            progress: (3usize, "x".to_string()),
        };
        save(&p, "h1", &ck).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let edit = |from: &[u8], to: &[u8]| -> Vec<u8> {
            let i = bytes
                .windows(from.len())
                .position(|w| w == from)
                .expect("pattern in the header");
            let mut b = bytes.clone();
            b[i..i + to.len()].copy_from_slice(to);
            b
        };
        std::fs::write(&p, edit(b"[3,", b"[9,")).unwrap();
        let err = load::<(usize, String)>(&p, "h1", &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("progress record does not match its checksum"),
            "{err}"
        );
        // The key renamed to one the loader does not read: an old-format checkpoint.
        std::fs::write(&p, edit(b"meta_checksum", b"meta_checksuX")).unwrap();
        let back: Checkpoint<(usize, String)> = load(&p, "h1", &dev).unwrap();
        assert_eq!(back.progress, (3, "x".to_string()));
    }
}
