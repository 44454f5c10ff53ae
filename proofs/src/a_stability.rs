//! A-stability analysis: is `gain(z) <= 1` on the whole closed left half-plane `Re z <= 0`?
//!
//! # Why a scan of one line decides a whole half-plane
//!
//! **Implicit Taylor**, `G(z) = 1/P_M(-z)`. Its poles are `z = -w` for the zeros `w` of
//! `P_M(w) = sum_{m=0..M} w^m/m!`. For `M = 1..=4` these zeros all have `Re w < 0`
//! (`M = 1`: `-1`; `M = 2`: `-1 ± i`; `M = 3`: `-1.596`, `-0.702 ± 1.807i`;
//! `M = 4`: `-1.729 ± 0.889i`, `-0.271 ± 2.505i`), so every pole has `Re z > 0` and `G` is
//! analytic on an open set containing the closed half-plane `H_c = {Re z <= -c}` for any
//! `c >= 0`. Moreover `|G(z)| -> 0` as `|z| -> inf`: for `|w| >= 3M`,
//! `|P_M(w)| >= |w|^M/M! (1 - sum_{k>=1} 3^-k) >= (3M)^M / (2 M!) >= 3/2`, because each lower
//! term is at most `3^-(M-m)` times the top one (`M!/(m! |w|^(M-m)) <= (M/|w|)^(M-m)`).
//! By the maximum-modulus principle on the half-discs `H_c ∩ {|z| <= R}`, `R -> inf`, the
//! supremum of `|G|` over `H_c` is its maximum on the boundary line `Re z = -c` (the arc
//! contributes at most `2 M!/R^M -> 0`). On that line, points with `|Im z| >= 3M` have
//! `|z| >= 3M` and hence gain `<= 2/3`; since `|G(conj z)| = |G(z)|` (real coefficients), the
//! maximum is found on the segment `0 <= Im z <= 3M`.
//!
//! **BDF2**: `rho(z) >= 1` iff some root `r` with `|r| >= 1` solves
//! `z = (3 - 4/r + 1/r^2)/2 = q(u)`, `u = 1/r`, `|u| <= 1`. On `|u| = 1`,
//! `Re q(e^{it}) = (1 - cos t)^2 >= 0`, and `Re q` is harmonic, so `Re q(u) > 0` inside the disc
//! and `Re q(u) = 0` only at `u = 1` (`z = 0`). Hence `rho(z) < 1` for every `Re z <= 0`
//! except `z = 0`, where the principal root is `1`: BDF2 is A-stable with its only gain-1 point
//! at the origin. The numerical scan of the imaginary axis (cut at `|Im z| <= 6`: for
//! `|z| >= 6`, `|1/(2+s)| <= 1/2` and `|2+s|/|3-2z| <= (2+sqrt 13)/9 < 0.63`) confirms this,
//! and the same line scan serves for shifted lines `Re z = -c` (the spectral radius of the
//! analytic companion matrix is subharmonic, Vesentini 1968, so the maximum principle holds).
//!
//! **Explicit Taylor**, `G(z) = P_M(z)`, is a polynomial of degree `M >= 1`: it is unbounded on
//! every ray, including the imaginary axis (`|P_M(iy)| >= |y|^M/(2 M!)` for `|y| >= 3M`) and
//! the negative real axis. It is never A-stable; its supremum on the imaginary axis is `+inf`.
//!
//! # How the maximum on a line is found
//!
//! A dense scan of `0 <= y <= 3M` with step `1e-3`, then golden-section refinement on the two
//! grid cells around the best sample, to `|dy| < 1e-11`. On the imaginary axis the Taylor gains
//! are `1/sqrt(E(y))` with `E` an even polynomial of degree `2M` with coefficients of modulus
//! `<= 1` (see the crate docs), whose features have width O(1), far wider than the grid. At a
//! smooth maximum the gain error is quadratic in `dy`, so the reported gain is exact to
//! rounding; the tests compare it with the closed-form maxima.

use serde::{Serialize, Serializer};

use crate::{Complex, Scheme, StabilityError, gain};

/// `a_stable` is `gain <= 1 + GAIN_TOLERANCE`. The gains are O(1) rational expressions of a
/// few dozen floating-point operations (rounding well below `1e-14`), while the smallest
/// violation [`analyse`] reports is `0.06` (implicit Taylor `M = 3`); `1e-12` separates the two
/// with margin both ways.
pub const GAIN_TOLERANCE: f64 = 1e-12;

