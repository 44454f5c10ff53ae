//! ClusCa (docs/algorithms.md section 6): K-means with L1 distance on the final block's tokens
//! (assignment, centroid update with its convergence flag, commit of the rows that moved; the host
//! loops), and the sparse-step propagation of each cluster's freshly computed MLP output into the
//! order-0 cache of its members.
//!
//! Distances and centroid sums run sequentially in one thread, in the reference's order
//! (`resca_reference::cache::clusca`), so the same tokens give the same clusters bit for bit.

use crate::global::{Global, GlobalMut};
use crate::tetc::NO_TOKEN;
use crate::thread::{Dim3, LaunchDims, ThreadCtx};

/// `allclose` relative tolerance of the convergence test.
pub const KMEANS_RTOL: f32 = 1e-4;
/// `allclose` absolute tolerance of the convergence test.
pub const KMEANS_ATOL: f32 = 1e-8;
/// Threads per block of [`kmeans_update`] (one block per cluster and batch row).
pub const KMEANS_THREADS: u32 = 128;
/// Shared memory of [`kmeans_update`]: one "moved" flag per thread.
pub const KMEANS_SHARED_BYTES: u32 = KMEANS_THREADS * 4;

/// `labels[b, i] = argmin_c sum_d |x[b, i, d] - centroids[b, c, d]|`, the first on ties.
///
/// Mapping: one thread per (batch row, token), sequential over clusters and features (launch with
/// `tetc::per_item_dims(B, N)`).
pub fn kmeans_assign_l1<C: ThreadCtx>(
    ctx: &C,
    x: Global<'_, f32>,
    centroids: Global<'_, f32>,
    labels: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
) {
    let i = ctx.index_1d() as usize;
    let (n, k, d_len) = (tokens as usize, clusters as usize, hidden as usize);
    if i >= batch as usize * n {
        return;
    }
    let b = i / n;
    let mut best = (0u32, f32::INFINITY);
    for c in 0..k {
        let centroid = (b * k + c) * d_len;
        let mut distance = -0.0f32;
        for d in 0..d_len {
            distance += (ctx.load(x, i * d_len + d) - ctx.load(centroids, centroid + d)).abs();
        }
        if distance < best.1 {
            best = (c as u32, distance);
        }
    }
    ctx.store(labels, i, best.0);
}

/// One block of 128 threads per (cluster, batch row): grid (K, B).
pub fn kmeans_update_dims(batch: u32, clusters: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(clusters, batch, 1),
        block: Dim3::x(KMEANS_THREADS),
        shared_bytes: KMEANS_SHARED_BYTES,
    }
}

/// `next[b, c] = sum_{i in c} x[b, i] / (count + 1e-8)` and `moved[b, c]` = 1 unless every
/// feature satisfies `|centroids - next| <= 1e-8 + 1e-4 |next|` (torch's `allclose`).
///
/// Mapping: block (c, b); thread t owns features t, t + 128, ... and sums them over the tokens in
/// order; the flags of the threads are OR-reduced through shared memory, thread 0 writes it.
pub fn kmeans_update<C: ThreadCtx>(
    ctx: &C,
    x: Global<'_, f32>,
    labels: Global<'_, u32>,
    centroids: Global<'_, f32>,
    next: GlobalMut<'_, f32>,
    moved: GlobalMut<'_, u32>,
    tokens: u32,
    clusters: u32,
    hidden: u32,
) {
    let (c, b) = (ctx.block_idx_x(), ctx.block_idx_y() as usize);
    let (n, d_len, threads) = (tokens as usize, hidden as usize, KMEANS_THREADS as usize);
    let tid = ctx.thread_idx_x() as usize;
    let slot = b * clusters as usize + c as usize;
    let mut any_moved = 0u32;
    let mut d = tid;
    while d < d_len {
        let mut sum = 0.0f32;
        let mut count = 0.0f32;
        for i in 0..n {
            if ctx.load(labels, b * n + i) == c {
                sum += ctx.load(x, (b * n + i) * d_len + d);
                count += 1.0;
            }
        }
        let value = sum / (count + 1e-8);
        let old = ctx.load(centroids, slot * d_len + d);
        let close = (old - value).abs() <= KMEANS_ATOL + KMEANS_RTOL * value.abs();
        any_moved |= u32::from(!close);
        ctx.store(next, slot * d_len + d, value);
        d += threads;
    }
    ctx.shared_store(tid, any_moved);
    ctx.sync_threads();
    let mut stride = threads / 2;
    while stride > 0 {
        if tid < stride {
            let merged = ctx.shared_load::<u32>(tid) | ctx.shared_load::<u32>(tid + stride);
            ctx.shared_store(tid, merged);
        }
        ctx.sync_threads();
        stride /= 2;
    }
    if tid == 0 {
        ctx.store(moved, slot, ctx.shared_load::<u32>(0));
    }
}

/// `dst[b] = src[b]` for every batch row b with `mask[b] != 0`; rows of `row_len` elements.
///
/// Mapping: thread i owns element i of `dst` (launch with `tetc::elementwise_dims(B row_len)`).
pub fn commit_rows<C: ThreadCtx>(
    ctx: &C,
    src: Global<'_, f32>,
    dst: GlobalMut<'_, f32>,
    mask: Global<'_, u32>,
    total: u32,
    row_len: u32,
) {
    let i = ctx.index_1d() as usize;
    if i >= total as usize {
        return;
    }
    if ctx.load(mask, i / row_len as usize) != 0 {
        ctx.store(dst, i, ctx.load(src, i));
    }
}

/// ClusCa's propagation into the order-0 MLP cache (B, N, D): the picked member of cluster c
/// (`picks[b, c]`, valid where `ranks[b, c] != NO_TOKEN`) first takes its fresh output
/// `fresh[b, c]`, then every member i of a cluster with a pick becomes
/// `g fresh[b, c] + (1 - g) cache0[b, i]` (the picked one included, as in the reference).
///
/// Mapping: thread i owns element i of the cache (coalesced; launch with
/// `tetc::elementwise_dims(B N D)`).
pub fn clusca_propagate<C: ThreadCtx>(
    ctx: &C,
    cache0: GlobalMut<'_, f32>,
    fresh: Global<'_, f32>,
    labels: Global<'_, u32>,
    picks: Global<'_, u32>,
    ranks: Global<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
    gamma: f32,
) {
    let i = ctx.index_1d() as usize;
    let (n, k, d_len) = (tokens as usize, clusters as usize, hidden as usize);
    if i >= batch as usize * n * d_len {
        return;
    }
    let (row, d) = (i / d_len, i % d_len);
    let (b, token) = (row / n, row % n);
    let slot = b * k + ctx.load(labels, row) as usize;
    if ctx.load(ranks, slot) == NO_TOKEN {
        return;
    }
    let f = ctx.load(fresh, slot * d_len + d);
    let mut value = ctx.load(cache0.as_global(), i);
    if ctx.load(picks, slot) as usize == token {
        value = f;
    }
    ctx.store(cache0, i, f * gamma + value * (1.0 - gamma));
}
