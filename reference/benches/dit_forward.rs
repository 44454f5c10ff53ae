//! Benchmark of one DiT forward pass (random weights, f32) at batch 1 and 2: min and median wall
//! time over repeated runs, and the process's peak resident memory against the weights' size.
//!
//! `cargo bench -p resca-reference --bench dit_forward -- [PRESET] [RUNS]` (default DiT-XL/2, 5).
//! A recorded PyTorch timing (PyTorch 2.15 CPU, 2 threads, a 2-core AMD EPYC), printed beside ours:
//! batch 1: 2.24 s min / 2.49 s median; batch 2: 4.87 s min / 5.48 s median.

use std::time::Instant;

use ndarray::Array4;
use resca_reference::{Dit, DitConfig};

/// Peak resident set size of this process in bytes (`VmHWM` of /proc/self/status).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    resca_reference::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let preset = args.first().map(String::as_str).unwrap_or("DiT-XL/2");
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let config = DitConfig::preset(preset).expect("a known preset");
    let started = Instant::now();
    let model = Dit::random(config.clone(), 0).expect("valid preset");
    let weights_bytes = config.parameter_count() as f64 * 4.0;
    println!(
        "{preset}: {:.1}M parameters ({:.2} GB f32), random weights built in {:.1} s",
        config.parameter_count() as f64 / 1e6,
        weights_bytes / 1e9,
        started.elapsed().as_secs_f64()
    );
    for batch in [1usize, 2] {
        let side = config.input_size;
        let x = Array4::from_shape_fn((batch, config.in_channels, side, side), |(b, c, h, w)| {
            ((b * 7 + c * 5 + h * 3 + w) as f32 * 0.37).sin()
        });
        let t: Vec<f32> = (0..batch).map(|i| 500.0 + i as f32).collect();
        let y: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
        model.forward(x.view(), &t, &y).expect("warm-up run");
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(model.forward(x.view(), &t, &y).expect("forward"));
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "batch {batch}: min {:.3} s, median {:.3} s over {runs} runs ({:.1} GFLOP/s at the median)",
            times[0],
            times[runs / 2],
            resca_reference::flops::forward_flops(&config, resca_reference::flops::StepWork::full(&config))
                * batch as f64
                / times[runs / 2]
                / 1e9
        );
    }
    if let Some(peak) = peak_rss_bytes() {
        println!(
            "peak RSS {:.2} GB = {:.2}x the f32 weights",
            peak as f64 / 1e9,
            peak as f64 / weights_bytes
        );
    }
}
