//! Host-side launches of every kernel through the simulator: slices in, the kernel's own launch
//! geometry (`*_dims` of `resca-gpu-kernels`), one [`launch`] per call. The slices are the
//! simulator's device memory; a wrong length shows up as an out-of-bounds error of the kernel,
//! exactly as on a GPU under compute-sanitizer.

// One parameter per kernel parameter, as the kernels take them.
#![allow(clippy::too_many_arguments)]

use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::{Global, GlobalMut, attention, ddim, embed, final_layer, gemm, guidance, norm, residual};

use super::{SimError, launch};

/// A size as a kernel's u32 parameter.
fn dim(kernel: &str, name: &str, value: usize) -> Result<u32, SimError> {
    u32::try_from(value).map_err(|_| SimError::InvalidLaunch {
        kernel: kernel.to_string(),
        reason: format!("{name} = {value} does not fit a u32 kernel parameter"),
    })
}

/// Timestep features (B, 256) of the model times `t` (B).
pub fn timestep_features(t: &[f32], out: &mut [f32]) -> Result<(), SimError> {
    const NAME: &str = "timestep_features";
    if t.is_empty() {
        return Ok(());
    }
    let (t, out) = (Global::new(t), GlobalMut::new(out));
    launch(
        NAME,
        embed::timestep_features_dims(dim(NAME, "batch", t.len())?),
        |ctx| embed::timestep_features(ctx, t, out),
    )
}

/// `out (rows, out_f) = x W^T + b`, SiLU'd when `silu_out`: the GEMV of the t-embedder and adaLN.
pub fn linear_rows(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    rows: usize,
    in_features: usize,
    out_features: usize,
    silu_out: bool,
) -> Result<(), SimError> {
    let name = if silu_out { "linear_rows_silu" } else { "linear_rows" };
    if rows == 0 || out_features == 0 {
        return Ok(());
    }
    let (x, w, bias, out) = (Global::new(x), Global::new(w), Global::new(bias), GlobalMut::new(out));
    let (r, i, o) = (
        dim(name, "rows", rows)?,
        dim(name, "in_features", in_features)?,
        dim(name, "out_features", out_features)?,
    );
    let dims = embed::linear_rows_dims(o);
    if silu_out {
        launch(name, dims, |ctx| {
            embed::linear_rows::<_, true>(ctx, x, w, bias, out, r, i, o)
        })
    } else {
        launch(name, dims, |ctx| {
            embed::linear_rows::<_, false>(ctx, x, w, bias, out, r, i, o)
        })
    }
}

/// `silu_c (B, D) = SiLU(t_emb + table[labels])`.
pub fn label_embed_silu(
    t_emb: &[f32],
    table: &[f32],
    labels: &[u32],
    silu_c: &mut [f32],
    hidden: usize,
) -> Result<(), SimError> {
    const NAME: &str = "label_embed_silu";
    if labels.is_empty() || hidden == 0 {
        return Ok(());
    }
    let batch = dim(NAME, "batch", labels.len())?;
    let hidden = dim(NAME, "hidden", hidden)?;
    let (t_emb, table, labels, silu_c) = (
        Global::new(t_emb),
        Global::new(table),
        Global::new(labels),
        GlobalMut::new(silu_c),
    );
    launch(NAME, embed::label_embed_silu_dims(batch, hidden), |ctx| {
        embed::label_embed_silu(ctx, t_emb, table, labels, silu_c, hidden)
    })
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
) -> Result<(), SimError> {
    const NAME: &str = "patch_embed";
    if channels * patch * patch > embed::MAX_PATCH_FEATURES as usize {
        return Err(SimError::InvalidLaunch {
            kernel: NAME.to_string(),
            reason: format!(
                "C p p = {} exceeds the kernel's {} staged pixels per token",
                channels * patch * patch,
                embed::MAX_PATCH_FEATURES
            ),
        });
    }
    if batch == 0 || side < patch || patch == 0 {
        return Ok(());
    }
    let tokens = (side / patch) * (side / patch);
    let dims = embed::patch_embed_dims(dim(NAME, "batch", batch)?, dim(NAME, "tokens", tokens)?);
    let (c, s, p, d) = (
        dim(NAME, "channels", channels)?,
        dim(NAME, "side", side)?,
        dim(NAME, "patch", patch)?,
        dim(NAME, "hidden", hidden)?,
    );
    let (x, w, bias, pos, out) = (
        Global::new(x),
        Global::new(w),
        Global::new(bias),
        Global::new(pos),
        GlobalMut::new(out),
    );
    launch(NAME, dims, |ctx| {
        embed::patch_embed(ctx, x, w, bias, pos, out, c, s, p, d)
    })
}

