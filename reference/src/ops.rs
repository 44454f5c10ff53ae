//! The numerical building blocks of DiT, on row-major ndarray matrices (one row per token).
//!
//! Each function mirrors one line of facebookresearch/DiT `models.py` (docs/algorithms.md
//! section 1). They are also the oracle the GPU kernels are property-tested against, so they stay
//! small and literal.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip, s};
use rayon::prelude::*;

/// LayerNorm epsilon used by every DiT norm (`nn.LayerNorm(..., eps=1e-6)`).
pub const LAYER_NORM_EPS: f32 = 1e-6;

/// Width of the sinusoidal timestep features fed to `t_embedder.mlp.0`.
pub const TIMESTEP_FEATURES: usize = 256;

/// Matrix products with fewer multiply-adds than this run on one thread: below it, handing work to
/// a second core costs more than it saves.
pub const PARALLEL_MIN_MACS: usize = 1 << 20;

/// OpenBLAS is kept single-threaded: the forward pass splits its products over the cores itself
/// (rayon), which keeps element-wise work parallel too and avoids OpenBLAS's spinning threads
/// fighting rayon's for the same cores. Called by [`linear`]; benchmarks call it too.
pub fn single_threaded_blas() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        unsafe extern "C" {
            fn openblas_set_num_threads(threads: std::ffi::c_int);
        }
        // SAFETY: a plain setter of OpenBLAS's thread count, called before any concurrent use.
        unsafe { openblas_set_num_threads(1) };
    });
}

/// How many chunks to split `rows` (or columns) into for `macs` multiply-adds.
pub(crate) fn row_chunks(rows: usize, macs: usize) -> usize {
    if macs < PARALLEL_MIN_MACS {
        1
    } else {
        rayon::current_num_threads().min(rows).max(1)
    }
}

/// `x W^T + b` for a PyTorch `nn.Linear` weight `w` of shape (out, in), by BLAS: the output
/// starts as the bias rows and one GEMM with beta = 1 adds the product (no separate zeroing or
/// bias pass). Large products are split over the cores by output features: each core then packs
/// only its share of the weights, which do not fit in cache (measured on a 2-core AMD EPYC Zen 3,
/// DiT-XL/2 forward batch 2: 3.71 s split by features, 4.07 s split by rows). Products
/// of a few rows go to [`crate::gemm`] instead (see [`crate::weights::Linear`]).
pub fn linear(x: ArrayView2<f32>, w: ArrayView2<f32>, b: ArrayView1<f32>) -> Array2<f32> {
    single_threaded_blas();
    let (rows, inner) = x.dim();
    let outputs = w.nrows();
    let mut y = b
        .broadcast((rows, outputs))
        .expect("bias of the output width")
        .to_owned();
    let chunks = row_chunks(outputs, rows * inner * outputs);
    if chunks == 1 {
        general_mat_mul(1.0, &x, &w.t(), 1.0, &mut y);
    } else {
        let size = outputs.div_ceil(chunks);
        y.axis_chunks_iter_mut(Axis(1), size)
            .into_par_iter()
            .zip(w.axis_chunks_iter(Axis(0), size).into_par_iter())
            .for_each(|(mut y, w)| general_mat_mul(1.0, &x, &w.t(), 1.0, &mut y));
    }
    y
}

/// Applies `f` to row blocks of `x` in parallel when `x` is large enough to pay for it.
fn for_row_blocks(mut x: ArrayViewMut2<f32>, cost_per_element: usize, f: impl Fn(ArrayViewMut2<f32>) + Sync) {
    let chunks = row_chunks(x.nrows(), x.len() * cost_per_element);
    if chunks == 1 {
        f(x);
    } else {
        let size = x.nrows().div_ceil(chunks);
        x.axis_chunks_iter_mut(Axis(0), size).into_par_iter().for_each(&f);
    }
}

/// `nn.SiLU`: `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU with the tanh approximation (`nn.GELU(approximate="tanh")`), as DiT's MLP uses:
/// `0.5 x (1 + tanh(u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`, evaluated as the equal
/// `x / (1 + exp(-2u))` (no cancellation for negative x, and [`exp_f32`] vectorises).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + exp_f32(-2.0 * u))
}

