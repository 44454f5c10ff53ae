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
use model::{Activations, BranchHook, Conditioning, DeviceDit, RunModulations};

/// Extras of a sampling run besides the trajectory.
#[derive(Clone, Debug, Default)]
pub struct SampleOptions {
    /// Clusterings to replay by full-step index (ResCa, ClusCa).
    pub replay: Vec<ClusteringRecord>,
    /// Read back every clustering (labels, proxies, smoothed similarity) for inspection.
    pub record_clusterings: bool,
    /// Whether sparse steps run as captured graphs.
    pub graphs: GraphMode,
}

/// Whether a caching method's sparse steps run as graphs ([`Device::begin_capture`]): a sparse
/// step's device work (the copy of the state into the model input, the forward with its
/// predictions, proxies and PDDS, guidance) is captured once and replayed at the next sparse
/// steps, while its key ([`CachingEngine::sparse_step_key`]) stays the same. The results are
/// those of the direct launches, bit for bit (the launches and their order are the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GraphMode {
    /// Graphs where they pay off ([`Device::graphs_pay_off`]: on a GPU, whose launches cost
    /// host time each; not on the simulator, whose launches run when issued anyway).
    #[default]
    Auto,
    /// Every launch issued directly (debugging, comparisons).
    Off,
    /// Sparse steps as graphs on any device that captures them.
    On,
    /// As `On`, and every sparse step is captured again (not run) and checked against the graph
    /// it replays ([`Graph::check_replayable`]): a launch parameter that changed between steps
    /// without changing the key is an error naming the kernel and the parameter (tests).
    Checked,
}

impl GraphMode {
    /// The environment variable that sets the mode of the command line's runs.
    pub const ENV: &'static str = "RESCA_GRAPHS";

    /// `auto`, `off`, `on` or `checked`.
    pub fn parse(name: &str) -> Result<Self, PipelineError> {
        match name {
            "auto" => Ok(GraphMode::Auto),
            "off" => Ok(GraphMode::Off),
            "on" => Ok(GraphMode::On),
            "checked" => Ok(GraphMode::Checked),
            _ => Err(PipelineError::Unsupported(format!(
                "{}={name}: not a graph mode (auto, off, on, checked)",
                Self::ENV
            ))),
        }
    }

    /// The mode [`GraphMode::ENV`] names, `Auto` where it is not set (`off` launches every
    /// kernel directly, and times the sparse steps' simulated denoising).
    pub fn from_env() -> Result<Self, PipelineError> {
        match std::env::var(Self::ENV) {
            Ok(name) => Self::parse(&name),
            Err(_) => Ok(GraphMode::Auto),
        }
    }
}

/// A sparse step's graph and the host state it was captured in and left behind.
struct SparseStepGraph {
    /// [`CachingEngine::sparse_step_key`] before the capture.
    key: Vec<u64>,
    graph: device::Graph,
    /// [`CachingEngine::stored_counts`] after the capture: the engine's state after a replay.
    stored_after: Vec<u64>,
}

