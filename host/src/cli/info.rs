//! `resca info`: what the `cuda` backend would run on.

use anyhow::Result;

/// The CUDA driver and GPUs the `cuda` backend would use (or why there are none).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    super::output::print_line(resca_host::cuda::info_text().trim_end())
}
