//! One typed function per kernel: buffers and sizes in, the kernel's own launch geometry (the
//! `*_dims` functions of `resca-gpu-kernels`) and its arguments (an [`args`] struct, expanded
//! from the kernel table) out, one [`Device::launch`]. Every backend launches a kernel through
//! these, so the sim and CUDA backends run the same launch sequence. Empty launches (a zero size)
//! are skipped.
//!
//! A new kernel's launch function checks the sizes it supports, converts them with `size` (a
//! clear error when one does not fit a u32), computes the geometry and calls
//! `launch(dev, dims, args::NewKernel { .. })`.

// One parameter per kernel parameter, as the kernels take them.
#![allow(clippy::too_many_arguments)]

use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::taylor::TaylorCoefficients;
use resca_gpu_kernels::{
    LaunchDims, attention, clusca, ddim, embed, final_layer, flow, gather, gemm, gemm_tc, gemm_tiled, guidance, norm,
    pdds, residual, taylor, tetc,
};

use super::device::{Arg, Device, DeviceError, Kernel, KernelCall, Slice};

/// The arguments of one kernel, as the kernel table declares its parameters (see [`args`]).
pub trait KernelArgs {
    /// The kernel whose parameters these are.
    const KERNEL: Kernel;
    /// The arguments in entry-point order.
    fn into_args(self) -> Vec<Arg>;
}

/// A field of an [`args`] struct for a table parameter type (`type ...`), and the [`Arg`] it
/// becomes (`arg ..., value`).
macro_rules! arg_field {
    (type Global<$t:ident>) => { Slice<$t> };
    (type GlobalMut<$t:ident>) => { Slice<$t> };
    (type u32) => { u32 };
    (type f32) => { f32 };
    (type DdimCoefficients) => { DdimCoefficients };
    (type TaylorCoefficients) => { TaylorCoefficients };
    (arg Global<$t:ident>, $value:expr) => { Arg::read($value) };
    (arg GlobalMut<$t:ident>, $value:expr) => { Arg::write($value) };
    (arg u32, $value:expr) => { Arg::U32($value) };
    (arg f32, $value:expr) => { Arg::F32($value) };
    (arg DdimCoefficients, $value:expr) => { Arg::Ddim($value) };
    (arg TaylorCoefficients, $value:expr) => { Arg::Taylor($value) };
}

