//! The attention kernel (`flash_attention`) on the simulator against the reference's two-pass
//! softmax (`resca_reference::ops::attention`), at the edges of its tiling: head dimensions 1, 72
//! (DiT's), 127 and 128 (the largest), token counts on both sides of the 16-key and 32-query
//! tiles, one token; and with NaN in a query, a key or a value, where the NaN must land where
//! the reference puts it and nowhere else.

mod support;

use ndarray::Array2;
use resca_tests::{max_abs_diff, max_abs_diff_matching_non_finite};
use support::{attention_reference, kernels, seeded_matrix};

/// The kernel's attention of `qkv`.
fn kernel(qkv: &Array2<f32>, batch: usize, tokens: usize, heads: usize, head_dim: usize) -> Vec<f32> {
    let mut out = vec![f32::MAX; batch * tokens * heads * head_dim];
    let qkv = qkv.as_standard_layout();
    kernels::attention(qkv.as_slice().unwrap(), &mut out, batch, tokens, heads, head_dim).unwrap();
    out
}

/// Prints `err` with `SIM_PRINT_ERRORS` set (the measured errors the tolerances quote).
fn report(case: &str, err: f32) {
    if std::env::var_os("SIM_PRINT_ERRORS").is_some() {
        eprintln!("{case}: {err:.3e}");
    }
}

#[test]
fn attention_matches_the_reference_at_the_tile_edges() {
    let mut worst = 0.0f32;
    for head_dim in [1, 72, 127, 128] {
        for tokens in [1, 15, 16, 17, 31, 32, 33, 48, 65] {
            let (batch, heads) = (2, 2);
            let seed = (head_dim * 1000 + tokens) as u64;
            let qkv = seeded_matrix(seed, batch * tokens, 3 * heads * head_dim, 1.5);
            let err = max_abs_diff(
                &format!("head_dim {head_dim}, tokens {tokens}"),
                &kernel(&qkv, batch, tokens, heads, head_dim),
                &attention_reference(&qkv, batch, tokens, heads),
            );
            // Online softmax (rescaled running sums, FMA dot products, division at the end)
            // against a two-pass softmax over BLAS products; outputs are convex combinations of
            // values in [-1.5, 1.5]. Measured max over these cases 5.4e-7.
            assert!(err <= 3e-6, "head_dim {head_dim}, tokens {tokens}: err {err}");
            report(&format!("head_dim {head_dim}, tokens {tokens}"), err);
            worst = worst.max(err);
        }
    }
    assert!(
        worst > 0.0,
        "a two-pass softmax and an online one do not agree to the bit everywhere"
    );
}

#[test]
fn attention_handles_large_scores_like_the_reference() {
    // Scores of +-30 after scaling: the running maximum moves between key tiles, and a
    // rescaling that went wrong would overflow or zero whole rows.
    let (batch, tokens, heads, head_dim) = (1, 70, 1, 16);
    let qkv = seeded_matrix(7, batch * tokens, 3 * heads * head_dim, 6.0);
    let err = max_abs_diff(
        "large scores",
        &kernel(&qkv, batch, tokens, heads, head_dim),
        &attention_reference(&qkv, batch, tokens, heads),
    );
    report("large scores", err);
    // Values in [-6, 6], near one-hot rows. Measured 1.9e-6.
    assert!(err <= 2e-5, "err {err}");
}

#[test]
fn nan_lands_where_the_reference_puts_it() {
    let (batch, tokens, heads, head_dim) = (2, 40, 2, 72);
    let d = heads * head_dim;
    // (row, column) of the NaN: a query of head 0, a key of head 1, a value feature of head 0.
    for (row, col) in [(5, 3), (tokens + 33, d + head_dim + 7), (17, 2 * d + 70)] {
        let mut qkv = seeded_matrix(11, batch * tokens, 3 * d, 1.5);
        qkv[[row, col]] = f32::NAN;
        let ours = kernel(&qkv, batch, tokens, heads, head_dim);
        let expected = attention_reference(&qkv, batch, tokens, heads);
        let nans = expected.iter().filter(|v| v.is_nan()).count();
        assert!(
            nans > 0 && nans < expected.len(),
            "the reference spreads the NaN of ({row}, {col}) partly"
        );
        let err = max_abs_diff_matching_non_finite("attention with a NaN input", &ours, &expected);
        report(&format!("NaN at ({row}, {col})"), err);
        // The same NaN pattern, the rest as in the finite cases (measured max 2.4e-7).
        assert!(err <= 3e-6, "NaN at ({row}, {col}): err {err}");
    }
}

#[test]
fn attention_refuses_head_dims_it_does_not_cover() {
    for head_dim in [0, 129] {
        let qkv = vec![0.0f32; 3 * head_dim.max(1)];
        let mut out = vec![0.0f32; head_dim.max(1)];
        let err = kernels::attention(&qkv, &mut out, 1, 1, 1, head_dim).unwrap_err();
        assert!(err.to_string().contains("head_dim"), "{err}");
    }
}
