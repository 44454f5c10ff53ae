//! Bad PyTorch checkpoints: pickles that ask for code, views that are not contiguous, storages
//! that are missing, short or compressed, and a fuzz corpus of damaged copies of a real
//! `torch.save` file. Every one gets an error naming the file (and the tensor or global), never
//! a panic.

use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use resca_reference::config::DitConfig;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::weights::DitWeights;
use zip::write::SimpleFileOptions;

fn tiny_pt_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/tiny/weights.pt")
}

/// A protocol-2 pickle of `OrderedDict([(name, _rebuild_tensor_v2(storage, offset, shape,
/// stride, False, OrderedDict()))])`, the storage `('storage', <storage_global>, '0', 'cpu',
/// elements)`, as `torch.save` writes a state dict of one tensor.
fn state_dict_pickle(
    name: &str,
    storage_global: &str,
    elements: u8,
    offset: u8,
    shape: [u8; 2],
    stride: [u8; 2],
) -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    text(&mut p, name);
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    text(&mut p, "storage");
    p.extend(format!("c{}\n", storage_global.replacen('.', "\n", 1)).as_bytes());
    text(&mut p, "0");
    text(&mut p, "cpu");
    p.extend([b'K', elements, b't', b'Q', b'K', offset]);
    p.extend([
        b'K', shape[0], b'K', shape[1], 0x86, b'K', stride[0], b'K', stride[1], 0x86, 0x89,
    ]);
    p.extend(b"ccollections\nOrderedDict\n)Rt");
    p.extend(b"Ru.");
    p
}

/// Writes a zip archive `archive/data.pkl` + `archive/data/0` (`storage` bytes), stored
/// entries as `torch.save` writes them.
fn checkpoint(dir: &Path, pickle: &[u8], storage: &[u8]) -> PathBuf {
    let path = dir.join("checkpoint.pt");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", stored).unwrap();
    zip.write_all(storage).unwrap();
    zip.finish().unwrap();
    path
}

fn open_error(path: &Path) -> String {
    match SafetensorsFile::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_well_formed_hand_made_checkpoint_reads_with_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<u8> = (0..14).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let pickle = state_dict_pickle("w", "torch.FloatStorage", 14, 2, [3, 4], [4, 1]);
    let path = checkpoint(dir.path(), &pickle, &values);
    let file = SafetensorsFile::open(&path).unwrap();
    let w = file.read_f32("w").unwrap();
    assert_eq!(w.shape(), [3, 4]);
    assert_eq!(
        w.iter().copied().collect::<Vec<_>>(),
        (2..14).map(|i| i as f32).collect::<Vec<_>>()
    );
}

#[test]
fn a_pickle_asking_for_os_system_is_refused_naming_the_global_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut pickle = b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch owned\x85R.".to_vec();
    let path = checkpoint(dir.path(), &pickle, &[0; 4]);
    let error = open_error(&path);
    assert!(
        error.contains("`os.system`") && error.contains("checkpoint.pt") && error.contains("refused"),
        "{error}"
    );
    assert!(!dir.path().join("owned").exists());
    // The same global where a storage type belongs, and a builtin through STACK_GLOBAL.
    pickle = state_dict_pickle("w", "os.system", 1, 0, [1, 1], [1, 1]);
    assert!(open_error(&checkpoint(dir.path(), &pickle, &[0; 4])).contains("`os.system`"));
    let stacked = b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93X\x01\x00\x00\x001\x85R.";
    assert!(open_error(&checkpoint(dir.path(), stacked, &[0; 4])).contains("`builtins.exec`"));
}

#[test]
fn strided_views_short_storages_and_reads_past_them_are_refused_by_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let values = vec![0u8; 48];
    for (pickle, expected) in [
        (
            state_dict_pickle("blocks.0.w", "torch.FloatStorage", 12, 0, [3, 4], [1, 3]),
            "strided view",
        ),
        (
            state_dict_pickle("blocks.0.w", "torch.FloatStorage", 12, 4, [3, 4], [4, 1]),
            "elements 4..16",
        ),
        (
            state_dict_pickle("blocks.0.w", "torch.FloatStorage", 20, 0, [3, 4], [4, 1]),
            "holds 48 bytes",
        ),
        (
            state_dict_pickle("blocks.0.w", "torch.DoubleStorage", 6, 0, [2, 3], [3, 1]),
            "`torch.DoubleStorage`",
        ),
    ] {
        let error = open_error(&checkpoint(dir.path(), &pickle, &values));
        assert!(
            error.contains(expected) && error.contains("checkpoint.pt"),
            "{expected}: {error}"
        );
        if expected != "`torch.DoubleStorage`" {
            assert!(error.contains("`blocks.0.w`"), "{error}");
        }
    }
}

#[test]
fn legacy_checkpoints_and_archives_without_a_pickle_get_their_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("legacy.pt");
    std::fs::write(&legacy, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    assert!(open_error(&legacy).contains("legacy format"));
    let path = dir.path().join("other.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file("readme.txt", SimpleFileOptions::default()).unwrap();
    zip.write_all(b"hello").unwrap();
    zip.finish().unwrap();
    assert!(open_error(&path).contains("no `data.pkl`"));
}

#[test]
fn a_missing_storage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.pt");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file("archive/data.pkl", SimpleFileOptions::default())
        .unwrap();
    zip.write_all(&state_dict_pickle("w", "torch.HalfStorage", 4, 0, [2, 2], [2, 1]))
        .unwrap();
    zip.finish().unwrap();
    let error = open_error(&path);
    assert!(
        error.contains("`archive/data/0` is missing") && error.contains("`w`"),
        "{error}"
    );
}

/// Everything a command does with a checkpoint, none of which may panic.
fn exercise(path: &Path) {
    let Ok(file) = SafetensorsFile::open(path) else {
        return;
    };
    for name in file.names() {
        let _ = file.read_f32(&name);
        let _ = file.read_i64(&name);
    }
    if let Ok(config) = DitConfig::infer(&file, Some(4)) {
        let _ = DitWeights::load(&file, &config);
    }
}

proptest! {
    #![proptest_config(resca_tests::proptest_config(200))]

    /// The tiny DiT's `torch.save` file with bytes overwritten (in its pickle, its zip
    /// directory or anywhere) or cut short: an error or a load, never a panic.
    #[test]
    fn damaged_torch_checkpoints_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
        in_pickle in any::<bool>(),
    ) {
        let mut bytes = std::fs::read(tiny_pt_path()).unwrap();
        // The pickle is the first entry: its bytes start after a local header of about 60 bytes.
        let span = if in_pickle { 64..bytes.len().min(4096) } else { 0..bytes.len() };
        for (index, value) in edits {
            let at = span.start + index.index(span.len());
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.pt");
        std::fs::write(&path, &bytes).unwrap();
        exercise(&path);
    }
}
