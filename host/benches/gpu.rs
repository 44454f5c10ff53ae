//! GPU benchmark (`cargo bench -p resca-host --bench gpu`): the kernels' PTX through the CUDA
//! backend on DiT-XL/2 shapes (random weights, float32), beside PyTorch on the same GPU.
//!
//! * the GEMMs of the model's blocks (qkv, proj, fc1, fc2) at M = 64 (a sparse step's proxies),
//!   512 and 1024 rows on every kernel variant (the classic 64 x 64 `mul` + `add` kernel, the FMA
//!   64 x 64 and 128 x 128 tiles, split-K where the host would split, the host's exact choice
//!   marked) and on each fast precision mode's tensor-core kernel: the median of 20 launches timed
//!   by CUDA events (no host synchronize between them), TFLOP/s;
//! * per-kernel times within one DiT-XL/2 forward (batch 2): each launch synchronised and timed
//!   on the host, so the numbers include the launch overhead (a few microseconds each);
//! * the DiT-XL/2 forward, batch 2 (median of 10 after a warm-up);
//! * 50-step guided DDIM, 2 samples (4 model rows, cfg 1.5): full compute, ResCa N=3 and N=5 with
//!   K=16 (official settings otherwise); wall time, speedup, RMSE of the final samples vs full;
//! * `python3 bench/pytorch_gpu.py --json --precision P` on the same GPU for each P of
//!   `RESCA_BENCH_TORCH_PRECISIONS` (default `fp32 tf32 bf16`), side by side with the kernels in
//!   one table (skipped if python/torch is missing or `RESCA_BENCH_NO_TORCH=1`).
//!
//! Without a CUDA driver or GPU it prints `SKIP: gpu bench: ...` and exits 0.
//! Arguments (after `--`): `[PRESET] [STEPS] [--precision exact|tf32x3|tf32|bf16]`, default
//! `DiT-XL/2 50 --precision exact`: the arithmetic of the model's big GEMMs in the forward and
//! sampling runs (docs/gpu.md, "Precision modes").

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use clap::ValueEnum;
use ndarray::Array4;
use resca_gpu_kernels::gemm_tc::bf16_weight_words;
use resca_host::cuda::CudaDevice;
use resca_host::evaluation::metrics::rmse;
use resca_host::inputs::seeded_noise;
use resca_host::job::{SampleJob, final_samples};
use resca_host::pipeline::gemm_plan::{GemmPlan, choose_gemm, splitk_workspace_len};
use resca_host::pipeline::launch::{self, Epilogue, GemmTile, GemmWeight, Precision};
use resca_host::pipeline::{Buffer, Device, DeviceError, Element, KernelCall, Pipeline, Slice};
use resca_host::run::run_on_device;
use resca_reference::cache::{MethodConfig, MethodKind};
use resca_reference::ddim::DdimSchedule;
use resca_reference::{Dit, DitConfig, Sampler};

/// The CUDA device with every launch synchronised and timed per kernel.
struct Timed {
    dev: CudaDevice,
    per_kernel: BTreeMap<&'static str, (usize, f64)>,
}

impl Device for Timed {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn alloc<T: Element>(&mut self, len: usize) -> Result<Buffer<T>, DeviceError> {
        self.dev.alloc(len)
    }
    fn upload<T: Element>(&mut self, dst: Slice<T>, data: &[T]) -> Result<(), DeviceError> {
        self.dev.upload(dst, data)
    }
    fn download<T: Element>(&mut self, src: Slice<T>, out: &mut [T]) -> Result<(), DeviceError> {
        self.dev.download(src, out)
    }
    fn copy<T: Element>(&mut self, src: Slice<T>, dst: Slice<T>) -> Result<(), DeviceError> {
        self.dev.copy(src, dst)
    }
    fn free(&mut self, id: usize) -> Result<(), DeviceError> {
        self.dev.free(id)
    }
    fn launch(&mut self, call: &KernelCall) -> Result<(), DeviceError> {
        self.dev.synchronize()?;
        let start = Instant::now();
        self.dev.launch(call)?;
        self.dev.synchronize()?;
        let entry = self.per_kernel.entry(call.kernel.name()).or_default();
        entry.0 += 1;
        entry.1 += start.elapsed().as_secs_f64();
        Ok(())
    }
    fn synchronize(&mut self) -> Result<(), DeviceError> {
        self.dev.synchronize()
    }
}

