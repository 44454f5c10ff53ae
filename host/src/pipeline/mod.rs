//! The device-generic pipeline: DiT forward passes, classifier-free guidance, both samplers and
//! every caching method as one launch sequence over a [`Device`], which the backends implement
//! (`crate::sim`, `crate::cuda`).
//!
//! * [`device`]: the [`Device`] trait (buffers, copies, launches by PTX entry name) and the
//!   kernel-call description a backend executes;
//! * [`launch`]: one typed function per kernel (parameters in entry-point order, the kernel's
//!   own launch geometry);
//! * [`gemm_plan`]: which GEMM kernels compute a linear layer of a given shape;
//! * [`model`]: the DiT weights on a device and the forward pass, whose block branches a
//!   [`BranchHook`] may store or supply;
//! * [`caching_engine`]: the caching methods (schedule, Taylor caches, TETC/PDDS, ClusCa) as host
//!   control flow over kernels, the forward pass's [`BranchHook`] under a caching method;
//! * [`error`]: why a run fails ([`PipelineError`]);
//! * [`Pipeline`]: a model on a device, with `forward`, `forward_with_cfg` and `sample`.
//!
//! The host decides control flow and draws the methods' random numbers (per-row ChaCha8
//! generators, as the reference); every tensor operation runs in a kernel. Results agree with
//! `resca_reference` within float rounding (see `host/tests/sim_methods.rs`).

pub mod caching_engine;
pub mod device;
pub mod error;
pub mod gemm_plan;
pub mod launch;
pub mod model;

use ndarray::{Array4, Array5, ArrayView4, Axis, s};
use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_reference::cache::{ClusteringRecord, MethodConfig, MethodKind};
use resca_reference::ddim::DdimSchedule;
use resca_reference::flops::StepWork;
use resca_reference::sampler::MethodTimings;
use resca_reference::{Dit, Sampler, Trajectory};

pub use caching_engine::CachingEngine;
pub use device::{Buffer, DType, Device, DeviceError, Element, Kernel, KernelCall, Slice};
pub use error::PipelineError;
use model::{Activations, BranchHook, DeviceDit};

/// Extras of a sampling run besides the trajectory.
#[derive(Clone, Debug, Default)]
pub struct SampleOptions {
    /// Clusterings to replay by full-step index (ResCa, ClusCa).
    pub replay: Vec<ClusteringRecord>,
    /// Read back every clustering (labels, proxies, smoothed similarity) for inspection.
    pub record_clusterings: bool,
}

/// A finished sampling run.
#[derive(Clone, Debug)]
pub struct SampleOutput {
    pub trajectory: Trajectory,
    /// Time spent clustering and in simulated denoising (zero for the uncached methods).
    pub timings: MethodTimings,
    /// The clusterings, when recorded.
    pub history: Vec<ClusteringRecord>,
}

/// The float32 coefficients of DDIM step `s`, computed in the reference's operation order.
pub fn ddim_coefficients(schedule: &DdimSchedule, s: usize) -> DdimCoefficients {
    let abar = schedule.alphas_cumprod[s];
    let abar_prev = schedule.alphas_cumprod_prev[s] as f32;
    DdimCoefficients {
        recip: (1.0 / abar).sqrt() as f32,
        recip_m1: (1.0 / abar - 1.0).sqrt() as f32,
        sqrt_prev: abar_prev.sqrt(),
        sqrt_one_minus_prev: (1.0 - abar_prev).sqrt(),
    }
}

/// A DiT on a device.
pub struct Pipeline<'m, D: Device> {
    pub dev: D,
    model: &'m Dit,
    weights: DeviceDit,
    activations: Option<Activations>,
}

impl<'m, D: Device> Pipeline<'m, D> {
    /// Uploads `model` to `dev`.
    pub fn new(mut dev: D, model: &'m Dit) -> Result<Self, PipelineError> {
        let weights = DeviceDit::upload(&mut dev, model)?;
        Ok(Self {
            dev,
            model,
            weights,
            activations: None,
        })
    }

    pub fn model(&self) -> &Dit {
        self.model
    }

    /// The activations for `rows` model rows (kept between calls of the same batch size).
    fn activations(&mut self, rows: usize) -> Result<Activations, PipelineError> {
        match self.activations.take() {
            Some(act) if act.rows == rows => Ok(act),
            other => {
                if let Some(old) = other {
                    old.release(&mut self.dev)?;
                }
                Ok(Activations::new(&mut self.dev, &self.model.config, rows)?)
            }
        }
    }

