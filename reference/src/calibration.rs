//! Which kernel multiplies each layer shape on this CPU, chosen by measurement.
//!
//! A product `x W^T + b` can run on the packed panel kernel ([`crate::gemm`], in several
//! variants: [`PanelVariant`]), on the lanes kernel for a few rows ([`crate::lanes_gemm`]), or on
//! OpenBLAS. Which is fastest depends on the CPU (its FMA units, load ports, caches, clock under
//! AVX-512) and on the shape, and a rule written from the CPUs the code was tuned on would leave
//! every other CPU on an untested path. So the first time a process needs a choice for a shape,
//! it times the candidates on that layer's own weights (a few alternated products of the shape's
//! row count, a slice of the outputs; medians), keeps the fastest, and records it in a cache file
//! per CPU model in the user's cache folder, which later runs read instead of measuring.
//!
//! Three choices are made, each per (rows, outputs, inputs, threads):
//! - **storage** of a token layer, at load: held in panels (the panel kernel for every product)
//!   or plain (OpenBLAS for many rows), timed at 256 rows (one image of a DiT at 256 tokens);
//! - **the panel variant** of a product of packed weights, per class of row counts (up to 4, up
//!   to 64, up to 384, more: timed at 2, 32, 256 and 512 rows). Every variant gives the same
//!   bits, so this choice never changes a result;
//! - **a few rows of a layer held plain** (at most [`crate::weights::FEW_ROWS`]: a cached
//!   method's sparse-step tokens): the lanes kernel on a packed copy, or OpenBLAS.
//!
//! Attention's two products per head stay on OpenBLAS: no other implementation of them is kept,
//! the alternatives measured (the panel kernel with keys and values packed per head, a fused
//! attention kernel) were slower or no faster on the CPUs tried (docs/cpu-kernels.md), and they
//! are 3-4% of a DiT-XL/2 forward there.
//!
//! Products of fewer than 2^24 multiply-adds at their class's row count take the built-in rule
//! (their kernel matters little, and timing them is noise). The choices of OpenBLAS (storage,
//! few rows) change results within f32 rounding; the cache makes them the same from run to run
//! on a machine.
//!
//! A measurement during which other work kept this process's threads off the cores (under three
//! quarters of their time on them) times that work more than the kernels: the built-in rule then
//! holds for the process, nothing is written, and a later process measures again.
//!
//! Environment variables, read once per process:
//! - `RESCA_CPU_CALIBRATION=always`: calibrate, and keep what is measured even on a busy machine.
//! - `RESCA_CPU_CALIBRATION=off` (or `0`, `false`, `no`): no measurement and no cache file; the
//!   built-in rule (the panel kernel's AVX-512 tile for every layer where the CPU has AVX-512:
//!   14 x 32 on Intel CPUs, 12 x 16 on others; else OpenBLAS for many rows, the lanes kernel for
//!   a few, the AVX2 panel kernel for the conditioning layers).
//! - `RESCA_CPU_KERNEL=panels|lanes|openblas|<variant>`: one kernel for every token layer, no
//!   measurement and no cache file. `panels`: the panel kernel (built-in variant), `<variant>`
//!   the panel kernel's variant of that name (e.g. `avx512-12x32`; every product of packed
//!   weights takes it); `lanes`: layers held plain, a few rows on the lanes kernel and many on
//!   OpenBLAS (the lanes kernel only multiplies a few rows); `openblas`: layers held plain,
//!   every product on OpenBLAS. Layers only ever applied to a few rows (adaLN, the timestep
//!   MLP) are held in panels whatever is forced.
//! - The cache folder: `$XDG_CACHE_HOME/resca`, else `$HOME/.cache/resca`; the file
//!   `cpu-kernels-<hash>.json` there is keyed by the CPU (model name, family, model, stepping,
//!   feature flags) and by this build's kernels. Delete it to measure again.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView2, s};
use serde::{Deserialize, Serialize};

use crate::gemm::{Kernel, PANEL, PackedWeights, PanelVariant};
use crate::lanes_gemm::LanePackedWeights;
use crate::ops;
use crate::parallel;

/// `off` switches the calibration off (the built-in rule).
pub const CALIBRATION_VAR: &str = "RESCA_CPU_CALIBRATION";

/// Forces one kernel: `panels`, `lanes`, `openblas` or a variant of the panel kernel.
pub const KERNEL_VAR: &str = "RESCA_CPU_KERNEL";

/// Version of the cache file's layout.
const FORMAT: u32 = 1;

/// Products below this many multiply-adds (at their class's row count) take the built-in rule.
const MIN_CALIBRATED_MACS: usize = 1 << 24;

/// Multiply-adds of one timed product: enough for the kernels' steady state (~1.5 ms on two
/// cores of an AMD EPYC Zen 4), few enough to time every candidate several times well within a
/// second for a DiT's shapes. A slice of the outputs of about this size is timed...
const TIMED_MACS: usize = 1 << 27;

/// ... but at least this many panels per core: a group of the largest variant's, so that each
/// variant's blocking is what it is in a whole layer.
const MIN_TIMED_PANELS_PER_CORE: usize = 16;

/// Timed products per candidate still in the running: one round of all, then the others.
const ROUNDS: usize = 5;

/// After the first round, candidates slower than the fastest by more than this are dropped.
const SURVIVOR_MARGIN: f64 = 0.15;

/// The built-in choice is kept unless another's median is faster by more than this and than the
/// spread of either's times: the medians of a shared virtual machine move by a few percent from
/// one measurement to the next (by tens of percent on a machine busy with other work), and a
/// choice flipped by noise would be kept in the cache.
const PREFERENCE_MARGIN: f64 = 0.03;

/// A kernel a product can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelChoice {
    /// OpenBLAS's sgemm on the plain weights.
    OpenBlas,
    /// The lanes kernel ([`crate::lanes_gemm`]) on its packed copy, for a few rows.
    Lanes,
    /// The panel kernel ([`crate::gemm`]) in this variant.
    Panels(PanelVariant),
}

