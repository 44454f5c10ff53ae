//! The flags that choose where a run executes: `--backend` and, on the device backends,
//! `--precision` (the arithmetic of the big GEMMs and the attention).

use anyhow::Result;
use resca_host::pipeline::launch::Precision;
use resca_host::run::Backend;

/// `--backend` and `--precision`, shared by the commands that run the network.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct BackendArgs {
    #[arg(long, value_enum, default_value_t = Backend::Reference)]
    pub backend: Backend,
    /// Arithmetic of the token-wise GEMMs and the attention on --backend sim or cuda: exact FP32
    /// (the GPU equals the simulator bit for bit) or tensor cores (docs/gpu.md, "Precision
    /// modes"). The reference backend computes in FP32 only.
    #[arg(long, value_enum, value_name = "exact|tf32x3|tf32|bf16", default_value_t = Precision::Exact)]
    pub precision: Precision,
}

impl BackendArgs {
    /// Fails, before any work, for a precision the backend does not compute in.
    pub fn check(&self) -> Result<()> {
        self.backend.check_precision(self.precision)
    }
}
