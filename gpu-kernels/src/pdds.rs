//! PDDS, proxy-driven denoising simulation (docs/algorithms.md sections 5.2-5.4): the MLP outputs
//! of the driven tokens of a sparse step, simulated by the implicit update (implicit Euler,
//! implicit Taylor of order M, or BDF2) whose residuals blend each token's own cached residuals
//! with its proxy's fresh one, weighted by the confidence `theta = max(0, cos)`.
//!
//! The formulation is `resca_reference::cache::pdds`'s: residuals in the SAMPLING direction,
//! `R^(m) = sign^m c[m]` for cached derivatives `c[m]` with respect to the sampler's step index
//! (`sign = -1` for DDIM, whose index counts down; `+1` for flow). The cache is a Taylor cache of
//! `taylor`: slot m (of `len = B N D` elements) holds `c[m]`; slots at or past `stored` read as
//! zeros, like the reference's missing orders.
//!
//! Order of operations per element, as the reference: proxy residuals
//! `R^(m)(p) = R^(m-1)(p) - sign^(m-1) c[m-1][p]` from `R^(0) = fresh`; blended residual
//! `(sign^m c[m][i]) (1 - theta) + theta R^(m)(p)`; IE/IT `x = c[0][i]`, `x += r_m / m!` for
//! m = 1..M; BDF2 `x = 4/3 c0 - 1/3 (c0 - sign c1) + 2/3 r_1`.

use crate::global::{Global, GlobalMut};
use crate::math;
use crate::reduce::warp_sum;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, WARP_SIZE, div_ceil};

/// The cosine floor of `F.cosine_similarity(eps=1e-6)`.
pub const COSINE_EPS: f32 = 1e-6;
/// Threads per block of [`proxy_residuals`].
pub const PDDS_THREADS: u32 = 256;
/// Token rows per block of [`pdds_update`] (one per warp).
pub const PDDS_ROWS_PER_BLOCK: u32 = 8;
/// The `solver` parameter of [`pdds_update`] for implicit Euler / implicit Taylor.
pub const SOLVER_TAYLOR: u32 = 0;
/// The `solver` parameter of [`pdds_update`] for BDF2.
pub const SOLVER_BDF2: u32 = 1;

/// One thread per element of the proxies' fresh outputs (B K D).
pub fn proxy_residuals_dims(total: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(total, PDDS_THREADS)),
        block: Dim3::x(PDDS_THREADS),
        shared_bytes: 0,
    }
}

/// `1/m!` as f32: an f64 product rounded once, as the reference computes it.
#[inline(always)]
pub fn inverse_factorial(m: u32) -> f32 {
    let mut acc = 1.0f64;
    let mut k = 1;
    while k <= m {
        acc /= k as f64;
        k += 1;
    }
    acc as f32
}

/// The proxies' residuals at the new step, orders 1..=`order`: `residuals[m-1]` (B K, D) of
/// cluster c of row b is `R^(m-1) - sign^(m-1) c[m-1][b, proxies[b, c]]`, from `R^(0) = fresh`.
///
/// Mapping: thread e owns element e of `fresh` (B K D) and walks the orders sequentially.
pub fn proxy_residuals<C: ThreadCtx>(
    ctx: &C,
    fresh: Global<'_, f32>,
    cache: Global<'_, f32>,
    proxies: Global<'_, u32>,
    residuals: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
    order: u32,
    stored: u32,
    sign: f32,
) {
    let e = ctx.index_1d() as usize;
    let (n, k, d_len) = (tokens as usize, clusters as usize, hidden as usize);
    let total = batch as usize * k * d_len;
    if e >= total {
        return;
    }
    let (slot, d) = (e / d_len, e % d_len);
    let b = slot / k;
    let proxy_row = b * n + ctx.load(proxies, slot) as usize;
    let len = batch as usize * n * d_len;
    let mut previous = ctx.load(fresh, e);
    let mut sign_power = 1.0f32;
    for m in 1..=order as usize {
        let old = if m - 1 < stored as usize {
            ctx.load(cache, (m - 1) * len + proxy_row * d_len + d)
        } else {
            0.0
        };
        let residual = previous - old * sign_power;
        ctx.store(residuals, (m - 1) * total + e, residual);
        previous = residual;
        sign_power *= sign;
    }
}