impl KernelChoice {
    /// Its name in the cache file and in [`KERNEL_VAR`].
    pub fn name(self) -> &'static str {
        match self {
            KernelChoice::OpenBlas => "openblas",
            KernelChoice::Lanes => "lanes",
            KernelChoice::Panels(variant) => variant.name(),
        }
    }

    /// The choice named `name`: `openblas`, `lanes` or a variant of the panel kernel that runs
    /// on this CPU (among [`PanelVariant::candidates`]).
    fn parse(name: &str) -> Option<Self> {
        match name {
            "openblas" => Some(KernelChoice::OpenBlas),
            "lanes" => Some(KernelChoice::Lanes),
            _ => PanelVariant::by_name(name)
                .filter(|variant| PanelVariant::candidates().contains(variant))
                .map(KernelChoice::Panels),
        }
    }
}

/// How kernels are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// By measurement, cached per CPU model (the default).
    Calibrate,
    /// By the built-in rule ([`CALIBRATION_VAR`]` = off`).
    BuiltIn,
    /// One kernel for every token layer ([`KERNEL_VAR`]).
    Forced(Forced),
}

/// The kernel [`KERNEL_VAR`] forces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forced {
    /// Token layers held in panels, every packed product by this variant.
    Panels(PanelVariant),
    /// Token layers held plain: a few rows on the lanes kernel, many on OpenBLAS.
    Lanes,
    /// Token layers held plain, every product on OpenBLAS.
    OpenBlas,
}

/// Where the choices come from: the mode and the cache folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    /// Keep what is measured while other work starves the process's threads (see
    /// [`Calibrator`]): `RESCA_CPU_CALIBRATION=always`.
    pub keep_busy_measurements: bool,
    /// The folder of the cache file (`.../resca`); none: measured choices last for the process.
    pub cache_dir: Option<PathBuf>,
}

impl Settings {
    /// The settings of this process's environment, and a note for each variable it ignores.
    pub fn from_env() -> (Self, Vec<String>) {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings given the value of each environment variable (`var(name)`), and a note for
    /// each variable ignored: [`CALIBRATION_VAR`], [`KERNEL_VAR`], `XDG_CACHE_HOME`, `HOME`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> (Self, Vec<String>) {
        let mut notes = Vec::new();
        let value = var(CALIBRATION_VAR).map(|v| v.trim().to_ascii_lowercase());
        let (calibrate, keep_busy_measurements) = match value.as_deref() {
            None | Some("" | "on" | "1" | "true" | "yes") => (true, false),
            Some("always") => (true, true),
            Some("off" | "0" | "false" | "no") => (false, false),
            Some(other) => {
                notes.push(format!(
                    "{CALIBRATION_VAR}={other} is not `on`, `off` or `always`; the CPU kernels are calibrated"
                ));
                (true, false)
            }
        };
        let forced = match var(KERNEL_VAR).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") => None,
            Some("panels") => Some(Forced::Panels(PanelVariant::built_in())),
            Some("lanes") => Some(Forced::Lanes),
            Some("openblas") => Some(Forced::OpenBlas),
            Some(name) => match PanelVariant::by_name(name) {
                Some(variant) if PanelVariant::candidates().contains(&variant) => Some(Forced::Panels(variant)),
                Some(_) => {
                    notes.push(format!(
                        "{KERNEL_VAR}={name}: this CPU does not run that variant (it runs {}); ignored",
                        candidate_names()
                    ));
                    None
                }
                None => {
                    notes.push(format!(
                        "{KERNEL_VAR}={name} names no kernel (panels, lanes, openblas, or one of {}); ignored",
                        candidate_names()
                    ));
                    None
                }
            },
        };
        let mode = match forced {
            Some(forced) => Mode::Forced(forced),
            None if calibrate => Mode::Calibrate,
            None => Mode::BuiltIn,
        };
        // The XDG base directory specification: a relative path is invalid and ignored.
        let absolute = |value: Option<String>| value.map(PathBuf::from).filter(|path| path.is_absolute());
        let cache_dir = absolute(var("XDG_CACHE_HOME"))
            .or_else(|| absolute(var("HOME")).map(|home| home.join(".cache")))
            .map(|cache| cache.join("resca"));
        (
            Self {
                mode,
                keep_busy_measurements,
                cache_dir,
            },
            notes,
        )
    }
}

/// The names of the panel variants this CPU runs, for notes.
fn candidate_names() -> String {
    PanelVariant::candidates()
        .iter()
        .map(|variant| variant.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CPU a calibration holds for: vendor, model name, family, model, stepping and feature
/// flags (Linux's `/proc/cpuinfo`, first processor), or the architecture and the features the
/// kernels use where that file is missing.
pub fn cpu_identity() -> String {
    const FIELDS: [&str; 6] = ["vendor_id", "model name", "cpu family", "model", "stepping", "flags"];
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let first = cpuinfo.split("\n\n").next().unwrap_or_default();
    let fields: Vec<String> = FIELDS
        .iter()
        .filter_map(|&field| {
            first.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                (name.trim() == field)
                    .then(|| format!("{field}: {}", value.split_whitespace().collect::<Vec<_>>().join(" ")))
            })
        })
        .collect();
    if fields.iter().any(|field| field.starts_with("model name")) {
        return fields.join("; ");
    }
    let mut identity = format!("arch: {}", std::env::consts::ARCH);
    #[cfg(target_arch = "x86_64")]
    for (feature, present) in [
        ("avx2", std::is_x86_feature_detected!("avx2")),
        ("fma", std::is_x86_feature_detected!("fma")),
        ("avx512f", std::is_x86_feature_detected!("avx512f")),
    ] {
        if present {
            identity += &format!(" {feature}");
        }
    }
    identity
}

/// The kernels of this build, as the cache file records them: a file written by a build with
/// other kernels is not read.
fn kernel_set() -> String {
    let mut names: Vec<&str> = PanelVariant::all().iter().map(|variant| variant.name()).collect();
    names.extend(["lanes", "openblas"]);
    names.join(" ")
}

/// FNV-1a, 64 bits: the cache file's name from the CPU and the kernels.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a choice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Product {
    /// A token layer's storage: [`KernelChoice::Panels`] (held packed) or OpenBLAS (plain).
    Storage,
    /// The panel variant of a product of packed weights.
    Panels,
    /// A few rows of a layer held plain: the lanes kernel or OpenBLAS.
    FewRows,
}

impl Product {
    fn word(self) -> &'static str {
        match self {
            Product::Storage => "storage",
            Product::Panels => "panels",
            Product::FewRows => "few-rows",
        }
    }

    /// Whether `choice` answers this question.
    fn allows(self, choice: KernelChoice) -> bool {
        matches!(
            (self, choice),
            (Product::Storage, KernelChoice::OpenBlas | KernelChoice::Panels(_))
                | (Product::Panels, KernelChoice::Panels(_))
                | (Product::FewRows, KernelChoice::OpenBlas | KernelChoice::Lanes)
        )
    }
}