/// One GEMM of a DiT block: the plain ones (qkv, fc1) or the gated residual (proj, fc2).
#[derive(Clone, Copy)]
enum Gemm {
    Plain(Epilogue),
    Gated,
}

/// The GEMM kernels of the table: the classic 64 x 64 kernel (`mul.rn` + `add.rn`), the FMA
/// register-tiled family and split-K.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Classic,
    /// The tensor-core kernel of a fast precision mode.
    TensorCore(Precision),
    Tiled(GemmTile),
    SplitK {
        splits: usize,
        k_per_split: usize,
    },
}

/// Buffers for the GEMM table, sized for the largest shape.
struct GemmBuffers {
    a: Buffer<f32>,
    w: Buffer<f32>,
    /// Words for the widest BF16-packed weight (their values do not matter to the timing).
    w_bf16: Buffer<u32>,
    bias: Buffer<f32>,
    out: Buffer<f32>,
    gate: Buffer<f32>,
    workspace: Buffer<f32>,
}

/// `out (m, n) = a (m, k) w^T + b` (or `out += gate * (...)`, one sample of m rows, its gate at
/// 0) on the kernels of `variant`.
fn run_gemm<D: Device>(dev: &mut D, g: &GemmBuffers, op: Gemm, variant: Variant, m: usize, n: usize, k: usize) {
    let (a, w, bias, out) = (
        g.a.range(0, m * k),
        g.w.range(0, n * k),
        g.bias.range(0, n),
        g.out.range(0, m * n),
    );
    let gate = g.gate.range(0, n);
    match (variant, op) {
        (Variant::TensorCore(precision), op) => {
            let weight = match precision {
                Precision::Bf16 => GemmWeight::Bf16(g.w_bf16.range(0, n * bf16_weight_words(k as u32) as usize)),
                _ => GemmWeight::F32(w),
            };
            match op {
                Gemm::Plain(epilogue) => launch::gemm_tc(dev, precision, a, weight, bias, out, m, n, k, epilogue),
                Gemm::Gated => {
                    launch::gemm_tc_gated_residual(dev, precision, a, weight, bias, out, gate, m, n, k, m, n, 0)
                }
            }
        }
        (Variant::Classic, Gemm::Plain(epilogue)) => launch::gemm(dev, a, w, bias, out, m, n, k, epilogue),
        (Variant::Classic, Gemm::Gated) => launch::gemm_gated_residual(dev, a, w, bias, out, gate, m, n, k, m, n, 0),
        (Variant::Tiled(tile), Gemm::Plain(epilogue)) => {
            launch::gemm_tiled(dev, tile, a, w, bias, out, m, n, k, epilogue)
        }
        (Variant::Tiled(tile), Gemm::Gated) => {
            launch::gemm_tiled_gated_residual(dev, tile, a, w, bias, out, gate, m, n, k, m, n, 0)
        }
        (Variant::SplitK { splits, k_per_split }, op) => {
            let partials = g.workspace.range(0, splits * m * n);
            launch::gemm_splitk_partial(dev, a, w, partials, m, n, k, k_per_split).expect("split-K partials");
            match op {
                Gemm::Plain(epilogue) => launch::gemm_splitk_reduce(dev, partials, bias, out, m, n, splits, epilogue),
                Gemm::Gated => {
                    launch::gemm_splitk_gated_residual(dev, partials, bias, out, gate, m, n, splits, m, n, 0)
                }
            }
        }
    }
    .expect("GEMM launch");
}

