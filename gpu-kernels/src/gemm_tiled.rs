//! The exact FMA GEMM family: `out = A W^T + b` for token rows `A` (M, K) and an `nn.Linear`
//! weight `W` (N, K), both K-contiguous, with the fused epilogues of [`gemm`](crate::gemm)
//! (bias; bias + GELU-tanh; bias + gated residual `x += gate * (A W^T + b)`), register-tiled
//! and built on `fma.rn.f32` ([`ThreadCtx::fma`]).
//!
//! Tiling: a block of 256 threads (16 x 16) computes a square output tile of `16 MICRO` rows and
//! columns, each thread `MICRO x MICRO` outputs in registers: 128 x 128 with 8 x 8 per thread
//! (`gemm128_*`) or 64 x 64 with 4 x 4 (`gemm64_*`, for shapes whose 128-tile grid leaves the GPU
//! idle). Thread (ty, tx) owns rows `4 ty + (i % 4) + 64 (i / 4)` and columns
//! `4 tx + (j % 4) + 64 (j / 4)`: groups of 4 consecutive rows (columns), which it reads from
//! shared memory with one 16-byte vector load each ([`ThreadCtx::shared_load4`]).
//!
//! K is walked in tiles of [`TILED_K`]: the block stages the tile of A and of W in shared memory,
//! transposed (k-major rows of `16 MICRO + 4` words: the padding keeps the transposed stores free
//! of bank conflicts and every row 16-byte aligned). Double buffering: while the threads compute
//! on one stage, each holds its part of the next tile in registers (read from global memory
//! before the computation), and stores it into the other stage afterwards; one barrier per tile.
//! The loads: thread t reads k = t % 8 of rows t / 8 + 32 r, so a warp reads four 32-byte
//! segments per load. Out-of-range rows, columns and k are staged as zeros, so any M, N, K
//! works; only the final store is guarded.
//!
//! Exactness: every output is one chain `acc = fma(a_k, w_k, acc)` over k in increasing order
//! from `acc = +0`, so the GPU and the simulator (`f32::mul_add`) agree bit for bit, and a CPU
//! loop of `mul_add` reproduces the simulator exactly. (The zero padding past K leaves the chain
//! unchanged: `acc` is never -0, and `fma(0, 0, acc) = acc`.)
//!
//! Split-K, for few rows (a sparse step's proxies): [`gemm_splitk_partial`] computes the chain
//! over the k range of grid layer z (`k_per_split` consecutive k) into `partials[z]` (M, N) with
//! the 64 x 64 tiling; then one of the `gemm_splitk_*` reductions sums, for each output, the
//! partials in order z = 0, 1, ... (`((p_0 + p_1) + p_2) + ...`, `add.rn`) and applies the
//! epilogue. The order is fixed, so the result is deterministic and the same on the GPU and in
//! the simulator (it differs in rounding from the unsplit chain).

use crate::global::{Global, GlobalMut};
use crate::math;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// Threads per block (16 x 16, as one x dimension).
pub const TILED_THREADS: u32 = 256;
/// K per shared-memory tile.
pub const TILED_K: u32 = 8;
/// Threads along each side of the block's thread grid.
const SIDE: usize = 16;
/// Outputs per thread along each side for the 128 x 128 tile.
pub const MICRO_128: usize = 8;
/// Outputs per thread along each side for the 64 x 64 tile.
pub const MICRO_64: usize = 4;

/// Output rows (and columns) of a block tile with `micro` outputs per thread and side.
pub const fn tile_side(micro: usize) -> u32 {
    (SIDE * micro) as u32
}

/// Words of one staged k row: the tile's rows plus 4 words of padding.
const fn stride(micro: usize) -> usize {
    SIDE * micro + 4
}

/// Words of one operand's tile in one stage.
const fn stage_words(micro: usize) -> usize {
    TILED_K as usize * stride(micro)
}

/// Shared memory of the tiled GEMM: A and W, two stages each.
pub const fn tiled_shared_bytes(micro: usize) -> u32 {
    (4 * stage_words(micro) * 4) as u32
}

