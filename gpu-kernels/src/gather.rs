//! Gather and scatter of token rows by per-batch-row token indices: the K proxy (or picked)
//! tokens of every batch row are gathered into a dense (B K, D) matrix whose MLP is computed, and
//! their fresh outputs are scattered back into the (B N, D) branch output.

use crate::global::{Global, GlobalMut};
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// Threads per block of the gather and scatter kernels.
pub const GATHER_THREADS: u32 = 256;

/// One thread per element of the (B K, D) side.
pub fn gather_dims(total: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(total, GATHER_THREADS)),
        block: Dim3::x(GATHER_THREADS),
        shared_bytes: 0,
    }
}

/// `out[b K + c] = src[b N + indices[b K + c]]` for rows of D features: `out` holds
/// `batch * per_row` rows.
///
/// Mapping: thread i owns element i of `out` (consecutive threads copy consecutive features of
/// one row: coalesced).
pub fn gather_rows<C: ThreadCtx>(
    ctx: &C,
    src: Global<'_, f32>,
    indices: Global<'_, u32>,
    out: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    per_row: u32,
    hidden: u32,
) {
    let i = ctx.index_1d() as usize;
    let (k, d_len) = (per_row as usize, hidden as usize);
    if i >= batch as usize * k * d_len {
        return;
    }
    let (slot, d) = (i / d_len, i % d_len);
    let row = (slot / k) * tokens as usize + ctx.load(indices, slot) as usize;
    ctx.store(out, i, ctx.load(src, row * d_len + d));
}

/// `dst[b N + indices[b K + c]] = rows[b K + c]` for every (b, c); where several c of a batch row
/// name the same token, the last one wins (as sequential assignments in cluster order).
///
/// Mapping: thread i owns element i of `rows`; it skips its write when a later cluster of the
/// same row has the same token, so no element is written twice.
pub fn scatter_rows<C: ThreadCtx>(
    ctx: &C,
    rows: Global<'_, f32>,
    indices: Global<'_, u32>,
    dst: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    per_row: u32,
    hidden: u32,
) {
    let i = ctx.index_1d() as usize;
    let (k, d_len) = (per_row as usize, hidden as usize);
    if i >= batch as usize * k * d_len {
        return;
    }
    let (slot, d) = (i / d_len, i % d_len);
    let (b, c) = (slot / k, slot % k);
    let token = ctx.load(indices, slot);
    for later in c + 1..k {
        if ctx.load(indices, b * k + later) == token {
            return;
        }
    }
    let row = b * tokens as usize + token as usize;
    ctx.store(dst, row * d_len + d, ctx.load(rows, i));
}
