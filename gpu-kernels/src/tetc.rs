//! TETC, temporal-enhanced trajectory clustering (docs/algorithms.md section 5.1), per batch row of
//! the final block's hidden state X (N, D): rows L2-normalised, the cosine similarity
//! `S = Xn Xn^T`, its EMA over full steps, K-medoids on the smoothed similarity (assignment and
//! medoid update, the host loops until no medoid changes) and the `center-random` proxy draw.
//!
//! Every reduction that decides a cluster (the argmax of the assignment, the members' similarity
//! sums of the medoid update, the weights of the proxy draw) runs sequentially in token order in
//! one thread, exactly as `resca_reference::cache::tetc` computes it, so that a given similarity
//! matrix yields the reference's clustering bit for bit.

use crate::gemm::{GEMM_SHARED_BYTES, GEMM_THREADS_SIDE, GEMM_TILE_M, GEMM_TILE_N, gemm_tile};
use crate::global::{Global, GlobalMut};
use crate::math;
use crate::reduce::warp_sum;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, WARP_SIZE, div_ceil};

/// Rows are L2-normalised with this floor on the norm (`F.normalize(eps=1e-6)`).
pub const NORM_EPS: f32 = 1e-6;
/// Token rows per block of [`row_normalize`] (one per warp).
pub const NORMALIZE_ROWS_PER_BLOCK: u32 = 8;
/// Threads per block of the elementwise and per-(row, cluster) kernels.
pub const TETC_THREADS: u32 = 256;
/// Threads per block of [`kmedoids_update`] (one block per cluster and batch row).
pub const MEDOID_THREADS: u32 = 128;
/// Shared memory of [`kmedoids_update`]: best sum, its token and the first member per thread.
pub const MEDOID_SHARED_BYTES: u32 = 3 * MEDOID_THREADS * 4;
/// "No token" in index buffers.
pub const NO_TOKEN: u32 = u32::MAX;

/// `ceil(rows / 8)` blocks of 8 warps, one warp per row.
pub fn row_normalize_dims(rows: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(rows, NORMALIZE_ROWS_PER_BLOCK)),
        block: Dim3::x(NORMALIZE_ROWS_PER_BLOCK * WARP_SIZE),
        shared_bytes: 0,
    }
}

/// `out[r] = x[r] / max(|x[r]|, 1e-6)` for rows (rows, D).
///
/// Mapping: one warp per row; lanes stride over the D features (coalesced), the squared norm is
/// a shuffle reduction.
pub fn row_normalize<C: ThreadCtx>(ctx: &C, x: Global<'_, f32>, out: GlobalMut<'_, f32>, rows: u32, dim: u32) {
    let row = ctx.block_idx_x() * NORMALIZE_ROWS_PER_BLOCK + ctx.warp_id();
    if row >= rows {
        return;
    }
    let (lane, step, d_len) = (ctx.lane_id() as usize, WARP_SIZE as usize, dim as usize);
    let base = row as usize * d_len;
    let mut sq = 0.0f32;
    let mut k = lane;
    while k < d_len {
        let v = ctx.load(x, base + k);
        sq += v * v;
        k += step;
    }
    let norm = math::sqrt(warp_sum(ctx, sq)).max(NORM_EPS);
    let mut k = lane;
    while k < d_len {
        ctx.store(out, base + k, ctx.load(x, base + k) / norm);
        k += step;
    }
}

/// The tiled GEMM's geometry with one grid layer per batch row: (ceil(N / 64), ceil(N / 64), B).
pub fn similarity_dims(batch: u32, tokens: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(div_ceil(tokens, GEMM_TILE_N), div_ceil(tokens, GEMM_TILE_M), batch),
        block: Dim3::new(GEMM_THREADS_SIDE, GEMM_THREADS_SIDE, 1),
        shared_bytes: GEMM_SHARED_BYTES,
    }
}

