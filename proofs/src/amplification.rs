//! Amplification factors `G(z)` of the schemes on the linear test equation `y' = lambda y`,
//! `z = h lambda`.
//!
//! * Explicit Taylor of order `M`: `y_{n+1} = P_M(z) y_n`, so `G(z) = P_M(z)`, where
//!   `P_M(w) = sum_{m=0..M} w^m/m!` is the degree-`M` Taylor polynomial of `exp`.
//! * Implicit Taylor of order `M` (the series expanded at the new point,
//!   `y(t_n) = sum_m (-h)^m/m! y^(m)(t_{n+1})` with `y^(m) = lambda^m y`):
//!   `y_n = P_M(-z) y_{n+1}`, so `G(z) = 1 / P_M(-z)`. `M = 1` is backward Euler `1/(1-z)`.
//! * BDF2, `y_{n+1} = 4/3 y_n - 1/3 y_{n-1} + 2/3 z y_{n+1}`: a two-step recurrence, whose
//!   solutions are combinations of `r^n` for the roots `r` of its characteristic polynomial
//!   `(1 - 2z/3) r^2 - 4/3 r + 1/3`. Its gain is the spectral radius `max |r|`.
//!
//! Every function here is finite-safe: any finite `z`, however large, gives a finite gain or
//! `+inf` (never NaN), so property tests may sample `|z|` up to `1e300`.

use ndarray::Array2;
use ndarray_linalg::EigVals;

use crate::{Complex, Scheme};

/// Above this modulus `|P_M(w)|` is evaluated in the log domain, so that `|w|^M` cannot overflow
/// into `inf - inf = NaN` inside a complex product. Below it Horner's rule is exact enough
/// and `|w|^4 <= 1e32` is far from overflow.
const HORNER_LIMIT: f64 = 1e8;

/// `P_M(w) = sum_{m=0..M} w^m/m!` by Horner's rule, `1 + w (1 + w/2 (1 + w/3 (...)))`.
///
/// Exact formula, no overflow protection: use [`taylor_polynomial_abs`] for the modulus at
/// large `|w|`.
pub fn taylor_polynomial(order: u32, w: Complex) -> Complex {
    (1..=order).rev().fold(Complex::new(1.0, 0.0), |acc, m| {
        acc * w / f64::from(m) + 1.0
    })
}

/// `|P_M(w)|` for any finite `w`, `+inf` when the true value exceeds `f64::MAX`.
///
/// For `|w| > 1e8` it uses `P_M(w) = w^M/M! * Q(1/w)` with
/// `Q(u) = sum_{k=0..M} M!/(M-k)! u^k = 1 + M u (1 + (M-1) u (1 + ...))`, so
/// `ln|P_M(w)| = M ln|w| - ln M! + ln|Q(1/w)|`, where `Q(1/w)` is within `1e-7` of 1.
pub fn taylor_polynomial_abs(order: u32, w: Complex) -> f64 {
    let r = w.norm();
    if r <= HORNER_LIMIT || order == 0 {
        return taylor_polynomial(order, w).norm();
    }
    // 1/w = conj(w)/|w|^2, divided twice by |w| so that |w|^2 is never formed.
    let u = w.conj() / r / r;
    let q = (1..=order).fold(Complex::new(1.0, 0.0), |acc, j| {
        acc * u * f64::from(j) + 1.0
    });
    let ln_factorial: f64 = (1..=order).map(|m| f64::from(m).ln()).sum();
    (f64::from(order) * r.ln() - ln_factorial + q.norm().ln()).exp()
}

/// `|G(z)| = |P_M(z)|` of explicit Taylor of order `M`.
pub fn explicit_taylor_gain(order: u32, z: Complex) -> f64 {
    taylor_polynomial_abs(order, z)
}

/// `|G(z)| = 1/|P_M(-z)|` of implicit Taylor of order `M`; `+inf` at a pole (a zero of
/// `P_M(-z)`), `0` in the limit `|z| -> inf`.
pub fn implicit_taylor_gain(order: u32, z: Complex) -> f64 {
    1.0 / taylor_polynomial_abs(order, -z)
}

