//! Bad safetensors files and configs: a proptest-driven fuzz corpus over the loader, the config
//! inference and JSON configs (every input gets a value or an error, never a panic), and one
//! regression test for each defect class found by hand or by the fuzzer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use proptest::prelude::*;
use resca_reference::config::DitConfig;
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors};
use resca_reference::weights::DitWeights;

fn tiny_weights_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/tiny/weights.safetensors")
}

/// Builds a file from a header text and a data section.
fn file_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Everything a command does with a checkpoint, none of which may panic: open, list, read
/// every tensor every way, infer the config (with and without heads), load the weights.
fn exercise(path: &Path) {
    let Ok(file) = SafetensorsFile::open(path) else {
        return;
    };
    for name in file.names() {
        let shape = file.shape(&name).expect("listed");
        if let Ok(values) = file.read_f32(&name) {
            assert_eq!(values.shape(), &shape[..]);
        }
        let _ = file.read_i64(&name);
        let _ = file.read_f64(&name);
        let _ = file.nonempty_shape(&name);
    }
    for heads in [None, Some(1), Some(4), Some(usize::MAX)] {
        if let Ok(config) = DitConfig::infer(&file, heads) {
            config.validate().expect("an inferred config is valid");
            let _ = DitWeights::load(&file, &config);
        }
    }
}

/// A JSON value for a shape entry: sizes that are ordinary, zero, or absurd.
fn dimension() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..5).prop_map(|d| d.to_string()),
        Just("64".to_string()),
        Just("4294967296".to_string()),
        Just("18446744073709551615".to_string()),
        Just("-1".to_string()),
        Just("1e300".to_string()),
    ]
}

fn dtype() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("F64"),
        Just("I64"),
        Just("I32"),
        Just("U8"),
        Just("BOOL"),
        Just("F4"),
        Just("Q8"),
    ]
}

/// Names the config inference looks for, and others, so that inference gets far.
fn tensor_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x_embedder.proj.weight".to_string()),
        Just("pos_embed".to_string()),
        Just("blocks.0.attn.qkv.weight".to_string()),
        Just("blocks.1.attn.qkv.weight".to_string()),
        Just("blocks.0.mlp.fc1.weight".to_string()),
        Just("y_embedder.embedding_table.weight".to_string()),
        Just("final_layer.linear.weight".to_string()),
        Just("__metadata__".to_string()),
        "[a-z.]{1,8}",
    ]
}

