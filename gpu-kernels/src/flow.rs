//! One Euler step of the rectified-flow sampler (docs/algorithms.md section 3): `x + dt v`, with
//! `dt` computed on the host in float64 and rounded to float32 as the reference does.

use crate::global::{Global, GlobalMut};
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// Threads per block of [`flow_euler_step`].
pub const FLOW_THREADS: u32 = 256;

/// One thread per element of x.
pub fn flow_euler_step_dims(total: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(total, FLOW_THREADS)),
        block: Dim3::x(FLOW_THREADS),
        shared_bytes: 0,
    }
}

/// `out = x + dt v` for x (B, C, pixels), where the velocity v is the first C channels of the
/// model output (B, C_out, pixels). `out` may be `x` itself (each element is read and written by
/// one thread).
///
/// Mapping: thread i updates element i of x (coalesced; v read at the same pixel of the wider
/// output tensor).
pub fn flow_euler_step<C: ThreadCtx>(
    ctx: &C,
    x: Global<'_, f32>,
    model_out: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    total: u32,
    channels: u32,
    out_channels: u32,
    pixels: u32,
    dt: f32,
) {
    let i = ctx.index_1d() as usize;
    if i >= total as usize {
        return;
    }
    let (c_len, hw) = (channels as usize, pixels as usize);
    let (p, c, b) = (i % hw, (i / hw) % c_len, i / (hw * c_len));
    let v = ctx.load(model_out, (b * out_channels as usize + c) * hw + p);
    ctx.store(out, i, ctx.load(x, i) + dt * v);
}
