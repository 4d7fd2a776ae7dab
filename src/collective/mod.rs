//! Collective communication between data-parallel ranks: sum / mean all-reduce, broadcast,
//! barrier. [`local`] runs the ranks as threads of one process (CPU tests of the distributed
//! semantics, and CPU data parallelism); [`tcp`] runs them as processes meeting over TCP (and is
//! the rendezvous through which GPU ranks exchange NCCL's unique id); `nccl` (feature `nccl`)
//! sums gradients on GPUs.
//!
//! Semantics follow the study's PyTorch `DistributedDataParallel` use: gradients are summed over
//! ranks and divided by the world size, so an op used by one rank of four gets a quarter of its
//! gradient; BatchNorm buffers are not synchronised.

pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod tcp;

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// One rank's handle on a communicator.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Elementwise sum of `buf` over all ranks, added in rank order, so every rank ends with the
    /// same bits.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Every rank ends with `root`'s `buf` (all buffers must have the same length).
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()> {
        self.all_reduce_sum(&mut [])
    }
}

/// Replaces the gradients of `vars` by their mean over the ranks. A variable without a
/// gradient on a rank contributes zeros, and every variable has a gradient afterwards (as
/// with PyTorch DDP, whose all-reduce fills every parameter's gradient): all parameters then
/// take the optimizer step, which is the study's behaviour under parallel sampling.
pub fn all_reduce_mean(c: &dyn Collective, grads: &mut GradStore, vars: &[Var]) -> Result<()> {
    let mut flat: Vec<f32> = Vec::with_capacity(vars.iter().map(|v| v.elem_count()).sum());
    for v in vars {
        match grads.get(v.as_tensor()) {
            Some(g) => flat.extend(
                g.flatten_all()?
                    .to_vec1::<f32>()
                    .context("gradients must be f32")?,
            ),
            None => flat.extend(std::iter::repeat_n(0f32, v.elem_count())),
        }
    }
    c.all_reduce_sum(&mut flat)?;
    let world = c.world_size() as f32;
    for x in &mut flat {
        *x /= world;
    }
    let mut at = 0;
    for v in vars {
        let n = v.elem_count();
        let g = Tensor::from_slice(&flat[at..at + n], v.shape(), v.device())?;
        grads.insert(v.as_tensor(), g);
        at += n;
    }
    Ok(())
}

/// The study's parallel sampling: all ranks draw from the same stream; rank r draws r + 1
/// architectures and trains the last, then discards the remaining `world - r - 1` draws, so the
/// streams stay in step and every rank trains a different architecture.
pub fn parallel_sample<A>(rank: usize, world: usize, mut draw: impl FnMut() -> A) -> A {
    let mut mine = None;
    for r in 0..world {
        let a = draw();
        if r == rank {
            mine = Some(a);
        }
    }
    mine.unwrap_or_else(draw)
}

/// Replaces the gradients of `vars` by their mean over the ranks, for every variable that has a
/// gradient on at least one rank; a variable without a gradient on every rank stays without
/// one. This is DDP over the gradients that exist: with the same architecture on every rank
/// (no parallel sampling) the sets agree and the untouched parameters stay untouched, as with
/// apex's DDP; with parallel sampling a parameter trained by one rank of four gets a quarter of
/// its gradient. One all-reduce carries the gradients and a presence flag per variable.
pub fn all_reduce_mean_present(
    c: &dyn Collective,
    grads: &mut GradStore,
    vars: &[Var],
) -> Result<()> {
    let total: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut flat: Vec<f32> = Vec::with_capacity(total + vars.len());
    for v in vars {
        match grads.get(v.as_tensor()) {
            Some(g) => flat.extend(
                g.flatten_all()?
                    .to_vec1::<f32>()
                    .context("gradients must be f32")?,
            ),
            None => flat.extend(std::iter::repeat_n(0f32, v.elem_count())),
        }
    }
    flat.extend(
        vars.iter()
            .map(|v| f32::from(u8::from(grads.get(v.as_tensor()).is_some()))),
    );
    c.all_reduce_sum(&mut flat)?;
    let world = c.world_size() as f32;
    let mut at = 0;
    for (k, v) in vars.iter().enumerate() {
        let n = v.elem_count();
        if flat[total + k] > 0.0 {
            let mean: Vec<f32> = flat[at..at + n].iter().map(|x| x / world).collect();
            grads.insert(
                v.as_tensor(),
                Tensor::from_vec(mean, v.shape(), v.device())?,
            );
        }
        at += n;
    }
    Ok(())
}

/// Every rank's `mine` (all of the same length), in rank order, on every rank; the values
/// travel as bit patterns (two f32 words per f64), so they arrive exactly.
pub fn all_gather_f64(c: &dyn Collective, mine: &[f64]) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(c.world_size());
    for root in 0..c.world_size() {
        let mut words: Vec<f32> = if root == c.rank() {
            mine.iter()
                .flat_map(|x| {
                    let b = x.to_bits();
                    [f32::from_bits(b as u32), f32::from_bits((b >> 32) as u32)]
                })
                .collect()
        } else {
            vec![0f32; 2 * mine.len()]
        };
        c.broadcast(&mut words, root)?;
        out.push(
            words
                .chunks_exact(2)
                .map(|w| {
                    f64::from_bits(u64::from(w[0].to_bits()) | u64::from(w[1].to_bits()) << 32)
                })
                .collect(),
        );
    }
    Ok(out)
}

/// Rank `root`'s `text` on every rank (the others pass anything, e.g. an empty string).
pub fn broadcast_text(c: &dyn Collective, text: &str, root: usize) -> Result<String> {
    let mut len = (text.len() as u64).to_le_bytes();
    tcp::broadcast_bytes(c, &mut len, root)?;
    let n = usize::try_from(u64::from_le_bytes(len)).context("text too long")?;
    let mut bytes = if c.rank() == root {
        text.as_bytes().to_vec()
    } else {
        vec![0u8; n]
    };
    tcp::broadcast_bytes(c, &mut bytes, root)?;
    String::from_utf8(bytes).context("rank sent text that is not UTF-8")
}
