//! The caching methods on a [`Device`]: [`CachingEngine`], the host-side twin of
//! `resca_reference::cache::CachingHook`. The host keeps the control state (schedule, step gaps,
//! how many Taylor factors each cache holds, per-row ChaCha8 generators seeded as the reference
//! seeds them) and reads back only what decides control flow or random draws: the K medoids of
//! each K-medoids iteration, ClusCa's per-cluster "moved" flags, and the cluster sizes. Every
//! tensor operation is a kernel.
//!
//! At a full step every branch is computed and its Taylor cache updated (gap: between the last
//! two full steps; ResCa's MLP cache in paper scaling holds per-step residuals: one-step
//! differences on sparse steps, the full-step factors on full steps, as `CachingHook` keeps
//! them). At a sparse step:
//! * FORA / TaylorSeer: every branch is the Taylor prediction (fused with its gated residual);
//! * ClusCa: attention predicted; the MLP of one random member per K-means cluster computed,
//!   propagated into the order-0 cache, then predicted;
//! * ResCa: attention predicted; the MLP of the K proxies computed, every other token simulated
//!   by PDDS, and the MLP cache updated from the simulated outputs.
//!
//! Clustering runs after the last block of a full step (TETC for ResCa, K-means for ClusCa).

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resca_gpu_kernels::taylor::{TAYLOR_COEFFICIENT_VALUES, TaylorCoefficients};
use resca_gpu_kernels::tetc::NO_TOKEN;
use resca_reference::DitConfig;
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::schedule::ScheduleState;
use resca_reference::cache::tetc::{ProxyChoice, initial_medoids};
use resca_reference::cache::{
    ClusteringRecord, ClusteringSource, MethodConfig, MethodKind, ResidualScaling, RowClusters, clusca,
};
use resca_reference::flops::StepWork;
use resca_reference::model::Branch;
use resca_reference::sampler::{MethodTimings, Orientation, StepInfo};

use super::device::{Buffer, Device, DeviceError, Element, Mark, Slice};
use super::error::PipelineError;
use super::launch;
use super::model::{BranchHook, DeviceBlock, mlp_branch};

/// Taylor order cached for `branch` (`MethodConfig`'s rule: ResCa caps every order at 1 but its
/// `it` MLP cache).
pub fn cached_order(method: &MethodConfig, branch: Branch) -> usize {
    match method.kind {
        MethodKind::Full | MethodKind::Fora => 0,
        MethodKind::TaylorSeer | MethodKind::ClusCa => method.order,
        MethodKind::ResCa => match (branch, method.solver) {
            (Branch::Mlp, Solver::ImplicitTaylor(m)) => m,
            _ => 1,
        },
    }
}

/// `1/i!` as f32 (the reference's: an f64 product rounded once).
fn inverse_factorial(i: usize) -> f32 {
    (1..=i).fold(1.0f64, |acc, k| acc / k as f64) as f32
}

/// The prediction coefficients at distance `d` from the last full step.
pub fn taylor_coefficients(distance: f32) -> TaylorCoefficients {
    TaylorCoefficients {
        scale1: inverse_factorial(1),
        power1: distance.powi(1),
        scale2: inverse_factorial(2),
        power2: distance.powi(2),
        scale3: inverse_factorial(3),
        power3: distance.powi(3),
        scale4: inverse_factorial(4),
        power4: distance.powi(4),
    }
}

/// The per-row generators of the method's random choices, seeded as `CachingHook::new` seeds them.
pub fn row_generators(seed: u64, rows: usize) -> Vec<ChaCha8Rng> {
    (0..rows)
        .map(|row| ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(row as u64)))
        .collect()
}

/// One branch's Taylor factors: `slots` factors of `len` elements, `stored` of them held.
struct TaylorCache {
    factors: Buffer<f32>,
    len: usize,
    stored: usize,
}

impl TaylorCache {
    fn order(&self, m: usize) -> Slice<f32> {
        self.factors.range(m * self.len, self.len)
    }
}

/// What a timed span of device work counts towards ([`MethodTimings`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Span {
    Clustering,
    Simulated,
}

/// Device buffers of the clustering methods.
struct ClusterBuffers {
    labels: Buffer<u32>,
    proxies: Buffer<u32>,
    counts: Buffer<u32>,
    // TETC.
    normalized: Buffer<f32>,
    similarity: Buffer<f32>,
    smoothed: Buffer<f32>,
    medoids: [Buffer<u32>; 2],
    uniforms: Buffer<f64>,
    // ClusCa.
    centroids: Buffer<f32>,
    next_centroids: Buffer<f32>,
    moved: Buffer<u32>,
    commit: Buffer<u32>,
    /// ClusCa's member ranks of a sparse step, (depth, rows, K): drawn for every block before
    /// the step ([`CachingEngine::prepare_step`]).
    ranks: Buffer<u32>,
    picks: Buffer<u32>,
    // The sparse MLP of the K computed tokens per row, and PDDS.
    gathered: Buffer<f32>,
    normed: Buffer<f32>,
    hidden: Buffer<f32>,
    fresh: Buffer<f32>,
    residuals: Buffer<f32>,
    simulated: Buffer<f32>,
}

