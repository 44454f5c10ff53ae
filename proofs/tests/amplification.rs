//! The amplification factors themselves: closed forms, the recurrences they come from, the
//! premises of the maximum-modulus argument (pole locations, decay at infinity), and
//! finite-safety for huge `|z|`.

mod common;

use approx::{assert_abs_diff_eq, assert_relative_eq};
use common::closed_left_half_plane;
use ndarray::array;
use ndarray_linalg::EigVals;
use proptest::prelude::*;
use resca_proofs::amplification::{
    bdf2_roots, bdf2_spectral_radius, implicit_taylor_poles, taylor_polynomial, taylor_polynomial_abs,
};
use resca_proofs::{Complex, Scheme, gain};

fn factorial(m: u32) -> f64 {
    (1..=m).map(f64::from).product()
}

/// Small, O(1) arguments where Horner is accurate to a few ulps.
fn moderate() -> impl Strategy<Value = Complex> {
    (-5.0f64..5.0, -5.0f64..5.0).prop_map(|(re, im)| Complex::new(re, im))
}

proptest! {
    #![proptest_config(resca_tests::proptest_config(256))]
    /// Horner's rule equals the defining sum `sum_{m<=M} w^m/m!` (relative tolerance 1e-12:
    /// both are sums of at most five terms of size <= 5^4/24 ~ 26, so their rounding is
    /// below 1e-14 of the largest term; relative to the result this can be larger only near
    /// a zero, hence the absolute floor 1e-12).
    #[test]
    fn taylor_polynomial_is_the_truncated_exponential_series(w in moderate(), order in 1u32..=4) {
        let direct: Complex = (0..=order).map(|m| w.powu(m) / factorial(m)).sum();
        let horner = taylor_polynomial(order, w);
        prop_assert!((horner - direct).norm() <= 1e-12 * (1.0 + direct.norm()));
    }

    /// The log-domain evaluation used for `|w| > 1e8` agrees with the direct sum where both are
    /// representable (relative tolerance 1e-12: the log form loses about `M ln|w|` ulps,
    /// `4 * 32 * 1.1e-16 ~ 1.4e-14`).
    #[test]
    fn taylor_polynomial_abs_matches_the_direct_sum_at_large_modulus(
        log_r in 8.0f64..60.0, t in 0.0f64..std::f64::consts::TAU, order in 1u32..=4,
    ) {
        let w = Complex::from_polar(10f64.powf(log_r), t);
        let direct: Complex = (0..=order).map(|m| w.powu(m) / factorial(m)).sum();
        assert_relative_eq!(taylor_polynomial_abs(order, w), direct.norm(), max_relative = 1e-12);
    }

    /// The implicit Taylor update really is `y_n = P_M(-z) y_{n+1}`: stepping backwards from
    /// `y_{n+1} = G y_n` with the Taylor series at the new point returns `y_n`
    /// (tolerance 1e-12 relative, as above).
    #[test]
    fn implicit_taylor_gain_inverts_the_backward_taylor_series(z in moderate(), order in 1u32..=4) {
        let g = Complex::new(1.0, 0.0) / taylor_polynomial(order, -z);
        // y_{n+1} = g * y_n with y_n = 1; expanding y(t_n) at t_{n+1}: sum (-z)^m/m! y_{n+1}.
        let back: Complex = (0..=order).map(|m| (-z).powu(m) / factorial(m) * g).sum();
        prop_assert!((back - 1.0).norm() <= 1e-12 * (1.0 + g.norm()));
        assert_relative_eq!(gain(Scheme::ImplicitTaylor, order, z), g.norm(), max_relative = 1e-12);
    }

    /// Both BDF2 roots satisfy `(1 - 2z/3) r^2 - 4/3 r + 1/3 = 0` (tolerance 1e-12 relative to
    /// the size of the terms).
    #[test]
    fn bdf2_roots_solve_the_characteristic_polynomial(z in moderate()) {
        for r in bdf2_roots(z) {
            let residual = (1.0 - z * 2.0 / 3.0) * r * r - r * 4.0 / 3.0 + 1.0 / 3.0;
            let scale = (1.0 + z.norm()) * r.norm_sqr() + r.norm() + 1.0;
            prop_assert!(residual.norm() <= 1e-12 * scale, "z = {z}, r = {r}");
        }
    }

    /// Independent check of BDF2's spectral radius: the eigenvalues of the companion matrix of
    /// `y_{n+1} = (4/3 y_n - 1/3 y_{n-1}) / (1 - 2z/3)` (LAPACK `zgeev`). Tolerance 1e-10:
    /// `geev` is backward stable, and the roots are well separated except near the double root
    /// at `z = -1/2`, where the sampled box rarely lands closer than 1e-3 (error ~ sqrt(eps/d)).
    #[test]
    fn bdf2_spectral_radius_equals_companion_matrix_eigenvalues(z in moderate()) {
        prop_assume!((z + 0.5).norm() > 1e-3);
        let d = Complex::new(1.0, 0.0) - z * 2.0 / 3.0;
        let one = Complex::new(1.0, 0.0);
        let zero = Complex::new(0.0, 0.0);
        let companion = array![[one * 4.0 / 3.0 / d, -one / 3.0 / d], [one, zero]];
        let eigen = companion.eigvals().unwrap();
        let rho = eigen.iter().map(|r| r.norm()).fold(0.0, f64::max);
        assert_relative_eq!(bdf2_spectral_radius(z), rho, max_relative = 1e-10);
    }

    /// BDF2's recurrence grows like `rho^n`: 200 steps from `(y_0, y_1) = (1, 1)` give a
    /// norm whose 200th root is `rho` to within 2% (the start vector has components along both
    /// roots; the sub-dominant one only shifts the n-th root by `O(1/n)`).
    #[test]
    fn bdf2_recurrence_grows_at_the_spectral_radius(
        re in -3.0f64..0.0, im in -3.0f64..3.0,
    ) {
        let z = Complex::new(re, im);
        let rho = bdf2_spectral_radius(z);
        prop_assume!(rho > 0.2); // keep 0.2^200 far above underflow
        let d = Complex::new(1.0, 0.0) - z * 2.0 / 3.0;
        let (mut previous, mut current) = (Complex::new(1.0, 0.0), Complex::new(1.0, 0.0));
        for _ in 0..200 {
            let next = (current * 4.0 / 3.0 - previous / 3.0) / d;
            (previous, current) = (current, next);
        }
        let growth = current.norm().max(previous.norm()).powf(1.0 / 200.0);
        assert_relative_eq!(growth, rho, max_relative = 0.02);
    }

    /// Finite-safety: every gain is a number in `[0, inf]`, never NaN, anywhere in the closed
    /// left half-plane, including `|z|` up to 1e300.
    #[test]
    fn gains_are_never_nan(z in closed_left_half_plane()) {
        for scheme in Scheme::ALL {
            for order in scheme.supported_orders() {
                let g = gain(scheme, order, z);
                prop_assert!(!g.is_nan() && g >= 0.0, "{scheme} {order}, z = {z}: {g}");
            }
        }
    }
}

