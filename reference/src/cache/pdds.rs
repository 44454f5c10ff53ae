//! PDDS, proxy-driven denoising simulation (docs/algorithms.md sections 5.2-5.4): the MLP outputs
//! of the driven tokens of a sparse step, simulated by an implicit update whose residuals blend the
//! token's own cached residuals with its proxy's fresh one.
//!
//! Everything is written with residuals in the SAMPLING direction (`R^(m)` = new minus old along
//! the run, the paper's `F^(m)`), so one implementation serves DDIM (whose step index counts down)
//! and the flow sampler (counting up). The cache stores derivatives `c[m] = d^m F / ds^m` with
//! respect to the sampler's step index, hence `R^(m) = sign^m c[m]` with `sign = -1` for DDIM and
//! `+1` for flow (unit steps); for DDIM this reproduces the released code's
//! `x_i = c[0][i] - [(1 - theta) c[1][i] + theta (c[0][p] - f)]` exactly.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip};

/// The cosine floor of `F.cosine_similarity(eps=1e-6)`.
pub const COSINE_EPS: f32 = 1e-6;

/// The implicit solver of the driven tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// ResCa-IE: implicit Euler, `d_{t-1} = d_t + R^(1)hat`.
    ImplicitEuler,
    /// ResCa-IT: implicit Taylor of order M, `d_{t-1} = d_t + sum_m R^(m)hat / m!`.
    ImplicitTaylor(usize),
    /// ResCa-IB: BDF2, `d_{t-1} = 4/3 d_t - 1/3 d_{t+1} + 2/3 R^(1)hat`.
    Bdf2,
}

impl Solver {
    /// Residual orders the solver reads from the cache.
    pub fn order(&self) -> usize {
        match self {
            Solver::ImplicitTaylor(m) => *m,
            _ => 1,
        }
    }
}

