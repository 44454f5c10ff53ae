//! The stability claims of the ResCa supplement (Sec. B.8) and docs/algorithms.md section 8, each
//! stated as exactly what holds. Tolerances are given where they are used, with the reason.

mod common;

use approx::assert_abs_diff_eq;
use common::{ROUNDING, closed_left_half_plane, hugging_axis_left, near_origin_left, polar_left};
use proptest::prelude::*;
use resca_proofs::a_stability::EXPLICIT_TAYLOR_COUNTEREXAMPLE;
use resca_proofs::{Complex, Scheme, analyse, gain, max_gain_on_vertical_line, stable_half_plane_shift};
use std::sync::LazyLock;

const EXPLICIT: Scheme = Scheme::ExplicitTaylor;
const IMPLICIT: Scheme = Scheme::ImplicitTaylor;
const BDF2: Scheme = Scheme::Bdf2;

fn real(x: f64) -> Complex {
    Complex::new(x, 0.0)
}

// ---------------------------------------------------------------------------------------------
// Supplement (S12)-(S14): explicit Taylor M = 1, G(z) = 1 + z.

proptest! {
    #![proptest_config(resca_tests::proptest_config(256))]
    /// For real `z < -2`, `|1 + z| > 1`. Sampled `z = -2 - d` with `d` log-uniform in
    /// `[1e-9, 1e300]`: `d >= 1e-9` keeps `z` at least 1e-9 away from the boundary, so that
    /// rounding (1e-16 relative) cannot decide the comparison; no tolerance is needed.
    #[test]
    fn explicit_taylor_order_1_is_unstable_for_real_z_below_minus_2(log_d in -9.0f64..=300.0) {
        let z = real(-2.0 - 10f64.powf(log_d));
        prop_assert!(gain(EXPLICIT, 1, z) > 1.0, "z = {z}: gain {}", gain(EXPLICIT, 1, z));
    }

    /// For real `z in [-2, 0]`, `|1 + z| <= 1`, exactly: `1 + z` is computed with one rounding
    /// and lies in `[-1, 1]`, whose ends are representable, so no tolerance is needed.
    #[test]
    fn explicit_taylor_order_1_is_stable_on_minus_2_to_0(x in -2.0f64..=0.0) {
        prop_assert!(gain(EXPLICIT, 1, real(x)) <= 1.0);
    }
}

/// The interval's ends are stability boundaries: `G(-2) = -1`, `G(0) = 1`.
#[test]
fn explicit_taylor_order_1_has_gain_exactly_1_at_minus_2_and_0() {
    assert_eq!(gain(EXPLICIT, 1, real(-2.0)), 1.0);
    assert_eq!(gain(EXPLICIT, 1, real(0.0)), 1.0);
}

/// Explicit Taylor is unbounded, hence not A-stable, for every order: `analyse` says so,
/// reports `+inf` on the imaginary axis and the documented counterexample `z = -3` with the
/// exact gains `|P_M(-3)| = 2, 5/2, 2, 11/8` (tolerance 1e-14: Horner on small integers,
/// exact to a few ulps).
#[test]
fn explicit_taylor_is_not_a_stable_at_any_order() {
    for (order, expected) in [(1, 2.0), (2, 2.5), (3, 2.0), (4, 1.375)] {
        let report = analyse(EXPLICIT, order).unwrap();
        assert!(!report.a_stable, "order {order}");
        assert_eq!(report.max_gain_on_imaginary_axis, f64::INFINITY);
        let c = report.counterexample.expect("explicit Taylor has a counterexample");
        assert_eq!(Complex::new(c.re, c.im), EXPLICIT_TAYLOR_COUNTEREXAMPLE);
        assert_abs_diff_eq!(c.gain, expected, epsilon = 1e-14);
        assert_eq!(stable_half_plane_shift(EXPLICIT, order).unwrap(), None);
    }
}

/// The explicit gain really does grow without bound on the imaginary axis: `|G(iy)| >= 1e6`
/// at `y = 1e7` for every order (`|P_M(iy)| >= y^M/(2 M!)` there).
#[test]
fn explicit_taylor_gain_is_unbounded_on_the_imaginary_axis() {
    for order in 1..=4 {
        assert!(gain(EXPLICIT, order, Complex::new(0.0, 1e7)) >= 1e6, "order {order}");
    }
}

/// `(scheme, order, max gain on the imaginary axis)` of the implicit schemes, computed once.
static AXIS_MAXIMA: LazyLock<Vec<(Scheme, u32, f64)>> = LazyLock::new(|| {
    [(IMPLICIT, 1), (IMPLICIT, 2), (IMPLICIT, 3), (IMPLICIT, 4), (BDF2, 2)]
        .into_iter()
        .map(|(scheme, order)| {
            let report = analyse(scheme, order).unwrap();
            (scheme, order, report.max_gain_on_imaginary_axis)
        })
        .collect()
});

// ---------------------------------------------------------------------------------------------
// Supplement (S15)-(S19) and the "same order M" claim: implicit Taylor M = 1, 2 and BDF2 are
// A-stable. Sampled over the closed left half-plane including |z| up to 1e300.

