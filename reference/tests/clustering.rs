//! The clustering pieces of the caching engine against hand-computed values: ClusCa's K-means
//! (exact means, the documented tie rule), TETC's K-medoids objective and its fallback for
//! clusters without a finite similarity sum, and the distribution of the center-random proxy.

use ndarray::{Array2, array};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use resca_reference::cache::clusca::kmeans_l1;
use resca_reference::cache::tetc::{
    Clustering, ProxyChoice, choose_proxies, k_medoids, objective, temporal_smoothing, update_medoids,
};

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
