//! `resca info`: what the `cuda` backend would run on.

use anyhow::Result;

/// The CUDA driver and GPUs the `cuda` backend would use (or why there are none).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    print!("{}", resca_host::cuda::info_text());
    Ok(())
}
