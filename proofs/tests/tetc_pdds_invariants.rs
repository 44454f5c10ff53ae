//! Invariants of TETC (`resca_reference::cache::tetc`) and PDDS (`cache::pdds`) on random token
//! matrices (N <= 40 tokens, D <= 16 components), stated with their premises and tolerances.

mod common;

use common::pdds_run::SOLVERS;
use ndarray::{Array2, ArrayView2, array};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use resca_reference::cache::pdds::{confidence, simulate};
use resca_reference::cache::tetc::{
    Clustering, NORM_EPS, ProxyChoice, assign, choose_proxies, cosine_similarity_matrix, initial_medoids, k_medoids,
    objective, temporal_smoothing, update_medoids,
};

/// Rounding allowance for similarities: a normalised row has norm `1 +- D * 2^-24` and a dot
/// product of `D <= 16` terms adds as much again, so `|S_ij| - 1` and `S_ii - 1` are below
/// `~4e-6`; 1e-5 leaves margin.
const SIM_TOL: f32 = 1e-5;

/// N tokens of D components in `[-10, 10]`, and a mask of rows set to exactly zero.
fn tokens(max_n: usize) -> impl Strategy<Value = Array2<f32>> {
    (1usize..=max_n, 1usize..=16).prop_flat_map(|(n, d)| {
        (
            prop::collection::vec(-10.0f32..=10.0, n * d),
            prop::collection::vec(prop::bool::weighted(0.1), n),
        )
            .prop_map(move |(values, zero)| {
                let mut x = Array2::from_shape_vec((n, d), values).unwrap();
                for (mut row, z) in x.rows_mut().into_iter().zip(zero) {
                    if z {
                        row.fill(0.0);
                    }
                }
                x
            })
    })
}

/// Tokens with no tiny row (norm `>= 1e-3`) and no two rows parallel (cosine `< 1 - 2e-5`,
/// twice the rounding allowance of `S`), the "generic" case: no ties between a medoid's
/// similarity to itself and to another medoid. `D >= 3` keeps the filter's rejection rate low
/// (40 random directions in the plane are often closer than that).
fn generic_tokens(max_n: usize) -> impl Strategy<Value = Array2<f32>> {
    (1usize..=max_n, 3usize..=16).prop_flat_map(|(n, d)| {
        prop::collection::vec(-10.0f32..=10.0, n * d)
            .prop_map(move |v| Array2::from_shape_vec((n, d), v).unwrap())
            .prop_filter("generic: nonzero, pairwise non-parallel rows", |x| is_generic(x.view()))
    })
}

fn is_generic(x: ArrayView2<f32>) -> bool {
    let s = cosine_similarity_matrix(x);
    let norms_ok = x.rows().into_iter().all(|r| r.dot(&r).sqrt() >= 1e-3);
    let off_diagonal_ok = s.indexed_iter().all(|((i, j), v)| i == j || *v < 1.0 - 2.0 * SIM_TOL);
    norms_ok && off_diagonal_ok
}

fn row_norm(x: ArrayView2<f32>, i: usize) -> f32 {
    x.row(i).dot(&x.row(i)).sqrt()
}

