//! The clustering pieces of the caching engine against hand-computed values: ClusCa's K-means
//! (exact means, the documented tie rule), TETC's K-medoids objective and its fallback for
//! clusters without a finite similarity sum, the initial medoids at float32 ties, the
//! distribution of the center-random proxy, and ResCa's hook clustering a full step by TETC.

use ndarray::{Array2, Array3, array};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resca_reference::cache::clusca::kmeans_l1;
use resca_reference::cache::tetc::{
    Clustering, ProxyChoice, choose_proxies, initial_medoids, k_medoids, objective, temporal_smoothing, update_medoids,
};
use resca_reference::cache::{CachingHook, MethodConfig, MethodKind};
use resca_reference::sampler::Orientation;
use resca_reference::{BranchHook, DitConfig, StepHook, StepInfo};

#[test]
fn kmeans_centroids_are_the_exact_means_of_their_members() {
    // Clusters {0, 1, 5} and {10, 12}: means 2 and 11 (a centroid of `sum % count` would be 0, 0).
    let x = array![[0.0f32, 3.0], [1.0, 4.0], [5.0, 8.0], [10.0, -1.0], [12.0, 0.0]];
    let result = kmeans_l1(x.view(), array![[0.0f32, 3.0], [10.0, -1.0]]);
    assert_eq!(result.labels, vec![0, 0, 0, 1, 1]);
    let means = array![[2.0f32, 5.0], [11.0, -0.5]];
    for (got, want) in result.centroids.iter().zip(means.iter()) {
        // Measured 0 (count + 1e-8 rounds to count in f32).
        assert!((got - want).abs() < 1e-5, "centroid {got}, mean {want}");
    }
}

#[test]
fn kmeans_ties_go_to_the_first_centroid() {
    // Token 0 is at L1 distance 1 from both initial centroids; it joins centroid 0, which moves
    // to -0.5 and keeps it. Were ties to go to the last centroid, it would join centroid 1, which
    // would move to 0.5 and keep it instead.
    let x = array![[-1.0f32], [1.0], [0.0]];
    let result = kmeans_l1(x.view(), array![[-1.0f32], [1.0]]);
    assert_eq!(result.labels, vec![0, 1, 0]);
    assert_eq!(result.centroids, array![[-0.5f32], [1.0]]);
}

/// Two pairs of similar tokens: {0, 1} (0.8) and {2, 3} (0.9).
fn two_pairs() -> Array2<f32> {
    array![
        [1.0f32, 0.8, 0.1, 0.2],
        [0.8, 1.0, 0.3, 0.0],
        [0.1, 0.3, 1.0, 0.9],
        [0.2, 0.0, 0.9, 1.0]
    ]
}

#[test]
fn kmedoids_objective_is_the_similarity_of_each_token_to_its_medoid() {
    let s = two_pairs();
    let clustering = Clustering {
        labels: vec![0, 0, 1, 1],
        medoids: vec![0, 3],
    };
    // S[0,0] + S[1,0] + S[2,3] + S[3,3] = 1 + 0.8 + 0.9 + 1.
    assert!((objective(s.view(), &clustering) - 3.7).abs() < 1e-6);
    let worse = Clustering {
        labels: vec![0, 1, 1, 1],
        medoids: vec![0, 3],
    };
    // S[0,0] + S[1,3] + S[2,3] + S[3,3] = 1 + 0 + 0.9 + 1.
    assert!((objective(s.view(), &worse) - 2.9).abs() < 1e-6);
}

#[test]
fn kmedoids_finds_the_pairs_with_first_member_medoids_on_ties() {
    // From the medoids round(linspace(0, 3, 2)) = {0, 3}, both pairs have tied sums (1.8, 1.8 and
    // 1.9, 1.9): the first member wins, so the medoids become {0, 2}.
    let s = two_pairs();
    let clustering = k_medoids(s.view(), 2, 8);
    assert_eq!(clustering.labels, vec![0, 0, 1, 1]);
    assert_eq!(clustering.medoids, vec![0, 2]);
    // S[0,0] + S[1,0] + S[2,2] + S[3,2] = 1 + 0.8 + 1 + 0.9.
    assert!((objective(s.view(), &clustering) - 3.7).abs() < 1e-6);
}

#[test]
fn kmedoids_falls_back_to_the_first_member_when_no_sum_is_finite_and_above_minus_infinity() {
    // Cluster 0 = {1, 2, 3}: every sum NaN, then every sum -inf; cluster 1 = {0} stays itself.
    // No sum beats -inf, so the first member, token 1, is the medoid.
    for poison in [f32::NAN, f32::NEG_INFINITY] {
        let mut s = Array2::<f32>::from_elem((4, 4), 0.5);
        for i in 1..4 {
            for j in 1..4 {
                s[[i, j]] = poison;
            }
        }
        let medoids = update_medoids(s.view(), &[1, 0, 0, 0], &[3, 0]);
        assert_eq!(medoids, vec![1, 0], "sums all {poison}");
    }
}

