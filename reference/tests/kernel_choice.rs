//! The kernel choice end to end, as a user sets it: each test runs this file's
//! `products_under_the_environment` in a child process with the environment variables set
//! (`RESCA_CPU_KERNEL`, `RESCA_CPU_CALIBRATION` (`always` unless a test sets it: the tests run
//! beside each other), and `XDG_CACHE_HOME` in a temporary folder, so that no test reads or
//! writes the user's cache folder), and compares the bits of the layers' products across them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ndarray::{Array1, Array2};
use resca_reference::calibration;
use resca_reference::gemm::PanelVariant;
use resca_reference::weights::{FEW_ROWS, Linear};
use serde::{Deserialize, Serialize};

/// Row counts multiplied by the token layer: a few (the lanes kernel's, on a layer held plain)
/// and many, past 512 (passes shallower than a block).
const TOKEN_ROWS: [usize; 7] = [1, 13, 32, FEW_ROWS, 200, 300, 600];

/// Row counts multiplied by the layer only ever applied to a few rows.
const FEW_ROWS_ROWS: [usize; 2] = [2, 40];

/// What a child reports.
#[derive(Serialize, Deserialize)]
struct Report {
    /// `"token R"` / `"few-rows R"` -> the bits of the product of R rows.
    products: BTreeMap<String, Vec<u32>>,
    measurements: usize,
    choices: Vec<(String, String)>,
    cache_file: Option<String>,
}

fn matrix(rows: usize, cols: usize, seed: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |(i, j)| {
        ((i * 131 + j * 17 + seed * 7) % 97) as f32 / 48.0 - 1.0
    })
}

/// Run by the other tests in a child process: multiplies a token layer (200 x 600: 256 rows of
/// it are 2^24.9 multiply-adds, so it is calibrated) and a few-rows layer by the kernels the
/// environment chooses, and writes the report to `RESCA_TEST_REPORT`.
#[test]
#[ignore = "run by the other tests of this file in a child process, with the environment they set"]
fn products_under_the_environment() {
    let Ok(report_path) = std::env::var("RESCA_TEST_REPORT") else {
        println!("SKIP: RESCA_TEST_REPORT is not set (the other tests of this file run this one)");
        return;
    };
    let token = Linear::new(matrix(200, 600, 1), Array1::from_shape_fn(200, |j| j as f32 * 0.01));
    let few = Linear::new_few_rows(
        matrix(480, 600, 2).view(),
        Array1::from_shape_fn(480, |j| 0.2 - j as f32 * 0.001),
    );
    let mut products = BTreeMap::new();
    for (layer, name, rows) in TOKEN_ROWS
        .iter()
        .map(|&rows| (&token, "token", rows))
        .chain(FEW_ROWS_ROWS.iter().map(|&rows| (&few, "few-rows", rows)))
    {
        let y = layer.forward(matrix(rows, 600, rows).view());
        products.insert(format!("{name} {rows}"), y.iter().map(|v| v.to_bits()).collect());
    }
    let calibrator = calibration::global();
    let report = Report {
        products,
        measurements: calibrator.measurements(),
        choices: calibrator.choices(),
        cache_file: calibrator.cache_file().map(|path| path.display().to_string()),
    };
    std::fs::write(report_path, serde_json::to_string(&report).unwrap()).unwrap();
}

/// Runs the child with `vars` and `XDG_CACHE_HOME=cache`; its report and its stderr.
fn child(cache: &Path, vars: &[(&str, &str)]) -> (Report, String) {
    let report = cache.join(format!("report-{}.json", next_report()));
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args(["products_under_the_environment", "--exact", "--ignored", "--nocapture"])
        .env_remove(calibration::KERNEL_VAR)
        // Tests run beside each other: keep what is measured on a busy machine too.
        .env(calibration::CALIBRATION_VAR, "always")
        .env("XDG_CACHE_HOME", cache)
        .env("RESCA_TEST_REPORT", &report);
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().expect("the child runs");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "child with {vars:?} failed: {stderr}");
    let text = std::fs::read_to_string(&report).expect("the child's report");
    std::fs::remove_file(&report).unwrap();
    (serde_json::from_str(&text).expect("a report"), stderr)
}

