//! The model-selection flags (`--weights`, `--config`, `--heads`, `--model`) and where the model
//! comes from: a safetensors checkpoint (config given or inferred), a named preset with seeded
//! random weights, or the embedded default.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use resca_reference::{Dit, DitConfig};

use super::value_parsers::{positive, seed};

/// Guidance scale of the papers, the default for every model but the embedded one.
pub const PAPER_CFG_SCALE: f32 = 1.5;

/// The model-selection flags shared by every subcommand that runs the network.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// DiT checkpoint in safetensors with the official key names (f32, f16 or bf16).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,
    /// JSON model config (`input_size`, `patch_size`, ..., `num_heads`); default: inferred from
    /// the weights' tensor shapes.
    #[arg(long, value_name = "C.json", conflicts_with = "heads")]
    pub config: Option<PathBuf>,
    /// Attention heads, the one hyper-parameter the weights' shapes cannot tell.
    #[arg(long, value_name = "H", allow_negative_numbers = true, value_parser = positive)]
    pub heads: Option<usize>,
    /// A preset (DiT-XL/2, DiT-L/2, DiT-B/2, DiT-S/2 and /4, /8 variants, tiny, small) with seeded
    /// random weights, for benchmarks and smoke runs.
    #[arg(long, value_name = "PRESET", conflicts_with = "weights")]
    pub model: Option<String>,
    /// Seed of the random weights of `--model`.
    #[arg(long, default_value_t = 0, requires = "model", allow_negative_numbers = true, value_parser = seed)]
    pub weights_seed: u64,
}

impl ModelArgs {
    /// Loads (or builds) the model these flags select.
    pub fn load(&self) -> Result<Dit> {
        let config = match &self.config {
            Some(path) => {
                Some(DitConfig::from_json_file(path).with_context(|| format!("reading --config {}", path.display()))?)
            }
            None => None,
        };
        if let Some(preset) = &self.model {
            let mut config = match config {
                Some(c) => c,
                None => DitConfig::preset(preset)?,
            };
            if let Some(heads) = self.heads {
                config.num_heads = heads;
            }
            return Ok(Dit::random(config, self.weights_seed)?);
        }
        match &self.weights {
            Some(path) => {
                Dit::load(path, config, self.heads).with_context(|| format!("loading --weights {}", path.display()))
            }
            None => resca_host::embedded::default_model(),
        }
    }

    /// The files these flags read, by flag (outputs must not replace them).
    pub fn input_files(&self) -> Vec<(&'static str, Option<&Path>)> {
        vec![
            ("--weights", self.weights.as_deref()),
            ("--config", self.config.as_deref()),
        ]
    }

    /// Whether these flags select the embedded default model (no `--weights`, no `--model`).
    pub fn is_embedded(&self) -> bool {
        self.weights.is_none() && self.model.is_none()
    }

    /// The guidance scale to use when `--cfg-scale` is not given: the embedded model's own
    /// (it needs more guidance than DiT-XL/2), otherwise the papers' 1.5.
    pub fn default_cfg_scale(&self) -> f32 {
        if self.is_embedded() {
            resca_host::embedded::DEFAULT_CFG_SCALE
        } else {
            PAPER_CFG_SCALE
        }
    }

    /// A config without loading weights (for `resca plan`): from `--config`, `--model`, the
    /// weights file's shapes, or the embedded default.
    pub fn config_only(&self) -> Result<DitConfig> {
        if let Some(path) = &self.config {
            return DitConfig::from_json_file(path).with_context(|| format!("reading --config {}", path.display()));
        }
        if let Some(preset) = &self.model {
            let mut config = DitConfig::preset(preset)?;
            if let Some(heads) = self.heads {
                config.num_heads = heads;
                config.validate()?;
            }
            return Ok(config);
        }
        if let Some(path) = &self.weights {
            let file = resca_reference::safetensors_file::SafetensorsFile::open(path)
                .with_context(|| format!("reading --weights {}", path.display()))?;
            return Ok(DitConfig::infer(&file, self.heads)?);
        }
        Ok(resca_host::embedded::default_config())
    }
}