/// The per-run state of a caching method on a device.
pub struct CachingEngine {
    method: MethodConfig,
    config: DitConfig,
    rows: usize,
    sign: f32,
    schedule: ScheduleState,
    step: Option<StepInfo>,
    previous_index: Option<i64>,
    full: bool,
    caches: Vec<[TaylorCache; 2]>,
    /// The Taylor coefficients of the current sparse step
    /// (`TaylorCoefficients::to_values`), uploaded before the step
    /// ([`CachingEngine::prepare_step`]) so that a step replayed as a graph reads its own.
    coefficients: Buffer<f32>,
    /// Whether sparse steps time their spans of simulated denoising with marks (not when they
    /// run as captured graphs, where a mark is not allowed).
    time_sparse_spans: bool,
    /// ResCa in paper scaling: the MLP factors of the full steps alone, per block.
    full_step_mlp: Vec<TaylorCache>,
    clusters: Option<ClusterBuffers>,
    /// Cluster sizes (rows, K) as last read back.
    counts: Vec<u32>,
    have_similarity: bool,
    have_centroids: bool,
    rngs: Vec<ChaCha8Rng>,
    timings: MethodTimings,
    /// Spans of device work timed by marks, not yet read ([`CachingEngine::settle_timings`]):
    /// reading them waits for the device, so it happens once, at the end of the run.
    spans: Vec<(Span, Mark, Mark)>,
    record: bool,
    history: Vec<ClusteringRecord>,
    replay: Vec<ClusteringRecord>,
    /// Every buffer the engine allocated (released by [`CachingEngine::release`]).
    owned: Vec<usize>,
}

/// Whether `branch`'s cache holds ResCa's per-step residuals (paper scaling, MLP branch).
fn one_step_residuals(method: &MethodConfig, branch: Branch) -> bool {
    method.kind == MethodKind::ResCa && branch == Branch::Mlp && method.residuals == ResidualScaling::Paper
}

/// Allocates on `dev` and notes the buffer in `owned`.
fn alloc<D: Device, T: Element>(dev: &mut D, owned: &mut Vec<usize>, len: usize) -> Result<Buffer<T>, DeviceError> {
    let buffer = dev.alloc(len)?;
    owned.push(buffer.id());
    Ok(buffer)
}

impl CachingEngine {
    /// A fresh engine for `rows` model rows (the guided batch counts both halves).
    pub fn new<D: Device>(
        dev: &mut D,
        method: MethodConfig,
        config: &DitConfig,
        rows: usize,
        orientation: Orientation,
    ) -> Result<Self, PipelineError> {
        method.validate(config.tokens())?;
        let (n, d) = (config.tokens(), config.hidden_size);
        let len = rows * n * d;
        let mut owned = Vec::new();
        let mut caches = Vec::with_capacity(config.depth);
        for _ in 0..config.depth {
            let mut pair = Vec::with_capacity(2);
            for branch in [Branch::Attention, Branch::Mlp] {
                let slots = cached_order(&method, branch) + 1;
                pair.push(TaylorCache {
                    factors: alloc(dev, &mut owned, slots * len)?,
                    len,
                    stored: 0,
                });
            }
            let [attention, mlp]: [TaylorCache; 2] = pair.try_into().ok().expect("two branches");
            caches.push([attention, mlp]);
        }
        let coefficients = alloc(dev, &mut owned, TAYLOR_COEFFICIENT_VALUES)?;
        let mut full_step_mlp = Vec::new();
        if one_step_residuals(&method, Branch::Mlp) {
            for _ in 0..config.depth {
                let slots = cached_order(&method, Branch::Mlp) + 1;
                full_step_mlp.push(TaylorCache {
                    factors: alloc(dev, &mut owned, slots * len)?,
                    len,
                    stored: 0,
                });
            }
        }
        let clusters = match method.kind {
            MethodKind::ClusCa | MethodKind::ResCa => {
                Some(Self::cluster_buffers(dev, &mut owned, &method, config, rows)?)
            }
            _ => None,
        };
        Ok(Self {
            config: config.clone(),
            rows,
            sign: match orientation {
                Orientation::CountingDown => -1.0,
                Orientation::CountingUp => 1.0,
            },
            schedule: ScheduleState::new(method.schedule()),
            step: None,
            previous_index: None,
            full: true,
            caches,
            coefficients,
            time_sparse_spans: true,
            full_step_mlp,
            clusters,
            counts: Vec::new(),
            have_similarity: false,
            have_centroids: false,
            rngs: row_generators(method.seed, rows),
            timings: MethodTimings::default(),
            spans: Vec::new(),
            record: false,
            history: Vec::new(),
            replay: Vec::new(),
            owned,
            method,
        })
    }

