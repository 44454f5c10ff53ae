//! The VAE decoder against diffusers' `AutoencoderKL`, and PyTorch checkpoints against the
//! safetensors path (vectors made by `tests/vectors/make_vae_vectors.py`).

use std::path::{Path, PathBuf};

use ndarray::Ix4;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::vae::{SD_LATENT_SCALE, VaeConfig, VaeDecoder};
use resca_reference::{Dit, DitConfig};
use resca_tests::{labels, max_rel_to_max, tensor, timesteps, vectors, vectors_dir};

fn vae_dir() -> PathBuf {
    vectors_dir().parent().unwrap().join("vae")
}

/// Decodes `decode.safetensors`' latents with `decoder` and returns the relative error against
/// diffusers' float32 and float64 outputs.
fn decode_errors(decoder: &VaeDecoder, vectors: &Path) -> (f32, f32) {
    let file = SafetensorsFile::open(vectors).unwrap();
    let latents = tensor(&file, "x").into_dimensionality::<Ix4>().unwrap() / SD_LATENT_SCALE;
    let images = decoder.decode(latents.view()).unwrap().into_dyn();
    (
        max_rel_to_max("images", &images, &tensor(&file, "images")),
        max_rel_to_max(
            "images vs float64",
            &images,
            &file.read_f64("images.f64").unwrap().mapv(|v| v as f32),
        ),
    )
}

#[test]
fn the_decoder_matches_diffusers_on_the_reduced_width_vae() {
    let decoder = VaeDecoder::load_dir(&vae_dir()).unwrap();
    assert_eq!(decoder.config.block_out_channels, [16, 32, 32, 32]);
    let (error, error64) = decode_errors(&decoder, &vae_dir().join("decode.safetensors"));
    // Measured: 3.8e-6 relative to the output's largest magnitude against diffusers' float32,
    // 1.9e-6 against its float64 run; budget 1e-4.
    eprintln!("reduced-width VAE: {error:.1e} vs diffusers f32, {error64:.1e} vs f64");
    assert!(error < 1e-4 && error64 < 1e-4, "{error:e} {error64:e}");
}

#[test]
fn the_decoder_from_the_pt_file_is_the_decoder_from_safetensors_bit_for_bit() {
    let config = VaeConfig::from_json_file(&vae_dir().join("config.json")).unwrap();
    let from_safetensors = SafetensorsFile::open(vae_dir().join("diffusion_pytorch_model.safetensors")).unwrap();
    let from_pt = SafetensorsFile::open(vae_dir().join("diffusion_pytorch_model.pt")).unwrap();
    assert_eq!(from_safetensors.names(), from_pt.names());
    for name in from_safetensors.names() {
        assert_eq!(
            from_safetensors.read_f32(&name).unwrap(),
            from_pt.read_f32(&name).unwrap(),
            "{name}"
        );
    }
    let latents = tensor(
        &SafetensorsFile::open(vae_dir().join("decode.safetensors")).unwrap(),
        "x",
    )
    .into_dimensionality::<Ix4>()
    .unwrap();
    let a = VaeDecoder::load(&from_safetensors, config.clone())
        .unwrap()
        .decode(latents.view())
        .unwrap();
    let b = VaeDecoder::load(&from_pt, config)
        .unwrap()
        .decode(latents.view())
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn the_full_width_decoder_matches_diffusers() {
    let dir = std::env::var_os("RESCA_VAE_FULL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vae-full"));
    if !dir.join("decode.safetensors").exists() {
        println!(
            "SKIP: {} is absent; make it with `python3 tests/vectors/make_vae_vectors.py --full {}` (needs torch and diffusers)",
            dir.join("decode.safetensors").display(),
            dir.display()
        );
        return;
    }
    for weights in ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.pt"] {
        let config = VaeConfig::from_json_file(&dir.join("vae/config.json")).unwrap();
        assert_eq!(config, VaeConfig::sd_vae());
        let file = SafetensorsFile::open(dir.join("vae").join(weights)).unwrap();
        let decoder = VaeDecoder::load(&file, config).unwrap();
        let (error, error64) = decode_errors(&decoder, &dir.join("decode.safetensors"));
        // Measured (256x256): 2.8e-6 vs diffusers' float32, 2.2e-6 vs float64; budget 1e-4.
        eprintln!("full-width VAE from {weights}: {error:.1e} vs diffusers f32, {error64:.1e} vs f64");
        assert!(error < 1e-4 && error64 < 1e-4, "{weights}: {error:e} {error64:e}");
    }
}

#[test]
fn the_tiny_dit_saved_with_torch_save_loads_bit_for_bit_as_from_safetensors() {
    let from_safetensors = SafetensorsFile::open(vectors_dir().join("weights.safetensors")).unwrap();
    let from_pt = SafetensorsFile::open(vectors_dir().join("weights.pt")).unwrap();
    assert_eq!(from_safetensors.names(), from_pt.names());
    for name in from_safetensors.names() {
        assert_eq!(
            from_safetensors.read_f32(&name).unwrap(),
            from_pt.read_f32(&name).unwrap(),
            "{name}"
        );
    }
    let config = DitConfig::preset("tiny").unwrap();
    let forward = vectors("forward.safetensors");
    let x = tensor(&forward, "x").into_dimensionality::<Ix4>().unwrap();
    let (t, y) = (timesteps(&forward, "t"), labels(&forward, "y"));
    let a = Dit::from_file(&from_safetensors, Some(config.clone()), None).unwrap();
    let b = Dit::load(&vectors_dir().join("weights.pt"), Some(config), None).unwrap();
    assert_eq!(
        a.forward(x.view(), &t, &y).unwrap(),
        b.forward(x.view(), &t, &y).unwrap()
    );
}

#[test]
fn half_precision_torch_checkpoints_hold_the_rounded_weights() {
    let from_safetensors = SafetensorsFile::open(vectors_dir().join("weights.safetensors")).unwrap();
    for (file, round) in [
        (
            "weights_f16.pt",
            (|v| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32,
        ),
        ("weights_bf16.pt", |v| half::bf16::from_f32(v).to_f32()),
    ] {
        let pt = SafetensorsFile::open(vectors_dir().join(file)).unwrap();
        for name in from_safetensors.names() {
            let expected = from_safetensors.read_f32(&name).unwrap().mapv(round);
            assert_eq!(pt.read_f32(&name).unwrap(), expected, "{file}: {name}");
        }
    }
}
