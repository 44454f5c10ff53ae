//! Property tests of the caching engine's pieces: the dense-step schedule, the Taylor cache, PDDS
//! against the released code's formulas in both orientations (docs/algorithms.md sections 5.3,
//! 5.4), and blend. Then the method settings (their checks, names, schedules and work per step)
//! and the caching hooks of ClusCa, ResCa and `full` run end to end on the tiny preset.

use approx::assert_abs_diff_eq;
use ndarray::{Array1, Array2, Array3, Array4, ArrayView2};
use proptest::prelude::*;
use resca_reference::cache::pdds::{Solver, blend, confidence, simulate};
use resca_reference::cache::schedule::Schedule;
use resca_reference::cache::taylor::TaylorFactors;
use resca_reference::cache::{CachingHook, MethodConfig, MethodKind, ResidualScaling, build_hook};
use resca_reference::ddim::DdimSchedule;
use resca_reference::flops::StepWork;
use resca_reference::sampler::MethodTimings;
use resca_reference::{Dit, DitConfig, FullCompute, Sampler, StepHook, sample};

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

/// The tiny preset: 16 tokens per image (an 8x8 latent in 2x2 patches), 2 blocks.
fn tiny() -> DitConfig {
    DitConfig::preset("tiny").unwrap()
}

fn validation_error(method: &MethodConfig) -> String {
    method.validate(tiny().tokens()).unwrap_err().to_string()
}

#[test]
fn method_settings_are_checked_with_one_message_each() {
    let tokens = tiny().tokens();
    assert_eq!(tokens, 16);
    let fora = MethodConfig::new(MethodKind::Fora, 0, 0);
    assert!(validation_error(&fora).contains("--interval must be at least 1"));

    // Taylor orders 0..=4 for TaylorSeer and ClusCa.
    for kind in [MethodKind::TaylorSeer, MethodKind::ClusCa] {
        MethodConfig::new(kind, 4, 4).validate(tokens).unwrap();
        let error = validation_error(&MethodConfig::new(kind, 4, 5));
        assert!(
            error.contains("--order 5 is out of range: Taylor orders 0..=4 are supported"),
            "{kind:?}: {error}"
        );
    }
    // ResCa's `it` solver: orders 1..=4 (its `order` field is unused, the solver carries M).
    let resca = |solver| MethodConfig {
        solver,
        ..MethodConfig::new(MethodKind::ResCa, 5, 0)
    };
    for m in [1, 4] {
        resca(Solver::ImplicitTaylor(m)).validate(tokens).unwrap();
    }
    for m in [0, 5] {
        let error = validation_error(&resca(Solver::ImplicitTaylor(m)));
        assert!(
            error.contains(&format!(
                "--order {m} is out of range: the `it` solver supports orders 1..=4"
            )),
            "{error}"
        );
    }

    // K between 1 and N for both clustering methods, both ends included.
    for kind in [MethodKind::ClusCa, MethodKind::ResCa] {
        let with = |clusters| MethodConfig {
            clusters,
            ..MethodConfig::new(kind, 4, 1)
        };
        for clusters in [1, 16] {
            with(clusters).validate(tokens).unwrap();
        }
        for clusters in [0, 17] {
            let error = validation_error(&with(clusters));
            assert!(
                error.contains(&format!(
                    "--clusters {clusters} must be between 1 and the token count N = 16"
                )),
                "{kind:?}: {error}"
            );
        }
        let alpha = MethodConfig { alpha: 1.5, ..with(4) };
        assert!(validation_error(&alpha).contains("--alpha 1.5 must be in [0, 1]"));
        let gamma = MethodConfig {
            propagation: -0.25,
            ..with(4)
        };
        assert!(validation_error(&gamma).contains("--gamma -0.25 must be in [0, 1]"));
    }
    // K and gamma mean nothing to the methods that do not cluster.
    for kind in [MethodKind::Fora, MethodKind::TaylorSeer] {
        let method = MethodConfig {
            clusters: 0,
            propagation: 2.0,
            ..MethodConfig::new(kind, 4, 1)
        };
        method.validate(tokens).unwrap();
    }
}

#[test]
fn method_names_show_the_kind_and_its_settings() {
    assert_eq!(MethodConfig::full().name(), "full");
    assert_eq!(MethodConfig::new(MethodKind::Fora, 5, 0).name(), "fora (N=5)");
    assert_eq!(
        MethodConfig::new(MethodKind::TaylorSeer, 4, 2).name(),
        "taylorseer (N=4, O=2)"
    );
    assert_eq!(
        MethodConfig::new(MethodKind::ClusCa, 4, 2).name(),
        "clusca (N=4, K=16, gamma=0.005)"
    );
    assert_eq!(
        MethodConfig::new(MethodKind::ResCa, 5, 1).name(),
        "resca-ie (N=5, K=16)"
    );
    let it3 = MethodConfig {
        solver: Solver::ImplicitTaylor(3),
        residuals: ResidualScaling::Official,
        clusters: 8,
        ..MethodConfig::new(MethodKind::ResCa, 5, 1)
    };
    assert_eq!(it3.name(), "resca-it3 (N=5, K=8, official)");
    let bdf2 = MethodConfig {
        solver: Solver::Bdf2,
        ..MethodConfig::new(MethodKind::ResCa, 6, 1)
    };
    assert_eq!(bdf2.name(), "resca-ib (N=6, K=16)");
}

