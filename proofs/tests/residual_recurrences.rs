//! The multi-order residual `Delta^(m)` (supplement Eq. S4) and its relation to the
//! finite-difference derivatives the reference caches (`resca_reference::cache::taylor`).
//!
//! Exact integer arithmetic (`i128`) wherever the claim is algebraic; the reference's `f32`
//! caches are fed small integers and power-of-two gaps, for which every operation they perform
//! is exact, so those claims are checked with `==`; other gaps get a stated tolerance.

use ndarray::Array3;
use proptest::prelude::*;
use resca_proofs::residuals::{residual, residuals_up_to};
use resca_reference::cache::taylor::TaylorFactors;

fn binomial(m: usize, k: usize) -> i128 {
    (0..k).fold(1i128, |acc, j| acc * (m - j) as i128 / (j + 1) as i128)
}

fn factorial(m: usize) -> i128 {
    (1..=m as i128).product()
}

/// `sum_{k=0..m} (-1)^k C(m, k) x_{t+k}`, the closed form, written independently of the
/// recursion.
fn closed_form(m: usize, window: &[i128]) -> i128 {
    (0..=m)
        .map(|k| {
            let sign = if k % 2 == 0 { 1 } else { -1 };
            sign * binomial(m, k) * window[k]
        })
        .sum()
}

/// `sum_j c_j t^j` in exact integers.
fn polynomial(coefficients: &[i128], t: i128) -> i128 {
    coefficients.iter().rev().fold(0, |acc, &c| acc * t + c)
}

/// A window `[x_t, ..., x_{t+m}]` of integers in `[-1e6, 1e6]`, `m in 0..=12`.
fn order_and_window() -> impl Strategy<Value = (usize, Vec<i128>)> {
    (0usize..=12).prop_flat_map(|m| {
        (
            Just(m),
            prop::collection::vec((-1_000_000i64..=1_000_000).prop_map(i128::from), m + 1),
        )
    })
}

proptest! {
    #![proptest_config(resca_tests::proptest_config(256))]
    /// `Delta^(m) x_t = sum_k (-1)^k C(m, k) x_{t+k}`, exactly (integers).
    #[test]
    fn residual_recursion_equals_the_binomial_closed_form((m, window) in order_and_window()) {
        prop_assert_eq!(residual(m, &window), closed_form(m, &window));
    }

    /// The `O(m^2)` table gives the same orders `0..=m` as the literal recursion, exactly.
    #[test]
    fn residual_table_equals_the_recursion((m, window) in order_and_window()) {
        let table = residuals_up_to(m, &window);
        let literal: Vec<i128> = (0..=m).map(|j| residual(j, &window)).collect();
        prop_assert_eq!(table, literal);
    }

    /// `Delta^(m)(a x + b y) = a Delta^(m) x + b Delta^(m) y`, exactly (integers).
    #[test]
    fn residual_is_linear(
        (m, x) in order_and_window(),
        y in prop::collection::vec((-1_000_000i64..=1_000_000).prop_map(i128::from), 13),
        a in -1000i128..=1000,
        b in -1000i128..=1000,
    ) {
        let combined: Vec<i128> = x.iter().zip(&y).map(|(xi, yi)| a * xi + b * yi).collect();
        prop_assert_eq!(residual(m, &combined), a * residual(m, &x) + b * residual(m, &y[..=m]));
    }

    /// For `x_t = p(t)` with `p` of degree `deg` (integer coefficients, leading `a != 0`),
    /// `Delta^(m)` vanishes for `deg < m` and equals `(-1)^m m! a` for `deg = m`, exactly.
    /// The sign: the paper's `t` counts down along the run (`x_{t+1}` is one step EARLIER), so
    /// in the sampling position `u = -t` the polynomial's leading coefficient is `(-1)^m a` and
    /// the value is `m!` times it, as for a forward unit-step difference.
    #[test]
    fn residual_annihilates_lower_degree_and_takes_m_factorial_times_the_leading_coefficient(
        m in 0usize..=10,
        degree in 0usize..=10,
        coefficients in prop::collection::vec(-50i128..=50, 11),
        leading in prop_oneof![-50i128..=-1, 1i128..=50],
        t in -20i128..=20,
    ) {
        prop_assume!(degree <= m);
        let mut p = coefficients[..degree].to_vec();
        p.push(leading);
        let window: Vec<i128> = (0..=m as i128).map(|k| polynomial(&p, t + k)).collect();
        let expected = if degree < m {
            0
        } else {
            let sign = if m % 2 == 0 { 1 } else { -1 };
            sign * factorial(m) * leading
        };
        prop_assert_eq!(residual(m, &window), expected);
        // The same polynomial read in the sampling position u = -t: x = q(u) with q(u) = p(-u).
        let q: Vec<i128> = p.iter().enumerate().map(|(j, c)| if j % 2 == 0 { *c } else { -c }).collect();
        let window_u: Vec<i128> = (0..=m as i128).map(|k| polynomial(&q, -t - k)).collect();
        prop_assert_eq!(&window_u, &window);
        if degree == m {
            prop_assert_eq!(residual(m, &window_u), factorial(m) * q[m]);
        }
    }
}

