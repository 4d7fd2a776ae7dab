//! Allocator tuning for the training loop.
//!
//! Every forward/backward pass allocates and frees the same multi-megabyte activation buffers.
//! glibc serves blocks above its mmap threshold with fresh `mmap`s and returns them with
//! `munmap`, so each step page-faults its whole working set again: measured on the NB201
//! evaluation benchmark, a third of the wall time went to the kernel (sys time) zero-filling
//! pages. Keeping large blocks on the heap (and not trimming it) lets freed buffers be reused.

/// Keeps large allocations on the reusable heap (glibc only; a no-op elsewhere).
pub fn keep_large_blocks_on_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called once at start-up before
    // any worker thread exists.
    unsafe {
        // 1 GiB: above any single tensor buffer runner allocates in normal use.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