/// One choice's question: a product of `rows` rows (a class's representative count) by a
/// layer of `outputs` x `inputs`, on `threads` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    product: Product,
    rows: usize,
    outputs: usize,
    inputs: usize,
    threads: usize,
}

impl Key {
    fn new(product: Product, rows: usize, outputs: usize, inputs: usize) -> Self {
        Self {
            product,
            rows,
            outputs,
            inputs,
            threads: rayon::current_num_threads(),
        }
    }

    /// As the cache file writes it: `panels 256x4608x1152 t2`.
    fn text(&self) -> String {
        format!(
            "{} {}x{}x{} t{}",
            self.product.word(),
            self.rows,
            self.outputs,
            self.inputs,
            self.threads
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split(' ');
        let word = words.next()?;
        let product = [Product::Storage, Product::Panels, Product::FewRows]
            .into_iter()
            .find(|product| product.word() == word)?;
        let mut dims = words.next()?.split('x').map(str::parse::<usize>);
        let (rows, outputs, inputs) = (dims.next()?.ok()?, dims.next()?.ok()?, dims.next()?.ok()?);
        let threads = words.next()?.strip_prefix('t')?.parse().ok()?;
        (dims.next().is_none() && words.next().is_none()).then_some(Self {
            product,
            rows,
            outputs,
            inputs,
            threads,
        })
    }

    fn macs(&self) -> usize {
        self.rows * self.outputs * self.inputs
    }
}

/// The representative row count of `rows`'s class: a conditioning layer's few rows (2), a
/// sparse step's tokens (32), one image's tokens (256), more (512).
fn row_class(rows: usize) -> usize {
    match rows {
        0..=4 => 2,
        5..=64 => 32,
        65..=384 => 256,
        _ => 512,
    }
}

/// The rows a token layer's storage is timed at: one image of a DiT at 256 tokens.
const STORAGE_ROWS: usize = 256;

/// The cache file's contents.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    format: u32,
    cpu: String,
    kernels: String,
    /// `key text -> kernel name`.
    choices: BTreeMap<String, String>,
}

/// Chooses the kernels of this process (see the module doc).
pub struct Calibrator {
    mode: Mode,
    cpu: String,
    /// The cache file of this CPU and build, when choices are measured and a folder is known.
    file: Option<PathBuf>,
    table: Mutex<HashMap<Key, KernelChoice>>,
    /// Choices for this process only: the built-in rule where a measurement was starved.
    provisional: Mutex<HashMap<Key, KernelChoice>>,
    keep_busy_measurements: bool,
    /// The CPU time of this process so far ([`process_cpu_seconds`]); the tests give a clock
    /// that other tests' threads cannot move.
    cpu_clock: fn() -> Option<f64>,
    /// Held while a choice is measured: one measurement at a time, so that they do not slow
    /// each other down.
    measuring: Mutex<()>,
    measurements: AtomicUsize,
    measured_nanos: AtomicU64,
    notes: Mutex<Vec<String>>,
    write_failed: AtomicBool,
}

/// The process's [`Calibrator`], from its environment ([`Settings::from_env`]); its notes are
/// printed on stderr, one line each. The library's own unit tests take the built-in rule and
/// never read or write the user's cache folder.
pub fn global() -> &'static Calibrator {
    static GLOBAL: OnceLock<Calibrator> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        if cfg!(test) {
            return Calibrator::new(Settings {
                mode: Mode::BuiltIn,
                keep_busy_measurements: false,
                cache_dir: None,
            });
        }
        let (settings, notes) = Settings::from_env();
        let calibrator = Calibrator::new(settings);
        notes.iter().for_each(|message| calibrator.note(message.clone()));
        calibrator
    })
}

impl Calibrator {
    /// A calibrator with `settings`; when it measures, it reads its cache file now (a file it
    /// cannot use is ignored with a note and rewritten).
    pub fn new(settings: Settings) -> Self {
        let cpu = cpu_identity();
        let file = match settings.mode {
            Mode::Calibrate => settings.cache_dir.map(|dir| {
                let hash = fnv1a(&format!("{cpu}\n{}\n{FORMAT}", kernel_set()));
                dir.join(format!("cpu-kernels-{hash:016x}.json"))
            }),
            Mode::BuiltIn | Mode::Forced(_) => None,
        };
        let calibrator = Self {
            mode: settings.mode,
            cpu,
            file,
            table: Mutex::new(HashMap::new()),
            provisional: Mutex::new(HashMap::new()),
            keep_busy_measurements: settings.keep_busy_measurements,
            cpu_clock: process_cpu_seconds,
            measuring: Mutex::new(()),
            measurements: AtomicUsize::new(0),
            measured_nanos: AtomicU64::new(0),
            notes: Mutex::new(Vec::new()),
            write_failed: AtomicBool::new(false),
        };
        if let Some(path) = &calibrator.file {
            match calibrator.read_file(path) {
                Ok(choices) => *calibrator.table() = choices,
                Err(reason) => {
                    calibrator.note(format!(
                        "ignoring the CPU kernel calibration in {} ({reason}); it is measured again and rewritten",
                        path.display()
                    ));
                    calibrator.write_file();
                }
            }
        }
        calibrator
    }

    /// How this calibrator chooses.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The cache file it reads and writes, if any.
    pub fn cache_file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The choices measured by this process so far.
    pub fn measurements(&self) -> usize {
        self.measurements.load(Ordering::Relaxed)
    }

