//! A sampling job from the CLI's flags to its outputs: inputs, the run on a backend, statistics.

use std::time::Instant;

use std::path::Path;

use anyhow::{Context, Result};
use ndarray::{Array4, Array5, Axis, s};
use resca_reference::cache::{CachingHook, MethodConfig, build_hook, read_clusterings};
use resca_reference::flops::{StepWork, run_flops};
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::sampler::StepHook;
use resca_reference::{Dit, Sampler, Trajectory, sample};

use crate::inputs::guided_batch;
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

/// Runs `job` on the reference backend with caching `hook`, reporting progress per step.
pub fn run_reference(
    model: &Dit,
    job: &SampleJob,
    method_name: &str,
    hook: &mut dyn StepHook,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SampleResult> {
    let samples = job.noise.dim().0;
    let (x, labels) = if job.guided() {
        guided_batch(&job.noise, &job.labels, &model.config)
    } else {
        (job.noise.clone(), job.labels.clone())
    };
    let scale = job.guided().then_some(job.cfg_scale);
    let start = Instant::now();
    let trajectory = sample(model, x.view(), &labels, scale, &job.sampler, hook, progress)?;
    let wall_s = start.elapsed().as_secs_f64();
    let timings = hook.timings();
    let rows = labels.len();
    let stats = stats(
        model,
        job,
        method_name,
        "reference",
        &trajectory,
        rows,
        samples,
        wall_s,
        timings,
    );
    Ok(SampleResult {
        x: trajectory.x.slice(s![.., ..samples, .., .., ..]).to_owned(),
        model_out: trajectory.model_out.slice(s![.., ..samples, .., .., ..]).to_owned(),
        stats,
    })
}

/// Statistics of a run from the work each step did and the measured times.
#[allow(clippy::too_many_arguments)]
pub fn stats(
    model: &Dit,
    job: &SampleJob,
    method_name: &str,
    backend: &str,
    trajectory: &Trajectory,
    model_rows: usize,
    samples: usize,
    wall_s: f64,
    timings: resca_reference::sampler::MethodTimings,
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

/// Where a run executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The pure-ndarray CPU reference.
    Reference,
    /// The GPU kernels, run by the CPU simulator (slow; checks every kernel like compute-sanitizer).
    Sim,
    /// The same kernels as PTX on an NVIDIA GPU (sm_80 or later) through the CUDA driver.
    Cuda,
}

/// Runs `job` with caching `method` on `backend`, replaying recorded clusterings from `replay` if
/// given (see `CachingHook::replay_clusterings`).
pub fn run_method(
    model: &Dit,
    job: &SampleJob,
    method: &MethodConfig,
    backend: Backend,
    replay: Option<&Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SampleResult> {
    let config = &model.config;
    method.validate(config.tokens())?;
    let rows = if job.guided() {
        2 * job.noise.dim().0
    } else {
        job.noise.dim().0
    };
    let records = match replay {
        Some(path) => read_clusterings(&SafetensorsFile::open(path)?, rows, config.tokens(), method.clusters)
            .with_context(|| format!("--replay-clusters {}", path.display()))?,
        None => Vec::new(),
    };
    match backend {
        Backend::Reference => {
            method.prepare(model);
            let orientation = job.sampler.orientation();
            let mut hook: Box<dyn StepHook> = if records.is_empty() {
                build_hook(method, config, rows, orientation)?
            } else {
                let mut caching = CachingHook::new(method.clone(), config, rows, orientation)?;
                caching.replay_clusterings(records);
                Box::new(caching)
            };
            run_reference(model, job, &method.name(), hook.as_mut(), progress)
        }
        Backend::Sim => crate::sim::job::run_sim(model, job, method, records, progress),
        Backend::Cuda => crate::cuda::job::run_cuda(model, job, method, records, progress),
    }
}

/// Final samples (B, C, H, W) of a result.
pub fn final_samples(result: &SampleResult) -> Array4<f32> {
    let last = result.x.dim().0 - 1;
    result.x.index_axis(Axis(0), last).to_owned()
}
