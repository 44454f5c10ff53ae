//! Classifier-free guidance exactly as upstream `forward_with_cfg` (docs/algorithms.md
//! section 1.8): the batch is `[cond; uncond]`, channels 0..3 of BOTH halves become
//! `uncond + scale (cond - uncond)`, the other channels stay per row.

use crate::global::GlobalMut;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// Output channels the guidance mixes (upstream hard-codes `[:, :3]`).
pub const GUIDED_CHANNELS: u32 = 3;
/// Threads per block of [`cfg_mix`].
pub const CFG_THREADS: u32 = 256;

/// One thread per (pair, guided channel, pixel).
pub fn cfg_mix_dims(pairs: u32, out_channels: u32, pixels: u32) -> LaunchDims {
    let total = pairs * GUIDED_CHANNELS.min(out_channels) * pixels;
    LaunchDims {
        grid: Dim3::x(div_ceil(total, CFG_THREADS)),
        block: Dim3::x(CFG_THREADS),
        shared_bytes: 0,
    }
}

/// In place on the model output (2 pairs, C_out, pixels): thread i mixes one pixel of one guided
/// channel of pair `row` and writes it to row `row` and row `row + pairs`. Consecutive threads
/// handle consecutive pixels (coalesced); each element is touched by exactly one thread.
pub fn cfg_mix<C: ThreadCtx>(ctx: &C, out: GlobalMut<'_, f32>, pairs: u32, out_channels: u32, pixels: u32, scale: f32) {
    let guided = GUIDED_CHANNELS.min(out_channels) as usize;
    let (pairs, oc, hw) = (pairs as usize, out_channels as usize, pixels as usize);
    let i = ctx.index_1d() as usize;
    if i >= pairs * guided * hw {
        return;
    }
    let (p, ch, row) = (i % hw, (i / hw) % guided, i / (hw * guided));
    let cond_i = (row * oc + ch) * hw + p;
    let uncond_i = ((row + pairs) * oc + ch) * hw + p;
    let read = out.as_global();
    let (cond, uncond) = (ctx.load(read, cond_i), ctx.load(read, uncond_i));
    let mixed = uncond + (cond - uncond) * scale;
    ctx.store(out, cond_i, mixed);
    ctx.store(out, uncond_i, mixed);
}
