//! One typed function per kernel: buffers and sizes in, the kernel's own launch geometry (the
//! `*_dims` functions of `resca-gpu-kernels`) and its parameters in entry-point order out, one
//! [`Device::launch`]. Every backend launches a kernel through these, so the sim and CUDA
//! backends run the same launch sequence. Empty launches (a zero size) are skipped.

// One parameter per kernel parameter, as the kernels take them.
#![allow(clippy::too_many_arguments)]

use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::taylor::TaylorCoefficients;
use resca_gpu_kernels::{
    LaunchDims, attention, clusca, ddim, embed, final_layer, flow, gather, gemm, guidance, norm, pdds, residual,
    taylor, tetc,
};

use super::device::{Arg, Device, DeviceError, Kernel, KernelCall, Slice};

/// A size as a kernel's u32 parameter.
fn size(kernel: Kernel, name: &str, value: usize) -> Result<u32, DeviceError> {
    u32::try_from(value).map_err(|_| {
        DeviceError::Invalid(format!(
            "kernel `{}`: {name} = {value} does not fit a u32 parameter",
            kernel.name()
        ))
    })
}

fn run<D: Device>(dev: &mut D, kernel: Kernel, dims: LaunchDims, args: Vec<Arg>) -> Result<(), DeviceError> {
    dev.launch(&KernelCall { kernel, dims, args })
}

fn read<T: crate::pipeline::device::Element>(s: Slice<T>) -> Arg {
    Arg::read(s)
}

fn write<T: crate::pipeline::device::Element>(s: Slice<T>) -> Arg {
    Arg::write(s)
}

/// Timestep features (B, 256) of the model times `t` (B).
pub fn timestep_features<D: Device>(dev: &mut D, t: Slice<f32>, out: Slice<f32>) -> Result<(), DeviceError> {
    let k = Kernel::TimestepFeatures;
    if t.len == 0 {
        return Ok(());
    }
    let dims = embed::timestep_features_dims(size(k, "batch", t.len)?);
    run(dev, k, dims, vec![read(t), write(out)])
}

/// `out (rows, out_f) = x W^T + b`, SiLU'd when `silu_out`: the GEMV of the t-embedder and adaLN.
pub fn linear_rows<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    w: Slice<f32>,
    bias: Slice<f32>,
    out: Slice<f32>,
    rows: usize,
    in_features: usize,
    out_features: usize,
    silu_out: bool,
) -> Result<(), DeviceError> {
    let k = if silu_out {
        Kernel::LinearRowsSilu
    } else {
        Kernel::LinearRows
    };
    if rows == 0 || out_features == 0 {
        return Ok(());
    }
    let o = size(k, "out_features", out_features)?;
    let args = vec![
        read(x),
        read(w),
        read(bias),
        write(out),
        Arg::U32(size(k, "rows", rows)?),
        Arg::U32(size(k, "in_features", in_features)?),
        Arg::U32(o),
    ];
    run(dev, k, embed::linear_rows_dims(o), args)
}

/// `silu_c (B, D) = SiLU(t_emb + table[labels])`.
pub fn label_embed_silu<D: Device>(
    dev: &mut D,
    t_emb: Slice<f32>,
    table: Slice<f32>,
    labels: Slice<u32>,
    silu_c: Slice<f32>,
    hidden: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::LabelEmbedSilu;
    if labels.len == 0 || hidden == 0 {
        return Ok(());
    }
    let h = size(k, "hidden", hidden)?;
    let dims = embed::label_embed_silu_dims(size(k, "batch", labels.len)?, h);
    run(
        dev,
        k,
        dims,
        vec![read(t_emb), read(table), read(labels), write(silu_c), Arg::U32(h)],
    )
}