    /// The time this process spent measuring.
    pub fn seconds_measuring(&self) -> f64 {
        self.measured_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// The notes it printed (a cache file ignored or not written, a variable ignored).
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every choice known (read or measured), as `(question, kernel)`, e.g. `("panels
    /// 256x4608x1152 t2", "avx512-12x16")`, sorted.
    pub fn choices(&self) -> Vec<(String, String)> {
        let mut choices: Vec<(Key, KernelChoice)> = self.table().iter().map(|(&k, &c)| (k, c)).collect();
        choices.sort_by_key(|&(key, _)| key);
        choices
            .into_iter()
            .map(|(key, choice)| (key.text(), choice.name().to_string()))
            .collect()
    }

    /// Whether a token layer of `weight` (out, in) is held in panels for the panel kernel (else
    /// plain, for OpenBLAS): timed at 256 rows.
    pub fn token_layer_in_panels(&self, weight: ArrayView2<f32>) -> bool {
        let rule = if Kernel::detect().beats_blas_on_many_rows() {
            KernelChoice::Panels(PanelVariant::built_in())
        } else {
            KernelChoice::OpenBlas
        };
        let choice = match self.mode {
            Mode::Forced(Forced::Panels(variant)) => KernelChoice::Panels(variant),
            Mode::Forced(Forced::Lanes | Forced::OpenBlas) => KernelChoice::OpenBlas,
            Mode::BuiltIn => rule,
            Mode::Calibrate => {
                let (outputs, inputs) = weight.dim();
                let key = Key::new(Product::Storage, STORAGE_ROWS, outputs, inputs);
                self.choose(key, rule, || measure_storage(key, weight))
            }
        };
        matches!(choice, KernelChoice::Panels(_))
    }

    /// The panel variant that multiplies `rows` rows by `weights`.
    pub fn panel_variant(&self, weights: &PackedWeights, rows: usize) -> PanelVariant {
        let rule = PanelVariant::built_in();
        match self.mode {
            Mode::Forced(Forced::Panels(variant)) => variant,
            Mode::Forced(Forced::Lanes | Forced::OpenBlas) | Mode::BuiltIn => rule,
            Mode::Calibrate => {
                let key = Key::new(Product::Panels, row_class(rows), weights.outputs(), weights.inputs());
                match self.choose(key, KernelChoice::Panels(rule), || measure_panels(key, weights)) {
                    KernelChoice::Panels(variant) => variant,
                    KernelChoice::OpenBlas | KernelChoice::Lanes => rule,
                }
            }
        }
    }

    /// For a token layer held plain, whether `rows` rows (a few: at most
    /// [`crate::weights::FEW_ROWS`]) go to the lanes kernel (else to OpenBLAS).
    pub fn few_rows_on_lanes(&self, weight: ArrayView2<f32>, rows: usize) -> bool {
        let choice = match self.mode {
            Mode::Forced(Forced::OpenBlas) => KernelChoice::OpenBlas,
            Mode::Forced(Forced::Lanes | Forced::Panels(_)) | Mode::BuiltIn => KernelChoice::Lanes,
            Mode::Calibrate => {
                let (outputs, inputs) = weight.dim();
                let key = Key::new(Product::FewRows, row_class(rows), outputs, inputs);
                self.choose(key, KernelChoice::Lanes, || measure_few_rows(key, weight))
            }
        };
        choice == KernelChoice::Lanes
    }

    /// The recorded choice for `key`, else `measure`'s (which returns `key`'s choice and any
    /// other it learnt), recorded and written to the cache file; `rule` for products too small
    /// to time, and while another thread of the pool is measuring (a pool worker must not wait
    /// for a lock whose holder may be waiting for that worker's jobs). A measurement during
    /// which other work kept this process's threads off the cores ([`starved`]) times that work
    /// more than the kernels: `rule` then holds for the process, nothing is written, and a later
    /// process measures again (unless [`Settings::keep_busy_measurements`]).
    fn choose(
        &self,
        key: Key,
        rule: KernelChoice,
        measure: impl FnOnce() -> Vec<(Key, KernelChoice)> + Send,
    ) -> KernelChoice {
        if key.macs() < MIN_CALIBRATED_MACS {
            return rule;
        }
        if let Some(choice) = self.known(key) {
            return choice;
        }
        let _measuring = if rayon::current_thread_index().is_some() {
            match self.measuring.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return rule,
            }
        } else {
            self.measuring.lock().unwrap_or_else(PoisonError::into_inner)
        };
        if let Some(choice) = self.known(key) {
            return choice;
        }
        let (started, cpu_before) = (Instant::now(), (self.cpu_clock)());
        // Timed as the model runs its products: on the pool with the workers awake.
        let learnt = parallel::with_workers_awake(measure);
        let wall = started.elapsed().as_secs_f64();
        self.measured_nanos.fetch_add((wall * 1e9) as u64, Ordering::Relaxed);
        self.measurements.fetch_add(1, Ordering::Relaxed);
        let cpu = (self.cpu_clock)().zip(cpu_before).map(|(after, before)| after - before);
        if !self.keep_busy_measurements && cpu.is_some_and(|cpu| starved(cpu, wall, rayon::current_num_threads())) {
            self.provisional
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, rule);
            return rule;
        }
        let choice = {
            let mut table = self.table();
            table.extend(learnt);
            *table.entry(key).or_insert(rule)
        };
        self.write_file();
        choice
    }

    /// The choice recorded for `key`, or held for this process.
    fn known(&self, key: Key) -> Option<KernelChoice> {
        let recorded = self.table().get(&key).copied();
        recorded.or_else(|| {
            self.provisional
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .copied()
        })
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Key, KernelChoice>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Prints `message` on stderr (one line) and keeps it for [`Self::notes`].
    fn note(&self, message: String) {
        eprintln!("resca: {message}");
        self.notes.lock().unwrap_or_else(PoisonError::into_inner).push(message);
    }

    /// The choices in `path`; none if there is no such file; why not if it holds something
    /// else than a calibration of this CPU by this build.
    fn read_file(&self, path: &Path) -> Result<HashMap<Key, KernelChoice>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(error) => return Err(error.to_string()),
        };
        let file: CacheFile = serde_json::from_str(&text).map_err(|error| format!("unreadable: {error}"))?;
        if file.format != FORMAT || file.kernels != kernel_set() {
            return Err("written by a build with other kernels".to_string());
        }
        if file.cpu != self.cpu {
            return Err("measured on another CPU".to_string());
        }
        file.choices
            .iter()
            .map(|(question, kernel)| {
                let key = Key::parse(question).ok_or_else(|| format!("`{question}` is not a product"))?;
                match KernelChoice::parse(kernel) {
                    Some(choice) if key.product.allows(choice) => Ok((key, choice)),
                    _ => Err(format!("`{kernel}` is not a kernel for `{question}`")),
                }
            })
            .collect()
    }

    /// Writes every choice known to the cache file, with those another process wrote there
    /// meanwhile, atomically (a temporary file renamed over it). A failure is noted once.
    fn write_file(&self) {
        let Some(path) = &self.file else { return };
        let mut choices: HashMap<Key, KernelChoice> = self.read_file(path).unwrap_or_default();
        choices.extend(self.table().iter().map(|(&k, &c)| (k, c)));
        let file = CacheFile {
            format: FORMAT,
            cpu: self.cpu.clone(),
            kernels: kernel_set(),
            choices: choices
                .into_iter()
                .map(|(key, choice)| (key.text(), choice.name().to_string()))
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).expect("plain strings serialize") + "\n";
        if let Err(error) = write_atomically(path, &text)
            && !self.write_failed.swap(true, Ordering::Relaxed)
        {
            self.note(format!(
                "could not write the CPU kernel calibration to {} ({error}); it is measured again by the next process",
                path.display()
            ));
        }
    }
}