/// One [`KernelArgs`] struct per kernel of the table.
macro_rules! kernel_args {
    ($(
        $(#[$attr:meta])*
        $variant:ident = $name:ident($($param:ident: $kind:ident $(<$elem:ident>)?),* $(,)?)
            => $module:ident :: $body:ident $(::<$($generic:tt),*>)?
            $(, $shared_kind:ident $shared_module:ident :: $shared_bytes:ident)?;
    )*) => {
        $(
            $(#[$attr])*
            #[doc = ""]
            #[doc = concat!("The arguments of `", stringify!($name), "`: a field per parameter.")]
            #[derive(Clone, Copy, Debug)]
            pub struct $variant {
                $(pub $param: arg_field!(type $kind $(<$elem>)?),)*
            }

            impl KernelArgs for $variant {
                const KERNEL: Kernel = Kernel::$variant;

                fn into_args(self) -> Vec<Arg> {
                    vec![$(arg_field!(arg $kind $(<$elem>)?, self.$param)),*]
                }
            }
        )*
    };
}

/// The arguments of every kernel as a struct named after its [`Kernel`] variant
/// (`args::GemmBias { a, w, bias, out, m, n, k }`), expanded from the kernel table: one field
/// per entry-point parameter, of the same name, a [`Slice`] for a buffer (read-only or writable
/// as the parameter is) and the value itself otherwise. A launch thus names every parameter and
/// cannot pass them in the wrong order or of the wrong kind.
pub mod args {
    use super::{Arg, DdimCoefficients, Kernel, KernelArgs, Slice, TaylorCoefficients};

    resca_gpu_kernels::kernel_table!(kernel_args);
}

/// A size as a kernel's u32 parameter.
fn size(kernel: Kernel, name: &str, value: usize) -> Result<u32, DeviceError> {
    u32::try_from(value).map_err(|_| {
        DeviceError::Invalid(format!(
            "kernel `{}`: {name} = {value} does not fit a u32 parameter",
            kernel.name()
        ))
    })
}

/// The most blocks a grid holds in y and in z (a GPU's limit; x holds 2^31 - 1). The simulator
/// refuses a larger grid too.
pub const MAX_GRID_YZ: u32 = 65535;

/// Fails when `blocks`, the grid's extent in `axis` (y or z) that `what` needs, exceeds
/// [`MAX_GRID_YZ`]: a GPU refuses such a launch with a bare "invalid argument", this error names
/// the dimension.
fn within_grid_yz(kernel: Kernel, axis: &str, blocks: u32, what: impl FnOnce() -> String) -> Result<(), DeviceError> {
    if blocks <= MAX_GRID_YZ {
        return Ok(());
    }
    Err(DeviceError::Invalid(format!(
        "kernel `{}`: {} is {blocks} blocks in the grid's {axis}, which exceeds its limit of {MAX_GRID_YZ}",
        kernel.name(),
        what()
    )))
}

/// Fails unless the row tiles of a GEMM of `m` rows in tiles of `tile` rows, the grid's y of
/// every GEMM, fit [`MAX_GRID_YZ`] (4 to 8 million rows).
fn gemm_row_tiles(kernel: Kernel, m: u32, tile: u32, dims: &LaunchDims) -> Result<(), DeviceError> {
    within_grid_yz(kernel, "y", dims.grid.y, || format!("M = {m} in row tiles of {tile}"))
}

/// Fails unless attention's grid, the heads in y and the batch rows in z, fits [`MAX_GRID_YZ`].
fn attention_grid(kernel: Kernel, dims: &LaunchDims) -> Result<(), DeviceError> {
    within_grid_yz(kernel, "y", dims.grid.y, || format!("heads = {}", dims.grid.y))?;
    within_grid_yz(kernel, "z", dims.grid.z, || format!("batch = {}", dims.grid.z))
}

/// Launches `A::KERNEL` with `args` and the geometry `dims`.
pub fn launch<D: Device, A: KernelArgs>(dev: &mut D, dims: LaunchDims, args: A) -> Result<(), DeviceError> {
    launch_as(dev, A::KERNEL, dims, args)
}

/// Launches `kernel` with the arguments of another kernel of the same parameters (a variant
/// such as `linear_rows_silu` of `linear_rows`); other parameters are an error.
pub fn launch_as<D: Device, A: KernelArgs>(
    dev: &mut D,
    kernel: Kernel,
    dims: LaunchDims,
    args: A,
) -> Result<(), DeviceError> {
    if kernel.params() != A::KERNEL.params() {
        return Err(DeviceError::Invalid(format!(
            "kernel `{}` does not take the parameters of `{}`",
            kernel.name(),
            A::KERNEL.name()
        )));
    }
    dev.launch(&KernelCall {
        kernel,
        dims,
        args: args.into_args(),
    })
}

/// Timestep features (B, 256) of the model times `t` (B).
pub fn timestep_features<D: Device>(dev: &mut D, t: Slice<f32>, out: Slice<f32>) -> Result<(), DeviceError> {
    let k = Kernel::TimestepFeatures;
    if t.len == 0 {
        return Ok(());
    }
    let dims = embed::timestep_features_dims(size(k, "batch", t.len)?);
    launch(dev, dims, args::TimestepFeatures { t, out })
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
    let args = args::LinearRows {
        x,
        w,
        bias,
        out,
        rows: size(k, "rows", rows)?,
        in_features: size(k, "in_features", in_features)?,
        out_features: o,
    };
    launch_as(dev, k, embed::linear_rows_dims(o), args)
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
    let hidden = size(k, "hidden", hidden)?;
    let dims = embed::label_embed_silu_dims(size(k, "batch", labels.len)?, hidden);
    let args = args::LabelEmbedSilu {
        t_emb,
        table,
        labels,
        silu_c,
        hidden,
    };
    launch(dev, dims, args)
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
    let args = args::PatchEmbed {
        x,
        w,
        bias,
        pos,
        out,
        channels: size(k, "channels", channels)?,
        side: size(k, "side", side)?,
        patch: size(k, "patch", patch)?,
        hidden: size(k, "hidden", hidden)?,
    };
    launch(dev, dims, args)
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
    let rows = size(k, "rows", rows)?;
    let args = args::LayerNormModulate {
        x,
        modulation,
        out,
        rows,
        hidden: size(k, "hidden", hidden)?,
        tokens: size(k, "tokens", tokens)?,
        mod_stride: size(k, "mod_stride", mod_stride)?,
        shift_offset: size(k, "shift_offset", shift_offset)?,
        scale_offset: size(k, "scale_offset", scale_offset)?,
    };
    launch(dev, norm::layer_norm_modulate_dims(rows), args)
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
    let dims = gemm::gemm_dims(m, n);
    gemm_row_tiles(k, m, gemm::GEMM_TILE_M, &dims)?;
    let args = args::GemmBias {
        a,
        w,
        bias,
        out,
        m,
        n,
        k: size(k, "k", k_len)?,
    };
    launch_as(dev, k, dims, args)
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
    let dims = gemm::gemm_dims(m, n);
    gemm_row_tiles(k, m, gemm::GEMM_TILE_M, &dims)?;
    let args = args::GemmBiasGatedResidual {
        a,
        w,
        bias,
        x,
        gate,
        m,
        n,
        k: size(k, "k", k_len)?,
        tokens: size(k, "tokens", tokens)?,
        gate_stride: size(k, "gate_stride", gate_stride)?,
        gate_offset: size(k, "gate_offset", gate_offset)?,
    };
    launch(dev, dims, args)
}

/// The block tile of the exact FMA GEMMs (`gemm_tiled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmTile {
    /// 128 x 128 outputs per block, 8 x 8 per thread (`gemm128_*`).
    Tile128,
    /// 64 x 64 outputs per block, 4 x 4 per thread (`gemm64_*`).
    Tile64,
}

impl GemmTile {
    /// Outputs per thread along each side.
    pub const fn micro(self) -> usize {
        match self {
            GemmTile::Tile128 => gemm_tiled::MICRO_128,
            GemmTile::Tile64 => gemm_tiled::MICRO_64,
        }
    }
}

/// `out (M, N) = epilogue(A W^T + b)` on the exact FMA GEMM with block tile `tile`.
pub fn gemm_tiled<D: Device>(
    dev: &mut D,
    tile: GemmTile,
    a: Slice<f32>,
    w: Slice<f32>,
    bias: Slice<f32>,
    out: Slice<f32>,
    m: usize,
    n: usize,
    k_len: usize,
    epilogue: Epilogue,
) -> Result<(), DeviceError> {
    let k = match (tile, epilogue) {
        (GemmTile::Tile128, Epilogue::Bias) => Kernel::Gemm128Bias,
        (GemmTile::Tile128, Epilogue::BiasGelu) => Kernel::Gemm128BiasGelu,
        (GemmTile::Tile64, Epilogue::Bias) => Kernel::Gemm64Bias,
        (GemmTile::Tile64, Epilogue::BiasGelu) => Kernel::Gemm64BiasGelu,
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n) = (size(k, "m", m)?, size(k, "n", n)?);
    let dims = gemm_tiled::gemm_tiled_dims(m, n, tile.micro());
    gemm_row_tiles(k, m, gemm_tiled::tile_side(tile.micro()), &dims)?;
    let args = args::Gemm128Bias {
        a,
        w,
        bias,
        out,
        m,
        n,
        k: size(k, "k", k_len)?,
    };
    launch_as(dev, k, dims, args)
}

/// `x (M, N) += gate * (A W^T + b)` on the exact FMA GEMM with block tile `tile`, row r gated by
/// `gate[(r / tokens) gate_stride + gate_offset ..]`.
pub fn gemm_tiled_gated_residual<D: Device>(
    dev: &mut D,
    tile: GemmTile,
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
    let k = match tile {
        GemmTile::Tile128 => Kernel::Gemm128BiasGatedResidual,
        GemmTile::Tile64 => Kernel::Gemm64BiasGatedResidual,
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n) = (size(k, "m", m)?, size(k, "n", n)?);
    let dims = gemm_tiled::gemm_tiled_dims(m, n, tile.micro());
    gemm_row_tiles(k, m, gemm_tiled::tile_side(tile.micro()), &dims)?;
    let args = args::Gemm128BiasGatedResidual {
        a,
        w,
        bias,
        x,
        gate,
        m,
        n,
        k: size(k, "k", k_len)?,
        tokens: size(k, "tokens", tokens)?,
        gate_stride: size(k, "gate_stride", gate_stride)?,
        gate_offset: size(k, "gate_offset", gate_offset)?,
    };
    launch_as(dev, k, dims, args)
}

/// The number of splits of K in ranges of `k_per_split` (at least 1, also for K = 0).
pub fn splitk_count(k_len: usize, k_per_split: usize) -> usize {
    k_len.div_ceil(k_per_split.max(1)).max(1)
}

/// The split-K partial products `partials[z] (M, N) = A W^T` over k in
/// `z k_per_split .. (z + 1) k_per_split`, for z < [`splitk_count`]; `partials` holds at least
/// `splits M N` values.
pub fn gemm_splitk_partial<D: Device>(
    dev: &mut D,
    a: Slice<f32>,
    w: Slice<f32>,
    partials: Slice<f32>,
    m: usize,
    n: usize,
    k_len: usize,
    k_per_split: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::GemmSplitkPartial;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k_per_split == 0 {
        return Err(DeviceError::Invalid(
            "kernel `gemm_splitk_partial`: k_per_split is 0".into(),
        ));
    }
    let splits = splitk_count(k_len, k_per_split);
    let needed = splits.saturating_mul(m).saturating_mul(n);
    if partials.len < needed {
        return Err(DeviceError::Invalid(format!(
            "kernel `gemm_splitk_partial`: partials holds {} values, {splits} splits of {m} x {n} need {needed}",
            partials.len
        )));
    }
    let (m, n) = (size(k, "m", m)?, size(k, "n", n)?);
    let args = args::GemmSplitkPartial {
        a,
        w,
        partials,
        m,
        n,
        k: size(k, "k", k_len)?,
        k_per_split: size(k, "k_per_split", k_per_split)?,
    };
    let dims = gemm_tiled::gemm_splitk_partial_dims(m, n, size(k, "splits", splits)?);
    gemm_row_tiles(k, m, gemm_tiled::tile_side(gemm_tiled::MICRO_64), &dims)?;
    within_grid_yz(k, "z", dims.grid.z, || {
        format!("K = {k_len} in splits of {k_per_split}")
    })?;
    launch(dev, dims, args)
}

/// Checks the sizes of a split-K reduction: `splits >= 1` and `M N` within a u32.
fn splitk_reduce_sizes(k: Kernel, m: usize, n: usize, splits: usize) -> Result<(u32, u32, u32), DeviceError> {
    if splits == 0 {
        return Err(DeviceError::Invalid(format!("kernel `{}`: splits is 0", k.name())));
    }
    size(k, "m n", m.saturating_mul(n))?;
    Ok((size(k, "m", m)?, size(k, "n", n)?, size(k, "splits", splits)?))
}

/// `out (M, N) = epilogue(sum_z partials[z] + b)`, summed in split order.
pub fn gemm_splitk_reduce<D: Device>(
    dev: &mut D,
    partials: Slice<f32>,
    bias: Slice<f32>,
    out: Slice<f32>,
    m: usize,
    n: usize,
    splits: usize,
    epilogue: Epilogue,
) -> Result<(), DeviceError> {
    let k = match epilogue {
        Epilogue::Bias => Kernel::GemmSplitkBias,
        Epilogue::BiasGelu => Kernel::GemmSplitkBiasGelu,
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n, splits) = splitk_reduce_sizes(k, m, n, splits)?;
    let args = args::GemmSplitkBias {
        partials,
        bias,
        out,
        m,
        n,
        splits,
    };
    launch_as(dev, k, gemm_tiled::gemm_splitk_reduce_dims(m, n), args)
}

/// `x (M, N) += gate * (sum_z partials[z] + b)`, summed in split order, gated as
/// [`gemm_gated_residual`].
pub fn gemm_splitk_gated_residual<D: Device>(
    dev: &mut D,
    partials: Slice<f32>,
    bias: Slice<f32>,
    x: Slice<f32>,
    gate: Slice<f32>,
    m: usize,
    n: usize,
    splits: usize,
    tokens: usize,
    gate_stride: usize,
    gate_offset: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::GemmSplitkBiasGatedResidual;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n, splits) = splitk_reduce_sizes(k, m, n, splits)?;
    let args = args::GemmSplitkBiasGatedResidual {
        partials,
        bias,
        x,
        gate,
        m,
        n,
        splits,
        tokens: size(k, "tokens", tokens)?,
        gate_stride: size(k, "gate_stride", gate_stride)?,
        gate_offset: size(k, "gate_offset", gate_offset)?,
    };
    launch(dev, gemm_tiled::gemm_splitk_reduce_dims(m, n), args)
}