#[test]
fn center_random_proxies_follow_their_distribution() {
    // One cluster of five tokens, medoid 0; draw weights max(S[0, j], 0) + 1e-6:
    // 1, 0.5, ~0 (S = 0), ~0 (S = -0.3), 0.25 (total 1.75).
    let mut s = Array2::<f32>::eye(5);
    for (j, v) in [1.0f32, 0.5, 0.0, -0.3, 0.25].into_iter().enumerate() {
        s[[0, j]] = v;
        s[[j, 0]] = v;
    }
    let clustering = Clustering {
        labels: vec![0; 5],
        medoids: vec![0],
    };
    const DRAWS: usize = 20_000;
    let mut counts = [0usize; 5];
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..DRAWS {
        let proxies = choose_proxies(s.view(), &clustering, ProxyChoice::CenterRandom, &mut rng);
        counts[proxies[0]] += 1;
    }
    // Tokens with weight 1e-6 are expected 0.01 times each in 20000 draws.
    assert!(counts[2] + counts[3] <= 1, "zero-similarity tokens drawn {counts:?}");
    // Chi-square over the three likely tokens (2 degrees of freedom; 99.9% quantile 13.8).
    let probabilities = [1.0 / 1.75, 0.5 / 1.75, 0.25 / 1.75];
    let chi_square: f64 = [0, 1, 4]
        .iter()
        .zip(probabilities)
        .map(|(&token, p)| {
            let expected = p * DRAWS as f64;
            (counts[token] as f64 - expected).powi(2) / expected
        })
        .sum();
    // Measured chi-square 0.79 (counts 11382, 5771, 0, 0, 2847 against 11429, 5714, 2857).
    eprintln!("counts {counts:?}, chi-square {chi_square:.2}");
    assert!(chi_square < 13.8, "counts {counts:?}: chi-square {chi_square}");
}

