//! The sampling loop shared by both samplers: it evaluates the (optionally guided) model at every
//! step through a [`StepHook`], which is where the caching methods decide what to compute.

use std::collections::VecDeque;

use ndarray::{Array3, Array4, Array5, ArrayView3, ArrayView4, Axis, s};

use crate::config::DitConfig;
use crate::ddim::DdimSchedule;
use crate::error::{Error, Result};
use crate::flops::StepWork;
use crate::flow::FlowSchedule;
use crate::model::{Branch, BranchHook, BranchInput, Dit, FullCompute, apply_guidance, check_cfg_scale, guided_input};
use crate::ops;

/// Which sampler integrates the trajectory.
#[derive(Clone, Debug)]
pub enum Sampler {
    Ddim(DdimSchedule),
    Flow(FlowSchedule),
}

/// Direction of the sampler's own step counter: DDIM's step index counts DOWN from S-1 to 0, the
/// flow sampler's counts UP from 0 to S-1 (docs/algorithms.md section 5.4 flips the residual
/// signs).
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
    if let Some(scale) = cfg_scale {
        check_cfg_scale(scale)?;
    }
    let c = &model.config;
    let (side, out_ch) = (c.input_size, c.out_channels());
    let mut xs = Array5::<f32>::zeros((steps + 1, b, c.in_channels, side, side));
    let mut outs = Array5::<f32>::zeros((steps, b, out_ch, side, side));
    xs.index_axis_mut(Axis(0), 0).assign(&noise);
    let mut x = noise.to_owned();
    let mut work = Vec::with_capacity(steps);
    let mut step_seconds = Vec::with_capacity(steps);
    let chunk = conditioning_chunk(steps, b);
    let mut conditionings = VecDeque::new();
    for position in 0..steps {
        let started = std::time::Instant::now();
        let info = sampler.step_info(position);
        hook.begin_step(&info)?;
        let timesteps = vec![info.timestep; b];
        let input = match cfg_scale {
            Some(_) => guided_input(x.view())?,
            None => x.clone(),
        };
        model.validate_inputs(input.view(), &timesteps, labels)?;
        if conditionings.is_empty() {
            let features: Vec<_> = (position..(position + chunk).min(steps))
                .map(|p| ops::timestep_features(&vec![sampler.step_info(p).timestep; b]))
                .collect();
            conditionings = model.conditioning_steps(&features, labels).into();
        }
        let cond = conditionings.pop_front().expect("a conditioning per step");
        let mut out = model.forward_conditioned(input.view(), &cond, hook);
        if let Some(scale) = cfg_scale {
            apply_guidance(&mut out, scale);
        }
        let advanced = sampler.advance(&info, x.view(), out.view());
        if !(all_finite(out.iter()) && all_finite(advanced.iter())) {
            let source = match all_finite(out.iter()) {
                true => NonFiniteSource::SamplerUpdate,
                false => match locate_non_finite(model, input.view(), info.timestep, labels, cfg_scale) {
                    NonFiniteSource::NotInFullForward => NonFiniteSource::CachedPrediction,
                    located => located,
                },
            };
            return Err(step_divergence(&info, sampler, source, cfg_scale));
        }
        x = advanced;
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

/// Whether every value is finite.
pub fn all_finite<'a>(mut values: impl Iterator<Item = &'a f32>) -> bool {
    values.all(|v| v.is_finite())
}

/// Where a run first produced a non-finite value (NaN or infinity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonFiniteSource {
    /// The timestep and class conditioning (the embeddings and adaLN modulations).
    Conditioning,
    /// A block branch's output.
    Branch { block: usize, branch: Branch },
    /// A block's gated residual sum (its branch outputs are finite).
    BlockSum { block: usize },
    /// The final layer (adaLN, linear, unpatchify).
    FinalLayer,
    /// Classifier-free guidance's mix of the two halves' outputs.
    Guidance,
    /// The sampler's update of the state (the model output is finite).
    SamplerUpdate,
    /// The caching method's prediction: a full forward of the same input stays finite.
    CachedPrediction,
    /// A device backend's result: the reference's full forward of the same input stays finite.
    Backend,
    /// Not found in a full forward of the same input (the caller says which case it is).
    NotInFullForward,
}

