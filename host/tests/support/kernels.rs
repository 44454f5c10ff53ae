//! Slice-in, slice-out launches of the DiT kernels on a fresh `SimDevice`, for the kernel tests:
//! the inputs are uploaded, the kernel launched through the same typed launch function the
//! pipeline uses (`pipeline::launch`), the outputs read back. A wrong length shows up as an
//! out-of-bounds error of the kernel, exactly as on a GPU under compute-sanitizer.

// One parameter per kernel parameter, as the kernels take them.
#![allow(clippy::too_many_arguments)]

use resca_gpu_kernels::ddim::DdimCoefficients;

use resca_host::pipeline::device::{Device, DeviceError, Element, Slice};
use resca_host::pipeline::launch;
use resca_host::sim::SimDevice;

pub use resca_host::pipeline::launch::Epilogue;

/// Uploads `data` to a new buffer of `dev`.
fn input<T: Element>(dev: &mut SimDevice, data: &[T]) -> Result<Slice<T>, DeviceError> {
    Ok(dev.upload_new(data)?.all())
}

/// Reads `slice` back into `out`.
fn output<T: Element>(dev: &mut SimDevice, slice: Slice<T>, out: &mut [T]) -> Result<(), DeviceError> {
    dev.download(slice, out)
}

/// Timestep features (B, 256) of the model times `t` (B).
pub fn timestep_features(t: &[f32], out: &mut [f32]) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (ti, o) = (input(dev, t)?, input(dev, out)?);
    launch::timestep_features(dev, ti, o)?;
    output(dev, o, out)
}

/// `out (rows, out_f) = x W^T + b`, SiLU'd when `silu_out`.
pub fn linear_rows(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    rows: usize,
    in_features: usize,
    out_features: usize,
    silu_out: bool,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (xi, wi, bi, o) = (input(dev, x)?, input(dev, w)?, input(dev, bias)?, input(dev, out)?);
    launch::linear_rows(dev, xi, wi, bi, o, rows, in_features, out_features, silu_out)?;
    output(dev, o, out)
}

/// `silu_c (B, D) = SiLU(t_emb + table[labels])`.
pub fn label_embed_silu(
    t_emb: &[f32],
    table: &[f32],
    labels: &[u32],
    silu_c: &mut [f32],
    hidden: usize,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (ti, tab, li, o) = (
        input(dev, t_emb)?,
        input(dev, table)?,
        input(dev, labels)?,
        input(dev, silu_c)?,
    );
    launch::label_embed_silu(dev, ti, tab, li, o, hidden)?;
    output(dev, o, silu_c)
}

/// Patch embedding + bias + pos_embed: images (B, C, S, S) to tokens (B N, D).
pub fn patch_embed(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    pos: &[f32],
    out: &mut [f32],
    batch: usize,
    channels: usize,
    side: usize,
    patch: usize,
    hidden: usize,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (xi, wi, bi, pi) = (input(dev, x)?, input(dev, w)?, input(dev, bias)?, input(dev, pos)?);
    let o = input(dev, out)?;
    launch::patch_embed(dev, xi, wi, bi, pi, o, batch, channels, side, patch, hidden)?;
    output(dev, o, out)
}

/// `out = LN(x) (1 + scale) + shift` for token rows (rows, D).
pub fn layer_norm_modulate(
    x: &[f32],
    modulation: &[f32],
    out: &mut [f32],
    rows: usize,
    hidden: usize,
    tokens: usize,
    mod_stride: usize,
    shift_offset: usize,
    scale_offset: usize,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (xi, mi, o) = (input(dev, x)?, input(dev, modulation)?, input(dev, out)?);
    launch::layer_norm_modulate(
        dev,
        xi,
        mi,
        o,
        rows,
        hidden,
        tokens,
        mod_stride,
        shift_offset,
        scale_offset,
    )?;
    output(dev, o, out)
}

/// `out (M, N) = A (M, K) W^T (W: N x K) + b`, with the chosen epilogue.
pub fn gemm(
    a: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    epilogue: Epilogue,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (ai, wi, bi, o) = (input(dev, a)?, input(dev, w)?, input(dev, bias)?, input(dev, out)?);
    launch::gemm(dev, ai, wi, bi, o, m, n, k, epilogue)?;
    output(dev, o, out)
}

