//! `resca trajectories`: the supplement's trajectory views (Fig. S3/S4) on the embedded model.
//! Tokens' final-block states over the run are seen in the frame of their full-compute
//! trajectory (Eq. S1-S2) for full compute, TaylorSeer and ResCa; and the tokens are clustered by
//! their current features alone and by their trajectories (TETC's EMA), with the spread of the
//! residuals inside the clusters (Eq. S3) that says which grouping suits residual sharing.

use anyhow::{Result, bail};
use ndarray::{Array2, Array3, ArrayView2, Axis, s};
use resca_reference::Dit;
use resca_reference::cache::schedule::Schedule;
use resca_reference::cache::{MethodConfig, build_hook, tetc};

use crate::canvas::{BLACK, Canvas, DARK, GREY, PALETTE, WHITE};
use crate::recording::Recording;
use crate::run::{SampleJob, run_reference};
use crate::trajectory::TrajectoryFrame;

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

/// The trajectory of `token` (S, D).
fn token_path(states: &Array3<f32>, token: usize) -> ArrayView2<'_, f32> {
    states.slice(s![.., token, ..])
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

const PLOT: i64 = 220;
const PAD: i64 = 12;

/// Draws the trajectory plots (one per token, the (u, v1) plane of its full-compute frame, one
/// colour per run) above the two cluster maps.
pub fn figure(runs: &[RecordedRun], tokens: &[usize], view: &ClusteringView, grid: usize) -> Result<Canvas> {
    let width = PAD + tokens.len().max(2) as i64 * (PLOT + PAD);
    let map_cell = (PLOT / grid as i64).max(2);
    let height = PAD * 4 + 14 + PLOT + 40 + 14 + map_cell * grid as i64 + 30;
    let mut canvas = Canvas::new(width as usize, height as usize, WHITE);
    // Legend.
    let mut x = PAD;
    for (i, run) in runs.iter().enumerate() {
        canvas.fill_rect(x, PAD + 2, 10, 4, PALETTE[i]);
        canvas.text(x + 14, PAD, &run.name, BLACK, 1);
        x += 14 + Canvas::text_width(&run.name, 1) + 20;
    }
    let top = PAD * 2 + 14;
    for (t, &token) in tokens.iter().enumerate() {
        let x0 = PAD + t as i64 * (PLOT + PAD);
        let frame = TrajectoryFrame::fit(token_path(&runs[0].states, token))?;
        let paths: Vec<Array2<f64>> = runs
            .iter()
            .map(|r| frame.project(token_path(&r.states, token)))
            .collect();
        let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
        for path in &paths {
            for row in path.rows() {
                for a in 0..2 {
                    lo[a] = lo[a].min(row[a]);
                    hi[a] = hi[a].max(row[a]);
                }
            }
        }
        let to_pixel = |u: f64, v: f64| {
            let fx = (u - lo[0]) / (hi[0] - lo[0]).max(1e-12);
            let fy = (v - lo[1]) / (hi[1] - lo[1]).max(1e-12);
            (
                x0 + 6 + (fx * (PLOT - 12) as f64) as i64,
                top + PLOT - 6 - (fy * (PLOT - 12) as f64) as i64,
            )
        };
        canvas.fill_rect(x0, top, PLOT, PLOT, [245, 245, 245]);
        for (i, path) in paths.iter().enumerate() {
            let points: Vec<(i64, i64)> = path.rows().into_iter().map(|r| to_pixel(r[0], r[1])).collect();
            for pair in points.windows(2) {
                canvas.line(pair[0], pair[1], PALETTE[i], 2);
            }
            canvas.dot(*points.last().expect("steps"), 3, PALETTE[i]);
        }
        canvas.dot(to_pixel(0.0, 0.0), 3, DARK);
        canvas.text(
            x0,
            top + PLOT + 4,
            &format!("token {token}: u / v1 ({:.1}%)", 100.0 * frame.explained),
            BLACK,
            1,
        );
    }
    // Cluster maps.
    let map_top = top + PLOT + 40;
    for (i, (title, labels, spread)) in [
        ("feature-based", &view.feature_labels, view.feature_spread),
        ("trajectory-based", &view.trajectory_labels, view.trajectory_spread),
    ]
    .into_iter()
    .enumerate()
    {
        let x0 = PAD + i as i64 * (map_cell * grid as i64 + 3 * PAD);
        canvas.text(x0, map_top, &format!("{title} clusters"), BLACK, 1);
        for (token, &label) in labels.iter().enumerate() {
            let (r, c) = ((token / grid) as i64, (token % grid) as i64);
            let colour = PALETTE[label % PALETTE.len()];
            let shade = if label / PALETTE.len() % 2 == 1 {
                colour.map(|v| v / 2)
            } else {
                colour
            };
            canvas.fill_rect(
                x0 + c * map_cell,
                map_top + 14 + r * map_cell,
                map_cell,
                map_cell,
                shade,
            );
        }
        canvas.text(
            x0,
            map_top + 18 + map_cell * grid as i64,
            &format!("residual spread {spread:.3}"),
            GREY,
            1,
        );
    }
    Ok(canvas)
}