impl NonFiniteSource {
    fn describe(&self, cfg_scale: Option<f32>) -> String {
        let branch_name = |branch: &Branch| match branch {
            Branch::Attention => "attention",
            Branch::Mlp => "MLP",
        };
        match self {
            Self::Conditioning => "the timestep and class conditioning (adaLN modulation)".to_string(),
            Self::Branch { block, branch } => format!("block {block}'s {} branch", branch_name(branch)),
            Self::BlockSum { block } => format!("block {block}'s gated residual sum"),
            Self::FinalLayer => "the final layer".to_string(),
            Self::Guidance => format!(
                "the classifier-free guidance mix at --cfg-scale {}",
                cfg_scale.unwrap_or(f32::NAN)
            ),
            Self::SamplerUpdate => "the sampler's update of the state".to_string(),
            Self::CachedPrediction => {
                "the caching method's prediction (a full forward of the same input stays finite)".to_string()
            }
            Self::Backend => {
                "the backend's result (the CPU reference's full forward of the same input stays finite)".to_string()
            }
            Self::NotInFullForward => "a place a full forward of the same input does not reach".to_string(),
        }
    }

    fn advice(&self, cfg_scale: Option<f32>) -> String {
        let lower_scale = cfg_scale.map_or(String::new(), |s| format!(", or lower --cfg-scale (now {s})"));
        match self {
            Self::Guidance => "lower --cfg-scale, or check the weights".to_string(),
            Self::CachedPrediction => "use a shorter --interval or another method".to_string(),
            Self::Backend => "please report it with the command that produced it".to_string(),
            _ => {
                format!("the weights drive the activations beyond float32's range: check the weights file{lower_scale}")
            }
        }
    }
}

/// The error of step `info` producing a non-finite value first in `source`.
fn step_divergence(info: &StepInfo, sampler: &Sampler, source: NonFiniteSource, cfg_scale: Option<f32>) -> Error {
    let name = match sampler {
        Sampler::Ddim(_) => "DDIM",
        Sampler::Flow(_) => "flow",
    };
    Error::Diverged(format!(
        "{name} step {} of {} (timestep {}) produced a non-finite value (NaN or infinity), first in {}; {}",
        info.position + 1,
        info.steps,
        info.timestep,
        source.describe(cfg_scale),
        source.advice(cfg_scale)
    ))
}

/// The error of a sampling step (of a device backend) whose model output is finite but whose
/// updated state is not.
pub fn update_divergence(sampler: &Sampler, position: usize, cfg_scale: Option<f32>) -> Error {
    step_divergence(
        &sampler.step_info(position),
        sampler,
        NonFiniteSource::SamplerUpdate,
        cfg_scale,
    )
}

/// The error of a sampling step (of a device backend) whose result is not finite: where the
/// reference's full forward of the same input first goes non-finite (`input`: the step's model
/// input, the guided `[x; x]` included), or that it stays finite.
pub fn sampling_divergence(
    model: &Dit,
    sampler: &Sampler,
    position: usize,
    input: ArrayView4<f32>,
    labels: &[usize],
    cfg_scale: Option<f32>,
    cached_step: bool,
) -> Error {
    let info = sampler.step_info(position);
    let source = match locate_non_finite(model, input, info.timestep, labels, cfg_scale) {
        NonFiniteSource::NotInFullForward if cached_step => NonFiniteSource::CachedPrediction,
        NonFiniteSource::NotInFullForward => NonFiniteSource::Backend,
        located => located,
    };
    step_divergence(&info, sampler, source, cfg_scale)
}

/// The error of one forward pass (`model(x, t, y)`, guided at `cfg_scale` if given, `x` the
/// model input) whose output is not finite, with where it first goes non-finite.
pub fn forward_divergence(
    model: &Dit,
    x: ArrayView4<f32>,
    timesteps: &[f32],
    labels: &[usize],
    cfg_scale: Option<f32>,
) -> Error {
    let b = x.dim().0;
    let features = ops::timestep_features(timesteps);
    let source = locate_in_forward(model, x, features.view(), labels, cfg_scale, b);
    let source = match source {
        NonFiniteSource::NotInFullForward => NonFiniteSource::Backend,
        located => located,
    };
    Error::Diverged(format!(
        "the forward pass produced a non-finite value (NaN or infinity), first in {}; {}",
        source.describe(cfg_scale),
        source.advice(cfg_scale)
    ))
}

/// Runs the full forward of `input` (model rows, the guided `[x; x]` included) at `timestep`
/// and says where a value first goes non-finite: the conditioning, a block's branch or sum, the
/// final layer, the guidance mix, or nowhere ([`NonFiniteSource::NotInFullForward`]).
pub fn locate_non_finite(
    model: &Dit,
    input: ArrayView4<f32>,
    timestep: f32,
    labels: &[usize],
    cfg_scale: Option<f32>,
) -> NonFiniteSource {
    let b = input.dim().0;
    let features = ops::timestep_features(&vec![timestep; b]);
    locate_in_forward(model, input, features.view(), labels, cfg_scale, b)
}

