//! The default model `resca` runs when no `--weights` or `--model` is given.
//!
//! Until the trained embedded checkpoint lands this is the `small` preset (32x32x1 images, patch
//! 2, 256 tokens, hidden 64, depth 4, 10 classes) with weights drawn from seed 0.

use anyhow::Result;
use resca_reference::{Dit, DitConfig};

/// Seed of the default model's random weights.
pub const DEFAULT_WEIGHTS_SEED: u64 = 0;

pub fn default_config() -> DitConfig {
    DitConfig::preset("small").expect("the small preset exists")
}

pub fn default_model() -> Result<Dit> {
    Ok(Dit::random(default_config(), DEFAULT_WEIGHTS_SEED)?)
}
