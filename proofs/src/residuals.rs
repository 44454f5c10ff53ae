//! The multi-order residuals of ResCa (supplement Eq. S4, docs/algorithms.md section 5.2):
//!
//! ```text
//! Delta^(0) x_t = x_t,    Delta^(m) x_t = Delta^(m-1) x_t - Delta^(m-1) x_{t+1}.
//! ```
//!
//! The paper's time index `t` counts DOWN along the sampling run (DDIM), so `x_{t+1}` is the
//! value one step EARLIER in sampling order: `Delta^(1) x_t = x_t - x_{t+1}` is "new minus old",
//! the backward difference in sampling order. What the tests prove about it:
//!
//! * closed form `Delta^(m) x_t = sum_{k=0..m} (-1)^k C(m, k) x_{t+k}`;
//! * linearity;
//! * it annihilates polynomials in `t` of degree `< m`, and sends `t -> a t^m + ...` to
//!   `(-1)^m m! a` (the sign because `t` runs against the sampling direction: in the sampling
//!   position `u = -t` the value is `m! a_u`, `a_u = (-1)^m a` the leading coefficient in `u`);
//! * the finite-difference derivatives cached by the reference's `TaylorFactors` are these
//!   residuals divided by the step gap (see `tests/residual_recurrences.rs`).

use std::ops::Sub;

/// `Delta^(m) x_t` by the recursion of Eq. S4, from `window = [x_t, x_{t+1}, ..., x_{t+m}]`
/// (newest first, as the paper indexes them). Entries beyond `window[m]` are ignored.
///
/// Generic over any type with subtraction, so it runs on exact integers (`i128`) as well as
/// on floats. The recursion is evaluated literally (`2^m` subtractions), which is what makes
/// it an independent check of the closed form; `m` is at most a few dozen in practice.
///
/// # Panics
/// When `window` holds fewer than `order + 1` values.
pub fn residual<T: Copy + Sub<Output = T>>(order: usize, window: &[T]) -> T {
    assert!(
        window.len() > order,
        "Delta^({order}) needs {} values, got {}",
        order + 1,
        window.len()
    );
    if order == 0 {
        window[0]
    } else {
        residual(order - 1, window) - residual(order - 1, &window[1..])
    }
}

/// `[Delta^(0) x_t, ..., Delta^(order) x_t]` for `window = [x_t, ..., x_{t+order}]`, by the
/// same recursion evaluated as a table (each order from the previous one over the window), so
/// it costs `O(order^2)` instead of `O(2^order)`.
pub fn residuals_up_to<T: Copy + Sub<Output = T>>(order: usize, window: &[T]) -> Vec<T> {
    assert!(
        window.len() > order,
        "Delta^(0..={order}) needs {} values, got {}",
        order + 1,
        window.len()
    );
    let mut row: Vec<T> = window[..=order].to_vec();
    let mut out = vec![row[0]];
    for _ in 1..=order {
        row = row.windows(2).map(|pair| pair[0] - pair[1]).collect();
        out.push(row[0]);
    }
    out
}
