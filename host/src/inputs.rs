//! The sampler's inputs: noise (from a file or a seed), labels, and the guided `[x; x]`,
//! `[y; null]` batch DiT's sample.py builds.

use std::path::Path;

use anyhow::{Result, bail};
use ndarray::{Array4, Axis, Ix4, concatenate};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use resca_reference::DitConfig;
use resca_reference::error::check_finite;
use resca_reference::safetensors_file::SafetensorsFile;

/// Reads tensor `noise` (B, C, H, W) from `path` and checks it fits the model and is finite.
pub fn load_noise(path: &Path, config: &DitConfig) -> Result<Array4<f32>> {
    let file = SafetensorsFile::open(path)?;
    let noise = file.read_f32("noise")?;
    let side = config.input_size;
    let fits = matches!(noise.shape(), [_, c, h, w] if (*c, *h, *w) == (config.in_channels, side, side));
    if !fits || noise.shape()[0] == 0 {
        bail!(
            "{}: tensor `noise` has shape {:?}, the model expects (B, {}, {side}, {side}) with B >= 1",
            path.display(),
            noise.shape(),
            config.in_channels
        );
    }
    check_finite(&format!("{}: tensor `noise`", path.display()), noise.iter())?;
    Ok(noise.into_dimensionality::<Ix4>()?)
}

/// Standard normal noise (B, C, H, W) from a seeded ChaCha8 generator.
pub fn seeded_noise(seed: u64, batch: usize, config: &DitConfig) -> Array4<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let side = config.input_size;
    Array4::from_shape_simple_fn((batch, config.in_channels, side, side), || {
        StandardNormal.sample(&mut rng)
    })
}

/// Checks user labels against the model's classes (the null label is not a user label).
pub fn check_labels(labels: &[i64], config: &DitConfig) -> Result<Vec<usize>> {
    labels
        .iter()
        .map(|&y| {
            if y < 0 || y as usize >= config.num_classes {
                bail!(
                    "--labels: label {y} is out of range; the model has {} classes (0..={})",
                    config.num_classes,
                    config.num_classes - 1
                );
            }
            Ok(y as usize)
        })
        .collect()
}

/// The guided batch of DiT's sample.py: `[x; x]` with labels `[y; null]`.
pub fn guided_batch(noise: &Array4<f32>, labels: &[usize], config: &DitConfig) -> (Array4<f32>, Vec<usize>) {
    let x = concatenate(Axis(0), &[noise.view(), noise.view()]).expect("same shapes");
    let mut y = labels.to_vec();
    y.extend(std::iter::repeat_n(config.null_label(), labels.len()));
    (x, y)
}

/// The classes x seeds grid of the default run: for each seed `first_seed + s` one noise image,
/// shared by every class in that row; labels cycle through all classes. Returns (noise, labels).
pub fn class_grid(config: &DitConfig, seeds: usize, first_seed: u64) -> (Array4<f32>, Vec<usize>) {
    let classes = config.num_classes;
    let side = config.input_size;
    let mut noise = Array4::<f32>::zeros((seeds * classes, config.in_channels, side, side));
    let mut labels = Vec::with_capacity(seeds * classes);
    for s in 0..seeds {
        let row = seeded_noise(first_seed + s as u64, 1, config);
        for class in 0..classes {
            noise
                .index_axis_mut(Axis(0), s * classes + class)
                .assign(&row.index_axis(Axis(0), 0));
            labels.push(class);
        }
    }
    (noise, labels)
}
