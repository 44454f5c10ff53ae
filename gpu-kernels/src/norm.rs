//! LayerNorm (eps 1e-6, no affine parameters) fused with adaLN's `modulate`: the input of both
//! branches of every DiT block and of the final layer.

use crate::global::{Global, GlobalMut};
use crate::math;
use crate::reduce::warp_sum;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, WARP_SIZE, div_ceil};

/// LayerNorm epsilon of every DiT norm.
pub const LAYER_NORM_EPS: f32 = 1e-6;
/// Token rows per block (one per warp).
pub const NORM_ROWS_PER_BLOCK: u32 = 8;

/// `ceil(rows / 8)` blocks of 8 warps, one warp per row.
pub fn layer_norm_modulate_dims(rows: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(rows, NORM_ROWS_PER_BLOCK)),
        block: Dim3::x(NORM_ROWS_PER_BLOCK * WARP_SIZE),
        shared_bytes: 0,
    }
}

/// `out = LN(x) * (1 + scale) + shift` for token rows `x` (rows, D), where row r belongs to
/// sample `r / tokens` and that sample's shift and scale are
/// `modulation[b * mod_stride + shift_offset ..]` and `[.. + scale_offset ..]`.
///
/// Mapping: one warp per token row; lanes stride over the D features (coalesced). Three passes
/// over the row (mean, biased variance around the mean, normalise + modulate), each a shuffle
/// reduction, so no shared memory and no block barrier; the re-reads hit L1. Two-pass variance,
/// like the reference, avoids the cancellation of `E[x^2] - E[x]^2`.
pub fn layer_norm_modulate<C: ThreadCtx>(
    ctx: &C,
    x: Global<'_, f32>,
    modulation: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    rows: u32,
    hidden: u32,
    tokens: u32,
    mod_stride: u32,
    shift_offset: u32,
    scale_offset: u32,
) {
    let row = ctx.block_idx_x() * NORM_ROWS_PER_BLOCK + ctx.warp_id();
    if row >= rows {
        return;
    }
    let lane = ctx.lane_id() as usize;
    let step = WARP_SIZE as usize;
    let d_len = hidden as usize;
    let base = row as usize * d_len;
    let n = hidden as f32;

    let mut sum = 0.0f32;
    let mut k = lane;
    while k < d_len {
        sum += ctx.load(x, base + k);
        k += step;
    }
    let mean = warp_sum(ctx, sum) / n;

    let mut sq = 0.0f32;
    let mut k = lane;
    while k < d_len {
        let v = ctx.load(x, base + k) - mean;
        sq += v * v;
        k += step;
    }
    let var = warp_sum(ctx, sq) / n;
    let inv_std = 1.0 / math::sqrt(var + LAYER_NORM_EPS);

    let m = (row / tokens * mod_stride) as usize;
    let (shift, scale) = (m + shift_offset as usize, m + scale_offset as usize);
    let mut k = lane;
    while k < d_len {
        let h = (ctx.load(x, base + k) - mean) * inv_std;
        let v = h * (1.0 + ctx.load(modulation, scale + k)) + ctx.load(modulation, shift + k);
        ctx.store(out, base + k, v);
        k += step;
    }
}
