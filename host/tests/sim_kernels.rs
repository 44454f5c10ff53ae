//! Every kernel, run through the simulator, against the reference ops (`resca_reference::ops`,
//! `model::apply_guidance`, `DdimSchedule::step`) on random shapes, including sizes that are not
//! multiples of the tile and block sizes (GEMM 64 x 64 x 16, attention 16 queries x 32 keys,
//! 8 rows per norm block, 8 tokens per patch block, 256-thread elementwise blocks).
//!
//! Inputs are uniform in [-1, 1], weights scaled by 1/sqrt(fan_in), so outputs are O(1) and the
//! tolerances are absolute. Each tolerance is written beside its assertion with the largest error
//! measured over 2,000 cases per kernel (`PROPTEST_CASES=2000`); CI runs 24 cases each from a
//! fixed seed (`support::proptest_config`). Every property runs with the simulator's blocks in
//! grid order and reversed (`support::in_every_block_order`).

mod support;

use ndarray::{Array1, Array2, Array3, Array4, ArrayView2, Axis, s};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use resca_host::pipeline::ddim_coefficients;
use resca_reference::ddim::DdimSchedule;
use resca_reference::{model, ops};
use resca_tests::max_abs_diff;
use support::kernels::{self, Epilogue};

/// Deterministic uniform values in [-scale, scale] (xorshift64*).
fn values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn matrix(seed: u64, rows: usize, cols: usize, scale: f32) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), values(seed, rows * cols, scale)).unwrap()
}

fn flat<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// Prints the error of each case when `SIM_PRINT_ERRORS` is set (to measure the budgets).
fn report(kernel: &str, err: f32) {
    if std::env::var_os("SIM_PRINT_ERRORS").is_some() {
        eprintln!("{kernel}: {err:.3e}");
    }
}