/// The arithmetic of the big GEMMs (the token-wise linear layers) and of the attention: the
/// exact FP32 kernels, or tensor cores in one of the fast modes (docs/gpu.md, "Precision modes").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// FP32 with an exact CPU model: the GPU equals the simulator bit for bit.
    #[default]
    Exact,
    /// 3xTF32 tensor cores: FP32-level accuracy.
    Tf32x3,
    /// TF32 tensor cores (10-bit fraction operands, FP32 accumulation).
    Tf32,
    /// BF16 tensor cores (7-bit fraction operands, weights converted once at upload, FP32
    /// accumulation).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 4] = [Precision::Exact, Precision::Tf32x3, Precision::Tf32, Precision::Bf16];

    /// The name the command line uses.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Tf32x3 => "tf32x3",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The mode of `resca_gpu_kernels::gemm_tc`, or `None` for the exact kernels.
    const fn tensor_core_mode(self) -> Option<u32> {
        match self {
            Precision::Exact => None,
            Precision::Tf32x3 => Some(gemm_tc::TF32X3),
            Precision::Tf32 => Some(gemm_tc::TF32),
            Precision::Bf16 => Some(gemm_tc::BF16),
        }
    }
}

/// `w` (N, K) as the BF16 tensor-core kernels read it: rows of
/// `gemm_tc::bf16_weight_words(K)` words, each two BF16 (round to nearest even) in the order of
/// `gemm_tc::bf16_pair_k`, zeros past K.
pub fn pack_bf16_weight(w: &[f32], n: usize, k: usize) -> Vec<u32> {
    let words = gemm_tc::bf16_weight_words(k as u32) as usize;
    let value = |row: usize, kk: u32| {
        let kk = kk as usize;
        if kk < k {
            crate::sim::mma::bf16(w[row * k + kk]) as u32
        } else {
            0
        }
    };
    let mut packed = Vec::with_capacity(n * words);
    for row in 0..n {
        for j in 0..words as u32 {
            let (lo, hi) = gemm_tc::bf16_pair_k(j);
            packed.push(value(row, lo) | value(row, hi) << 16);
        }
    }
    packed
}