    /// Frees every device buffer of the engine.
    pub fn release<D: Device>(self, dev: &mut D) -> Result<(), DeviceError> {
        self.owned.iter().try_for_each(|&id| dev.free(id))
    }

    fn cluster_buffers<D: Device>(
        dev: &mut D,
        owned: &mut Vec<usize>,
        method: &MethodConfig,
        config: &DitConfig,
        rows: usize,
    ) -> Result<ClusterBuffers, DeviceError> {
        let (n, d, k) = (config.tokens(), config.hidden_size, method.clusters);
        let order = method.solver.order();
        Ok(ClusterBuffers {
            labels: alloc(dev, owned, rows * n)?,
            proxies: alloc(dev, owned, rows * k)?,
            counts: alloc(dev, owned, rows * k)?,
            normalized: alloc(dev, owned, rows * n * d)?,
            similarity: alloc(dev, owned, rows * n * n)?,
            smoothed: alloc(dev, owned, rows * n * n)?,
            medoids: [alloc(dev, owned, rows * k)?, alloc(dev, owned, rows * k)?],
            uniforms: alloc(dev, owned, rows * k)?,
            centroids: alloc(dev, owned, rows * k * d)?,
            next_centroids: alloc(dev, owned, rows * k * d)?,
            moved: alloc(dev, owned, rows * k)?,
            commit: alloc(dev, owned, rows)?,
            ranks: alloc(dev, owned, config.depth * rows * k)?,
            picks: alloc(dev, owned, rows * k)?,
            gathered: alloc(dev, owned, rows * k * d)?,
            normed: alloc(dev, owned, rows * k * d)?,
            hidden: alloc(dev, owned, rows * k * config.mlp_hidden())?,
            fresh: alloc(dev, owned, rows * k * d)?,
            residuals: alloc(dev, owned, order * rows * k * d)?,
            simulated: alloc(dev, owned, rows * n * d)?,
        })
    }

    /// Keeps a [`ClusteringRecord`] of every clustering (labels, proxies, ResCa's smoothed
    /// similarity), read back from the device.
    pub fn record_clusterings(&mut self, record: bool) {
        self.record = record;
    }

    /// The clusterings recorded so far (see [`CachingEngine::record_clusterings`]).
    pub fn clustering_history(&self) -> &[ClusteringRecord] {
        &self.history
    }

    /// Uses `records` (by full-step index) instead of the computed clusterings, as
    /// `CachingHook::replay_clusterings` does: the clustering still runs (and consumes its random
    /// numbers), then the recorded labels and proxies replace it.
    pub fn replay_clusterings(&mut self, records: Vec<ClusteringRecord>) {
        self.replay = records;
    }

    /// The time spent clustering and simulating, as far as settled by
    /// [`CachingEngine::settle_timings`].
    pub fn timings(&self) -> MethodTimings {
        self.timings
    }

    /// Reads the timed spans of device work into [`CachingEngine::timings`] (waits for the
    /// device: call it when the run's results are on the host anyway).
    pub fn settle_timings<D: Device>(&mut self, dev: &mut D) -> Result<MethodTimings, DeviceError> {
        for (span, start, end) in std::mem::take(&mut self.spans) {
            let seconds = dev.seconds_between(start, end)?;
            match span {
                Span::Clustering => self.timings.clustering_s += seconds,
                Span::Simulated => self.timings.simulated_s += seconds,
            }
        }
        Ok(self.timings)
    }

    /// What the current step computes per image (FLOPs accounting).
    pub fn step_work(&self) -> StepWork {
        self.method.step_work(self.full, &self.config)
    }

    /// Decides the step, as `CachingHook::begin_step`.
    pub fn begin_step(&mut self, step: &StepInfo) {
        if let Some(current) = self.step {
            self.previous_index = Some(current.index);
        }
        self.step = Some(*step);
        self.full = self.schedule.next(step.position, step.index);
    }

