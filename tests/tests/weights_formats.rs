//! Checkpoints as users bring them: f16 and bf16 conversions of the official key layout, and an
//! official-shaped checkpoint without metadata (as converted from `DiT-XL-2-256x256.pt`).

use std::collections::HashMap;

use ndarray::{Ix2, Ix4};
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors};
use resca_reference::weights::DitWeights;
use resca_reference::{Dit, DitConfig};
use resca_tests::{labels, max_abs_diff, tensor, timesteps, vectors, vectors_dir};

/// Writes the tiny weights converted by `convert` (f32 -> the target's little-endian bytes).
fn converted(dir: &std::path::Path, dtype: safetensors::Dtype, convert: fn(f32) -> [u8; 2]) -> std::path::PathBuf {
    let file = SafetensorsFile::open(vectors_dir().join("weights.safetensors")).unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .names()
        .into_iter()
        .map(|name| {
            let t = file.read_f32(&name).unwrap();
            let bytes = t.iter().flat_map(|&v| convert(v)).collect();
            (name, t.shape().to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, shape, bytes)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let path = dir.join(format!("{dtype:?}.safetensors"));
    let mut metadata = HashMap::new();
    metadata.insert("config".to_string(), file.metadata("config").unwrap().to_string());
    safetensors::serialize_to_file(views, Some(metadata), &path).unwrap();
    path
}

#[test]
fn f16_and_bf16_checkpoints_load_converted_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let forward = vectors("forward.safetensors");
    let x = tensor(&forward, "x").into_dimensionality::<Ix4>().unwrap();
    let expected = tensor(&forward, "out");
    // The forward pass with weights rounded to f16 (11-bit mantissa) and bf16 (8-bit): measured
    // max |diff| against the f32 output 7.0e-4 (f16) and 6.0e-3 (bf16); budgets 5e-3 and 5e-2.
    for (dtype, convert, budget) in [
        (
            safetensors::Dtype::F16,
            (|v| half::f16::from_f32(v).to_le_bytes()) as fn(f32) -> [u8; 2],
            5e-3,
        ),
        (
            safetensors::Dtype::BF16,
            |v| half::bf16::from_f32(v).to_le_bytes(),
            5e-2,
        ),
    ] {
        let path = converted(dir.path(), dtype, convert);
        let model = Dit::load(&path, None, None).unwrap();
        let out = model
            .forward(x.view(), &timesteps(&forward, "t"), &labels(&forward, "y"))
            .unwrap();
        let diff = max_abs_diff(&format!("{dtype:?} out"), &out, &expected);
        eprintln!("{dtype:?}: max |diff| {diff:.2e}");
        assert!(diff < budget, "{dtype:?}: {diff}");
        // Every value is the exact f32 of its half-precision source.
        let file = SafetensorsFile::open(&path).unwrap();
        let w = file
            .read_f32("blocks.0.attn.qkv.weight")
            .unwrap()
            .into_dimensionality::<Ix2>()
            .unwrap();
        assert_eq!(w, *model.weights.blocks[0].qkv.weight());
    }
}

#[test]
fn an_official_shaped_checkpoint_without_metadata_gets_its_preset_heads() {
    // DiT-S/8 shapes (the smallest official preset), random weights, no metadata at all.
    let config = DitConfig::preset("DiT-S/8").unwrap();
    let weights = DitWeights::random(&config, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dit-s-8.safetensors");
    let tensors: Vec<(String, OutTensor)> = weights.to_tensors(&config);
    write_safetensors(&path, tensors, HashMap::new()).unwrap();
    let model = Dit::load(&path, None, None).unwrap();
    assert_eq!(model.config, config);
    // A non-official width still needs --heads.
    let odd = DitConfig {
        hidden_size: 96,
        num_heads: 4,
        ..DitConfig::preset("tiny").unwrap()
    };
    let path = dir.path().join("odd.safetensors");
    write_safetensors(
        &path,
        DitWeights::random(&odd, 1).unwrap().to_tensors(&odd),
        HashMap::new(),
    )
    .unwrap();
    let err = Dit::load(&path, None, None).unwrap_err().to_string();
    assert!(err.contains("--heads"), "{err}");
    assert_eq!(Dit::load(&path, None, Some(4)).unwrap().config, odd);
}
