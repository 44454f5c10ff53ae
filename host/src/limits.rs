//! Bounds on the sizes a command line asks for, checked before anything is allocated: samples
//! per run, sampling steps, and the memory a run needs against the memory the machine has.

use anyhow::{Result, bail};
use resca_reference::memory::{RunMemory, available_bytes};

/// Samples in one run (`--batch`, `--seeds` x classes, the rows of `--noise`).
pub const MAX_SAMPLES: usize = 65_536;
/// Sampling steps (DDIM's schedule allows at most its 1000 training timesteps anyway).
pub const MAX_STEPS: usize = 100_000;

/// Parses a sample count: an integer from 1 to [`MAX_SAMPLES`].
pub fn sample_count(text: &str) -> Result<usize, String> {
    bounded(text, MAX_SAMPLES, "samples per run")
}

/// Parses a step count: an integer from 1 to [`MAX_STEPS`].
pub fn step_count(text: &str) -> Result<usize, String> {
    bounded(text, MAX_STEPS, "steps")
}

/// Parses a seed: an integer from 0 to 2^64 - 1 (a negative number is named as such, not taken
/// for a flag).
pub fn seed(text: &str) -> Result<u64, String> {
    match text.trim().parse::<i128>() {
        Ok(v) if v < 0 => Err(format!("{v} is negative; a seed is an integer from 0 to {}", u64::MAX)),
        Ok(v) => u64::try_from(v).map_err(|_| format!("{v} is above the largest seed, {}", u64::MAX)),
        Err(_) => Err(format!("`{text}` is not an integer")),
    }
}

fn bounded(text: &str, limit: usize, what: &str) -> Result<usize, String> {
    let value = crate::method_args::positive(text)?;
    if value > limit {
        return Err(format!("{value} is above the limit of {limit} {what}"));
    }
    Ok(value)
}

/// Samples of the classes x seeds grid, bounded by [`MAX_SAMPLES`].
pub fn grid_samples(seeds: usize, classes: usize) -> Result<usize> {
    match seeds.checked_mul(classes) {
        Some(samples) if samples <= MAX_SAMPLES => Ok(samples),
        _ => bail!(
            "--seeds {seeds} with the model's {classes} classes asks for {seeds} x {classes} samples, above the limit of {MAX_SAMPLES}"
        ),
    }
}

/// The memory-check flag of the commands that run the model.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MemoryCheck {
    /// Run even when the estimate of the memory the run needs exceeds the memory available.
    #[arg(long)]
    pub no_memory_check: bool,
}

impl MemoryCheck {
    /// Fails when `needed` exceeds the memory the machine can give this process now (unless
    /// `--no-memory-check`); `what` names the run in the message.
    pub fn check(&self, needed: &RunMemory, what: &str) -> Result<()> {
        if self.no_memory_check {
            return Ok(());
        }
        fits(needed, available_bytes(), what)
    }
}

fn fits(needed: &RunMemory, available: Option<u64>, what: &str) -> Result<()> {
    match available {
        Some(available) if needed.total() > available => bail!(
            "{what} needs {}, more than the {:.1} GiB of memory available; use a smaller --batch, --seeds or --steps or a smaller model, or pass --no-memory-check to run anyway",
            needed.describe(),
            available as f64 / (1u64 << 30) as f64
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_seeds_are_bounded_with_messages() {
        assert_eq!(sample_count("8"), Ok(8));
        assert!(sample_count("10000000").unwrap_err().contains("above the limit of 65536"));
        assert!(sample_count("0").unwrap_err().contains("at least 1"));
        assert!(step_count("1000000000000").unwrap_err().contains("above the limit"));
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
        assert!(seed("-1").unwrap_err().contains("-1 is negative"));
        assert!(seed("18446744073709551616").unwrap_err().contains("above the largest seed"));
        assert!(grid_samples(usize::MAX, 1000).is_err());
        assert_eq!(grid_samples(2, 10).unwrap(), 20);
    }

    #[test]
    fn a_run_larger_than_the_available_memory_is_refused_with_its_parts() {
        let needed = RunMemory {
            weights: 1 << 30,
            working: 1 << 29,
            results: 1 << 32,
        };
        let error = fits(&needed, Some(2 << 30), "sampling").unwrap_err().to_string();
        assert!(error.contains("about 5.5 GiB") && error.contains("--no-memory-check"), "{error}");
        assert!(fits(&needed, Some(8 << 30), "sampling").is_ok());
        assert!(fits(&needed, None, "sampling").is_ok());
    }
}