/// A GEMM weight as a precision's kernels read it.
#[derive(Clone, Copy, Debug)]
pub enum GemmWeight {
    /// f32 (N, K): the exact and TF32 kernels.
    F32(Slice<f32>),
    /// Packed BF16 ([`pack_bf16_weight`]): the BF16 kernels.
    Bf16(Slice<u32>),
}

/// The tensor-core kernel of `precision` for an epilogue, and its mode.
fn tensor_core_kernel(precision: Precision, epilogue: Option<Epilogue>) -> Result<(Kernel, u32), DeviceError> {
    use Kernel as K;
    let mode = precision
        .tensor_core_mode()
        .ok_or_else(|| DeviceError::Invalid("the exact precision has no tensor-core GEMM (use `gemm`)".to_string()))?;
    let kernel = match (precision, epilogue) {
        (Precision::Tf32, Some(Epilogue::Bias)) => K::GemmTf32Bias,
        (Precision::Tf32, Some(Epilogue::BiasGelu)) => K::GemmTf32BiasGelu,
        (Precision::Tf32, None) => K::GemmTf32BiasGatedResidual,
        (Precision::Tf32x3, Some(Epilogue::Bias)) => K::GemmTf32X3Bias,
        (Precision::Tf32x3, Some(Epilogue::BiasGelu)) => K::GemmTf32X3BiasGelu,
        (Precision::Tf32x3, None) => K::GemmTf32X3BiasGatedResidual,
        (_, Some(Epilogue::Bias)) => K::GemmBf16Bias,
        (_, Some(Epilogue::BiasGelu)) => K::GemmBf16BiasGelu,
        (_, None) => K::GemmBf16BiasGatedResidual,
    };
    Ok((kernel, mode))
}