/// The imaginary-axis closed forms quoted in the docs:
/// `|P_M(iy)|^2 = 1 + y^2, 1 + y^4/4, 1 - y^4/12 + y^6/36, 1 - y^6/72 + y^8/576`
/// (relative tolerance 1e-12 on a grid of `y in [-10, 10]`; the terms are at most
/// `10^8/576 ~ 2e5`, so rounding is ~1e-11 absolute at worst, checked relative to 1 + terms).
#[test]
fn taylor_polynomial_on_the_imaginary_axis_has_the_closed_forms() {
    let closed_forms: [fn(f64) -> f64; 4] = [
        |y| 1.0 + y.powi(2),
        |y| 1.0 + y.powi(4) / 4.0,
        |y| 1.0 - y.powi(4) / 12.0 + y.powi(6) / 36.0,
        |y| 1.0 - y.powi(6) / 72.0 + y.powi(8) / 576.0,
    ];
    for (order, closed_form) in (1..=4).zip(closed_forms) {
        for k in -1000..=1000 {
            let y = f64::from(k) / 100.0;
            let computed = taylor_polynomial(order, Complex::new(0.0, y)).norm_sqr();
            let scale = 1.0 + y.powi(2 * order as i32);
            assert_abs_diff_eq!(computed, closed_form(y), epsilon = 1e-12 * scale);
        }
    }
}