    /// Uploads what a sparse step reads from device buffers rather than as launch parameters
    /// (nothing at a full step): the Taylor coefficients of the step and, for ClusCa, the member
    /// ranks of every block, drawn from the row generators in the order the blocks use them.
    /// Call it after [`CachingEngine::begin_step`], before the step's launches (a graph replay
    /// included).
    pub fn prepare_step<D: Device>(&mut self, dev: &mut D) -> Result<(), PipelineError> {
        if self.full {
            return Ok(());
        }
        let coefficients = self.coefficients()?.to_values();
        dev.upload(self.coefficients.all(), &coefficients)?;
        if self.method.kind == MethodKind::ClusCa {
            let (k, depth) = (self.method.clusters, self.config.depth);
            let mut ranks = vec![NO_TOKEN; depth * self.rows * k];
            for block in ranks.chunks_mut(self.rows * k) {
                for (row, rng) in self.rngs.iter_mut().enumerate() {
                    for c in 0..k {
                        let count = self.counts[row * k + c] as usize;
                        if count > 0 {
                            block[row * k + c] = rng.random_range(0..count) as u32;
                        }
                    }
                }
            }
            let buffer = self.buffers()?.ranks;
            dev.upload(buffer.all(), &ranks)?;
        }
        Ok(())
    }

    /// Whether the current step is sparse (its launches can be captured and replayed as a graph).
    pub fn is_sparse(&self) -> bool {
        !self.full
    }

    /// Whether sparse steps time their simulated denoising with marks (on by default; a sparse
    /// step captured as a graph may not mark, so the pipeline turns it off with graphs).
    pub fn time_sparse_spans(&mut self, on: bool) {
        self.time_sparse_spans = on;
    }

    /// Every host value that a sparse step passes to its launches by value and that can change
    /// between sparse steps: the stored-factor count of every cache and the gaps of ResCa's
    /// cache update (between the last two full steps; one step for the per-step residuals). Two
    /// sparse steps with the same key issue the same launches (everything else they read is in
    /// device buffers), so a graph captured at one is replayed at the other.
    pub fn sparse_step_key(&self) -> Result<Vec<u64>, PipelineError> {
        let mut key = self.stored_counts();
        key.push(self.schedule.full_step_gap().unwrap_or(0) as u64);
        if one_step_residuals(&self.method, Branch::Mlp) {
            let index = self.current()?.index;
            key.push(self.previous_index.map_or(0, |p| index - p) as u64);
        }
        Ok(key)
    }

    /// The stored-factor count of every cache: the host state a sparse step changes (ResCa's
    /// per-step residuals add a factor until the cache is full).
    pub fn stored_counts(&self) -> Vec<u64> {
        let caches = self.caches.iter().flat_map(|pair| pair.iter());
        caches
            .chain(&self.full_step_mlp)
            .map(|cache| cache.stored as u64)
            .collect()
    }

    /// Sets the counts of [`CachingEngine::stored_counts`]: after a replayed graph, those its
    /// capture left.
    pub fn set_stored_counts(&mut self, counts: &[u64]) -> Result<(), PipelineError> {
        let caches = self.caches.iter_mut().flat_map(|pair| pair.iter_mut());
        let all: Vec<&mut TaylorCache> = caches.chain(self.full_step_mlp.iter_mut()).collect();
        if all.len() != counts.len() {
            return Err(PipelineError::Unsupported(format!(
                "{} stored-factor counts for {} caches",
                counts.len(),
                all.len()
            )));
        }
        for (cache, &count) in all.into_iter().zip(counts) {
            cache.stored = count as usize;
        }
        Ok(())
    }

    /// A mark starting a span of simulated denoising, when sparse steps are timed.
    fn sparse_mark<D: Device>(&mut self, dev: &mut D) -> Result<Option<Mark>, PipelineError> {
        Ok(if self.time_sparse_spans {
            Some(dev.mark()?)
        } else {
            None
        })
    }

    /// Ends the span begun by [`CachingEngine::sparse_mark`].
    fn end_sparse_span<D: Device>(&mut self, dev: &mut D, started: Option<Mark>) -> Result<(), PipelineError> {
        if let Some(started) = started {
            self.spans.push((Span::Simulated, started, dev.mark()?));
        }
        Ok(())
    }

    fn current(&self) -> Result<StepInfo, PipelineError> {
        self.step
            .ok_or_else(|| PipelineError::Unsupported("a forward pass before the first step".into()))
    }

    fn slot(branch: Branch) -> usize {
        match branch {
            Branch::Attention => 0,
            Branch::Mlp => 1,
        }
    }

    fn coefficients(&self) -> Result<TaylorCoefficients, PipelineError> {
        let last = self
            .schedule
            .last_full()
            .ok_or_else(|| PipelineError::Unsupported("a cached step before any full step".into()))?;
        Ok(taylor_coefficients((self.current()?.index - last) as f32))
    }