/// Fails unless `w` is in the layout the kernels of `precision` read.
fn check_weight(kernel: Kernel, precision: Precision, w: GemmWeight) -> Result<(), DeviceError> {
    match (precision, w) {
        (Precision::Bf16, GemmWeight::Bf16(_)) | (Precision::Tf32 | Precision::Tf32x3, GemmWeight::F32(_)) => Ok(()),
        _ => Err(DeviceError::Invalid(format!(
            "kernel `{}`: the weight is not in the {} layout",
            kernel.name(),
            precision.name()
        ))),
    }
}

/// `out (M, N) = epilogue(A W^T + b)` on tensor cores in a fast `precision`.
pub fn gemm_tc<D: Device>(
    dev: &mut D,
    precision: Precision,
    a: Slice<f32>,
    w: GemmWeight,
    bias: Slice<f32>,
    out: Slice<f32>,
    m: usize,
    n: usize,
    k_len: usize,
    epilogue: Epilogue,
) -> Result<(), DeviceError> {
    let (k, mode) = tensor_core_kernel(precision, Some(epilogue))?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n, k_len) = (size(k, "m", m)?, size(k, "n", n)?, size(k, "k", k_len)?);
    let dims = gemm_tc::gemm_tc_dims(m, n, mode);
    gemm_row_tiles(k, m, gemm_tc::TC_TILE_M, &dims)?;
    check_weight(k, precision, w)?;
    match w {
        GemmWeight::F32(w) => launch_as(
            dev,
            k,
            dims,
            args::GemmTf32Bias {
                a,
                w,
                bias,
                out,
                m,
                n,
                k: k_len,
            },
        ),
        GemmWeight::Bf16(w) => launch_as(
            dev,
            k,
            dims,
            args::GemmBf16Bias {
                a,
                w,
                bias,
                out,
                m,
                n,
                k: k_len,
            },
        ),
    }
}

/// `x (M, N) += gate * (A W^T + b)` on tensor cores in a fast `precision`, gated as
/// [`gemm_gated_residual`].
pub fn gemm_tc_gated_residual<D: Device>(
    dev: &mut D,
    precision: Precision,
    a: Slice<f32>,
    w: GemmWeight,
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
    let (k, mode) = tensor_core_kernel(precision, None)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (m, n) = (size(k, "m", m)?, size(k, "n", n)?);
    let (k_len, tokens) = (size(k, "k", k_len)?, size(k, "tokens", tokens)?);
    let (gate_stride, gate_offset) = (
        size(k, "gate_stride", gate_stride)?,
        size(k, "gate_offset", gate_offset)?,
    );
    let dims = gemm_tc::gemm_tc_dims(m, n, mode);
    gemm_row_tiles(k, m, gemm_tc::TC_TILE_M, &dims)?;
    check_weight(k, precision, w)?;
    match w {
        GemmWeight::F32(w) => launch_as(
            dev,
            k,
            dims,
            args::GemmTf32BiasGatedResidual {
                a,
                w,
                bias,
                x,
                gate,
                m,
                n,
                k: k_len,
                tokens,
                gate_stride,
                gate_offset,
            },
        ),
        GemmWeight::Bf16(w) => launch_as(
            dev,
            k,
            dims,
            args::GemmBf16BiasGatedResidual {
                a,
                w,
                bias,
                x,
                gate,
                m,
                n,
                k: k_len,
                tokens,
                gate_stride,
                gate_offset,
            },
        ),
    }
}

