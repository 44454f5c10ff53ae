//! The DDIM sampler of guided-diffusion as DiT uses it (docs/algorithms.md section 2): linear
//! betas, respaced timesteps, eta = 0, no clipping.

use ndarray::{Array4, ArrayView4, Zip};

use crate::error::{Error, Result};

/// Number of diffusion timesteps DiT was trained with.
pub const TRAIN_TIMESTEPS: usize = 1000;

/// The respaced schedule for a given number of sampling steps.
#[derive(Clone, Debug)]
pub struct DdimSchedule {
    /// The original timestep (0..999) of each respaced step, ascending: `map[s]` for step s.
    pub timestep_map: Vec<i64>,
    /// abar at each kept timestep, recomputed from the respaced betas as guided-diffusion does.
    pub alphas_cumprod: Vec<f64>,
    /// abar of the previous kept timestep (1 for step 0).
    pub alphas_cumprod_prev: Vec<f64>,
}

/// `beta_t = linspace(1e-4, 0.02, 1000)` in float64.
pub fn base_betas() -> Vec<f64> {
    let (start, end) = (1e-4f64, 0.02f64);
    let n = TRAIN_TIMESTEPS;
    // numpy.linspace: start + i * step, with the last value exactly `end`.
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| if i == n - 1 { end } else { start + i as f64 * step })
        .collect()
}

/// The timesteps guided-diffusion's `space_timesteps(1000, "S")` keeps: a float stride
/// `(1000 - 1) / (S - 1)` accumulated from 0, each position rounded half to even.
pub fn respaced_timesteps(steps: usize) -> Result<Vec<i64>> {
    if steps == 0 || steps > TRAIN_TIMESTEPS {
        return Err(Error::Input(format!(
            "--steps {steps} must be in 1..={TRAIN_TIMESTEPS}"
        )));
    }
    if steps == 1 {
        return Ok(vec![0]);
    }
    let stride = (TRAIN_TIMESTEPS - 1) as f64 / (steps - 1) as f64;
    let mut position = 0.0f64;
    let mut kept = Vec::with_capacity(steps);
    for _ in 0..steps {
        kept.push(position.round_ties_even() as i64);
        position += stride;
    }
    kept.sort_unstable();
    kept.dedup();
    Ok(kept)
}

impl DdimSchedule {
    pub fn new(steps: usize) -> Result<Self> {
        let timestep_map = respaced_timesteps(steps)?;
        let betas = base_betas();
        let mut cumulative = 1.0f64;
        let base_abar: Vec<f64> = betas
            .iter()
            .map(|beta| {
                cumulative *= 1.0 - beta;
                cumulative
            })
            .collect();
        // SpacedDiffusion: new betas 1 - abar_t / abar_last over the kept steps, then a fresh
        // cumulative product (which equals abar_t up to rounding, exactly as upstream computes it).
        let mut last = 1.0f64;
        let mut cumulative = 1.0f64;
        let mut alphas_cumprod = Vec::with_capacity(timestep_map.len());
        for &t in &timestep_map {
            let abar = base_abar[t as usize];
            let beta = 1.0 - abar / last;
            last = abar;
            cumulative *= 1.0 - beta;
            alphas_cumprod.push(cumulative);
        }
        let mut alphas_cumprod_prev = vec![1.0];
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..alphas_cumprod.len() - 1]);
        Ok(Self {
            timestep_map,
            alphas_cumprod,
            alphas_cumprod_prev,
        })
    }

    pub fn steps(&self) -> usize {
        self.timestep_map.len()
    }

    /// One DDIM update (eta = 0) from step `s` to `s - 1`, in float32 with the float64
    /// coefficients rounded to float32 first, in upstream's operation order:
    /// `x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps`, `eps' = (sqrt(1/abar) x - x0) / sqrt(1/abar - 1)`,
    /// `x_prev = x0 sqrt(abar_prev) + sqrt(1 - abar_prev) eps'`. `eps` are the first C channels of
    /// the model output.
    pub fn step(&self, s: usize, x: ArrayView4<f32>, eps: ArrayView4<f32>) -> Array4<f32> {
        let abar = self.alphas_cumprod[s];
        let recip = (1.0 / abar).sqrt() as f32;
        let recip_m1 = (1.0 / abar - 1.0).sqrt() as f32;
        let abar_prev = self.alphas_cumprod_prev[s] as f32;
        let sqrt_prev = abar_prev.sqrt();
        let sqrt_one_minus_prev = (1.0 - abar_prev - 0.0).sqrt();
        let mut out = Array4::<f32>::zeros(x.raw_dim());
        Zip::from(&mut out).and(x).and(eps).for_each(|o, &x, &e| {
            let x0 = recip * x - recip_m1 * e;
            let eps_again = (recip * x - x0) / recip_m1;
            *o = x0 * sqrt_prev + sqrt_one_minus_prev * eps_again;
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_steps_keep_the_documented_timesteps() {
        let map = respaced_timesteps(50).unwrap();
        assert_eq!(map.len(), 50);
        assert_eq!(&map[..4], &[0, 20, 41, 61]);
        assert_eq!(&map[48..], &[979, 999]);
    }

    #[test]
    fn respacing_to_all_steps_is_the_identity_schedule() {
        let schedule = DdimSchedule::new(1000).unwrap();
        assert_eq!(schedule.timestep_map, (0..1000).collect::<Vec<i64>>());
        assert!((schedule.alphas_cumprod[0] - (1.0 - 1e-4)).abs() < 1e-15);
    }

    #[test]
    fn zero_or_too_many_steps_are_rejected() {
        assert!(DdimSchedule::new(0).is_err());
        assert!(
            DdimSchedule::new(1001)
                .unwrap_err()
                .to_string()
                .contains("--steps 1001")
        );
    }
}
