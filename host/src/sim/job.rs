//! CLI jobs on the simulator backend: a sampling job ([`SampleJob`], any method and sampler) and
//! a single forward pass, the counterparts of `run::run_reference` and the reference forward.
//! The device-generic halves ([`run_on_device`], [`forward_on_device`]) serve the CUDA backend too.

use std::time::Instant;

use anyhow::Result;
use ndarray::{Array4, ArrayView4, s};
use resca_reference::Dit;
use resca_reference::cache::{ClusteringRecord, MethodConfig};

use super::SimDevice;
use crate::inputs::guided_batch;
use crate::pipeline::{Device, Pipeline, SampleOptions};
use crate::run::{SampleJob, SampleResult, stats};

/// Runs `job` with caching `method` on the kernels through the simulator, replaying `replay`
/// (recorded clusterings by full-step index; empty for none). Statistics as the reference
/// backend's, with the time split into true denoising, clustering and simulated denoising.
pub fn run_sim(
    model: &Dit,
    job: &SampleJob,
    method: &MethodConfig,
    replay: Vec<ClusteringRecord>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SampleResult> {
    run_on_device(SimDevice::new(), model, job, method, replay, progress)
}

/// [`run_sim`] on any device (the statistics name the device's backend).
pub fn run_on_device<D: Device>(
    dev: D,
    model: &Dit,
    job: &SampleJob,
    method: &MethodConfig,
    replay: Vec<ClusteringRecord>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SampleResult> {
    let backend = dev.name();
    let mut pipeline = Pipeline::new(dev, model)?;
    let samples = job.noise.dim().0;
    let (x, labels) = if job.guided() {
        guided_batch(&job.noise, &job.labels, &model.config)
    } else {
        (job.noise.clone(), job.labels.clone())
    };
    let scale = job.guided().then_some(job.cfg_scale);
    let options = SampleOptions {
        replay,
        record_clusterings: false,
    };
    let start = Instant::now();
    let output = pipeline.sample(x.view(), &labels, scale, &job.sampler, method, options, progress)?;
    let wall_s = start.elapsed().as_secs_f64();
    let trajectory = output.trajectory;
    let stats = stats(
        model,
        job,
        &method.name(),
        backend,
        &trajectory,
        labels.len(),
        samples,
        wall_s,
        output.timings,
    );
    Ok(SampleResult {
        x: trajectory.x.slice(s![.., ..samples, .., .., ..]).to_owned(),
        model_out: trajectory.model_out.slice(s![.., ..samples, .., .., ..]).to_owned(),
        stats,
    })
}

/// `model(x, t, y)` (or `forward_with_cfg` at `cfg_scale`) on the kernels through the simulator.
pub fn forward_sim(
    model: &Dit,
    x: ArrayView4<f32>,
    timesteps: &[f32],
    labels: &[usize],
    cfg_scale: Option<f32>,
) -> Result<Array4<f32>> {
    forward_on_device(SimDevice::new(), model, x, timesteps, labels, cfg_scale)
}

/// [`forward_sim`] on any device.
pub fn forward_on_device<D: Device>(
    dev: D,
    model: &Dit,
    x: ArrayView4<f32>,
    timesteps: &[f32],
    labels: &[usize],
    cfg_scale: Option<f32>,
) -> Result<Array4<f32>> {
    let mut pipeline = Pipeline::new(dev, model)?;
    Ok(match cfg_scale {
        Some(scale) => pipeline.forward_with_cfg(x, timesteps, labels, scale)?,
        None => pipeline.forward(x, timesteps, labels)?,
    })
}