/// A header of 0-6 entries whose shapes, dtypes and offsets are consistent or not.
fn header_and_data() -> impl Strategy<Value = (String, Vec<u8>)> {
    let entry = (
        tensor_name(),
        dtype(),
        prop::collection::vec(dimension(), 0..5),
        any::<bool>(),
        0u64..64,
    );
    (prop::collection::vec(entry, 0..7), any::<bool>(), 0usize..64).prop_map(|(entries, metadata, extra)| {
        let mut offset = 0u64;
        let mut parts = Vec::new();
        if metadata {
            parts.push(r#""__metadata__":{"config":"{\"num_heads\": 4}"}"#.to_string());
        }
        for (name, dtype, shape, consistent, length) in entries {
            let elements = shape
                .iter()
                .try_fold(1u64, |n, d| d.parse::<u64>().ok().and_then(|d| n.checked_mul(d)));
            let size = match (dtype, elements) {
                ("F32" | "I32", Some(n)) => n.checked_mul(4),
                ("F16" | "BF16", Some(n)) => n.checked_mul(2),
                ("F64" | "I64", Some(n)) => n.checked_mul(8),
                (_, Some(n)) => Some(n),
                _ => None,
            };
            let length = match (consistent, size) {
                (true, Some(size)) if size < 4096 => size,
                _ => length,
            };
            parts.push(format!(
                r#""{name}":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{offset},{}]}}"#,
                shape.join(","),
                offset + length
            ));
            offset += length;
        }
        let data = vec![0x3Fu8; offset as usize + extra % 3];
        (format!("{{{}}}", parts.join(",")), data)
    })
}

proptest! {
    #![proptest_config(resca_tests::proptest_config(400))]

    /// Crafted headers (duplicate names, 0-D and size-0 shapes, absurd sizes, wrong offsets,
    /// unknown dtypes) and wrong length fields.
    #[test]
    fn crafted_headers_get_an_error_or_a_value_never_a_panic(
        (header, data) in header_and_data(),
        length_delta in prop_oneof![Just(0i64), -9i64..9, Just(i64::MAX / 2)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        let mut bytes = file_bytes(&header, &data);
        let declared = (header.len() as i64).saturating_add(length_delta).max(0) as u64;
        bytes[..8].copy_from_slice(&declared.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        exercise(&path);
    }

    /// A real checkpoint with bytes changed in its header or cut short.
    #[test]
    fn mutated_checkpoints_get_an_error_or_a_value_never_a_panic(
        edits in prop::collection::vec((0usize..4096, any::<u8>()), 1..6),
        cut in prop::option::of(0usize..800_000),
    ) {
        let mut bytes = std::fs::read(tiny_weights_path()).unwrap();
        for (at, value) in edits {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.min(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        exercise(&path);
    }

    /// JSON configs with ordinary and absurd values.
    #[test]
    fn json_configs_get_an_error_or_a_valid_config(
        values in prop::collection::vec(prop_oneof![
            (0u64..10).prop_map(|v| v.to_string()),
            Just("64".to_string()),
            Just("4294967296".to_string()),
            Just("18446744073709551615".to_string()),
            Just("1e300".to_string()),
            Just("-3".to_string()),
            Just("0.5".to_string()),
        ], 8),
        learn_sigma in any::<bool>(),
    ) {
        let fields = ["input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio", "num_classes"];
        let body: Vec<String> = fields.iter().zip(&values).map(|(f, v)| format!("\"{f}\": {v}")).collect();
        let text = format!("{{{}, \"learn_sigma\": {learn_sigma}}}", body.join(", "));
        if let Ok(config) = DitConfig::from_json(&text) {
            prop_assert!(config.tokens() <= resca_reference::config::MAX_TOKENS);
            prop_assert!(config.parameter_count() as u64 <= resca_reference::config::MAX_PARAMETERS);
            let method = resca_reference::cache::MethodConfig::full();
            let memory = resca_reference::memory::sampling_estimate(&config, &method, usize::MAX, usize::MAX, usize::MAX, 2);
            prop_assert!(memory.total() > 0);
        }
    }
}

/// Writes `tensors` with the tiny weights' metadata into `dir`.
fn write_tensors(dir: &Path, name: &str, tensors: Vec<(String, OutTensor)>) -> PathBuf {
    let path = dir.join(name);
    write_safetensors(&path, tensors, HashMap::new()).unwrap();
    path
}

fn error_of(path: &Path, heads: Option<usize>) -> String {
    let result = SafetensorsFile::open(path).and_then(|file| DitConfig::infer(&file, heads));
    format!("{}", result.expect_err("refused"))
}

#[test]
fn a_zero_dimensional_tensor_where_inference_reads_a_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let scalar = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), 1.0f32);
    let path = write_tensors(
        dir.path(),
        "s.safetensors",
        vec![("x_embedder.proj.weight".into(), OutTensor::F32(scalar))],
    );
    let error = error_of(&path, Some(4));
    assert!(
        error.contains("tensor `x_embedder.proj.weight` has shape []") && error.contains("0-dimensional"),
        "{error}"
    );
}

#[test]
fn a_size_zero_dimension_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[64, 4, 0, 0]));
    let path = write_tensors(
        dir.path(),
        "e.safetensors",
        vec![("x_embedder.proj.weight".into(), OutTensor::F32(empty))],
    );
    let error = error_of(&path, Some(4));
    assert!(error.contains("[64, 4, 0, 0]") && error.contains("empty"), "{error}");
}

/// Shapes whose products wrapped around before (patch area, grid, classes + 1) are refused
/// with the limit they pass.
#[test]
fn absurd_shapes_are_refused_by_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let one = |shape: &[usize]| OutTensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(shape)));
    let path = write_tensors(
        dir.path(),
        "p.safetensors",
        vec![("x_embedder.proj.weight".into(), one(&[4, 1, 100, 100]))],
    );
    let error = error_of(&path, Some(4));
    assert!(error.contains("patch size 100, above the limit of 64"), "{error}");
    // A header declaring 2^32 x 2^32 elements overflows its byte count: refused at open.
    let header = r#"{"pos_embed":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#;
    std::fs::write(dir.path().join("o.safetensors"), file_bytes(header, &[])).unwrap();
    let error = SafetensorsFile::open(dir.path().join("o.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("tensor `pos_embed`") && error.contains("too large"),
        "{error}"
    );
}