/// `s (B, N, N) = xn_b xn_b^T` for normalised token rows `xn` (B, N, D): the cosine similarity.
///
/// Mapping: the tiled GEMM of `gemm` (64 x 64 output tiles, 16 x 16 threads, 4 x 4 per thread)
/// with A = W = the batch row's tokens; grid layer z is batch row z.
pub fn similarity<C: ThreadCtx>(ctx: &C, xn: Global<'_, f32>, s: GlobalMut<'_, f32>, tokens: u32, dim: u32) {
    let (n, d) = (tokens as usize, dim as usize);
    let b = ctx.block_idx_z() as usize;
    let base = b * n * d;
    gemm_tile(ctx, xn, base, xn, base, tokens, tokens, dim, |row, col, dot| {
        ctx.store(s, (b * n + row) * n + col, dot);
    });
}

/// One thread per element.
pub fn elementwise_dims(total: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(total, TETC_THREADS)),
        block: Dim3::x(TETC_THREADS),
        shared_bytes: 0,
    }
}

/// The temporal smoothing in place: `smoothed = alpha s + (1 - alpha) smoothed` when
/// `has_previous` is non-zero, else `smoothed = s` (the first full step, or feature clustering).
///
/// Mapping: thread i owns element i (coalesced).
pub fn similarity_ema<C: ThreadCtx>(
    ctx: &C,
    s: Global<'_, f32>,
    smoothed: GlobalMut<'_, f32>,
    total: u32,
    alpha: f32,
    has_previous: u32,
) {
    let i = ctx.index_1d() as usize;
    if i >= total as usize {
        return;
    }
    let current = ctx.load(s, i);
    let value = if has_previous != 0 {
        current * alpha + (1.0 - alpha) * ctx.load(smoothed.as_global(), i)
    } else {
        current
    };
    ctx.store(smoothed, i, value);
}

/// One thread per (batch row, item) pair of `batch * items`.
pub fn per_item_dims(batch: u32, items: u32) -> LaunchDims {
    elementwise_dims(batch * items)
}

/// `labels[b, i] = argmax_c s[b, i, medoids[b, c]]`, the first cluster on ties (torch's argmax).
///
/// Mapping: one thread per (batch row, token), a sequential loop over the K medoids (launch with
/// [`per_item_dims`]`(B, N)`).
pub fn kmedoids_assign<C: ThreadCtx>(
    ctx: &C,
    s: Global<'_, f32>,
    medoids: Global<'_, u32>,
    labels: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    let i = ctx.index_1d() as usize;
    let (n, k) = (tokens as usize, clusters as usize);
    if i >= batch as usize * n {
        return;
    }
    let b = i / n;
    let row = i * n;
    let mut best = (0u32, f32::NEG_INFINITY);
    for c in 0..k {
        let m = ctx.load(medoids, b * k + c) as usize;
        let v = ctx.load(s, row + m);
        if v > best.1 {
            best = (c as u32, v);
        }
    }
    ctx.store(labels, i, best.0);
}

/// One block of 128 threads per (cluster, batch row): grid (K, B).
pub fn kmedoids_update_dims(batch: u32, clusters: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(clusters, batch, 1),
        block: Dim3::x(MEDOID_THREADS),
        shared_bytes: MEDOID_SHARED_BYTES,
    }
}

