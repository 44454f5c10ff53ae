//! ClusCa (docs/algorithms.md section 6), the clustering baseline: K-means with L1 distance on the
//! final block's tokens at full steps; on sparse steps one random member per cluster goes through
//! the MLP and its output is propagated into the order-0 cache of its cluster.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rand::Rng;

/// K-means stops after this many iterations at most.
pub const MAX_ITERS: usize = 100;
/// ... or when the centroids are `allclose` with this relative tolerance (atol 1e-8).
pub const RTOL: f32 = 1e-4;

/// Result of [`kmeans_l1`]: labels per token and the centroids to warm-start the next run.
#[derive(Clone, Debug)]
pub struct KMeans {
    pub labels: Vec<usize>,
    pub centroids: Array2<f32>,
}

/// `k` random tokens (with replacement) as initial centroids.
pub fn random_centroids(x: ArrayView2<f32>, k: usize, rng: &mut impl Rng) -> Array2<f32> {
    let picks: Vec<usize> = (0..k).map(|_| rng.random_range(0..x.nrows())).collect();
    x.select(ndarray::Axis(0), &picks)
}

fn l1(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f32 {
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).sum()
}

/// K-means with L1 distance from `centroids`: assign by smallest L1 distance (first on ties),
/// centroid = sum / (count + 1e-8); stop when the centroids no longer move (`allclose`).
pub fn kmeans_l1(x: ArrayView2<f32>, mut centroids: Array2<f32>) -> KMeans {
    let k = centroids.nrows();
    let mut labels = vec![0; x.nrows()];
    for _ in 0..MAX_ITERS {
        for (token, row) in x.rows().into_iter().enumerate() {
            let mut best = (0, f32::INFINITY);
            for (c, centroid) in centroids.rows().into_iter().enumerate() {
                let d = l1(row, centroid);
                if d < best.1 {
                    best = (c, d);
                }
            }
            labels[token] = best.0;
        }
        let mut sums = Array2::<f32>::zeros(centroids.raw_dim());
        let mut counts = vec![0f32; k];
        for (token, row) in x.rows().into_iter().enumerate() {
            sums.row_mut(labels[token]).zip_mut_with(&row, |s, &v| *s += v);
            counts[labels[token]] += 1.0;
        }
        for (mut row, count) in sums.rows_mut().into_iter().zip(&counts) {
            row.mapv_inplace(|v| v / (count + 1e-8));
        }
        let converged = centroids
            .iter()
            .zip(sums.iter())
            .all(|(a, b)| (a - b).abs() <= 1e-8 + RTOL * b.abs());
        if converged {
            break;
        }
        centroids = sums;
    }
    KMeans { labels, centroids }
}

/// One random member of each non-empty cluster: `(cluster, token)` pairs.
pub fn random_members(labels: &[usize], clusters: usize, rng: &mut impl Rng) -> Vec<(usize, usize)> {
    super::tetc::members(labels, clusters)
        .into_iter()
        .enumerate()
        .filter(|(_, members)| !members.is_empty())
        .map(|(cluster, members)| (cluster, members[rng.random_range(0..members.len())]))
        .collect()
}

/// Writes the fresh outputs into the order-0 cache and propagates them to their clusters:
/// `cache0[i] = g fresh[c(i)] + (1 - g) cache0[i]` for every token of a cluster with a fresh token.
pub fn propagate(
    mut cache0: ArrayViewMut2<f32>,
    labels: &[usize],
    clusters: usize,
    fresh: &[(usize, usize)],
    outputs: ArrayView2<f32>,
    g: f32,
) {
    let mut fresh_of_cluster = vec![None; clusters];
    for (i, &(cluster, token)) in fresh.iter().enumerate() {
        cache0.row_mut(token).assign(&outputs.row(i));
        fresh_of_cluster[cluster] = Some(i);
    }
    for (token, &cluster) in labels.iter().enumerate() {
        if let Some(i) = fresh_of_cluster[cluster] {
            cache0
                .row_mut(token)
                .zip_mut_with(&outputs.row(i), |c, &f| *c = f * g + *c * (1.0 - g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;

    #[test]
    fn kmeans_separates_two_groups_and_warm_start_is_stable() {
        let x = array![[0.0f32, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 4.9]];
        let result = kmeans_l1(x.view(), array![[0.0f32, 0.1], [5.0, 5.0]]);
        assert_eq!(result.labels, vec![0, 0, 1, 1]);
        let again = kmeans_l1(x.view(), result.centroids.clone());
        assert_eq!(again.labels, result.labels);
    }

    #[test]
    fn propagation_moves_members_towards_their_fresh_token() {
        let mut cache = array![[0.0f32], [10.0], [20.0]];
        let outputs = array![[1.0f32]];
        propagate(cache.view_mut(), &[0, 0, 1], 2, &[(0, 0)], outputs.view(), 0.5);
        // Token 0 is the fresh one (exact), token 1 moves halfway, token 2's cluster has none.
        assert_eq!(cache, array![[1.0f32], [5.5], [20.0]]);
    }

    #[test]
    fn random_members_belong_to_their_cluster() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let labels = [2, 0, 2, 0, 2];
        for (cluster, token) in random_members(&labels, 3, &mut rng) {
            assert_eq!(labels[token], cluster);
        }
    }
}
