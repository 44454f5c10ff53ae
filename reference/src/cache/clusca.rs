//! ClusCa (docs/algorithms.md section 6), the clustering baseline: K-means with L1 distance on the
//! final block's tokens at full steps; on sparse steps one random member per cluster goes through
//! the MLP and its output is propagated into the order-0 cache of its cluster.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2};
use rand::Rng;

use crate::error::{Error, Result};
use crate::safetensors_file::SafetensorsFile;

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
/// `cache0[i] = g fresh[c(i)] + (1 - g) cache0[i]` for every token of a cluster with a fresh token,
/// `fresh` holding `(cluster, token)` pairs. Where a cluster has several fresh tokens, `fresh[c]`
/// is the SUM of their outputs, as the official code computes it for one fresh token per cluster
/// (it sums without dividing). A drawn run never has two; a replayed official run does: for an
/// empty cluster the official code computes token 0 (its argmax over no member) and adds its
/// output to token 0's cluster.
pub fn propagate(
    mut cache0: ArrayViewMut2<f32>,
    labels: &[usize],
    clusters: usize,
    fresh: &[(usize, usize)],
    outputs: ArrayView2<f32>,
    g: f32,
) {
    let mut target: Vec<Option<Array1<f32>>> = vec![None; clusters];
    for (i, &(cluster, token)) in fresh.iter().enumerate() {
        cache0.row_mut(token).assign(&outputs.row(i));
        match &mut target[cluster] {
            Some(sum) => *sum += &outputs.row(i),
            None => target[cluster] = Some(outputs.row(i).to_owned()),
        }
    }
    for (token, &cluster) in labels.iter().enumerate() {
        if let Some(fresh) = &target[cluster] {
            cache0
                .row_mut(token)
                .zip_mut_with(fresh, |c, &f| *c = f * g + *c * (1.0 - g));
        }
    }
}

/// The random choices of a recorded ClusCa run, fed to a [`super::CachingHook`] instead of
/// drawing them (exact replay of the official code's runs; never used by a normal run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedChoices {
    /// Per batch row: the K tokens whose features initialise the first K-means.
    pub init_tokens: Vec<Vec<usize>>,
    /// The fresh tokens of each sparse step and block.
    pub fresh: Vec<FreshTokens>,
}

/// The tokens recomputed at one sparse step in one block: `tokens[row][c]` is the member of
/// cluster c sent through the MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct FreshTokens {
    pub step_index: i64,
    pub block: usize,
    pub tokens: Vec<Vec<usize>>,
}

impl RecordedChoices {
    /// The recorded fresh tokens of `row` at `step_index` in `block` as `(cluster, token)` pairs,
    /// each token's cluster read from `labels` (the official code does the same: the token it
    /// computes for an empty cluster belongs to another one).
    pub fn fresh_members(
        &self,
        step_index: i64,
        block: usize,
        row: usize,
        labels: &[usize],
    ) -> Option<Vec<(usize, usize)>> {
        self.fresh
            .iter()
            .find(|f| f.step_index == step_index && f.block == block)
            .map(|f| f.tokens[row].iter().map(|&token| (labels[token], token)).collect())
    }
}

/// Reads the recorded choices of a ClusCa run from `file`, as the reference vectors hold them:
/// `clus.init_indices` (1, rows, K), `clus.fresh_step` and `clus.fresh_layer` (F) and
/// `clus.fresh_indices` (F, rows, K), checked against the run's rows, tokens, clusters and depth.
pub fn read_choices(
    file: &SafetensorsFile,
    rows: usize,
    tokens: usize,
    clusters: usize,
    depth: usize,
) -> Result<RecordedChoices> {
    let path = file.path().display();
    file.check_shape("clus.init_indices", &[1, rows, clusters])?;
    let steps = file.read_i64("clus.fresh_step")?;
    let count = steps.len();
    file.check_shape("clus.fresh_layer", &[count])?;
    file.check_shape("clus.fresh_indices", &[count, rows, clusters])?;
    let as_tokens = |name: &str| -> Result<Vec<usize>> {
        let values = file.read_i64(name)?;
        if let Some(bad) = values.iter().find(|&&t| t < 0 || t as usize >= tokens) {
            return Err(Error::Input(format!(
                "{path}: `{name}` holds token {bad}, outside 0..{tokens}"
            )));
        }
        Ok(values.iter().map(|&t| t as usize).collect())
    };
    let init = as_tokens("clus.init_indices")?;
    let fresh = as_tokens("clus.fresh_indices")?;
    let layers = file.read_i64("clus.fresh_layer")?;
    if let Some(bad) = layers.iter().find(|&&l| l < 0 || l as usize >= depth) {
        return Err(Error::Input(format!(
            "{path}: `clus.fresh_layer` holds block {bad}, outside 0..{depth}"
        )));
    }
    let per_row = |values: &[usize]| -> Vec<Vec<usize>> { values.chunks(clusters).map(<[usize]>::to_vec).collect() };
    Ok(RecordedChoices {
        init_tokens: per_row(&init),
        fresh: steps
            .iter()
            .zip(layers.iter())
            .enumerate()
            .map(|(f, (&step_index, &block))| FreshTokens {
                step_index,
                block: block as usize,
                tokens: per_row(&fresh[f * rows * clusters..][..rows * clusters]),
            })
            .collect(),
    })
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
    fn two_fresh_tokens_of_one_cluster_propagate_their_sum() {
        // The official rule for a replayed empty cluster: token 2 (cluster 0) was computed for an
        // empty cluster 1, so cluster 0 is pulled towards 1 + 3 = 4.
        let mut cache = array![[0.0f32], [10.0], [20.0]];
        let outputs = array![[1.0f32], [3.0]];
        propagate(cache.view_mut(), &[0, 0, 0], 2, &[(0, 0), (0, 2)], outputs.view(), 0.5);
        assert_eq!(cache, array![[2.5f32], [7.0], [3.5]]);
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
