//! `out = A W^T + b` for token rows `A` (M, K) and an `nn.Linear` weight `W` (N, K), both
//! K-contiguous as PyTorch stores them, with fused epilogues: bias; bias + GELU-tanh (MLP fc1);
//! bias + gated residual add `x += gate * (A W^T + b)` (attention proj, MLP fc2).
//!
//! Tiling: each block computes a 64 x 64 tile of the output with 16 x 16 = 256 threads, each
//! thread a 4 x 4 micro-tile (rows `ty + 16 i`, columns `tx + 16 j`). The K dimension is walked
//! in steps of 16: the block stages a 64 x 16 slice of A and of W in shared memory (4 elements
//! per thread, 16 consecutive threads reading 16 consecutive floats of one row: coalesced),
//! stored transposed (k-major, rows padded to 65 words) so that the inner loop reads rows of the
//! tile: per k, a warp reads 2 distinct A words (broadcast) and 16 consecutive W words (no bank
//! conflict) for 16 multiply-adds per thread. Out-of-range rows, columns and k are staged as
//! zeros, so any M, N, K works; only the final store is guarded.

use crate::global::{Global, GlobalMut};
use crate::math;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// Output rows per block tile.
pub const GEMM_TILE_M: u32 = 64;
/// Output columns per block tile.
pub const GEMM_TILE_N: u32 = 64;
/// K step of the shared-memory tiles.
pub const GEMM_TILE_K: u32 = 16;
/// Threads per block side (16 x 16).
pub const GEMM_THREADS_SIDE: u32 = 16;
/// Outputs per thread along each side (the epilogue below is written out for 4).
const MICRO: usize = 4;
const STRIDE: usize = GEMM_TILE_M as usize + 1;
const W_BASE: usize = GEMM_TILE_K as usize * STRIDE;
/// Shared memory: the transposed A and W slices, 16 rows of 65 words each.
pub const GEMM_SHARED_BYTES: u32 = (2 * GEMM_TILE_K as usize * STRIDE * 4) as u32;

/// Grid (ceil(N / 64), ceil(M / 64)) of 16 x 16 threads.
pub fn gemm_dims(m: u32, n: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(div_ceil(n, GEMM_TILE_N), div_ceil(m, GEMM_TILE_M), 1),
        block: Dim3::new(GEMM_THREADS_SIDE, GEMM_THREADS_SIDE, 1),
        shared_bytes: GEMM_SHARED_BYTES,
    }
}

/// The tiled product of the (M, K) matrix at `a[a_base..]` and the (N, K) matrix at
/// `w[w_base..]`; calls `epilogue(row, col, dot)` for every in-range output element the thread
/// owns (`dot` without the bias).
#[inline(always)]
pub(crate) fn gemm_tile<C: ThreadCtx, E: FnMut(usize, usize, f32)>(
    ctx: &C,
    a: Global<'_, f32>,
    a_base: usize,
    w: Global<'_, f32>,
    w_base: usize,
    m: u32,
    n: u32,
    k: u32,
    mut epilogue: E,
) {
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let side = GEMM_THREADS_SIDE as usize;
    let (tile_k, tile_m) = (GEMM_TILE_K as usize, GEMM_TILE_M as usize);
    let (tx, ty) = (ctx.thread_idx_x() as usize, ctx.thread_idx_y() as usize);
    let tid = ty * side + tx;
    let threads = side * side;
    let row0 = ctx.block_idx_y() as usize * tile_m;
    let col0 = ctx.block_idx_x() as usize * GEMM_TILE_N as usize;
    let mut acc = [[0.0f32; MICRO]; MICRO];

    let mut k0 = 0;
    while k0 < k {
        for r in 0..(tile_m * tile_k) / threads {
            let e = tid + threads * r;
            let (rr, kk) = (e / tile_k, e % tile_k);
            let gk = k0 + kk;
            let av = if row0 + rr < m && gk < k {
                ctx.load(a, a_base + (row0 + rr) * k + gk)
            } else {
                0.0
            };
            ctx.shared_store(kk * STRIDE + rr, av);
            let wv = if col0 + rr < n && gk < k {
                ctx.load(w, w_base + (col0 + rr) * k + gk)
            } else {
                0.0
            };
            ctx.shared_store(W_BASE + kk * STRIDE + rr, wv);
        }
        ctx.sync_threads();
        for kk in 0..tile_k {
            let mut av = [0.0f32; MICRO];
            let mut wv = [0.0f32; MICRO];
            for i in 0..MICRO {
                av[i] = ctx.shared_load(kk * STRIDE + ty + side * i);
                wv[i] = ctx.shared_load(W_BASE + kk * STRIDE + tx + side * i);
            }
            for i in 0..MICRO {
                for j in 0..MICRO {
                    acc[i][j] += av[i] * wv[j];
                }
            }
        }
        // The next iteration overwrites the tiles: everyone must be done reading them.
        ctx.sync_threads();
        k0 += tile_k;
    }

    // Written out 16 times (not a loop) so that `acc` is only ever indexed by constants and
    // stays in registers on the GPU, whatever the size of the epilogue.
    macro_rules! store {
        ($i:literal, $j:literal) => {{
            let (row, col) = (row0 + ty + side * $i, col0 + tx + side * $j);
            if row < m && col < n {
                epilogue(row, col, acc[$i][$j]);
            }
        }};
    }
    macro_rules! store_row {
        ($i:literal) => {{
            store!($i, 0);
            store!($i, 1);
            store!($i, 2);
            store!($i, 3);
        }};
    }
    store_row!(0);
    store_row!(1);
    store_row!(2);
    store_row!(3);
}

/// `out (M, N) = A W^T + b`. Launch with [`gemm_dims`].
pub fn gemm_bias<C: ThreadCtx>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    gemm_tile(ctx, a, 0, w, 0, m, n, k, |row, col, dot| {
        ctx.store(out, row * n as usize + col, dot + ctx.load(bias, col));
    });
}

/// `out (M, N) = GELU_tanh(A W^T + b)` (MLP fc1). Launch with [`gemm_dims`].
pub fn gemm_bias_gelu<C: ThreadCtx>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    gemm_tile(ctx, a, 0, w, 0, m, n, k, |row, col, dot| {
        ctx.store(out, row * n as usize + col, math::gelu_tanh(dot + ctx.load(bias, col)));
    });
}

/// `x (M, N) += gate * (A W^T + b)`, where row r belongs to sample `r / tokens` and its gate is
/// `gate[b * gate_stride + gate_offset ..]` (the adaLN gate of the branch). Each output element
/// is read and written by the one thread that owns it. Launch with [`gemm_dims`].
pub fn gemm_bias_gated_residual<C: ThreadCtx>(
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
    gemm_tile(ctx, a, 0, w, 0, m, n, k, |row, col, dot| {
        let g = ctx.load(
            gate,
            (row / tokens as usize) * gate_stride as usize + gate_offset as usize + col,
        );
        let i = row * n as usize + col;
        ctx.store(x, i, ctx.load(x_read, i) + g * (dot + ctx.load(bias, col)));
    });
}