/// `exp(x)` in f32 to about 1 ulp, branch-free so that loops over slices vectorise: Cody-Waite
/// reduction `x = n ln2 + r`, the Cephes degree-6 polynomial for `exp(r)`, then `2^n` built in the
/// exponent bits (through the `1.5 * 2^23` rounding constant, so no float-to-int conversion
/// blocks vectorisation). Inputs are clamped to [-87.3, 88.3] (no infinities, no denormals).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 puts an integer-valued float's value in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let poly = p * r2 + r + 1.0;
    let biased = (n + SHIFTER)
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127);
    poly * f32::from_bits(biased << 23)
}

/// Defines `pub fn $name(values: &mut [f32], ...)` three times, for AVX-512, for AVX2+FMA and
/// for the baseline x86-64, choosing at run time: the element-wise loops of the forward pass
/// vectorise 16 or 8 wide on the CPUs that can. The same IEEE operations run either way (Rust
/// fuses no multiply-add by itself), so results are identical.
macro_rules! vectorized {
    ($(#[$doc:meta])* pub fn $name:ident($values:ident: &mut [f32] $(, $arg:ident: $ty:ty)*) $body:block) => {
        $(#[$doc])*
        pub fn $name($values: &mut [f32] $(, $arg: $ty)*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn widest($values: &mut [f32] $(, $arg: $ty)*) $body
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `widest` was compiled for.
                    return unsafe { widest($values $(, $arg)*) };
                }
                #[target_feature(enable = "avx2,fma")]
                fn wide($values: &mut [f32] $(, $arg: $ty)*) $body
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `wide` was compiled for.
                    return unsafe { wide($values $(, $arg)*) };
                }
            }
            fn narrow($values: &mut [f32] $(, $arg: $ty)*) $body
            narrow($values $(, $arg)*)
        }
    };
}

vectorized! {
    /// [`gelu_tanh`] over a slice, in place.
    pub fn gelu_tanh_slice(values: &mut [f32]) {
        for v in values.iter_mut() {
            *v = gelu_tanh(*v);
        }
    }
}

vectorized! {
    /// `exp(v - shift)` over a slice, in place (the numerator of a stable softmax).
    pub fn exp_shifted_slice(values: &mut [f32], shift: f32) {
        for v in values.iter_mut() {
            *v = exp_f32(*v - shift);
        }
    }
}

vectorized! {
    /// `v * scale + shift`, then SiLU, over a slice in place: a GroupNorm's per-channel affine
    /// map and the activation after it (the VAE decoder's convolutions read their input so).
    pub fn scale_shift_silu_slice(values: &mut [f32], scale: f32, shift: f32) {
        for v in values.iter_mut() {
            let x = *v * scale + shift;
            *v = x / (1.0 + exp_f32(-x));
        }
    }
}

/// Applies [`gelu_tanh`] to every element of a matrix, in place.
pub fn gelu_tanh_in_place(x: &mut Array2<f32>) {
    for_row_blocks(x.view_mut(), 16, |mut block| match block.as_slice_mut() {
        Some(values) => gelu_tanh_slice(values),
        None => block.mapv_inplace(gelu_tanh),
    });
}

/// LayerNorm without affine parameters over the last axis, in place: `(x - mean) / sqrt(var + eps)`
/// with the biased variance, as `torch.nn.LayerNorm` computes it.
pub fn layer_norm_in_place(x: ArrayViewMut2<f32>) {
    for_row_blocks(x, 4, layer_norm_rows);
}

fn layer_norm_rows(mut x: ArrayViewMut2<f32>) {
    for mut row in x.rows_mut() {
        let (mean, inv_std) = mean_and_inv_std(row.view());
        row.mapv_inplace(|v| (v - mean) * inv_std);
    }
}

/// A row's mean and `1 / sqrt(var + eps)` (biased variance), as `torch.nn.LayerNorm` takes them.
fn mean_and_inv_std(row: ArrayView1<f32>) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.sum() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + LAYER_NORM_EPS).sqrt())
}

/// adaLN `modulate(x, shift, scale) = x * (1 + scale) + shift`, broadcast over the token rows.
pub fn modulate_in_place(mut x: ArrayViewMut2<f32>, shift: ArrayView1<f32>, scale: ArrayView1<f32>) {
    for mut row in x.rows_mut() {
        Zip::from(&mut row)
            .and(shift)
            .and(scale)
            .for_each(|v, &sh, &sc| *v = *v * (1.0 + sc) + sh);
    }
}