proptest! {
    #![proptest_config(resca_tests::proptest_config(128))]

    /// `cosine_similarity_matrix`: symmetric (tolerance 1e-6: `S = Y Y^T` by GEMM, whose
    /// blocking may sum the two triangles in different orders), entries in `[-1, 1]` up to
    /// `SIM_TOL`, unit diagonal up to `SIM_TOL` for every row of norm `>= 1e-6`. Rows are
    /// normalised by `max(|x|, 1e-6)`, so a ZERO row stays zero: its row and column of `S` are
    /// exactly 0 and its diagonal entry is 0, not 1.
    #[test]
    fn similarity_is_symmetric_with_unit_diagonal_and_entries_in_range(x in tokens(40)) {
        let s = cosine_similarity_matrix(x.view());
        let n = x.nrows();
        prop_assert_eq!(s.dim(), (n, n));
        for i in 0..n {
            for j in 0..n {
                prop_assert!((s[[i, j]] - s[[j, i]]).abs() <= 1e-6, "S[{i},{j}] = {} vs {}", s[[i, j]], s[[j, i]]);
                prop_assert!(s[[i, j]].abs() <= 1.0 + SIM_TOL, "S[{i},{j}] = {}", s[[i, j]]);
            }
            if row_norm(x.view(), i) >= NORM_EPS {
                prop_assert!((s[[i, i]] - 1.0).abs() <= SIM_TOL, "S[{i},{i}] = {}", s[[i, i]]);
            } else if row_norm(x.view(), i) == 0.0 {
                prop_assert!(s.row(i).iter().chain(s.column(i).iter()).all(|&v| v == 0.0));
            }
        }
    }

    /// `temporal_smoothing` (the EMA over full steps) of two similarity matrices with
    /// `alpha in [0, 1]` stays symmetric and in `[-1, 1]` up to `SIM_TOL` (a convex
    /// combination, plus one rounding per term); without history it returns `S` unchanged.
    #[test]
    fn ema_of_similarities_stays_in_range(
        (a, b) in (1usize..=40, 1usize..=16).prop_flat_map(|(n, d)| {
            let m = move || prop::collection::vec(-10.0f32..=10.0, n * d)
                .prop_map(move |v| Array2::from_shape_vec((n, d), v).unwrap());
            (m(), m())
        }),
        alpha in 0.0f32..=1.0,
        steps in 1usize..=5,
    ) {
        let current = cosine_similarity_matrix(a.view());
        prop_assert_eq!(temporal_smoothing(current.clone(), None, alpha), current.clone());
        let mut smoothed = cosine_similarity_matrix(b.view());
        for _ in 0..steps {
            smoothed = temporal_smoothing(current.clone(), Some(&smoothed), alpha);
            let n = smoothed.nrows();
            for i in 0..n {
                for j in 0..n {
                    prop_assert!(smoothed[[i, j]].abs() <= 1.0 + SIM_TOL);
                    prop_assert!((smoothed[[i, j]] - smoothed[[j, i]]).abs() <= 2e-6);
                }
            }
        }
    }

    /// For generic tokens (nonzero, pairwise non-parallel), `k_medoids` returns K distinct
    /// medoids, each a member of its own cluster, labels in `0..K`, and each token assigned
    /// to a medoid it is most similar to. The premise matters: see
    /// `medoid_of_an_empty_cluster_need_not_be_its_member` for duplicate tokens.
    #[test]
    fn medoids_are_members_of_their_clusters(x in generic_tokens(40), k_frac in 0.0f64..=1.0, iters in 0usize..=8) {
        let n = x.nrows();
        let k = 1 + ((n - 1) as f64 * k_frac) as usize;
        let s = cosine_similarity_matrix(x.view());
        let clustering = k_medoids(s.view(), k, iters);
        prop_assert_eq!(clustering.medoids.len(), k);
        let mut sorted = clustering.medoids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), k, "medoids are distinct");
        for (cluster, &m) in clustering.medoids.iter().enumerate() {
            prop_assert_eq!(clustering.labels[m], cluster, "medoid {} of cluster {}", m, cluster);
        }
        for (i, &label) in clustering.labels.iter().enumerate() {
            prop_assert!(label < k);
            let best = clustering.medoids.iter().map(|&m| s[[i, m]]).fold(f32::NEG_INFINITY, f32::max);
            prop_assert_eq!(s[[i, clustering.medoids[label]]], best);
        }
    }

    /// The K-medoids objective `sum_i S[i, medoid(label_i)]` (higher is better), with the
    /// labels re-assigned to the current medoids, never decreases across iterations of
    /// `assign` + `update_medoids`, driven step by step here from `initial_medoids` (and the
    /// loop reproduces `k_medoids`'s result exactly). Why: assignment maximises each token's
    /// term for fixed medoids; the update picks, within each cluster, the member with the
    /// largest similarity sum to the cluster, which by symmetry of `S` is the cluster's term of
    /// the objective, and the old medoid is a candidate (a member, generic premise). Tolerance
    /// 1e-3: `update_medoids` compares `f32` sums of up to 40 terms (error ~`40 * 2^-24` each),
    /// `objective` sums in `f64`, and S is symmetric only to 1e-6. Run on the current
    /// similarity and on its EMA with a second one.
    #[test]
    fn k_medoids_objective_never_decreases(
        x in generic_tokens(40),
        y_seed in any::<u64>(),
        k_frac in 0.0f64..=1.0,
        alpha in 0.0f32..=1.0,
    ) {
        let n = x.nrows();
        let k = 1 + ((n - 1) as f64 * k_frac) as usize;
        let current = cosine_similarity_matrix(x.view());
        let mut rng = ChaCha8Rng::seed_from_u64(y_seed);
        let y = Array2::from_shape_fn(x.dim(), |_| rand::Rng::random_range(&mut rng, -10.0f32..=10.0));
        let smoothed = temporal_smoothing(current.clone(), Some(&cosine_similarity_matrix(y.view())), alpha);
        for s in [current, smoothed] {
            let mut medoids = initial_medoids(n, k);
            let mut value = objective(s.view(), &Clustering { labels: assign(s.view(), &medoids), medoids: medoids.clone() });
            for _ in 0..8 {
                let labels = assign(s.view(), &medoids);
                let next = update_medoids(s.view(), &labels, &medoids);
                let next_value = objective(s.view(), &Clustering { labels: assign(s.view(), &next), medoids: next.clone() });
                prop_assert!(next_value >= value - 1e-3, "objective fell from {value} to {next_value}");
                if next == medoids {
                    break;
                }
                (medoids, value) = (next, next_value);
            }
            let reference = k_medoids(s.view(), k, 8);
            prop_assert_eq!(&reference.medoids, &medoids);
            prop_assert_eq!(reference.labels, assign(s.view(), &medoids));
        }
    }

    /// `confidence = max(0, cos)` lies in `[0, 1]` for any vectors, zero and tiny ones
    /// included (the cosine floors each norm at 1e-6), UP TO ROUNDING: for parallel vectors the
    /// `f32` sum of `D` products of normalised components can exceed 1 (observed: `1.0000001`,
    /// one ulp, found by asserting `<= 1` exactly), which makes the own-residual weight
    /// `1 - theta` about `-1.2e-7`. Asserted: `theta in [0, 1 + 1e-6]` (`D <= 16` roundings).
    #[test]
    fn confidence_is_in_the_unit_interval(
        a in prop::collection::vec(-10.0f32..=10.0, 1..=16),
        b in prop::collection::vec(-10.0f32..=10.0, 16),
        scale in prop_oneof![Just(0.0f32), 1e-9f32..=1e-5, 0.1f32..=100.0],
        parallel in any::<bool>(),
    ) {
        let a = ndarray::Array1::from(a);
        let b = if parallel { &a * scale } else { ndarray::Array1::from(b[..a.len()].to_vec()) * scale };
        let theta = confidence(a.view(), b.view());
        prop_assert!((0.0..=1.0 + 1e-6).contains(&theta), "theta = {theta}");
    }

    /// `simulate` gives every proxy exactly its fresh output, for every solver and orientation,
    /// on clusters and medoid or center-random proxies from TETC itself; every proxy is a
    /// member of its cluster (generic tokens), and every simulated output is finite.
    #[test]
    fn simulate_leaves_proxies_with_their_fresh_outputs(
        x in generic_tokens(40),
        k_frac in 0.0f64..=1.0,
        seed in any::<u64>(),
        solver in prop::sample::select(SOLVERS.to_vec()),
        sign in prop::sample::select(vec![-1.0f32, 1.0]),
        choice in prop::sample::select(vec![ProxyChoice::Medoid, ProxyChoice::CenterRandom]),
    ) {
        let n = x.nrows();
        let k = 1 + ((n - 1) as f64 * k_frac) as usize;
        let s = cosine_similarity_matrix(x.view());
        let clustering = k_medoids(s.view(), k, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let proxies = choose_proxies(s.view(), &clustering, choice, &mut rng);
        for (cluster, &p) in proxies.iter().enumerate() {
            prop_assert_eq!(clustering.labels[p], cluster);
        }
        let d = x.ncols();
        let mut random = |rows: usize| Array2::from_shape_fn((rows, d), |_| rand::Rng::random_range(&mut rng, -1.0f32..=1.0));
        let cache: Vec<Array2<f32>> = (0..=solver.order()).map(|_| random(n)).collect();
        let fresh = random(k);
        let views: Vec<ArrayView2<f32>> = cache.iter().map(|c| c.view()).collect();
        let out = simulate(&views, &proxies, &clustering.labels, fresh.view(), solver, sign);
        for (cluster, &p) in proxies.iter().enumerate() {
            prop_assert_eq!(out.row(p), fresh.row(cluster));
        }
        prop_assert!(out.iter().all(|v| v.is_finite()));
    }
}

