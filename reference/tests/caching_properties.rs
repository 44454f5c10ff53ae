//! Property tests of the caching engine's pieces: the dense-step schedule, the Taylor cache, PDDS
//! against the released code's formulas in both orientations (docs/algorithms.md sections 5.3,
//! 5.4), and blend.

use approx::assert_abs_diff_eq;
use ndarray::{Array1, Array2, Array3, ArrayView2};
use proptest::prelude::*;
use resca_reference::cache::pdds::{Solver, blend, confidence, simulate};
use resca_reference::cache::schedule::Schedule;
use resca_reference::cache::taylor::TaylorFactors;

/// A random (rows, cols) matrix with entries in [-2, 2].
fn matrix(rows: usize, cols: usize) -> impl Strategy<Value = Array2<f32>> {
    proptest::collection::vec(-2.0f32..2.0, rows * cols)
        .prop_map(move |v| Array2::from_shape_vec((rows, cols), v).unwrap())
}

/// A PDDS problem: cache orders 0..=4 (N, D), K proxies (distinct tokens), labels with every
/// proxy in its own cluster, fresh proxy outputs.
#[derive(Debug, Clone)]
struct Problem {
    cache: Vec<Array2<f32>>,
    proxies: Vec<usize>,
    labels: Vec<usize>,
    fresh: Array2<f32>,
}

fn problem() -> impl Strategy<Value = Problem> {
    (2usize..12, 1usize..6, 1usize..4).prop_flat_map(|(n, d, k)| {
        let k = k.min(n);
        (
            proptest::collection::vec(matrix(n, d), 5),
            proptest::sample::subsequence((0..n).collect::<Vec<_>>(), k),
            proptest::collection::vec(0..k, n),
            matrix(k, d),
        )
            .prop_map(|(cache, proxies, mut labels, fresh)| {
                for (cluster, &p) in proxies.iter().enumerate() {
                    labels[p] = cluster;
                }
                Problem {
                    cache,
                    proxies,
                    labels,
                    fresh,
                }
            })
    })
}

/// The released code's sparse-step update, DDIM orientation, transcribed from docs/algorithms.md
/// section 5.3.
fn released_ddim(p: &Problem, solver: Solver) -> Array2<f32> {
    let c = &p.cache;
    let theta = |m: usize, i: usize, proxy: usize| confidence(c[m].row(i), c[m].row(proxy));
    let mut out = c[0].clone();
    for (i, mut x) in out.rows_mut().into_iter().enumerate() {
        let cluster = p.labels[i];
        let proxy = p.proxies[cluster];
        let ie_est = || {
            blend(
                c[1].row(i),
                (&c[0].row(proxy) - &p.fresh.row(cluster)).view(),
                theta(1, i, proxy),
            )
        };
        match solver {
            Solver::ImplicitEuler => x.assign(&(&c[0].row(i) - &ie_est())),
            Solver::Bdf2 => {
                let future = &c[0].row(i) + &c[1].row(i);
                x.assign(&(&c[0].row(i) * (4.0f32 / 3.0) - &future * (1.0f32 / 3.0) - &ie_est() * (2.0f32 / 3.0)));
            }
            Solver::ImplicitTaylor(order) => {
                let mut prox: Array1<f32> = p.fresh.row(cluster).to_owned();
                for m in 1..=order {
                    prox = &c[m - 1].row(proxy) - &prox;
                    let est = blend(c[m].row(i), prox.view(), theta(m, i, proxy));
                    let sign = if m % 2 == 1 { -1.0 } else { 1.0 };
                    let factorial: f32 = (1..=m).map(|v| v as f32).product();
                    x.scaled_add(sign / factorial, &est);
                }
            }
        }
    }
    for (cluster, &proxy) in p.proxies.iter().enumerate() {
        out.row_mut(proxy).assign(&p.fresh.row(cluster));
    }
    out
}

/// The flow orientation of docs/algorithms.md section 5.4: `proxy_next = f - x_t[p]`, IE
/// `x_t + est`, IT `+1/m!`, BDF2 `4/3 x_t - 1/3 (x_t - r_t) + 2/3 est`.
fn released_flow(p: &Problem, solver: Solver) -> Array2<f32> {
    let c = &p.cache;
    let theta = |m: usize, i: usize, proxy: usize| confidence(c[m].row(i), c[m].row(proxy));
    let mut out = c[0].clone();
    for (i, mut x) in out.rows_mut().into_iter().enumerate() {
        let cluster = p.labels[i];
        let proxy = p.proxies[cluster];
        let mut prox: Array1<f32> = p.fresh.row(cluster).to_owned();
        let order = match solver {
            Solver::ImplicitTaylor(m) => m,
            _ => 1,
        };
        let mut total = Array1::<f32>::zeros(x.len());
        let mut first = Array1::<f32>::zeros(x.len());
        for m in 1..=order {
            prox = &prox - &c[m - 1].row(proxy);
            let est = blend(c[m].row(i), prox.view(), theta(m, i, proxy));
            let factorial: f32 = (1..=m).map(|v| v as f32).product();
            total.scaled_add(1.0 / factorial, &est);
            if m == 1 {
                first = est;
            }
        }
        match solver {
            Solver::Bdf2 => {
                let previous = &c[0].row(i) - &c[1].row(i);
                x.assign(&(&c[0].row(i) * (4.0f32 / 3.0) - &previous * (1.0f32 / 3.0) + &first * (2.0f32 / 3.0)));
            }
            _ => x += &total,
        }
    }
    for (cluster, &proxy) in p.proxies.iter().enumerate() {
        out.row_mut(proxy).assign(&p.fresh.row(cluster));
    }
    out
}