/// Shared memory of the `gemm128_*` kernels (16896 bytes).
pub const GEMM128_SHARED_BYTES: u32 = tiled_shared_bytes(MICRO_128);
/// Shared memory of the `gemm64_*` kernels and of the split-K partial products (8704 bytes).
pub const GEMM64_SHARED_BYTES: u32 = tiled_shared_bytes(MICRO_64);

/// Grid (ceil(N / tile), ceil(M / tile)) of 256 threads, tile = `16 micro`.
pub fn gemm_tiled_dims(m: u32, n: u32, micro: usize) -> LaunchDims {
    let tile = tile_side(micro);
    LaunchDims {
        grid: Dim3::new(div_ceil(n, tile), div_ceil(m, tile), 1),
        block: Dim3::x(TILED_THREADS),
        shared_bytes: tiled_shared_bytes(micro),
    }
}

/// Grid (ceil(N / 64), ceil(M / 64), splits) of 256 threads: the split-K partial products.
pub fn gemm_splitk_partial_dims(m: u32, n: u32, splits: u32) -> LaunchDims {
    let dims = gemm_tiled_dims(m, n, MICRO_64);
    LaunchDims {
        grid: Dim3::new(dims.grid.x, dims.grid.y, splits),
        ..dims
    }
}

/// Threads per block of the split-K reductions (one thread per output element).
pub const SPLITK_REDUCE_THREADS: u32 = 256;

/// One thread per output element of an (M, N) product.
pub fn gemm_splitk_reduce_dims(m: u32, n: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(m * n, SPLITK_REDUCE_THREADS)),
        block: Dim3::x(SPLITK_REDUCE_THREADS),
        shared_bytes: 0,
    }
}

/// The split of K into `splits` ranges for [`gemm_splitk_partial`]: `(k_per_split, splits)`,
/// with `k_per_split` a multiple of [`TILED_K`] and no empty range (so `splits` may shrink).
pub fn splitk_ranges(k: u32, splits: u32) -> (u32, u32) {
    let per = div_ceil(div_ceil(k.max(1), splits.max(1)), TILED_K) * TILED_K;
    (per, div_ceil(k.max(1), per))
}

/// Whether accumulator (i, j) of the 8 x 8 array holds an output with `MICRO` outputs per side.
#[inline(always)]
const fn owned<const MICRO: usize>(i: usize, j: usize) -> bool {
    i < MICRO && j < MICRO
}