/// The values `x(s_0), x(s_1), ...` fed to the cache (one (1, 1, D) array per update).
fn to_array(values: &[f32]) -> Array3<f32> {
    Array3::from_shape_vec((1, 1, values.len()), values.to_vec()).unwrap()
}

/// Runs `TaylorFactors::update` over `sequence` (updates at `s_0, s_0 + g, s_0 + 2g, ...`;
/// the first update's gap is unused, as at the first full step) and returns the cache.
fn cache_after(sequence: &[Vec<f32>], gap: f32, max_order: usize) -> TaylorFactors {
    let mut cache = TaylorFactors::default();
    for (k, values) in sequence.iter().enumerate() {
        cache.update(to_array(values).view(), if k == 0 { 0.0 } else { gap }, max_order);
    }
    cache
}

/// `Delta^(m)` of component `i`, in exact integers, over the newest-first window of the last
/// `m + 1` updates.
fn residual_of_updates(sequence: &[Vec<f32>], i: usize, m: usize) -> i128 {
    let window: Vec<i128> = sequence.iter().rev().take(m + 1).map(|v| v[i] as i128).collect();
    residual(m, &window)
}

/// 1..=8 updates of an integer vector with `D in 1..=4` components in `[-1000, 1000]`.
fn updates() -> impl Strategy<Value = Vec<Vec<f32>>> {
    (1usize..=4).prop_flat_map(|d| {
        prop::collection::vec(
            prop::collection::vec((-1000i32..=1000).prop_map(|v| v as f32), d),
            1..=8,
        )
    })
}

