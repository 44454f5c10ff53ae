//! The CUDA backend: the committed PTX of `resca-gpu-kernels` (`gpu-kernels/ptx/`, picked by the
//! GPU's compute capability and JIT-compiled by the driver) run by the same pipeline and the same
//! launch sequence as the simulator backend (`crate::pipeline`).
//!
//! * [`driver`]: the CUDA driver through cudarc, loaded at run time: [`probe`] (driver version,
//!   GPUs) and [`driver::Cudarc`];
//! * [`gpu`]: [`GpuDevice`], the pipeline's `Device` over any [`gpu::Driver`] (buffers, checked
//!   launches), so that every binding launches the same way;
//! * [`params`]: each entry point's parameter list and the packing of launch arguments;
//! * [`replay`]: launches recorded on the simulator and replayed on a GPU (per-kernel checks);
//! * `cust_driver` (feature `cust`): the same device over Rust-CUDA's `cust`.
//!
//! Without a driver or GPU every entry point returns [`CudaUnavailable`] (a clear message, never
//! a panic); see `resca info`.

#[cfg(feature = "cust")]
pub mod cust_driver;
pub mod driver;
pub mod gpu;
pub mod params;
pub mod replay;

pub use driver::{CudaInfo, CudaUnavailable, GpuInfo, probe};
pub use gpu::{FunctionAttributes, GpuDevice};

use crate::pipeline::DeviceError;

/// The pipeline's device on a GPU through cudarc.
pub type CudaDevice = GpuDevice<driver::Cudarc>;

/// Why a CUDA device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Unavailable(#[from] CudaUnavailable),
    /// The driver is there, but loading the module or a kernel failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads the kernels (the sm_90 module on sm_90 and later, else the
    /// sm_80 one).
    pub fn open(ordinal: usize) -> Result<Self, OpenError> {
        let info = probe()?;
        let (gpu, module) = driver::select_gpu(&info, ordinal)?;
        let description = format!(
            "{} (sm_{}{}, driver {}, PTX {})",
            gpu.name,
            gpu.compute_capability.0,
            gpu.compute_capability.1,
            info.driver_version_string(),
            module.arch
        );
        let binding = driver::Cudarc::new(ordinal, module).map_err(DeviceError::Backend)?;
        Ok(GpuDevice::new(binding, module, description)?)
    }

    /// The GPU chosen by `RESCA_CUDA_DEVICE` (default 0).
    pub fn open_default() -> Result<Self, OpenError> {
        Self::open(driver::default_ordinal())
    }
}

/// `resca info`: the driver and its GPUs in words, or why there are none.
pub fn info_text() -> String {
    match probe() {
        Ok(info) => {
            let mut text = format!(
                "CUDA driver {} ({}), {} GPU(s):\n",
                info.driver_version_string(),
                info.driver_version,
                info.devices.len()
            );
            for gpu in &info.devices {
                text += &format!(
                    "  [{}] {}: sm_{}{}, {:.1} GiB, {} SMs, kernels: {}\n",
                    gpu.ordinal,
                    gpu.name,
                    gpu.compute_capability.0,
                    gpu.compute_capability.1,
                    gpu.total_memory_bytes as f64 / (1u64 << 30) as f64,
                    gpu.multiprocessors,
                    // What the backend will load: RESCA_PTX_ARCH included, or why not.
                    driver::chosen_module(gpu.compute_capability.0, gpu.compute_capability.1)
                        .map_or_else(|e| format!("none ({e})"), |m| format!("{} PTX", m.arch))
                );
            }
            text
        }
        Err(e) => format!("{e}\nthe cuda backend is unavailable; the reference and sim backends run without it\n"),
    }
}