/// The register-tiled product of the (M, K) matrix `a` and the (N, K) matrix `w` over
/// `k_begin .. k_end`; calls `epilogue(row, col, dot)` for every in-range output the thread owns.
/// `MICRO` is 4 or 8 (64 or 128 tiles); the block is [`gemm_tiled_dims`]'s.
#[inline(always)]
fn tiled_product<C: ThreadCtx, const MICRO: usize, E: FnMut(usize, usize, f32)>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
    k_begin: usize,
    k_end: usize,
    mut epilogue: E,
) {
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let tile = SIDE * MICRO;
    let (ld, stage) = (stride(MICRO), stage_words(MICRO));
    let tk = TILED_K as usize;
    let t = ctx.thread_idx_x() as usize;
    let (ty, tx) = (t / SIDE, t % SIDE);
    let row0 = ctx.block_idx_y() as usize * tile;
    let col0 = ctx.block_idx_x() as usize * tile;
    // Shared layout: A stage 0, A stage 1, W stage 0, W stage 1.
    let a_stage = |s: usize| s * stage;
    let w_stage = |s: usize| (2 + s) * stage;

    // The loader: thread t reads k offset `lk` of rows `lr + 32 r` (r < MICRO / 2) of both tiles.
    let (lk, lr) = (t % tk, t / tk);
    let fetch = |k0: usize, av: &mut [f32; MICRO_128 / 2], wv: &mut [f32; MICRO_128 / 2]| {
        let gk = k0 + lk;
        for r in 0..MICRO / 2 {
            let rr = lr + 32 * r;
            av[r] = if row0 + rr < m && gk < k_end {
                ctx.load(a, (row0 + rr) * k + gk)
            } else {
                0.0
            };
            wv[r] = if col0 + rr < n && gk < k_end {
                ctx.load(w, (col0 + rr) * k + gk)
            } else {
                0.0
            };
        }
    };
    let stage_in = |s: usize, av: &[f32; MICRO_128 / 2], wv: &[f32; MICRO_128 / 2]| {
        for r in 0..MICRO / 2 {
            ctx.shared_store(a_stage(s) + lk * ld + lr + 32 * r, av[r]);
            ctx.shared_store(w_stage(s) + lk * ld + lr + 32 * r, wv[r]);
        }
    };

    // Always 8 x 8; with MICRO = 4 only the first 4 x 4 are used (the rest is optimised away).
    let mut acc = [[0.0f32; MICRO_128]; MICRO_128];
    let (mut av, mut wv) = ([0.0f32; MICRO_128 / 2], [0.0f32; MICRO_128 / 2]);
    let tiles = (k_end.saturating_sub(k_begin)).div_ceil(tk);
    if tiles > 0 {
        fetch(k_begin, &mut av, &mut wv);
        stage_in(0, &av, &wv);
    }
    ctx.sync_threads();
    for kt in 0..tiles {
        let cur = kt % 2;
        let more = kt + 1 < tiles;
        if more {
            // The next tile travels in registers while this one is computed.
            fetch(k_begin + (kt + 1) * tk, &mut av, &mut wv);
        }
        for kk in 0..tk {
            let mut ar = [0.0f32; MICRO_128];
            let mut wr = [0.0f32; MICRO_128];
            for half in 0..MICRO / 4 {
                let a4 = ctx.shared_load4(a_stage(cur) + kk * ld + 4 * ty + 64 * half);
                let w4 = ctx.shared_load4(w_stage(cur) + kk * ld + 4 * tx + 64 * half);
                for q in 0..4 {
                    ar[4 * half + q] = a4[q];
                    wr[4 * half + q] = w4[q];
                }
            }
            for i in 0..MICRO {
                for j in 0..MICRO {
                    acc[i][j] = ctx.fma(ar[i], wr[j], acc[i][j]);
                }
            }
        }
        if more {
            // The other stage was last read before the previous barrier: free to overwrite.
            stage_in(1 - cur, &av, &wv);
        }
        ctx.sync_threads();
    }

    // Written out (not a loop) so that `acc` is only ever indexed by constants and stays in
    // registers on the GPU, whatever the size of the epilogue.
    macro_rules! store {
        ($i:literal, $j:literal) => {{
            if owned::<MICRO>($i, $j) {
                let row = row0 + 4 * ty + ($i % 4) + 64 * ($i / 4);
                let col = col0 + 4 * tx + ($j % 4) + 64 * ($j / 4);
                if row < m && col < n {
                    epilogue(row, col, acc[$i][$j]);
                }
            }
        }};
    }
    macro_rules! store_row {
        ($i:literal) => {{
            store!($i, 0);
            store!($i, 1);
            store!($i, 2);
            store!($i, 3);
            store!($i, 4);
            store!($i, 5);
            store!($i, 6);
            store!($i, 7);
        }};
    }
    store_row!(0);
    store_row!(1);
    store_row!(2);
    store_row!(3);
    store_row!(4);
    store_row!(5);
    store_row!(6);
    store_row!(7);
}

/// `out (M, N) = A W^T + b`. Launch with [`gemm_tiled_dims`]`(m, n, MICRO)`.
pub fn gemm_bias<C: ThreadCtx, const MICRO: usize>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    tiled_product::<C, MICRO, _>(ctx, a, w, m, n, k, 0, k as usize, |row, col, dot| {
        ctx.store(out, row * n as usize + col, dot + ctx.load(bias, col));
    });
}

/// `out (M, N) = GELU_tanh(A W^T + b)` (MLP fc1). Launch with [`gemm_tiled_dims`].
pub fn gemm_bias_gelu<C: ThreadCtx, const MICRO: usize>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    tiled_product::<C, MICRO, _>(ctx, a, w, m, n, k, 0, k as usize, |row, col, dot| {
        ctx.store(out, row * n as usize + col, math::gelu_tanh(dot + ctx.load(bias, col)));
    });
}