/// `LayerNorm(x)` followed by `modulate`: the input of both branches of a DiT block and of the
/// final layer.
pub fn norm_modulate(x: ArrayView2<f32>, shift: ArrayView1<f32>, scale: ArrayView1<f32>) -> Array2<f32> {
    let mut h = Array2::zeros(x.raw_dim());
    norm_modulate_into(x, shift, scale, h.view_mut());
    h
}

/// [`norm_modulate`] written into `out` (x's shape), in one pass per row over the cores: the
/// same operations in the same order as [`layer_norm_in_place`] then [`modulate_in_place`],
/// so the same bits, without their two extra passes over the tokens or the copy of `x`.
pub fn norm_modulate_into(
    x: ArrayView2<f32>,
    shift: ArrayView1<f32>,
    scale: ArrayView1<f32>,
    mut out: ArrayViewMut2<f32>,
) {
    assert_eq!(x.dim(), out.dim(), "out has x's shape");
    let per_row = |(x_row, mut out_row): (ArrayView1<f32>, ndarray::ArrayViewMut1<f32>)| {
        let (mean, inv_std) = mean_and_inv_std(x_row);
        Zip::from(&mut out_row)
            .and(x_row)
            .and(shift)
            .and(scale)
            .for_each(|o, &v, &sh, &sc| *o = ((v - mean) * inv_std) * (1.0 + sc) + sh);
    };
    if row_chunks(x.nrows(), x.len() * 6) == 1 {
        x.rows().into_iter().zip(out.rows_mut()).for_each(per_row);
    } else {
        x.axis_iter(Axis(0))
            .into_par_iter()
            .zip(out.axis_iter_mut(Axis(0)))
            .for_each(per_row);
    }
}

/// `x += gate * branch` (the gated residual add of adaLN-Zero), gate broadcast over tokens.
pub fn gated_add(mut x: ArrayViewMut2<f32>, gate: ArrayView1<f32>, branch: ArrayView2<f32>) {
    for (mut row, branch_row) in x.rows_mut().into_iter().zip(branch.rows()) {
        Zip::from(&mut row)
            .and(gate)
            .and(branch_row)
            .for_each(|v, &g, &b| *v += g * b);
    }
}

/// Multi-head self-attention core: `qkv` is (N, 3D) as produced by `attn.qkv` (q, k, v each split
/// head-major into `heads` heads of D/heads); returns the concatenated head outputs (N, D), before
/// `attn.proj`. Softmax in float32 with max subtraction, scale `1/sqrt(D/heads)`.
pub fn attention(qkv: ArrayView2<f32>, heads: usize) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((qkv.nrows(), qkv.ncols() / 3));
    attention_into(qkv, heads, out.view_mut());
    out
}

/// [`attention`], written into `out` (N, D): each head's output straight into its columns, on
/// the core that computed it (no per-head matrices copied together afterwards on one core).
pub fn attention_into(qkv: ArrayView2<f32>, heads: usize, mut out: ArrayViewMut2<f32>) {
    single_threaded_blas();
    let (n, three_d) = qkv.dim();
    let d = three_d / 3;
    let head_dim = d / heads;
    assert_eq!(out.dim(), (n, d), "out holds one row of D values per token");
    let scale = 1.0 / (head_dim as f32).sqrt();
    let head = |(h, mut head_out): (usize, ArrayViewMut2<f32>)| {
        let cols = h * head_dim..(h + 1) * head_dim;
        let q = qkv.slice(s![.., cols.clone()]);
        let k = qkv.slice(s![.., d + cols.start..d + cols.end]);
        let v = qkv.slice(s![.., 2 * d + cols.start..2 * d + cols.end]);
        SCORES.with_borrow_mut(|buffer| {
            // The scores matrix of the last head on this thread is overwritten: a product with
            // beta = 0 does not read its output (BLAS's definition). Zeroing a new one per head
            // was ~0.5% of XL/2's forward.
            buffer.resize(n * n, 0.0);
            let mut scores = ArrayViewMut2::from_shape((n, n), &mut buffer[..n * n]).expect("n x n values");
            // The scale as the product's alpha: BLAS multiplies each finished sum by it, the
            // same bits as scaling the scores afterwards, without that pass.
            general_mat_mul(scale, &q, &k.t(), 0.0, &mut scores);
            softmax_rows_in_place(scores.view_mut());
            general_mat_mul(1.0, &scores, &v, 0.0, &mut head_out);
        });
    };
    // Heads are independent: spread them over the cores when there is enough work.
    let head_outputs = out.axis_chunks_iter_mut(Axis(1), head_dim.max(1));
    if 2 * n * n * d < PARALLEL_MIN_MACS {
        head_outputs.enumerate().for_each(head);
    } else {
        head_outputs.into_par_iter().enumerate().for_each(head);
    }
}