/// A distinct number per call in this process, for the children's report files.
fn next_report() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The files of the cache folder (the children's reports are removed as they are read).
fn cache_files(cache: &Path) -> Vec<String> {
    let resca = cache.join("resca");
    match std::fs::read_dir(&resca) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Largest |a - b| over the product, relative to the largest |b|.
fn relative_difference(a: &[u32], b: &[u32]) -> f64 {
    let scale = b.iter().map(|&v| f32::from_bits(v).abs() as f64).fold(0.0, f64::max);
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f32::from_bits(x) as f64 - f32::from_bits(y) as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

/// `RESCA_CPU_KERNEL=panels` and each variant give the same bits on every product; `lanes` the
/// same bits on a few rows (many go to OpenBLAS); `openblas` products within f32 rounding of
/// them; the few-rows layer (held in panels whatever is forced) the same bits throughout. None
/// measures anything or writes a cache file.
#[test]
fn forcing_each_kernel_gives_the_same_bits() {
    let cache = tempfile::tempdir().expect("a temporary folder");
    let (panels, _) = child(cache.path(), &[(calibration::KERNEL_VAR, "panels")]);
    let mut forced: Vec<String> = vec!["lanes".into(), "openblas".into()];
    forced.extend(PanelVariant::candidates().iter().map(|v| v.name().to_string()));
    for kernel in &forced {
        let (report, stderr) = child(cache.path(), &[(calibration::KERNEL_VAR, kernel)]);
        assert!(stderr.is_empty(), "{kernel}: {stderr}");
        assert_eq!(
            (report.measurements, report.cache_file.as_deref()),
            (0, None),
            "{kernel}"
        );
        for (product, bits) in &report.products {
            let expected = &panels.products[product];
            let rows: usize = product.split(' ').nth(1).unwrap().parse().unwrap();
            let same_bits = match kernel.as_str() {
                "openblas" => product.starts_with("few-rows"),
                "lanes" => product.starts_with("few-rows") || rows <= FEW_ROWS,
                _ => true,
            };
            if same_bits {
                assert!(bits == expected, "{kernel}: {product} differs from the panel kernel's");
            } else {
                // OpenBLAS sums in another order: measured up to 9.6e-7 of the largest output
                // (600 inputs, OpenBLAS 0.3.21 on an AMD EPYC Zen 4).
                let difference = relative_difference(bits, expected);
                println!("{kernel}: {product} off by {difference:e}");
                assert!(difference < 4e-6, "{kernel}: {product} off by {difference:e}");
            }
        }
    }
    assert!(cache_files(cache.path()).is_empty());
}

/// The first run measures and writes the cache file of this CPU; the next reads it, measures
/// nothing and gives the same bits; with `RESCA_CPU_CALIBRATION=off` nothing is measured or
/// written and the built-in rule decides.
#[test]
fn the_calibration_is_cached_and_can_be_switched_off() {
    let cache = tempfile::tempdir().expect("a temporary folder");
    let (first, stderr) = child(cache.path(), &[]);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(first.measurements > 0);
    let file = first.cache_file.clone().expect("a cache file");
    assert!(Path::new(&file).starts_with(cache.path().join("resca")), "{file}");
    assert_eq!(cache_files(cache.path()).len(), 1);
    let (second, stderr) = child(cache.path(), &[]);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(second.measurements, 0);
    assert_eq!(second.choices, first.choices);
    assert!(second.products == first.products);

    let off_cache = tempfile::tempdir().expect("a temporary folder");
    let (off, stderr) = child(off_cache.path(), &[(calibration::CALIBRATION_VAR, "off")]);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!((off.measurements, off.choices.len(), off.cache_file), (0, 0, None));
    assert!(cache_files(off_cache.path()).is_empty());
    // The built-in rule: the panel kernel where the CPU has AVX-512, else OpenBLAS for many rows
    // and the lanes kernel for a few.
    let rule = if PanelVariant::built_in().name().starts_with("avx512") {
        "panels"
    } else {
        "lanes"
    };
    let (ruled, _) = child(off_cache.path(), &[(calibration::KERNEL_VAR, rule)]);
    assert!(off.products == ruled.products, "the rule is not `{rule}`");
}

/// A cache file that is not a calibration is ignored with one line on stderr naming it, and
/// rewritten: the run succeeds and the next one reads the file again without a note.
#[test]
fn a_corrupt_cache_is_ignored_with_a_note_and_rewritten() {
    let cache = tempfile::tempdir().expect("a temporary folder");
    let (first, _) = child(cache.path(), &[]);
    let file = first.cache_file.expect("a cache file");
    std::fs::write(&file, "{\"format\": 1, \"cpu\": ").unwrap();
    let (after, stderr) = child(cache.path(), &[]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("resca: ignoring") && stderr.contains(&file),
        "{stderr}"
    );
    assert!(after.measurements > 0);
    let (again, stderr) = child(cache.path(), &[]);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!((again.measurements, again.choices), (0, after.choices));
    // An unknown forced kernel is noted and ignored.
    let (_, stderr) = child(cache.path(), &[(calibration::KERNEL_VAR, "fastest")]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("RESCA_CPU_KERNEL=fastest"), "{stderr}");
}