/// Patch embedding + bias + pos_embed: images (B, C, S, S) to tokens (B N, D).
pub fn patch_embed<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    w: Slice<f32>,
    bias: Slice<f32>,
    pos: Slice<f32>,
    out: Slice<f32>,
    batch: usize,
    channels: usize,
    side: usize,
    patch: usize,
    hidden: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::PatchEmbed;
    if channels * patch * patch > embed::MAX_PATCH_FEATURES as usize {
        return Err(DeviceError::Invalid(format!(
            "kernel `patch_embed`: C p p = {} exceeds the kernel's {} staged pixels per token",
            channels * patch * patch,
            embed::MAX_PATCH_FEATURES
        )));
    }
    if batch == 0 || side < patch || patch == 0 {
        return Ok(());
    }
    let tokens = (side / patch) * (side / patch);
    let dims = embed::patch_embed_dims(size(k, "batch", batch)?, size(k, "tokens", tokens)?);
    let args = vec![
        read(x),
        read(w),
        read(bias),
        read(pos),
        write(out),
        Arg::U32(size(k, "channels", channels)?),
        Arg::U32(size(k, "side", side)?),
        Arg::U32(size(k, "patch", patch)?),
        Arg::U32(size(k, "hidden", hidden)?),
    ];
    run(dev, k, dims, args)
}

/// `out = LN(x) (1 + scale) + shift` for token rows (rows, D); row r uses sample `r / tokens`'s
/// shift and scale at `modulation[b mod_stride + shift_offset ..]` / `[.. + scale_offset ..]`.
pub fn layer_norm_modulate<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    modulation: Slice<f32>,
    out: Slice<f32>,
    rows: usize,
    hidden: usize,
    tokens: usize,
    mod_stride: usize,
    shift_offset: usize,
    scale_offset: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::LayerNormModulate;
    if rows == 0 {
        return Ok(());
    }
    let r = size(k, "rows", rows)?;
    let args = vec![
        read(x),
        read(modulation),
        write(out),
        Arg::U32(r),
        Arg::U32(size(k, "hidden", hidden)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "mod_stride", mod_stride)?),
        Arg::U32(size(k, "shift_offset", shift_offset)?),
        Arg::U32(size(k, "scale_offset", scale_offset)?),
    ];
    run(dev, k, norm::layer_norm_modulate_dims(r), args)
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
pub fn gemm<D: Device>(
    dev: &mut D,
    a: Slice<f32>,
    w: Slice<f32>,
    bias: Slice<f32>,
    out: Slice<f32>,
    m: usize,
    n: usize,
    k_len: usize,
    epilogue: Epilogue,
) -> Result<(), DeviceError> {
    let k = match epilogue {
        Epilogue::Bias => Kernel::GemmBias,
        Epilogue::BiasGelu => Kernel::GemmBiasGelu,
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n) = (size(k, "m", m)?, size(k, "n", n)?);
    let args = vec![
        read(a),
        read(w),
        read(bias),
        write(out),
        Arg::U32(m),
        Arg::U32(n),
        Arg::U32(size(k, "k", k_len)?),
    ];
    run(dev, k, gemm::gemm_dims(m, n), args)
}

/// `x (M, N) += gate * (A W^T + b)`, row r gated by `gate[(r / tokens) gate_stride + gate_offset ..]`.
pub fn gemm_gated_residual<D: Device>(
    dev: &mut D,
    a: Slice<f32>,
    w: Slice<f32>,
    bias: Slice<f32>,
    x: Slice<f32>,
    gate: Slice<f32>,
    m: usize,
    n: usize,
    k_len: usize,
    tokens: usize,
    gate_stride: usize,
    gate_offset: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::GemmBiasGatedResidual;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n) = (size(k, "m", m)?, size(k, "n", n)?);
    let args = vec![
        read(a),
        read(w),
        read(bias),
        write(x),
        read(gate),
        Arg::U32(m),
        Arg::U32(n),
        Arg::U32(size(k, "k", k_len)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "gate_stride", gate_stride)?),
        Arg::U32(size(k, "gate_offset", gate_offset)?),
    ];
    run(dev, k, gemm::gemm_dims(m, n), args)
}

