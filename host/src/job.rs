//! A sampling job and its result, whatever backend runs it: the inputs ([`SampleJob`]), the
//! trajectories and statistics ([`SampleResult`]), and the statistics' arithmetic ([`stats`]).

use ndarray::{Array4, Array5, Axis};
use resca_reference::flops::{StepWork, run_flops};
use resca_reference::sampler::MethodTimings;
use resca_reference::{Dit, Sampler, Trajectory};

use crate::pipeline::launch::Precision;
use crate::report::RunStats;

/// Everything a sampling run needs besides the model.
pub struct SampleJob {
    /// Noise (B, C, H, W), one row per sample.
    pub noise: Array4<f32>,
    /// One label per sample.
    pub labels: Vec<usize>,
    /// Classifier-free guidance scale; guidance is used when it is above 1, as in DiT's sample.py.
    pub cfg_scale: f32,
    pub sampler: Sampler,
    pub sampler_name: String,
}

/// A finished run: the samples' trajectories (guided runs: the conditional half) and statistics.
pub struct SampleResult {
    /// (steps + 1, B, C, H, W).
    pub x: Array5<f32>,
    /// (steps, B, out_channels, H, W).
    pub model_out: Array5<f32>,
    pub stats: RunStats,
}

impl SampleJob {
    pub fn guided(&self) -> bool {
        self.cfg_scale > 1.0
    }
}

/// Statistics of a run from the work each step did and the measured times.
#[allow(clippy::too_many_arguments)]
pub fn stats(
    model: &Dit,
    job: &SampleJob,
    method_name: &str,
    (backend, precision): (&str, Precision),
    trajectory: &Trajectory,
    model_rows: usize,
    samples: usize,
    wall_s: f64,
    timings: MethodTimings,
) -> RunStats {
    let config = &model.config;
    let work = &trajectory.work;
    let images_per_sample = if job.guided() { 2 } else { 1 };
    let full = StepWork::full(config);
    let flops = run_flops(config, work.iter().copied(), images_per_sample);
    let full_flops = run_flops(config, vec![full; work.len()], images_per_sample);
    let full_steps = work.iter().filter(|w| **w == full).count();
    let seconds_of = |dense: bool| -> f64 {
        work.iter()
            .zip(&trajectory.step_seconds)
            .filter(|(w, _)| (**w == full) == dense)
            .fold(0.0, |total, (_, t)| total + t)
    };
    let (dense_s, sparse_s) = (seconds_of(true), seconds_of(false));
    let share = |part: f64, whole: f64| if whole > 0.0 { 100.0 * part / whole } else { 0.0 };
    RunStats {
        backend: backend.to_string(),
        precision: precision.name().to_string(),
        method: method_name.to_string(),
        sampler: job.sampler_name.clone(),
        cfg_scale: job.cfg_scale,
        steps: work.len(),
        full_steps,
        sparse_steps: work.len() - full_steps,
        samples,
        model_rows,
        tflops: flops / 1e12,
        full_tflops: full_flops / 1e12,
        flops_speedup: full_flops / flops,
        wall_s,
        true_denoising_s: wall_s - timings.clustering_s - timings.simulated_s,
        clustering_s: timings.clustering_s,
        simulated_denoising_s: timings.simulated_s,
        dense_steps_s: dense_s,
        sparse_steps_s: sparse_s,
        clustering_pct_of_dense: share(timings.clustering_s, dense_s),
        simulated_pct_of_sparse: share(timings.simulated_s, sparse_s),
    }
}

/// Final samples (B, C, H, W) of a result.
pub fn final_samples(result: &SampleResult) -> Array4<f32> {
    let last = result.x.dim().0 - 1;
    result.x.index_axis(Axis(0), last).to_owned()
}
