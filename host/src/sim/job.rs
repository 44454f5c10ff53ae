//! A CLI sampling job ([`SampleJob`]) on the simulator backend: the counterpart of
//! `run::run_reference` for the uncached method, so that `resca sample --backend sim` is one call.

use std::time::Instant;

use anyhow::{Result, bail};
use ndarray::s;
use resca_reference::sampler::MethodTimings;
use resca_reference::{Dit, Sampler};

use super::SimDit;
use crate::inputs::guided_batch;
use crate::run::{SampleJob, SampleResult, stats};

/// Runs `job` with the full (uncached) model on the kernels through the simulator. Only the
/// DDIM sampler and the `full` method run on kernels so far; anything else is an error.
pub fn run_sim(model: &Dit, job: &SampleJob, progress: &mut dyn FnMut(usize, usize)) -> Result<SampleResult> {
    let Sampler::Ddim(schedule) = &job.sampler else {
        bail!("--backend sim supports --sampler ddim only (so far)");
    };
    let sim = SimDit::new(model)?;
    let samples = job.noise.dim().0;
    let (x, labels) = if job.guided() {
        guided_batch(&job.noise, &job.labels, &model.config)
    } else {
        (job.noise.clone(), job.labels.clone())
    };
    let scale = job.guided().then_some(job.cfg_scale);
    let start = Instant::now();
    let trajectory = sim.sample_ddim(x.view(), &labels, scale, schedule, progress)?;
    let wall_s = start.elapsed().as_secs_f64();
    let stats = stats(
        model,
        job,
        "full",
        "sim",
        &trajectory,
        labels.len(),
        samples,
        wall_s,
        MethodTimings::default(),
    );
    Ok(SampleResult {
        x: trajectory.x.slice(s![.., ..samples, .., .., ..]).to_owned(),
        model_out: trajectory.model_out.slice(s![.., ..samples, .., .., ..]).to_owned(),
        stats,
    })
}