#[test]
fn full_computes_every_step_whatever_its_interval() {
    let full = MethodConfig {
        interval: 5,
        ..MethodConfig::full()
    };
    assert_eq!(full.schedule().plan(12), vec![true; 12]);
    // The same interval on a cached method: positions 0, 1 (first_enhance 2), then 6 and 11.
    let fora = MethodConfig::new(MethodKind::Fora, 5, 0).schedule().plan(12);
    let full_positions: Vec<usize> = (0..12).filter(|&p| fora[p]).collect();
    assert_eq!(full_positions, vec![0, 1, 6, 11]);
}

#[test]
fn a_sparse_step_computes_k_mlp_rows_for_the_clustering_methods_and_none_otherwise() {
    let config = tiny();
    let full = StepWork {
        attention_tokens: 16,
        mlp_tokens: 16,
    };
    for kind in [
        MethodKind::Fora,
        MethodKind::TaylorSeer,
        MethodKind::ClusCa,
        MethodKind::ResCa,
    ] {
        let method = MethodConfig {
            clusters: 4,
            ..MethodConfig::new(kind, 4, 1)
        };
        assert_eq!(method.step_work(true, &config), full, "{kind:?}");
        let mlp_tokens = match kind {
            MethodKind::ClusCa | MethodKind::ResCa => 4,
            _ => 0,
        };
        assert_eq!(
            method.step_work(false, &config),
            StepWork {
                attention_tokens: 0,
                mlp_tokens
            },
            "{kind:?}"
        );
    }
}

#[test]
fn taylor_factors_are_empty_until_the_first_update() {
    let mut cache = TaylorFactors::default();
    assert!(cache.is_empty());
    cache.update(Array3::from_elem((1, 2, 3), 1.5f32).view(), 0.0, 2);
    assert!(!cache.is_empty());
}

/// Seeded noise (B, 4, 8, 8) for the tiny preset, entries in [-1, 1].
fn tiny_noise(batch: usize) -> Array4<f32> {
    Array4::from_shape_fn((batch, 4, 8, 8), |(b, c, h, w)| {
        ((b + 3 * c + 5 * h + 7 * w) % 11) as f32 / 5.0 - 1.0
    })
}

/// ClusCa and ResCa (IE and IT2, clusterings computed, none replayed) over DDIM-7 with N = 3 on
/// the tiny preset with seeded weights: each step computes what its place in the schedule says,
/// the samples are finite, and the time spent clustering (full steps) and simulating (sparse
/// steps) is counted, positive and inside the steps' own time.
#[test]
fn clustering_methods_run_with_computed_clusterings_and_count_their_time() {
    let model = Dit::random(tiny(), 5).unwrap();
    let sampler = Sampler::Ddim(DdimSchedule::new(7).unwrap());
    let resca = |solver| MethodConfig {
        solver,
        ..MethodConfig::new(MethodKind::ResCa, 3, 1)
    };
    for method in [
        MethodConfig::new(MethodKind::ClusCa, 3, 2),
        resca(Solver::ImplicitEuler),
        resca(Solver::ImplicitTaylor(2)),
    ] {
        let method = MethodConfig { clusters: 4, ..method };
        let name = method.name();
        let mut hook = CachingHook::new(method.clone(), &model.config, 2, sampler.orientation()).unwrap();
        let trajectory = sample(
            &model,
            tiny_noise(2).view(),
            &[1, 2],
            None,
            &sampler,
            &mut hook,
            &mut |_, _| {},
        )
        .unwrap();
        // Full at positions 0, 1 (first_enhance 2) and 4; sparse at 2, 3, 5, 6.
        let plan = method.schedule().plan(7);
        assert_eq!(plan, vec![true, true, false, false, true, false, false], "{name}");
        for (position, &full) in plan.iter().enumerate() {
            assert_eq!(
                trajectory.work[position],
                method.step_work(full, &model.config),
                "{name}, position {position}"
            );
        }
        assert!(trajectory.x.iter().all(|v| v.is_finite()), "{name}");
        // One clustering per full step, each with a label for every token of both rows.
        let history = hook.clustering_history();
        assert_eq!(
            history.iter().map(|r| r.step_index).collect::<Vec<_>>(),
            vec![6, 5, 2],
            "{name}"
        );
        assert!(
            history
                .iter()
                .all(|r| r.rows.len() == 2 && r.rows.iter().all(|row| row.labels.len() == 16))
        );

        let timings = hook.timings();
        let total: f64 = trajectory.step_seconds.iter().sum();
        assert!(
            timings.clustering_s > 0.0 && timings.simulated_s > 0.0,
            "{name}: {timings:?}"
        );
        assert!(
            timings.clustering_s + timings.simulated_s < total,
            "{name}: {timings:?} of {total} s"
        );
    }
}

/// `full` is the plain forward: no caching setting applies to it, so even an interval that every
/// cached method refuses builds it, and its run equals the uncached forward's bit for bit.
#[test]
fn the_hook_of_full_is_the_plain_forward() {
    let model = Dit::random(tiny(), 5).unwrap();
    let sampler = Sampler::Ddim(DdimSchedule::new(3).unwrap());
    let full = MethodConfig {
        interval: 0,
        ..MethodConfig::full()
    };
    let mut hook = build_hook(&full, &model.config, 2, sampler.orientation()).unwrap();
    let run = |hook: &mut dyn StepHook| {
        sample(
            &model,
            tiny_noise(2).view(),
            &[1, 2],
            None,
            &sampler,
            hook,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let built = run(hook.as_mut());
    let plain = run(&mut FullCompute);
    assert_eq!(built.x, plain.x);
    assert_eq!(built.work, plain.work);
    assert_eq!(hook.timings(), MethodTimings::default());
    let cached = MethodConfig {
        interval: 0,
        ..MethodConfig::new(MethodKind::Fora, 4, 0)
    };
    let error = build_hook(&cached, &model.config, 2, sampler.orientation())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("--interval must be at least 1"), "{error}");
}
