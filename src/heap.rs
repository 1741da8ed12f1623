//! The process's heap settings, applied once at the start of `run` (by `main`, and by the
//! benches that measure what `run` does).
//!
//! glibc serves an allocation above 128 KiB with its own `mmap` and returns memory to the
//! kernel once 128 KiB at the top of the heap are free; both thresholds only grow after such a
//! chunk is freed, and only to that chunk's size. The writer builds every Parquet file in fresh
//! buffers of a few hundred KiB (pages, dictionaries, compressed output), so every commit
//! mapped them again and page-faulted them in: with the `_messages` file beside each kind's,
//! the kernel's share of the committed path reached a fifth, a third of it page faults.
//! Fixing the thresholds at the ceilings glibc's own adjustment stops at (32 MiB for `mmap`,
//! twice that for trimming) keeps those buffers in the heap between commits. The cost: up to
//! 64 MiB freed at the top of an arena may stay resident.

/// Allocations up to this size come from the heap, not their own mapping.
pub const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Free memory at the top of the heap beyond this is returned to the kernel.
pub const TRIM_THRESHOLD_BYTES: i32 = 64 << 20;

/// Applies the settings above (glibc only; elsewhere nothing). Call before threads start.
/// Returns whether the allocator took them (always `true` where there is nothing to set).
pub fn keep_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets two allocator parameters; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_takes_the_settings() {
        // glibc refuses an mmap threshold above its ceiling (32 MiB on 64-bit) with 0.
        assert!(super::keep_freed_buffers());
    }
}
