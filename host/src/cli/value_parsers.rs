//! Parsers of flag values whose errors say what is wrong with the value (and bound the sizes a
//! run asks for, `resca_host::limits`).

/// Parses an integer (of any size, so that a huge one is named as such, not as "not an
/// integer").
fn integer(text: &str) -> Result<i128, String> {
    text.trim()
        .parse::<i128>()
        .map_err(|_| format!("`{text}` is not an integer"))
}

/// Parses an integer >= 1, naming the problem otherwise.
pub fn positive(text: &str) -> Result<usize, String> {
    match integer(text)? {
        v if v < 1 => Err(format!("{v} is not a positive integer (it must be at least 1)")),
        v => usize::try_from(v).map_err(|_| format!("{v} is too large")),
    }
}

/// Parses an integer >= 0, naming the problem otherwise.
pub fn non_negative(text: &str) -> Result<usize, String> {
    match integer(text)? {
        v if v < 0 => Err(format!("{v} is negative")),
        v => usize::try_from(v).map_err(|_| format!("{v} is too large")),
    }
}

/// Parses a sample count: an integer from 1 to [`MAX_SAMPLES`](resca_host::limits::MAX_SAMPLES).
pub fn sample_count(text: &str) -> Result<usize, String> {
    at_most(text, resca_host::limits::MAX_SAMPLES, "samples per run")
}

/// Parses a step count: an integer from 1 to [`MAX_STEPS`](resca_host::limits::MAX_STEPS).
pub fn step_count(text: &str) -> Result<usize, String> {
    at_most(text, resca_host::limits::MAX_STEPS, "steps")
}

fn at_most(text: &str, limit: usize, what: &str) -> Result<usize, String> {
    match integer(text)? {
        v if v > limit as i128 => Err(format!("{v} is above the limit of {limit} {what}")),
        _ => positive(text),
    }
}

/// Parses a seed: an integer from 0 to 2^64 - 1; a negative one is named as such (not taken
/// for an unknown flag: give the flag `allow_negative_numbers`).
pub fn seed(text: &str) -> Result<u64, String> {
    match integer(text)? {
        v if v < 0 => Err(format!("{v} is negative; a seed is an integer from 0 to {}", u64::MAX)),
        v => u64::try_from(v).map_err(|_| format!("{v} is above the largest seed, {}", u64::MAX)),
    }
}

/// Parses a guidance scale: a finite number >= 0 (give the flag `allow_hyphen_values`, so
/// that `-inf` reaches this parser).
pub fn cfg_scale(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number >= 0")),
        Err(_) => Err(format!("`{text}` is not a number")),
    }
}

/// Parses a finite number > 0 (`--latent-scale`).
pub fn positive_scale(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number > 0")),
        Err(_) => Err(format!("`{text}` is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bounded_and_named() {
        assert_eq!(sample_count("8"), Ok(8));
        assert!(
            sample_count("10000000")
                .unwrap_err()
                .contains("above the limit of 65536")
        );
        assert!(sample_count("0").unwrap_err().contains("at least 1"));
        assert!(
            step_count("1000000000000")
                .unwrap_err()
                .contains("above the limit of 100000 steps")
        );
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
        assert!(seed("-1").unwrap_err().contains("-1 is negative"));
        assert!(
            seed("18446744073709551616")
                .unwrap_err()
                .contains("above the largest seed")
        );
        assert_eq!(cfg_scale("1.5"), Ok(1.5));
        for bad in ["NaN", "inf", "-inf", "-1"] {
            assert!(
                cfg_scale(bad).unwrap_err().contains("not a finite number >= 0"),
                "{bad}"
            );
        }
    }
}