/// The counterexample reported for explicit Taylor (any order): `z = -3` on the negative real
/// axis, a stiff decaying mode just outside every real stability interval
/// (`[-2, 0]` for `M = 1, 2`, `[-2.51, 0]` for `M = 3`, `[-2.79, 0]` for `M = 4`). The gains
/// there are exactly `2`, `5/2`, `2` and `11/8` for `M = 1..=4`. (The imaginary axis has no
/// finite argmax: the gain grows without bound along it.)
pub const EXPLICIT_TAYLOR_COUNTEREXAMPLE: Complex = Complex::new(-3.0, 0.0);

/// Grid step of the dense scan along a line.
const SCAN_STEP: f64 = 1e-3;
/// Golden-section stops when the bracket is narrower than this.
const REFINE_TOLERANCE: f64 = 1e-11;

/// A point `z = re + i im` where the gain exceeds 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Counterexample {
    pub re: f64,
    pub im: f64,
    pub gain: f64,
}

/// The outcome of [`analyse`], printed by `resca stability --json` as
/// `{"scheme", "order", "a_stable", "max_gain_on_imaginary_axis", "counterexample"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StabilityReport {
    /// Serialised as the CLI spelling.
    pub scheme: Scheme,
    pub order: u32,
    /// `gain(z) <= 1 + GAIN_TOLERANCE` for every `Re z <= 0`.
    pub a_stable: bool,
    /// `sup |G(iy)|` over real `y`; `+inf` for explicit Taylor, which JSON writes as `null`
    /// (JSON has no infinity).
    #[serde(serialize_with = "finite_or_null")]
    pub max_gain_on_imaginary_axis: f64,
    /// A point of the closed left half-plane with gain `> 1 + GAIN_TOLERANCE`, or `None` when
    /// A-stable. Implicit schemes: the argmax on the imaginary axis with `im >= 0` (the gain is
    /// symmetric under `z -> conj z`). Explicit Taylor: [`EXPLICIT_TAYLOR_COUNTEREXAMPLE`].
    pub counterexample: Option<Counterexample>,
}

fn finite_or_null<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else {
        serializer.serialize_none()
    }
}

/// The largest gain on the vertical line `Re z = re`, at `z = re + i im`, `im >= 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineMaximum {
    /// Where the maximum is attained (`+inf` when the gain is unbounded on the line).
    pub im: f64,
    /// The maximum (`+inf` for explicit Taylor).
    pub gain: f64,
}

/// `max_y gain(re + i y)` over all real `y`, with its argmax `y >= 0`.
///
/// For the implicit schemes the line is scanned on `0 <= y <= 3 * order` (for BDF2 `6`), beyond
/// which the gain is provably `< 1` (module docs), by a dense grid plus golden-section
/// refinement. For explicit Taylor the supremum is `+inf` (a polynomial along a line), returned
/// without scanning.
pub fn max_gain_on_vertical_line(
    scheme: Scheme,
    order: u32,
    re: f64,
) -> Result<LineMaximum, StabilityError> {
    scheme.check_order(order)?;
    if scheme == Scheme::ExplicitTaylor {
        return Ok(LineMaximum {
            im: f64::INFINITY,
            gain: f64::INFINITY,
        });
    }
    let on_line = |y: f64| gain(scheme, order, Complex::new(re, y));
    let limit = 3.0 * f64::from(order);
    let samples = (limit / SCAN_STEP).ceil() as usize;
    let grid = |k: usize| limit * k as f64 / samples as f64;
    let best = (0..=samples)
        .map(|k| (k, on_line(grid(k))))
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    let (lo, hi) = (
        grid(best.0.saturating_sub(1)),
        grid((best.0 + 1).min(samples)),
    );
    let (im, refined) = golden_section_max(on_line, lo, hi);
    // Keep the grid sample when refinement does not beat it (e.g. a maximum at the end y = 0).
    Ok(if refined >= best.1 {
        LineMaximum { im, gain: refined }
    } else {
        LineMaximum {
            im: grid(best.0),
            gain: best.1,
        }
    })
}

