//! Keeping freed memory in the process from one sampling step to the next.
//!
//! Every step allocates its activations afresh and frees them at its end (DiT-B/2, guided: tens
//! of MB per block). glibc serves allocations above its mmap threshold with new mappings, and
//! hands the free top of a heap back to the system once more than its trim threshold is free; the
//! next step's allocations then fault every page in again, zero-filled, which on a virtual
//! machine is an exit to the hypervisor per page. rayon's workers each get their own arena too,
//! whose heaps glibc unmaps once they are wholly free, and the forward pass runs on whichever
//! worker is free. Measured on a 2-core AMD EPYC Zen 3 VM, DiT-B/2, 50-step guided DDIM, three runs
//! in one process: a ResCa-IE run took 82-93 K page faults (336-383 MB of fresh pages) with
//! glibc's defaults, 28-31 K with only the thresholds raised, and with one arena as well 29 K in
//! the first run (its caches' first touch) and under 10 in the next ones; full compute 6-14 K, then
//! 0. (The time this saves, tens of ms a run, is below that VM's run-to-run noise.)
//!
//! Process-wide allocator settings belong to the program, not to a library: the `resca` binary
//! and the benchmarks call [`retain_freed_memory`] first thing; a host that links the reference
//! may do the same.

/// Makes glibc keep freed memory for reuse: allocations up to 32 MB (glibc's largest mmap
/// threshold) come from the heap, up to 1 GB of free heap top is kept, and every thread shares
/// the one main arena (a step's few hundred large allocations do not contend). Call it before
/// any thread is started. The peak resident
/// memory is unchanged (it is the memory a step needs anyway); memory is kept after a run until
/// the process ends. Does nothing on other C libraries. Idempotent.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // glibc's <malloc.h>.
            const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
            const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
            const M_ARENA_MAX: std::ffi::c_int = -8;
            unsafe extern "C" {
                fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
            }
            // SAFETY: mallopt only sets allocator parameters; glibc applies them under its own
            // lock, and they hold for later allocations.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
                mallopt(M_ARENA_MAX, 1);
            }
        });
    }
}
