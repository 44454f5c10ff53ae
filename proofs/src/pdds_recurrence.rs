//! The exact linear recurrence that PDDS (the reference's `cache::pdds::simulate`) applies to a
//! driven token, and the roots of its characteristic polynomial.
//!
//! Setting (one-step residuals, the paper's scaling, either orientation). Write `d_n` for the
//! driven token's MLP output at sampling step `n`, `p_n` for its proxy's, `nabla` for the
//! backward difference in sampling order (`nabla x_n = x_n - x_{n-1}`, which is the paper's
//! `Delta^(1)`, see [`crate::residuals`]). After a cache update with gap `sign` (one step), the
//! cache holds `c[m] = sign^m nabla^m d_n`, so the sampling-direction residual that `simulate`
//! reads is `R^(m)(d_n) = sign^m c[m] = nabla^m d_n`; the proxy's residual at the new step is
//! `R^(m)(p_{n+1}) = nabla^m p_{n+1}` (from its fresh output and its own cache). With the
//! confidences `theta_m = max(0, cos(c[m][d], c[m][p]))` the update is
//!
//! ```text
//! IE / IT(M):  d_{n+1} = d_n + sum_{m=1..M} [ (1 - theta_m) nabla^m d_n + theta_m nabla^m p_{n+1} ] / m!
//! IB (BDF2):   d_{n+1} = 4/3 d_n - 1/3 d_{n-1} + 2/3 [ (1 - theta) nabla d_n + theta nabla p_{n+1} ]
//! ```
//!
//! So the driven token is NOT integrated by an implicit method applied to its own ODE: its own
//! dynamics (`lambda`) never enter. The update is a blend, order by order, of two things:
//!
//! * `theta = 1`: the proxy's residuals. For IE, `d_{n+1} - d_n = p_{n+1} - p_n` exactly (the
//!   driven token copies its proxy's increment); for IT(M >= 2) the increment is
//!   `sum_m nabla^m p_{n+1} / m!`, which is NOT the proxy's increment `nabla p_{n+1}`; for IB the
//!   increment `v_n = d_n - d_{n-1}` is filtered: `v_{n+1} = v_n/3 + 2/3 nabla p_{n+1}`.
//! * `theta = 0`: explicit extrapolation of the token's own history, `d_{n+1} = sum_m nabla^m
//!   d_n / m!`, which is exactly TaylorSeer's one-step prediction from the same cache. For IE and
//!   IB this is `d_{n+1} = 2 d_n - d_{n-1}` (straight-line extrapolation).
//!
//! Homogeneous part (the proxy term is a forcing): with `d_n = r^n`, `nabla r^n = (1 - 1/r) r^n`,
//! the characteristic polynomial is
//!
//! ```text
//! IE / IT(M):  r^{M+1} - r^M - sum_m (1 - theta_m)/m! r^{M-m} (r - 1)^m = (r - 1) Q(r),
//!              Q(r) = r^M - sum_m (1 - theta_m)/m! r^{M-m} (r - 1)^{m-1},   Q(1) = theta_1;
//! IE:          (r - 1)(r - (1 - theta));
//! IB:          (r - 1)(r - (1 - 2 theta/3)).
//! ```
//!
//! `r = 1` is always a root (a constant offset of the driven token is never corrected: the
//! update has no restoring force), and it is a DOUBLE root exactly when `theta_1 = 0`, which
//! gives solutions growing linearly in `n`: with no confidence in the proxy's first-order
//! residual, the driven token drifts along a straight line, for every `lambda`. The tests show
//! (sampled, not proved) that for `theta_1 > 0` the other roots lie strictly inside the unit
//! disc for every `theta in [0, 1]^M`, `M <= 4`.

use ndarray::Array2;
use ndarray_linalg::EigVals;
use resca_reference::cache::pdds::Solver;

use crate::Complex;

fn factorial(m: usize) -> f64 {
    (1..=m).map(|k| k as f64).product()
}

fn binomial(m: usize, k: usize) -> f64 {
    factorial(m) / (factorial(k) * factorial(m - k))
}