/// Multi-head attention: `qkv` (B N, 3 H hd) to `out` (B N, H hd), scale `1/sqrt(hd)`.
pub fn attention<D: Device>(
    dev: &mut D,
    qkv: Slice<f32>,
    out: Slice<f32>,
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::Attention;
    if head_dim > attention::ATTN_MAX_HEAD_DIM as usize || head_dim == 0 {
        return Err(DeviceError::Invalid(format!(
            "kernel `attention`: head_dim {head_dim} outside 1..={}",
            attention::ATTN_MAX_HEAD_DIM
        )));
    }
    if batch == 0 || tokens == 0 || heads == 0 {
        return Ok(());
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (b, n, h) = (
        size(k, "batch", batch)?,
        size(k, "tokens", tokens)?,
        size(k, "heads", heads)?,
    );
    let args = vec![
        read(qkv),
        write(out),
        Arg::U32(n),
        Arg::U32(h),
        Arg::U32(size(k, "head_dim", head_dim)?),
        Arg::F32(scale),
    ];
    run(dev, k, attention::attention_dims(b, n, h), args)
}

/// Final-layer tokens (B N, p p C_out) to images (B, C_out, S, S).
pub fn unpatchify<D: Device>(
    dev: &mut D,
    tokens: Slice<f32>,
    out: Slice<f32>,
    batch: usize,
    out_channels: usize,
    side: usize,
    patch: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::Unpatchify;
    let total = batch * out_channels * side * side;
    if total == 0 {
        return Ok(());
    }
    let args = vec![
        read(tokens),
        write(out),
        Arg::U32(size(k, "batch", batch)?),
        Arg::U32(size(k, "out_channels", out_channels)?),
        Arg::U32(size(k, "side", side)?),
        Arg::U32(size(k, "patch", patch)?),
    ];
    run(dev, k, final_layer::unpatchify_dims(size(k, "total", total)?), args)
}

/// Guidance in place on a (2 pairs, C_out, pixels) model output.
pub fn cfg_mix<D: Device>(
    dev: &mut D,
    out: Slice<f32>,
    pairs: usize,
    out_channels: usize,
    pixels: usize,
    scale: f32,
) -> Result<(), DeviceError> {
    let k = Kernel::CfgMix;
    if pairs == 0 || out_channels == 0 || pixels == 0 {
        return Ok(());
    }
    let (p, oc, hw) = (
        size(k, "pairs", pairs)?,
        size(k, "out_channels", out_channels)?,
        size(k, "pixels", pixels)?,
    );
    let args = vec![write(out), Arg::U32(p), Arg::U32(oc), Arg::U32(hw), Arg::F32(scale)];
    run(dev, k, guidance::cfg_mix_dims(p, oc, hw), args)
}

/// One DDIM step: `out` (B, C, pixels) from `x` and the model output (B, C_out, pixels); `out`
/// may be `x`.
pub fn ddim_step<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    model_out: Slice<f32>,
    out: Slice<f32>,
    channels: usize,
    out_channels: usize,
    pixels: usize,
    coef: DdimCoefficients,
) -> Result<(), DeviceError> {
    let k = Kernel::DdimStep;
    if x.len == 0 {
        return Ok(());
    }
    let total = size(k, "total", x.len)?;
    let args = vec![
        read(x),
        read(model_out),
        write(out),
        Arg::U32(total),
        Arg::U32(size(k, "channels", channels)?),
        Arg::U32(size(k, "out_channels", out_channels)?),
        Arg::U32(size(k, "pixels", pixels)?),
        Arg::Ddim(coef),
    ];
    run(dev, k, ddim::ddim_step_dims(total), args)
}

