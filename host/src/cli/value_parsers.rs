//! Parsers of integer flag values whose errors say what is wrong with the value.

/// Parses an integer >= 1, naming the problem otherwise.
pub fn positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i64>() {
        Ok(v) if v >= 1 => Ok(v as usize),
        Ok(v) => Err(format!("{v} is not a positive integer (it must be at least 1)")),
        Err(_) => Err(format!("`{text}` is not an integer")),
    }
}

/// Parses an integer >= 0, naming the problem otherwise.
pub fn non_negative(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i64>() {
        Ok(v) if v >= 0 => Ok(v as usize),
        Ok(v) => Err(format!("{v} is negative")),
        Err(_) => Err(format!("`{text}` is not an integer")),
    }
}
