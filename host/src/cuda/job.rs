//! CLI jobs on the CUDA backend (`--backend cuda`): the simulator's jobs on a [`CudaDevice`].
//! Without a driver or GPU they fail with [`super::CudaUnavailable`]'s message before any work.

use anyhow::Result;
use ndarray::{Array4, ArrayView4};
use resca_reference::Dit;
use resca_reference::cache::{ClusteringRecord, MethodConfig};

use super::CudaDevice;
use crate::run::{SampleJob, SampleResult};
use crate::sim::job::{forward_on_device, run_on_device};

/// Opens the default GPU; the error says why there is none.
pub fn open() -> Result<CudaDevice> {
    CudaDevice::open_default().map_err(|e| anyhow::anyhow!("--backend cuda: {e}"))
}

/// Runs `job` with caching `method` on the GPU (see `sim::job::run_sim`).
pub fn run_cuda(
    model: &Dit,
    job: &SampleJob,
    method: &MethodConfig,
    replay: Vec<ClusteringRecord>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SampleResult> {
    run_on_device(open()?, model, job, method, replay, progress)
}

/// `model(x, t, y)` (or `forward_with_cfg` at `cfg_scale`) on the GPU.
pub fn forward_cuda(
    model: &Dit,
    x: ArrayView4<f32>,
    timesteps: &[f32],
    labels: &[usize],
    cfg_scale: Option<f32>,
) -> Result<Array4<f32>> {
    forward_on_device(open()?, model, x, timesteps, labels, cfg_scale)
}