/// `(a / max(|a|, eps)) . (b / max(|b|, eps))`, as torch's `cosine_similarity` computes it: the
/// vectors normalized first, then one dot product.
pub fn cosine(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f32 {
    normalized_dot(a, norm(a), b, norm(b))
}

/// `max(|v|, eps)`: the norm `cosine` divides by.
fn norm(v: ArrayView1<f32>) -> f32 {
    v.dot(&v).sqrt().max(COSINE_EPS)
}

/// `sum_i (a_i / norm_a) (b_i / norm_b)`, summed in 8 lanes (vectorized, and the same order for
/// every caller, so `simulate` and `confidence` agree bit for bit).
fn normalized_dot(a: ArrayView1<f32>, norm_a: f32, b: ArrayView1<f32>, norm_b: f32) -> f32 {
    let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
    let (a, b) = (
        a.as_slice().expect("standard layout"),
        b.as_slice().expect("standard layout"),
    );
    let term = |x: f32, y: f32| (x / norm_a) * (y / norm_b);
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(&x, &y)| term(x, y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += term(x[lane], y[lane]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The confidence `theta = max(0, cos(a, b))` in the proxy's residual.
pub fn confidence(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f32 {
    cosine(a, b).max(0.0)
}

/// `(1 - theta) own + theta proxy`: the blended residual of a driven token.
pub fn blend(own: ArrayView1<f32>, proxy: ArrayView1<f32>, theta: f32) -> Array1<f32> {
    let mut out = own.to_owned() * (1.0 - theta);
    out.zip_mut_with(&proxy, |o, &p| *o += theta * p);
    out
}

/// One batch row's sparse-step simulation.
///
/// * `cache[m]` (N, D): the cached order-m values of every token's MLP output (`cache[0]` the
///   last output); orders missing from the cache are passed as zeros;
/// * `proxies[c]`: the proxy token of cluster c; `labels[i]`: the cluster of token i;
/// * `fresh` (K, D): the proxies' MLP outputs computed at this step;
/// * `sign`: -1 when the sampler's step index counts down (DDIM), +1 when it counts up (flow).
///
/// Returns the MLP outputs (N, D) of this step: simulated for driven tokens, `fresh` for proxies.
pub fn simulate(
    cache: &[ArrayView2<f32>],
    proxies: &[usize],
    labels: &[usize],
    fresh: ArrayView2<f32>,
    solver: Solver,
    sign: f32,
) -> Array2<f32> {
    let mut out = Array2::zeros(cache[0].raw_dim());
    simulate_into(out.view_mut(), cache, proxies, labels, fresh, solver, sign);
    out
}

/// [`simulate`], writing the step's MLP outputs into `out` (N, D).
pub fn simulate_into(
    mut out: ArrayViewMut2<f32>,
    cache: &[ArrayView2<f32>],
    proxies: &[usize],
    labels: &[usize],
    fresh: ArrayView2<f32>,
    solver: Solver,
    sign: f32,
) {
    let order = solver.order();
    assert!(cache.len() > order, "the cache must hold orders 0..={order}");
    // Sampling-direction residuals of each proxy at the new step, orders 1..=M:
    // R^(m)(p_new) = R^(m-1)(p_new) - R^(m-1)(p_old), with R^(0)(p_new) = fresh and
    // R^(m-1)(p_old) = sign^(m-1) c[m-1][p].
    let mut proxy_residuals: Vec<Array2<f32>> = Vec::with_capacity(order);
    let mut previous = fresh.to_owned();
    for m in 1..=order {
        let old = cache[m - 1].select(Axis(0), proxies) * sign.powi(m as i32 - 1);
        let residual = &previous - &old;
        proxy_residuals.push(residual.clone());
        previous = residual;
    }
    // theta^(m) for every token: the cosine of its order-m cache with its proxy's, with every
    // row's norm computed once.
    let thetas: Vec<Vec<f32>> = (1..=order)
        .map(|m| {
            let norms: Vec<f32> = cache[m].rows().into_iter().map(norm).collect();
            (0..labels.len())
                .map(|token| {
                    let proxy = proxies[labels[token]];
                    normalized_dot(cache[m].row(token), norms[token], cache[m].row(proxy), norms[proxy]).max(0.0)
                })
                .collect()
        })
        .collect();
    for (token, mut x) in out.rows_mut().into_iter().enumerate() {
        let cluster = labels[token];
        let c0 = cache[0].row(token);
        // R^(m)hat = (1 - theta) sign^m c[m][token] + theta R^(m)(proxy), the blended residual of
        // order m in the sampling direction, is `own * own_weight + theta * proxy` over the rows
        // (own, proxy); `x` is written in one pass per order, without a temporary.
        let blended = |m: usize| {
            let theta = thetas[m - 1][token];
            let own_weight = (1.0 - theta) * sign.powi(m as i32);
            (
                cache[m].row(token),
                proxy_residuals[m - 1].row(cluster),
                own_weight,
                theta,
            )
        };
        match solver {
            Solver::ImplicitEuler | Solver::ImplicitTaylor(_) => {
                // x = c[0] + sum_m R^(m)hat / m!.
                for m in 1..=order {
                    let (own, proxy, own_weight, theta) = blended(m);
                    let weight = inverse_factorial(m);
                    let term = |own: f32, proxy: f32| (own * own_weight + theta * proxy) * weight;
                    if m == 1 {
                        Zip::from(&mut x)
                            .and(c0)
                            .and(own)
                            .and(proxy)
                            .for_each(|v, &c, &own, &proxy| *v = c + term(own, proxy));
                    } else {
                        Zip::from(&mut x)
                            .and(own)
                            .and(proxy)
                            .for_each(|v, &own, &proxy| *v += term(own, proxy));
                    }
                }
            }
            Solver::Bdf2 => {
                // d_{t+1} = d_t - R^(1)(d_t) = c[0] - sign c[1]; then
                // x = 4/3 d_t - 1/3 d_{t+1} + 2/3 R^(1)hat.
                let (own, proxy, own_weight, theta) = blended(1);
                Zip::from(&mut x)
                    .and(c0)
                    .and(own)
                    .and(proxy)
                    .for_each(|v, &c, &own, &proxy| {
                        let previous_state = c - sign * own;
                        let start = (4.0f32 / 3.0) * c - (1.0f32 / 3.0) * previous_state;
                        *v = start + (own * own_weight + theta * proxy) * (2.0f32 / 3.0);
                    });
            }
        }
    }
    for (cluster, &proxy) in proxies.iter().enumerate() {
        out.row_mut(proxy).assign(&fresh.row(cluster));
    }
}

/// `1/m!` as f32.
fn inverse_factorial(m: usize) -> f32 {
    (1..=m).fold(1.0f64, |acc, k| acc / k as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn released_code_implicit_euler_form_is_reproduced_for_ddim() {
        // Two tokens, one cluster whose proxy is token 0.
        let c0 = array![[1.0f32, 2.0], [3.0, 5.0]];
        let c1 = array![[0.5f32, 0.5], [0.25, 1.0]];
        let fresh = array![[0.8f32, 1.9]];
        let out = simulate(
            &[c0.view(), c1.view()],
            &[0],
            &[0, 0],
            fresh.view(),
            Solver::ImplicitEuler,
            -1.0,
        );
        let theta = confidence(c1.row(1), c1.row(0));
        // x_1 = c0[1] - [(1 - theta) c1[1] + theta (c0[0] - f)].
        for d in 0..2 {
            let expected = c0[[1, d]] - ((1.0 - theta) * c1[[1, d]] + theta * (c0[[0, d]] - fresh[[0, d]]));
            assert!((out[[1, d]] - expected).abs() < 1e-6);
        }
        assert_eq!(out.row(0), fresh.row(0));
    }

    #[test]
    fn confidence_is_clamped_at_zero_and_one_for_parallel_residuals() {
        assert_eq!(confidence(array![1.0f32, 0.0].view(), array![-1.0f32, 0.0].view()), 0.0);
        assert!((confidence(array![2.0f32, 2.0].view(), array![1.0f32, 1.0].view()) - 1.0).abs() < 1e-6);
        assert_eq!(confidence(array![0.0f32, 0.0].view(), array![1.0f32, 1.0].view()), 0.0);
    }
}
