//! The decoder's shape, from a diffusers `AutoencoderKL` `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Upper bounds on a config's sizes (the sd-vae models: 4 latent channels, widths up to 512, 2
/// layers per block, 32 groups), checked before anything is allocated.
pub const MAX_CHANNELS: usize = 4096;
pub const MAX_BLOCKS: usize = 8;
pub const MAX_LAYERS_PER_BLOCK: usize = 16;

/// The fields of diffusers' `AutoencoderKL` config that shape the decoder (others are ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct VaeConfig {
    /// Image channels (3).
    #[serde(default = "default_out_channels")]
    pub out_channels: usize,
    /// Latent channels (4).
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    /// Encoder widths from the image side (sd-vae: 128, 256, 512, 512); the decoder runs them
    /// in reverse, upsampling 2x after each block but the last.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (the decoder has one more per block).
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// The activation: only `silu` (every sd-vae) is implemented.
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
}

fn default_out_channels() -> usize {
    3
}
fn default_latent_channels() -> usize {
    4
}
fn default_layers_per_block() -> usize {
    1
}
fn default_groups() -> usize {
    32
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_true() -> bool {
    true
}

impl VaeConfig {
    /// The sd-vae-ft-ema / sd-vae-ft-mse decoder (Stable Diffusion's `AutoencoderKL`).
    pub fn sd_vae() -> Self {
        Self {
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            act_fn: "silu".into(),
            mid_block_add_attention: true,
            use_post_quant_conv: true,
        }
    }

    /// Reads and checks a diffusers `config.json` (at most 1 MB).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = crate::safetensors_file::read_small_text_file(path, crate::config::MAX_CONFIG_FILE_BYTES)?;
        let config: Self =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config
            .validate()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Checks the sizes against their bounds and the group norms' divisibility.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.act_fn != "silu" {
            return Err(format!("act_fn {:?}: only \"silu\" is implemented", self.act_fn));
        }
        let blocks = self.block_out_channels.len();
        if blocks == 0 || blocks > MAX_BLOCKS {
            return Err(format!(
                "block_out_channels has {blocks} entries; 1 to {MAX_BLOCKS} are accepted"
            ));
        }
        if !(1..=MAX_LAYERS_PER_BLOCK).contains(&self.layers_per_block) {
            return Err(format!(
                "layers_per_block {}: 1 to {MAX_LAYERS_PER_BLOCK} are accepted",
                self.layers_per_block
            ));
        }
        for (what, channels) in [
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ]
        .into_iter()
        .chain(self.block_out_channels.iter().map(|&c| ("block_out_channels", c)))
        {
            if !(1..=MAX_CHANNELS).contains(&channels) {
                return Err(format!("{what} {channels}: 1 to {MAX_CHANNELS} are accepted"));
            }
        }
        let groups = self.norm_num_groups;
        if let Some(bad) = self
            .block_out_channels
            .iter()
            .find(|&&c| groups == 0 || c % groups != 0)
        {
            return Err(format!(
                "norm_num_groups {groups} does not divide the block width {bad} (block_out_channels {:?})",
                self.block_out_channels
            ));
        }
        Ok(())
    }

    /// How many times the decoder doubles the latent's side (3 for sd-vae: 8x).
    pub fn upsamplings(&self) -> usize {
        self.block_out_channels.len() - 1
    }
}
