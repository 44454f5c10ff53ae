//! The gated residual add of adaLN-Zero on its own, `x += gate * branch`, for steps where the
//! branch output does not come from a GEMM (a cached or predicted branch).

use crate::global::{Global, GlobalMut};
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// Threads per block of [`gated_add`].
pub const GATED_ADD_THREADS: u32 = 256;

/// One thread per element of x (rows x D).
pub fn gated_add_dims(total: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(total, GATED_ADD_THREADS)),
        block: Dim3::x(GATED_ADD_THREADS),
        shared_bytes: 0,
    }
}

/// `x[r, d] += gate[(r / tokens) * gate_stride + gate_offset + d] * branch[r, d]`.
///
/// Mapping: thread i updates element i of x; consecutive threads, consecutive features
/// (coalesced, the gate row is shared by the tokens of a sample and stays in cache).
pub fn gated_add<C: ThreadCtx>(
    ctx: &C,
    x: GlobalMut<'_, f32>,
    branch: Global<'_, f32>,
    gate: Global<'_, f32>,
    rows: u32,
    hidden: u32,
    tokens: u32,
    gate_stride: u32,
    gate_offset: u32,
) {
    let i = ctx.index_1d() as usize;
    let d_len = hidden as usize;
    if i >= rows as usize * d_len {
        return;
    }
    let (r, d) = (i / d_len, i % d_len);
    let g = ctx.load(
        gate,
        (r / tokens as usize) * gate_stride as usize + gate_offset as usize + d,
    );
    ctx.store(x, i, ctx.load(x.as_global(), i) + g * ctx.load(branch, i));
}
