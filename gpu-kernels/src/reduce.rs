//! Warp-level reductions through register shuffles (`shfl.sync.bfly`): five butterfly steps and
//! every lane holds the result, bit-identical across lanes (each step adds the same two values,
//! only in swapped order, and float addition commutes).

use crate::thread::ThreadCtx;

/// Sum over the 32 lanes of the warp; every lane of the warp must call it.
#[track_caller]
#[inline(always)]
pub fn warp_sum<C: ThreadCtx>(ctx: &C, mut value: f32) -> f32 {
    let mut mask = 16;
    while mask > 0 {
        value += ctx.shfl_xor_f32(value, mask);
        mask >>= 1;
    }
    value
}

/// Maximum over the 32 lanes of the warp; every lane of the warp must call it.
#[track_caller]
#[inline(always)]
pub fn warp_max<C: ThreadCtx>(ctx: &C, mut value: f32) -> f32 {
    let mut mask = 16;
    while mask > 0 {
        value = value.max(ctx.shfl_xor_f32(value, mask));
        mask >>= 1;
    }
    value
}