/// The largest value of a slice (NaNs ignored; -inf if there is none): the value of
/// `fold(NEG_INFINITY, f32::max)`, from 16 independent running maxima. (One running maximum is
/// a chain of dependent `max` instructions, 4 cycles a value: it was most of the softmax's time,
/// 1.8% of XL/2's forward on an Intel Xeon.) The maximum of a set does not depend on the order
/// it is taken in; where the largest value is zero, its sign may differ, which leaves every
/// `exp(v - max)` unchanged.
pub fn max_of(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { max_of_avx512(values) };
    }
    max_of_lanes(values)
}

/// [`max_of`] with 64 lanes of AVX-512 (`vmaxps` returns its second operand, the running
/// maximum, where the value is NaN: NaNs are ignored as `f32::max` ignores them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn max_of_avx512(values: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut maxima = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    let chunks = values.chunks_exact(64);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (i, maximum) in maxima.iter_mut().enumerate() {
            // SAFETY: 16 values from 16 * i inside the chunk of 64.
            let v = unsafe { _mm512_loadu_ps(chunk.as_ptr().add(16 * i)) };
            *maximum = _mm512_max_ps(v, *maximum);
        }
    }
    let mut lanes = [0.0f32; 64];
    for (i, &maximum) in maxima.iter().enumerate() {
        // SAFETY: 16 lanes into 16 slots of the array.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr().add(16 * i), maximum) };
    }
    max_of_lanes(&lanes).max(max_of_lanes(rest))
}