/// Multi-head attention: `qkv` (B N, 3 H hd) to `out` (B N, H hd), scale `1/sqrt(hd)`, in exact
/// FP32 (`flash_attention`).
pub fn attention<D: Device>(
    dev: &mut D,
    qkv: Slice<f32>,
    out: Slice<f32>,
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(), DeviceError> {
    attention_in(dev, Precision::Exact, qkv, out, batch, tokens, heads, head_dim)
}

/// Multi-head attention on tensor cores in a fast `precision` (`flash_attention_tf32`,
/// `_tf32x3`, `_bf16`; docs/gpu.md, "Attention kernel"): as [`attention`].
pub fn attention_tc<D: Device>(
    dev: &mut D,
    precision: Precision,
    qkv: Slice<f32>,
    out: Slice<f32>,
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(), DeviceError> {
    if precision == Precision::Exact {
        return Err(DeviceError::Invalid(
            "the exact precision has no tensor-core attention (use `attention`)".to_string(),
        ));
    }
    attention_in(dev, precision, qkv, out, batch, tokens, heads, head_dim)
}

/// Multi-head attention in `precision`: the exact kernel (`flash_attention`) or, in the fast
/// modes, its tensor-core form. They differ only in the kernel, its largest head dimension and
/// its launch geometry.
pub fn attention_in<D: Device>(
    dev: &mut D,
    precision: Precision,
    qkv: Slice<f32>,
    out: Slice<f32>,
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Result<(), DeviceError> {
    use resca_gpu_kernels::attention_tc::{ATTN_TC_MAX_HEAD_DIM, attention_tc_dims};
    let (k, max_head_dim) = match precision {
        Precision::Exact => (Kernel::FlashAttention, attention::ATTN_MAX_HEAD_DIM),
        Precision::Tf32 => (Kernel::FlashAttentionTf32, ATTN_TC_MAX_HEAD_DIM),
        Precision::Tf32x3 => (Kernel::FlashAttentionTf32X3, ATTN_TC_MAX_HEAD_DIM),
        Precision::Bf16 => (Kernel::FlashAttentionBf16, ATTN_TC_MAX_HEAD_DIM),
    };
    if head_dim > max_head_dim as usize || head_dim == 0 {
        return Err(DeviceError::Invalid(format!(
            "kernel `{}`: head_dim {head_dim} outside 1..={max_head_dim}",
            k.name()
        )));
    }
    if batch == 0 || tokens == 0 || heads == 0 {
        return Ok(());
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (b, n, h, hd) = (
        size(k, "batch", batch)?,
        size(k, "tokens", tokens)?,
        size(k, "heads", heads)?,
        size(k, "head_dim", head_dim)?,
    );
    let args = args::FlashAttention {
        qkv,
        out,
        tokens: n,
        heads: h,
        head_dim: hd,
        scale,
    };
    let dims = match precision {
        Precision::Exact => attention::attention_dims(b, n, h),
        _ => attention_tc_dims(b, n, h, hd),
    };
    attention_grid(k, &dims)?;
    launch_as(dev, k, dims, args)
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
    let args = args::Unpatchify {
        tokens,
        out,
        batch: size(k, "batch", batch)?,
        out_channels: size(k, "out_channels", out_channels)?,
        side: size(k, "side", side)?,
        patch: size(k, "patch", patch)?,
    };
    launch(dev, final_layer::unpatchify_dims(size(k, "total", total)?), args)
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
    let args = args::CfgMix {
        out,
        pairs: size(k, "pairs", pairs)?,
        out_channels: size(k, "out_channels", out_channels)?,
        pixels: size(k, "pixels", pixels)?,
        scale,
    };
    let dims = guidance::cfg_mix_dims(args.pairs, args.out_channels, args.pixels);
    launch(dev, dims, args)
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
    let args = args::DdimStep {
        x,
        model_out,
        out,
        total,
        channels: size(k, "channels", channels)?,
        out_channels: size(k, "out_channels", out_channels)?,
        pixels: size(k, "pixels", pixels)?,
        coef,
    };
    launch(dev, ddim::ddim_step_dims(total), args)
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
    let args = args::FlowEulerStep {
        x,
        model_out,
        out,
        total,
        channels: size(k, "channels", channels)?,
        out_channels: size(k, "out_channels", out_channels)?,
        pixels: size(k, "pixels", pixels)?,
        dt,
    };
    launch(dev, flow::flow_euler_step_dims(total), args)
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
    let args = args::GatedAdd {
        x,
        branch,
        gate,
        rows: size(k, "rows", rows)?,
        hidden: size(k, "hidden", hidden)?,
        tokens: size(k, "tokens", tokens)?,
        gate_stride: size(k, "gate_stride", gate_stride)?,
        gate_offset: size(k, "gate_offset", gate_offset)?,
    };
    launch(dev, residual::gated_add_dims(total), args)
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
    let len = size(k, "len", len)?;
    let args = args::TaylorUpdate {
        factors,
        new,
        len,
        stored: stored_factors(k, stored)?,
        max_order: cache_order(k, max_order)?,
        gap,
    };
    launch(dev, taylor::taylor_dims(len), args)
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
    let len = size(k, "len", len)?;
    let args = args::TaylorPredict {
        factors,
        out,
        len,
        stored: stored_factors(k, stored)?,
        coef,
    };
    launch(dev, taylor::taylor_dims(len), args)
}

/// `x += gate * prediction` for token rows (rows, D), the prediction's coefficients read from
/// `coef` (the values of `TaylorCoefficients::to_values`).
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
    coef: Slice<f32>,
) -> Result<(), DeviceError> {
    let k = Kernel::TaylorPredictGatedAdd;
    if rows == 0 || hidden == 0 {
        return Ok(());
    }
    if coef.len != taylor::TAYLOR_COEFFICIENT_VALUES {
        return Err(DeviceError::Invalid(format!(
            "kernel `{}`: coef holds {} values, the coefficients are {}",
            k.name(),
            coef.len,
            taylor::TAYLOR_COEFFICIENT_VALUES
        )));
    }
    let total = size(k, "total", rows * hidden)?;
    let args = args::TaylorPredictGatedAdd {
        x,
        factors,
        gate,
        rows: size(k, "rows", rows)?,
        hidden: size(k, "hidden", hidden)?,
        tokens: size(k, "tokens", tokens)?,
        gate_stride: size(k, "gate_stride", gate_stride)?,
        gate_offset: size(k, "gate_offset", gate_offset)?,
        stored: stored_factors(k, stored)?,
        coef,
    };
    launch(dev, taylor::taylor_dims(total), args)
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
    let rows = size(k, "rows", rows)?;
    let args = args::RowNormalize {
        x,
        out,
        rows,
        dim: size(k, "dim", dim)?,
    };
    launch(dev, tetc::row_normalize_dims(rows), args)
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
    let dims = tetc::similarity_dims(b, n);
    within_grid_yz(k, "y", dims.grid.y, || {
        format!("tokens = {n} in row tiles of {}", gemm::GEMM_TILE_M)
    })?;
    within_grid_yz(k, "z", dims.grid.z, || format!("batch = {b}"))?;
    let args = args::Similarity {
        xn,
        s,
        tokens: n,
        dim: size(k, "dim", dim)?,
    };
    launch(dev, dims, args)
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
    let args = args::SimilarityEma {
        s,
        smoothed,
        total,
        alpha,
        has_previous: u32::from(has_previous),
    };
    launch(dev, tetc::elementwise_dims(total), args)
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
    let args = args::KmedoidsAssign {
        s,
        medoids,
        labels,
        batch: b,
        tokens: n,
        clusters: size(k, "clusters", clusters)?,
    };
    launch(dev, tetc::per_item_dims(b, n), args)
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
    let (b, c) = (size(k, "batch", batch)?, size(k, "clusters", clusters)?);
    let dims = tetc::kmedoids_update_dims(b, c);
    within_grid_yz(k, "y", dims.grid.y, || format!("batch = {b}"))?;
    let args = args::KmedoidsUpdate {
        s,
        labels,
        medoids,
        next,
        tokens: size(k, "tokens", tokens)?,
        clusters: c,
    };
    launch(dev, dims, args)
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
    let args = args::CenterRandomProxies {
        s,
        labels,
        medoids,
        uniforms,
        proxies,
        batch: b,
        tokens: size(k, "tokens", tokens)?,
        clusters: c,
    };
    launch(dev, tetc::per_item_dims(b, c), args)
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
    let args = args::ClusterCounts {
        labels,
        counts,
        batch: b,
        tokens: size(k, "tokens", tokens)?,
        clusters: c,
    };
    launch(dev, tetc::per_item_dims(b, c), args)
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
    let args = args::ClusterMembers {
        labels,
        ranks,
        members,
        batch: b,
        tokens: size(k, "tokens", tokens)?,
        clusters: c,
    };
    launch(dev, tetc::per_item_dims(b, c), args)
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
    let args = args::KmeansAssignL1 {
        x,
        centroids,
        labels,
        batch: b,
        tokens: n,
        clusters: size(k, "clusters", clusters)?,
        hidden: size(k, "hidden", hidden)?,
    };
    launch(dev, tetc::per_item_dims(b, n), args)
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
    let args = args::KmeansUpdate {
        x,
        labels,
        centroids,
        next,
        moved,
        tokens: size(k, "tokens", tokens)?,
        clusters: c,
        hidden: size(k, "hidden", hidden)?,
    };
    launch(dev, clusca::kmeans_update_dims(size(k, "batch", batch)?, c), args)
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
    let args = args::CommitRows {
        src,
        dst,
        mask,
        total,
        row_len: size(k, "row_len", row_len)?,
    };
    launch(dev, tetc::elementwise_dims(total), args)
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
    let args = args::CluscaPropagate {
        cache0,
        fresh,
        labels,
        picks,
        ranks,
        batch: size(k, "batch", batch)?,
        tokens: size(k, "tokens", tokens)?,
        clusters: size(k, "clusters", clusters)?,
        hidden: size(k, "hidden", hidden)?,
        gamma,
    };
    launch(dev, tetc::elementwise_dims(size(k, "total", total)?), args)
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
    let args = args::GatherRows {
        src,
        indices,
        out,
        batch: size(k, "batch", batch)?,
        tokens: size(k, "tokens", tokens)?,
        per_row: size(k, "per_row", per_row)?,
        hidden: size(k, "hidden", hidden)?,
    };
    launch(dev, gather::gather_dims(size(k, "total", total)?), args)
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
    let args = args::ScatterRows {
        rows,
        indices,
        dst,
        batch: size(k, "batch", batch)?,
        tokens: size(k, "tokens", tokens)?,
        per_row: size(k, "per_row", per_row)?,
        hidden: size(k, "hidden", hidden)?,
    };
    launch(dev, gather::gather_dims(size(k, "total", total)?), args)
}

/// The PDDS `sign`, the sampler's direction in its step index: -1 (DDIM, whose index counts
/// down) or +1 (flow). The kernels raise it to powers by repeated multiplication; any other
/// value would scale the cached derivatives instead of orienting them.
fn pdds_sign(kernel: Kernel, sign: f32) -> Result<f32, DeviceError> {
    if sign == 1.0 || sign == -1.0 {
        return Ok(sign);
    }
    Err(DeviceError::Invalid(format!(
        "kernel `{}`: sign = {sign} is neither 1 (flow) nor -1 (DDIM), the sampler's direction",
        kernel.name()
    )))
}

/// A Taylor cache's `order` as a u32, at most [`taylor::MAX_TAYLOR_ORDER`]: the cache holds the
/// factors of orders 0..=4 (`taylor_update`; `taylor_predict`'s coefficients hold four powers),
/// so an order past it would read or write a slot no cache has.
fn cache_order(kernel: Kernel, order: usize) -> Result<u32, DeviceError> {
    if order > taylor::MAX_TAYLOR_ORDER as usize {
        return Err(DeviceError::Invalid(format!(
            "kernel `{}`: order {order} exceeds {}, the largest Taylor order a cache holds",
            kernel.name(),
            taylor::MAX_TAYLOR_ORDER
        )));
    }
    size(kernel, "order", order)
}

/// The number of `stored` Taylor factors as a u32, at most [`taylor::MAX_TAYLOR_ORDER`] + 1 (the
/// factors of orders 0..=4).
fn stored_factors(kernel: Kernel, stored: usize) -> Result<u32, DeviceError> {
    let most = taylor::MAX_TAYLOR_ORDER as usize + 1;
    if stored > most {
        return Err(DeviceError::Invalid(format!(
            "kernel `{}`: stored {stored} exceeds {most}, the most factors a Taylor cache holds",
            kernel.name()
        )));
    }
    size(kernel, "stored", stored)
}

/// The proxies' residuals of orders 1..=`order` (`order` slots of B K D), `order` at most
/// [`taylor::MAX_TAYLOR_ORDER`].
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
    let args = args::PddsProxyResiduals {
        fresh,
        cache,
        proxies,
        residuals,
        batch: size(k, "batch", batch)?,
        tokens: size(k, "tokens", tokens)?,
        clusters: size(k, "clusters", clusters)?,
        hidden: size(k, "hidden", hidden)?,
        order: cache_order(k, order)?,
        stored: stored_factors(k, stored)?,
        sign: pdds_sign(k, sign)?,
    };
    launch(dev, pdds::proxy_residuals_dims(size(k, "total", total)?), args)
}

/// Every token row's MLP output `out`: the proxies' `fresh` rows, the implicit update of the
/// others (`bdf2` selects BDF2, else IE / IT of `order`, at most [`taylor::MAX_TAYLOR_ORDER`]);
/// then `x += gate * out`, each row gated by its sample's gate at `gate_offset` of a
/// `gate_stride`-wide modulation row.
pub fn pdds_update<D: Device>(
    dev: &mut D,
    cache: Slice<f32>,
    labels: Slice<u32>,
    proxies: Slice<u32>,
    residuals: Slice<f32>,
    fresh: Slice<f32>,
    out: Slice<f32>,
    x: Slice<f32>,
    gate: Slice<f32>,
    batch: usize,
    tokens: usize,
    clusters: usize,
    hidden: usize,
    order: usize,
    stored: usize,
    sign: f32,
    bdf2: bool,
    gate_stride: usize,
    gate_offset: usize,
) -> Result<(), DeviceError> {
    let k = Kernel::PddsUpdate;
    let rows = batch * tokens;
    if rows == 0 {
        return Ok(());
    }
    let args = args::PddsUpdate {
        cache,
        labels,
        proxies,
        residuals,
        fresh,
        out,
        x,
        gate,
        batch: size(k, "batch", batch)?,
        tokens: size(k, "tokens", tokens)?,
        clusters: size(k, "clusters", clusters)?,
        hidden: size(k, "hidden", hidden)?,
        order: cache_order(k, order)?,
        stored: stored_factors(k, stored)?,
        sign: pdds_sign(k, sign)?,
        solver: if bdf2 { pdds::SOLVER_BDF2 } else { pdds::SOLVER_TAYLOR },
        gate_stride: size(k, "gate_stride", gate_stride)?,
        gate_offset: size(k, "gate_offset", gate_offset)?,
    };
    launch(dev, pdds::pdds_update_dims(size(k, "rows", rows)?), args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::device::{Buffer, Element};

    /// A device that only records its launches.
    #[derive(Default)]
    struct Launches(Vec<KernelCall>);

    impl Device for Launches {
        fn name(&self) -> &'static str {
            "launches"
        }
        fn alloc<T: Element>(&mut self, len: usize) -> Result<Buffer<T>, DeviceError> {
            Ok(Buffer::from_id(0, len))
        }
        fn upload<T: Element>(&mut self, _: Slice<T>, _: &[T]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn download<T: Element>(&mut self, _: Slice<T>, _: &mut [T]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn copy<T: Element>(&mut self, _: Slice<T>, _: Slice<T>) -> Result<(), DeviceError> {
            Ok(())
        }
        fn free(&mut self, _: usize) -> Result<(), DeviceError> {
            Ok(())
        }
        fn launch(&mut self, call: &KernelCall) -> Result<(), DeviceError> {
            self.0.push(call.clone());
            Ok(())
        }
        fn synchronize(&mut self) -> Result<(), DeviceError> {
            Ok(())
        }
    }

    #[test]
    fn an_args_struct_becomes_the_arguments_in_entry_point_order() {
        let dev = &mut Launches::default();
        let (x, out) = (dev.alloc::<f32>(8).unwrap(), dev.alloc::<f32>(8).unwrap());
        row_normalize(dev, x.all(), out.range(4, 4), 2, 4).unwrap();
        let call = &dev.0[0];
        assert_eq!(call.kernel, Kernel::RowNormalize);
        assert_eq!(
            call.args,
            [
                Arg::read(x.all()),
                Arg::write(out.range(4, 4)),
                Arg::U32(2),
                Arg::U32(4)
            ]
        );
        assert!(call.check().is_ok());
    }

    #[test]
    fn a_variant_takes_only_the_arguments_of_its_own_parameters() {
        let dev = &mut Launches::default();
        let x = dev.alloc::<f32>(4).unwrap().all();
        let args = args::RowNormalize {
            x,
            out: x,
            rows: 1,
            dim: 4,
        };
        // `similarity` takes the same kinds, under other names: refused.
        let err = launch_as(dev, Kernel::Similarity, tetc::row_normalize_dims(1), args).unwrap_err();
        assert!(
            err.to_string()
                .contains("`similarity` does not take the parameters of `row_normalize`"),
            "{err}"
        );
        assert!(dev.0.is_empty());
        launch_as(dev, Kernel::RowNormalize, tetc::row_normalize_dims(1), args).unwrap();
        assert_eq!(dev.0.len(), 1);
    }
}