/// The medoid update: for cluster c of batch row b, the member i with the largest
/// `sum_{j in c} s[b, i, j]` (first on ties; the sums run over j in token order, as the
/// reference sums them); `next[b, c] = medoids[b, c]` for an empty cluster.
///
/// Mapping: block (c, b); thread t scans candidates i = t, t + 128, ... (each sum sequential in
/// one thread), keeps its best (strictly larger only, so the first of ties), then a shared-memory
/// tree reduction picks the largest sum and, among equal sums, the smallest token. A cluster whose
/// sums are all NaN or -inf takes its first member, as the reference's argmax does.
pub fn kmedoids_update<C: ThreadCtx>(
    ctx: &C,
    s: Global<'_, f32>,
    labels: Global<'_, u32>,
    medoids: Global<'_, u32>,
    next: GlobalMut<'_, u32>,
    tokens: u32,
    clusters: u32,
) {
    let (c, b) = (ctx.block_idx_x(), ctx.block_idx_y() as usize);
    let (n, threads) = (tokens as usize, MEDOID_THREADS as usize);
    let tid = ctx.thread_idx_x() as usize;
    let mut best = (f32::NEG_INFINITY, NO_TOKEN);
    let mut first = NO_TOKEN;
    let mut i = tid;
    while i < n {
        if ctx.load(labels, b * n + i) == c {
            if first == NO_TOKEN {
                first = i as u32;
            }
            let row = (b * n + i) * n;
            let mut sum = 0.0f32;
            for j in 0..n {
                if ctx.load(labels, b * n + j) == c {
                    sum += ctx.load(s, row + j);
                }
            }
            if sum > best.0 {
                best = (sum, i as u32);
            }
        }
        i += threads;
    }
    let (value_at, token_at, first_at) = (0, threads, 2 * threads);
    ctx.shared_store(value_at + tid, best.0);
    ctx.shared_store(token_at + tid, best.1);
    ctx.shared_store(first_at + tid, first);
    ctx.sync_threads();
    let mut stride = threads / 2;
    while stride > 0 {
        if tid < stride {
            let (v, t) = (
                ctx.shared_load::<f32>(value_at + tid),
                ctx.shared_load::<u32>(token_at + tid),
            );
            let (ov, ot) = (
                ctx.shared_load::<f32>(value_at + tid + stride),
                ctx.shared_load::<u32>(token_at + tid + stride),
            );
            if ov > v || (ov == v && ot < t) {
                ctx.shared_store(value_at + tid, ov);
                ctx.shared_store(token_at + tid, ot);
            }
            let (f, of) = (
                ctx.shared_load::<u32>(first_at + tid),
                ctx.shared_load::<u32>(first_at + tid + stride),
            );
            if of < f {
                ctx.shared_store(first_at + tid, of);
            }
        }
        ctx.sync_threads();
        stride /= 2;
    }
    if tid == 0 {
        let slot = b * clusters as usize + c as usize;
        let (token, first) = (ctx.shared_load::<u32>(token_at), ctx.shared_load::<u32>(first_at));
        let chosen = if token != NO_TOKEN {
            token
        } else if first != NO_TOKEN {
            first
        } else {
            ctx.load(medoids, slot)
        };
        ctx.store(next, slot, chosen);
    }
}

/// `center-random` proxies: for cluster c of batch row b, the member j drawn with probability
/// proportional to `max(s[b, medoid, j], 0) + 1e-6` by the host's uniform number
/// `uniforms[b, c]` in [0, 1): in float64, `target = u * sum(weights)`, then the first member at
/// which `target - (w_1 + ... + w_j)` (subtracted one by one) drops below 0, else the last
/// member; an empty cluster keeps its medoid (and its uniform is not used).
///
/// Mapping: one thread per (batch row, cluster), sequential over the tokens in order, exactly as
/// the reference draws (launch with [`per_item_dims`]`(B, K)`).
pub fn center_random_proxies<C: ThreadCtx>(
    ctx: &C,
    s: Global<'_, f32>,
    labels: Global<'_, u32>,
    medoids: Global<'_, u32>,
    uniforms: Global<'_, f64>,
    proxies: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    let slot = ctx.index_1d() as usize;
    let (n, k) = (tokens as usize, clusters as usize);
    if slot >= batch as usize * k {
        return;
    }
    let (b, c) = (slot / k, (slot % k) as u32);
    let medoid = ctx.load(medoids, slot) as usize;
    let row = (b * n + medoid) * n;
    let weight = |j: usize| ctx.load(s, row + j).max(0.0) as f64 + 1e-6;
    let mut total = -0.0f64;
    let mut last = NO_TOKEN;
    for j in 0..n {
        if ctx.load(labels, b * n + j) == c {
            total += weight(j);
            last = j as u32;
        }
    }
    if last == NO_TOKEN {
        ctx.store(proxies, slot, medoid as u32);
        return;
    }
    let mut target = ctx.load(uniforms, slot) * total;
    let mut chosen = last;
    for j in 0..n {
        if ctx.load(labels, b * n + j) == c {
            target -= weight(j);
            if target < 0.0 {
                chosen = j as u32;
                break;
            }
        }
    }
    ctx.store(proxies, slot, chosen);
}