/// `x (M, N) += gate * (A W^T + b)`.
pub fn gemm_gated_residual(
    a: &[f32],
    w: &[f32],
    bias: &[f32],
    x: &mut [f32],
    gate: &[f32],
    m: usize,
    n: usize,
    k: usize,
    tokens: usize,
    gate_stride: usize,
    gate_offset: usize,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (ai, wi, bi, gi) = (input(dev, a)?, input(dev, w)?, input(dev, bias)?, input(dev, gate)?);
    let xo = input(dev, x)?;
    launch::gemm_gated_residual(dev, ai, wi, bi, xo, gi, m, n, k, tokens, gate_stride, gate_offset)?;
    output(dev, xo, x)
}

/// Multi-head attention: `qkv` (B N, 3 H hd) to `out` (B N, H hd).
pub fn attention(
    qkv: &[f32],
    out: &mut [f32],
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (qi, o) = (input(dev, qkv)?, input(dev, out)?);
    launch::attention(dev, qi, o, batch, tokens, heads, head_dim)?;
    output(dev, o, out)
}

/// Multi-head attention on tensor cores in a fast `precision`.
pub fn attention_tc(
    precision: launch::Precision,
    qkv: &[f32],
    out: &mut [f32],
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (qi, o) = (input(dev, qkv)?, input(dev, out)?);
    launch::attention_tc(dev, precision, qi, o, batch, tokens, heads, head_dim)?;
    output(dev, o, out)
}

/// Final-layer tokens (B N, p p C_out) to images (B, C_out, S, S).
pub fn unpatchify(
    tokens: &[f32],
    out: &mut [f32],
    batch: usize,
    out_channels: usize,
    side: usize,
    patch: usize,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (ti, o) = (input(dev, tokens)?, input(dev, out)?);
    launch::unpatchify(dev, ti, o, batch, out_channels, side, patch)?;
    output(dev, o, out)
}

/// Guidance in place on a (2 pairs, C_out, pixels) model output.
pub fn cfg_mix(
    out: &mut [f32],
    pairs: usize,
    out_channels: usize,
    pixels: usize,
    scale: f32,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let o = input(dev, out)?;
    launch::cfg_mix(dev, o, pairs, out_channels, pixels, scale)?;
    output(dev, o, out)
}

/// One DDIM step: `out` (B, C, pixels) from `x` and the model output (B, C_out, pixels).
pub fn ddim_step(
    x: &[f32],
    model_out: &[f32],
    out: &mut [f32],
    channels: usize,
    out_channels: usize,
    pixels: usize,
    coef: DdimCoefficients,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (xi, mi, o) = (input(dev, x)?, input(dev, model_out)?, input(dev, out)?);
    launch::ddim_step(dev, xi, mi, o, channels, out_channels, pixels, coef)?;
    output(dev, o, out)
}

/// `x (rows, D) += gate * branch`.
pub fn gated_add(
    x: &mut [f32],
    branch: &[f32],
    gate: &[f32],
    rows: usize,
    hidden: usize,
    tokens: usize,
    gate_stride: usize,
    gate_offset: usize,
) -> Result<(), DeviceError> {
    let dev = &mut SimDevice::new();
    let (xo, bi, gi) = (input(dev, x)?, input(dev, branch)?, input(dev, gate)?);
    launch::gated_add(dev, xo, bi, gi, rows, hidden, tokens, gate_stride, gate_offset)?;
    output(dev, xo, x)
}

/// Test-only tensor-core kernels: one warp's `mma.sync` with its fragments loaded straight
/// from global memory by the PTX ISA tables, and a deliberate mistake to show that the
/// simulator's model notices a wrong fragment index.
pub mod tensor_core {
    use resca_gpu_kernels::{Global, GlobalMut, ThreadCtx};

