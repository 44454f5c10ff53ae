//! The DiT input side (docs/algorithms.md sections 1.1-1.4): sinusoidal timestep features, the
//! small linear layers of the t-embedder and adaLN (one warp per output feature), the label
//! embedding added to the timestep embedding, and the patch embedding with its bias and positional
//! embedding.

use crate::global::{Global, GlobalMut};
use crate::math;
use crate::reduce::warp_sum;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, WARP_SIZE, div_ceil};

/// Width of the sinusoidal timestep features.
pub const TIMESTEP_FEATURES: u32 = 256;
const HALF: u32 = TIMESTEP_FEATURES / 2;

/// `f_k = exp(-ln(10000) k / 128)` in the reference's float32 operation order; the exponential
/// itself in f64, rounded once (see [`math::exp_f64`]).
#[inline(always)]
pub fn timestep_frequency(k: u32) -> f32 {
    const NEG_LOG_PERIOD: f32 = -9.210_340_371_976_184_f64 as f32;
    math::exp_f64(((NEG_LOG_PERIOD * k as f32) / HALF as f32) as f64) as f32
}

/// One block per sample, one thread per frequency: 128 threads each write one cos and one sin,
/// consecutive threads to consecutive addresses.
pub fn timestep_features_dims(batch: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(batch),
        block: Dim3::x(HALF),
        shared_bytes: 0,
    }
}

/// Timestep features (B, 256) = `[cos(t f), sin(t f)]` of the model times `t` (B).
///
/// Mapping: block b = sample b, thread k = frequency k (see [`timestep_features_dims`]).
pub fn timestep_features<C: ThreadCtx>(ctx: &C, t: Global<'_, f32>, out: GlobalMut<'_, f32>) {
    let b = ctx.block_idx_x() as usize;
    let k = ctx.thread_idx_x();
    if k >= HALF {
        return;
    }
    let arg = ctx.load(t, b) * timestep_frequency(k);
    let (sin, cos) = math::sin_cos(arg);
    let row = b * TIMESTEP_FEATURES as usize;
    ctx.store(out, row + k as usize, cos);
    ctx.store(out, row + (HALF + k) as usize, sin);
}

/// Warps per block of [`linear_rows`].
pub const LINEAR_ROWS_WARPS: u32 = 8;

/// `ceil(out_features / 8)` blocks of 8 warps; warp w of block i computes output feature
/// `8 i + w` for every row.
pub fn linear_rows_dims(out_features: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(out_features, LINEAR_ROWS_WARPS)),
        block: Dim3::x(LINEAR_ROWS_WARPS * WARP_SIZE),
        shared_bytes: 0,
    }
}

/// `out = x W^T + b` (optionally SiLU'd) for a FEW rows (the batch: t-embedder MLP, adaLN
/// modulation of every block and of the final layer): a GEMV per row.
///
/// Mapping: one warp per output feature j. Its 32 lanes stride over the input features, so each
/// step reads 32 consecutive floats of the weight row j and of the input row (coalesced), then a
/// shuffle reduction sums the lanes' partial dot products and lane 0 writes. The rows (batch
/// entries, a handful) are looped over inside the warp; the weight row stays in L1 between them.
/// A block-tiled GEMM would idle most of its tile on so few rows, and the weights, read exactly
/// once, are what bounds this kernel.
pub fn linear_rows<C: ThreadCtx, const SILU_OUT: bool>(
    ctx: &C,
    x: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    rows: u32,
    in_features: u32,
    out_features: u32,
) {
    let j = ctx.block_idx_x() * LINEAR_ROWS_WARPS + ctx.warp_id();
    if j >= out_features {
        // The whole warp leaves together: no shuffle is left half-attended.
        return;
    }
    let lane = ctx.lane_id() as usize;
    let (k_len, j) = (in_features as usize, j as usize);
    for r in 0..rows as usize {
        let mut acc = 0.0f32;
        let mut k = lane;
        while k < k_len {
            acc += ctx.load(x, r * k_len + k) * ctx.load(w, j * k_len + k);
            k += WARP_SIZE as usize;
        }
        let dot = warp_sum(ctx, acc);
        if lane == 0 {
            let v = dot + ctx.load(bias, j);
            let v = if SILU_OUT { math::silu(v) } else { v };
            ctx.store(out, r * out_features as usize + j, v);
        }
    }
}

/// Threads per block of [`label_embed_silu`].
pub const LABEL_EMBED_THREADS: u32 = 256;

/// Grid (ceil(D / 256), B): one thread per (sample, feature).
pub fn label_embed_silu_dims(batch: u32, hidden: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(div_ceil(hidden, LABEL_EMBED_THREADS), batch, 1),
        block: Dim3::x(LABEL_EMBED_THREADS),
        shared_bytes: 0,
    }
}

