//! A named store of trainable parameters and non-trainable buffers.
//!
//! candle's `VarMap` mixes BatchNorm running statistics with weights and initialises from an
//! unseeded RNG; runner keeps the two kinds apart (buffers are never seen by the optimizer) and
//! takes every initial value from the caller, who draws it from a seeded stream.

use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A layer whose running statistics can be recalibrated (BatchNorm).
pub trait Recalibrate: Send + Sync {
    /// Clears the accumulated per-batch statistics and starts recording.
    fn begin_recalibration(&self);
    /// Sets the running statistics to the sample-weighted average of the recorded per-batch
    /// statistics; a layer that recorded nothing keeps its buffers.
    fn finish_recalibration(&self) -> Result<()>;
}

#[derive(Default)]
struct Inner {
    params: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
    recal: Vec<Arc<dyn Recalibrate>>,
}

/// Shared registry of a model's tensors, keyed by dotted names.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    device: Device,
    dtype: DType,
}

impl Store {
    pub fn new(device: &Device) -> Self {
        Self {
            inner: Arc::default(),
            device: device.clone(),
            dtype: DType::F32,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The root path for naming.
    pub fn root(&self) -> Path {
        Path {
            store: self.clone(),
            prefix: String::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while holding it; the maps
        // themselves are still consistent (insertions are single operations).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, name: String, value: Tensor, buffer: bool) -> Result<Var> {
        let value = value.to_device(&self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&value)?;
        let mut g = self.lock();
        let map = if buffer {
            &mut g.buffers
        } else {
            &mut g.params
        };
        if map.contains_key(&name) {
            candle_core::bail!("duplicate tensor name {name}");
        }
        map.insert(name, var.clone());
        Ok(var)
    }

    /// Registers a layer for BN recalibration.
    pub fn register_recalibrate(&self, layer: Arc<dyn Recalibrate>) {
        self.lock().recal.push(layer);
    }

    /// Starts recording batch statistics in every registered layer.
    pub fn begin_recalibration(&self) {
        for l in self.lock().recal.iter() {
            l.begin_recalibration();
        }
    }

    /// Writes the averaged statistics into every registered layer's running buffers.
    pub fn finish_recalibration(&self) -> Result<()> {
        let layers = self.lock().recal.clone();
        for l in layers {
            l.finish_recalibration()?;
        }
        Ok(())
    }

    /// Trainable parameters in name order.
    pub fn params(&self) -> Vec<(String, Var)> {
        self.lock()
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Buffers (BatchNorm running statistics) in name order.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        self.lock()
            .buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every tensor, parameters and buffers, by name (for checkpoints).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let g = self.lock();
        g.params
            .iter()
            .chain(g.buffers.iter())
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every tensor from `values`; names must match exactly in both directions and
    /// shapes must agree, so a checkpoint of another model is refused rather than half-loaded.
    pub fn load(&self, values: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        let g = self.lock();
        let mut missing = vec![];
        for (k, v) in g.params.iter().chain(g.buffers.iter()) {
            match values.get(k) {
                None => missing.push(k.clone()),
                Some(t) => {
                    if t.dims() != v.dims() {
                        anyhow::bail!(
                            "tensor {k}: checkpoint has shape {:?}, model has {:?}",
                            t.dims(),
                            v.dims()
                        );
                    }
                }
            }
        }
        if !missing.is_empty() {
            anyhow::bail!(
                "checkpoint lacks {} model tensors (first: {})",
                missing.len(),
                missing[0]
            );
        }
        let extra: Vec<&String> = values
            .keys()
            .filter(|k| !g.params.contains_key(*k) && !g.buffers.contains_key(*k))
            .collect();
        if let Some(first) = extra.first() {
            anyhow::bail!(
                "checkpoint has {} tensors the model lacks (first: {first})",
                extra.len()
            );
        }
        for (k, v) in g.params.iter().chain(g.buffers.iter()) {
            // `copy` so that a tensor sharing the Var's own storage (candle refuses to set a Var
            // from itself) and a checkpoint tensor are treated alike.
            let t = values[k]
                .to_device(&self.device)?
                .to_dtype(self.dtype)?
                .copy()?;
            v.set(&t)?;
        }
        Ok(())
    }
}

/// A position in the store's name tree, like candle's `VarBuilder::pp`.
#[derive(Clone)]
pub struct Path {
    store: Store,
    prefix: String,
}

impl Path {
    pub fn pp(&self, name: impl std::fmt::Display) -> Path {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Path {
            store: self.store.clone(),
            prefix,
        }
    }

    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{}", self.prefix, leaf)
        }
    }

    pub fn device(&self) -> &Device {
        self.store.device()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Registers a trainable parameter with the given initial value.
    pub fn param(&self, leaf: &str, init: Tensor) -> Result<Var> {
        self.store.insert(self.name(leaf), init, false)
    }

    /// Registers a buffer (not trained, not weight-decayed) with the given initial value.
    pub fn buffer(&self, leaf: &str, init: Tensor) -> Result<Var> {
        self.store.insert(self.name(leaf), init, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_refuses_mismatches() {
        let s = Store::new(&Device::Cpu);
        let r = s.root();
        r.pp("a")
            .param("w", Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        r.pp("a")
            .buffer("m", Tensor::ones(2, DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let mut vals = s.tensors();
        assert_eq!(vals.keys().cloned().collect::<Vec<_>>(), vec!["a.m", "a.w"]);
        vals.insert(
            "a.w".into(),
            Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
        );
        s.load(&vals).unwrap();
        assert_eq!(
            s.params()[0].1.as_tensor().to_vec1::<f32>().unwrap(),
            vec![1.0; 3]
        );
        let mut extra = vals.clone();
        extra.insert(
            "b".into(),
            Tensor::ones(1, DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(s.load(&extra).is_err());
        let mut wrong = vals.clone();
        wrong.insert(
            "a.w".into(),
            Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(s.load(&wrong).is_err());
        vals.remove("a.m");
        assert!(s.load(&vals).is_err());
        assert!(r
            .pp("a")
            .param("w", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap())
            .is_err());
    }
}