/// A tiny nonzero row (norm below the floor 1e-6) is scaled by `1/1e-6`, not normalised: its
/// diagonal entry is `(|x| / 1e-6)^2 < 1` (here `0.25`, and `S_01 = 0.3` instead of the cosine 0.6; tolerance 1e-6).
#[test]
fn tiny_rows_are_not_normalised_to_unit_length() {
    let x = array![[3e-7f32, 4e-7], [1.0, 0.0]]; // row 0 has norm 5e-7
    let s = cosine_similarity_matrix(x.view());
    assert!((s[[0, 0]] - 0.25).abs() < 1e-6, "{}", s[[0, 0]]);
    assert!((s[[1, 1]] - 1.0).abs() < 1e-6);
    assert!((s[[0, 1]] - 0.3).abs() < 1e-6, "{}", s[[0, 1]]);
}

/// COUNTEREXAMPLE to "medoids are members of their clusters" without the generic premise: three
/// identical tokens, K = 2. The initial medoids are tokens 0 and 2; every token's similarity to
/// both is exactly equal, so `assign`'s first-index tie rule puts all three in cluster 0; cluster 1
/// is empty and keeps its medoid 2 (as docs/algorithms.md section 5.1 prescribes); cluster 0's
/// medoid stays 0, nothing changes, and the final labels put medoid 2 in cluster 0. With `center`
/// proxies token 2 is then the proxy of an empty cluster while itself driven by cluster 0's proxy;
/// `simulate` still gives it a fresh output (the proxy loop runs last).
#[test]
fn medoid_of_an_empty_cluster_need_not_be_its_member() {
    let x = array![[1.0f32, 2.0], [1.0, 2.0], [1.0, 2.0]];
    let s = cosine_similarity_matrix(x.view());
    let clustering = k_medoids(s.view(), 2, 8);
    assert_eq!(clustering.medoids, vec![0, 2]);
    assert_eq!(clustering.labels, vec![0, 0, 0]);
    assert_ne!(clustering.labels[clustering.medoids[1]], 1);
}
