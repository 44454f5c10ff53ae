//! The default model `resca` runs when no `--weights` or `--model` is given: a small
//! class-conditional DiT trained on MNIST digits (32x32x1 pixels, patch 2, 256 tokens, hidden 64,
//! depth 4, 4 heads, 10 classes; `train/README.md` tells how), and the digit classifier trained
//! with it, which measures generated samples (accuracy, Frechet distance).

use anyhow::{Context, Result};
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::{Dit, DitConfig};

use crate::evaluation::classifier::Classifier;

/// The DiT's weights, official key names, with its config in the metadata.
pub const DIT_WEIGHTS: &[u8] = include_bytes!("../assets/dit-mnist.safetensors");
/// The classifier's weights and the real test digits' feature statistics.
pub const CLASSIFIER_WEIGHTS: &[u8] = include_bytes!("../assets/classifier.safetensors");

/// Guidance scale used with the embedded model when `--cfg-scale` is not given. The papers sample
/// DiT-XL/2 at 1.5; this 1.4 M-parameter model (16000 training steps) needs more guidance for
/// legible digits: at 1.5 the classifier calls 86% of the compare run's samples right and 3, 4, 5,
/// 8 and 9 come out rough, at 4.0 every class of the default grid is legible (docs/benchmarks.md,
/// "Quality at matched FLOPs", has both tables).
pub const DEFAULT_CFG_SCALE: f32 = 4.0;

fn dit_file() -> Result<SafetensorsFile> {
    Ok(SafetensorsFile::from_static(
        "<embedded dit-mnist.safetensors>",
        DIT_WEIGHTS,
    )?)
}

pub fn default_config() -> DitConfig {
    let file = dit_file().expect("the embedded weights are a valid safetensors file");
    DitConfig::infer(&file, None).expect("the embedded weights carry their config")
}

pub fn default_model() -> Result<Dit> {
    Dit::from_file(&dit_file()?, None, None).context("loading the embedded model")
}

/// The digit classifier shipped with the embedded model.
pub fn classifier() -> Result<Classifier> {
    let file = SafetensorsFile::from_static("<embedded classifier.safetensors>", CLASSIFIER_WEIGHTS)?;
    Classifier::load(&file).context("loading the embedded classifier")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_model_and_classifier_load() {
        let model = default_model().unwrap();
        assert_eq!(
            (model.config.input_size, model.config.in_channels, model.config.tokens()),
            (32, 1, 256)
        );
        assert_eq!(default_config(), model.config);
        let classifier = classifier().unwrap();
        assert_eq!(classifier.real_mean.len(), 128);
    }
}
