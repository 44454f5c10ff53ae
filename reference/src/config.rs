//! DiT model configuration: the official presets, JSON configs, and inference from a weights file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::safetensors_file::SafetensorsFile;

/// The hyper-parameters of facebookresearch/DiT's `DiT(...)` constructor that shape the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DitConfig {
    /// Side of the (latent) input image.
    pub input_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    pub num_classes: usize,
    /// Output channels are `2 * in_channels` (eps and variance) when true, else `in_channels`.
    pub learn_sigma: bool,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

/// (hidden size, depth, heads) of the official DiT-XL, L, B and S models: a checkpoint whose
/// shapes match one of them, converted from the official `.pt` without metadata, gets its heads.
const OFFICIAL_HEADS: [(usize, usize, usize); 4] = [(1152, 28, 16), (1024, 24, 16), (768, 12, 12), (384, 12, 6)];

/// Upper bounds of a config's sizes, far above every DiT trained (DiT-XL/2 at 512x512: a 64x64
/// latent, hidden 1152, depth 28, 1000 classes) and low enough that every size derived from
/// them (patch areas, token counts, weight shapes, the parameter count) fits in 64 bits. A config
/// beyond them is refused with a message naming the field before anything is allocated.
pub const MAX_INPUT_SIZE: usize = 4096;
pub const MAX_PATCH_SIZE: usize = 64;
/// Tokens per image (a 256x256 grid).
pub const MAX_TOKENS: usize = 65_536;
pub const MAX_CHANNELS: usize = 1024;
pub const MAX_HIDDEN_SIZE: usize = 32_768;
pub const MAX_DEPTH: usize = 1024;
pub const MAX_CLASSES: usize = 1 << 20;
/// Width of the MLP's hidden layer.
pub const MAX_MLP_HIDDEN: usize = 262_144;
/// Parameters in all (2^36: 256 GiB of f32 weights).
pub const MAX_PARAMETERS: u64 = 1 << 36;

/// Largest JSON config file read (a config is a few hundred bytes).
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Preset names accepted by [`DitConfig::preset`] (`/2`, `/4` or `/8` selects the patch size).
pub const PRESET_NAMES: &[&str] = &["DiT-XL", "DiT-L", "DiT-B", "DiT-S", "tiny", "small"];

impl DitConfig {
    /// The official presets `DiT-{XL,L,B,S}/{2,4,8}` (256x256 images, 32x32x4 latents, ImageNet),
    /// `tiny` (the model of `vectors/tiny`) and `small` (a seeded stand-in for quick runs).
    /// Names are case-insensitive and `-` may replace `/`.
    pub fn preset(name: &str) -> Result<Self> {
        let normal = name.trim().to_ascii_lowercase().replace('-', "/");
        let imagenet = |patch, hidden, depth, heads| DitConfig {
            input_size: 32,
            patch_size: patch,
            in_channels: 4,
            hidden_size: hidden,
            depth,
            num_heads: heads,
            mlp_ratio: 4.0,
            num_classes: 1000,
            learn_sigma: true,
        };
        let (family, patch) = match normal.rsplit_once('/') {
            Some((family, patch)) if family.starts_with("dit") => {
                let patch = patch
                    .parse::<usize>()
                    .ok()
                    .filter(|p| [2, 4, 8].contains(p))
                    .ok_or_else(|| unknown_preset(name))?;
                (family.to_string(), patch)
            }
            _ => (normal.clone(), 0),
        };
        let config = match family.as_str() {
            "dit/xl" => imagenet(patch, 1152, 28, 16),
            "dit/l" => imagenet(patch, 1024, 24, 16),
            "dit/b" => imagenet(patch, 768, 12, 12),
            "dit/s" => imagenet(patch, 384, 12, 6),
            "tiny" => DitConfig {
                input_size: 8,
                patch_size: 2,
                in_channels: 4,
                hidden_size: 64,
                depth: 2,
                num_heads: 4,
                mlp_ratio: 4.0,
                num_classes: 10,
                learn_sigma: true,
            },
            "small" => DitConfig {
                input_size: 32,
                patch_size: 2,
                in_channels: 1,
                hidden_size: 64,
                depth: 4,
                num_heads: 4,
                mlp_ratio: 4.0,
                num_classes: 10,
                learn_sigma: false,
            },
            _ => return Err(unknown_preset(name)),
        };
        Ok(config)
    }

