//! What the subcommands share around a run: the checks of its outputs and memory before it
//! starts, a progress bar on stderr, and printing that survives a closed standard output.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;
use resca_host::limits::check_memory;
pub use resca_host::outputs::print_line;
use resca_host::outputs::{Destination, check_destinations};
use resca_reference::memory::{RunMemory, available_bytes};

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Checks every output the command will write (flag, path if given) before anything runs,
/// against each other and the inputs it reads (`resca_host::outputs`); returns the given
/// outputs' destinations in order.
pub fn check_outputs(outputs: &[(&str, Option<&Path>)], inputs: &[(&str, Option<&Path>)]) -> Result<Vec<Destination>> {
    check_destinations(&given(outputs), &given(inputs))
}

/// The (flag, path) pairs whose path is given.
fn given<'a>(pairs: &[(&'a str, Option<&'a Path>)]) -> Vec<(&'a str, &'a Path)> {
    pairs
        .iter()
        .filter_map(|&(flag, path)| path.map(|p| (flag, p)))
        .collect()
}

/// `--no-memory-check`, shared by the subcommands that run the model.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MemoryCheck {
    /// Run even when the estimate of the memory the run needs exceeds the memory available.
    #[arg(long)]
    pub no_memory_check: bool,
}

impl MemoryCheck {
    /// Fails when `needed` exceeds the memory the machine can give now, unless
    /// `--no-memory-check`; `what` names the run.
    pub fn check(&self, needed: &RunMemory, what: &str) -> Result<()> {
        if self.no_memory_check {
            return Ok(());
        }
        check_memory(needed, available_bytes(), what)
    }
}