/// One flow Euler step `out = x + dt v`; `out` may be `x`.
pub fn flow_euler_step<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    model_out: Slice<f32>,
    out: Slice<f32>,
    channels: usize,
    out_channels: usize,
    pixels: usize,
    dt: f32,
) -> Result<(), DeviceError> {
    let k = Kernel::FlowEulerStep;
    if x.len == 0 {
        return Ok(());
    }
    let total = size(k, "total", x.len)?;
    let args = vec![
        read(x),
        read(model_out),
        write(out),
        Arg::U32(total),
        Arg::U32(size(k, "channels", channels)?),
        Arg::U32(size(k, "out_channels", out_channels)?),
        Arg::U32(size(k, "pixels", pixels)?),
        Arg::F32(dt),
    ];
    run(dev, k, flow::flow_euler_step_dims(total), args)
}

/// `x (rows, D) += gate * branch`, row r gated by `gate[(r / tokens) gate_stride + gate_offset ..]`.
pub fn gated_add<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    branch: Slice<f32>,
    gate: Slice<f32>,
    rows: usize,
    hidden: usize,
    tokens: usize,
    gate_stride: usize,
    gate_offset: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::GatedAdd;
    if rows == 0 || hidden == 0 {
        return Ok(());
    }
    let total = size(k, "total", rows * hidden)?;
    let args = vec![
        write(x),
        read(branch),
        read(gate),
        Arg::U32(size(k, "rows", rows)?),
        Arg::U32(size(k, "hidden", hidden)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "gate_stride", gate_stride)?),
        Arg::U32(size(k, "gate_offset", gate_offset)?),
    ];
    run(dev, k, residual::gated_add_dims(total), args)
}

/// The Taylor-cache update with a new output `new` (`len` elements per factor).
pub fn taylor_update<D: Device>(
    dev: &mut D,
    factors: Slice<f32>,
    new: Slice<f32>,
    len: usize,
    stored: usize,
    max_order: usize,
    gap: f32,
) -> Result<(), DeviceError> {
    let k = Kernel::TaylorUpdate;
    if len == 0 {
        return Ok(());
    }
    let l = size(k, "len", len)?;
    let args = vec![
        write(factors),
        read(new),
        Arg::U32(l),
        Arg::U32(size(k, "stored", stored)?),
        Arg::U32(size(k, "max_order", max_order)?),
        Arg::F32(gap),
    ];
    run(dev, k, taylor::taylor_dims(l), args)
}

/// `out = sum_i F_i d^i / i!` over the `stored` factors.
pub fn taylor_predict<D: Device>(
    dev: &mut D,
    factors: Slice<f32>,
    out: Slice<f32>,
    len: usize,
    stored: usize,
    coef: TaylorCoefficients,
) -> Result<(), DeviceError> {
    let k = Kernel::TaylorPredict;
    if len == 0 {
        return Ok(());
    }
    let l = size(k, "len", len)?;
    let args = vec![
        read(factors),
        write(out),
        Arg::U32(l),
        Arg::U32(size(k, "stored", stored)?),
        Arg::Taylor(coef),
    ];
    run(dev, k, taylor::taylor_dims(l), args)
}

/// `x += gate * prediction` for token rows (rows, D).
pub fn taylor_predict_gated_add<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    factors: Slice<f32>,
    gate: Slice<f32>,
    rows: usize,
    hidden: usize,
    tokens: usize,
    gate_stride: usize,
    gate_offset: usize,
    stored: usize,
    coef: TaylorCoefficients,
) -> Result<(), DeviceError> {
    let k = Kernel::TaylorPredictGatedAdd;
    if rows == 0 || hidden == 0 {
        return Ok(());
    }
    let total = size(k, "total", rows * hidden)?;
    let args = vec![
        write(x),
        read(factors),
        read(gate),
        Arg::U32(size(k, "rows", rows)?),
        Arg::U32(size(k, "hidden", hidden)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "gate_stride", gate_stride)?),
        Arg::U32(size(k, "gate_offset", gate_offset)?),
        Arg::U32(size(k, "stored", stored)?),
        Arg::Taylor(coef),
    ];
    run(dev, k, taylor::taylor_dims(total), args)
}

