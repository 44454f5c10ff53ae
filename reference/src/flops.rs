//! FLOPs accounting (docs/algorithms.md section 7): 2 FLOPs per multiply-add, per image, the CFG
//! pair counted as two images.
//!
//! Per block and token row: qkv `2*3D^2`, attention `2*2*N*D` (QK^T and AV), proj `2*D^2`, MLP
//! `2*2*D*H` (fc1 and fc2, H = mlp_ratio * D, i.e. `2*8*D^2` for ratio 4). Per image and step the
//! parts every method recomputes are added: the adaLN modulation of each block (`2*D*6D`), the
//! timestep MLP, the final layer (adaLN and linear) and the patch embedding. Element-wise work
//! (norms, softmax, GELU) is not counted, as in the papers.

use crate::config::DitConfig;

/// What one step computed, per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepWork {
    /// Tokens whose attention branch (qkv, attention, proj) was computed: N on full steps, 0 when
    /// attention is predicted from the cache.
    pub attention_tokens: usize,
    /// Tokens whose MLP branch was computed: N on full steps, K proxies on ResCa/ClusCa sparse
    /// steps, 0 for pure Taylor prediction.
    pub mlp_tokens: usize,
}

impl StepWork {
    pub fn full(config: &DitConfig) -> Self {
        Self {
            attention_tokens: config.tokens(),
            mlp_tokens: config.tokens(),
        }
    }
}

/// FLOPs of one forward pass of one image doing `work` in every block.
pub fn forward_flops(config: &DitConfig, work: StepWork) -> f64 {
    let d = config.hidden_size as f64;
    let n = config.tokens() as f64;
    let mlp_hidden = config.mlp_hidden() as f64;
    let attention_per_token = 2.0 * 3.0 * d * d + 2.0 * 2.0 * n * d + 2.0 * d * d;
    let mlp_per_token = 2.0 * 2.0 * d * mlp_hidden;
    let per_block =
        attention_per_token * work.attention_tokens as f64 + mlp_per_token * work.mlp_tokens as f64 + 2.0 * d * 6.0 * d;
    let patch_in = (config.in_channels * config.patch_size * config.patch_size) as f64;
    let patch_out = (config.out_channels() * config.patch_size * config.patch_size) as f64;
    let embeddings = 2.0 * n * patch_in * d + 2.0 * (256.0 * d + d * d);
    let final_layer = 2.0 * d * 2.0 * d + 2.0 * n * d * patch_out;
    config.depth as f64 * per_block + embeddings + final_layer
}

/// FLOPs of a whole run: `images` model rows per step (2 per sample with guidance).
pub fn run_flops(config: &DitConfig, steps: impl IntoIterator<Item = StepWork>, images: usize) -> f64 {
    steps.into_iter().map(|w| forward_flops(config, w)).sum::<f64>() * images as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dit_xl2_ddim50_with_guidance_is_23_74_tflops() {
        let config = DitConfig::preset("DiT-XL/2").unwrap();
        let total = run_flops(&config, vec![StepWork::full(&config); 50], 2) / 1e12;
        // docs/algorithms.md section 7: 23.74 TFLOPs; the block terms alone give 23.68.
        assert!((total - 23.74).abs() / 23.74 < 0.01, "{total}");
    }
}
