//! TaylorSeer caches of branch outputs (docs/algorithms.md section 4): the finite-difference update
//! of the factors `F_0 .. F_k` at a computed step and the Taylor prediction `sum_i F_i d^i / i!` at
//! a cached one, optionally fused with the gated residual add of adaLN-Zero.
//!
//! A cache is one buffer of `orders` slots of `len` elements each (`F_i` at `[i len ..]`); the
//! host tracks how many slots hold factors, as `resca_reference::cache::taylor` tracks
//! `orders.len()`. Operations and their order match the reference exactly.

use crate::global::{Global, GlobalMut};
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// Largest Taylor order a cache holds (factors `F_0 .. F_4`).
pub const MAX_TAYLOR_ORDER: u32 = 4;
/// Threads per block of the Taylor kernels.
pub const TAYLOR_THREADS: u32 = 256;

/// The float32 coefficients of a prediction at distance d: `scale_i = 1/i!` and `power_i = d^i`
/// for i = 1..4, computed on the host exactly as the reference computes them (`powi`, an f64
/// factorial rounded once).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaylorCoefficients {
    pub scale1: f32,
    pub power1: f32,
    pub scale2: f32,
    pub power2: f32,
    pub scale3: f32,
    pub power3: f32,
    pub scale4: f32,
    pub power4: f32,
}

/// How many f32 values a [`TaylorCoefficients`] is in a device buffer
/// ([`TaylorCoefficients::to_values`]).
pub const TAYLOR_COEFFICIENT_VALUES: usize = 8;

impl TaylorCoefficients {
    /// The coefficients as the values of a device buffer, in field order: what
    /// [`taylor_predict_gated_add`] reads, so that a captured graph reads the coefficients the
    /// host uploaded for the step instead of the ones it was captured with.
    pub fn to_values(&self) -> [f32; TAYLOR_COEFFICIENT_VALUES] {
        [
            self.scale1,
            self.power1,
            self.scale2,
            self.power2,
            self.scale3,
            self.power3,
            self.scale4,
            self.power4,
        ]
    }

    /// The coefficients from a buffer of [`TaylorCoefficients::to_values`].
    #[inline(always)]
    fn load<C: ThreadCtx>(ctx: &C, values: Global<'_, f32>) -> Self {
        TaylorCoefficients {
            scale1: ctx.load(values, 0),
            power1: ctx.load(values, 1),
            scale2: ctx.load(values, 2),
            power2: ctx.load(values, 3),
            scale3: ctx.load(values, 4),
            power3: ctx.load(values, 5),
            scale4: ctx.load(values, 6),
            power4: ctx.load(values, 7),
        }
    }
}

/// One thread per cached element.
pub fn taylor_dims(len: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(len, TAYLOR_THREADS)),
        block: Dim3::x(TAYLOR_THREADS),
        shared_bytes: 0,
    }
}

/// The update with a new output: `F_0 = new` and, for i < min(`stored`, `max_order`),
/// `F_{i+1} = (F_i(new) - F_i(old)) / gap`; `stored` is the number of factors held before (the
/// cache then holds `min(stored, max_order) + 1`).
///
/// Mapping: thread e owns element e of every factor; it reads the old `F_i` before writing the
/// new one, so the update is in place.
pub fn taylor_update<C: ThreadCtx>(
    ctx: &C,
    factors: GlobalMut<'_, f32>,
    new: Global<'_, f32>,
    len: u32,
    stored: u32,
    max_order: u32,
    gap: f32,
) {
    let e = ctx.index_1d() as usize;
    let len = len as usize;
    if e >= len {
        return;
    }
    let derivatives = stored.min(max_order) as usize;
    let mut value = ctx.load(new, e);
    for i in 0..=derivatives {
        let slot = i * len + e;
        let old = if i < derivatives {
            ctx.load(factors.as_global(), slot)
        } else {
            0.0
        };
        ctx.store(factors, slot, value);
        if i < derivatives {
            value = (value - old) / gap;
        }
    }
}

/// `sum_i F_i d^i / i!` over the `stored` factors, accumulated lowest order first as
/// `F_0 + (F_1 / 1!) d + (F_2 / 2!) d^2 + ...` (each term `(F_i scale_i) power_i`).
#[inline(always)]
fn predict_at<C: ThreadCtx>(
    ctx: &C,
    factors: Global<'_, f32>,
    e: usize,
    len: usize,
    stored: u32,
    coef: &TaylorCoefficients,
) -> f32 {
    let mut out = ctx.load(factors, e);
    if stored > 1 {
        out += ctx.load(factors, len + e) * coef.scale1 * coef.power1;
    }
    if stored > 2 {
        out += ctx.load(factors, 2 * len + e) * coef.scale2 * coef.power2;
    }
    if stored > 3 {
        out += ctx.load(factors, 3 * len + e) * coef.scale3 * coef.power3;
    }
    if stored > 4 {
        out += ctx.load(factors, 4 * len + e) * coef.scale4 * coef.power4;
    }
    out
}

/// `out = sum_i F_i d^i / i!` (the predicted branch output).
///
/// Mapping: thread e computes element e (launch with [`taylor_dims`]).
pub fn taylor_predict<C: ThreadCtx>(
    ctx: &C,
    factors: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    len: u32,
    stored: u32,
    coef: TaylorCoefficients,
) {
    let e = ctx.index_1d() as usize;
    if e >= len as usize {
        return;
    }
    ctx.store(out, e, predict_at(ctx, factors, e, len as usize, stored, &coef));
}

/// `x += gate * prediction` for token rows (rows, D): the cached branch fused with the gated
/// residual add; row r is gated by `gate[(r / tokens) gate_stride + gate_offset ..]`. The
/// coefficients come from a device buffer (`coef`, [`TaylorCoefficients::to_values`]): they
/// change every sparse step, and a sparse step is replayed as a captured graph.
///
/// Mapping: thread e owns element e of x (launch with [`taylor_dims`] of rows * D).
pub fn taylor_predict_gated_add<C: ThreadCtx>(
    ctx: &C,
    x: GlobalMut<'_, f32>,
    factors: Global<'_, f32>,
    gate: Global<'_, f32>,
    rows: u32,
    hidden: u32,
    tokens: u32,
    gate_stride: u32,
    gate_offset: u32,
    stored: u32,
    coef: Global<'_, f32>,
) {
    let e = ctx.index_1d() as usize;
    let (d_len, len) = (hidden as usize, rows as usize * hidden as usize);
    if e >= len {
        return;
    }
    let (r, d) = (e / d_len, e % d_len);
    let g = ctx.load(
        gate,
        (r / tokens as usize) * gate_stride as usize + gate_offset as usize + d,
    );
    let coef = TaylorCoefficients::load(ctx, coef);
    let predicted = predict_at(ctx, factors, e, len, stored, &coef);
    ctx.store(x, e, ctx.load(x.as_global(), e) + g * predicted);
}