/// `silu_c = SiLU(t_emb + table[y])` (B, D): the label embedding lookup, the conditioning sum and
/// the SiLU that every adaLN applies to it, fused.
///
/// Mapping: block (i, b), thread t handles feature `256 i + t` of sample b; consecutive threads
/// read consecutive features of the table row and of t_emb (coalesced).
pub fn label_embed_silu<C: ThreadCtx>(
    ctx: &C,
    t_emb: Global<'_, f32>,
    table: Global<'_, f32>,
    labels: Global<'_, u32>,
    silu_c: GlobalMut<'_, f32>,
    hidden: u32,
) {
    let d = ctx.index_1d();
    if d >= hidden {
        return;
    }
    let b = ctx.block_idx_y() as usize;
    let (d, hidden) = (d as usize, hidden as usize);
    let label = ctx.load(labels, b) as usize;
    let c = ctx.load(t_emb, b * hidden + d) + ctx.load(table, label * hidden + d);
    ctx.store(silu_c, b * hidden + d, math::silu(c));
}

/// Tokens per block of [`patch_embed`].
pub const PATCH_TOKENS_PER_BLOCK: u32 = 8;
/// Threads per block of [`patch_embed`].
pub const PATCH_THREADS: u32 = 128;
/// Largest patch feature count `C p p` supported (C = 4, p = 8).
pub const MAX_PATCH_FEATURES: u32 = 256;
/// Shared memory of [`patch_embed`]: 8 patches of up to 256 pixels.
pub const PATCH_SHARED_BYTES: u32 = PATCH_TOKENS_PER_BLOCK * MAX_PATCH_FEATURES * 4;

/// Grid (ceil(N / 8), B), 128 threads.
pub fn patch_embed_dims(batch: u32, tokens: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(div_ceil(tokens, PATCH_TOKENS_PER_BLOCK), batch, 1),
        block: Dim3::x(PATCH_THREADS),
        shared_bytes: PATCH_SHARED_BYTES,
    }
}

/// Patch embedding (Conv2d, kernel = stride = p) plus bias plus `pos_embed`:
/// `out[b N + n] = patch(b, n) W^T + bias + pos[n]`, (B N, D) row-major.
///
/// Mapping: block (i, b) embeds tokens `8 i .. 8 i + 8` of sample b. Its threads first copy the
/// 8 patches (C p p pixels each) into shared memory, then thread t computes hidden features
/// `d = t, t + 128, ...` of all 8 tokens, so each weight row (C p p values, small and cache
/// resident) is read once per 8 tokens and the outputs of consecutive threads are consecutive.
pub fn patch_embed<C: ThreadCtx>(
    ctx: &C,
    x: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    pos: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    channels: u32,
    side: u32,
    patch: u32,
    hidden: u32,
) {
    const T: usize = PATCH_TOKENS_PER_BLOCK as usize;
    let (channels, side, patch, hidden) = (channels as usize, side as usize, patch as usize, hidden as usize);
    let grid_side = side / patch;
    let tokens = grid_side * grid_side;
    let features = channels * patch * patch;
    let t0 = ctx.block_idx_x() as usize * T;
    let b = ctx.block_idx_y() as usize;
    let tid = ctx.thread_idx_x() as usize;
    let threads = ctx.block_dim_x() as usize;

    let mut e = tid;
    while e < T * features {
        let (tt, f) = (e / features, e % features);
        let token = t0 + tt;
        let v = if token < tokens {
            let (ch, pi, qi) = (f / (patch * patch), (f / patch) % patch, f % patch);
            let (row, col) = (token / grid_side * patch + pi, token % grid_side * patch + qi);
            ctx.load(x, ((b * channels + ch) * side + row) * side + col)
        } else {
            0.0
        };
        ctx.shared_store(e, v);
        e += threads;
    }
    ctx.sync_threads();

    let mut d = tid;
    while d < hidden {
        let mut acc = [0.0f32; T];
        for f in 0..features {
            let wv = ctx.load(w, d * features + f);
            for (tt, a) in acc.iter_mut().enumerate() {
                *a += ctx.shared_load::<f32>(tt * features + f) * wv;
            }
        }
        let bv = ctx.load(bias, d);
        for (tt, a) in acc.iter().enumerate() {
            let token = t0 + tt;
            if token < tokens {
                let v = (*a + bv) + ctx.load(pos, token * hidden + d);
                ctx.store(out, (b * tokens + token) * hidden + d, v);
            }
        }
        d += threads;
    }
}