/// The CPU time (user and system) of this process so far, from Linux's `/proc/self/stat` (in
/// clock ticks of 1/100 s, Linux's `USER_HZ`); none elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (in parentheses, which may hold spaces): the state is
    // field 3, utime field 14 and stime field 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Whether a measurement of `wall` seconds on `threads` threads (all busy: the workers are kept
/// awake) got less than three quarters of their time on the cores: other processes were running.
/// (The time is the whole process's: other busy threads of the same process, such as tests run
/// beside each other, hide it.) Too short a measurement (under 0.2 s, 20 clock ticks) is not
/// judged.
fn starved(cpu: f64, wall: f64, threads: usize) -> bool {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    wall >= 0.2 && cpu < 0.75 * wall * threads.min(cores) as f64
}

/// Writes `text` to `path` through a temporary file in the same folder, renamed over `path`:
/// a reader sees the old file or the new one, never a part; the temporary file is removed if
/// anything fails.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    static TEMPORARY: AtomicUsize = AtomicUsize::new(0);
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("cpu-kernels");
    let temporary = folder.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMPORARY.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Deterministic token rows in [-1, 1] to time products with.
fn timing_rows(rows: usize, inputs: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, inputs), |(i, j)| {
        ((i * 7919 + j * 104_729) % 2003) as f32 / 1001.5 - 1.0
    })
}

/// The outputs of each timed product for `key`: slice `slice` of `count` disjoint slices of
/// whole panels, the last output included in the last slice.
#[derive(Clone, Copy)]
struct TimedSlices {
    panels: usize,
    count: usize,
    outputs: usize,
}

impl TimedSlices {
    fn new(key: Key) -> Self {
        let all = key.outputs.div_ceil(PANEL);
        let wanted = TIMED_MACS.div_ceil(key.rows * key.inputs * PANEL).max(1);
        let panels = wanted.max(MIN_TIMED_PANELS_PER_CORE * key.threads).min(all).max(1);
        Self {
            panels,
            count: (all / panels).max(1),
            outputs: key.outputs,
        }
    }

    fn panels(self, slice: usize) -> Range<usize> {
        slice * self.panels..((slice + 1) * self.panels).min(self.outputs.div_ceil(PANEL))
    }

    fn outputs(self, slice: usize) -> Range<usize> {
        let panels = self.panels(slice);
        panels.start * PANEL..(panels.end * PANEL).min(self.outputs)
    }
}

/// A candidate's timed products: the median, and the spread of the middle half (second to
/// fourth of five, relative to the median).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Timing<C> {
    candidate: C,
    median: f64,
    spread: f64,
}

/// Times `candidates`, alternated: one round of all, then [`ROUNDS`]` - 1` rounds of those
/// within [`SURVIVOR_MARGIN`] of the fastest (a dropped one keeps its single time, spread 0).
/// `time(candidate, slice)` runs one product on the given slice of the layer: each candidate on
/// its own slice in each round (slices rotate), in an order that rotates too, so that no
/// candidate finds its weights in cache more than another.
fn timings<C: Copy>(candidates: &[C], slices: usize, mut time: impl FnMut(C, usize) -> f64) -> Vec<Timing<C>> {
    let count = candidates.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); count];
    let mut running: Vec<usize> = (0..count).collect();
    for round in 0..ROUNDS {
        for turn in 0..running.len() {
            let c = running[(turn + round) % running.len()];
            let slice = (round * count + c) % slices;
            times[c].push(time(candidates[c], slice));
        }
        if round == 0 {
            let fastest = times.iter().map(|t| t[0]).fold(f64::INFINITY, f64::min);
            running.retain(|&c| times[c][0] <= fastest * (1.0 + SURVIVOR_MARGIN));
        }
    }
    candidates
        .iter()
        .zip(times)
        .map(|(&candidate, mut t)| {
            t.sort_by(f64::total_cmp);
            let (median, n) = (t[t.len() / 2], t.len());
            Timing {
                candidate,
                median,
                spread: (t[3 * n / 4] - t[n / 4]) / median,
            }
        })
        .collect()
}

/// The fastest of `timings` by median, unless `preferred` (the built-in choice) is within
/// [`PREFERENCE_MARGIN`] of it, or within the spread of either's times: the built-in choice is
/// only displaced by a clear measurement.
fn pick<C: Copy + PartialEq>(timings: &[Timing<C>], preferred: C) -> C {
    let fastest = timings
        .iter()
        .min_by(|a, b| a.median.total_cmp(&b.median))
        .expect("at least one candidate");
    match timings.iter().find(|timing| timing.candidate == preferred) {
        Some(kept)
            if kept.median <= fastest.median * (1.0 + PREFERENCE_MARGIN.max(kept.spread).max(fastest.spread)) =>
        {
            preferred
        }
        _ => fastest.candidate,
    }
}

/// Seconds `product` takes once.
fn seconds(product: impl FnOnce() -> Array2<f32>) -> f64 {
    let started = Instant::now();
    std::hint::black_box(product());
    started.elapsed().as_secs_f64()
}