    /// `x += gate * (Taylor prediction of (block, branch))`, the gate at `gate_offset` of the
    /// modulation (rows, 6D).
    fn predict_gated_add<D: Device>(
        &mut self,
        dev: &mut D,
        block: usize,
        branch: Branch,
        x: Slice<f32>,
        modulation: Slice<f32>,
        gate_offset: usize,
    ) -> Result<(), PipelineError> {
        let (n, d) = (self.config.tokens(), self.config.hidden_size);
        let cache = &self.caches[block][Self::slot(branch)];
        launch::taylor_predict_gated_add(
            dev,
            x,
            cache.factors.all(),
            modulation,
            self.rows * n,
            d,
            n,
            6 * d,
            gate_offset,
            cache.stored,
            self.coefficients.all(),
        )?;
        Ok(())
    }

    /// The MLP branch of a sparse step, gated residual included.
    fn sparse_mlp<D: Device>(
        &mut self,
        dev: &mut D,
        block: &DeviceBlock,
        l: usize,
        x: Slice<f32>,
        modulation: Slice<f32>,
    ) -> Result<(), PipelineError> {
        let gate = 5 * self.config.hidden_size;
        match self.method.kind {
            MethodKind::ClusCa => self.clusca_mlp(dev, block, l, x, modulation),
            MethodKind::ResCa => self.resca_mlp(dev, block, l, x, modulation),
            _ => self.predict_gated_add(dev, l, Branch::Mlp, x, modulation, gate),
        }
    }

    /// The MLP of the K tokens per row named by `indices` (rows K) into `fresh` (rows K, D).
    fn computed_tokens<D: Device>(
        &self,
        dev: &mut D,
        block: &DeviceBlock,
        x: Slice<f32>,
        modulation: Slice<f32>,
        indices: Slice<u32>,
    ) -> Result<(), PipelineError> {
        let b = self.buffers()?;
        let (n, d, k) = (self.config.tokens(), self.config.hidden_size, self.method.clusters);
        launch::gather_rows(dev, x, indices, b.gathered.all(), self.rows, n, k, d)?;
        mlp_branch(
            dev,
            block,
            b.gathered.all(),
            modulation,
            b.normed.all(),
            b.hidden.all(),
            b.fresh.all(),
            self.rows * k,
            k,
        )?;
        Ok(())
    }

    fn buffers(&self) -> Result<&ClusterBuffers, PipelineError> {
        self.clusters
            .as_ref()
            .ok_or_else(|| PipelineError::Unsupported("this method keeps no clusters".into()))
    }

    /// ClusCa's sparse MLP: one random member per non-empty cluster (drawn from the row's
    /// generator as `clusca::random_members` draws it), propagated, then predicted.
    fn clusca_mlp<D: Device>(
        &mut self,
        dev: &mut D,
        block: &DeviceBlock,
        l: usize,
        x: Slice<f32>,
        modulation: Slice<f32>,
    ) -> Result<(), PipelineError> {
        let (n, d, k) = (self.config.tokens(), self.config.hidden_size, self.method.clusters);
        let (labels, picks) = {
            let b = self.buffers()?;
            (b.labels, b.picks)
        };
        let ranks = self.buffers()?.ranks.range(l * self.rows * k, self.rows * k);
        launch::cluster_members(dev, labels.all(), ranks, picks.all(), self.rows, n, k)?;
        self.computed_tokens(dev, block, x, modulation, picks.all())?;
        let started = self.sparse_mark(dev)?;
        let fresh = self.buffers()?.fresh;
        let cache0 = self.caches[l][1].order(0);
        launch::clusca_propagate(
            dev,
            cache0,
            fresh.all(),
            labels.all(),
            picks.all(),
            ranks,
            self.rows,
            n,
            k,
            d,
            self.method.propagation,
        )?;
        self.predict_gated_add(dev, l, Branch::Mlp, x, modulation, 5 * d)?;
        self.end_sparse_span(dev, started)?;
        Ok(())
    }

