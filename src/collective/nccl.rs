//! Gradient all-reduce between GPU ranks through NCCL (`cudarc::nccl`, re-exported by candle).
//!
//! UNVERIFIED on a GPU: this file is only compiled with `--features nccl`; it type-checks
//! (`cargo check` / `clippy` against the CUDA 13.0 and NCCL 2.27 headers of
//! `scripts/build-cuda.sh`) but has never run. It uses cudarc 0.19's safe API
//! (`Comm::from_rank`, `Comm::all_reduce`) through candle 0.11's `CustomOp1`.
//!
//! Rank 0 creates NCCL's unique id and sends its 128 bytes to the others over the TCP group
//! ([`super::tcp::broadcast_bytes`]), so the TCP rendezvous is the only meeting point. NCCL has
//! no timeout of its own: initialisation runs on a helper thread that is abandoned after the
//! timeout, and every all-reduce is watched by a watchdog thread that ends the process with an
//! error naming the rank and the group address when it does not complete in time (a rank that
//! died mid-run would otherwise leave the others blocked forever).

use super::Collective;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// NCCL's communicator holds a raw pointer, so it is neither `Send` nor `Sync`; runner uses it
/// from the training thread only (the helper thread of [`init`] hands it over once, before any
/// use).
struct SendComm(Comm);
// SAFETY: the communicator is created on one thread and then used by exactly one other thread;
// NCCL allows a communicator to be used from any thread as long as calls are not concurrent.
unsafe impl Send for SendComm {}
// SAFETY: see above; `Nccl` serialises its calls through `&self` on the training thread only.
unsafe impl Sync for SendComm {}

/// One rank's NCCL communicator.
pub struct Nccl {
    comm: SendComm,
    rank: usize,
    addr: String,
    timeout: Duration,
    /// When set: the deadline of the all-reduce in flight.
    deadline: Arc<Mutex<Option<Instant>>>,
}

/// Creates the communicator of `tcp`'s rank on `device` (a CUDA device).
pub fn init(tcp: &dyn Collective, device: &Device, addr: &str, timeout: Duration) -> Result<Nccl> {
    let rank = tcp.rank();
    let world = tcp.world_size();
    let Device::Cuda(dev) = device else {
        bail!("rank {rank}: NCCL needs a CUDA device, this rank runs on {device:?}");
    };
    let mut bytes = [0u8; 128];
    if rank == 0 {
        let id = Id::new().map_err(|e| anyhow!("rank 0: ncclGetUniqueId failed: {e:?}"))?;
        for (b, c) in bytes.iter_mut().zip(id.internal().iter()) {
            *b = *c as u8;
        }
    }
    super::tcp::broadcast_bytes(tcp, &mut bytes, 0)
        .with_context(|| format!("rank {rank}: sending NCCL's unique id (group at {addr})"))?;
    let mut internal = [0 as std::ffi::c_char; 128];
    for (c, b) in internal.iter_mut().zip(bytes.iter()) {
        *c = *b as std::ffi::c_char;
    }
    let id = Id::uninit(internal);
    let stream = dev.cuda_stream();
    let (tx, rx) = std::sync::mpsc::channel();
    // ncclCommInitRank blocks until every rank has called it: run it aside and give up after
    // the timeout (the abandoned thread ends with the process).
    std::thread::Builder::new()
        .name("nccl-init".into())
        .spawn(move || {
            let r = stream
                .context()
                .bind_to_thread()
                .map_err(|e| format!("binding the CUDA context: {e:?}"))
                .and_then(|()| {
                    Comm::from_rank(stream, rank, world, id)
                        .map(SendComm)
                        .map_err(|e| format!("ncclCommInitRank: {e:?}"))
                });
            let _ = tx.send(r);
        })
        .context("cannot start the NCCL initialisation thread")?;
    let comm = match rx.recv_timeout(timeout) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => bail!("rank {rank}: NCCL initialisation failed (group at {addr}): {e}"),
        Err(_) => bail!(
            "rank {rank}: NCCL initialisation did not complete within {timeout:?} (group at {addr}): a rank did not join"
        ),
    };
    let deadline: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let watched = deadline.clone();
    let what = format!(
        "rank {rank}: an NCCL all-reduce did not complete within {timeout:?} (group at {addr}): another rank stopped (see its log)"
    );
    std::thread::Builder::new()
        .name("nccl-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let late = watched
                .lock()
                .map(|d| d.is_some_and(|d| Instant::now() > d))
                .unwrap_or(false);
            if late {
                eprintln!("error: {what}");
                std::process::exit(1);
            }
        })
        .context("cannot start the NCCL watchdog thread")?;
    Ok(Nccl {
        comm,
        rank,
        addr: addr.to_string(),
        timeout,
        deadline,
    })
}

struct AllReduceSum<'a>(&'a Comm);

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("NCCL all-reduce of a strided tensor".into()))?;
        let dev = storage.device().clone();
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let mut dst = dev.alloc_zeros::<f32>(end - start)?;
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(dst, dev),
            layout.shape().clone(),
        ))
    }
}

impl Nccl {
    /// The elementwise sum of `flat` over the ranks, left on the device; the watchdog covers
    /// the call, and the caller's next read of the result waits for it.
    pub fn sum(&self, flat: &Tensor) -> Result<Tensor> {
        if let Ok(mut d) = self.deadline.lock() {
            *d = Some(Instant::now() + self.timeout);
        }
        flat.contiguous()?
            .apply_op1_no_bwd(&AllReduceSum(&self.comm.0))
            .map_err(|e| {
                anyhow!(
                    "rank {}: NCCL all-reduce (group at {}): {e}",
                    self.rank,
                    self.addr
                )
            })
    }

    /// Disarms the watchdog once the result of [`Nccl::sum`] has been read.
    pub fn done(&self) {
        if let Ok(mut d) = self.deadline.lock() {
            *d = None;
        }
    }
}