#[test]
fn absurd_json_configs_are_refused_before_any_allocation() {
    let base = r#"{"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0, "num_classes": 10, "learn_sigma": true}"#;
    for (from, to, expected) in [
        (
            r#""depth": 2"#,
            r#""depth": 1000000"#,
            "depth 1000000 must be between 1 and 1024",
        ),
        (
            r#""input_size": 8"#,
            r#""input_size": 4294967296"#,
            "input_size 4294967296 must be between 1 and 4096",
        ),
        (r#""mlp_ratio": 4.0"#, r#""mlp_ratio": 1e300"#, "mlp_ratio 1e300"),
        (
            r#""hidden_size": 64"#,
            r#""hidden_size": 1000000000"#,
            "hidden_size 1000000000 must be between 1 and 32768",
        ),
        (
            r#""num_classes": 10"#,
            r#""num_classes": 18446744073709551615"#,
            "num_classes 18446744073709551615",
        ),
        (
            r#""patch_size": 2"#,
            r#""patch_size": 0"#,
            "patch_size 0 must be between 1 and 64",
        ),
    ] {
        let started = Instant::now();
        let error = DitConfig::from_json(&base.replace(from, to)).unwrap_err().to_string();
        assert!(error.contains(expected), "{to}: {error}");
        // measured: microseconds (the depth-10^6 config took 5 s and 1.3 GB before its error).
        assert!(started.elapsed().as_secs_f64() < 0.5, "{to}");
    }
}

#[test]
fn duplicate_header_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let path = dir.path().join("d.safetensors");
    std::fs::write(&path, file_bytes(header, &[0; 8])).unwrap();
    let error = SafetensorsFile::open(&path).err().unwrap().to_string();
    assert!(
        error.contains("d.safetensors") && error.contains("names `a` twice"),
        "{error}"
    );
}

/// A 32 MB header (310,000 tensors) opens and serves lookups in seconds: the header is
/// parsed once, not again for every tensor lookup (42 s before).
#[test]
fn a_32_mb_header_loads_fast() {
    let dir = tempfile::tempdir().unwrap();
    let count = 310_000;
    let mut parts = Vec::with_capacity(count);
    for i in 0..count {
        parts.push(format!(
            r#""blocks.{i}.some.long.parameter.name.weight":{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}}"#,
            4 * i,
            4 * i + 4
        ));
    }
    let header = format!("{{{}}}", parts.join(","));
    assert!(header.len() > 32_000_000, "{} bytes", header.len());
    let path = dir.path().join("big.safetensors");
    std::fs::write(&path, file_bytes(&header, &vec![0; 4 * count])).unwrap();
    let started = Instant::now();
    let file = SafetensorsFile::open(&path).unwrap();
    let names = file.names();
    for name in names.iter().step_by(97) {
        assert_eq!(file.read_f32(name).unwrap().len(), 1);
    }
    // The config inference probes blocks.{l} names up to its depth limit: one lookup each.
    assert!(DitConfig::infer(&file, Some(1)).is_err());
    let seconds = started.elapsed().as_secs_f64();
    // measured: 2.2 s on the 2-core Zen 4 machine under a load average of 8 (test profile,
    // opt-level 2); 42 s before.
    assert!(seconds < 10.0, "{seconds:.1} s");
}

#[test]
fn a_fifo_a_folder_and_a_device_are_refused_by_name_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.safetensors");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    for (path, kind) in [
        (fifo.as_path(), "a FIFO"),
        (dir.path(), "a folder"),
        (Path::new("/dev/null"), "a character device"),
    ] {
        let error = SafetensorsFile::open(path).err().unwrap().to_string();
        assert!(
            error.contains(&path.display().to_string()) && error.contains(kind),
            "{error}"
        );
        let error = DitConfig::from_json_file(path).unwrap_err().to_string();
        assert!(error.contains(kind), "{error}");
    }
}

/// A checkpoint truncated after it was opened: the read fails with the tensor's name (a
/// mapped file would have killed the process with SIGBUS).
#[test]
fn a_checkpoint_truncated_while_loading_is_an_error_not_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    std::fs::copy(tiny_weights_path(), &path).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let config = DitConfig::infer(&file, None).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let error = DitWeights::load(&file, &config).unwrap_err().to_string();
    assert!(
        error.contains("w.safetensors") && error.contains("cannot read tensor"),
        "{error}"
    );
    assert!(error.contains("truncated or rewritten"), "{error}");
}

/// A checkpoint rewritten in place (same length) while loading is noticed by its changed
/// modification time.
#[test]
fn a_checkpoint_rewritten_while_loading_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    std::fs::copy(tiny_weights_path(), &path).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let config = DitConfig::infer(&file, None).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let error = DitWeights::load(&file, &config).unwrap_err().to_string();
    assert!(error.contains("changed while it was being read"), "{error}");
}

#[test]
fn the_tiny_checkpoint_still_loads_exactly() {
    let file = SafetensorsFile::open(tiny_weights_path()).unwrap();
    let config = DitConfig::infer(&file, None).unwrap();
    assert_eq!(config, DitConfig::preset("tiny").unwrap());
    let weights = DitWeights::load(&file, &config).unwrap();
    let expected = file.read_f32("pos_embed").unwrap();
    assert_eq!(weights.pos_embed.as_slice().unwrap(), expected.as_slice().unwrap());
}
