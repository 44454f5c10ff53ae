//! The VAE flags (`--vae`, `--latent-scale`) of `resca sample` and `resca decode`, and the
//! decoding of DiT latents into images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ndarray::{Array4, ArrayView4};
use resca_reference::DitConfig;
use resca_reference::vae::{SD_LATENT_SCALE, VaeConfig, VaeDecoder};

use super::value_parsers::positive_scale;

/// The VAE that turns latents into images.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct VaeArgs {
    /// Folder of a diffusers AutoencoderKL (sd-vae-ft-ema, sd-vae-ft-mse): `config.json` and
    /// `diffusion_pytorch_model.safetensors` (or the same state dict as `.bin` or `.pt`).
    #[arg(long, value_name = "DIR")]
    pub vae: Option<PathBuf>,
    /// The latents are divided by this before decoding (DiT samples `z * 0.18215`).
    #[arg(long, default_value_t = SD_LATENT_SCALE, allow_hyphen_values = true, value_parser = positive_scale)]
    pub latent_scale: f32,
}

impl VaeArgs {
    /// The files `--vae` names (outputs must not replace them); none without `--vae`.
    pub fn input_files(&self) -> Vec<(&'static str, Option<PathBuf>)> {
        let Some(dir) = &self.vae else {
            return Vec::new();
        };
        let weights = VaeDecoder::weights_path(dir).ok();
        vec![("--vae", Some(dir.join("config.json"))), ("--vae", weights)]
    }

    /// The decoder's config (read and checked before anything large is loaded).
    pub fn config(&self) -> Result<Option<VaeConfig>> {
        let Some(dir) = &self.vae else {
            return Ok(None);
        };
        check_folder(dir)?;
        let config = VaeConfig::from_json_file(&dir.join("config.json"))
            .with_context(|| format!("reading --vae {}", dir.display()))?;
        VaeDecoder::weights_path(dir).context("--vae")?;
        Ok(Some(config))
    }

    /// Loads the decoder `--vae` names, if given.
    pub fn load(&self) -> Result<Option<VaeDecoder>> {
        let Some(dir) = &self.vae else {
            return Ok(None);
        };
        check_folder(dir)?;
        VaeDecoder::load_dir(dir)
            .map(Some)
            .with_context(|| format!("loading --vae {}", dir.display()))
    }

    /// Decodes DiT latents (B, C, h, w) as sampled: divided by `--latent-scale`, then decoded.
    pub fn decode(&self, decoder: &VaeDecoder, latents: ArrayView4<f32>) -> Result<Array4<f32>> {
        let scaled = &latents / self.latent_scale;
        Ok(decoder.decode(scaled.view())?)
    }
}

/// Fails unless `dir` is a folder (a file given to `--vae` gets its own message).
fn check_folder(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!(
            "--vae {}: not a folder; give the folder holding config.json and diffusion_pytorch_model.safetensors",
            dir.display()
        ),
        Err(e) => bail!("--vae {}: {e}", dir.display()),
    }
}

/// Fails unless the VAE decodes the DiT's latents (the same channel count).
pub fn check_fits(vae: &VaeConfig, dit: &DitConfig, dir: &Path) -> Result<()> {
    if vae.latent_channels != dit.in_channels {
        bail!(
            "--vae {}: the VAE decodes {} latent channels, the model samples {}",
            dir.display(),
            vae.latent_channels,
            dit.in_channels
        );
    }
    Ok(())
}