/// `x (M, N) += gate * (A W^T + b)`, row r gated by `gate[(r / tokens) gate_stride +
/// gate_offset ..]`; each element is read and written by the one thread that owns it. Launch
/// with [`gemm_tiled_dims`].
pub fn gemm_bias_gated_residual<C: ThreadCtx, const MICRO: usize>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    x: GlobalMut<'_, f32>,
    gate: Global<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
    tokens: u32,
    gate_stride: u32,
    gate_offset: u32,
) {
    let x_read = x.as_global();
    tiled_product::<C, MICRO, _>(ctx, a, w, m, n, k, 0, k as usize, |row, col, dot| {
        let g = ctx.load(
            gate,
            (row / tokens as usize) * gate_stride as usize + gate_offset as usize + col,
        );
        let i = row * n as usize + col;
        ctx.store(x, i, ctx.load(x_read, i) + g * (dot + ctx.load(bias, col)));
    });
}

/// `partials[z] (M, N) = A[:, z k_per_split ..] W[:, z k_per_split ..]^T` over at most
/// `k_per_split` k for grid layer z (no bias). Launch with [`gemm_splitk_partial_dims`];
/// `partials` holds `splits M N` values.
pub fn gemm_splitk_partial<C: ThreadCtx>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    partials: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
    k_per_split: u32,
) {
    let z = ctx.block_idx_z() as usize;
    let k_begin = (z * k_per_split as usize).min(k as usize);
    let k_end = (k_begin + k_per_split as usize).min(k as usize);
    let plane = z * m as usize * n as usize;
    tiled_product::<C, MICRO_64, _>(ctx, a, w, m, n, k, k_begin, k_end, |row, col, dot| {
        ctx.store(partials, plane + row * n as usize + col, dot);
    });
}

/// The sum over the splits of element `i` of the (M, N) partial products, in split order.
#[inline(always)]
fn sum_partials<C: ThreadCtx>(ctx: &C, partials: Global<'_, f32>, i: usize, plane: usize, splits: u32) -> f32 {
    let mut sum = ctx.load(partials, i);
    for z in 1..splits as usize {
        sum += ctx.load(partials, z * plane + i);
    }
    sum
}

/// `out (M, N) = sum_z partials[z] + b`. Launch with [`gemm_splitk_reduce_dims`].
pub fn gemm_splitk_bias<C: ThreadCtx>(
    ctx: &C,
    partials: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    splits: u32,
) {
    let (i, plane) = (ctx.index_1d() as usize, m as usize * n as usize);
    if i < plane {
        let dot = sum_partials(ctx, partials, i, plane, splits);
        ctx.store(out, i, dot + ctx.load(bias, i % n as usize));
    }
}

/// `out (M, N) = GELU_tanh(sum_z partials[z] + b)`. Launch with [`gemm_splitk_reduce_dims`].
pub fn gemm_splitk_bias_gelu<C: ThreadCtx>(
    ctx: &C,
    partials: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    splits: u32,
) {
    let (i, plane) = (ctx.index_1d() as usize, m as usize * n as usize);
    if i < plane {
        let dot = sum_partials(ctx, partials, i, plane, splits);
        ctx.store(out, i, math::gelu_tanh(dot + ctx.load(bias, i % n as usize)));
    }
}

/// `x (M, N) += gate * (sum_z partials[z] + b)`, gated as [`gemm_bias_gated_residual`]. Launch
/// with [`gemm_splitk_reduce_dims`].
pub fn gemm_splitk_bias_gated_residual<C: ThreadCtx>(
    ctx: &C,
    partials: Global<'_, f32>,
    bias: Global<'_, f32>,
    x: GlobalMut<'_, f32>,
    gate: Global<'_, f32>,
    m: u32,
    n: u32,
    splits: u32,
    tokens: u32,
    gate_stride: u32,
    gate_offset: u32,
) {
    let (i, plane) = (ctx.index_1d() as usize, m as usize * n as usize);
    if i < plane {
        let (row, col) = (i / n as usize, i % n as usize);
        let dot = sum_partials(ctx, partials, i, plane, splits);
        let g = ctx.load(
            gate,
            (row / tokens as usize) * gate_stride as usize + gate_offset as usize + col,
        );
        ctx.store(x, i, ctx.load(x.as_global(), i) + g * (dot + ctx.load(bias, col)));
    }
}