    /// `model(x, t, y)`: (B, out_channels, H, W), every value computed by the kernels.
    pub fn forward(
        &mut self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        labels: &[usize],
    ) -> Result<Array4<f32>, PipelineError> {
        self.model.validate_inputs(x, timesteps, labels)?;
        let act = self.activations(x.dim().0)?;
        let result = self.forward_rows(&act, x, timesteps, labels, None);
        self.activations = Some(act);
        result
    }

    /// `forward_with_cfg` as upstream: the batch `[x; x]` from the first half of `x`, labels
    /// `[y; null]` as given, guidance on channels 0..3 by the `cfg_mix` kernel.
    pub fn forward_with_cfg(
        &mut self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        labels: &[usize],
        cfg_scale: f32,
    ) -> Result<Array4<f32>, PipelineError> {
        self.model.validate_inputs(x, timesteps, labels)?;
        resca_reference::model::check_cfg_scale(cfg_scale)?;
        let b = x.dim().0;
        if !b.is_multiple_of(2) {
            return Err(
                resca_reference::Error::Input(format!("a guided batch needs an even size ([x; x]), got {b}")).into(),
            );
        }
        let act = self.activations(b)?;
        let result = self.forward_rows(&act, x, timesteps, labels, Some(cfg_scale));
        self.activations = Some(act);
        result
    }

    fn forward_rows(
        &mut self,
        act: &Activations,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        labels: &[usize],
        cfg_scale: Option<f32>,
    ) -> Result<Array4<f32>, PipelineError> {
        let c = &self.model.config;
        let b = x.dim().0;
        let image = x.as_standard_layout();
        let image = image.as_slice().expect("standard layout");
        let half_len = image.len() / 2;
        match cfg_scale {
            Some(_) => {
                self.dev.upload(act.image.range(0, half_len), &image[..half_len])?;
                self.dev
                    .upload(act.image.range(half_len, half_len), &image[..half_len])?;
            }
            None => self.dev.upload(act.image.all(), image)?,
        }
        let labels_u32: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
        self.dev.upload(act.labels.all(), &labels_u32)?;
        model::forward(&mut self.dev, &self.weights, act, None, timesteps)?;
        let (oc, side) = (c.out_channels(), c.input_size);
        if let Some(scale) = cfg_scale {
            launch::cfg_mix(&mut self.dev, act.out.all(), b / 2, oc, side * side, scale)?;
        }
        let out = self.dev.download_vec(act.out.all())?;
        if !out.iter().all(|v| v.is_finite()) {
            let input = match cfg_scale {
                Some(_) => resca_reference::model::guided_input(x)?,
                None => x.to_owned(),
            };
            let error =
                resca_reference::sampler::forward_divergence(self.model, input.view(), timesteps, labels, cfg_scale);
            return Err(error.into());
        }
        Ok(Array4::from_shape_vec((b, oc, side, side), out).expect("sized by the model"))
    }

