//! A step hook that records what another one does: the final block's output of one batch row at
//! every step (the tokens' denoising trajectories in feature space).

use ndarray::{Array2, Array3, ArrayView3, Axis};
use resca_reference::flops::StepWork;
use resca_reference::model::{BranchHook, BranchInput};
use resca_reference::sampler::{MethodTimings, StepHook, StepInfo};
use resca_reference::{DitConfig, Result};

/// Wraps `inner`, keeping row `row`'s final-block output (N, D) of every step.
pub struct Recording<'a> {
    inner: &'a mut dyn StepHook,
    last_block: usize,
    row: usize,
    /// One (N, D) state per step, in sampling order.
    pub states: Vec<Array2<f32>>,
}

impl<'a> Recording<'a> {
    pub fn new(inner: &'a mut dyn StepHook, config: &DitConfig, row: usize) -> Self {
        Self {
            inner,
            last_block: config.depth - 1,
            row,
            states: Vec::new(),
        }
    }

    /// The recorded states as (steps, N, D).
    pub fn into_states(self) -> Array3<f32> {
        let views: Vec<_> = self.states.iter().map(|s| s.view()).collect();
        ndarray::stack(Axis(0), &views).expect("one state per step, all (N, D)")
    }
}

impl BranchHook for Recording<'_> {
    fn branch(&mut self, input: &BranchInput<'_>) -> Array3<f32> {
        self.inner.branch(input)
    }

    fn after_block(&mut self, block: usize, x: ArrayView3<f32>) {
        self.inner.after_block(block, x);
        if block == self.last_block {
            self.states.push(x.index_axis(Axis(0), self.row).to_owned());
        }
    }
}

impl StepHook for Recording<'_> {
    fn begin_step(&mut self, step: &StepInfo) -> Result<()> {
        self.inner.begin_step(step)
    }

    fn timings(&self) -> MethodTimings {
        self.inner.timings()
    }

    fn last_step_work(&self, config: &DitConfig) -> StepWork {
        self.inner.last_step_work(config)
    }
}
