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
