//! The figure of `resca trajectories`: one plot per token of its final-block states over each
//! recorded run, in the (u, v1) plane of its full-compute trajectory's frame (Eq. S1-S2), above
//! the feature-based and trajectory-based cluster maps with their residual spread.

use anyhow::Result;
use ndarray::{Array2, Array3, ArrayView2, s};

use super::canvas::{BLACK, Canvas, DARK, GREY, PALETTE, WHITE};
use crate::evaluation::trajectories::{ClusteringView, RecordedRun};
use crate::evaluation::trajectory_frame::TrajectoryFrame;

/// The trajectory of `token` (S, D).
fn token_path(states: &Array3<f32>, token: usize) -> ArrayView2<'_, f32> {
    states.slice(s![.., token, ..])
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
