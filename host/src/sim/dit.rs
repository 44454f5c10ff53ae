//! [`SimDit`]: the device-generic [`Pipeline`] on the simulator, with a `&self` interface for
//! tests and tools: every number of its outputs is computed by a kernel body.

use std::cell::RefCell;

use ndarray::{Array4, ArrayView4};
use resca_reference::cache::MethodConfig;
use resca_reference::ddim::DdimSchedule;
use resca_reference::{Dit, DitConfig, Sampler, Trajectory};

use super::SimDevice;
use crate::pipeline::{Pipeline, PipelineError, SampleOptions};

pub use crate::pipeline::ddim_coefficients;

/// Why a simulated run failed.
pub type SimDitError = PipelineError;

/// A DiT whose forward pass runs on the simulated kernels.
pub struct SimDit<'m> {
    pipeline: RefCell<Pipeline<'m, SimDevice>>,
}

impl<'m> SimDit<'m> {
    /// Uploads `model` to a fresh simulated device; fails for shapes the kernels do not cover.
    pub fn new(model: &'m Dit) -> Result<Self, SimDitError> {
        Ok(Self {
            pipeline: RefCell::new(Pipeline::new(SimDevice::new(), model)?),
        })
    }

    pub fn config(&self) -> DitConfig {
        self.pipeline.borrow().model().config.clone()
    }

    /// `model(x, t, y)`: (B, out_channels, H, W).
    pub fn forward(&self, x: ArrayView4<f32>, timesteps: &[f32], labels: &[usize]) -> Result<Array4<f32>, SimDitError> {
        self.pipeline.borrow_mut().forward(x, timesteps, labels)
    }

    /// `forward_with_cfg` as upstream (and the reference).
    pub fn forward_with_cfg(
        &self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        labels: &[usize],
        cfg_scale: f32,
    ) -> Result<Array4<f32>, SimDitError> {
        self.pipeline
            .borrow_mut()
            .forward_with_cfg(x, timesteps, labels, cfg_scale)
    }

    /// A whole DDIM run of the full (uncached) model: with `cfg_scale` the batch must be the
    /// guided `[x; x]` with labels `[y; null]`. `progress(done, total)` after each step.
    pub fn sample_ddim(
        &self,
        noise: ArrayView4<f32>,
        labels: &[usize],
        cfg_scale: Option<f32>,
        schedule: &DdimSchedule,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Trajectory, SimDitError> {
        let sampler = Sampler::Ddim(schedule.clone());
        let output = self.pipeline.borrow_mut().sample(
            noise,
            labels,
            cfg_scale,
            &sampler,
            &MethodConfig::full(),
            SampleOptions::default(),
            progress,
        )?;
        Ok(output.trajectory)
    }
}