/// `out[r] = x[r] / max(|x[r]|, 1e-6)` for rows (rows, D).
pub fn row_normalize<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    out: Slice<f32>,
    rows: usize,
    dim: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::RowNormalize;
    if rows == 0 {
        return Ok(());
    }
    let r = size(k, "rows", rows)?;
    let args = vec![read(x), write(out), Arg::U32(r), Arg::U32(size(k, "dim", dim)?)];
    run(dev, k, tetc::row_normalize_dims(r), args)
}

/// `s (B, N, N) = xn_b xn_b^T`.
pub fn similarity<D: Device>(
    dev: &mut D,
    xn: Slice<f32>,
    s: Slice<f32>,
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::Similarity;
    if batch == 0 || tokens == 0 {
        return Ok(());
    }
    let (b, n) = (size(k, "batch", batch)?, size(k, "tokens", tokens)?);
    let args = vec![read(xn), write(s), Arg::U32(n), Arg::U32(size(k, "dim", dim)?)];
    run(dev, k, tetc::similarity_dims(b, n), args)
}

/// `smoothed = alpha s + (1 - alpha) smoothed`, or `smoothed = s` without a previous one.
pub fn similarity_ema<D: Device>(
    dev: &mut D,
    s: Slice<f32>,
    smoothed: Slice<f32>,
    alpha: f32,
    has_previous: bool,
) -> Result<(), DeviceError> {
    let k = Kernel::SimilarityEma;
    if s.len == 0 {
        return Ok(());
    }
    let total = size(k, "total", s.len)?;
    let args = vec![
        read(s),
        write(smoothed),
        Arg::U32(total),
        Arg::F32(alpha),
        Arg::U32(u32::from(has_previous)),
    ];
    run(dev, k, tetc::elementwise_dims(total), args)
}

/// `labels[b, i] = argmax_c s[b, i, medoids[b, c]]`.
pub fn kmedoids_assign<D: Device>(
    dev: &mut D,
    s: Slice<f32>,
    medoids: Slice<u32>,
    labels: Slice<u32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::KmedoidsAssign;
    if batch * tokens == 0 {
        return Ok(());
    }
    let (b, n) = (size(k, "batch", batch)?, size(k, "tokens", tokens)?);
    let args = vec![
        read(s),
        read(medoids),
        write(labels),
        Arg::U32(b),
        Arg::U32(n),
        Arg::U32(size(k, "clusters", clusters)?),
    ];
    run(dev, k, tetc::per_item_dims(b, n), args)
}

/// The medoid update into `next`.
pub fn kmedoids_update<D: Device>(
    dev: &mut D,
    s: Slice<f32>,
    labels: Slice<u32>,
    medoids: Slice<u32>,
    next: Slice<u32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::KmedoidsUpdate;
    if batch * clusters == 0 {
        return Ok(());
    }
    let c = size(k, "clusters", clusters)?;
    let args = vec![
        read(s),
        read(labels),
        read(medoids),
        write(next),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(c),
    ];
    run(dev, k, tetc::kmedoids_update_dims(size(k, "batch", batch)?, c), args)
}

/// `center-random` proxies from the host's uniform numbers (B K, f64).
pub fn center_random_proxies<D: Device>(
    dev: &mut D,
    s: Slice<f32>,
    labels: Slice<u32>,
    medoids: Slice<u32>,
    uniforms: Slice<f64>,
    proxies: Slice<u32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::CenterRandomProxies;
    if batch * clusters == 0 {
        return Ok(());
    }
    let (b, c) = (size(k, "batch", batch)?, size(k, "clusters", clusters)?);
    let args = vec![
        read(s),
        read(labels),
        read(medoids),
        read(uniforms),
        write(proxies),
        Arg::U32(b),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(c),
    ];
    run(dev, k, tetc::per_item_dims(b, c), args)
}

