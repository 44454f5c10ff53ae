//! The sampling loop shared by both samplers: it evaluates the (optionally guided) model at every
//! step through a [`StepHook`], which is where the caching methods decide what to compute.

use ndarray::{Array4, Array5, ArrayView4, Axis, s};

use crate::config::DitConfig;
use crate::ddim::DdimSchedule;
use crate::error::{Error, Result};
use crate::flops::StepWork;
use crate::flow::FlowSchedule;
use crate::model::{BranchHook, Dit, FullCompute};

/// Which sampler integrates the trajectory.
#[derive(Clone, Debug)]
pub enum Sampler {
    Ddim(DdimSchedule),
    Flow(FlowSchedule),
}

/// Direction of the sampler's own step counter: DDIM's step index counts DOWN from S-1 to 0,
/// the flow sampler's counts UP from 0 to S-1 (SPEC.md 5.4 flips the residual signs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orientation {
    CountingDown,
    CountingUp,
}

/// Where the loop is: `position` counts the steps taken (0 first), `index` is the sampler's own
/// step index (DDIM: S-1-position), `timestep` the model's time input.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    pub position: usize,
    pub steps: usize,
    pub index: i64,
    pub orientation: Orientation,
    pub timestep: f32,
}

/// Wall time a method spent outside the network proper (the supplement's Fig. S2 split).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MethodTimings {
    /// TETC / K-means on full steps.
    pub clustering_s: f64,
    /// PDDS (or any other simulated update of tokens that were not computed).
    pub simulated_s: f64,
}

/// A per-step [`BranchHook`]: told when each step begins, so it can decide full or cached steps.
pub trait StepHook: BranchHook {
    fn begin_step(&mut self, step: &StepInfo) -> Result<()>;
    /// Time spent in clustering and simulated denoising so far.
    fn timings(&self) -> MethodTimings {
        MethodTimings::default()
    }
    /// What the step that just ran computed, per image (for FLOPs accounting).
    fn last_step_work(&self, config: &DitConfig) -> StepWork {
        StepWork::full(config)
    }
}

impl StepHook for FullCompute {
    fn begin_step(&mut self, _: &StepInfo) -> Result<()> {
        Ok(())
    }
}

/// Every state and model output of a run.
#[derive(Clone, Debug)]
pub struct Trajectory {
    /// (steps + 1, B, C, H, W): `x[0]` the noise, `x[k]` the input of step k, `x[steps]` the sample.
    pub x: Array5<f32>,
    /// (steps, B, out_channels, H, W): the (guided) model output of each step.
    pub model_out: Array5<f32>,
    /// What each step computed, per image.
    pub work: Vec<StepWork>,
    /// Wall time of each step (model and sampler update), seconds.
    pub step_seconds: Vec<f64>,
}

impl Sampler {
    pub fn steps(&self) -> usize {
        match self {
            Sampler::Ddim(s) => s.steps(),
            Sampler::Flow(s) => s.steps(),
        }
    }

    pub fn orientation(&self) -> Orientation {
        match self {
            Sampler::Ddim(_) => Orientation::CountingDown,
            Sampler::Flow(_) => Orientation::CountingUp,
        }
    }

    /// The step at sampling position `position`.
    pub fn step_info(&self, position: usize) -> StepInfo {
        let steps = self.steps();
        let (index, timestep) = match self {
            Sampler::Ddim(s) => {
                let index = steps - 1 - position;
                (index as i64, s.timestep_map[index] as f32)
            }
            Sampler::Flow(s) => (position as i64, s.model_timestep(position)),
        };
        StepInfo {
            position,
            steps,
            index,
            orientation: self.orientation(),
            timestep,
        }
    }

    /// Advances `x` by one step given the model output (its first C channels drive the update).
    fn advance(&self, info: &StepInfo, x: ArrayView4<f32>, model_out: ArrayView4<f32>) -> Array4<f32> {
        let drive = model_out.slice(s![.., ..x.dim().1, .., ..]);
        match self {
            Sampler::Ddim(s) => s.step(info.index as usize, x, drive),
            Sampler::Flow(s) => s.step(info.position, x, drive),
        }
    }
}

/// Runs the sampler from `noise` (B, C, H, W). With `cfg_scale`, the batch must already be the
/// guided `[x; x]` with labels `[y; null]` (as DiT's sample.py builds it) and every step calls
/// `forward_with_cfg`; all rows are integrated, exactly as upstream. `progress(done, total)` is
/// called after each step.
pub fn sample(
    model: &Dit,
    noise: ArrayView4<f32>,
    labels: &[usize],
    cfg_scale: Option<f32>,
    sampler: &Sampler,
    hook: &mut dyn StepHook,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Trajectory> {
    let steps = sampler.steps();
    let b = noise.dim().0;
    model.validate_inputs(noise, &vec![0.0; b], labels)?;
    if let Some(scale) = cfg_scale
        && !scale.is_finite()
    {
        return Err(Error::Input(format!("--cfg-scale {scale} is not finite")));
    }
    let c = &model.config;
    let (side, out_ch) = (c.input_size, c.out_channels());
    let mut xs = Array5::<f32>::zeros((steps + 1, b, c.in_channels, side, side));
    let mut outs = Array5::<f32>::zeros((steps, b, out_ch, side, side));
    xs.index_axis_mut(Axis(0), 0).assign(&noise);
    let mut x = noise.to_owned();
    let mut work = Vec::with_capacity(steps);
    let mut step_seconds = Vec::with_capacity(steps);
    for position in 0..steps {
        let started = std::time::Instant::now();
        let info = sampler.step_info(position);
        hook.begin_step(&info)?;
        let timesteps = vec![info.timestep; b];
        let out = match cfg_scale {
            Some(scale) => model.forward_with_cfg_hooked(x.view(), &timesteps, labels, scale, hook)?,
            None => model.forward_hooked(x.view(), &timesteps, labels, hook)?,
        };
        x = sampler.advance(&info, x.view(), out.view());
        xs.index_axis_mut(Axis(0), position + 1).assign(&x);
        outs.index_axis_mut(Axis(0), position).assign(&out);
        work.push(hook.last_step_work(c));
        step_seconds.push(started.elapsed().as_secs_f64());
        progress(position + 1, steps);
    }
    Ok(Trajectory {
        x: xs,
        model_out: outs,
        work,
        step_seconds,
    })
}
