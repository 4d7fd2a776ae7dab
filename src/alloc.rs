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

/// Returns the heap's free memory to the operating system (glibc only; a no-op elsewhere).
///
/// With trimming switched off above, a process keeps its largest working set resident after
/// it is freed. The benchmark calls this between the training and the evaluation phase so
/// that the evaluation's peak resident memory is its own, not the training step's leftover.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
