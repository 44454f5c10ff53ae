//! The picture outputs of `resca sample`, `resca compare`, `resca trajectories` and
//! `resca stability`: written, decodable, of the expected size, and not blank.

use std::path::Path;
use std::process::Command;

fn resca(args: &[&str], dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_resca"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("resca runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (width, height, number of distinct colours) of a PNG.
fn inspect(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("PNG written")));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
    (info.width, info.height, colours.len())
}

#[test]
fn default_sample_run_writes_the_classes_by_seeds_grid_of_both_methods() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = resca(&["sample", "--steps", "6", "--seeds", "1"], dir.path());
    assert!(
        stdout.contains("method full") && stdout.contains("method resca-ie"),
        "{stdout}"
    );
    let (w, h, colours) = inspect(&dir.path().join("sample.png"));
    // Two panels of 10 classes, 32 px images at scale 3 with 2 px gaps, plus margins and a title.
    assert_eq!((w, h), (8 + 2 * (10 * 98 + 8), 16 + 14 + 98));
    assert!(colours > 50, "only {colours} colours: blank?");
}

#[test]
fn compare_writes_its_table_json_and_one_row_of_samples_per_method() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = resca(
        &[
            "compare",
            "--steps",
            "10",
            "--seeds",
            "1",
            "--json",
            "c.json",
            "--markdown",
            "c.md",
        ],
        dir.path(),
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("c.json")).unwrap()).unwrap();
    // The embedded model's default guidance, recorded with the table.
    assert_eq!(json["cfg_scale"], 4.0);
    assert!(stdout.contains("guidance scale 4"));
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!(rows[0]["method"], "full");
    assert_eq!(rows[0]["rmse"], 0.0);
    for row in rows {
        let accuracy = row["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy) && row["frechet"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("c.md"))
            .unwrap()
            .lines()
            .count(),
        14
    );
    assert!(stdout.contains("| ~4x | resca-ie (N=5, K=16) |"));
    let (w, h, colours) = inspect(&dir.path().join("compare.png"));
    // One row of 10 samples at scale 2 (66 px each) per method, 12 methods.
    assert_eq!((w, h), (16 + 10 * 66, 8 + 12 * (66 + 14 + 8)));
    assert!(colours > 50, "only {colours} colours: blank?");
}

#[test]
fn trajectories_plots_the_tokens_and_both_cluster_maps() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = resca(
        &[
            "trajectories",
            "--steps",
            "12",
            "--interval",
            "3",
            "--tokens",
            "100,140",
            "--json",
        ],
        dir.path(),
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["tokens"], serde_json::json!([100, 140]));
    assert_eq!(json["state_rmse_vs_full"].as_array().unwrap().len(), 3);
    assert!(json["trajectory_clusters_residual_spread"].as_f64().unwrap() > 0.0);
    let (w, h, colours) = inspect(&dir.path().join("trajectories.png"));
    assert_eq!(w, 12 + 2 * (220 + 12));
    assert!(h > 400 && colours > 10, "{w}x{h}, {colours} colours");
}

#[test]
fn stability_png_has_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    resca(
        &[
            "stability",
            "--scheme",
            "implicit-taylor",
            "--order",
            "3",
            "--png",
            "s.png",
        ],
        dir.path(),
    );
    let (w, h, colours) = inspect(&dir.path().join("s.png"));
    assert_eq!((w, h), (500, 400));
    assert!(colours >= 4);
}
