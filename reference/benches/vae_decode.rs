//! Benchmark of the VAE decoder (sd-vae configuration, random weights, f32) against diffusers'
//! `AutoencoderKL.decode` on the same CPU threads, side by side in one run: for each image side
//! (256 and 512, one image), runs alternate ours / diffusers' (`bench/pytorch_vae_decode.py
//! --serve`, a child process kept between runs), after one warm-up each; printed are each
//! side's median times and the median of the per-pair ratios. Then the decoder's peak memory at
//! 512x512, measured in a fresh process (this program run again with `memory`): its peak
//! resident set (`VmHWM`) against the weights plus the largest feature map.
//!
//! `cargo bench -p resca-reference --bench vae_decode -- [RUNS]` (default 5). The anchor runs
//! under the Python of `RESCA_PYTHON` if set (e.g. a virtual environment's `bin/python3`), else
//! `python3` from the `PATH`. Without it, torch or diffusers the anchor is skipped with the
//! reason, and ours is timed alone.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use ndarray::Array4;
use resca_reference::vae::{VaeConfig, VaeDecoder};

/// Peak resident set size of this process in bytes (`VmHWM` of /proc/self/status).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn latents(side: usize) -> Array4<f32> {
    let s = side / 8;
    Array4::from_shape_fn((1, 4, s, s), |(_, c, h, w)| {
        ((c * 131 + h * 17 + w * 5) as f32 * 0.37).sin()
    })
}

/// diffusers' decoder in a child process, timing one decode per request.
struct Anchor {
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
    child: std::process::Child,
}

impl Anchor {
    fn start(threads: usize) -> Result<(Self, String), String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/pytorch_vae_decode.py");
        let python = std::env::var("RESCA_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .args([script, "--serve", "--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {python} (set RESCA_PYTHON to another Python): {e}"))?;
        let input = child.stdin.take().expect("piped");
        let mut output = BufReader::new(child.stdout.take().expect("piped"));
        let mut ready = String::new();
        output.read_line(&mut ready).map_err(|e| e.to_string())?;
        if !ready.starts_with("ready") {
            let _ = child.wait();
            return Err(format!(
                "bench/pytorch_vae_decode.py did not start under {python} (are torch and diffusers installed?)"
            ));
        }
        Ok((Self { input, output, child }, ready.trim().to_string()))
    }

    fn decode_seconds(&mut self, side: usize) -> f64 {
        writeln!(self.input, "{side}").expect("anchor alive");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("anchor answers");
        line.trim().parse().expect("seconds")
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The child run: decode one 512x512 image and print the peak resident memory against the
/// weights plus the largest feature map (256 channels at 512x512).
fn measure_memory() {
    let config = VaeConfig::sd_vae();
    let decoder = VaeDecoder::random(config.clone(), 0).expect("valid config");
    decoder.decode(latents(512).view()).expect("decode");
    let weights = 4 * VaeDecoder::parameter_count(&config);
    let largest: u64 = 4 * 256 * 512 * 512;
    let peak = peak_rss_bytes().expect("/proc/self/status");
    println!(
        "memory at 512x512 (fresh process): peak RSS {:.0} MB = {:.2}x (weights {:.0} MB + largest feature map {:.0} MB)",
        peak as f64 / 1e6,
        peak as f64 / (weights + largest) as f64,
        weights as f64 / 1e6,
        largest as f64 / 1e6
    );
}

fn main() {
    resca_reference::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if args.first().map(String::as_str) == Some("memory") {
        measure_memory();
        return;
    }
    let runs: usize = args.first().and_then(|r| r.parse().ok()).unwrap_or(5);
    let threads = rayon::current_num_threads();
    let cpu = resca_reference::calibration::cpu_identity();
    println!(
        "CPU: {}",
        cpu.split("; ")
            .filter(|f| !f.starts_with("flags"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let config = VaeConfig::sd_vae();
    let decoder = VaeDecoder::random(config.clone(), 0).expect("valid config");
    println!(
        "sd-vae decoder: {:.1}M parameters, {threads} threads",
        VaeDecoder::parameter_count(&config) as f64 / 1e6
    );
    let mut anchor = match Anchor::start(threads) {
        Ok((anchor, ready)) => {
            println!("diffusers anchor: {ready}");
            Some(anchor)
        }
        Err(why) => {
            println!("SKIP diffusers anchor: {why}");
            None
        }
    };
    for side in [256usize, 512] {
        let x = latents(side);
        decoder.decode(x.view()).expect("warm-up");
        if let Some(anchor) = anchor.as_mut() {
            anchor.decode_seconds(side);
        }
        let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let start = Instant::now();
            std::hint::black_box(decoder.decode(x.view()).expect("decode"));
            ours.push(start.elapsed().as_secs_f64());
            if let Some(anchor) = anchor.as_mut() {
                theirs.push(anchor.decode_seconds(side));
                ratios.push(ours.last().unwrap() / theirs.last().unwrap());
            }
        }
        let ours_median = median(&mut ours);
        if ratios.is_empty() {
            println!("{side}x{side}: ours median {ours_median:.3} s over {runs} runs");
        } else {
            println!(
                "{side}x{side}: ours median {ours_median:.3} s, diffusers median {:.3} s over {runs} alternated runs; ours/diffusers per pair: median {:.2}x (min {:.2}x, max {:.2}x)",
                median(&mut theirs),
                median(&mut ratios.clone()),
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
        }
    }
    drop(anchor);
    let status = Command::new(std::env::current_exe().expect("this program"))
        .arg("memory")
        .status()
        .expect("the memory run starts");
    assert!(status.success(), "the memory run failed");
}