/// The premise of the maximum-modulus argument: implicit Taylor's poles (`z = -w`, `P_M(w) = 0`)
/// all lie in the open right half-plane for `M = 1..=4`, the nearest to the imaginary axis at
/// `Re z = 0.2706` (M = 4). The poles are checked by their residual `|P_M(-z)| < 1e-12` and
/// counted with multiplicity (`M` of them), so none is missing.
#[test]
fn implicit_taylor_poles_lie_in_the_right_half_plane() {
    for order in 1..=4 {
        let poles = implicit_taylor_poles(order);
        assert_eq!(poles.len(), order as usize);
        for z in &poles {
            assert!(taylor_polynomial(order, -z).norm() < 1e-12, "M = {order}: {z}");
            assert!(z.re > 0.27, "M = {order}: pole {z} is not in Re z > 0.27");
        }
    }
    let nearest = implicit_taylor_poles(4)
        .iter()
        .map(|z| z.re)
        .fold(f64::INFINITY, f64::min);
    assert_abs_diff_eq!(nearest, 0.270_555_768_932_3, epsilon = 1e-10);
}

/// Gains at infinity: implicit Taylor and BDF2 decay to 0, explicit Taylor grows like
/// `|z|^M/M!` and overflows to `+inf` (not NaN) once that exceeds `f64::MAX`; checked at
/// `|z| = 1e300` in four directions.
#[test]
fn gains_at_huge_modulus() {
    for z in [
        Complex::new(-1e300, 0.0),
        Complex::new(0.0, 1e300),
        Complex::new(0.0, -1e300),
        Complex::new(-7e299, 7e299),
    ] {
        for order in 1..=4 {
            assert!(gain(Scheme::ImplicitTaylor, order, z) < 1e-299, "M = {order}, z = {z}");
            // |P_M(z)| ~ |z|^M/M!: 1e300 for M = 1, beyond f64::MAX (so +inf) for M >= 2.
            let explicit = gain(Scheme::ExplicitTaylor, order, z);
            if order == 1 {
                assert_relative_eq!(explicit, z.norm(), max_relative = 1e-12);
            } else {
                assert_eq!(explicit, f64::INFINITY, "M = {order}, z = {z}");
            }
        }
        assert!(gain(Scheme::Bdf2, 2, z) < 1e-149, "z = {z}");
    }
}

/// At `z = 0` every scheme has gain exactly 1 (consistency: `G(0) = 1`; for BDF2 the principal
/// root is 1 and the spurious root is 1/3).
#[test]
fn every_gain_is_exactly_1_at_the_origin() {
    let zero = Complex::new(0.0, 0.0);
    for scheme in Scheme::ALL {
        for order in scheme.supported_orders() {
            assert_eq!(gain(scheme, order, zero), 1.0, "{scheme} {order}");
        }
    }
    let [principal, spurious] = bdf2_roots(zero);
    assert_abs_diff_eq!(principal.re, 1.0, epsilon = 1e-15);
    assert_abs_diff_eq!(spurious.re, 1.0 / 3.0, epsilon = 1e-15);
}

/// `gain` refuses orders `check_order` rejects, with the error's message.
#[test]
#[should_panic(expected = "order 3 is not supported for bdf2")]
fn gain_panics_on_an_unsupported_order() {
    gain(Scheme::Bdf2, 3, Complex::new(-1.0, 0.0));
}