/// The GEMM table (see the module docs) for hidden size `d`: every kernel variant on every
/// shape, the host's choice (`choose_gemm`) marked.
fn gemm_table(timed: &mut Timed, d: usize) {
    let shapes = [
        ("qkv", Gemm::Plain(Epilogue::Bias), 3 * d, d),
        ("proj (gated residual)", Gemm::Gated, d, d),
        ("fc1 (GELU)", Gemm::Plain(Epilogue::BiasGelu), 4 * d, d),
        ("fc2 (gated residual)", Gemm::Gated, d, 4 * d),
    ];
    let pattern = |len: usize| -> Vec<f32> { (0..len).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect() };
    let max_m = 1024;
    let workspace_len = splitk_workspace_len(4 * d);
    let buffers = GemmBuffers {
        a: timed.dev.upload_new(&pattern(max_m * 4 * d)).expect("upload"),
        w: timed.dev.upload_new(&pattern(4 * d * d)).expect("upload"),
        w_bf16: timed
            .dev
            .upload_new(&vec![0x3f80_bf80u32; 4 * d * bf16_weight_words(4 * d as u32) as usize])
            .expect("upload"),
        bias: timed.dev.upload_new(&pattern(4 * d)).expect("upload"),
        out: timed.dev.alloc(max_m * 4 * d).expect("alloc"),
        gate: timed.dev.upload_new(&pattern(4 * d)).expect("upload"),
        workspace: timed.dev.alloc(workspace_len).expect("alloc"),
    };
    println!("## GEMMs of a block at DiT shapes (D = {d}): median of 20 launches, CUDA events\n");
    println!("| GEMM | M | N | K | kernels | mode | host's choice | ms | TFLOP/s |");
    println!("| --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |");
    for m in [64, 512, 1024] {
        for (name, op, n, k) in shapes {
            let chosen = match choose_gemm(m, n, k, workspace_len) {
                GemmPlan::Tiled(tile) => Variant::Tiled(tile),
                GemmPlan::SplitK { splits, k_per_split } => Variant::SplitK { splits, k_per_split },
            };
            let mut variants = vec![
                Variant::Classic,
                Variant::Tiled(GemmTile::Tile64),
                Variant::Tiled(GemmTile::Tile128),
            ];
            if matches!(chosen, Variant::SplitK { .. }) {
                variants.push(chosen);
            }
            variants.extend(
                Precision::ALL
                    .into_iter()
                    .filter(|&p| p != Precision::Exact)
                    .map(Variant::TensorCore),
            );
            for variant in variants {
                // Once through the timing wrapper: a warm-up that also names the kernels used.
                timed.per_kernel.clear();
                run_gemm(timed, &buffers, op, variant, m, n, k);
                let kernels: Vec<&str> = timed.per_kernel.keys().copied().collect();
                let marks: Vec<_> = (0..20)
                    .map(|_| {
                        let start = timed.dev.mark().expect("event");
                        run_gemm(&mut timed.dev, &buffers, op, variant, m, n, k);
                        (start, timed.dev.mark().expect("event"))
                    })
                    .collect();
                let seconds = median(
                    marks
                        .into_iter()
                        .map(|(start, end)| timed.dev.seconds_between(start, end).expect("event timing"))
                        .collect(),
                );
                let tflops = 2.0 * (m * n * k) as f64 / seconds / 1e12;
                println!(
                    "| {name} | {m} | {n} | {k} | `{}` | {} | {} | {:.3} | {tflops:.1} |",
                    kernels.join("` + `"),
                    match variant {
                        Variant::TensorCore(precision) => precision.name(),
                        _ => Precision::Exact.name(),
                    },
                    if variant == chosen { "yes" } else { "" },
                    seconds * 1e3
                );
            }
        }
    }
    for buffer in [
        buffers.a,
        buffers.w,
        buffers.bias,
        buffers.out,
        buffers.gate,
        buffers.workspace,
    ] {
        timed.dev.free(buffer.id()).expect("free");
    }
    timed.dev.free(buffers.w_bf16.id()).expect("free");
    println!();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The positional arguments and `--precision MODE` (or `--precision=MODE`); cargo's own flags
/// (`--bench`) are skipped.
fn parse_args() -> Result<(Vec<String>, Precision), String> {
    let (mut positional, mut precision) = (Vec::new(), Precision::Exact);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mode = match arg.strip_prefix("--precision") {
            Some("") => args
                .next()
                .ok_or("--precision needs a value (exact, tf32x3, tf32 or bf16)")?,
            Some(rest) if rest.starts_with('=') => rest[1..].to_string(),
            _ if arg.starts_with("--") => continue,
            _ => {
                positional.push(arg);
                continue;
            }
        };
        precision = Precision::from_str(&mode, false)
            .map_err(|_| format!("--precision {mode}: expected exact, tf32x3, tf32 or bf16"))?;
    }
    Ok((positional, precision))
}

