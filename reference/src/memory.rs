//! Memory: an estimate of what a run needs, checked against what the machine has before a run
//! allocates ([`RunMemory`], [`available_bytes`]), and keeping freed memory in the process from
//! one sampling step to the next ([`retain_freed_memory`]).
//!
//! Every sampling step allocates its activations afresh and frees them at its end (DiT-B/2, guided: tens
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

use crate::config::DitConfig;

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

/// The memory a run holds at its peak, estimated from its sizes before anything is allocated,
/// in bytes by part (f32 values; small tables and the program itself not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunMemory {
    /// The model's parameters (and the few-rows copy of the MLPs a cached method makes).
    pub weights: u64,
    /// One forward pass's activations (attention scores of the heads computed at once
    /// included) and a caching method's per-block caches.
    pub working: u64,
    /// The trajectory the run returns and writes (every state and model output), with the
    /// copies made on the way out.
    pub results: u64,
}

impl RunMemory {
    pub fn total(&self) -> u64 {
        self.weights.saturating_add(self.working).saturating_add(self.results)
    }

    /// "about 12.3 GiB (weights 2.5 GiB, activations and caches 0.8 GiB, trajectory 9.0 GiB)".
    pub fn describe(&self) -> String {
        format!(
            "about {} (weights {}, activations and caches {}, trajectory {})",
            gib(self.total()),
            gib(self.weights),
            gib(self.working),
            gib(self.results)
        )
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// f32 values to bytes, saturating (sizes from user input may be absurd).
fn f32_bytes(values: u128) -> u64 {
    values.saturating_mul(4).min(u64::MAX as u128) as u64
}

/// Bytes of one forward pass over `rows` model rows: the token activations of a block (x,
/// the normalised input, qkv, the heads, a branch output, the MLP's hidden layer), the attention
/// scores of the `threads` heads computed at once, and the patch/unpatchify images.
fn forward_values(config: &DitConfig, rows: u128, threads: u128) -> u128 {
    let (n, d, m) = (
        config.tokens() as u128,
        config.hidden_size as u128,
        config.mlp_hidden() as u128,
    );
    let pixels = (config.input_size as u128).pow(2) * (config.in_channels + config.out_channels()) as u128;
    rows * n * (8 * d + 2 * m) + threads * n * n + rows * pixels * 2
}

/// The estimate of `model(x, t, y)` on `rows` rows with `threads` worker threads.
pub fn forward_estimate(config: &DitConfig, rows: usize, threads: usize) -> RunMemory {
    let pixels = (config.input_size as u128).pow(2) * (config.in_channels + config.out_channels()) as u128;
    RunMemory {
        weights: f32_bytes(config.parameter_count() as u128),
        working: f32_bytes(forward_values(config, rows as u128, threads as u128)),
        // The input and output tensors, read and written once each.
        results: f32_bytes(rows as u128 * pixels * 2),
    }
}

/// The estimate of a sampling run of `steps` steps with caching `method` on `rows` model rows
/// (a guided batch counts both halves) for `samples` samples, with `threads` worker threads.
pub fn sampling_estimate(
    config: &DitConfig,
    method: &crate::cache::MethodConfig,
    rows: usize,
    samples: usize,
    steps: usize,
    threads: usize,
) -> RunMemory {
    use crate::cache::MethodKind;
    let (rows, samples, steps) = (rows as u128, samples as u128, steps as u128);
    let (n, d, m, depth) = (
        config.tokens() as u128,
        config.hidden_size as u128,
        config.mlp_hidden() as u128,
        config.depth as u128,
    );
    // Taylor factors (rows, N, D) kept per block, both branches together.
    let cached_per_block = match method.kind {
        MethodKind::Full => 0,
        MethodKind::Fora => 2,
        MethodKind::TaylorSeer | MethodKind::ClusCa => 2 * (method.order as u128 + 1),
        // Attention at order 1; the MLP's factors twice (the sparse steps' and the full steps').
        MethodKind::ResCa => 2 + 2 * (method.solver.order().max(1) as u128 + 1),
    };
    let mut caches = depth * cached_per_block * rows * n * d;
    let few_rows_mlp_copy = match method.kind {
        MethodKind::ClusCa | MethodKind::ResCa => 2 * depth * m * d,
        _ => 0,
    };
    if method.kind == MethodKind::ResCa {
        // TETC's smoothed and current similarity per row.
        caches += 2 * rows * n * n;
    }
    let side = (config.input_size as u128).pow(2);
    let (c, oc) = (config.in_channels as u128, config.out_channels() as u128);
    let trajectory = |rows: u128| (steps + 1) * rows * c * side + steps * rows * oc * side;
    RunMemory {
        weights: f32_bytes(config.parameter_count() as u128 + few_rows_mlp_copy),
        working: f32_bytes(forward_values(config, rows, threads as u128) + caches),
        // The sampler's trajectory of every row, the samples' part cut out of it, and the copy
        // written out.
        results: f32_bytes(trajectory(rows) + 2 * trajectory(samples)),
    }
}

/// Bytes of memory this process can have now: the kernel's `MemAvailable` (free memory plus
/// what it can reclaim), and under a cgroup v2 memory limit the room left below it, whichever
/// is lower. None where neither can be read (not Linux).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("MemAvailable:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
    });
    let cgroup = cgroup_room();
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The room below this process's cgroup v2 memory limit (`memory.max - memory.current`), if
/// one is set.
fn cgroup_room() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let relative = membership.lines().find_map(|line| line.strip_prefix("0::"))?;
    let folder = std::path::Path::new("/sys/fs/cgroup").join(relative.trim_start_matches('/'));
    let read = |name: &str| std::fs::read_to_string(folder.join(name)).ok();
    let max = read("memory.max")?.trim().parse::<u64>().ok()?;
    let current = read("memory.current")?.trim().parse::<u64>().unwrap_or(0);
    Some(max.saturating_sub(current))
}