/// A token layer's storage (`key`, 256 rows): OpenBLAS on the plain weights against every
/// panel variant on them packed. Also learns the fastest variant at 256 rows.
fn measure_storage(key: Key, weight: ArrayView2<f32>) -> Vec<(Key, KernelChoice)> {
    let x = timing_rows(key.rows, key.inputs);
    let bias = Array1::<f32>::zeros(key.outputs);
    let packed = PackedWeights::pack(weight);
    let slices = TimedSlices::new(key);
    let mut candidates: Vec<KernelChoice> = PanelVariant::candidates()
        .into_iter()
        .map(KernelChoice::Panels)
        .collect();
    candidates.push(KernelChoice::OpenBlas);
    let all = timings(&candidates, slices.count, |candidate, slice| {
        let outputs = slices.outputs(slice);
        match candidate {
            KernelChoice::Panels(variant) => {
                seconds(|| packed.linear_panels(variant, x.view(), bias.view(), slices.panels(slice)))
            }
            KernelChoice::OpenBlas | KernelChoice::Lanes => seconds(|| {
                ops::linear(
                    x.view(),
                    weight.slice(s![outputs.clone(), ..]),
                    bias.slice(s![outputs.clone()]),
                )
            }),
        }
    });
    let panel_timings: Vec<Timing<PanelVariant>> = all
        .iter()
        .filter_map(|timing| match timing.candidate {
            KernelChoice::Panels(variant) => Some(Timing {
                candidate: variant,
                median: timing.median,
                spread: timing.spread,
            }),
            KernelChoice::OpenBlas | KernelChoice::Lanes => None,
        })
        .collect();
    let variant = pick(&panel_timings, PanelVariant::built_in());
    let storage_timings: Vec<Timing<KernelChoice>> = all
        .iter()
        .copied()
        .filter(|timing| [KernelChoice::Panels(variant), KernelChoice::OpenBlas].contains(&timing.candidate))
        .collect();
    let rule = if Kernel::detect().beats_blas_on_many_rows() {
        KernelChoice::Panels(variant)
    } else {
        KernelChoice::OpenBlas
    };
    let panels_key = Key {
        product: Product::Panels,
        ..key
    };
    vec![
        (key, pick(&storage_timings, rule)),
        (panels_key, KernelChoice::Panels(variant)),
    ]
}

/// The panel variant for `key` on the layer's packed weights.
fn measure_panels(key: Key, weights: &PackedWeights) -> Vec<(Key, KernelChoice)> {
    let candidates = PanelVariant::candidates();
    if candidates.len() == 1 {
        return vec![(key, KernelChoice::Panels(candidates[0]))];
    }
    let x = timing_rows(key.rows, key.inputs);
    let bias = Array1::<f32>::zeros(key.outputs);
    let slices = TimedSlices::new(key);
    let timed = timings(&candidates, slices.count, |variant, slice| {
        seconds(|| weights.linear_panels(variant, x.view(), bias.view(), slices.panels(slice)))
    });
    vec![(key, KernelChoice::Panels(pick(&timed, PanelVariant::built_in())))]
}

