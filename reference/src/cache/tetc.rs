//! TETC, temporal-enhanced trajectory clustering (docs/algorithms.md section 5.1), per batch row:
//! cosine similarity of the final block's tokens, an EMA of it over full steps, K-medoids on the
//! smoothed similarity, and one proxy token per cluster.

use ndarray::{Array2, ArrayView2};
use rand::Rng;

/// Rows are L2-normalised with this floor on the norm (`F.normalize(eps=1e-6)`).
pub const NORM_EPS: f32 = 1e-6;

/// `S = norm(X) norm(X)^T` (N, N) for token rows X (N, D): the cosine similarity matrix.
pub fn cosine_similarity_matrix(x: ArrayView2<f32>) -> Array2<f32> {
    let mut normed = x.to_owned();
    for mut row in normed.rows_mut() {
        let norm = row.dot(&row).sqrt().max(NORM_EPS);
        row.mapv_inplace(|v| v / norm);
    }
    normed.dot(&normed.t())
}

/// `S~ = alpha S + (1 - alpha) S~_prev`, or `S` when there is no history.
pub fn temporal_smoothing(current: Array2<f32>, previous: Option<&Array2<f32>>, alpha: f32) -> Array2<f32> {
    match previous {
        Some(prev) if prev.dim() == current.dim() => {
            let mut out = current * alpha;
            out.scaled_add(1.0 - alpha, prev);
            out
        }
        _ => current,
    }
}

/// The initial medoids `round(linspace(0, N-1, K))`, computed like torch's float32 `linspace`
/// (first half counted from the start, second half from the end) and rounded half to even.
pub fn initial_medoids(n: usize, k: usize) -> Vec<usize> {
    if k == 1 {
        return vec![0];
    }
    let (start, end) = (0.0f32, (n - 1) as f32);
    let step = (end - start) / (k - 1) as f32;
    (0..k)
        .map(|i| {
            let value = if i < k / 2 {
                start + step * i as f32
            } else {
                end - step * (k - i - 1) as f32
            };
            value.round_ties_even() as usize
        })
        .collect()
}

/// A clustering of N tokens: `labels[i]` is the cluster of token i, `medoids[c]` the medoid of
/// cluster c.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clustering {
    pub labels: Vec<usize>,
    pub medoids: Vec<usize>,
}

/// First index of the maximum (torch's `argmax` tie rule).
fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// `label_i = argmax_k S[i, medoid_k]` (first index on ties).
pub fn assign(similarity: ArrayView2<f32>, medoids: &[usize]) -> Vec<usize> {
    similarity
        .rows()
        .into_iter()
        .map(|row| argmax(medoids.iter().map(|&m| row[m])))
        .collect()
}

/// For each non-empty cluster, the member with the largest sum of similarity to the cluster's
/// members (first on ties); an empty cluster keeps its medoid.
pub fn update_medoids(similarity: ArrayView2<f32>, labels: &[usize], medoids: &[usize]) -> Vec<usize> {
    (0..medoids.len())
        .map(|cluster| {
            let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == cluster).collect();
            if members.is_empty() {
                return medoids[cluster];
            }
            let sums = members
                .iter()
                .map(|&i| members.iter().map(|&j| similarity[[i, j]]).sum::<f32>());
            members[argmax(sums)]
        })
        .collect()
}

/// The K-medoids objective: total similarity of each token to its cluster's medoid (higher is
/// better).
pub fn objective(similarity: ArrayView2<f32>, clustering: &Clustering) -> f64 {
    clustering
        .labels
        .iter()
        .enumerate()
        .map(|(i, &c)| similarity[[i, clustering.medoids[c]]] as f64)
        .sum()
}

/// K-medoids on a similarity matrix: start from [`initial_medoids`], alternate [`assign`] and
/// [`update_medoids`] at most `max_iters` times, stop when no medoid changes; the final labels
/// come from the final medoids.
pub fn k_medoids(similarity: ArrayView2<f32>, k: usize, max_iters: usize) -> Clustering {
    let n = similarity.nrows();
    let mut medoids = initial_medoids(n, k.min(n));
    for _ in 0..max_iters {
        let labels = assign(similarity, &medoids);
        let next = update_medoids(similarity, &labels, &medoids);
        if next == medoids {
            break;
        }
        medoids = next;
    }
    Clustering {
        labels: assign(similarity, &medoids),
        medoids,
    }
}

/// How the proxy of each cluster is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyChoice {
    /// The medoid itself (the released code's `center`).
    Medoid,
    /// A member drawn with probability proportional to `max(S~[medoid, j], 0) + 1e-6`.
    CenterRandom,
}

/// One proxy token per cluster.
pub fn choose_proxies(
    similarity: ArrayView2<f32>,
    clustering: &Clustering,
    choice: ProxyChoice,
    rng: &mut impl Rng,
) -> Vec<usize> {
    match choice {
        ProxyChoice::Medoid => clustering.medoids.clone(),
        ProxyChoice::CenterRandom => clustering
            .medoids
            .iter()
            .enumerate()
            .map(|(cluster, &medoid)| {
                let members: Vec<usize> = (0..clustering.labels.len())
                    .filter(|&i| clustering.labels[i] == cluster)
                    .collect();
                if members.is_empty() {
                    return medoid;
                }
                let weights: Vec<f64> = members
                    .iter()
                    .map(|&j| similarity[[medoid, j]].max(0.0) as f64 + 1e-6)
                    .collect();
                let mut target = rng.random::<f64>() * weights.iter().sum::<f64>();
                for (member, weight) in members.iter().zip(&weights) {
                    target -= weight;
                    if target < 0.0 {
                        return *member;
                    }
                }
                *members.last().expect("non-empty")
            })
            .collect(),
    }
}

/// Members of each cluster, in token order.
pub fn members(labels: &[usize], clusters: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); clusters];
    for (token, &cluster) in labels.iter().enumerate() {
        out[cluster].push(token);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn initial_medoids_are_rounded_linspace() {
        assert_eq!(initial_medoids(16, 4), vec![0, 5, 10, 15]);
        assert_eq!(initial_medoids(256, 16)[..3], [0, 17, 34]);
        // linspace(0, 9, 4) = 0, 3, 6, 9; linspace(0, 10, 5) = 0, 2.5 -> 2 (ties to even), 5, 7.5 -> 8, 10.
        assert_eq!(initial_medoids(10, 4), vec![0, 3, 6, 9]);
        assert_eq!(initial_medoids(11, 5), vec![0, 2, 5, 8, 10]);
    }

    #[test]
    fn two_obvious_groups_are_found() {
        let x = array![[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.95, 0.05]];
        let s = cosine_similarity_matrix(x.view());
        let clustering = k_medoids(s.view(), 2, 8);
        assert_eq!(clustering.labels, vec![0, 0, 1, 1, 0]);
        for (cluster, &m) in clustering.medoids.iter().enumerate() {
            assert_eq!(clustering.labels[m], cluster);
        }
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        let s = array![[1.0f32, 1.0], [1.0, 1.0]];
        assert_eq!(assign(s.view(), &[0, 1]), vec![0, 0]);
    }

    #[test]
    fn ema_blends_with_history_only_when_present() {
        let current = array![[1.0f32, 0.0], [0.0, 1.0]];
        assert_eq!(temporal_smoothing(current.clone(), None, 0.5), current);
        let previous = array![[1.0f32, 1.0], [1.0, 1.0]];
        assert_eq!(
            temporal_smoothing(current, Some(&previous), 0.5),
            array![[1.0f32, 0.5], [0.5, 1.0]]
        );
    }
}