proptest! {
    #![proptest_config(support::proptest_config())]

    #[test]
    fn timestep_features_match(batch in 1usize..6, seed in any::<u64>(), integer in any::<bool>()) {
        support::in_every_block_order(|| {
            let t: Vec<f32> = values(seed, batch, 500.0)
                .into_iter()
                .map(|v| if integer { (v + 500.0).round() } else { v + 500.0 })
                .collect();
            let mut ours = vec![0.0f32; batch * 256];
            kernels::timestep_features(&t, &mut ours).unwrap();
            let err = max_abs_diff("timestep_features", &ours, &flat(&ops::timestep_features(&t)));
            report("timestep_features", err);
            // Frequencies are bit-identical to glibc's; cos/sin of the same f32 argument differ by
            // at most 1 ulp (6e-8). Measured max 6.0e-8.
            prop_assert!(err <= 1.2e-7, "err {}", err);
            Ok(())
        })?;
    }

    #[test]
    fn linear_rows_match(rows in 1usize..6, inf in 1usize..300, outf in 1usize..80, silu in any::<bool>(), seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let x = matrix(seed, rows, inf, 1.0);
            let w = matrix(seed ^ 1, outf, inf, 1.0 / (inf as f32).sqrt());
            let b = Array1::from(values(seed ^ 2, outf, 0.1));
            let mut ours = vec![0.0f32; rows * outf];
            kernels::linear_rows(x.as_slice().unwrap(), w.as_slice().unwrap(), b.as_slice().unwrap(), &mut ours, rows, inf, outf, silu).unwrap();
            let mut expected = ops::linear(x.view(), w.view(), b.view());
            if silu {
                expected.mapv_inplace(ops::silu);
            }
            let err = max_abs_diff("linear_rows", &ours, &flat(&expected));
            report("linear_rows", err);
            // Summation order (32 strided partial sums + a butterfly vs BLAS). Measured max 9.5e-7.
            prop_assert!(err <= 3e-6, "err {}", err);
            Ok(())
        })?;
    }

    #[test]
    fn label_embed_silu_matches(batch in 1usize..6, hidden in 1usize..600, classes in 1usize..12, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let t_emb = matrix(seed, batch, hidden, 2.0);
            let table = matrix(seed ^ 1, classes + 1, hidden, 2.0);
            let labels: Vec<usize> = (0..batch).map(|i| (seed as usize + 7 * i) % (classes + 1)).collect();
            let labels_u32: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
            let mut ours = vec![0.0f32; batch * hidden];
            kernels::label_embed_silu(t_emb.as_slice().unwrap(), table.as_slice().unwrap(), &labels_u32, &mut ours, hidden).unwrap();
            let expected = (&t_emb + &table.select(Axis(0), &labels)).mapv(ops::silu);
            let err = max_abs_diff("label_embed_silu", &ours, &flat(&expected));
            report("label_embed_silu", err);
            // One exp (within 2 ulp of glibc) per value; |silu| up to 4, where 1 ulp is 4.8e-7.
            // Measured max 4.8e-7.
            prop_assert!(err <= 1.5e-6, "err {}", err);
            Ok(())
        })?;
    }

    #[test]
    fn patch_embed_matches(batch in 1usize..3, channels in 1usize..5, patch in 1usize..5, grid in 1usize..6, hidden in 1usize..150, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let side = grid * patch;
            let features = channels * patch * patch;
            let tokens = grid * grid;
            let x = Array4::from_shape_vec((batch, channels, side, side), values(seed, batch * channels * side * side, 1.0)).unwrap();
            let w = matrix(seed ^ 1, hidden, features, 1.0 / (features as f32).sqrt());
            let b = Array1::from(values(seed ^ 2, hidden, 0.1));
            let pos = matrix(seed ^ 3, tokens, hidden, 1.0);
            let mut ours = vec![0.0f32; batch * tokens * hidden];
            kernels::patch_embed(x.as_slice().unwrap(), w.as_slice().unwrap(), b.as_slice().unwrap(), pos.as_slice().unwrap(), &mut ours, batch, channels, side, patch, hidden).unwrap();
            let mut expected = Vec::new();
            for row in 0..batch {
                let patches = ops::patchify(x.index_axis(Axis(0), row), patch);
                expected.extend(flat(&(ops::linear(patches.view(), w.view(), b.view()) + &pos)));
            }
            let err = max_abs_diff("patch_embed", &ours, &expected);
            report("patch_embed", err);
            // Up to 64 products summed in another order. Measured max 4.8e-7.
            prop_assert!(err <= 2e-6, "err {}", err);
            Ok(())
        })?;
    }

    #[test]
    fn layer_norm_modulate_matches(batch in 1usize..4, tokens in 1usize..20, hidden in 2usize..300, seed in any::<u64>(), branch in 0usize..2) {
        support::in_every_block_order(|| {
            let rows = batch * tokens;
            let x = matrix(seed, rows, hidden, 3.0) + 0.5;
            let modulation = matrix(seed ^ 1, batch, 6 * hidden, 1.0);
            let (shift, scale) = (3 * branch * hidden, (3 * branch + 1) * hidden);
            let mut ours = vec![0.0f32; rows * hidden];
            kernels::layer_norm_modulate(x.as_slice().unwrap(), modulation.as_slice().unwrap(), &mut ours, rows, hidden, tokens, 6 * hidden, shift, scale).unwrap();
            let mut expected = Vec::new();
            for b in 0..batch {
                let m = modulation.row(b);
                let xs = x.slice(s![b * tokens..(b + 1) * tokens, ..]);
                expected.extend(flat(&ops::norm_modulate(xs, m.slice(s![shift..shift + hidden]), m.slice(s![scale..scale + hidden]))));
            }
            let err = max_abs_diff("layer_norm_modulate", &ours, &expected);
            report("layer_norm_modulate", err);
            // Mean and variance summed as 32 strided partials + butterfly vs sequentially; outputs up
            // to ~8, where 1 ulp is 9.5e-7. Measured max 1.9e-6.
            prop_assert!(err <= 6e-6, "err {}", err);
            Ok(())
        })?;
    }

    #[test]
    fn gemm_bias_and_gelu_match(m in 1usize..150, n in 1usize..150, k in 1usize..90, gelu in any::<bool>(), seed in any::<u64>()) {
        support::in_every_block_order(|| check_gemm(m, n, k, gelu, seed))?;
    }

    #[test]
    fn gemm_gated_residual_matches(batch in 1usize..4, tokens in 1usize..40, n in 1usize..100, k in 1usize..90, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let m = batch * tokens;
            let a = matrix(seed, m, k, 1.0);
            let w = matrix(seed ^ 1, n, k, 1.0 / (k as f32).sqrt());
            let b = Array1::from(values(seed ^ 2, n, 0.1));
            let modulation = matrix(seed ^ 3, batch, 6 * n, 1.0);
            let x0 = matrix(seed ^ 4, m, n, 1.0);
            let mut ours = flat(&x0);
            kernels::gemm_gated_residual(a.as_slice().unwrap(), w.as_slice().unwrap(), b.as_slice().unwrap(), &mut ours, modulation.as_slice().unwrap(), m, n, k, tokens, 6 * n, 5 * n).unwrap();
            let branch = ops::linear(a.view(), w.view(), b.view());
            let mut expected = x0.clone();
            for row in 0..batch {
                let rows = row * tokens..(row + 1) * tokens;
                ops::gated_add(
                    expected.slice_mut(s![rows.clone(), ..]),
                    modulation.slice(s![row, 5 * n..6 * n]),
                    branch.slice(s![rows, ..]),
                );
            }
            let err = max_abs_diff("gemm_gated_residual", &ours, &flat(&expected));
            report("gemm_gated_residual", err);
            // As the GEMM, times a gate in [-1, 1], plus the residual. Measured max 4.8e-7.
            prop_assert!(err <= 3e-6, "err {}", err);
            Ok(())
        })?;
    }

    #[test]
    fn attention_matches(batch in 1usize..3, tokens in 1usize..72, heads in 1usize..4, head_dim in 1usize..=128, seed in any::<u64>()) {
        support::in_every_block_order(|| check_attention(batch, tokens, heads, head_dim, seed))?;
    }

    #[test]
    fn unpatchify_matches(batch in 1usize..3, channels in 1usize..9, patch in 1usize..5, grid in 1usize..6, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let tokens = grid * grid;
            let width = patch * patch * channels;
            let side = grid * patch;
            let x = Array3::from_shape_vec((batch, tokens, width), values(seed, batch * tokens * width, 1.0)).unwrap();
            let mut ours = vec![0.0f32; batch * channels * side * side];
            kernels::unpatchify(x.as_slice().unwrap(), &mut ours, batch, channels, side, patch).unwrap();
            let mut expected = Vec::new();
            for row in 0..batch {
                expected.extend(flat(&ops::unpatchify(x.index_axis(Axis(0), row), patch, channels)));
            }
            // A pure permutation: exact.
            prop_assert_eq!(ours, expected);
            Ok(())
        })?;
    }

    #[test]
    fn cfg_mix_matches(pairs in 1usize..4, channels in 1usize..9, side in 1usize..9, scale in -2.0f32..5.0, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let b = 2 * pairs;
            let mut expected = Array4::from_shape_vec((b, channels, side, side), values(seed, b * channels * side * side, 3.0)).unwrap();
            let mut ours = flat(&expected);
            kernels::cfg_mix(&mut ours, pairs, channels, side * side, scale).unwrap();
            model::apply_guidance(&mut expected, scale);
            // The same float operations in the same order: exact.
            prop_assert_eq!(ours, flat(&expected));
            Ok(())
        })?;
    }

    #[test]
    fn ddim_step_matches(batch in 1usize..4, channels in 1usize..5, learn_sigma in any::<bool>(), side in 1usize..9, s in 0usize..50, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let schedule = DdimSchedule::new(50).unwrap();
            let oc = if learn_sigma { 2 * channels } else { channels };
            let x = Array4::from_shape_vec((batch, channels, side, side), values(seed, batch * channels * side * side, 3.0)).unwrap();
            let model_out = Array4::from_shape_vec((batch, oc, side, side), values(seed ^ 1, batch * oc * side * side, 1.0)).unwrap();
            let mut ours = vec![0.0f32; x.len()];
            kernels::ddim_step(x.as_slice().unwrap(), model_out.as_slice().unwrap(), &mut ours, channels, oc, side * side, ddim_coefficients(&schedule, s)).unwrap();
            let expected = schedule.step(s, x.view(), model_out.slice(s![.., ..channels, .., ..]));
            // Same coefficients, same operations, same order: exact.
            prop_assert_eq!(ours, flat(&expected));
            Ok(())
        })?;
    }

    #[test]
    fn gated_add_matches(batch in 1usize..4, tokens in 1usize..30, hidden in 1usize..200, seed in any::<u64>()) {
        support::in_every_block_order(|| {
            let rows = batch * tokens;
            let x0 = matrix(seed, rows, hidden, 1.0);
            let branch = matrix(seed ^ 1, rows, hidden, 1.0);
            let modulation = matrix(seed ^ 2, batch, 6 * hidden, 1.0);
            let mut ours = flat(&x0);
            kernels::gated_add(&mut ours, branch.as_slice().unwrap(), modulation.as_slice().unwrap(), rows, hidden, tokens, 6 * hidden, 2 * hidden).unwrap();
            let mut expected = x0.clone();
            for row in 0..batch {
                let r = row * tokens..(row + 1) * tokens;
                ops::gated_add(expected.slice_mut(s![r.clone(), ..]), modulation.slice(s![row, 2 * hidden..3 * hidden]), branch.slice(s![r, ..]));
            }
            // `x + g * b` in both: exact.
            prop_assert_eq!(ours, flat(&expected));
            Ok(())
        })?;
    }
}