/// The poles of implicit Taylor's `G(z) = 1/P_M(-z)`: `z = -w` for the zeros `w` of `P_M`,
/// found as the eigenvalues of the companion matrix of the monic polynomial
/// `M! P_M(w) = w^M + M w^{M-1} + M(M-1) w^{M-2} + ... + M!` (LAPACK `geev`).
///
/// For `M = 1..=4` all of them lie in `Re z > 0` (see the tests); this is what makes `G`
/// analytic on the closed left half-plane, the premise of the maximum-modulus argument in
/// [`crate::a_stability`].
pub fn implicit_taylor_poles(order: u32) -> Vec<Complex> {
    let m = order as usize;
    if m == 0 {
        return Vec::new();
    }
    // Coefficient of w^k in M! P_M(w) is M!/k!; the first row of the companion matrix holds
    // -(coefficient of w^{M-1}), ..., -(coefficient of w^0).
    let coefficient = |k: usize| -> f64 { ((k + 1)..=m).map(|j| j as f64).product() };
    let mut companion = Array2::<f64>::zeros((m, m));
    for col in 0..m {
        companion[[0, col]] = -coefficient(m - 1 - col);
    }
    for row in 1..m {
        companion[[row, row - 1]] = 1.0;
    }
    companion
        .eigvals()
        .expect("LAPACK geev on a small companion matrix")
        .iter()
        .map(|w| -w)
        .collect()
}

/// `a / b` without forming `|b|^2` (num-complex's division does, which overflows to NaN for
/// `|b| > 1e154`).
fn divide(a: Complex, b: Complex) -> Complex {
    let modulus = b.norm();
    a * (b.conj() / modulus) / modulus
}

/// `2 + s` with `s = sqrt(1 + 2z)` on the principal branch (`Re s >= 0`), computed as
/// `sqrt(2) sqrt(z + 1/2)` so that `2z` cannot overflow.
fn bdf2_two_plus_s(z: Complex) -> Complex {
    (z + 0.5).sqrt() * std::f64::consts::SQRT_2 + 2.0
}

/// The two roots of BDF2's characteristic polynomial `(1 - 2z/3) r^2 - 4/3 r + 1/3 = 0`,
/// i.e. `(3 - 2z) r^2 - 4 r + 1 = 0`, in the order `[principal, spurious]`.
///
/// With `s = sqrt(1 + 2z)` (principal branch, `Re s >= 0`) the quadratic formula gives
/// `r = (2 ± s)/(3 - 2z)`, and since `(2 - s)(2 + s) = 3 - 2z` the two roots are
/// `(2 + s)/(3 - 2z)` and `1/(2 + s)`. Both forms are free of cancellation: `Re(2 + s) >= 2`.
/// At `z = 0` they are `1` (the principal root, which follows `e^z`) and `1/3`. At `z = 3/2`
/// the leading coefficient vanishes and the first root is infinite.
pub fn bdf2_roots(z: Complex) -> [Complex; 2] {
    let two_plus_s = bdf2_two_plus_s(z);
    let principal = divide(two_plus_s, (Complex::new(1.5, 0.0) - z) * 2.0);
    let spurious = divide(Complex::new(1.0, 0.0), two_plus_s);
    [principal, spurious]
}

/// Spectral radius `max |r|` of BDF2 at `z`: the factor by which the worst solution of the
/// recurrence grows per step.
///
/// The moduli are taken directly (`|2 + s| / (2 |3/2 - z|)` and `1 / |2 + s|`), which stays
/// accurate for `|z|` up to `f64::MAX / 2` (beyond, the leading coefficient overflows and
/// the result is 0 rather than NaN).
pub fn bdf2_spectral_radius(z: Complex) -> f64 {
    let two_plus_s = bdf2_two_plus_s(z).norm();
    let leading = 2.0 * (Complex::new(1.5, 0.0) - z).norm();
    (two_plus_s / leading).max(1.0 / two_plus_s)
}

/// The gain of `scheme` at `z`: `|G(z)|` for the Taylor schemes, the spectral radius for BDF2.
/// A step is stable at `z` when the gain is `<= 1`.
///
/// # Panics
/// When [`Scheme::check_order`] rejects `order` (Taylor orders `1..=4`, BDF2 only `2`): call
/// [`crate::analyse`] or `check_order` first to turn a user's input into an error.
pub fn gain(scheme: Scheme, order: u32, z: Complex) -> f64 {
    if let Err(error) = scheme.check_order(order) {
        panic!("{error}");
    }
    match scheme {
        Scheme::ExplicitTaylor => explicit_taylor_gain(order, z),
        Scheme::ImplicitTaylor => implicit_taylor_gain(order, z),
        Scheme::Bdf2 => bdf2_spectral_radius(z),
    }
}