/// `ceil(rows / 8)` blocks of 8 warps, one warp per token row (B N rows).
pub fn pdds_update_dims(rows: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(rows, PDDS_ROWS_PER_BLOCK)),
        block: Dim3::x(PDDS_ROWS_PER_BLOCK * WARP_SIZE),
        shared_bytes: 0,
    }
}

/// Cached order m of token row `row` at feature d, zero past the stored orders.
#[inline(always)]
fn cached<C: ThreadCtx>(ctx: &C, cache: Global<'_, f32>, m: usize, stored: u32, len: usize, at: usize) -> f32 {
    if m < stored as usize {
        ctx.load(cache, m * len + at)
    } else {
        0.0
    }
}

/// `max(0, cos(c[m][row], c[m][proxy_row]))` with norms floored at 1e-6, summed by the warp:
/// `a.b` as the sum of `(a_d / |a|) (b_d / |b|)`, as the reference.
#[inline(always)]
fn confidence<C: ThreadCtx>(
    ctx: &C,
    cache: Global<'_, f32>,
    m: usize,
    stored: u32,
    len: usize,
    row: usize,
    proxy_row: usize,
    d_len: usize,
) -> f32 {
    let (lane, step) = (ctx.lane_id() as usize, WARP_SIZE as usize);
    let (mut aa, mut bb) = (0.0f32, 0.0f32);
    let mut d = lane;
    while d < d_len {
        let a = cached(ctx, cache, m, stored, len, row * d_len + d);
        let b = cached(ctx, cache, m, stored, len, proxy_row * d_len + d);
        aa += a * a;
        bb += b * b;
        d += step;
    }
    let norm_a = math::sqrt(warp_sum(ctx, aa)).max(COSINE_EPS);
    let norm_b = math::sqrt(warp_sum(ctx, bb)).max(COSINE_EPS);
    let mut dot = 0.0f32;
    let mut d = lane;
    while d < d_len {
        let a = cached(ctx, cache, m, stored, len, row * d_len + d);
        let b = cached(ctx, cache, m, stored, len, proxy_row * d_len + d);
        dot += (a / norm_a) * (b / norm_b);
        d += step;
    }
    warp_sum(ctx, dot).max(0.0)
}

