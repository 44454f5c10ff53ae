//! Why a pipeline run fails.

use super::device::DeviceError;

/// Why a pipeline run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A device operation failed (a kernel check, a driver error, a buffer that does not fit).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Bad inputs or method settings, as the reference reports them.
    #[error(transparent)]
    Model(#[from] resca_reference::Error),
    /// A model or setting the kernels do not support.
    #[error("the kernel backend does not support this: {0}")]
    Unsupported(String),
}
