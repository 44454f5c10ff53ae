//! Sampling jobs and forward passes on a backend: the reference runner ([`run_reference`]), the
//! device-generic runners ([`run_on_device`], [`forward_on_device`]) that serve the simulator and
//! the CUDA backend alike, and the one switch from a [`Backend`] to the code that runs it
//! ([`Backend::run`]), through which [`run_method`] and [`forward`] reach their backend. The
//! device backends run their big GEMMs in a [`Precision`]; the reference computes in FP32 only.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use ndarray::{Array4, ArrayView4, s};
use resca_reference::cache::{
    CachingHook, ClusteringRecord, MethodConfig, build_hook, check_replay_steps, read_clusterings,
};
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::sampler::StepHook;
use resca_reference::{Dit, sample};

use crate::cuda::CudaDevice;
use crate::inputs::guided_batch;
use crate::job::{SampleJob, SampleResult, stats};
use crate::pipeline::launch::Precision;
use crate::pipeline::{Device, GraphMode, Pipeline, SampleOptions};
use crate::sim::SimDevice;

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

/// Work that every backend runs: on the reference directly, or on the device-generic pipeline
/// over whichever device the backend opens.
pub trait BackendWork {
    type Output;
    /// On the pure-ndarray CPU reference.
    fn on_reference(self) -> Result<Self::Output>;
    /// On the pipeline over `dev`, its big GEMMs in `precision`.
    fn on_device<D: Device>(self, dev: D, precision: Precision) -> Result<Self::Output>;
}

impl Backend {
    /// Fails unless this backend computes in `precision`: the device backends have every mode,
    /// the reference FP32 only (`exact`).
    pub fn check_precision(self, precision: Precision) -> Result<()> {
        if self == Backend::Reference && precision != Precision::Exact {
            bail!(
                "--precision {}: the reference backend computes in FP32 only; use --precision exact, or \
                 --backend sim or --backend cuda for the tensor-core modes",
                precision.name()
            );
        }
        Ok(())
    }

    /// Runs `work` on this backend in `precision`: the one place that maps a backend to its code.
    /// The GPU is opened here; without a driver or GPU the error says why, before any work.
    pub fn run<W: BackendWork>(self, precision: Precision, work: W) -> Result<W::Output> {
        self.check_precision(precision)?;
        match self {
            Backend::Reference => work.on_reference(),
            Backend::Sim => work.on_device(SimDevice::new(), precision),
            Backend::Cuda => {
                let dev = CudaDevice::open_default().map_err(|e| anyhow!("--backend cuda: {e}"))?;
                work.on_device(dev, precision)
            }
        }
    }
}

/// Runs `job` with caching `method` on `backend` in `precision`, replaying recorded clusterings
/// from `replay` if given (see `CachingHook::replay_clusterings`).
pub fn run_method(
    model: &Dit,
    job: &SampleJob,
    method: &MethodConfig,
    backend: Backend,
    precision: Precision,
    replay: Option<&Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SampleResult> {
    let config = &model.config;
    method.validate(config.tokens())?;
    let records = match replay {
        Some(path) => read_clusterings(
            &SafetensorsFile::open(path)?,
            model_rows(job),
            config.tokens(),
            method.clusters,
        )
        .with_context(|| format!("--replay-clusters {}", path.display()))?,
        None => Vec::new(),
    };
    if let Some(path) = replay {
        check_replay_steps(
            &format!("--replay-clusters {}", path.display()),
            &records,
            &full_steps(job, method),
        )?;
    }
    backend.run(
        precision,
        Sampling {
            model,
            job,
            method,
            records,
            progress,
        },
    )
}

/// The sampler step indices of the full steps of `job` run with `method`, where the clustering
/// methods cluster.
fn full_steps(job: &SampleJob, method: &MethodConfig) -> Vec<i64> {
    let sampler = &job.sampler;
    method
        .schedule()
        .plan(sampler.steps())
        .into_iter()
        .enumerate()
        .filter(|&(_, full)| full)
        .map(|(position, _)| sampler.step_info(position).index)
        .collect()
}

/// The rows the model sees: the guided batch counts both halves.
fn model_rows(job: &SampleJob) -> usize {
    if job.guided() {
        2 * job.noise.dim().0
    } else {
        job.noise.dim().0
    }
}

/// The work of [`run_method`]: `job` with caching `method`, replaying `records` (recorded
/// clusterings by full-step index; empty for none).
struct Sampling<'a> {
    model: &'a Dit,
    job: &'a SampleJob,
    method: &'a MethodConfig,
    records: Vec<ClusteringRecord>,
    progress: &'a mut dyn FnMut(usize, usize),
}