/// The tiled GEMM with its bias (and GELU) epilogue against the reference linear layer.
fn check_gemm(m: usize, n: usize, k: usize, gelu: bool, seed: u64) -> Result<(), TestCaseError> {
    let a = matrix(seed, m, k, 1.0);
    let w = matrix(seed ^ 1, n, k, 1.0 / (k as f32).sqrt());
    let b = Array1::from(values(seed ^ 2, n, 0.1));
    let mut ours = vec![0.0f32; m * n];
    let epilogue = if gelu { Epilogue::BiasGelu } else { Epilogue::Bias };
    kernels::gemm(
        a.as_slice().unwrap(),
        w.as_slice().unwrap(),
        b.as_slice().unwrap(),
        &mut ours,
        m,
        n,
        k,
        epilogue,
    )
    .unwrap();
    let mut expected = ops::linear(a.view(), w.view(), b.view());
    if gelu {
        expected.mapv_inplace(ops::gelu_tanh);
    }
    let err = max_abs_diff("gemm", &ours, &flat(&expected));
    report("gemm", err);
    // Sequential-k accumulation vs OpenBLAS's FMA blocks; GELU's tanh within 1.2e-7
    // absolute. Measured max 7.2e-7.
    prop_assert!(err <= 3e-6, "err {}", err);
    Ok(())
}

