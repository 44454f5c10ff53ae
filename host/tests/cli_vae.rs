//! `resca decode` and `resca sample --vae` end to end, on the reduced-width VAE and the tiny DiT
//! saved with torch.save (`tests/vectors/make_vae_vectors.py`), and their bad inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors};
use resca_tests::max_rel_to_max;

fn vectors(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors")
        .join(path)
}

fn resca(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resca"))
        .args(args)
        .env("RESCA_CUDA_DISABLE", "1")
        .output()
        .expect("resca runs")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// (width, height) of a PNG and whether it has colours that are not grey.
fn inspect(png_path: &Path) -> (u32, u32, bool) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).expect("PNG written"),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let coloured = buf[..info.buffer_size()]
        .chunks(3)
        .any(|p| p[0] != p[1] || p[1] != p[2]);
    (info.width, info.height, coloured)
}

#[test]
fn decode_reproduces_diffusers_and_writes_the_images_and_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let (out, png) = (dir.path().join("images.safetensors"), dir.path().join("images.png"));
    let input = vectors("vae/decode.safetensors");
    let run = resca(&[
        "decode",
        "--vae",
        path(&vectors("vae")),
        "--input",
        path(&input),
        "--out",
        path(&out),
        "--png",
        path(&png),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let images = SafetensorsFile::open(&out).unwrap().read_f32("images").unwrap();
    let expected = SafetensorsFile::open(&input).unwrap().read_f32("images").unwrap();
    assert_eq!(images.shape(), [2, 3, 64, 64]);
    let error = max_rel_to_max("decoded images", &images, &expected);
    // Measured 5.6e-6 relative to the largest magnitude (as the library test); budget 1e-4.
    assert!(error < 1e-4, "{error:e}");
    let (width, height, coloured) = inspect(&png);
    assert!(width > 2 * 64 && height > 64 && coloured, "{width}x{height}");
}

#[test]
fn sample_with_a_torch_checkpoint_and_a_vae_writes_an_rgb_grid_of_decoded_images() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("grid.png");
    let run = resca(&[
        "sample",
        "--weights",
        path(&vectors("tiny/weights.pt")),
        "--heads",
        "4",
        "--vae",
        path(&vectors("vae")),
        "--steps",
        "4",
        "--batch",
        "3",
        "--png",
        path(&png),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    // Three 64x64 decoded images (8x the tiny model's 8x8 latents) side by side, at scale 1.
    let (width, height, coloured) = inspect(&png);
    assert!(
        (3 * 64..4 * 70 + 20).contains(&width) && (64..110).contains(&height) && coloured,
        "{width}x{height}"
    );
}

#[test]
fn bad_vae_inputs_are_refused_by_flag_with_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("x.png");
    let latents = dir.path().join("latents.safetensors");
    let wrong = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 3, 8, 8]));
    write_safetensors(
        &latents,
        vec![("x".to_string(), OutTensor::F32(wrong))],
        Default::default(),
    )
    .unwrap();
    let mut nan = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 4, 8, 8]));
    nan[[0, 1, 2, 3]] = f32::NAN;
    let nan_latents = dir.path().join("nan.safetensors");
    write_safetensors(
        &nan_latents,
        vec![("x".to_string(), OutTensor::F32(nan))],
        Default::default(),
    )
    .unwrap();
    let vae = vectors("vae");
    let input = vectors("vae/decode.safetensors");
    let config = vectors("vae/config.json");
    let no_latents = vectors("tiny/ddim.safetensors");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--vae", path(&config), "--input", path(&input)], "not a folder"),
        (vec!["--vae", path(dir.path()), "--input", path(&input)], "config.json"),
        (
            vec!["--vae", path(&vae), "--input", path(&latents)],
            "tensor `x` has shape [1, 3, 8, 8]",
        ),
        (vec!["--vae", path(&vae), "--input", path(&nan_latents)], "non-finite"),
        (vec!["--vae", path(&vae), "--input", path(&no_latents)], "`x`"),
        (vec!["--input", path(&input)], "--vae DIR is required"),
        (
            vec!["--vae", path(&vae), "--input", path(&input), "--latent-scale", "0"],
            "--latent-scale",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["decode"];
        all.extend(&args);
        all.extend(["--png", path(&png)]);
        let run = resca(&all);
        let message = stderr(&run);
        assert!(!run.status.success(), "{all:?} succeeded");
        assert!(
            message.contains(expected) && !message.contains("panicked"),
            "{all:?}: {message}"
        );
        assert!(!png.exists(), "{all:?} wrote {}", png.display());
    }
    // The PNG may not replace the VAE's own files.
    let run = resca(&[
        "decode",
        "--vae",
        path(&vae),
        "--input",
        path(&input),
        "--png",
        path(&config),
    ]);
    assert!(
        !run.status.success() && stderr(&run).contains("--vae"),
        "{}",
        stderr(&run)
    );
    // A preset model decodes through --vae too; --vae with --no-png asks for a grid and none.
    let run = resca(&[
        "sample",
        "--model",
        "tiny",
        "--vae",
        path(&vae),
        "--steps",
        "2",
        "--batch",
        "1",
        "--png",
        path(&png),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let run = resca(&["sample", "--model", "tiny", "--vae", path(&vae), "--no-png"]);
    assert!(
        !run.status.success() && stderr(&run).contains("--no-png"),
        "{}",
        stderr(&run)
    );
}
