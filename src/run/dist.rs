//! One rank's view of a data-parallel run: its rank, the world, its communicator, and the
//! study's DDP semantics as the pipeline applies them (REFERENCE.md, "Multi-GPU"):
//!
//! - **data**: each epoch's permutation of the training set (the one a single process uses)
//!   is split with `DistributedSampler`'s rule: padded by repeating its head to a multiple of
//!   the world size, rank r takes positions r, r + world, r + 2 world, ...;
//! - **sampling**: every rank draws the same stream; with `train.parallel_sampling` rank r
//!   trains draw r of each group of `world` draws, otherwise all train the same draw;
//! - **gradients**: summed over the ranks in rank order and divided by the world size;
//! - **metrics**: training loss and accuracy averaged over the ranks for the logs;
//! - **evaluation**: architecture i is scored by rank i mod world; the scores travel exactly
//!   (as bit patterns) to every rank;
//! - **buffers**: BatchNorm running statistics are not synchronised while training (as with
//!   apex DDP); at the end of each epoch every rank takes rank 0's, which is what rank 0's
//!   checkpoint holds, so evaluation and resume see one model.
//!
//! [`Dist::single`] is a one-process run: every method is then the identity, so such a run is
//! exactly what it was before data parallelism existed.

use crate::collective::{self, Collective};
use crate::nn::Store;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

/// A rank of a run, and how it reaches the others.
pub struct Dist {
    rank: usize,
    world: usize,
    local_rank: usize,
    /// `None` for a single process.
    comm: Option<Box<dyn Collective + Sync>>,
    /// The device this rank trains on, chosen before the rendezvous (`None`: a single process
    /// picks its device from `[device]`).
    device: Option<Device>,
    /// Where rank 0 listens (for messages).
    addr: String,
    #[cfg(feature = "nccl")]
    nccl: Option<crate::collective::nccl::Nccl>,
}