    /// Runs `sampler` from `noise` (B, C, H, W) with caching `method`, as
    /// `resca_reference::sample` with the method's hook: with `cfg_scale` the batch must be the
    /// guided `[x; x]` with labels `[y; null]`, every step evaluates `forward_with_cfg` and all
    /// rows are integrated. `progress(done, total)` after each step.
    #[allow(clippy::too_many_arguments)] // the arguments of `resca_reference::sample`, plus the method
    pub fn sample(
        &mut self,
        noise: ArrayView4<f32>,
        labels: &[usize],
        cfg_scale: Option<f32>,
        sampler: &Sampler,
        method: &MethodConfig,
        options: SampleOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SampleOutput, PipelineError> {
        let steps = sampler.steps();
        let b = noise.dim().0;
        self.model.validate_inputs(noise, &vec![0.0; b], labels)?;
        if let Some(scale) = cfg_scale {
            resca_reference::model::check_cfg_scale(scale)?;
            if !b.is_multiple_of(2) {
                return Err(resca_reference::Error::Input(format!(
                    "a guided batch needs an even size ([x; x]), got {b}"
                ))
                .into());
            }
        }
        let c = self.model.config.clone();
        let (side, ch, oc) = (c.input_size, c.in_channels, c.out_channels());
        let mut engine = match method.kind {
            MethodKind::Full => None,
            _ => {
                let mut engine = CachingEngine::new(&mut self.dev, method.clone(), &c, b, sampler.orientation())?;
                engine.replay_clusterings(options.replay);
                engine.record_clusterings(options.record_clusterings);
                Some(engine)
            }
        };
        let act = self.activations(b)?;
        let x = self.dev.alloc::<f32>(b * ch * side * side)?;
        let noise = noise.as_standard_layout();
        self.dev.upload(x.all(), noise.as_slice().expect("standard layout"))?;
        let labels_u32: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
        self.dev.upload(act.labels.all(), &labels_u32)?;

        let mut xs = Array5::<f32>::zeros((steps + 1, b, ch, side, side));
        let mut outs = Array5::<f32>::zeros((steps, b, oc, side, side));
        xs.index_axis_mut(Axis(0), 0).assign(&noise);
        let mut work = Vec::with_capacity(steps);
        let mut step_seconds = Vec::with_capacity(steps);
        let half = x.len() / 2;
        for position in 0..steps {
            let started = std::time::Instant::now();
            let info = sampler.step_info(position);
            if let Some(e) = engine.as_mut() {
                e.begin_step(&info);
            }
            match cfg_scale {
                Some(_) => {
                    self.dev.copy(x.range(0, half), act.image.range(0, half))?;
                    self.dev.copy(x.range(0, half), act.image.range(half, half))?;
                }
                None => self.dev.copy(x.all(), act.image.all())?,
            }
            let hook = engine.as_mut().map(|e| e as &mut dyn BranchHook<D>);
            model::forward(&mut self.dev, &self.weights, &act, hook, &vec![info.timestep; b])?;
            if let Some(scale) = cfg_scale {
                launch::cfg_mix(&mut self.dev, act.out.all(), b / 2, oc, side * side, scale)?;
            }
            let pixels = side * side;
            match sampler {
                Sampler::Ddim(schedule) => {
                    let coef = ddim_coefficients(schedule, info.index as usize);
                    launch::ddim_step(&mut self.dev, x.all(), act.out.all(), x.all(), ch, oc, pixels, coef)?
                }
                Sampler::Flow(schedule) => {
                    let dt = (schedule.times[position + 1] - schedule.times[position]) as f32;
                    launch::flow_euler_step(&mut self.dev, x.all(), act.out.all(), x.all(), ch, oc, pixels, dt)?
                }
            }
            let state = self.dev.download_vec(x.all())?;
            let out = self.dev.download_vec(act.out.all())?;
            if !(state.iter().all(|v| v.is_finite()) && out.iter().all(|v| v.is_finite())) {
                // Where it first goes wrong, from the reference's forward of the step's input.
                let before = xs.index_axis(Axis(0), position);
                let input = match cfg_scale {
                    Some(_) => resca_reference::model::guided_input(before)?,
                    None => before.to_owned(),
                };
                let cached_step = engine.as_ref().is_some_and(|e| e.step_work() != StepWork::full(&c));
                let error = match out.iter().all(|v| v.is_finite()) {
                    true => resca_reference::sampler::update_divergence(sampler, position, cfg_scale),
                    false => resca_reference::sampler::sampling_divergence(
                        self.model,
                        sampler,
                        position,
                        input.view(),
                        labels,
                        cfg_scale,
                        cached_step,
                    ),
                };
                self.activations = Some(act);
                self.dev.free(x.id())?;
                if let Some(e) = engine {
                    e.release(&mut self.dev)?;
                }
                return Err(error.into());
            }
            xs.slice_mut(s![position + 1, .., .., .., ..])
                .assign(&ndarray::ArrayView4::from_shape((b, ch, side, side), &state).expect("sized"));
            outs.slice_mut(s![position, .., .., .., ..])
                .assign(&ndarray::ArrayView4::from_shape((b, oc, side, side), &out).expect("sized"));
            work.push(engine.as_ref().map_or(StepWork::full(&c), CachingEngine::step_work));
            step_seconds.push(started.elapsed().as_secs_f64());
            progress(position + 1, steps);
        }
        self.activations = Some(act);
        self.dev.free(x.id())?;
        let (timings, history) = match engine {
            Some(e) => {
                let summary = (e.timings(), e.clustering_history().to_vec());
                e.release(&mut self.dev)?;
                summary
            }
            None => (MethodTimings::default(), Vec::new()),
        };
        Ok(SampleOutput {
            trajectory: Trajectory {
                x: xs,
                model_out: outs,
                work,
                step_seconds,
            },
            timings,
            history,
        })
    }
}