/// Maximises `f` on `[lo, hi]` by golden-section search, assuming it is unimodal there.
/// Returns `(argmax, max)`.
fn golden_section_max(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> (f64, f64) {
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let mut x1 = hi - ratio * (hi - lo);
    let mut x2 = lo + ratio * (hi - lo);
    let (mut f1, mut f2) = (f(x1), f(x2));
    while hi - lo > REFINE_TOLERANCE {
        if f1 >= f2 {
            hi = x2;
            (x2, f2) = (x1, f1);
            x1 = hi - ratio * (hi - lo);
            f1 = f(x1);
        } else {
            lo = x1;
            (x1, f1) = (x2, f2);
            x2 = lo + ratio * (hi - lo);
            f2 = f(x2);
        }
    }
    if f1 >= f2 { (x1, f1) } else { (x2, f2) }
}

/// Is `scheme` of `order` A-stable, and if not, where does it fail?
///
/// Implicit Taylor and BDF2: by the maximum-modulus argument in the module docs the supremum of
/// the gain over `Re z <= 0` is its maximum on the imaginary axis, which
/// [`max_gain_on_vertical_line`] computes; A-stable iff it is `<= 1 + GAIN_TOLERANCE`, else the
/// argmax is the counterexample. Results: implicit Taylor `M = 1, 2` and BDF2 are A-stable
/// (maximum exactly 1, at `z = 0`); `M = 3` is not (maximum `3/(2 sqrt 2) = 1.0607` at
/// `z = i sqrt 2`), nor is `M = 4` (maximum `2` at `z = i sqrt 6`).
///
/// Explicit Taylor: never A-stable (unbounded polynomial); the maximum on the imaginary axis is
/// `+inf` and the counterexample is [`EXPLICIT_TAYLOR_COUNTEREXAMPLE`], `z = -3`.
///
/// Errors when `order` is not supported for `scheme` (Taylor `1..=4`, BDF2 `2`).
pub fn analyse(scheme: Scheme, order: u32) -> Result<StabilityReport, StabilityError> {
    let axis = max_gain_on_vertical_line(scheme, order, 0.0)?;
    let counterexample = if scheme == Scheme::ExplicitTaylor {
        let z = EXPLICIT_TAYLOR_COUNTEREXAMPLE;
        Some(Counterexample {
            re: z.re,
            im: z.im,
            gain: gain(scheme, order, z),
        })
    } else {
        (axis.gain > 1.0 + GAIN_TOLERANCE).then_some(Counterexample {
            re: 0.0,
            im: axis.im,
            gain: axis.gain,
        })
    };
    Ok(StabilityReport {
        scheme,
        order,
        a_stable: counterexample.is_none(),
        max_gain_on_imaginary_axis: axis.gain,
        counterexample,
    })
}

/// The true extent of stability in the left half-plane: the smallest `c >= 0` such that
/// `gain(z) <= 1 + GAIN_TOLERANCE` for every `Re z <= -c` (to `1e-12`), or `None` when no
/// half-plane is stable (explicit Taylor).
///
/// `Some(0.0)` means A-stable. By the maximum principle (module docs) the half-plane
/// `Re z <= -c` is stable iff the line `Re z = -c` is, and that property is monotone in `c`, so
/// bisection on `c` finds the edge. Implicit Taylor `M = 3`: `c = 0.04045`; `M = 4`:
/// `c = 0.23742`. So the unstable set those orders have in the left half-plane is a thin strip
/// along the imaginary axis (`0 < |Im z| < sqrt 3` resp. `2 sqrt 2` on the axis itself).
pub fn stable_half_plane_shift(scheme: Scheme, order: u32) -> Result<Option<f64>, StabilityError> {
    scheme.check_order(order)?;
    if scheme == Scheme::ExplicitTaylor {
        return Ok(None);
    }
    let line_is_stable = |c: f64| -> Result<bool, StabilityError> {
        Ok(max_gain_on_vertical_line(scheme, order, -c)?.gain <= 1.0 + GAIN_TOLERANCE)
    };
    if line_is_stable(0.0)? {
        return Ok(Some(0.0));
    }
    // Terminates: every z with Re z <= -3M has |z| >= 3M, where the gain is <= 2/3 (implicit
    // Taylor) or <= 0.63 (BDF2, M = 2), see the module docs.
    let mut hi = 1.0;
    while !line_is_stable(hi)? {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    while hi - lo > 1e-12 {
        let mid = 0.5 * (lo + hi);
        if line_is_stable(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}
