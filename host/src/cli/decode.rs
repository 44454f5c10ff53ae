//! `resca decode`: VAE-decode latents (DiT samples) into images.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ndarray::Ix4;
use resca_host::figures::panels::{Panel, panels};
use resca_host::limits::check_samples;
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors_to};
use resca_reference::vae::memory_estimate;

use super::output::{MemoryCheck, check_outputs};
use super::vae_args::VaeArgs;

/// Largest latent side decoded (4096x4096 images with the sd-vae's 8x).
const MAX_LATENT_SIDE: usize = 512;

/// Decode latents (tensor `x` of --input) with a VAE into images (`images` of --out, a --png grid).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    vae: VaeArgs,
    /// Input file with tensor `x` (B, 4, H/8, W/8): latents as DiT samples them.
    #[arg(long, value_name = "IN.safetensors")]
    input: PathBuf,
    /// Output file; receives tensor `images` (B, 3, H, W), the decoder's raw output (about [-1, 1]).
    #[arg(long, value_name = "OUT.safetensors")]
    out: Option<PathBuf>,
    /// Write the images as a PNG grid here.
    #[arg(long, value_name = "OUT.png")]
    png: Option<PathBuf>,
    #[command(flatten)]
    memory: MemoryCheck,
}

pub fn run(args: Args) -> Result<()> {
    let Some(dir) = args.vae.vae.clone() else {
        bail!("--vae DIR is required: the folder of the VAE that decodes the latents");
    };
    if args.out.is_none() && args.png.is_none() {
        bail!("nothing to write: give --out and/or --png");
    }
    let vae_files = args.vae.input_files();
    let mut inputs: Vec<(&str, Option<&std::path::Path>)> =
        vae_files.iter().map(|(flag, path)| (*flag, path.as_deref())).collect();
    inputs.push(("--input", Some(args.input.as_path())));
    let mut destinations =
        check_outputs(&[("--out", args.out.as_deref()), ("--png", args.png.as_deref())], &inputs)?.into_iter();
    let out = args.out.as_ref().and_then(|_| destinations.next());
    let png = args.png.as_ref().and_then(|_| destinations.next());

    let config = args.vae.config()?.expect("--vae given");
    let input = SafetensorsFile::open(&args.input).with_context(|| format!("reading --input {}", args.input.display()))?;
    let shape = input.nonempty_shape("x")?;
    let fits = matches!(shape[..], [_, c, h, w] if c == config.latent_channels && h <= MAX_LATENT_SIDE && w <= MAX_LATENT_SIDE);
    if !fits {
        bail!(
            "{}: tensor `x` has shape {shape:?}; the VAE decodes latents (B, {}, h, w) with h, w at most {MAX_LATENT_SIDE}",
            args.input.display(),
            config.latent_channels
        );
    }
    check_samples(shape[0], &format!("--input {} (tensor `x`)", args.input.display()))?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    args.memory
        .check(&memory_estimate(&config, shape[0], shape[2], shape[3], threads), "this decoding")?;
    let latents = input.read_f32("x")?.into_dimensionality::<Ix4>()?;
    resca_reference::error::check_finite(&format!("{}: tensor `x`", args.input.display()), latents.iter())?;
    let decoder = args.vae.load()?.expect("--vae given");
    let images = args
        .vae
        .decode(&decoder, latents.view())
        .with_context(|| format!("decoding {}", args.input.display()))?;
    if let Some(out) = out {
        let mut metadata = HashMap::new();
        metadata.insert("latent_scale".to_string(), args.vae.latent_scale.to_string());
        let tensors = [("images".to_string(), OutTensor::F32(images.clone().into_dyn()))];
        out.write(|w| write_safetensors_to(w, &tensors, &metadata))?;
    }
    if let Some(png) = png {
        let figure = panels(
            &[Panel {
                title: format!("decoded by {}", dir.display()),
                images: images.view(),
                cols: 8,
            }],
            1,
        );
        png.write(|w| figure.encode_png(w))?;
    }
    Ok(())
}
