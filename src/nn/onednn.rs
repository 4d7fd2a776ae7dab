//! The CPU convolution engine: runner's own kernels (im2col + gemm, direct depthwise kernels;
//! the default), or oneDNN through `onednn/shim.cpp` in a build with the `onednn` feature, chosen
//! per run with `device.conv_engine`.
//!
//! Why runner's own kernels are the default (README, "Choosing the CPU engine by measurement"):
//! oneDNN's convolution alone is 1.5-2.5x faster per call on dense 3x3 shapes (1.1-1.7x on 1x1)
//! even with the reorders from and to runner's NCHW tensors, but inside a whole training step on 2
//! threads its OpenMP team and runner's rayon pool compete for the cores (OpenMP threads spin-wait
//! between calls) and small convolutions pay the per-call reorders, so whole steps at the reduced
//! shapes were 1.1-2x slower with it, and at the study shapes mixed. Dilated depthwise convolutions
//! stay with runner's kernels on either engine: oneDNN's plain-layout ones are 10x slower
//! backwards.
//!
//! One difference to know: runner's own kernels give the same bits on any number of threads;
//! oneDNN's may round differently with a different thread count (the same thread count gives the
//! same bits, so a resumed run still matches an uninterrupted one).

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{bail, Result};

/// Which kernels run CPU convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvEngine {
    /// oneDNN's (needs a build with it: `available()`).
    OneDnn,
    /// runner's own im2col + gemm.
    Rust,
}

const UNSET: u8 = 0;
const ONEDNN: u8 = 1;
const RUST: u8 = 2;

static ENGINE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether this build has the oneDNN bridge.
pub fn available() -> bool {
    cfg!(runner_onednn)
}

/// The oneDNN version this build links, as "2.6.3"; `None` without the bridge.
pub fn version() -> Option<String> {
    #[cfg(runner_onednn)]
    {
        // SAFETY: a plain query of a static struct inside the library.
        let v = unsafe { ffi::runner_dnnl_version() };
        Some(format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100))
    }
    #[cfg(not(runner_onednn))]
    None
}

/// Selects the engine for this process. Asking for oneDNN in a build without it is an error.
pub fn set_engine(e: ConvEngine) -> Result<()> {
    if e == ConvEngine::OneDnn && !available() {
        bail!(
            "device.conv_engine = \"onednn\", but this runner was built without oneDNN \
             (apt-get install libdnnl-dev, then cargo build --release --features onednn; or use \
             \"auto\" or \"rust\")"
        );
    }
    let v = match e {
        ConvEngine::OneDnn => ONEDNN,
        ConvEngine::Rust => RUST,
    };
    ENGINE.store(v, Ordering::Relaxed);
    Ok(())
}

thread_local! {
    static OVERRIDE: std::cell::Cell<u8> = const { std::cell::Cell::new(UNSET) };
}

/// Runs `f` with this thread's dense convolutions on `e` whatever the process-wide choice (tests
/// compare the engines side by side). `e` must be available.
pub fn with_engine<R>(e: ConvEngine, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let v = match e {
        ConvEngine::OneDnn if available() => ONEDNN,
        _ => RUST,
    };
    let _restore = Restore(OVERRIDE.with(|o| o.replace(v)));
    f()
}

/// The engine convolutions use now on this thread: an override from `with_engine`, else the one
/// set for the process, else runner's own.
pub fn engine() -> ConvEngine {
    let local = OVERRIDE.with(|o| o.get());
    let v = if local != UNSET {
        local
    } else {
        ENGINE.load(Ordering::Relaxed)
    };
    match v {
        RUST => ConvEngine::Rust,
        ONEDNN => ConvEngine::OneDnn,
        _ => ConvEngine::Rust,
    }
}

/// A line for logs: which kernels run convolutions.
pub fn describe() -> String {
    match (engine(), version()) {
        (ConvEngine::OneDnn, Some(v)) => {
            format!("oneDNN {v} (runner's own for dilated depthwise)")
        }
        _ => "runner's own kernels".to_string(),
    }
}

/// One pass of a convolution: which operands go in and what comes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// (x, w) -> y
    Forward = 0,
    /// (dy, w) -> dx
    GradInput = 1,
    /// (x, dy) -> dw
    GradWeight = 2,
}

/// Convolution geometry in the bridge's order: n, c_in, c_out, h, w, k, stride, padding,
/// dilation (1 = none), groups.
#[cfg(runner_onednn)]
pub(crate) type Geom = [i64; 10];

/// Runs `pass` through oneDNN into `out` (plain NCHW / OIHW, f32), using `threads` threads.
/// The caller checks the lengths against the geometry.
#[cfg(runner_onednn)]
pub(crate) fn run(
    pass: Pass,
    geom: &Geom,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let mut err = [0u8; 512];
    // SAFETY: the buffers outlive the call and match the geometry (checked by the caller); the
    // bridge writes only `out` and at most `err.len()` bytes of `err`, and serialises calls.
    let rc = unsafe {
        ffi::runner_dnnl_conv(
            pass as i32,
            geom.as_ptr(),
            a.as_ptr(),
            b.as_ptr(),
            out.as_mut_ptr(),
            threads.min(i32::MAX as usize) as i32,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if rc != 0 {
        let end = err.iter().position(|&c| c == 0).unwrap_or(err.len());
        bail!(
            "oneDNN convolution ({pass:?}, geometry {geom:?}) failed: {}",
            String::from_utf8_lossy(&err[..end])
        );
    }
    Ok(())
}

#[cfg(runner_onednn)]
mod ffi {
    extern "C" {
        pub fn runner_dnnl_version() -> i32;
        pub fn runner_dnnl_conv(
            pass: i32,
            geom: *const i64,
            a: *const f32,
            b: *const f32,
            out: *mut f32,
            threads: i32,
            err: *mut std::ffi::c_char,
            err_len: usize,
        ) -> i32;
    }
}
