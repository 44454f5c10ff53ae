//! The trajectory approximation of the supplement (Eq. S1-S2): a token's denoising trajectory
//! `x_{t_0} .. x_{t_T}` in R^d seen in the 3-D frame of its main direction
//! `u = (x_T - x_0) / |x_T - x_0|` and the first two principal directions `v1, v2` of the
//! centred states `x~_i = x_i - x_0` projected orthogonally to `u`.

use anyhow::{Result, bail};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::{Eigh, UPLO};

/// The frame of one reference trajectory: origin `x_0` and directions `u`, `v1`, `v2`.
#[derive(Clone, Debug)]
pub struct TrajectoryFrame {
    pub origin: Array1<f64>,
    pub u: Array1<f64>,
    pub v1: Array1<f64>,
    pub v2: Array1<f64>,
    /// Share of the centred trajectory's squared norm the three directions capture.
    pub explained: f64,
}

impl TrajectoryFrame {
    /// The frame of `states` (T+1, d), one state per step in sampling order.
    pub fn fit(states: ArrayView2<f32>) -> Result<Self> {
        let x = states.mapv(f64::from);
        let (steps, d) = x.dim();
        if steps < 3 || d < 3 {
            bail!("a trajectory frame needs at least 3 states of at least 3 dimensions, got ({steps}, {d})");
        }
        let origin = x.row(0).to_owned();
        let centred = &x - &origin;
        let end = centred.row(steps - 1).to_owned();
        let length = end.dot(&end).sqrt();
        if length == 0.0 {
            bail!("the trajectory ends where it starts: no main direction");
        }
        let u = end / length;
        // Remove the u-component, then PCA (centred) of what is left.
        let along = centred.dot(&u);
        let mut orthogonal = centred.clone();
        for (mut row, a) in orthogonal.rows_mut().into_iter().zip(along.iter()) {
            row.scaled_add(-a, &u);
        }
        let mean = orthogonal.mean_axis(Axis(0)).expect("rows");
        let deviations = &orthogonal - &mean;
        let covariance = deviations.t().dot(&deviations);
        let (_, vectors) = covariance.eigh(UPLO::Lower)?;
        // eigh sorts eigenvalues ascending: the last two columns are the principal directions.
        let v1 = vectors.column(d - 1).to_owned();
        let v2 = vectors.column(d - 2).to_owned();
        let frame = Self {
            origin,
            u,
            v1,
            v2,
            explained: 0.0,
        };
        let total: f64 = centred.iter().map(|v| v * v).sum();
        let captured: f64 = frame.project(states).iter().map(|v| v * v).sum();
        Ok(Self {
            explained: if total > 0.0 { captured / total } else { 1.0 },
            ..frame
        })
    }

    /// Coordinates (T+1, 3) of `states` in this frame: `(x~.u, x~.v1, x~.v2)`, `x~ = x - x_0`.
    pub fn project(&self, states: ArrayView2<f32>) -> Array2<f64> {
        let centred = &states.mapv(f64::from) - &self.origin;
        let mut out = Array2::<f64>::zeros((states.nrows(), 3));
        for (mut coords, row) in out.rows_mut().into_iter().zip(centred.rows()) {
            coords[0] = row.dot(&self.u);
            coords[1] = row.dot(&self.v1);
            coords[2] = row.dot(&self.v2);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn a_planar_curve_is_captured_exactly_by_its_frame() {
        // x(s) = (s, s^2 - s, 0, 0, ...) + offset for s in [0, 1]: ends on the first axis, bulges
        // along the second, so u = e1, v1 = +-e2, and the frame captures everything.
        let steps = 11;
        let states = Array2::from_shape_fn((steps, 5), |(i, j)| {
            let s = i as f32 / (steps - 1) as f32;
            [s, s * s - s, 0.0, 0.0, 0.0][j] + 3.0
        });
        let frame = TrajectoryFrame::fit(states.view()).unwrap();
        assert!((frame.u[0] - 1.0).abs() < 1e-12);
        assert!((frame.v1[1].abs() - 1.0).abs() < 1e-9);
        assert!((frame.explained - 1.0).abs() < 1e-9);
        let coords = frame.project(states.view());
        assert!((coords[[steps - 1, 0]] - 1.0).abs() < 1e-6);
        assert!((coords[[5, 1]].abs() - 0.25).abs() < 1e-6);
    }

    #[test]
    fn degenerate_trajectories_are_rejected() {
        let still = Array2::<f32>::ones((5, 4));
        assert!(TrajectoryFrame::fit(still.view()).is_err());
        assert!(TrajectoryFrame::fit(Array2::<f32>::zeros((2, 4)).view()).is_err());
    }
}