/// `counts[b, c]` = size of cluster c of batch row b.
pub fn cluster_counts<D: Device>(
    dev: &mut D,
    labels: Slice<u32>,
    counts: Slice<u32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::ClusterCounts;
    if batch * clusters == 0 {
        return Ok(());
    }
    let (b, c) = (size(k, "batch", batch)?, size(k, "clusters", clusters)?);
    let args = vec![
        read(labels),
        write(counts),
        Arg::U32(b),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(c),
    ];
    run(dev, k, tetc::per_item_dims(b, c), args)
}

/// `members[b, c]` = the member of rank `ranks[b, c]` of cluster c.
pub fn cluster_members<D: Device>(
    dev: &mut D,
    labels: Slice<u32>,
    ranks: Slice<u32>,
    members: Slice<u32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::ClusterMembers;
    if batch * clusters == 0 {
        return Ok(());
    }
    let (b, c) = (size(k, "batch", batch)?, size(k, "clusters", clusters)?);
    let args = vec![
        read(labels),
        read(ranks),
        write(members),
        Arg::U32(b),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(c),
    ];
    run(dev, k, tetc::per_item_dims(b, c), args)
}

/// K-means assignment by L1 distance.
pub fn kmeans_assign_l1<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    centroids: Slice<f32>,
    labels: Slice<u32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
    hidden: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::KmeansAssignL1;
    if batch * tokens == 0 {
        return Ok(());
    }
    let (b, n) = (size(k, "batch", batch)?, size(k, "tokens", tokens)?);
    let args = vec![
        read(x),
        read(centroids),
        write(labels),
        Arg::U32(b),
        Arg::U32(n),
        Arg::U32(size(k, "clusters", clusters)?),
        Arg::U32(size(k, "hidden", hidden)?),
    ];
    run(dev, k, tetc::per_item_dims(b, n), args)
}

/// K-means centroid update into `next`, with the per-(row, cluster) `moved` flags.
pub fn kmeans_update<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    labels: Slice<u32>,
    centroids: Slice<f32>,
    next: Slice<f32>,
    moved: Slice<u32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
    hidden: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::KmeansUpdate;
    if batch * clusters == 0 {
        return Ok(());
    }
    let c = size(k, "clusters", clusters)?;
    let args = vec![
        read(x),
        read(labels),
        read(centroids),
        write(next),
        write(moved),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(c),
        Arg::U32(size(k, "hidden", hidden)?),
    ];
    run(dev, k, clusca::kmeans_update_dims(size(k, "batch", batch)?, c), args)
}

/// `dst[b] = src[b]` for the batch rows with `mask[b] != 0` (rows of `row_len` elements).
pub fn commit_rows<D: Device>(
    dev: &mut D,
    src: Slice<f32>,
    dst: Slice<f32>,
    mask: Slice<u32>,
    row_len: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::CommitRows;
    if dst.len == 0 || row_len == 0 {
        return Ok(());
    }
    let total = size(k, "total", dst.len)?;
    let args = vec![
        read(src),
        write(dst),
        read(mask),
        Arg::U32(total),
        Arg::U32(size(k, "row_len", row_len)?),
    ];
    run(dev, k, tetc::elementwise_dims(total), args)
}

/// ClusCa's propagation into the order-0 MLP cache.
pub fn clusca_propagate<D: Device>(
    dev: &mut D,
    cache0: Slice<f32>,
    fresh: Slice<f32>,
    labels: Slice<u32>,
    picks: Slice<u32>,
    ranks: Slice<u32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
    hidden: usize,
    gamma: f32,
) -> Result<(), DeviceError> {
    let k = Kernel::CluscaPropagate;
    let total = batch * tokens * hidden;
    if total == 0 {
        return Ok(());
    }
    let args = vec![
        write(cache0),
        read(fresh),
        read(labels),
        read(picks),
        read(ranks),
        Arg::U32(size(k, "batch", batch)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "clusters", clusters)?),
        Arg::U32(size(k, "hidden", hidden)?),
        Arg::F32(gamma),
    ];
    run(dev, k, tetc::elementwise_dims(size(k, "total", total)?), args)
}