/// `out = LN(x) (1 + scale) + shift` for token rows (rows, D); row r uses sample `r / tokens`'s
/// shift and scale at `modulation[b mod_stride + shift_offset ..]` / `[.. + scale_offset ..]`.
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
) -> Result<(), SimError> {
    const NAME: &str = "layer_norm_modulate";
    if rows == 0 {
        return Ok(());
    }
    let r = dim(NAME, "rows", rows)?;
    let params = (
        dim(NAME, "hidden", hidden)?,
        dim(NAME, "tokens", tokens)?,
        dim(NAME, "mod_stride", mod_stride)?,
        dim(NAME, "shift_offset", shift_offset)?,
        dim(NAME, "scale_offset", scale_offset)?,
    );
    let (x, modulation, out) = (Global::new(x), Global::new(modulation), GlobalMut::new(out));
    launch(NAME, norm::layer_norm_modulate_dims(r), |ctx| {
        let (d, t, stride, shift, scale) = params;
        norm::layer_norm_modulate(ctx, x, modulation, out, r, d, t, stride, shift, scale)
    })
}

/// The GEMM epilogue to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    /// `out = A W^T + b`.
    Bias,
    /// `out = GELU_tanh(A W^T + b)`.
    BiasGelu,
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
) -> Result<(), SimError> {
    let name = match epilogue {
        Epilogue::Bias => "gemm_bias",
        Epilogue::BiasGelu => "gemm_bias_gelu",
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n, k) = (dim(name, "m", m)?, dim(name, "n", n)?, dim(name, "k", k)?);
    let (a, w, bias, out) = (Global::new(a), Global::new(w), Global::new(bias), GlobalMut::new(out));
    let dims = gemm::gemm_dims(m, n);
    match epilogue {
        Epilogue::Bias => launch(name, dims, |ctx| gemm::gemm_bias(ctx, a, w, bias, out, m, n, k)),
        Epilogue::BiasGelu => launch(name, dims, |ctx| gemm::gemm_bias_gelu(ctx, a, w, bias, out, m, n, k)),
    }
}

/// `x (M, N) += gate * (A W^T + b)`, row r gated by `gate[(r / tokens) gate_stride + gate_offset ..]`.
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
) -> Result<(), SimError> {
    const NAME: &str = "gemm_bias_gated_residual";
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n, k) = (dim(NAME, "m", m)?, dim(NAME, "n", n)?, dim(NAME, "k", k)?);
    let (t, gs, go) = (
        dim(NAME, "tokens", tokens)?,
        dim(NAME, "gate_stride", gate_stride)?,
        dim(NAME, "gate_offset", gate_offset)?,
    );
    let (a, w, bias, x, gate) = (
        Global::new(a),
        Global::new(w),
        Global::new(bias),
        GlobalMut::new(x),
        Global::new(gate),
    );
    launch(NAME, gemm::gemm_dims(m, n), |ctx| {
        gemm::gemm_bias_gated_residual(ctx, a, w, bias, x, gate, m, n, k, t, gs, go)
    })
}