    /// ResCa's sparse MLP: the proxies computed, every other token simulated by PDDS, the cache
    /// updated from the simulated outputs as at a full step.
    fn resca_mlp<D: Device>(
        &mut self,
        dev: &mut D,
        block: &DeviceBlock,
        l: usize,
        x: Slice<f32>,
        modulation: Slice<f32>,
    ) -> Result<(), PipelineError> {
        let (n, d, k) = (self.config.tokens(), self.config.hidden_size, self.method.clusters);
        let proxies = self.buffers()?.proxies;
        self.computed_tokens(dev, block, x, modulation, proxies.all())?;
        let started = self.sparse_mark(dev)?;
        let b = self.buffers()?;
        let (labels, fresh, residuals, simulated) = (b.labels, b.fresh, b.residuals, b.simulated);
        let solver = self.method.solver;
        let order = solver.order();
        let cache = &self.caches[l][1];
        let factors = cache.factors.all();
        let stored = cache.stored;
        launch::pdds_proxy_residuals(
            dev,
            fresh.all(),
            factors,
            proxies.all(),
            residuals.all(),
            self.rows,
            n,
            k,
            d,
            order,
            stored,
            self.sign,
        )?;
        launch::pdds_update(
            dev,
            factors,
            labels.all(),
            proxies.all(),
            residuals.all(),
            fresh.all(),
            simulated.all(),
            x,
            modulation,
            self.rows,
            n,
            k,
            d,
            order,
            stored,
            self.sign,
            solver == Solver::Bdf2,
            6 * d,
            5 * d,
        )?;
        self.store(dev, l, Branch::Mlp, simulated.all())?;
        self.end_sparse_span(dev, started)?;
        Ok(())
    }

    /// Clusters every row's final-block tokens (TETC for ResCa, K-means for ClusCa).
    fn cluster<D: Device>(&mut self, dev: &mut D, x: Slice<f32>) -> Result<(), PipelineError> {
        let started = dev.mark()?;
        let index = self.current()?.index;
        match self.method.kind {
            MethodKind::ResCa => self.tetc(dev, x)?,
            _ => self.kmeans(dev, x)?,
        }
        let (n, k) = (self.config.tokens(), self.method.clusters);
        let b = self.buffers()?;
        let (labels, proxies, counts, smoothed) = (b.labels, b.proxies, b.counts, b.smoothed);
        if self.record {
            let all_labels = dev.download_vec(labels.all())?;
            let all_proxies = dev.download_vec(proxies.all())?;
            let resca = self.method.kind == MethodKind::ResCa;
            let mut rows = Vec::with_capacity(self.rows);
            let mut similarity = Vec::new();
            for row in 0..self.rows {
                rows.push(RowClusters {
                    labels: all_labels[row * n..(row + 1) * n].iter().map(|&v| v as usize).collect(),
                    proxies: if resca {
                        all_proxies[row * k..(row + 1) * k]
                            .iter()
                            .map(|&v| v as usize)
                            .collect()
                    } else {
                        Vec::new()
                    },
                });
                if resca {
                    let s = dev.download_vec(smoothed.range(row * n * n, n * n))?;
                    similarity.push(Array2::from_shape_vec((n, n), s).expect("n x n"));
                }
            }
            self.history.push(ClusteringRecord {
                step_index: index,
                rows,
                similarity,
            });
        }
        if let Some(recorded) = self.replay.iter().find(|r| r.step_index == index) {
            if recorded.rows.len() != self.rows {
                return Err(PipelineError::Unsupported(format!(
                    "the replayed clustering of step {index} has {} rows, the run {}",
                    recorded.rows.len(),
                    self.rows
                )));
            }
            let to_u32 = |v: &[usize]| v.iter().map(|&t| t as u32).collect::<Vec<u32>>();
            let replay_labels: Vec<u32> = recorded.rows.iter().flat_map(|r| to_u32(&r.labels)).collect();
            dev.upload(labels.all(), &replay_labels)?;
            if self.method.kind == MethodKind::ResCa {
                let replay_proxies: Vec<u32> = recorded.rows.iter().flat_map(|r| to_u32(&r.proxies)).collect();
                dev.upload(proxies.all(), &replay_proxies)?;
            }
        }
        if self.method.kind == MethodKind::ClusCa {
            launch::cluster_counts(dev, labels.all(), counts.all(), self.rows, n, k)?;
            self.counts = dev.download_vec(counts.all())?;
        }
        self.spans.push((Span::Clustering, started, dev.mark()?));
        Ok(())
    }

