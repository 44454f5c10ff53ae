//! Bounds on the sizes a command line asks for, checked before anything is allocated: samples
//! per run, sampling steps, and the memory a run needs against the memory the machine has.

use anyhow::{Result, bail};
use resca_reference::memory::RunMemory;

/// Samples in one run (`--batch`, `--seeds` x classes, the rows of `--noise`).
pub const MAX_SAMPLES: usize = 65_536;
/// Sampling steps (DDIM's schedule allows at most its 1000 training timesteps anyway).
pub const MAX_STEPS: usize = 100_000;

/// Samples of the classes x seeds grid, bounded by [`MAX_SAMPLES`].
pub fn grid_samples(seeds: usize, classes: usize) -> Result<usize> {
    match seeds.checked_mul(classes) {
        Some(samples) if samples <= MAX_SAMPLES => Ok(samples),
        _ => bail!(
            "--seeds {seeds} with the model's {classes} classes asks for {seeds} x {classes} samples, above the limit of {MAX_SAMPLES}"
        ),
    }
}

/// A count of samples from a file or a list (`--noise`, `--labels`), bounded by
/// [`MAX_SAMPLES`]; `source` names it in the message.
pub fn check_samples(samples: usize, source: &str) -> Result<()> {
    if samples > MAX_SAMPLES {
        bail!("{source} gives {samples} samples, above the limit of {MAX_SAMPLES}");
    }
    Ok(())
}

/// Fails when `needed` exceeds `available` bytes (unknown: passes), naming the run (`what`),
/// the estimate by part, and the flag that runs it anyway (`--no-memory-check`).
pub fn check_memory(needed: &RunMemory, available: Option<u64>, what: &str) -> Result<()> {
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
    fn sample_counts_are_bounded_without_overflow() {
        assert!(
            grid_samples(usize::MAX, 1000)
                .unwrap_err()
                .to_string()
                .contains("above the limit")
        );
        assert_eq!(grid_samples(2, 10).unwrap(), 20);
        assert!(check_samples(70_000, "--noise n.safetensors").is_err());
    }

    #[test]
    fn a_run_larger_than_the_available_memory_is_refused_with_its_parts() {
        let needed = RunMemory {
            weights: 1 << 30,
            working: 1 << 29,
            results: 1 << 32,
        };
        let error = check_memory(&needed, Some(2 << 30), "sampling")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("about 5.5 GiB") && error.contains("--no-memory-check"),
            "{error}"
        );
        assert!(check_memory(&needed, Some(8 << 30), "sampling").is_ok());
        assert!(check_memory(&needed, None, "sampling").is_ok());
    }
}