/// The MLP outputs `out` (B N, D) of every token: a proxy's row is its fresh output (`fresh`,
/// B K rows; where several clusters of a batch row name the same token, the last one's, as
/// `gather::scatter_rows` writes them), every other row is simulated from the cache (`order` + 1
/// slots read, `stored` of them held), the cluster `labels` (B N), the `proxies` (B K) and the
/// proxies' residuals of [`proxy_residuals`]; `solver` is [`SOLVER_TAYLOR`] (IE for order 1, IT
/// above) or [`SOLVER_BDF2`] (order 1). Writing the proxies' rows here instead of scattering them
/// afterwards saves a launch per block and gives the same values (a copy either way). Then the
/// gated residual add of the branch, as `residual::gated_add` computes it:
/// `x[r, d] += gate[(r / tokens) gate_stride + gate_offset + d] * out[r, d]`.
///
/// Mapping: one warp per token row; lanes stride over the D features; each order's confidence is
/// two shuffle reductions (norms, then the normalised dot), and every lane updates the features
/// it owns in `out` (read back by the same lane for the next order).
pub fn pdds_update<C: ThreadCtx>(
    ctx: &C,
    cache: Global<'_, f32>,
    labels: Global<'_, u32>,
    proxies: Global<'_, u32>,
    residuals: Global<'_, f32>,
    fresh: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    x: GlobalMut<'_, f32>,
    gate: Global<'_, f32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
    order: u32,
    stored: u32,
    sign: f32,
    solver: u32,
    gate_stride: u32,
    gate_offset: u32,
) {
    let row = (ctx.block_idx_x() * PDDS_ROWS_PER_BLOCK + ctx.warp_id()) as usize;
    let (n, k, d_len) = (tokens as usize, clusters as usize, hidden as usize);
    if row >= batch as usize * n {
        return;
    }
    let (lane, step) = (ctx.lane_id() as usize, WARP_SIZE as usize);
    // A proxy's row: its fresh output (the last cluster naming the token wins).
    let (b, token) = (row / n, (row % n) as u32);
    let mut proxy_slot = None;
    for c in 0..k {
        if ctx.load(proxies, b * k + c) == token {
            proxy_slot = Some(b * k + c);
        }
    }
    if let Some(from) = proxy_slot {
        let mut d = lane;
        while d < d_len {
            ctx.store(out, row * d_len + d, ctx.load(fresh, from * d_len + d));
            d += step;
        }
        gated_add_row(ctx, x, gate, out.as_global(), row, n, d_len, gate_stride, gate_offset);
        return;
    }
    let len = batch as usize * n * d_len;
    let slot = (row / n) * k + ctx.load(labels, row) as usize;
    let proxy_row = (row / n) * n + ctx.load(proxies, slot) as usize;
    let total = batch as usize * k * d_len;
    if solver == SOLVER_BDF2 {
        let theta = confidence(ctx, cache, 1, stored, len, row, proxy_row, d_len);
        let mut d = lane;
        while d < d_len {
            let c0 = cached(ctx, cache, 0, stored, len, row * d_len + d);
            let c1 = cached(ctx, cache, 1, stored, len, row * d_len + d);
            let r = (c1 * sign) * (1.0 - theta) + theta * ctx.load(residuals, slot * d_len + d);
            let previous_state = c0 - sign * c1;
            let value = (4.0f32 / 3.0) * c0 - (1.0f32 / 3.0) * previous_state + (2.0f32 / 3.0) * r;
            ctx.store(out, row * d_len + d, value);
            d += step;
        }
        gated_add_row(ctx, x, gate, out.as_global(), row, n, d_len, gate_stride, gate_offset);
        return;
    }
    let mut d = lane;
    while d < d_len {
        ctx.store(
            out,
            row * d_len + d,
            cached(ctx, cache, 0, stored, len, row * d_len + d),
        );
        d += step;
    }
    let mut sign_power = 1.0f32;
    for m in 1..=order as usize {
        sign_power *= sign;
        let theta = confidence(ctx, cache, m, stored, len, row, proxy_row, d_len);
        let scale = inverse_factorial(m as u32);
        let mut d = lane;
        while d < d_len {
            let own = cached(ctx, cache, m, stored, len, row * d_len + d);
            let proxy = ctx.load(residuals, (m - 1) * total + slot * d_len + d);
            let r = (own * sign_power) * (1.0 - theta) + theta * proxy;
            let at = row * d_len + d;
            ctx.store(out, at, ctx.load(out.as_global(), at) + r * scale);
            d += step;
        }
    }
    gated_add_row(ctx, x, gate, out.as_global(), row, n, d_len, gate_stride, gate_offset);
}

/// `x[row, d] += gate[(row / tokens) gate_stride + gate_offset + d] * branch[row, d]` for the
/// features the lane owns (each reads back what the same lane wrote), the operations of
/// `residual::gated_add`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gated_add_row<C: ThreadCtx>(
    ctx: &C,
    x: GlobalMut<'_, f32>,
    gate: Global<'_, f32>,
    branch: Global<'_, f32>,
    row: usize,
    tokens: usize,
    d_len: usize,
    gate_stride: u32,
    gate_offset: u32,
) {
    let gate_row = (row / tokens) * gate_stride as usize + gate_offset as usize;
    let mut d = ctx.lane_id() as usize;
    while d < d_len {
        let at = row * d_len + d;
        let g = ctx.load(gate, gate_row + d);
        ctx.store(x, at, ctx.load(x.as_global(), at) + g * ctx.load(branch, at));
        d += WARP_SIZE as usize;
    }
}