    /// Parses a JSON config (the fields of this struct; unknown fields such as
    /// `class_dropout_prob` are ignored) and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: DitConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("bad JSON config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a JSON config file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = crate::safetensors_file::read_small_text_file(path, MAX_CONFIG_FILE_BYTES)?;
        Self::from_json(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Infers the config from the tensor shapes of an official DiT state dict. The head count is
    /// not visible in the shapes: it comes from `heads`, else from a `config` JSON in the file's
    /// metadata; without either this fails with a message asking for `--heads`.
    pub fn infer(file: &SafetensorsFile, heads: Option<usize>) -> Result<Self> {
        let shape = |name: &str| file.nonempty_shape(name);
        let fail = |msg: String| Err(Error::Config(format!("{}: {msg}", file.path().display())));
        let embed = shape("x_embedder.proj.weight")?;
        let [hidden_size, in_channels, patch_size, patch_w] = embed[..] else {
            return fail(format!("x_embedder.proj.weight must be 4-D, found {embed:?}"));
        };
        if patch_size != patch_w {
            return fail(format!("x_embedder.proj.weight has a non-square patch {embed:?}"));
        }
        if patch_size > MAX_PATCH_SIZE {
            return fail(format!(
                "x_embedder.proj.weight has patch size {patch_size}, above the limit of {MAX_PATCH_SIZE}"
            ));
        }
        let pos = shape("pos_embed")?;
        let tokens = match pos[..] {
            [1, n, d] if d == hidden_size => n,
            _ => return fail(format!("pos_embed must be [1, N, {hidden_size}], found {pos:?}")),
        };
        let grid = (tokens as f64).sqrt().round() as usize;
        if grid.checked_mul(grid) != Some(tokens) {
            return fail(format!("pos_embed has {tokens} tokens, not a square grid"));
        }
        // Blocks are counted up to one past the limit: validate() names a depth beyond it.
        let depth = (0..=MAX_DEPTH)
            .take_while(|l| file.shape(&format!("blocks.{l}.attn.qkv.weight")).is_some())
            .count();
        if depth == 0 {
            return fail("no blocks: tensor `blocks.0.attn.qkv.weight` is missing".to_string());
        }
        let mlp_hidden = shape("blocks.0.mlp.fc1.weight")?[0];
        let table = shape("y_embedder.embedding_table.weight")?;
        let out_features = shape("final_layer.linear.weight")?[0];
        let patch_area = patch_size * patch_size;
        if !out_features.is_multiple_of(patch_area) {
            return fail(format!(
                "final_layer.linear has {out_features} outputs, not a multiple of the patch area {patch_area}"
            ));
        }
        let out_channels = out_features / patch_area;
        let learn_sigma = match out_channels {
            c if Some(c) == in_channels.checked_mul(2) => true,
            c if c == in_channels => false,
            c => {
                return fail(format!(
                    "final_layer.linear gives {c} output channels per pixel; expected {in_channels} or twice that"
                ));
            }
        };
        let from_metadata = file
            .metadata("config")
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .and_then(|v| v.get("num_heads").and_then(|h| h.as_u64()))
            .and_then(|h| usize::try_from(h).ok());
        // A converted official checkpoint carries no metadata: its width and depth name the preset.
        let from_preset = OFFICIAL_HEADS
            .iter()
            .find(|(d, l, _)| (*d, *l) == (hidden_size, depth))
            .map(|(_, _, h)| *h);
        let num_heads = heads.or(from_metadata).or(from_preset).ok_or_else(|| {
            Error::Config(format!(
                "{}: the head count cannot be inferred from tensor shapes; pass --heads or --config",
                file.path().display()
            ))
        })?;
        let Some(input_size) = grid.checked_mul(patch_size) else {
            return fail(format!(
                "a {grid}x{grid} grid of {patch_size}-pixel patches is too large"
            ));
        };
        let config = DitConfig {
            input_size,
            patch_size,
            in_channels,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: mlp_hidden as f64 / hidden_size as f64,
            num_classes: table[0] - 1,
            learn_sigma,
        };
        config.validate().map_err(|e| {
            Error::Config(format!(
                "{} (inferred from {})",
                strip_config_prefix(&e),
                file.path().display()
            ))
        })?;
        Ok(config)
    }

    /// Checks the config: every size within its limit (the `MAX_*` constants), then the
    /// internal consistency. Every size derived later (tokens, weight shapes, the parameter
    /// count) then fits in 64 bits.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        for (field, value, limit) in [
            ("input_size", self.input_size, MAX_INPUT_SIZE),
            ("patch_size", self.patch_size, MAX_PATCH_SIZE),
            ("in_channels", self.in_channels, MAX_CHANNELS),
            ("hidden_size", self.hidden_size, MAX_HIDDEN_SIZE),
            ("depth", self.depth, MAX_DEPTH),
            ("num_heads", self.num_heads, MAX_HIDDEN_SIZE),
            ("num_classes", self.num_classes, MAX_CLASSES),
        ] {
            if value == 0 || value > limit {
                return fail(format!("{field} {value} must be between 1 and {limit}"));
            }
        }
        if !self.input_size.is_multiple_of(self.patch_size) {
            return fail(format!(
                "input_size {} must be a positive multiple of patch_size {}",
                self.input_size, self.patch_size
            ));
        }
        if self.tokens() > MAX_TOKENS {
            return fail(format!(
                "input_size {} with patch_size {} gives {} tokens, above the limit of {MAX_TOKENS}",
                self.input_size,
                self.patch_size,
                self.tokens()
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return fail(format!(
                "num_heads {} does not divide hidden_size {}",
                self.num_heads, self.hidden_size
            ));
        }
        if !self.hidden_size.is_multiple_of(4) {
            return fail(format!(
                "hidden_size {} must be a multiple of 4 (2-D sin-cos embedding)",
                self.hidden_size
            ));
        }
        let mlp = self.hidden_size as f64 * self.mlp_ratio;
        if !(self.mlp_ratio.is_finite() && mlp >= 1.0 && mlp <= MAX_MLP_HIDDEN as f64) {
            return fail(format!(
                "mlp_ratio {:?} gives an MLP width of {mlp:?} with hidden_size {}; it must be between 1 and {MAX_MLP_HIDDEN}",
                self.mlp_ratio, self.hidden_size
            ));
        }
        let parameters = self.parameter_count() as u64;
        if parameters > MAX_PARAMETERS {
            return fail(format!(
                "the config has {parameters} parameters, above the limit of {MAX_PARAMETERS}"
            ));
        }
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }

    /// Tokens per image, N.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Width of the MLP's hidden layer, `int(hidden_size * mlp_ratio)` as upstream.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// The null (unconditional) label used by classifier-free guidance.
    pub fn null_label(&self) -> usize {
        self.num_classes
    }

    /// Number of parameters, pos_embed included (675M for DiT-XL/2), of a config whose sizes are
    /// within the `MAX_*` limits (computed in 128 bits, which [`Self::validate`] relies on
    /// before it compares the count with [`MAX_PARAMETERS`]).
    pub fn parameter_count(&self) -> usize {
        let wide = |v: usize| v as u128;
        let (d, c, p) = (wide(self.hidden_size), wide(self.in_channels), wide(self.patch_size));
        let m = wide(self.mlp_hidden());
        let grid = wide(self.input_size / self.patch_size.max(1));
        let embed = d * c * p * p + d + grid * grid * d;
        let t_embed = 256 * d + d + d * d + d;
        let y_embed = (wide(self.num_classes) + 1) * d;
        let block = (6 * d * d + 6 * d) + (3 * d * d + 3 * d) + (d * d + d) + (m * d + m) + (d * m + d);
        let out = p * p * wide(self.out_channels());
        let final_layer = (2 * d * d + 2 * d) + (out * d + out);
        let total = embed + t_embed + y_embed + wide(self.depth) * block + final_layer;
        total.min(usize::MAX as u128) as usize
    }
}

fn strip_config_prefix(error: &Error) -> String {
    match error {
        Error::Config(msg) => msg.clone(),
        other => other.to_string(),
    }
}

fn unknown_preset(name: &str) -> Error {
    Error::Config(format!(
        "unknown model preset `{name}`; expected one of DiT-XL/2, DiT-L/2, DiT-B/2, DiT-S/2 (or /4, /8), tiny, small"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_paper() {
        let xl = DitConfig::preset("DiT-XL/2").unwrap();
        assert_eq!(
            (xl.hidden_size, xl.depth, xl.num_heads, xl.tokens(), xl.head_dim()),
            (1152, 28, 16, 256, 72)
        );
        // facebookresearch/DiT reports 675M parameters for DiT-XL/2.
        assert_eq!(xl.parameter_count() / 1_000_000, 675);
        assert_eq!(DitConfig::preset("dit-b-4").unwrap().tokens(), 64);
        assert_eq!(DitConfig::preset("DiT-S/8").unwrap().hidden_size, 384);
    }

    #[test]
    fn unknown_presets_and_bad_patches_are_rejected() {
        assert!(
            DitConfig::preset("DiT-XL/3")
                .unwrap_err()
                .to_string()
                .contains("DiT-XL/3")
        );
        assert!(DitConfig::preset("GPT-2").is_err());
    }

    #[test]
    fn json_config_ignores_unknown_fields_and_validates_heads() {
        let text = r#"{"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 64, "depth": 2,
            "num_heads": 4, "mlp_ratio": 4.0, "class_dropout_prob": 0.1, "num_classes": 10, "learn_sigma": true}"#;
        assert_eq!(DitConfig::from_json(text).unwrap(), DitConfig::preset("tiny").unwrap());
        let bad = text.replace("\"num_heads\": 4", "\"num_heads\": 5");
        let err = DitConfig::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("num_heads 5 does not divide hidden_size 64"), "{err}");
    }
}