/// A few rows of a layer held plain (`key`): the lanes kernel on a packed copy against
/// OpenBLAS.
fn measure_few_rows(key: Key, weight: ArrayView2<f32>) -> Vec<(Key, KernelChoice)> {
    let x = timing_rows(key.rows, key.inputs);
    let bias = Array1::<f32>::zeros(key.outputs);
    let slices = TimedSlices::new(key);
    let mut lanes: Vec<Option<LanePackedWeights>> = (0..slices.count).map(|_| None).collect();
    let timed = timings(
        &[KernelChoice::Lanes, KernelChoice::OpenBlas],
        slices.count,
        |candidate, slice| {
            let outputs = slices.outputs(slice);
            let (weight, bias) = (weight.slice(s![outputs.clone(), ..]), bias.slice(s![outputs]));
            match candidate {
                KernelChoice::Lanes => {
                    // Packed untimed: the layer's copy is made once, at its first product of a few rows.
                    let packed = lanes[slice].get_or_insert_with(|| LanePackedWeights::pack(weight));
                    seconds(|| packed.linear(x.view(), bias))
                }
                KernelChoice::OpenBlas | KernelChoice::Panels(_) => seconds(|| ops::linear(x.view(), weight, bias)),
            }
        },
    );
    vec![(key, pick(&timed, KernelChoice::Lanes))]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> (Settings, Vec<String>) {
        let vars: HashMap<String, String> = vars.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_vars(|name| vars.get(name).cloned())
    }

    /// A calibrator measuring into `dir`, keeping what it measures even on a machine busy with
    /// other work (tests run beside each other).
    fn calibrating_in(dir: &Path) -> Calibrator {
        Calibrator::new(Settings {
            mode: Mode::Calibrate,
            keep_busy_measurements: true,
            cache_dir: Some(dir.to_path_buf()),
        })
    }

    fn weight(outputs: usize, inputs: usize) -> Array2<f32> {
        Array2::from_shape_fn((outputs, inputs), |(i, j)| ((i * 31 + j * 17) % 23) as f32 / 11.0 - 1.0)
    }

    #[test]
    fn settings_come_from_the_environment_variables() {
        let home = [("HOME", "/home/someone")];
        let (default, notes) = settings(&home);
        assert_eq!(default.mode, Mode::Calibrate);
        assert_eq!(default.cache_dir, Some(PathBuf::from("/home/someone/.cache/resca")));
        assert!(notes.is_empty());
        let (xdg, _) = settings(&[("HOME", "/home/someone"), ("XDG_CACHE_HOME", "/tmp/xdg")]);
        assert_eq!(xdg.cache_dir, Some(PathBuf::from("/tmp/xdg/resca")));
        // A relative XDG_CACHE_HOME is invalid (the XDG specification): HOME's folder instead.
        let (relative, _) = settings(&[("HOME", "/home/someone"), ("XDG_CACHE_HOME", "cache")]);
        assert_eq!(relative.cache_dir, default.cache_dir);
        assert_eq!(settings(&[]).0.cache_dir, None);
        for off in ["off", "OFF", "0", "false", "no"] {
            let (switched_off, notes) = settings(&[(CALIBRATION_VAR, off)]);
            assert_eq!(switched_off.mode, Mode::BuiltIn, "{off}");
            assert!(notes.is_empty());
        }
        assert!(!default.keep_busy_measurements);
        let (always, notes) = settings(&[(CALIBRATION_VAR, "always")]);
        assert_eq!(
            (always.mode, always.keep_busy_measurements, notes.len()),
            (Mode::Calibrate, true, 0)
        );
        let (unknown, notes) = settings(&[(CALIBRATION_VAR, "sometimes")]);
        assert_eq!((unknown.mode, notes.len()), (Mode::Calibrate, 1));
        assert!(notes[0].contains(CALIBRATION_VAR));
        for (value, forced) in [
            ("panels", Forced::Panels(PanelVariant::built_in())),
            ("lanes", Forced::Lanes),
            (" OpenBLAS ", Forced::OpenBlas),
        ] {
            let (chosen, notes) = settings(&[(KERNEL_VAR, value), (CALIBRATION_VAR, "off")]);
            assert_eq!(chosen.mode, Mode::Forced(forced), "{value}");
            assert!(notes.is_empty());
        }
        for variant in PanelVariant::candidates() {
            assert_eq!(
                settings(&[(KERNEL_VAR, variant.name())]).0.mode,
                Mode::Forced(Forced::Panels(variant))
            );
        }
        let (unknown, notes) = settings(&[(KERNEL_VAR, "fastest")]);
        assert_eq!((unknown.mode, notes.len()), (Mode::Calibrate, 1));
        assert!(notes[0].contains("RESCA_CPU_KERNEL=fastest") && notes[0].contains("openblas"));
        for variant in PanelVariant::all()
            .iter()
            .filter(|v| !PanelVariant::candidates().contains(v))
        {
            let (ignored, notes) = settings(&[(KERNEL_VAR, variant.name())]);
            assert_eq!((ignored.mode, notes.len()), (Mode::Calibrate, 1), "{}", variant.name());
        }
    }

    #[test]
    fn questions_and_choices_read_back_as_written() {
        let key = Key {
            product: Product::FewRows,
            rows: 32,
            outputs: 3072,
            inputs: 768,
            threads: 2,
        };
        assert_eq!(key.text(), "few-rows 32x3072x768 t2");
        assert_eq!(Key::parse(&key.text()), Some(key));
        for bad in [
            "few-rows 32x3072 t2",
            "few 32x3072x768 t2",
            "panels 32x3072x768",
            "panels 1x2x3 t2 more",
            "",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
        let mut choices = vec![KernelChoice::OpenBlas, KernelChoice::Lanes];
        choices.extend(PanelVariant::candidates().into_iter().map(KernelChoice::Panels));
        for choice in choices {
            assert_eq!(KernelChoice::parse(choice.name()), Some(choice));
        }
        assert_eq!(KernelChoice::parse("fastest"), None);
        assert_eq!(
            [2, 4, 5, 64, 65, 384, 385].map(row_class),
            [2, 2, 32, 32, 256, 256, 512]
        );
    }

    /// The measured choices are written to the cache file and read back by the next process
    /// (here: the next calibrator), which then measures nothing.
    #[test]
    fn a_calibration_round_trips_through_its_cache_file() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        // 256 x 1024 x 512 multiply-adds for the storage; 32 x 1024 x 512 for a few rows.
        let (w, rows) = (weight(1024, 512), 40);
        let packed = PackedWeights::pack(w.view());
        let first = calibrating_in(dir.path());
        let in_panels = first.token_layer_in_panels(w.view());
        let variant = first.panel_variant(&packed, rows);
        let on_lanes = first.few_rows_on_lanes(w.view(), rows);
        assert_eq!(first.measurements(), 3);
        assert!(first.notes().is_empty(), "{:?}", first.notes());
        // Storage, and the variants at 256 rows (learnt with it) and at 32.
        assert_eq!(first.choices().len(), 4, "{:?}", first.choices());
        let path = first.cache_file().expect("a cache file").to_path_buf();
        assert!(path.starts_with(dir.path()));
        let file: CacheFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(file.choices.len(), 4);
        assert_eq!(file.cpu, cpu_identity());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let second = calibrating_in(dir.path());
        assert_eq!(second.choices(), first.choices());
        assert_eq!(second.token_layer_in_panels(w.view()), in_panels);
        assert_eq!(second.panel_variant(&packed, rows), variant);
        assert_eq!(second.few_rows_on_lanes(w.view(), rows), on_lanes);
        assert_eq!(second.measurements(), 0);
        assert!(second.notes().is_empty());
        // Products too small to time take the rule and record nothing.
        let small = PackedWeights::pack(weight(20, 30).view());
        assert_eq!(second.panel_variant(&small, 300), PanelVariant::built_in());
        assert_eq!((second.measurements(), second.choices().len()), (0, 4));
    }

    /// A cache file that is not a calibration of this CPU by this build is ignored with one
    /// note naming it, rewritten at once, and never makes a calibrator panic.
    #[test]
    fn a_corrupt_cache_is_ignored_and_rewritten() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let w = weight(1024, 512);
        let path = {
            let calibrator = calibrating_in(dir.path());
            calibrator.token_layer_in_panels(w.view());
            calibrator.cache_file().unwrap().to_path_buf()
        };
        let valid = std::fs::read_to_string(&path).unwrap();
        let kernel = PanelVariant::built_in().name();
        let corruptions = [
            String::new(),
            "\u{0}\u{ff} not json".to_string(),
            valid[..valid.len() / 2].to_string(),
            valid.replace("\"format\": 1", "\"format\": 99"),
            valid.replace("\"cpu\": \"", "\"cpu\": \"another "),
            valid.replace(
                "\"choices\": {",
                "\"choices\": {\n    \"panels 2x3x4 t2\": \"fastest\",",
            ),
            valid.replace(
                "\"choices\": {",
                "\"choices\": {\n    \"panels 2x3x4 t2\": \"openblas\",",
            ),
            valid.replace(
                "\"choices\": {",
                &format!("\"choices\": {{\n    \"stripes 2x3x4 t2\": \"{kernel}\","),
            ),
            valid.replace("\"choices\"", "\"extra\": 1, \"choices\""),
            "[1, 2, 3]".to_string(),
        ];
        for corrupt in corruptions {
            std::fs::write(&path, &corrupt).unwrap();
            let calibrator = calibrating_in(dir.path());
            assert!(calibrator.choices().is_empty(), "{corrupt:?} was not ignored");
            let notes = calibrator.notes();
            assert_eq!(notes.len(), 1, "{corrupt:?}: {notes:?}");
            assert!(notes[0].contains(&path.display().to_string()) && !notes[0].contains('\n'));
            // Rewritten at once: a valid, empty calibration.
            let rewritten: CacheFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert!(rewritten.choices.is_empty());
            assert!(calibrating_in(dir.path()).notes().is_empty());
        }
        // And measured again on the next use.
        let calibrator = calibrating_in(dir.path());
        calibrator.token_layer_in_panels(w.view());
        assert_eq!((calibrator.measurements(), calibrator.choices().len()), (1, 2));
    }

    /// Switched off or forced, nothing is measured and no file is read or written; the choices
    /// are the built-in rule's or the forced kernel's.
    #[test]
    fn the_rule_and_forced_kernels_measure_nothing_and_write_nothing() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let w = weight(1024, 512);
        let packed = PackedWeights::pack(w.view());
        let rule_in_panels = Kernel::detect().beats_blas_on_many_rows();
        let mut modes = vec![
            (Mode::BuiltIn, rule_in_panels, PanelVariant::built_in(), true),
            (Mode::Forced(Forced::Lanes), false, PanelVariant::built_in(), true),
            (Mode::Forced(Forced::OpenBlas), false, PanelVariant::built_in(), false),
        ];
        for variant in PanelVariant::candidates() {
            modes.push((Mode::Forced(Forced::Panels(variant)), true, variant, true));
        }
        for (mode, in_panels, variant, on_lanes) in modes {
            let calibrator = Calibrator::new(Settings {
                mode,
                keep_busy_measurements: false,
                cache_dir: Some(dir.path().to_path_buf()),
            });
            assert_eq!(calibrator.token_layer_in_panels(w.view()), in_panels, "{mode:?}");
            for rows in [1, 40, 300, 600] {
                assert_eq!(calibrator.panel_variant(&packed, rows), variant, "{mode:?}");
            }
            assert_eq!(calibrator.few_rows_on_lanes(w.view(), 40), on_lanes, "{mode:?}");
            assert_eq!((calibrator.measurements(), calibrator.cache_file()), (0, None));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A measurement starved of the cores (here: one that sleeps, on a pool of one thread, timed
    /// by a CPU clock of this measurement alone, since the tests beside it keep the process's
    /// clock running) keeps the built-in choice for the process and writes nothing, unless told
    /// to keep it.
    #[test]
    fn a_starved_measurement_is_not_kept() {
        assert!(starved(0.1, 1.0, 2) && starved(0.0, 0.5, 1));
        assert!(!starved(1.9, 1.0, 2) && !starved(0.0, 0.1, 2));
        let before = process_cpu_seconds().expect("Linux's /proc/self/stat");
        let spin = Instant::now();
        while spin.elapsed().as_secs_f64() < 0.1 {
            std::hint::black_box(0);
        }
        assert!(process_cpu_seconds().unwrap() > before);
        let key = Key {
            product: Product::Panels,
            rows: 256,
            outputs: 4096,
            inputs: 4096,
            threads: 1,
        };
        let (rule, measured) = (KernelChoice::Panels(PanelVariant::built_in()), KernelChoice::Lanes);
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let sleeping = || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            vec![(key, measured)]
        };
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut calibrator = calibrating_in(dir.path());
        calibrator.keep_busy_measurements = false;
        calibrator.cpu_clock = || Some(0.0);
        assert_eq!(one_thread.install(|| calibrator.choose(key, rule, sleeping)), rule);
        assert_eq!(one_thread.install(|| calibrator.choose(key, rule, sleeping)), rule);
        assert_eq!(calibrator.measurements(), 1);
        assert!(calibrator.choices().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let keeping = calibrating_in(dir.path());
        assert_eq!(one_thread.install(|| keeping.choose(key, rule, sleeping)), measured);
        assert_eq!(keeping.choices().len(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The timed slices are disjoint runs of whole panels inside the layer, the whole layer when
    /// it is small, at least 16 panels per core otherwise.
    #[test]
    fn timed_slices_lie_inside_the_layer() {
        for (rows, outputs, inputs, threads) in [
            (256, 200, 600, 2),
            (256, 4608, 1152, 2),
            (2, 6912, 1152, 1),
            (512, 1152, 4608, 2),
            (32, 33, 3000, 4),
        ] {
            let key = Key {
                product: Product::Panels,
                rows,
                outputs,
                inputs,
                threads,
            };
            let slices = TimedSlices::new(key);
            let all = outputs.div_ceil(PANEL);
            assert!(slices.panels >= (MIN_TIMED_PANELS_PER_CORE * threads).min(all));
            for slice in 0..slices.count {
                let (panels, columns) = (slices.panels(slice), slices.outputs(slice));
                assert!(!panels.is_empty() && panels.end <= all && columns.end <= outputs);
                assert_eq!(columns.start, panels.start * PANEL);
                if slice > 0 {
                    assert_eq!(slices.panels(slice - 1).end, panels.start);
                }
            }
            if slices.panels == all {
                assert_eq!((slices.count, slices.outputs(0)), (1, 0..outputs));
            }
        }
    }

    #[test]
    fn the_fastest_median_wins_unless_the_preferred_is_within_the_noise() {
        // Candidate 0 is 6% slower than 1 and steady but for one outlier; 2 is dropped after
        // the first round.
        let base = [1.06, 1.0, 1.5];
        let mut calls = [0usize; 3];
        let timed = timings(&[0usize, 1, 2], 3, |c, slice| {
            assert!(slice < 3);
            calls[c] += 1;
            base[c] * if calls[c] == 2 { 10.0 } else { 1.0 }
        });
        assert_eq!(calls, [ROUNDS, ROUNDS, 1]);
        let medians: Vec<(usize, f64, f64)> = timed.iter().map(|t| (t.candidate, t.median, t.spread)).collect();
        assert_eq!(medians, vec![(0, 1.06, 0.0), (1, 1.0, 0.0), (2, 1.5, 0.0)]);
        assert_eq!(pick(&timed, 0), 1);
        assert_eq!(pick(&timed, 2), 1);
        let timing = |candidate, median, spread| Timing {
            candidate,
            median,
            spread,
        };
        // Within the margin, or within the spread of the preferred's times: kept.
        assert_eq!(pick(&[timing(0, 1.02, 0.0), timing(1, 1.0, 0.0)], 0), 0);
        assert_eq!(pick(&[timing(0, 1.08, 0.09), timing(1, 1.0, 0.01)], 0), 0);
        assert_eq!(pick(&[timing(0, 1.08, 0.01), timing(1, 1.0, 0.09)], 0), 0);
        assert_eq!(pick(&[timing(0, 1.08, 0.05), timing(1, 1.0, 0.05)], 0), 1);
    }
}
