//! One DDIM update (eta = 0, no clipping), docs/algorithms.md section 2, with the schedule's
//! coefficients computed on the host in float64 and rounded to float32 exactly as the reference
//! does.

use crate::global::{Global, GlobalMut};
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// The four float32 coefficients of a step (see `resca_reference::ddim::DdimSchedule::step`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimCoefficients {
    /// `sqrt(1 / abar)`.
    pub recip: f32,
    /// `sqrt(1 / abar - 1)`.
    pub recip_m1: f32,
    /// `sqrt(abar_prev)`.
    pub sqrt_prev: f32,
    /// `sqrt(1 - abar_prev)`.
    pub sqrt_one_minus_prev: f32,
}

/// Threads per block of [`ddim_step`].
pub const DDIM_THREADS: u32 = 256;

/// One thread per element of x.
pub fn ddim_step_dims(total: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(total, DDIM_THREADS)),
        block: Dim3::x(DDIM_THREADS),
        shared_bytes: 0,
    }
}

/// `x_prev` from `x` (B, C, pixels) and the model output (B, C_out, pixels), whose first C
/// channels are eps: `x0 = r x - r1 eps`, `eps' = (r x - x0) / r1`, `x_prev = x0 sp + s1p eps'`.
///
/// Mapping: thread i updates element i of x (coalesced reads and writes; eps read at the same
/// pixel of the wider output tensor).
pub fn ddim_step<C: ThreadCtx>(
    ctx: &C,
    x: Global<'_, f32>,
    model_out: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    total: u32,
    channels: u32,
    out_channels: u32,
    pixels: u32,
    coef: DdimCoefficients,
) {
    let i = ctx.index_1d() as usize;
    if i >= total as usize {
        return;
    }
    let (c_len, hw) = (channels as usize, pixels as usize);
    let (p, c, b) = (i % hw, (i / hw) % c_len, i / (hw * c_len));
    let eps = ctx.load(model_out, (b * out_channels as usize + c) * hw + p);
    let xv = ctx.load(x, i);
    let x0 = coef.recip * xv - coef.recip_m1 * eps;
    let eps_again = (coef.recip * xv - x0) / coef.recip_m1;
    ctx.store(out, i, x0 * coef.sqrt_prev + coef.sqrt_one_minus_prev * eps_again);
}
