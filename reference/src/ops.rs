//! The numerical building blocks of DiT, on row-major ndarray matrices (one row per token).
//!
//! Each function mirrors one line of facebookresearch/DiT `models.py` (SPEC.md section 1). They are
//! also the oracle the GPU kernels are property-tested against, so they stay small and literal.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip, s};

/// LayerNorm epsilon used by every DiT norm (`nn.LayerNorm(..., eps=1e-6)`).
pub const LAYER_NORM_EPS: f32 = 1e-6;

/// Width of the sinusoidal timestep features fed to `t_embedder.mlp.0`.
pub const TIMESTEP_FEATURES: usize = 256;

/// `x W^T + b` for a PyTorch `nn.Linear` weight `w` of shape (out, in).
pub fn linear(x: ArrayView2<f32>, w: ArrayView2<f32>, b: ArrayView1<f32>) -> Array2<f32> {
    let mut y = x.dot(&w.t());
    y += &b;
    y
}

/// `nn.SiLU`: `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU with the tanh approximation (`nn.GELU(approximate="tanh")`), as DiT's MLP uses.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// LayerNorm without affine parameters over the last axis, in place: `(x - mean) / sqrt(var + eps)`
/// with the biased variance, as `torch.nn.LayerNorm` computes it.
pub fn layer_norm_in_place(mut x: ArrayViewMut2<f32>) {
    for mut row in x.rows_mut() {
        let n = row.len() as f32;
        let mean = row.sum() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv_std = 1.0 / (var + LAYER_NORM_EPS).sqrt();
        row.mapv_inplace(|v| (v - mean) * inv_std);
    }
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
    let mut h = x.to_owned();
    layer_norm_in_place(h.view_mut());
    modulate_in_place(h.view_mut(), shift, scale);
    h
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
    let (n, three_d) = qkv.dim();
    let d = three_d / 3;
    let head_dim = d / heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = Array2::<f32>::zeros((n, d));
    for h in 0..heads {
        let cols = h * head_dim..(h + 1) * head_dim;
        let q = qkv.slice(s![.., cols.clone()]);
        let k = qkv.slice(s![.., d + cols.start..d + cols.end]);
        let v = qkv.slice(s![.., 2 * d + cols.start..2 * d + cols.end]);
        let mut scores = q.dot(&k.t());
        scores *= scale;
        softmax_rows_in_place(scores.view_mut());
        out.slice_mut(s![.., cols]).assign(&scores.dot(&v));
    }
    out
}

/// Row-wise softmax, in place, with the row maximum subtracted first for stability.
pub fn softmax_rows_in_place(mut x: ArrayViewMut2<f32>) {
    for mut row in x.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
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