/// [`max_of`] in portable code: 16 running maxima, which the compiler keeps in vector registers.
fn max_of_lanes(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = values.chunks_exact(lanes.len());
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

thread_local! {
    /// Each thread's attention scores matrix (tokens x tokens), reused from head to head.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Row-wise softmax, in place, with the row maximum subtracted first for stability.
pub fn softmax_rows_in_place(mut x: ArrayViewMut2<f32>) {
    for mut row in x.rows_mut() {
        match row.as_slice_mut() {
            Some(values) => exp_shifted_slice(values, max_of(values)),
            None => {
                let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                row.mapv_inplace(|v| exp_f32(v - max));
            }
        }
        let inverse = 1.0 / row.sum();
        row.mapv_inplace(|v| v * inverse);
    }
}

/// The sinusoidal frequencies `f_k = exp(-ln(10000) * k / 128)`, k = 0..127, computed in float32
/// in the same operation order as DiT's `TimestepEmbedder.timestep_embedding`.
pub fn timestep_frequencies() -> Array1<f32> {
    let half = TIMESTEP_FEATURES / 2;
    let neg_log_period = -(10000f64.ln()) as f32;
    Array1::from_iter((0..half).map(|k| ((neg_log_period * k as f32) / half as f32).exp()))
}

/// Sinusoidal timestep features (B, 256): `[cos(t f), sin(t f)]`, cos first. Timesteps are the
/// model's input times (integers 0..999 for DDIM, `1000 t` for the flow sampler).
pub fn timestep_features(timesteps: &[f32]) -> Array2<f32> {
    let freqs = timestep_frequencies();
    let half = freqs.len();
    let mut out = Array2::<f32>::zeros((timesteps.len(), 2 * half));
    for (mut row, &t) in out.rows_mut().into_iter().zip(timesteps) {
        for (k, &f) in freqs.iter().enumerate() {
            let arg = t * f;
            row[k] = arg.cos();
            row[half + k] = arg.sin();
        }
    }
    out
}

/// The fixed 2-D sin-cos positional embedding (N, D) of DiT for a `grid` x `grid` patch grid: the
/// first D/2 channels encode the patch column, the last D/2 the row; each half is
/// `[sin(pos w_k)..., cos(pos w_k)...]` with `w_k = 10000^(-k/(D/4))`. Computed in float64 like
/// numpy, then rounded.
pub fn pos_embed_2d(hidden: usize, grid: usize) -> Array2<f32> {
    let quarter = hidden / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Array2::<f32>::zeros((grid * grid, hidden));
    for row in 0..grid {
        for col in 0..grid {
            let mut token = out.row_mut(row * grid + col);
            for (half, pos) in [(0, col), (1, row)] {
                for (k, w) in omega.iter().enumerate() {
                    let arg = pos as f64 * w;
                    token[half * 2 * quarter + k] = arg.sin() as f32;
                    token[half * 2 * quarter + quarter + k] = arg.cos() as f32;
                }
            }
        }
    }
    out
}

/// Cuts one image (C, H, W) into patches: (N, C*p*p), token n = row*(W/p) + col, features in the
/// (c, pi, qi) order of a Conv2d weight `[D, C, p, p]` flattened.
pub fn patchify(image: ndarray::ArrayView3<f32>, patch: usize) -> Array2<f32> {
    let (channels, height, width) = image.dim();
    let (rows, cols) = (height / patch, width / patch);
    let mut out = Array2::<f32>::zeros((rows * cols, channels * patch * patch));
    for r in 0..rows {
        for c in 0..cols {
            let mut token = out.row_mut(r * cols + c);
            for ch in 0..channels {
                for pi in 0..patch {
                    for qi in 0..patch {
                        token[(ch * patch + pi) * patch + qi] = image[[ch, r * patch + pi, c * patch + qi]];
                    }
                }
            }
        }
    }
    out
}

/// Inverse of the final layer's token layout: token (h, w) with vector index
/// `(pi*p + qi)*C + ch` goes to pixel (h*p + pi, w*p + qi) of channel ch. Returns (C, H, W).
pub fn unpatchify(tokens: ArrayView2<f32>, patch: usize, channels: usize) -> ndarray::Array3<f32> {
    let n = tokens.nrows();
    let grid = (n as f64).sqrt().round() as usize;
    let mut out = ndarray::Array3::<f32>::zeros((channels, grid * patch, grid * patch));
    for h in 0..grid {
        for w in 0..grid {
            let token = tokens.row(h * grid + w);
            for pi in 0..patch {
                for qi in 0..patch {
                    for ch in 0..channels {
                        out[[ch, h * patch + pi, w * patch + qi]] = token[(pi * patch + qi) * channels + ch];
                    }
                }
            }
        }
    }
    out
}

/// Copies the given rows of `x` into a new (indices.len(), D) matrix.
pub fn gather_rows(x: ArrayView2<f32>, indices: &[usize]) -> Array2<f32> {
    x.select(Axis(0), indices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{Array3, array};

    #[test]
    fn layer_norm_rows_have_zero_mean_unit_variance() {
        let mut x = array![[1.0f32, 2.0, 3.0, 4.0], [-5.0, 0.0, 5.0, 10.0]];
        layer_norm_in_place(x.view_mut());
        for row in x.rows() {
            assert_abs_diff_eq!(row.sum(), 0.0, epsilon = 1e-5);
            // Variance is 1 up to the eps of 1e-6 in the denominator.
            assert_abs_diff_eq!(row.mapv(|v| v * v).sum() / 4.0, 1.0, epsilon = 1e-5);
        }
    }

    /// The fused pass gives the bits of LayerNorm then modulate, on one core (a few rows) and
    /// split over the cores (DiT-XL/2's 256 x 1152).
    #[test]
    fn norm_modulate_is_layer_norm_then_modulate_bit_for_bit() {
        for (rows, width) in [(3, 8), (256, 1152)] {
            let x = Array2::from_shape_fn((rows, width), |(i, j)| ((i * 37 + j * 11) % 101) as f32 * 0.07 - 3.0);
            let shift = Array1::from_shape_fn(width, |j| (j as f32 * 0.3).sin());
            let scale = Array1::from_shape_fn(width, |j| (j as f32 * 0.2).cos() * 0.5);
            let mut expected = x.clone();
            layer_norm_in_place(expected.view_mut());
            modulate_in_place(expected.view_mut(), shift.view(), scale.view());
            assert_eq!(
                norm_modulate(x.view(), shift.view(), scale.view()),
                expected,
                "{rows} x {width}"
            );
        }
    }

    /// `softmax(q k^T / sqrt(head_dim)) v` per head in f64, for (N, 3D) `qkv`.
    fn attention_f64(qkv: &Array2<f32>, heads: usize) -> Array2<f64> {
        let (n, d) = (qkv.nrows(), qkv.ncols() / 3);
        let head_dim = d / heads;
        let mut out = Array2::<f64>::zeros((n, d));
        for h in 0..heads {
            let col = |part: usize, i: usize, c: usize| qkv[[i, part * d + h * head_dim + c]] as f64;
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|j| (0..head_dim).map(|c| col(0, i, c) * col(1, j, c)).sum::<f64>() / (head_dim as f64).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..head_dim {
                    out[[i, h * head_dim + c]] = (0..n).map(|j| weights[j] * col(2, j, c)).sum::<f64>() / total;
                }
            }
        }
        out
    }

    /// Written into a view of a wider matrix (rows `d + 3` apart), attention gives the bits of
    /// [`attention`] and touches nothing else, on one core (a few tokens) and over the cores
    /// (DiT-XL/2's 256 tokens, 16 heads). Against f64 (values up to 1.3 in magnitude), measured
    /// 7.8e-8 (5 tokens) and 8.7e-7 (256 tokens) absolute; the bound leaves room for other BLAS
    /// kernels' summation orders.
    #[test]
    fn attention_into_a_view_equals_attention() {
        for (n, d, heads) in [(5, 8, 2), (256, 1152, 16)] {
            let qkv = Array2::from_shape_fn((n, 3 * d), |(i, j)| {
                (((i * 131 + j * 17) % 97) as f32 / 48.0 - 1.0) * 1.3
            });
            let expected = attention(qkv.view(), heads);
            let mut wide = Array2::<f32>::from_elem((n, d + 3), -7.0);
            attention_into(qkv.view(), heads, wide.slice_mut(s![.., 2..d + 2]));
            assert_eq!(wide.slice(s![.., 2..d + 2]), expected, "{n} tokens, {heads} heads");
            assert!(
                wide.slice(s![.., ..2])
                    .iter()
                    .chain(wide.slice(s![.., d + 2..]))
                    .all(|&v| v == -7.0)
            );
            let exact = attention_f64(&qkv, heads);
            let error = expected
                .iter()
                .zip(&exact)
                .fold(0.0f64, |m, (&a, &e)| m.max((a as f64 - e).abs()));
            println!("{n} tokens, {heads} heads: {error:e} against f64");
            assert!(error < 4e-6, "error {error:e} against f64");
        }
    }

    #[test]
    fn patchify_and_unpatchify_are_inverse_for_the_conv_layout() {
        let image = Array3::from_shape_fn((3, 4, 4), |(c, h, w)| (c * 100 + h * 10 + w) as f32);
        let tokens = patchify(image.view(), 2);
        assert_eq!(tokens.dim(), (4, 12));
        // Token 1 is patch row 0, col 1; feature (c=2, pi=1, qi=0) = pixel (2, 1, 2).
        assert_eq!(tokens[[1, (2 * 2 + 1) * 2]], 212.0);
        // Re-order into the final layer's (pi, qi, ch) layout and come back.
        let final_layout = Array2::from_shape_fn((4, 12), |(n, i)| {
            let (pq, ch) = (i / 3, i % 3);
            tokens[[n, (ch * 2 + pq / 2) * 2 + pq % 2]]
        });
        assert_eq!(unpatchify(final_layout.view(), 2, 3), image);
    }

    #[test]
    fn fast_exp_is_within_two_ulp_of_the_correctly_rounded_exp() {
        let mut worst = 0.0f64;
        for i in -87_000..88_299 {
            let x = i as f32 * 1e-3 + 1.234e-4;
            let exact = (x as f64).exp();
            let ulp = f64::from(f32::EPSILON) * exact;
            worst = worst.max(((exp_f32(x) as f64) - exact).abs() / ulp);
        }
        // Measured: 1.4 ulp at worst over [-87, 88.3].
        assert!(worst < 2.0, "{worst} ulp");
        let mut slice = [0.0f32, 1.0, -1.0, 10.0];
        exp_shifted_slice(&mut slice, 1.0);
        assert!((slice[3] - 9f32.exp()).abs() <= 2.0 * f32::EPSILON * 9f32.exp());
    }

    #[test]
    fn gelu_matches_the_tanh_form() {
        for i in -800..=800 {
            let x = i as f32 * 0.01;
            let tanh_form = 0.5 * x * (1.0 + (0.797_884_6f32 * (x + 0.044715 * x * x * x)).tanh());
            // Measured 2.4e-7 at worst on [-8, 8] (the tanh form loses bits to cancellation for
            // negative x; ours does not).
            assert!((gelu_tanh(x) - tanh_form).abs() < 1e-6, "x = {x}");
        }
        let mut values = [-3.0f32, -0.5, 0.0, 0.5, 3.0];
        let expected = values.map(gelu_tanh);
        gelu_tanh_slice(&mut values);
        assert_eq!(values, expected);
    }

    /// The slice functions (16 or 8 lanes wide where the CPU has AVX-512 or AVX2) give the scalar
    /// functions' bits, on slices long enough for the vector loops and with remainders.
    #[test]
    fn the_vectorised_slices_give_the_scalar_bits() {
        let inputs: Vec<f32> = (0..1601).map(|i| (i as f32 - 800.0) * 0.0137).collect();
        let mut gelu = inputs.clone();
        gelu_tanh_slice(&mut gelu);
        let mut exp = inputs.clone();
        exp_shifted_slice(&mut exp, 1.5);
        for (i, &x) in inputs.iter().enumerate() {
            assert_eq!(gelu[i].to_bits(), gelu_tanh(x).to_bits(), "gelu at {x}");
            assert_eq!(exp[i].to_bits(), exp_f32(x - 1.5).to_bits(), "exp at {x}");
        }
    }

    #[test]
    fn max_of_is_the_sequential_maximum() {
        let sequential = |values: &[f32]| values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for len in [0usize, 1, 15, 16, 17, 33, 64, 65, 130, 256, 300] {
            let mut values: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3).collect();
            assert_eq!(max_of(&values).to_bits(), sequential(&values).to_bits(), "{len} values");
            assert_eq!(
                max_of_lanes(&values).to_bits(),
                sequential(&values).to_bits(),
                "{len} values"
            );
            if len > 3 {
                // NaNs are ignored by both; an infinity wins; all NaN gives -inf.
                values[len / 2] = f32::NAN;
                values[len - 1] = f32::NAN;
                assert_eq!(max_of(&values), sequential(&values), "{len} values with NaNs");
                assert_eq!(max_of_lanes(&values), sequential(&values), "{len} values with NaNs");
                values[1] = f32::INFINITY;
                assert_eq!(max_of(&values), f32::INFINITY);
                values.iter_mut().for_each(|v| *v = f32::NAN);
                assert_eq!(max_of(&values), f32::NEG_INFINITY);
            }
        }
        // A largest value of zero: equal, whatever its sign.
        assert_eq!(max_of(&[-0.0, -1.0, 0.0, -2.0]), 0.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_inputs() {
        let mut x = array![[1000.0f32, 1001.0, 999.0], [0.0, 0.0, 0.0]];
        softmax_rows_in_place(x.view_mut());
        for row in x.rows() {
            assert_abs_diff_eq!(row.sum(), 1.0, epsilon = 1e-6);
        }
        assert_abs_diff_eq!(x[[1, 0]], 1.0 / 3.0, epsilon = 1e-7);
    }

    #[test]
    fn pos_embed_first_half_encodes_column_sin_first() {
        let pe = pos_embed_2d(8, 3);
        // Token (row 2, col 1): column half, k = 0: sin(1 * 1), cos(1 * 1).
        let token = pe.row(2 * 3 + 1);
        assert_abs_diff_eq!(token[0], 1f32.sin(), epsilon = 1e-7);
        assert_abs_diff_eq!(token[2], 1f32.cos(), epsilon = 1e-7);
        // Row half, k = 0: sin(2), cos(2).
        assert_abs_diff_eq!(token[4], 2f32.sin(), epsilon = 1e-7);
        assert_abs_diff_eq!(token[6], 2f32.cos(), epsilon = 1e-7);
    }
}