    /// TETC: similarity, EMA, K-medoids (the host loops until no medoid changes), proxies.
    fn tetc<D: Device>(&mut self, dev: &mut D, x: Slice<f32>) -> Result<(), PipelineError> {
        let (n, d, k) = (self.config.tokens(), self.config.hidden_size, self.method.clusters);
        let rows = self.rows;
        let b = self.buffers()?;
        let (normalized, similarity, smoothed, labels) = (b.normalized, b.similarity, b.smoothed, b.labels);
        let (medoids, uniforms, proxies, counts) = (b.medoids, b.uniforms, b.proxies, b.counts);
        launch::row_normalize(dev, x, normalized.all(), rows * n, d)?;
        launch::similarity(dev, normalized.all(), similarity.all(), rows, n, d)?;
        let has_previous = self.method.clustering == ClusteringSource::Trajectory && self.have_similarity;
        launch::similarity_ema(dev, similarity.all(), smoothed.all(), self.method.alpha, has_previous)?;
        self.have_similarity = true;

        let at = k_medoids(
            dev,
            smoothed.all(),
            labels.all(),
            [medoids[0].all(), medoids[1].all()],
            rows,
            n,
            k,
            self.method.kmedoids_iters,
        )?;

        match self.method.proxy {
            ProxyChoice::Medoid => dev.copy(medoids[at].all(), proxies.all())?,
            ProxyChoice::CenterRandom => {
                launch::cluster_counts(dev, labels.all(), counts.all(), rows, n, k)?;
                let sizes = dev.download_vec(counts.all())?;
                let mut draws = vec![0.0f64; rows * k];
                for (row, rng) in self.rngs.iter_mut().enumerate() {
                    for c in 0..k {
                        if sizes[row * k + c] > 0 {
                            draws[row * k + c] = rng.random::<f64>();
                        }
                    }
                }
                dev.upload(uniforms.all(), &draws)?;
                launch::center_random_proxies(
                    dev,
                    smoothed.all(),
                    labels.all(),
                    medoids[at].all(),
                    uniforms.all(),
                    proxies.all(),
                    rows,
                    n,
                    k,
                )?;
            }
        }
        Ok(())
    }

    /// ClusCa's K-means (L1): random initial centroids from the row generators at the first full
    /// step, warm starts after; per row at most 100 iterations, stopping when the centroids are
    /// `allclose` (the host commits the rows that moved and retires the others).
    fn kmeans<D: Device>(&mut self, dev: &mut D, x: Slice<f32>) -> Result<(), PipelineError> {
        let (n, d, k) = (self.config.tokens(), self.config.hidden_size, self.method.clusters);
        let rows = self.rows;
        let b = self.buffers()?;
        let (centroids, next, moved, commit) = (b.centroids, b.next_centroids, b.moved, b.commit);
        let (labels, picks) = (b.labels, b.picks);
        if !self.have_centroids {
            let mut seeds = Vec::with_capacity(rows * k);
            for rng in &mut self.rngs {
                seeds.extend((0..k).map(|_| rng.random_range(0..n) as u32));
            }
            dev.upload(picks.all(), &seeds)?;
            launch::gather_rows(dev, x, picks.all(), centroids.all(), rows, n, k, d)?;
            self.have_centroids = true;
        }
        kmeans_l1(
            dev,
            x,
            KMeansBuffers {
                centroids: centroids.all(),
                next: next.all(),
                moved: moved.all(),
                commit: commit.all(),
                labels: labels.all(),
            },
            rows,
            n,
            k,
            d,
        )?;
        Ok(())
    }
}

/// The forward pass's hook under a caching method: full steps fill the Taylor caches, sparse
/// steps predict (and ClusCa and ResCa compute their K tokens' MLP), and the last block's output
/// is clustered after full steps.
impl<D: Device> BranchHook<D> for CachingEngine {
    /// Whether the current step computes every branch.
    fn is_full(&self) -> bool {
        self.full
    }

    /// Updates the Taylor cache of (`block`, `branch`) with a new output (rows N, D), by
    /// `CachingHook`'s rule: derivatives over the gap between the last two full steps, except
    /// ResCa's MLP cache in paper scaling (one-step differences on sparse steps; on full steps
    /// the factors of the full steps alone, copied in).
    fn store(&mut self, dev: &mut D, block: usize, branch: Branch, output: Slice<f32>) -> Result<(), PipelineError> {
        let order = cached_order(&self.method, branch);
        let full_gap = self.schedule.full_step_gap().unwrap_or(0) as f32;
        let slot = Self::slot(branch);
        if one_step_residuals(&self.method, branch) && self.full {
            let anchor = &mut self.full_step_mlp[block];
            launch::taylor_update(
                dev,
                anchor.factors.all(),
                output,
                anchor.len,
                anchor.stored,
                order,
                full_gap,
            )?;
            anchor.stored = anchor.stored.min(order) + 1;
            let cache = &mut self.caches[block][slot];
            dev.copy(anchor.factors.all(), cache.factors.all())?;
            cache.stored = anchor.stored;
            return Ok(());
        }
        let gap = if one_step_residuals(&self.method, branch) {
            let index = self.current()?.index;
            self.previous_index.map_or(0, |p| index - p) as f32
        } else {
            full_gap
        };
        let cache = &mut self.caches[block][slot];
        launch::taylor_update(dev, cache.factors.all(), output, cache.len, cache.stored, order, gap)?;
        cache.stored = cache.stored.min(order) + 1;
        Ok(())
    }