fn locate_in_forward(
    model: &Dit,
    input: ArrayView4<f32>,
    features: ndarray::ArrayView2<f32>,
    labels: &[usize],
    cfg_scale: Option<f32>,
    rows: usize,
) -> NonFiniteSource {
    if labels.len() != rows {
        return NonFiniteSource::NotInFullForward;
    }
    let cond = model.conditioning(features, labels);
    let conditioning_finite = cond.block_modulation.iter().all(|m| all_finite(m.iter()))
        && all_finite(cond.final_modulation.iter())
        && all_finite(cond.silu_c.iter());
    if !conditioning_finite {
        return NonFiniteSource::Conditioning;
    }
    let mut watch = FiniteWatch::default();
    let mut out = model.forward_conditioned(input, &cond, &mut watch);
    if let Some(first) = watch.first {
        return first;
    }
    if !all_finite(out.iter()) {
        return NonFiniteSource::FinalLayer;
    }
    if let Some(scale) = cfg_scale {
        apply_guidance(&mut out, scale);
        if !all_finite(out.iter()) {
            return NonFiniteSource::Guidance;
        }
    }
    NonFiniteSource::NotInFullForward
}

/// The full forward, noting the first branch output or block sum that is not finite.
#[derive(Default)]
struct FiniteWatch {
    first: Option<NonFiniteSource>,
}

impl BranchHook for FiniteWatch {
    fn branch(&mut self, input: &BranchInput<'_>) -> Array3<f32> {
        let out = input.compute();
        if self.first.is_none() && !all_finite(out.iter()) {
            self.first = Some(NonFiniteSource::Branch {
                block: input.block,
                branch: input.branch,
            });
        }
        out
    }

    fn after_block(&mut self, block: usize, x: ArrayView3<f32>) {
        if self.first.is_none() && !all_finite(x.iter()) {
            self.first = Some(NonFiniteSource::BlockSum { block });
        }
    }
}

/// Rows of one conditioning product: a sampler computes the conditioning (adaLN modulations)
/// of this many batch rows' worth of steps at once. 64 rows keep the product in the packed
/// kernel's few-row regime and the table small (XL/2: 50 MB), and read the conditioning
/// weights (0.9 GB of XL/2's 2.7 GB) twice per 50-step guided run instead of 50 times.
const CONDITIONING_ROWS: usize = 64;
// A step's conditioning must not depend on the steps computed with it.
const _: () = assert!(CONDITIONING_ROWS <= crate::gemm::SAME_BITS_ROWS);

/// Steps per conditioning product for `steps` steps of `rows` batch rows: as many as
/// [`CONDITIONING_ROWS`] allow, split evenly (50 guided steps: 25 + 25, not 32 + 18).
fn conditioning_chunk(steps: usize, rows: usize) -> usize {
    let most = (CONDITIONING_ROWS / rows.max(1)).max(1);
    steps.div_ceil(steps.div_ceil(most).max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddim::DdimSchedule;

    #[test]
    fn conditioning_chunks_split_the_steps_evenly_within_the_row_budget() {
        // (steps, rows) -> steps per product.
        assert_eq!(conditioning_chunk(50, 2), 25);
        assert_eq!(conditioning_chunk(50, 1), 50);
        assert_eq!(conditioning_chunk(50, 16), 4);
        assert_eq!(conditioning_chunk(7, 200), 1);
        assert_eq!(conditioning_chunk(1, 2), 1);
        for (steps, rows) in [(50, 2), (50, 16), (250, 4), (3, 64)] {
            let chunk = conditioning_chunk(steps, rows);
            assert!(
                chunk * rows <= CONDITIONING_ROWS.max(rows),
                "{steps} steps of {rows} rows"
            );
            assert!(chunk * steps.div_ceil(chunk) >= steps);
        }
    }

    #[test]
    fn conditioning_of_many_steps_equals_each_step_alone_bit_for_bit() {
        let model = Dit::random(DitConfig::preset("tiny").unwrap(), 3).unwrap();
        let schedule = Sampler::Ddim(DdimSchedule::new(7).unwrap());
        let labels = [1, model.config.null_label()];
        let features: Vec<_> = (0..7)
            .map(|p| ops::timestep_features(&[schedule.step_info(p).timestep; 2]))
            .collect();
        let together = model.conditioning_steps(&features, &labels);
        assert_eq!(together.len(), 7);
        for (step, cond) in together.iter().enumerate() {
            let alone = model.conditioning(features[step].view(), &labels);
            assert_eq!(cond.silu_c, alone.silu_c, "step {step}");
            assert_eq!(cond.block_modulation, alone.block_modulation, "step {step}");
            assert_eq!(cond.final_modulation, alone.final_modulation, "step {step}");
        }
    }
}
