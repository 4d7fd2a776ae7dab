//! Collective communication between data-parallel ranks: sum / mean all-reduce, broadcast,
//! barrier. [`local`] runs the ranks as threads of one process (CPU tests of the distributed
//! semantics, and CPU data parallelism); [`tcp`] runs them as processes meeting over TCP (and is
//! the rendezvous through which GPU ranks exchange NCCL's unique id); the NCCL implementation for
//! GPUs sits behind the same trait.
//!
//! Semantics follow the study's PyTorch `DistributedDataParallel` use: gradients are summed over
//! ranks and divided by the world size, so an op used by one rank of four gets a quarter of its
//! gradient; BatchNorm buffers are not synchronised.

pub mod local;
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
