//! The supplement's trajectory views (Fig. S3/S4, `resca trajectories`): tokens' final-block
//! states over a run, recorded for full compute, TaylorSeer and ResCa (and drawn in the frame of
//! their full-compute trajectory, Eq. S1-S2, by `crate::figures::trajectory_plot`); and the
//! tokens clustered by their current features alone and by their trajectories (TETC's EMA),
//! with the spread of the residuals inside the clusters (Eq. S3) that says which grouping suits
//! residual sharing.

use anyhow::{Result, bail};
use ndarray::{Array2, Array3, Axis, s};
use resca_reference::Dit;
use resca_reference::cache::schedule::Schedule;
use resca_reference::cache::{MethodConfig, build_hook, tetc};

use super::recording::Recording;
use crate::job::SampleJob;
use crate::run::run_reference;

/// One method's run of the single sample: its name and its tokens' states (S, N, D), the final
/// block's output at each step.
pub struct RecordedRun {
    pub name: String,
    pub states: Array3<f32>,
}

/// Runs `job` (one sample) with `method`, recording the conditional row's final-block states.
pub fn record(model: &Dit, job: &SampleJob, method: &MethodConfig) -> Result<RecordedRun> {
    let rows = if job.guided() {
        2 * job.noise.dim().0
    } else {
        job.noise.dim().0
    };
    let mut hook = build_hook(method, &model.config, rows, job.sampler.orientation())?;
    let mut recording = Recording::new(hook.as_mut(), &model.config, 0);
    run_reference(model, job, &method.name(), &mut recording, &mut |_, _| {})?;
    Ok(RecordedRun {
        name: method.name(),
        states: recording.into_states(),
    })
}

/// The `count` tokens that move furthest over the full-compute run (|x_T - x_0|).
pub fn most_moving_tokens(states: &Array3<f32>, count: usize) -> Vec<usize> {
    let (steps, tokens, _) = states.dim();
    let mut moves: Vec<(usize, f32)> = (0..tokens)
        .map(|n| {
            let d: ndarray::Array1<f32> = &states.slice(s![steps - 1, n, ..]) - &states.slice(s![0, n, ..]);
            (n, d.dot(&d))
        })
        .collect();
    moves.sort_by(|a, b| b.1.total_cmp(&a.1));
    moves.into_iter().take(count).map(|(n, _)| n).collect()
}

/// Mean pairwise L2 distance of the first-order residuals `x_t - x_{t+1}` (sampling order:
/// `states[k] - states[k-1]`) between tokens of the same cluster, over steps `steps` (Eq. S3).
pub fn intra_cluster_residual_distance(states: &Array3<f32>, labels: &[usize], steps: std::ops::Range<usize>) -> f64 {
    let (mut total, mut pairs) = (0.0f64, 0usize);
    for k in steps.filter(|&k| k >= 1 && k < states.dim().0) {
        let residual: Array2<f32> = &states.index_axis(Axis(0), k) - &states.index_axis(Axis(0), k - 1);
        for i in 0..labels.len() {
            for j in i + 1..labels.len() {
                if labels[i] == labels[j] {
                    let d: ndarray::Array1<f32> = &residual.row(i) - &residual.row(j);
                    total += f64::from(d.dot(&d).sqrt());
                    pairs += 1;
                }
            }
        }
    }
    if pairs == 0 { 0.0 } else { total / pairs as f64 }
}

/// Feature-based and trajectory-based clusterings of the full run's tokens at each full step of
/// `schedule`, and the residual spread they leave over the following sparse steps.
pub struct ClusteringView {
    /// The full step (sampling position) the maps show: the last one with sparse steps after it.
    pub position: usize,
    pub feature_labels: Vec<usize>,
    pub trajectory_labels: Vec<usize>,
    /// Eq. S3 distances averaged over every full step and its following sparse steps.
    pub feature_spread: f64,
    pub trajectory_spread: f64,
}

pub fn clustering_view(full: &Array3<f32>, schedule: Schedule, k: usize, alpha: f32) -> Result<ClusteringView> {
    let steps = full.dim().0;
    let plan = schedule.plan(steps);
    let full_positions: Vec<usize> = (0..steps).filter(|&p| plan[p]).collect();
    let mut smoothed: Option<Array2<f32>> = None;
    let (mut feature_total, mut trajectory_total, mut windows) = (0.0, 0.0, 0usize);
    let mut shown = None;
    for (i, &position) in full_positions.iter().enumerate() {
        let current = tetc::cosine_similarity_matrix(full.index_axis(Axis(0), position));
        let ema = tetc::temporal_smoothing(current.clone(), smoothed.as_ref(), alpha);
        let feature = tetc::k_medoids(current.view(), k, 8).labels;
        let trajectory = tetc::k_medoids(ema.view(), k, 8).labels;
        smoothed = Some(ema);
        let next = full_positions.get(i + 1).copied().unwrap_or(steps);
        if next > position + 1 {
            // The residuals of the steps the clusters stand in for.
            let window = position + 1..next;
            feature_total += intra_cluster_residual_distance(full, &feature, window.clone());
            trajectory_total += intra_cluster_residual_distance(full, &trajectory, window);
            windows += 1;
            shown = Some((position, feature, trajectory));
        }
    }
    let Some((position, feature_labels, trajectory_labels)) = shown else {
        bail!("the schedule has no sparse steps to cluster for");
    };
    Ok(ClusteringView {
        position,
        feature_labels,
        trajectory_labels,
        feature_spread: feature_total / windows as f64,
        trajectory_spread: trajectory_total / windows as f64,
    })
}