/// `out[b K + c] = src[b N + indices[b K + c]]`.
pub fn gather_rows<D: Device>(
    dev: &mut D,
    src: Slice<f32>,
    indices: Slice<u32>,
    out: Slice<f32>,
    batch: usize,
    tokens: usize,
    per_row: usize,
    hidden: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::GatherRows;
    let total = batch * per_row * hidden;
    if total == 0 {
        return Ok(());
    }
    let args = vec![
        read(src),
        read(indices),
        write(out),
        Arg::U32(size(k, "batch", batch)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "per_row", per_row)?),
        Arg::U32(size(k, "hidden", hidden)?),
    ];
    run(dev, k, gather::gather_dims(size(k, "total", total)?), args)
}

/// `dst[b N + indices[b K + c]] = rows[b K + c]` (last cluster wins).
pub fn scatter_rows<D: Device>(
    dev: &mut D,
    rows: Slice<f32>,
    indices: Slice<u32>,
    dst: Slice<f32>,
    batch: usize,
    tokens: usize,
    per_row: usize,
    hidden: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::ScatterRows;
    let total = batch * per_row * hidden;
    if total == 0 {
        return Ok(());
    }
    let args = vec![
        read(rows),
        read(indices),
        write(dst),
        Arg::U32(size(k, "batch", batch)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "per_row", per_row)?),
        Arg::U32(size(k, "hidden", hidden)?),
    ];
    run(dev, k, gather::gather_dims(size(k, "total", total)?), args)
}

/// The proxies' residuals of orders 1..=`order` (`order` slots of B K D).
pub fn pdds_proxy_residuals<D: Device>(
    dev: &mut D,
    fresh: Slice<f32>,
    cache: Slice<f32>,
    proxies: Slice<u32>,
    residuals: Slice<f32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
    hidden: usize,
    order: usize,
    stored: usize,
    sign: f32,
) -> Result<(), DeviceError> {
    let k = Kernel::PddsProxyResiduals;
    let total = batch * clusters * hidden;
    if total == 0 {
        return Ok(());
    }
    let args = vec![
        read(fresh),
        read(cache),
        read(proxies),
        write(residuals),
        Arg::U32(size(k, "batch", batch)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "clusters", clusters)?),
        Arg::U32(size(k, "hidden", hidden)?),
        Arg::U32(size(k, "order", order)?),
        Arg::U32(size(k, "stored", stored)?),
        Arg::F32(sign),
    ];
    run(dev, k, pdds::proxy_residuals_dims(size(k, "total", total)?), args)
}

/// The implicit update of every token row; `bdf2` selects BDF2, else IE / IT of `order`.
pub fn pdds_update<D: Device>(
    dev: &mut D,
    cache: Slice<f32>,
    labels: Slice<u32>,
    proxies: Slice<u32>,
    residuals: Slice<f32>,
    out: Slice<f32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
    hidden: usize,
    order: usize,
    stored: usize,
    sign: f32,
    bdf2: bool,
) -> Result<(), DeviceError> {
    let k = Kernel::PddsUpdate;
    let rows = batch * tokens;
    if rows == 0 {
        return Ok(());
    }
    let solver = if bdf2 { pdds::SOLVER_BDF2 } else { pdds::SOLVER_TAYLOR };
    let args = vec![
        read(cache),
        read(labels),
        read(proxies),
        read(residuals),
        write(out),
        Arg::U32(size(k, "batch", batch)?),
        Arg::U32(size(k, "tokens", tokens)?),
        Arg::U32(size(k, "clusters", clusters)?),
        Arg::U32(size(k, "hidden", hidden)?),
        Arg::U32(size(k, "order", order)?),
        Arg::U32(size(k, "stored", stored)?),
        Arg::F32(sign),
        Arg::U32(solver),
    ];
    run(dev, k, pdds::pdds_update_dims(size(k, "rows", rows)?), args)
}