/// Attention of `heads` heads of `head_dim` against the reference.
fn check_attention(batch: usize, tokens: usize, heads: usize, head_dim: usize, seed: u64) -> Result<(), TestCaseError> {
    let d = heads * head_dim;
    let qkv = matrix(seed, batch * tokens, 3 * d, 1.5);
    let mut ours = vec![0.0f32; batch * tokens * d];
    kernels::attention(qkv.as_slice().unwrap(), &mut ours, batch, tokens, heads, head_dim).unwrap();
    let mut expected = Vec::new();
    for row in 0..batch {
        let part: ArrayView2<f32> = qkv.slice(s![row * tokens..(row + 1) * tokens, ..]);
        expected.extend(flat(&ops::attention(part, heads)));
    }
    let err = max_abs_diff("attention", &ours, &expected);
    report("attention", err);
    // Online softmax (rescaled running sums, division at the end) vs a two-pass softmax;
    // outputs are convex combinations of values in [-1.5, 1.5]. Measured max 4.8e-7.
    prop_assert!(err <= 3e-6, "err {}", err);
    Ok(())
}

/// The GEMM at its tile edges: one row, column or k step, and sizes one below, at and one above
/// the 64 x 64 x 16 tile.
#[test]
fn gemm_matches_at_its_tile_edges() {
    for m in [1, 63, 64, 65] {
        for n in [1, 64, 65] {
            for k in [1, 16, 17] {
                support::in_every_block_order(|| check_gemm(m, n, k, true, 3))
                    .unwrap_or_else(|e| panic!("{m} x {n} x {k}: {e}"));
            }
        }
    }
}

/// Attention at the edges of what it accepts: head dimensions 1, 127 and 128 (the largest), with
/// token counts around the 16-query and 32-key tiles.
#[test]
fn attention_matches_at_its_edges() {
    for head_dim in [1, 127, 128] {
        for tokens in [1, 15, 16, 17, 31, 32, 33] {
            support::in_every_block_order(|| check_attention(1, tokens, 2, head_dim, 9))
                .unwrap_or_else(|e| panic!("{tokens} tokens, head dim {head_dim}: {e}"));
        }
    }
}