proptest! {
    #![proptest_config(resca_tests::proptest_config(4096))]

    /// Backward Euler: `|1/(1 - z)| <= 1` for every `Re z <= 0` (tolerance: `ROUNDING`).
    #[test]
    fn implicit_taylor_order_1_is_a_stable(z in closed_left_half_plane()) {
        let g = gain(IMPLICIT, 1, z);
        prop_assert!(g <= 1.0 + ROUNDING, "z = {z}: gain {g}");
    }

    /// `|1/(1 - z + z^2/2)| <= 1` for every `Re z <= 0` (tolerance: `ROUNDING`).
    #[test]
    fn implicit_taylor_order_2_is_a_stable(z in closed_left_half_plane()) {
        let g = gain(IMPLICIT, 2, z);
        prop_assert!(g <= 1.0 + ROUNDING, "z = {z}: gain {g}");
    }

    /// BDF2's spectral radius is `<= 1` for every `Re z <= 0` (tolerance: `ROUNDING`).
    #[test]
    fn bdf2_is_a_stable(z in closed_left_half_plane()) {
        let g = gain(BDF2, 2, z);
        prop_assert!(g <= 1.0 + ROUNDING, "z = {z}: spectral radius {g}");
    }

    /// The maximum-modulus argument behind `analyse`: for the implicit schemes no point of the
    /// closed left half-plane has a larger gain than the maximum found on the imaginary axis
    /// (tolerance: `ROUNDING`, the same comparison of two rounded gains).
    #[test]
    fn implicit_gain_in_left_half_plane_never_exceeds_its_imaginary_axis_maximum(
        z in closed_left_half_plane(),
    ) {
        for &(scheme, order, bound) in AXIS_MAXIMA.iter() {
            let g = gain(scheme, order, z);
            prop_assert!(g <= bound + ROUNDING, "{scheme} {order}, z = {z}: {g} > {bound}");
        }
    }

    /// Away from `z = 0` BDF2 is strictly stable on the imaginary axis: `rho(iy) < 1` for
    /// `|y| >= 0.01` (there `1 - rho >= 2.4e-9`, far above rounding, see the next test).
    #[test]
    fn bdf2_is_strictly_stable_on_the_imaginary_axis_away_from_0(y in 0.01f64..1e6, negative: bool) {
        let y = if negative { -y } else { y };
        prop_assert!(gain(BDF2, 2, Complex::new(0.0, y)) < 1.0);
    }
}

/// `analyse` agrees: implicit Taylor M = 1, 2 and BDF2 are A-stable with maximum exactly 1 on
/// the axis (attained at `z = 0`; tolerance `ROUNDING`), and no counterexample.
#[test]
fn implicit_taylor_orders_1_2_and_bdf2_are_reported_a_stable() {
    for (scheme, order) in [(IMPLICIT, 1), (IMPLICIT, 2), (BDF2, 2)] {
        let report = analyse(scheme, order).unwrap();
        assert!(report.a_stable, "{scheme} {order}");
        assert_eq!(report.counterexample, None);
        assert_abs_diff_eq!(report.max_gain_on_imaginary_axis, 1.0, epsilon = ROUNDING);
        assert_eq!(stable_half_plane_shift(scheme, order).unwrap(), Some(0.0));
    }
}

/// BDF2's only gain-1 point on the axis is `z = 0`, where its principal root is exactly 1; near
/// it `1 - rho(iy) ~ y^4/4` (measured `2.5e-9` at `y = 0.01`, `0.067` at `y = 1`).
#[test]
fn bdf2_touches_gain_1_only_at_the_origin() {
    assert_eq!(gain(BDF2, 2, Complex::new(0.0, 0.0)), 1.0);
    let margin = |y: f64| 1.0 - gain(BDF2, 2, Complex::new(0.0, y));
    assert!(margin(0.01) > 2.4e-9 && margin(0.01) < 2.6e-9, "{}", margin(0.01));
    assert!(margin(1.0) > 0.066, "{}", margin(1.0));
}

// ---------------------------------------------------------------------------------------------
// The supplement's "A-stable for the same order M" is FALSE for M = 3 and M = 4.

/// Implicit Taylor M = 3: `|P_3(iy)|^2 = 1 - y^4/12 + y^6/36` has its minimum `8/9` at
/// `y^2 = 2`, so the gain on the imaginary axis peaks at `3/(2 sqrt 2) = 1.06066` at
/// `z = i sqrt 2`. Tolerances: the gain is exact to 1e-12 (golden section to 1e-11 in `y` at a
/// smooth maximum, error quadratic); the argmax to 1e-6 (the gain is flat there, so `y` is only
/// determined to about sqrt(rounding) = 1e-8).
#[test]
fn implicit_taylor_order_3_is_not_a_stable() {
    let report = analyse(IMPLICIT, 3).unwrap();
    assert!(!report.a_stable);
    let expected = 3.0 / (2.0 * 2f64.sqrt());
    assert_abs_diff_eq!(report.max_gain_on_imaginary_axis, expected, epsilon = 1e-12);
    assert!(report.max_gain_on_imaginary_axis > 1.02);
    let c = report.counterexample.expect("M = 3 has a counterexample");
    assert_eq!(c.re, 0.0);
    assert_abs_diff_eq!(c.im, 2f64.sqrt(), epsilon = 1e-6);
    assert_eq!(c.gain, report.max_gain_on_imaginary_axis);
}