    /// Which fragment table to follow.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fragments {
        /// The PTX ISA's.
        Correct,
        /// A's second register from row g instead of g + 8 (a plausible slip).
        WrongARow,
    }

    /// `d (16, 8) = a (16, 8) w (8, 8)^T + c` by one `mma.sync.m16n8k8` TF32, every element of
    /// `a` and `w` rounded to TF32 on the way in. Launch with one warp.
    pub fn mma_tf32_tile<C: ThreadCtx>(
        ctx: &C,
        a: Global<'_, f32>,
        w: Global<'_, f32>,
        c: Global<'_, f32>,
        d: GlobalMut<'_, f32>,
        fragments: Fragments,
    ) {
        let lane = ctx.lane_id() as usize;
        let (g, t) = (lane / 4, lane % 4);
        let a1_row = if fragments == Fragments::Correct { g + 8 } else { g };
        let at = |row: usize, k: usize| ctx.tf32(ctx.load(a, row * 8 + k)).to_bits();
        let wt = |n: usize, k: usize| ctx.tf32(ctx.load(w, n * 8 + k)).to_bits();
        let af = [at(g, t), at(a1_row, t), at(g, t + 4), at(g + 8, t + 4)];
        let bf = [wt(g, t), wt(g, t + 4)];
        let cells = [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)];
        let cf = cells.map(|(r, col)| ctx.load(c, r * 8 + col));
        let df = ctx.mma_tf32_m16n8k8(af, bf, cf);
        for ((r, col), v) in cells.into_iter().zip(df) {
            ctx.store(d, r * 8 + col, v);
        }
    }

    /// `d (16, 8) = a (16, 16) w (8, 16)^T + c` by one `mma.sync.m16n8k16` BF16. Launch with one
    /// warp.
    pub fn mma_bf16_tile<C: ThreadCtx>(
        ctx: &C,
        a: Global<'_, f32>,
        w: Global<'_, f32>,
        c: Global<'_, f32>,
        d: GlobalMut<'_, f32>,
        fragments: Fragments,
    ) {
        let lane = ctx.lane_id() as usize;
        let (g, t) = (lane / 4, lane % 4);
        let a1_row = if fragments == Fragments::Correct { g + 8 } else { g };
        let ap = |row: usize, k: usize| ctx.bf16x2(ctx.load(a, row * 16 + k), ctx.load(a, row * 16 + k + 1));
        let wp = |n: usize, k: usize| ctx.bf16x2(ctx.load(w, n * 16 + k), ctx.load(w, n * 16 + k + 1));
        let af = [ap(g, 2 * t), ap(a1_row, 2 * t), ap(g, 2 * t + 8), ap(g + 8, 2 * t + 8)];
        let bf = [wp(g, 2 * t), wp(g, 2 * t + 8)];
        let cells = [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)];
        let cf = cells.map(|(r, col)| ctx.load(c, r * 8 + col));
        let df = ctx.mma_bf16_m16n8k16(af, bf, cf);
        for ((r, col), v) in cells.into_iter().zip(df) {
            ctx.store(d, r * 8 + col, v);
        }
    }

    /// The same TF32 tile with A and W staged in shared memory by `cp.async` (16 bytes per
    /// copy) and the fragments read by `ldmatrix.x4`: A's four 8 x 4 quarters are the four
    /// matrices (rows 0..8 and 8..16, k 0..4 and 4..8), W's two halves of k fill `x2`.
    /// `wait` false leaves out the `cp.async.wait_group` (a race the simulator must report).
    /// Shared memory: 16 x 8 + 8 x 8 words.
    pub fn ldmatrix_mma_tf32_tile<C: ThreadCtx>(
        ctx: &C,
        a: Global<'_, f32>,
        w: Global<'_, f32>,
        d: GlobalMut<'_, f32>,
        wait: bool,
    ) {
        const W_BASE: usize = 16 * 8;
        let lane = ctx.lane_id() as usize;
        // 32 lanes, one 16-byte chunk each of A (32 chunks) and of W (16 chunks).
        ctx.cp_async(4 * lane, a, 4 * lane, 4, true);
        if lane < 16 {
            ctx.cp_async(W_BASE + 4 * lane, w, 4 * lane, 4, true);
        }
        ctx.cp_async_commit();
        if wait {
            ctx.cp_async_wait(0);
        }
        ctx.sync_threads();
        let (quarter, r) = (lane / 8, lane % 8);
        let a_row = (r + 8 * (quarter % 2)) * 8 + 4 * (quarter / 2);
        let af = ctx.ldmatrix_x4(a_row).map(|x| ctx.tf32(f32::from_bits(x)).to_bits());
        let w_row = W_BASE + r * 8 + 4 * (quarter % 2);
        let bf = ctx.ldmatrix_x2(w_row).map(|x| ctx.tf32(f32::from_bits(x)).to_bits());
        let df = ctx.mma_tf32_m16n8k8(af, bf, [0.0; 4]);
        let (g, t) = (lane / 4, lane % 4);
        let cells = [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)];
        for ((row, col), v) in cells.into_iter().zip(df) {
            ctx.store(d, row * 8 + col, v);
        }
    }
}