/// Multi-head attention: `qkv` (B N, 3 H hd) to `out` (B N, H hd), scale `1/sqrt(hd)`.
pub fn attention(
    qkv: &[f32],
    out: &mut [f32],
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(), SimError> {
    const NAME: &str = "attention";
    if head_dim > attention::ATTN_MAX_HEAD_DIM as usize || head_dim == 0 {
        return Err(SimError::InvalidLaunch {
            kernel: NAME.to_string(),
            reason: format!("head_dim {head_dim} outside 1..={}", attention::ATTN_MAX_HEAD_DIM),
        });
    }
    if batch == 0 || tokens == 0 || heads == 0 {
        return Ok(());
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (b, n, h, hd) = (
        dim(NAME, "batch", batch)?,
        dim(NAME, "tokens", tokens)?,
        dim(NAME, "heads", heads)?,
        dim(NAME, "head_dim", head_dim)?,
    );
    let (qkv, out) = (Global::new(qkv), GlobalMut::new(out));
    launch(NAME, attention::attention_dims(b, n, h), |ctx| {
        attention::attention(ctx, qkv, out, n, h, hd, scale)
    })
}

/// Final-layer tokens (B N, p p C_out) to images (B, C_out, S, S).
pub fn unpatchify(
    tokens: &[f32],
    out: &mut [f32],
    batch: usize,
    out_channels: usize,
    side: usize,
    patch: usize,
) -> Result<(), SimError> {
    const NAME: &str = "unpatchify";
    let total = batch * out_channels * side * side;
    if total == 0 {
        return Ok(());
    }
    let dims = final_layer::unpatchify_dims(dim(NAME, "total", total)?);
    let (b, oc, s, p) = (
        dim(NAME, "batch", batch)?,
        dim(NAME, "out_channels", out_channels)?,
        dim(NAME, "side", side)?,
        dim(NAME, "patch", patch)?,
    );
    let (tokens, out) = (Global::new(tokens), GlobalMut::new(out));
    launch(NAME, dims, |ctx| final_layer::unpatchify(ctx, tokens, out, b, oc, s, p))
}

/// Guidance in place on a (2 pairs, C_out, pixels) model output.
pub fn cfg_mix(out: &mut [f32], pairs: usize, out_channels: usize, pixels: usize, scale: f32) -> Result<(), SimError> {
    const NAME: &str = "cfg_mix";
    if pairs == 0 || out_channels == 0 || pixels == 0 {
        return Ok(());
    }
    let (p, oc, hw) = (
        dim(NAME, "pairs", pairs)?,
        dim(NAME, "out_channels", out_channels)?,
        dim(NAME, "pixels", pixels)?,
    );
    let out = GlobalMut::new(out);
    launch(NAME, guidance::cfg_mix_dims(p, oc, hw), |ctx| {
        guidance::cfg_mix(ctx, out, p, oc, hw, scale)
    })
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
) -> Result<(), SimError> {
    const NAME: &str = "ddim_step";
    if x.is_empty() {
        return Ok(());
    }
    let total = dim(NAME, "total", x.len())?;
    let (c, oc, hw) = (
        dim(NAME, "channels", channels)?,
        dim(NAME, "out_channels", out_channels)?,
        dim(NAME, "pixels", pixels)?,
    );
    let (x, model_out, out) = (Global::new(x), Global::new(model_out), GlobalMut::new(out));
    launch(NAME, ddim::ddim_step_dims(total), |ctx| {
        ddim::ddim_step(ctx, x, model_out, out, total, c, oc, hw, coef)
    })
}

/// `x (rows, D) += gate * branch`, row r gated by `gate[(r / tokens) gate_stride + gate_offset ..]`.
pub fn gated_add(
    x: &mut [f32],
    branch: &[f32],
    gate: &[f32],
    rows: usize,
    hidden: usize,
    tokens: usize,
    gate_stride: usize,
    gate_offset: usize,
) -> Result<(), SimError> {
    const NAME: &str = "gated_add";
    if rows == 0 || hidden == 0 {
        return Ok(());
    }
    let total = dim(NAME, "total", rows * hidden)?;
    let (r, d, t, gs, go) = (
        dim(NAME, "rows", rows)?,
        dim(NAME, "hidden", hidden)?,
        dim(NAME, "tokens", tokens)?,
        dim(NAME, "gate_stride", gate_stride)?,
        dim(NAME, "gate_offset", gate_offset)?,
    );
    let (x, branch, gate) = (GlobalMut::new(x), Global::new(branch), Global::new(gate));
    launch(NAME, residual::gated_add_dims(total), |ctx| {
        residual::gated_add(ctx, x, branch, gate, r, d, t, gs, go)
    })
}