fn views(p: &Problem) -> Vec<ArrayView2<'_, f32>> {
    p.cache.iter().map(|c| c.view()).collect()
}

const SOLVERS: [Solver; 6] = [
    Solver::ImplicitEuler,
    Solver::Bdf2,
    Solver::ImplicitTaylor(1),
    Solver::ImplicitTaylor(2),
    Solver::ImplicitTaylor(3),
    Solver::ImplicitTaylor(4),
];

proptest! {
    #![proptest_config(resca_tests::proptest_config(128))]

    /// Our single sampling-direction implementation equals the released DDIM formulas and the
    /// flow formulas, for every solver. Tolerance 1e-5: only the float operation order differs
    /// (entries are O(1), sums of at most five terms).
    #[test]
    fn pdds_matches_the_released_formulas_in_both_orientations(p in problem()) {
        for solver in SOLVERS {
            let ddim = simulate(&views(&p), &p.proxies, &p.labels, p.fresh.view(), solver, -1.0);
            let flow = simulate(&views(&p), &p.proxies, &p.labels, p.fresh.view(), solver, 1.0);
            for (ours, theirs) in [(ddim, released_ddim(&p, solver)), (flow, released_flow(&p, solver))] {
                for (a, b) in ours.iter().zip(theirs.iter()) {
                    prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{solver:?}: {a} vs {b}");
                }
            }
        }
    }

    /// Counting down with derivatives c[m] is counting up with (-1)^m c[m]: the confidence is
    /// invariant under negating both residuals, so the two orientations agree exactly.
    #[test]
    fn orientations_mirror_each_other(p in problem()) {
        let mut mirrored = p.clone();
        for (m, order) in mirrored.cache.iter_mut().enumerate() {
            if m % 2 == 1 {
                order.mapv_inplace(|v| -v);
            }
        }
        for solver in SOLVERS {
            let down = simulate(&views(&p), &p.proxies, &p.labels, p.fresh.view(), solver, -1.0);
            let up = simulate(&views(&mirrored), &p.proxies, &p.labels, p.fresh.view(), solver, 1.0);
            for (a, b) in down.iter().zip(up.iter()) {
                prop_assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{solver:?}");
            }
        }
    }

    /// Proxies always leave with exactly their freshly computed outputs.
    #[test]
    fn proxies_keep_their_true_outputs(p in problem()) {
        for solver in SOLVERS {
            let out = simulate(&views(&p), &p.proxies, &p.labels, p.fresh.view(), solver, -1.0);
            for (cluster, &proxy) in p.proxies.iter().enumerate() {
                prop_assert_eq!(out.row(proxy), p.fresh.row(cluster));
            }
        }
    }

    /// theta is in [0, 1] and the blend lies between the token's own and the proxy's residual.
    #[test]
    fn blend_is_a_convex_combination(a in matrix(2, 5), b in matrix(2, 5)) {
        let theta = confidence(a.row(0), b.row(0));
        prop_assert!((0.0..=1.0 + 1e-6).contains(&theta));
        let mixed = blend(a.row(1), b.row(1), theta);
        for ((m, x), y) in mixed.iter().zip(a.row(1)).zip(b.row(1)) {
            prop_assert!(*m >= x.min(*y) - 1e-6 && *m <= x.max(*y) + 1e-6);
        }
    }

    /// `first_enhance + floor((S - first_enhance) / N)` full steps, the first `first_enhance`
    /// of them at the start, then exactly every N-th position.
    #[test]
    fn schedule_counts_and_spacing(steps in 1usize..80, first in 1usize..4, interval in 1usize..12) {
        let plan = Schedule::new(first, interval).unwrap().plan(steps);
        let full: Vec<usize> = (0..steps).filter(|&p| plan[p]).collect();
        let expected = first.min(steps) + steps.saturating_sub(first) / interval;
        prop_assert_eq!(full.len(), expected);
        for pair in full.windows(2).skip(first.saturating_sub(1)) {
            prop_assert_eq!(pair[1] - pair[0], interval);
        }
    }

    /// The order-1 Taylor cache extrapolates any linear function exactly (up to rounding),
    /// whatever the gaps between updates.
    #[test]
    fn taylor_order_one_is_exact_on_lines(
        slope in -3.0f32..3.0,
        offset in -3.0f32..3.0,
        gaps in proptest::collection::vec(1i32..8, 2..6),
        distance in -8i32..0,
    ) {
        let f = |s: f32| offset + slope * s;
        let mut cache = TaylorFactors::default();
        let mut s = 100.0f32;
        cache.update(Array3::from_elem((1, 1, 1), f(s)).view(), 0.0, 1);
        for gap in gaps {
            s -= gap as f32;
            cache.update(Array3::from_elem((1, 1, 1), f(s)).view(), -(gap as f32), 1);
        }
        let predicted = cache.predict(distance as f32)[[0, 0, 0]];
        assert_abs_diff_eq!(predicted, f(s + distance as f32), epsilon = 1e-3);
    }
}
