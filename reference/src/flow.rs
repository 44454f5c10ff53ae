//! The rectified-flow Euler sampler (FLUX style, docs/algorithms.md section 3): `dx/dt = v(x, t)`
//! integrated from t = 1 (noise) to t = 0 on a uniform grid, optionally shifted towards the noisy
//! end.

use ndarray::{Array4, ArrayView4, Zip};

use crate::error::{Error, Result};

/// The time grid of a flow sampler: `steps + 1` times from 1 down to 0.
#[derive(Clone, Debug)]
pub struct FlowSchedule {
    pub times: Vec<f64>,
}

impl FlowSchedule {
    /// Uniform grid `1 - i/steps`, mapped through the time shift `shift t / (1 + (shift - 1) t)`
    /// (shift 1 leaves it uniform; FLUX uses shift > 1 to spend more steps at high noise).
    pub fn new(steps: usize, shift: f64) -> Result<Self> {
        if steps == 0 {
            return Err(Error::Input("--steps must be at least 1".to_string()));
        }
        if !(shift > 0.0 && shift.is_finite()) {
            return Err(Error::Input(format!(
                "flow time shift {shift} must be positive and finite"
            )));
        }
        let times = (0..=steps)
            .map(|i| {
                let t = 1.0 - i as f64 / steps as f64;
                shift * t / (1.0 + (shift - 1.0) * t)
            })
            .collect();
        Ok(Self { times })
    }

    pub fn steps(&self) -> usize {
        self.times.len() - 1
    }

    /// The model's timestep input at step `k` (sampling order): `1000 t_k`.
    pub fn model_timestep(&self, k: usize) -> f32 {
        (1000.0 * self.times[k]) as f32
    }

    /// One Euler step `x + (t_{k+1} - t_k) v`; `velocity` are the first C output channels.
    pub fn step(&self, k: usize, x: ArrayView4<f32>, velocity: ArrayView4<f32>) -> Array4<f32> {
        let dt = (self.times[k + 1] - self.times[k]) as f32;
        let mut out = x.to_owned();
        Zip::from(&mut out).and(velocity).for_each(|o, &v| *o += dt * v);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_grid_runs_from_one_to_zero() {
        let s = FlowSchedule::new(4, 1.0).unwrap();
        assert_eq!(s.times, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(s.model_timestep(1), 750.0);
    }

    #[test]
    fn shift_moves_the_grid_towards_noise_but_keeps_the_ends() {
        let s = FlowSchedule::new(4, 3.0).unwrap();
        assert_eq!((s.times[0], s.times[4]), (1.0, 0.0));
        assert!(s.times[2] > 0.5);
    }

    #[test]
    fn euler_step_integrates_a_constant_velocity_exactly() {
        let s = FlowSchedule::new(2, 1.0).unwrap();
        let x = Array4::<f32>::ones((1, 1, 2, 2));
        let v = Array4::<f32>::from_elem((1, 1, 2, 2), 2.0);
        let next = s.step(0, x.view(), v.view());
        assert!(next.iter().all(|&value| value == 0.0));
    }
}