/// docs/algorithms.md section 8's figure: `|G(i)| = 1/sqrt(1 - 1/12 + 1/36) = 6/sqrt(34) = 1.0290`
/// (tolerance 1e-14: one Horner evaluation at an O(1) point).
#[test]
fn implicit_taylor_order_3_gain_at_i_is_6_over_sqrt_34() {
    let g = gain(IMPLICIT, 3, Complex::new(0.0, 1.0));
    assert_abs_diff_eq!(g, 6.0 / 34f64.sqrt(), epsilon = 1e-14);
    assert!(g > 1.02);
}

/// Implicit Taylor M = 4: `|P_4(iy)|^2 = 1 - y^6/72 + y^8/576` has its minimum `1/4` at
/// `y^2 = 6`: the gain peaks at exactly `2` at `z = i sqrt 6`. Tolerances as for M = 3.
#[test]
fn implicit_taylor_order_4_is_not_a_stable() {
    let report = analyse(IMPLICIT, 4).unwrap();
    assert!(!report.a_stable);
    assert_abs_diff_eq!(report.max_gain_on_imaginary_axis, 2.0, epsilon = 1e-12);
    let c = report.counterexample.expect("M = 4 has a counterexample");
    assert_eq!(c.re, 0.0);
    assert_abs_diff_eq!(c.im, 6f64.sqrt(), epsilon = 1e-6);
}

/// The failure is not an artefact of the boundary `Re z = 0`: strictly inside the left
/// half-plane, at `z = -0.01 + i sqrt 2` (M = 3) and `z = -0.1 + i sqrt 6` (M = 4), the gain is
/// still above 1 by more than 1e-3 (far above rounding).
#[test]
fn implicit_taylor_orders_3_and_4_are_unstable_strictly_inside_the_left_half_plane() {
    assert!(gain(IMPLICIT, 3, Complex::new(-0.01, 2f64.sqrt())) > 1.001);
    assert!(gain(IMPLICIT, 4, Complex::new(-0.1, 6f64.sqrt())) > 1.001);
}

/// The true extent of the failure: the unstable set in `Re z <= 0` is a strip along the
/// imaginary axis, of width `0.04045` for M = 3 and `0.23742` for M = 4 (bisection to 1e-12;
/// asserted to 1e-5, which also checks against an independent brute-force grid computation
/// that gave 0.040452 and 0.237425).
#[test]
fn implicit_taylor_orders_3_and_4_are_stable_left_of_a_thin_strip() {
    let shift3 = stable_half_plane_shift(IMPLICIT, 3).unwrap().unwrap();
    let shift4 = stable_half_plane_shift(IMPLICIT, 4).unwrap().unwrap();
    assert_abs_diff_eq!(shift3, 0.040452, epsilon = 1e-5);
    assert_abs_diff_eq!(shift4, 0.237425, epsilon = 1e-5);
    // Just inside the strip there are unstable points (the line maximum exceeds 1).
    assert!(max_gain_on_vertical_line(IMPLICIT, 3, -(shift3 - 1e-4)).unwrap().gain > 1.0);
    assert!(max_gain_on_vertical_line(IMPLICIT, 4, -(shift4 - 1e-4)).unwrap().gain > 1.0);
}

proptest! {
    #![proptest_config(resca_tests::proptest_config(4096))]

    /// ...and left of the strip, everything is stable: `|G(z)| <= 1` for `Re z <= -0.041`
    /// (M = 3) and `Re z <= -0.238` (M = 4), sampled (tolerance: `ROUNDING`).
    #[test]
    fn implicit_taylor_orders_3_and_4_are_stable_left_of_the_strip(
        z in prop_oneof![polar_left(), near_origin_left(), hugging_axis_left()],
    ) {
        let z3 = Complex::new(z.re - 0.041, z.im);
        let z4 = Complex::new(z.re - 0.238, z.im);
        prop_assert!(gain(IMPLICIT, 3, z3) <= 1.0 + ROUNDING, "z = {z3}");
        prop_assert!(gain(IMPLICIT, 4, z4) <= 1.0 + ROUNDING, "z = {z4}");
    }
}

/// The supplement's statement "(ii) our implicit Taylor update has `G_imp(z) = 1/(1-z)` and is
/// A-stable" for every order M: as a quantified claim over M = 1..=4 it is false, and exactly
/// orders 3 and 4 break it.
#[test]
fn the_supplement_claim_for_every_order_fails_exactly_at_orders_3_and_4() {
    let failing: Vec<u32> = (1..=4)
        .filter(|&order| !analyse(IMPLICIT, order).unwrap().a_stable)
        .collect();
    assert_eq!(failing, vec![3, 4]);
}
