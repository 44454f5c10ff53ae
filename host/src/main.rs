//! `resca`: DiT sampling with residual caching on the CPU reference, the simulator or a GPU.
//! `resca --help` lists the subcommands; `src/cli/` holds one module per subcommand.

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
