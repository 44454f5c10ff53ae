//! The end of the network: the final layer is `layer_norm_modulate` (shift, scale from the final
//! adaLN) followed by `gemm_bias` (`final_layer.linear`); this module adds the unpatchify that
//! turns its token vectors (B N, p p C_out) into images (B, C_out, H, W).

use crate::global::{Global, GlobalMut};
use crate::thread::{Dim3, LaunchDims, ThreadCtx, div_ceil};

/// Threads per block of [`unpatchify`].
pub const UNPATCHIFY_THREADS: u32 = 256;

/// One thread per output pixel value, `ceil(B C H W / 256)` blocks.
pub fn unpatchify_dims(total: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::x(div_ceil(total, UNPATCHIFY_THREADS)),
        block: Dim3::x(UNPATCHIFY_THREADS),
        shared_bytes: 0,
    }
}

/// `out[b, ch, h p + pi, w p + qi] = tokens[b N + h (S/p) + w, (pi p + qi) C_out + ch]`.
///
/// Mapping: thread i writes output element i of the (B, C_out, S, S) image, so the stores are
/// coalesced; the reads gather from the token rows (p p C_out contiguous values per token, which
/// neighbouring threads mostly share).
pub fn unpatchify<C: ThreadCtx>(
    ctx: &C,
    tokens: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    batch: u32,
    out_channels: u32,
    side: u32,
    patch: u32,
) {
    let i = ctx.index_1d() as usize;
    let (oc, side, patch) = (out_channels as usize, side as usize, patch as usize);
    if i >= batch as usize * oc * side * side {
        return;
    }
    let (col, row) = (i % side, (i / side) % side);
    let ch = (i / (side * side)) % oc;
    let b = i / (side * side * oc);
    let grid_side = side / patch;
    let token = (row / patch) * grid_side + col / patch;
    let width = patch * patch * oc;
    let feature = ((row % patch) * patch + col % patch) * oc + ch;
    ctx.store(
        out,
        i,
        ctx.load(tokens, (b * grid_side * grid_side + token) * width + feature),
    );
}