fn main() {
    let (args, precision) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("gpu bench: {e}");
            std::process::exit(2);
        }
    };
    let preset = args.first().map(String::as_str).unwrap_or("DiT-XL/2");
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let dev = match CudaDevice::open_default() {
        Ok(dev) => dev,
        Err(e) => {
            println!("SKIP: gpu bench: no CUDA driver/GPU ({e})");
            return;
        }
    };
    println!(
        "# GPU benchmark: {}, precision {}\n",
        dev.description(),
        precision.name()
    );
    let config = DitConfig::preset(preset).expect("a known preset");
    let model = Dit::random(config.clone(), 0).expect("valid preset");
    let side = config.input_size;
    let x = Array4::from_shape_fn((2, config.in_channels, side, side), |(b, c, h, w)| {
        ((b * 31 + c * 17 + h * 7 + w) % 13) as f32 / 6.5 - 1.0
    });
    let (t, y) = (
        [500.0f32, 250.0],
        [207usize % config.num_classes, 360 % config.num_classes],
    );

    // The GEMM table, then per-kernel times in one forward.
    let mut timed = Timed {
        dev,
        per_kernel: BTreeMap::new(),
    };
    gemm_table(&mut timed, config.hidden_size);
    let mut pipeline = Pipeline::with_precision(timed, &model, precision).expect("the model fits the GPU");
    pipeline.forward(x.view(), &t, &y).expect("forward");
    pipeline.dev.per_kernel.clear();
    pipeline.forward(x.view(), &t, &y).expect("forward");
    println!("## Kernels in one {preset} forward, batch 2 (synchronised per launch)\n");
    println!("| kernel | launches | total ms | mean us | registers | static smem |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut rows: Vec<_> = pipeline.dev.per_kernel.iter().collect();
    rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    for (name, (count, seconds)) in rows {
        let kernel = *resca_host::pipeline::Kernel::ALL
            .iter()
            .find(|k| k.name() == *name)
            .expect("a kernel");
        let a = pipeline.dev.dev.attributes(kernel);
        println!(
            "| `{name}` | {count} | {:.3} | {:.1} | {} | {} |",
            seconds * 1e3,
            seconds * 1e6 / *count as f64,
            a.registers,
            a.static_shared_bytes
        );
    }
    let Timed { dev, .. } = pipeline.dev;

    // The forward.
    let mut pipeline = Pipeline::with_precision(dev, &model, precision).expect("the model fits the GPU");
    pipeline.forward(x.view(), &t, &y).expect("forward");
    let times: Vec<f64> = (0..10)
        .map(|_| {
            let start = Instant::now();
            pipeline.forward(x.view(), &t, &y).expect("forward");
            pipeline.dev.synchronize().expect("synchronize");
            start.elapsed().as_secs_f64()
        })
        .collect();
    let forward_ms = median(times) * 1e3;
    println!("\n## {preset} forward, batch 2: median {forward_ms:.2} ms over 10 runs\n");
    let Pipeline { dev, .. } = pipeline;
    drop(dev);

    // Guided DDIM.
    let job = SampleJob {
        noise: seeded_noise(0, 2, &config),
        labels: y.to_vec(),
        cfg_scale: 1.5,
        sampler: Sampler::Ddim(DdimSchedule::new(steps).expect("steps")),
        sampler_name: "ddim".into(),
    };
    let resca = |interval| MethodConfig {
        clusters: 16,
        ..MethodConfig::new(MethodKind::ResCa, interval, 1)
    };
    println!("## {steps}-step guided DDIM, 2 samples (4 model rows), cfg 1.5\n");
    println!("| method | wall s | speedup | FLOPs speedup | clustering s | simulated denoising s | RMSE vs full |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut full: Option<(f64, Array4<f32>)> = None;
    let mut ours = Vec::new();
    for method in [MethodConfig::full(), resca(3), resca(5)] {
        let dev = CudaDevice::open_default().expect("opened before");
        let result =
            run_on_device(dev, precision, &model, &job, &method, Vec::new(), &mut |_, _| {}).expect("sampling");
        let samples = final_samples(&result);
        let (speedup, error) = match &full {
            None => (1.0, 0.0),
            Some((wall, reference)) => (wall / result.stats.wall_s, rmse(samples.view(), reference.view())),
        };
        let s = &result.stats;
        println!(
            "| {} | {:.3} | {speedup:.2}x | {:.2}x | {:.3} | {:.3} | {error:.4} |",
            s.method, s.wall_s, s.flops_speedup, s.clustering_s, s.simulated_denoising_s
        );
        ours.push(s.wall_s);
        if full.is_none() {
            full = Some((s.wall_s, samples));
        }
    }

    // PyTorch on the same GPU.
    if std::env::var_os("RESCA_BENCH_NO_TORCH").is_some() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/pytorch_gpu.py");
    let steps_arg = steps.to_string();
    let precisions = std::env::var("RESCA_BENCH_TORCH_PRECISIONS").unwrap_or_else(|_| "fp32 tf32 bf16".to_string());
    let mut columns = Vec::new();
    for precision in precisions.split_whitespace() {
        let run = Command::new("python3")
            .args([
                script,
                "--device",
                "cuda",
                "--preset",
                preset,
                "--steps",
                &steps_arg,
                "--precision",
                precision,
                "--json",
            ])
            .output();
        match run {
            Ok(out) if out.status.success() => {
                let torch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                columns.push((precision.to_string(), torch));
            }
            Ok(out) => println!(
                "\nPyTorch {precision} skipped: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => println!("\nPyTorch {precision} skipped: python3: {e}"),
        }
    }
    let Some((_, first)) = columns.first() else {
        return;
    };
    println!(
        "\n## Side by side: the kernels ({}) and PyTorch {} on {}\n",
        precision.name(),
        first["torch"],
        first["device"]
    );
    let header: Vec<String> = columns.iter().map(|(p, _)| format!("PyTorch {p}")).collect();
    println!("| workload | resca ({}) | {} |", precision.name(), header.join(" | "));
    println!("| --- | ---: |{}", " ---: |".repeat(columns.len()));
    let torch_forward: Vec<String> = columns
        .iter()
        .map(|(_, t)| format!("{:.2} ms", t["forward_b2_ms"]["median"].as_f64().unwrap_or(f64::NAN)))
        .collect();
    println!(
        "| forward, batch 2 | {forward_ms:.2} ms | {} |",
        torch_forward.join(" | ")
    );
    for (i, name) in ["full", "resca N=3 K=16", "resca N=5 K=16"].iter().enumerate() {
        let torch_runs: Vec<String> = columns
            .iter()
            .map(|(_, t)| {
                format!(
                    "{:.3} s",
                    t["ddim_guided"]["runs"][*name]["median_s"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        println!(
            "| {steps}-step guided DDIM, {name} | {:.3} s | {} |",
            ours.get(i).copied().unwrap_or(f64::NAN),
            torch_runs.join(" | ")
        );
    }
}
