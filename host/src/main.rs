//! `resca`: run DiT with residual caching on the CPU reference, the GPU simulator or a CUDA GPU.
//! `resca --help` lists the subcommands; README.md ("The `resca` CLI") describes them, and
//! `src/cli/` holds one module per subcommand. docs/bad-input.md says what bad input gets.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use resca_host::outputs::{StdoutError, remove_temporaries_on_signals};

/// The status of a run whose standard output was closed early, as a shell reports a process
/// ended by SIGPIPE (128 + 13), without a message.
const BROKEN_PIPE_STATUS: u8 = 141;

fn main() -> ExitCode {
    // Allocator settings first: they are meant to be made before any thread starts.
    resca_reference::memory::retain_freed_memory();
    remove_temporaries_on_signals();
    match cli::Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<StdoutError>().is_some_and(StdoutError::is_broken_pipe) => {
            ExitCode::from(BROKEN_PIPE_STATUS)
        }
        Err(e) => {
            // A closed standard error must not turn the error into a panic either.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