impl BackendWork for Sampling<'_> {
    type Output = SampleResult;

    fn on_reference(self) -> Result<SampleResult> {
        let Sampling {
            model,
            job,
            method,
            records,
            progress,
        } = self;
        let config = &model.config;
        method.prepare(model);
        let orientation = job.sampler.orientation();
        let rows = model_rows(job);
        let mut hook: Box<dyn StepHook> = if records.is_empty() {
            build_hook(method, config, rows, orientation)?
        } else {
            let mut caching = CachingHook::new(method.clone(), config, rows, orientation)?;
            caching.replay_clusterings(records);
            Box::new(caching)
        };
        run_reference(model, job, &method.name(), hook.as_mut(), progress)
    }

    fn on_device<D: Device>(self, dev: D, precision: Precision) -> Result<SampleResult> {
        run_on_device(
            dev,
            precision,
            self.model,
            self.job,
            self.method,
            self.records,
            self.progress,
        )
    }
}

/// `model(x, t, y)` (or `forward_with_cfg` at `cfg_scale`) on `backend` in `precision`.
pub fn forward(
    model: &Dit,
    x: ArrayView4<f32>,
    timesteps: &[f32],
    labels: &[usize],
    cfg_scale: Option<f32>,
    backend: Backend,
    precision: Precision,
) -> Result<Array4<f32>> {
    let work = ForwardPass {
        model,
        x,
        timesteps,
        labels,
        cfg_scale,
    };
    backend.run(precision, work)
}

/// The work of [`forward`].
struct ForwardPass<'a> {
    model: &'a Dit,
    x: ArrayView4<'a, f32>,
    timesteps: &'a [f32],
    labels: &'a [usize],
    cfg_scale: Option<f32>,
}

impl BackendWork for ForwardPass<'_> {
    type Output = Array4<f32>;

    fn on_reference(self) -> Result<Array4<f32>> {
        Ok(match self.cfg_scale {
            Some(scale) => self
                .model
                .forward_with_cfg(self.x, self.timesteps, self.labels, scale)?,
            None => self.model.forward(self.x, self.timesteps, self.labels)?,
        })
    }

    fn on_device<D: Device>(self, dev: D, precision: Precision) -> Result<Array4<f32>> {
        forward_on_device(
            dev,
            precision,
            self.model,
            self.x,
            self.timesteps,
            self.labels,
            self.cfg_scale,
        )
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
        ("reference", Precision::Exact),
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

/// Runs `job` with caching `method` on the kernels of `dev` (the big GEMMs in `precision`),
/// replaying `replay` (recorded clusterings by full-step index; empty for none). Statistics as the
/// reference backend's (named after the device's backend), with the time split into true
/// denoising, clustering and simulated denoising.
pub fn run_on_device<D: Device>(
    dev: D,
    precision: Precision,
    model: &Dit,
    job: &SampleJob,
    method: &MethodConfig,
    replay: Vec<ClusteringRecord>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SampleResult> {
    let backend = dev.name();
    let mut pipeline = Pipeline::with_precision(dev, model, precision)?;
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
        graphs: GraphMode::from_env()?,
    };
    let start = Instant::now();
    let output = pipeline.sample(x.view(), &labels, scale, &job.sampler, method, options, progress)?;
    let wall_s = start.elapsed().as_secs_f64();
    let trajectory = output.trajectory;
    let stats = stats(
        model,
        job,
        &method.name(),
        (backend, precision),
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

/// `model(x, t, y)` (or `forward_with_cfg` at `cfg_scale`) on the kernels of `dev`, the big
/// GEMMs in `precision`.
pub fn forward_on_device<D: Device>(
    dev: D,
    precision: Precision,
    model: &Dit,
    x: ArrayView4<f32>,
    timesteps: &[f32],
    labels: &[usize],
    cfg_scale: Option<f32>,
) -> Result<Array4<f32>> {
    let mut pipeline = Pipeline::with_precision(dev, model, precision)?;
    Ok(match cfg_scale {
        Some(scale) => pipeline.forward_with_cfg(x, timesteps, labels, scale)?,
        None => pipeline.forward(x, timesteps, labels)?,
    })
}