proptest! {
    #![proptest_config(resca_tests::proptest_config(256))]
    /// The reference's finite-difference derivatives are the residuals divided by the gap.
    ///
    /// Derivation: with updates at `s_0, s_1 = s_0 + g, ..., s_k` (constant gap `g`) and
    /// `nabla y_k = y_k - y_{k-1}` the backward difference in update order, induction on
    /// `F_m(k) = (F_{m-1}(k) - F_{m-1}(k-1)) / g` gives `F_m(k) = nabla^m x(s_k) / g^m` for
    /// `m <= min(k, max_order)` (no higher order is stored). `nabla^m x(s_k)` is `Delta^(m)`
    /// of the newest-first window `[x(s_k), x(s_{k-1}), ...]`. For DDIM's unit steps
    /// (`g = -1`, step index counting down) that window is the paper's `[x_t, x_{t+1}, ...]`
    /// with `t = s_k`, so `F_m = (-1)^m Delta^(m) x_t`, i.e. `Delta^(m) x_t = sign^m F_m`,
    /// the `R^(m) = sign^m c[m]` that `pdds::simulate` reads; for flow (`g = +1`)
    /// `F_m = Delta^(m) x_t`; at an interval gap `g = -N`, `F_m` is `Delta^(m)` of the
    /// N-step-subsampled run divided by `(-N)^m`.
    ///
    /// Power-of-two gaps and integers up to 1000 make every `f32` operation of `update` exact
    /// (differences below `2^24`, divisions by powers of two), so equality is exact.
    #[test]
    fn taylor_factors_are_residuals_divided_by_gap_powers_exactly(
        sequence in updates(),
        gap in prop::sample::select(vec![-1.0f32, 1.0, -2.0, 2.0, -4.0, -8.0]),
        max_order in 0usize..=4,
    ) {
        let cache = cache_after(&sequence, gap, max_order);
        let k = sequence.len() - 1;
        prop_assert_eq!(cache.order(), k.min(max_order));
        for m in 0..=cache.order() {
            for i in 0..sequence[0].len() {
                let expected = residual_of_updates(&sequence, i, m) as f64 / f64::from(gap).powi(m as i32);
                prop_assert_eq!(cache.orders[m][[0, 0, i]], expected as f32, "order {}, component {}", m, i);
            }
        }
    }

    /// The same for gaps that are not powers of two (`-3, -5, -7, 3`): every division then
    /// rounds, each step with relative error `<= 2^-24`; `F_m` goes through `m` rounded
    /// divisions of differences of at most `2^m max|x|`, so the absolute error is below
    /// `2 m 2^-24 2^m max|x| / |g|^m`; the tolerance is twice that.
    #[test]
    fn taylor_factors_are_residuals_divided_by_gap_powers_for_any_gap(
        sequence in updates(),
        gap in prop::sample::select(vec![-3.0f32, -5.0, -7.0, 3.0]),
        max_order in 0usize..=4,
    ) {
        let cache = cache_after(&sequence, gap, max_order);
        prop_assert_eq!(cache.order(), (sequence.len() - 1).min(max_order));
        let max_abs = sequence.iter().flatten().fold(1.0f64, |acc, v| acc.max(f64::from(v.abs())));
        for m in 0..=cache.order() {
            let g_m = f64::from(gap).powi(m as i32);
            let tolerance = 4.0 * m as f64 * 2f64.powi(-24) * 2f64.powi(m as i32) * max_abs / g_m.abs();
            for i in 0..sequence[0].len() {
                let expected = residual_of_updates(&sequence, i, m) as f64 / g_m;
                let got = f64::from(cache.orders[m][[0, 0, i]]);
                prop_assert!((got - expected).abs() <= tolerance, "order {m}: {got} vs {expected}");
            }
        }
    }

    /// TaylorSeer's prediction one more gap ahead is the sum of the residuals over factorials:
    /// `predict(g) = sum_m F_m g^m / m! = sum_m Delta^(m) / m!` (the `g^m` cancel). This is the
    /// explicit extrapolation that PDDS falls back to when a driven token has no confidence in
    /// its proxy (`tests/pdds_linear.rs`). Tolerance: `predict` rounds `F_m g^m / m!` and the
    /// sum, relative `2^-24` per operation on terms of at most `2^m max|x| / m!`.
    #[test]
    fn taylorseer_prediction_one_gap_ahead_is_the_sum_of_residuals_over_factorials(
        sequence in updates(),
        gap in prop::sample::select(vec![-1.0f32, 1.0, -2.0, -4.0, -3.0, -5.0]),
        max_order in 0usize..=4,
    ) {
        let cache = cache_after(&sequence, gap, max_order);
        let predicted = cache.predict(gap);
        let max_abs = sequence.iter().flatten().fold(1.0f64, |acc, v| acc.max(f64::from(v.abs())));
        for i in 0..sequence[0].len() {
            let expected: f64 = (0..=cache.order())
                .map(|m| residual_of_updates(&sequence, i, m) as f64 / factorial(m) as f64)
                .sum();
            let tolerance = 64.0 * 2f64.powi(-24) * 16.0 * max_abs;
            let got = f64::from(predicted[[0, 0, i]]);
            prop_assert!((got - expected).abs() <= tolerance, "component {i}: {got} vs {expected}");
        }
    }
}