/// The device work of one step up to the sampler's update: the state `x` copied into the model
/// input (both halves of a guided batch), the forward, the guidance mix.
#[allow(clippy::too_many_arguments)]
fn issue_step<D: Device>(
    dev: &mut D,
    weights: &DeviceDit,
    act: &Activations,
    hook: Option<&mut dyn BranchHook<D>>,
    modulations: model::StepModulations<'_>,
    x: Buffer<f32>,
    cfg_scale: Option<f32>,
    config: &resca_reference::DitConfig,
) -> Result<(), PipelineError> {
    let half = x.len() / 2;
    match cfg_scale {
        Some(_) => {
            dev.copy(x.range(0, half), act.image.range(0, half))?;
            dev.copy(x.range(0, half), act.image.range(half, half))?;
        }
        None => dev.copy(x.all(), act.image.all())?,
    }
    model::forward(dev, weights, act, hook, Conditioning::Precomputed(modulations))?;
    if let Some(scale) = cfg_scale {
        let (side, oc) = (config.input_size, config.out_channels());
        launch::cfg_mix(dev, act.out.all(), act.rows / 2, oc, side * side, scale)?;
    }
    Ok(())
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
    /// Uploads `model` to `dev` for the exact kernels.
    pub fn new(dev: D, model: &'m Dit) -> Result<Self, PipelineError> {
        Self::with_precision(dev, model, launch::Precision::Exact)
    }

    /// Uploads `model` to `dev` with its big GEMMs in `precision`.
    pub fn with_precision(mut dev: D, model: &'m Dit, precision: launch::Precision) -> Result<Self, PipelineError> {
        let weights = DeviceDit::upload_with_precision(&mut dev, model, precision)?;
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
        model::forward(
            &mut self.dev,
            &self.weights,
            act,
            None,
            Conditioning::Timesteps(timesteps),
        )?;
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
        let graphs = engine.is_some()
            && match options.graphs {
                GraphMode::Auto => self.dev.graphs_pay_off(),
                GraphMode::Off => false,
                GraphMode::On | GraphMode::Checked => true,
            };
        if let Some(e) = engine.as_mut() {
            e.time_sparse_spans(!graphs);
        }
        let mut sparse_graph: Option<SparseStepGraph> = None;
        let act = self.activations(b)?;
        let x = self.dev.alloc::<f32>(b * ch * side * side)?;
        let noise = noise.as_standard_layout();
        self.dev.upload(x.all(), noise.as_slice().expect("standard layout"))?;
        let labels_u32: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
        self.dev.upload(act.labels.all(), &labels_u32)?;
        let timesteps: Vec<f32> = (0..steps).map(|p| sampler.step_info(p).timestep).collect();
        let modulations = RunModulations::new(&mut self.dev, &self.weights, &timesteps, &labels_u32)?;

        let mut xs = Array5::<f32>::zeros((steps + 1, b, ch, side, side));
        let mut outs = Array5::<f32>::zeros((steps, b, oc, side, side));
        xs.index_axis_mut(Axis(0), 0).assign(&noise);
        let mut work = Vec::with_capacity(steps);
        let mut step_seconds = Vec::with_capacity(steps);
        for position in 0..steps {
            let started = std::time::Instant::now();
            let info = sampler.step_info(position);
            if let Some(e) = engine.as_mut() {
                e.begin_step(&info);
                e.prepare_step(&mut self.dev)?;
            }
            match engine.as_mut() {
                Some(e) if graphs && e.is_sparse() => {
                    let staged = modulations.staged(&mut self.dev, position)?;
                    let key = e.sparse_step_key()?;
                    let current = sparse_graph.as_ref().filter(|g| g.key == key);
                    match current {
                        Some(g) if options.graphs != GraphMode::Checked => {
                            self.dev.launch_graph(&g.graph)?;
                            e.set_stored_counts(&g.stored_after)?;
                        }
                        _ => {
                            // Capture (the work is not run yet), then replay what was captured.
                            self.dev.begin_capture()?;
                            let hook: &mut dyn BranchHook<D> = &mut *e;
                            let issued =
                                issue_step(&mut self.dev, &self.weights, &act, Some(hook), staged, x, cfg_scale, &c);
                            let captured = self.dev.end_capture()?;
                            issued?;
                            let stored_after = e.stored_counts();
                            match current {
                                Some(g) => {
                                    g.graph.check_replayable(&captured.ops)?;
                                    if g.stored_after != stored_after {
                                        return Err(PipelineError::Unsupported(format!(
                                            "step {position}: the sparse step's graph left the stored-factor counts \
                                             {:?}, the step {stored_after:?}",
                                            g.stored_after
                                        )));
                                    }
                                    self.dev.launch_graph(&g.graph)?;
                                }
                                None => {
                                    self.dev.launch_graph(&captured)?;
                                    sparse_graph = Some(SparseStepGraph {
                                        key,
                                        graph: captured,
                                        stored_after,
                                    });
                                }
                            }
                        }
                    }
                }
                _ => {
                    let hook = engine.as_mut().map(|e| e as &mut dyn BranchHook<D>);
                    let step_modulations = modulations.step(position)?;
                    issue_step(
                        &mut self.dev,
                        &self.weights,
                        &act,
                        hook,
                        step_modulations,
                        x,
                        cfg_scale,
                        &c,
                    )?;
                }
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
                modulations.release(&mut self.dev)?;
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
        modulations.release(&mut self.dev)?;
        let (timings, history) = match engine {
            Some(mut e) => {
                let summary = (e.settle_timings(&mut self.dev)?, e.clustering_history().to_vec());
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