impl Dist {
    /// A one-process run.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world: 1,
            local_rank: 0,
            comm: None,
            device: None,
            addr: String::new(),
            #[cfg(feature = "nccl")]
            nccl: None,
        }
    }

    /// Rank `comm.rank()` of `comm.world_size()` on `device`. With the `nccl` feature and a
    /// CUDA device, gradients are summed by NCCL (its unique id travels over `comm`);
    /// otherwise they travel through `comm` (host copies on a GPU).
    pub fn new(
        comm: Box<dyn Collective + Sync>,
        local_rank: usize,
        device: Device,
        addr: &str,
        #[allow(unused_variables)] timeout: std::time::Duration,
    ) -> Result<Self> {
        #[cfg(feature = "nccl")]
        let nccl = if device.is_cuda() {
            Some(crate::collective::nccl::init(
                comm.as_ref(),
                &device,
                addr,
                timeout,
            )?)
        } else {
            None
        };
        #[cfg(not(feature = "nccl"))]
        if device.is_cuda() {
            tracing::warn!("this runner was built without the `nccl` feature: gradients travel between GPU ranks through host memory over TCP (correct, slow)");
        }
        Ok(Self {
            rank: comm.rank(),
            world: comm.world_size(),
            local_rank,
            comm: Some(comm),
            device: Some(device),
            addr: addr.to_string(),
            #[cfg(feature = "nccl")]
            nccl,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The process that writes the results folder.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    pub fn device(&self) -> Option<&Device> {
        self.device.as_ref()
    }

    /// Training images per rank and epoch for a training set of `n` (before full batches).
    pub fn samples_per_rank(&self, n: usize) -> usize {
        n.div_ceil(self.world)
    }

    /// This rank's part of an epoch's order (`DistributedSampler`: padded by repeating its head
    /// to a multiple of the world size, then every world-th from position `rank`).
    pub fn shard(&self, order: &[usize]) -> Vec<usize> {
        if self.world == 1 || order.is_empty() {
            return order.to_vec();
        }
        (0..self.samples_per_rank(order.len()))
            .map(|k| order[(self.rank + k * self.world) % order.len()])
            .collect()
    }

    /// This rank's draw: with `parallel` (and several ranks) draw `world` times and keep draw
    /// `rank`, so that all ranks' streams stay in step; otherwise one draw, the same on all.
    pub fn pick<T>(&self, parallel: bool, mut draw: impl FnMut() -> Result<T>) -> Result<T> {
        if !parallel || self.world == 1 {
            return draw();
        }
        let mut mine = None;
        for r in 0..self.world {
            let a = draw()?;
            if r == self.rank {
                mine = Some(a);
            }
        }
        mine.context("internal: no draw for this rank")
    }

    /// Replaces the gradients by their mean over the ranks (see
    /// [`collective::all_reduce_mean_present`]); nothing to do for one process.
    pub fn reduce_grads(&self, grads: &mut GradStore, vars: &[Var]) -> Result<()> {
        let Some(c) = &self.comm else {
            return Ok(());
        };
        #[cfg(feature = "nccl")]
        if let Some(n) = &self.nccl {
            return self.reduce_grads_nccl(n, grads, vars);
        }
        collective::all_reduce_mean_present(c.as_ref(), grads, vars)
    }

    /// [`Dist::reduce_grads`] on the GPU: one NCCL all-reduce of every gradient and a presence
    /// flag per variable, flattened into one device buffer.
    #[cfg(feature = "nccl")]
    fn reduce_grads_nccl(
        &self,
        nccl: &crate::collective::nccl::Nccl,
        grads: &mut GradStore,
        vars: &[Var],
    ) -> Result<()> {
        let Some(first) = vars.first() else {
            return Ok(());
        };
        let dev = first.device().clone();
        let mut parts = Vec::with_capacity(vars.len() + 1);
        let mut flags = Vec::with_capacity(vars.len());
        for v in vars {
            match grads.get(v.as_tensor()) {
                Some(g) => {
                    parts.push(g.flatten_all()?);
                    flags.push(1f32);
                }
                None => {
                    parts.push(Tensor::zeros(
                        v.elem_count(),
                        candle_core::DType::F32,
                        &dev,
                    )?);
                    flags.push(0f32);
                }
            }
        }
        parts.push(Tensor::from_vec(flags, vars.len(), &dev)?);
        let flat = Tensor::cat(&parts, 0)?;
        let total = flat.elem_count() - vars.len();
        let summed = nccl.sum(&flat)?;
        // Reading the flags waits for the all-reduce (under the watchdog).
        let present = summed.narrow(0, total, vars.len())?.to_vec1::<f32>();
        nccl.done();
        let present = present?;
        let world = self.world as f64;
        let mut at = 0;
        for (k, v) in vars.iter().enumerate() {
            let n = v.elem_count();
            if present[k] > 0.0 {
                let g = (summed.narrow(0, at, n)?.reshape(v.shape())? / world)?;
                grads.insert(v.as_tensor(), g);
            }
            at += n;
        }
        Ok(())
    }

    /// Every rank's `mine`, in rank order (all of the same length; exact).
    pub fn gather_f64(&self, mine: &[f64]) -> Result<Vec<Vec<f64>>> {
        match &self.comm {
            None => Ok(vec![mine.to_vec()]),
            Some(c) => collective::all_gather_f64(c.as_ref(), mine),
        }
    }

    /// Rank 0's `value` on every rank (the decisions only rank 0 can take: whether the run has
    /// finished, whether there is a checkpoint to resume from).
    pub fn root_decides(&self, value: bool) -> Result<bool> {
        let Some(c) = &self.comm else {
            return Ok(value);
        };
        let mut b = [f32::from(u8::from(value))];
        c.broadcast(&mut b, 0)?;
        Ok(b[0] > 0.0)
    }

    /// Rank 0's outcome on every rank: rank 0 passes its result (e.g. opening the run folder),
    /// the others `None`; a failure on rank 0 becomes an error on every rank instead of a wait
    /// for a rank that has given up.
    pub fn root_outcome(&self, what: &str, root: Option<Result<String>>) -> Result<String> {
        let Some(c) = &self.comm else {
            return root.context("internal: a single process must pass its own outcome")?;
        };
        let (text, result) = match root {
            Some(Ok(s)) => (format!("ok:{s}"), Some(Ok(s))),
            Some(Err(e)) => (format!("error:{e:#}"), Some(Err(e))),
            None => (String::new(), None),
        };
        let shared = collective::broadcast_text(c.as_ref(), &text, 0)?;
        match result {
            Some(r) => r,
            None => match shared.strip_prefix("ok:") {
                Some(s) => Ok(s.to_string()),
                None => bail!(
                    "rank {}: rank 0 failed {what}: {}",
                    self.rank,
                    shared.strip_prefix("error:").unwrap_or(&shared)
                ),
            },
        }
    }

    /// Fails on every rank whose `value` differs from rank 0's (e.g. the configuration hash:
    /// ranks started from different files or environments).
    pub fn agree(&self, what: &str, value: &str) -> Result<()> {
        let Some(c) = &self.comm else {
            return Ok(());
        };
        let root = collective::broadcast_text(c.as_ref(), value, 0)?;
        if root != value {
            bail!(
                "rank {}: {what} is {value} here but {root} on rank 0 (group at {}): every rank must run the same experiment",
                self.rank,
                self.addr
            );
        }
        Ok(())
    }

    /// Every rank takes rank 0's BatchNorm running statistics (f32 buffers).
    pub fn sync_buffers(&self, store: &Store) -> Result<()> {
        let Some(c) = &self.comm else {
            return Ok(());
        };
        let bufs = store.buffers();
        let mut flat = vec![];
        for (name, v) in &bufs {
            flat.extend(
                v.as_tensor()
                    .flatten_all()?
                    .to_vec1::<f32>()
                    .with_context(|| format!("buffer {name} must be f32"))?,
            );
        }
        c.broadcast(&mut flat, 0)?;
        let mut at = 0;
        for (_, v) in &bufs {
            let n = v.elem_count();
            v.set(&Tensor::from_slice(
                &flat[at..at + n],
                v.shape(),
                v.device(),
            )?)?;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::local;
    use std::time::Duration;

    fn ranks(world: usize) -> Vec<Dist> {
        local::group(world, Duration::from_secs(20))
            .into_iter()
            .map(|c| {
                Dist::new(
                    Box::new(c),
                    0,
                    Device::Cpu,
                    "local",
                    Duration::from_secs(20),
                )
            })
            .collect::<Result<_>>()
            .unwrap()
    }

    #[test]
    fn shards_follow_distributed_sampler() {
        let order: Vec<usize> = vec![7, 3, 9, 0, 4];
        assert_eq!(Dist::single().shard(&order), order);
        let d = ranks(2);
        // Padded to 6 with the head (7): [7 3 9 0 4 7]; rank 0 takes even positions.
        assert_eq!(d[0].shard(&order), vec![7, 9, 4]);
        assert_eq!(d[1].shard(&order), vec![3, 0, 7]);
        let d = ranks(3);
        let all: Vec<Vec<usize>> = d.iter().map(|r| r.shard(&order)).collect();
        assert_eq!(all, vec![vec![7, 0], vec![3, 4], vec![9, 7]]);
        // A world larger than the set repeats the order as often as needed.
        let d = ranks(4);
        assert_eq!(d[3].shard(&[5, 6]), vec![6]);
    }

    #[test]
    fn parallel_picks_keep_the_streams_in_step() {
        let d = ranks(3);
        for (r, dist) in d.iter().enumerate() {
            let mut next = 10;
            let mut draw = || -> Result<i32> {
                next += 1;
                Ok(next)
            };
            // Two steps: every rank draws 3 per step and keeps draw `r`.
            let a = dist.pick(true, &mut draw).unwrap();
            let b = dist.pick(true, &mut draw).unwrap();
            assert_eq!((a, b), (11 + r as i32, 14 + r as i32));
            // Without parallel sampling every rank keeps the one draw.
            assert_eq!(dist.pick(false, &mut draw).unwrap(), 17);
        }
    }

    #[test]
    fn gradients_of_present_variables_are_averaged_and_scores_travel_exactly() {
        let d = ranks(2);
        /// Per rank: the gradients after the reduction, the gathered scores, the flag and
        /// path rank 0 decided.
        type Seen = (Vec<Option<Vec<f32>>>, Vec<Vec<f64>>, bool, String);
        let out: Vec<Seen> = std::thread::scope(|s| {
            let hs: Vec<_> = d
                .iter()
                .map(|dist| {
                    s.spawn(move || {
                        let dev = Device::Cpu;
                        let vars: Vec<Var> = (0..3)
                            .map(|k| {
                                Var::from_tensor(
                                    &Tensor::zeros(2, candle_core::DType::F32, &dev)
                                        .unwrap()
                                        .affine(1.0, k as f64)
                                        .unwrap(),
                                )
                                .unwrap()
                            })
                            .collect();
                        let mut g = GradStore::default();
                        let r = dist.rank() as f32;
                        // Variable 0 on both ranks, 1 on rank 1 only, 2 on none.
                        g.insert(
                            vars[0].as_tensor(),
                            Tensor::new(&[1.0f32 + r, 0.1], &dev).unwrap(),
                        );
                        if dist.rank() == 1 {
                            g.insert(
                                vars[1].as_tensor(),
                                Tensor::new(&[4.0f32, -2.0], &dev).unwrap(),
                            );
                        }
                        dist.reduce_grads(&mut g, &vars).unwrap();
                        let got = vars
                            .iter()
                            .map(|v| g.get(v.as_tensor()).map(|t| t.to_vec1::<f32>().unwrap()))
                            .collect();
                        let mine = [f64::from(r) + 0.1, -0.0, f64::NAN, 1e-300];
                        let all = dist.gather_f64(&mine).unwrap();
                        let resumed = dist.root_decides(dist.rank() == 0).unwrap();
                        let path = dist
                            .root_outcome(
                                "opening",
                                (dist.rank() == 0).then(|| Ok("/runs/x".to_string())),
                            )
                            .unwrap();
                        (got, all, resumed, path)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (got, all, resumed, path) in &out {
            assert_eq!(got[0].as_deref(), Some(&[1.5f32, (0.1f32 + 0.1) / 2.0][..]));
            assert_eq!(got[1].as_deref(), Some(&[2.0f32, -1.0][..]));
            assert_eq!(
                got[2], None,
                "a variable no rank trained stays without a gradient"
            );
            for (r, v) in all.iter().enumerate() {
                assert_eq!(v[0].to_bits(), (r as f64 + 0.1).to_bits());
                assert_eq!(v[1].to_bits(), (-0.0f64).to_bits());
                assert!(v[2].is_nan());
                assert_eq!(v[3], 1e-300);
            }
            assert!(resumed);
            assert_eq!(path, "/runs/x");
        }
    }

    #[test]
    fn a_failure_on_rank_0_reaches_the_others_and_hashes_must_agree() {
        let d = ranks(2);
        let errs: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = d
                .iter()
                .map(|dist| {
                    s.spawn(move || {
                        let root = (dist.rank() == 0).then(|| Err(anyhow::anyhow!("disk full")));
                        let e1 = dist
                            .root_outcome("to open the run folder", root)
                            .unwrap_err();
                        let hash = if dist.rank() == 0 { "aaa" } else { "bbb" };
                        let e2 = dist.agree("the configuration hash", hash);
                        (format!("{e1:#}"), e2.err().map(|e| format!("{e:#}")))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    let (a, b) = h.join().unwrap();
                    format!("{a} | {}", b.unwrap_or_default())
                })
                .collect()
        });
        assert_eq!(errs[0], "disk full | ");
        assert!(
            errs[1].starts_with("rank 1: rank 0 failed to open the run folder: disk full | rank 1: the configuration hash is bbb here but aaa on rank 0"),
            "{}",
            errs[1]
        );
    }
}
