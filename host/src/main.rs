//! `resca`: run DiT with residual caching on the CPU reference, the GPU simulator or a CUDA GPU.
//! `resca --help` lists the subcommands; README.md ("The `resca` CLI") describes them, and
//! `src/cli/` holds one module per subcommand.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    resca_reference::memory::retain_freed_memory();
    match cli::Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