/// `nabla^m x_n = sum_k (-1)^k C(m, k) x_{n-k}`: adds `scale` times these weights to
/// `weights[0..=m]` (weight `k` multiplies `x_{n-k}`).
fn add_backward_difference(weights: &mut [f64], m: usize, scale: f64) {
    for (k, weight) in weights.iter_mut().enumerate().take(m + 1) {
        let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
        *weight += scale * sign * binomial(m, k);
    }
}

/// Checks that `thetas` has one confidence per residual order the solver reads.
fn check_thetas(solver: Solver, thetas: &[f64]) {
    assert_eq!(
        thetas.len(),
        solver.order(),
        "{solver:?} reads {} residual orders, got {} confidences",
        solver.order(),
        thetas.len()
    );
}

/// The coefficients `a_0..=a_M` of the homogeneous part of the driven token's recurrence,
/// `d_{n+1} = sum_j a_j d_{n-j} + (proxy terms)`, for constant confidences `thetas[m-1] =
/// theta_m` (one per order the solver reads: IE and IB one, IT(M) `M`).
pub fn driven_coefficients(solver: Solver, thetas: &[f64]) -> Vec<f64> {
    check_thetas(solver, thetas);
    match solver {
        Solver::ImplicitEuler | Solver::ImplicitTaylor(_) => {
            let order = solver.order();
            let mut a = vec![0.0; order + 1];
            a[0] = 1.0;
            for (m, theta) in (1..=order).zip(thetas) {
                add_backward_difference(&mut a, m, (1.0 - theta) / factorial(m));
            }
            a
        }
        Solver::Bdf2 => {
            let own = 2.0 / 3.0 * (1.0 - thetas[0]);
            vec![4.0 / 3.0 + own, -1.0 / 3.0 - own]
        }
    }
}

/// The weights `b_0..=b_M` of the proxy's outputs in the driven token's recurrence:
/// `d_{n+1} = sum_j a_j d_{n-j} + sum_k b_k p_{n+1-k}` (see [`driven_coefficients`]).
pub fn proxy_weights(solver: Solver, thetas: &[f64]) -> Vec<f64> {
    check_thetas(solver, thetas);
    let order = solver.order();
    let mut b = vec![0.0; order + 1];
    match solver {
        Solver::ImplicitEuler | Solver::ImplicitTaylor(_) => {
            for (m, theta) in (1..=order).zip(thetas) {
                add_backward_difference(&mut b, m, theta / factorial(m));
            }
        }
        Solver::Bdf2 => add_backward_difference(&mut b, 1, 2.0 / 3.0 * thetas[0]),
    }
    b
}

/// The roots of `r^{L} - sum_j a_j r^{L-1-j}` (`L = a.len()`), the characteristic polynomial
/// of `d_{n+1} = sum_j a_j d_{n-j}`: the eigenvalues of its companion matrix (LAPACK `geev`).
pub fn characteristic_roots(coefficients: &[f64]) -> Vec<Complex> {
    let l = coefficients.len();
    let mut companion = Array2::<f64>::zeros((l, l));
    for (j, a) in coefficients.iter().enumerate() {
        companion[[0, j]] = *a;
    }
    for row in 1..l {
        companion[[row, row - 1]] = 1.0;
    }
    companion
        .eigvals()
        .expect("LAPACK geev on a small companion matrix")
        .to_vec()
}

/// The roots of the driven token's characteristic polynomial for constant confidences: always
/// containing `1` (see the module doc).
pub fn driven_roots(solver: Solver, thetas: &[f64]) -> Vec<Complex> {
    characteristic_roots(&driven_coefficients(solver, thetas))
}

/// The largest modulus among the roots other than the always-present root `r = 1`: the root
/// nearest to 1 is removed once. `< 1` means bounded solutions (a simple root at 1, the rest
/// decaying); `1` means a second root on the unit circle.
pub fn secondary_spectral_radius(solver: Solver, thetas: &[f64]) -> f64 {
    let mut roots = driven_roots(solver, thetas);
    let nearest = (0..roots.len())
        .min_by(|&i, &j| (roots[i] - 1.0).norm().total_cmp(&(roots[j] - 1.0).norm()))
        .expect("at least two roots");
    roots.swap_remove(nearest);
    roots.iter().map(|r| r.norm()).fold(0.0, f64::max)
}
