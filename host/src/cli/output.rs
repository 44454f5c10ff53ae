//! What the subcommands share in writing their results: a progress bar on stderr and atomic text
//! files.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;

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

/// Writes a text file atomically (temporary name, then rename).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    let temp = resca_reference::safetensors_file::temporary_sibling(path);
    let written = std::fs::write(&temp, text).map_err(|source| resca_reference::Error::Io {
        path: path.to_path_buf(),
        source,
    });
    resca_reference::safetensors_file::finish_atomic_write(path, &temp, written)?;
    Ok(())
}