    /// At a sparse step: attention is the Taylor prediction, the MLP the method's own (`sparse_mlp`).
    fn supply_gated_add(
        &mut self,
        dev: &mut D,
        block: &DeviceBlock,
        l: usize,
        branch: Branch,
        x: Slice<f32>,
        modulation: Slice<f32>,
    ) -> Result<(), PipelineError> {
        match branch {
            Branch::Attention => {
                let gate = 2 * self.config.hidden_size;
                self.predict_gated_add(dev, l, Branch::Attention, x, modulation, gate)
            }
            Branch::Mlp => self.sparse_mlp(dev, block, l, x, modulation),
        }
    }

    /// After block `l`: at a full step, the clustering methods cluster the last block's output.
    fn after_block(&mut self, dev: &mut D, l: usize, x: Slice<f32>) -> Result<(), PipelineError> {
        if self.full && self.clusters.is_some() && l + 1 == self.config.depth {
            self.cluster(dev, x)?;
        }
        Ok(())
    }
}

/// K-medoids on the similarity matrices `s` (rows, N, N) of every batch row, as
/// `tetc::k_medoids` runs it per row: medoids from `initial_medoids`, then at most `max_iters`
/// rounds of assignment and medoid update, stopping when no medoid changes (the host reads the
/// rows x K medoids back each round; a row that stopped is a fixed point, so the batch stops when
/// every row has), and a final assignment. `medoids` are two (rows, K) buffers used in turn;
/// returns which one holds the final medoids. `labels` (rows, N) receives the final labels.
#[allow(clippy::too_many_arguments)]
pub fn k_medoids<D: Device>(
    dev: &mut D,
    s: Slice<f32>,
    labels: Slice<u32>,
    medoids: [Slice<u32>; 2],
    rows: usize,
    n: usize,
    k: usize,
    max_iters: usize,
) -> Result<usize, DeviceError> {
    let init: Vec<u32> = initial_medoids(n, k.min(n)).iter().map(|&m| m as u32).collect();
    let mut current: Vec<u32> = init.iter().copied().cycle().take(rows * k).collect();
    dev.upload(medoids[0], &current)?;
    let mut at = 0;
    for _ in 0..max_iters {
        launch::kmedoids_assign(dev, s, medoids[at], labels, rows, n, k)?;
        launch::kmedoids_update(dev, s, labels, medoids[at], medoids[1 - at], rows, n, k)?;
        let next = dev.download_vec(medoids[1 - at])?;
        if next == current {
            break;
        }
        current = next;
        at = 1 - at;
    }
    launch::kmedoids_assign(dev, s, medoids[at], labels, rows, n, k)?;
    Ok(at)
}

/// The device buffers of [`kmeans_l1`].
#[derive(Clone, Copy, Debug)]
pub struct KMeansBuffers {
    /// (rows, K, D): the initial centroids in, the final ones out.
    pub centroids: Slice<f32>,
    /// (rows, K, D) scratch.
    pub next: Slice<f32>,
    /// (rows, K) scratch.
    pub moved: Slice<u32>,
    /// (rows) scratch.
    pub commit: Slice<u32>,
    /// (rows, N): the final labels.
    pub labels: Slice<u32>,
}

/// ClusCa's K-means with L1 distance on the tokens `x` (rows, N, D) of every batch row, as
/// `clusca::kmeans_l1` runs it per row: at most 100 rounds of assignment and centroid update; a
/// row stops when its centroids are `allclose` to the update (keeping the old ones, the labels of
/// that round), otherwise it commits the update. The host reads the (rows, K) "moved" flags back
/// each round and commits the rows that moved.
#[allow(clippy::too_many_arguments)]
pub fn kmeans_l1<D: Device>(
    dev: &mut D,
    x: Slice<f32>,
    b: KMeansBuffers,
    rows: usize,
    n: usize,
    k: usize,
    d: usize,
) -> Result<(), DeviceError> {
    let mut active = vec![true; rows];
    for _ in 0..clusca::MAX_ITERS {
        launch::kmeans_assign_l1(dev, x, b.centroids, b.labels, rows, n, k, d)?;
        launch::kmeans_update(dev, x, b.labels, b.centroids, b.next, b.moved, rows, n, k, d)?;
        let flags = dev.download_vec(b.moved)?;
        let mut mask = vec![0u32; rows];
        for row in 0..rows {
            let row_moved = flags[row * k..(row + 1) * k].iter().any(|&f| f != 0);
            if active[row] && row_moved {
                mask[row] = 1;
            } else {
                active[row] = false;
            }
        }
        if mask.iter().any(|&m| m != 0) {
            dev.upload(b.commit, &mask)?;
            launch::commit_rows(dev, b.next, b.centroids, b.commit, k * d)?;
        }
        if !active.iter().any(|&a| a) {
            break;
        }
    }
    Ok(())
}