#[test]
fn medoid_proxies_are_the_medoids() {
    let s = two_pairs();
    let clustering = k_medoids(s.view(), 2, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(
        choose_proxies(s.view(), &clustering, ProxyChoice::Medoid, &mut rng),
        clustering.medoids
    );
}

/// The smoothing blends with a previous similarity of the same size, and starts afresh from one
/// of another size (the token count changed), as it does without a previous one.
#[test]
fn smoothing_blends_a_previous_of_the_same_size_and_drops_one_of_another() {
    let current = array![[1.0f32, 0.5], [0.5, 1.0]];
    let same = Array2::from_elem((2, 2), 0.25f32);
    // 0.5 * current + 0.5 * 0.25, exact in f32.
    let blended = temporal_smoothing(current.clone(), Some(&same), 0.5);
    assert_eq!(blended, array![[0.625f32, 0.375], [0.375, 0.625]]);
    let other = Array2::from_elem((3, 3), 0.25f32);
    assert_eq!(temporal_smoothing(current.clone(), Some(&other), 0.5), current);
    assert_eq!(temporal_smoothing(current.clone(), None, 0.5), current);
}

#[test]
fn kmeans_keeps_warm_start_centroids_within_the_relative_tolerance_of_the_means() {
    // One cluster of 99 and 101 (mean 100). The stop rule is numpy's `allclose`:
    // |old - new| <= 1e-8 + 1e-4 |new|, here 0.01. A start at 100.005 is that close, so K-means
    // stops at once and returns it as given; a start at 100.02 is not, so it moves to the mean.
    let x = array![[99.0f32], [101.0]];
    let kept = kmeans_l1(x.view(), array![[100.005f32]]);
    assert_eq!(kept.labels, vec![0, 0]);
    assert_eq!(kept.centroids, array![[100.005f32]]);
    let moved = kmeans_l1(x.view(), array![[100.02f32]]);
    // 200 / (2 + 1e-8) is 100 exactly in f32 (2 + 1e-8 rounds to 2).
    assert_eq!(moved.centroids, array![[100.0f32]]);
}

#[test]
fn initial_medoids_follow_torch_linspace_at_float32_ties() {
    // round(linspace(0, 63, 31)) = round(2.1 i). The exact values 2.1 i are ties (x.5) at
    // i = 5, 15 and 25, where float32 decides; elsewhere their fractional part is at least 0.1
    // from a tie, far above the float32 error (~1e-5), so they round to (21 i + 5) div 10.
    // torch (CPU) counts the first half i < 31 / 2 = 15 from the start, `step * i`, and the
    // rest from the end, `63 - step * (30 - i)`, with step = fl(63 / 30) = 2.0999999 < 2.1:
    // * i = 5 from the start: fl(5 * 2.0999999) = 10.5 exactly (10.4999995 rounds to the even
    //   neighbour), which rounds half to even to 10 (from the end it would be 63 - 52.499996 =
    //   10.500004 -> 11);
    // * i = 15 = 31 / 2, from the end: 63 - fl(15 * 2.0999999) = 63 - 31.499998 = 31.500002 -> 32
    //   (from the start it would be 31.499998 -> 31);
    // * i = 25 from the end: 63 - fl(5 * 2.0999999) = 63 - 10.5 = 52.5 -> 52 (half to even).
    let mut expected: Vec<usize> = (0..31).map(|i| (21 * i + 5) / 10).collect();
    expected[5] = 10;
    expected[15] = 32;
    expected[25] = 52;
    assert_eq!(initial_medoids(64, 31), expected);
}

#[test]
fn center_random_proxies_are_uniform_where_the_medoid_is_similar_to_no_member() {
    // Medoid 0 has similarity 0 or below with every member (a zero token's row of the cosine
    // matrix is 0): every weight is the floor 1e-6, so the draw is uniform over the 4 members.
    let mut s = Array2::<f32>::eye(4);
    for (j, v) in [0.0f32, -0.5, -0.2, -1.0].into_iter().enumerate() {
        s[[0, j]] = v;
        s[[j, 0]] = v;
    }
    let clustering = Clustering {
        labels: vec![0; 4],
        medoids: vec![0],
    };
    const DRAWS: usize = 8000;
    let mut counts = [0usize; 4];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..DRAWS {
        counts[choose_proxies(s.view(), &clustering, ProxyChoice::CenterRandom, &mut rng)[0]] += 1;
    }
    // Chi-square against 2000 each, 3 degrees of freedom: 99.9% quantile 16.27. Measured 6.40
    // (counts 2079, 1961, 2026, 1934).
    let expected = DRAWS as f64 / 4.0;
    let chi_square: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    eprintln!("counts {counts:?}, chi-square {chi_square:.2}");
    assert!(chi_square < 16.27, "counts {counts:?}: chi-square {chi_square}");
}

/// A generator whose every output is `0x8000_0000_0000_0000`: `random::<f64>()` (the top 53 bits
/// times 2^-53) is then exactly 0.5.
struct Half;

impl RngCore for Half {
    fn next_u32(&mut self) -> u32 {
        1 << 31
    }
    fn next_u64(&mut self) -> u64 {
        1 << 63
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}

#[test]
fn a_center_random_draw_on_the_boundary_of_two_members_takes_the_later() {
    // Members 0 and 1 of equal weight w = 1 + 1e-6: member j owns [j w, (j + 1) w) of the total
    // 2 w. The draw 0.5 * 2 w = w lies exactly on the boundary, so it belongs to member 1.
    assert_eq!(Half.random::<f64>(), 0.5);
    let s = Array2::<f32>::ones((2, 2));
    let clustering = Clustering {
        labels: vec![0, 0],
        medoids: vec![0],
    };
    assert_eq!(
        choose_proxies(s.view(), &clustering, ProxyChoice::CenterRandom, &mut Half),
        vec![1]
    );
}

/// The tiny preset's 16 tokens of two rows, in two clusters each: row 0 alternates the directions
/// (1, 0) and (0, 1), row 1 holds (1, 0) in tokens 0..6 and (0, 1) in 6..16.
fn two_direction_tokens() -> Array3<f32> {
    Array3::from_shape_fn((2, 16, 2), |(row, token, d)| {
        let first_direction = match row {
            0 => token % 2 == 0,
            _ => token < 6,
        };
        (first_direction == (d == 0)) as u8 as f32
    })
}

#[test]
fn resca_clusters_the_last_blocks_tokens_by_tetc_at_a_full_step() {
    // Cosine similarity 1 within a direction and 0 across. K-medoids from {0, 15}: each token
    // joins the medoid of its direction; every sum within a cluster ties, so the first member
    // becomes the medoid (and the proxy): {0, 1} for row 0, {0, 6} for row 1.
    let config = DitConfig::preset("tiny").unwrap();
    let method = MethodConfig {
        clusters: 2,
        ..MethodConfig::new(MethodKind::ResCa, 3, 1)
    };
    let mut hook = CachingHook::new(method, &config, 2, Orientation::CountingDown).unwrap();
    hook.begin_step(&StepInfo {
        position: 0,
        steps: 10,
        index: 9,
        orientation: Orientation::CountingDown,
        timestep: 999.0,
    })
    .unwrap();
    let x = two_direction_tokens();
    // Only the last block's output is clustered.
    hook.after_block(0, (&x * 3.0).view());
    assert!(hook.clustering_history().is_empty());
    hook.after_block(config.depth - 1, x.view());

    let history = hook.clustering_history();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].step_index, 9);
    let rows = &history[0].rows;
    let alternating: Vec<usize> = (0..16).map(|t| t % 2).collect();
    assert_eq!(rows[0].labels, alternating);
    assert_eq!(rows[0].proxies, vec![0, 1]);
    let split: Vec<usize> = (0..16).map(|t| (t >= 6) as usize).collect();
    assert_eq!(rows[1].labels, split);
    assert_eq!(rows[1].proxies, vec![0, 6]);
    // The similarity clustered on (no history yet: the current one), 0 and 1 exactly.
    let same_direction =
        |labels: &[usize]| Array2::from_shape_fn((16, 16), |(i, j)| (labels[i] == labels[j]) as u8 as f32);
    assert_eq!(
        history[0].similarity,
        vec![same_direction(&alternating), same_direction(&split)]
    );

    let timings = hook.timings();
    assert!(timings.clustering_s > 0.0, "{timings:?}");
    assert_eq!(timings.simulated_s, 0.0);
}
