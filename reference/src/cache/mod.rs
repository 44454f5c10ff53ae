//! The caching methods behind one interface: a [`CachingHook`] is consulted by the sampler at every
//! step ([`StepHook::begin_step`]) and by the DiT forward for every block and branch
//! ([`BranchHook::branch`]). Methods: `full`, `fora`, `taylorseer`, `clusca` and `resca`
//! (docs/algorithms.md sections 4-6).

pub mod clusca;
pub mod pdds;
pub mod schedule;
pub mod taylor;
pub mod tetc;

use std::time::Instant;

use ndarray::{Array2, Array3, ArrayView3, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::DitConfig;
use crate::error::{Error, Result};
use crate::flops::StepWork;
use crate::model::{Branch, BranchHook, BranchInput, Dit, FullCompute};
use crate::safetensors_file::SafetensorsFile;
use crate::sampler::{MethodTimings, Orientation, StepHook, StepInfo};
use pdds::Solver;
use schedule::{Schedule, ScheduleState};
use taylor::TaylorFactors;
use tetc::ProxyChoice;

/// The caching method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    /// Every block of every step.
    Full,
    /// Reuse the last full step's branch outputs (Taylor order 0).
    Fora,
    /// Taylor-predict every branch from finite-difference derivatives of full steps.
    TaylorSeer,
    /// TaylorSeer attention; MLP: one random member per K-means (L1) cluster recomputed and
    /// propagated to its cluster.
    ClusCa,
    /// TaylorSeer attention (order <= 1); MLP: K proxies recomputed, the driven tokens simulated
    /// by PDDS; clusters by TETC.
    ResCa,
}

/// How ResCa's cached residuals are scaled (docs/algorithms.md section 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResidualScaling {
    /// One-step residuals, as the paper's equations imply.
    Paper,
    /// The released code: every cached derivative divided by the gap between the last two FULL
    /// steps, sparse-step updates included.
    Official,
}

/// What TETC clusters on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusteringSource {
    /// The EMA of the similarity over full steps (the paper's TETC).
    Trajectory,
    /// The current similarity only (the supplement's feature-based ablation).
    Feature,
}

/// Every setting of a caching method.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodConfig {
    pub kind: MethodKind,
    /// N: a full step every `interval` steps after the first ones.
    pub interval: usize,
    /// Full steps at the start (DiT 2, FLUX 3).
    pub first_enhance: usize,
    /// Taylor order (TaylorSeer 0-4, ClusCa); for ResCa the order M of the `it` solver.
    pub order: usize,
    /// K clusters (ClusCa, ResCa).
    pub clusters: usize,
    /// TETC's EMA weight of the current similarity, in [0, 1].
    pub alpha: f32,
    pub solver: Solver,
    pub proxy: ProxyChoice,
    pub residuals: ResidualScaling,
    pub clustering: ClusteringSource,
    /// ClusCa's propagation ratio gamma, in [0, 1].
    pub propagation: f32,
    /// K-medoids iterations at most.
    pub kmedoids_iters: usize,
    /// Seed of the per-row random choices (center-random proxies, ClusCa's members).
    pub seed: u64,
}

impl MethodConfig {
    /// Uncached sampling.
    pub fn full() -> Self {
        Self {
            kind: MethodKind::Full,
            interval: 1,
            first_enhance: 2,
            order: 0,
            clusters: 16,
            alpha: 0.5,
            solver: Solver::ImplicitEuler,
            proxy: ProxyChoice::Medoid,
            residuals: ResidualScaling::Paper,
            clustering: ClusteringSource::Trajectory,
            propagation: 0.005,
            kmedoids_iters: 8,
            seed: 0,
        }
    }

    /// A method with the paper's defaults (`interval` N, `order`, K = 16, alpha 0.5, IE).
    pub fn new(kind: MethodKind, interval: usize, order: usize) -> Self {
        Self {
            kind,
            interval,
            order,
            ..Self::full()
        }
    }

    /// Checks the settings against a model with `tokens` tokens per image.
    pub fn validate(&self, tokens: usize) -> Result<()> {
        let fail = |msg: String| Err(Error::Cache(msg));
        if self.interval == 0 {
            return fail("--interval must be at least 1".into());
        }
        match self.kind {
            MethodKind::TaylorSeer | MethodKind::ClusCa if self.order > 4 => {
                return fail(format!(
                    "--order {} is out of range: Taylor orders 0..=4 are supported",
                    self.order
                ));
            }
            MethodKind::ResCa => {
                if let Solver::ImplicitTaylor(m) = self.solver
                    && !(1..=4).contains(&m)
                {
                    return fail(format!(
                        "--order {m} is out of range: the `it` solver supports orders 1..=4"
                    ));
                }
            }
            _ => {}
        }
        if matches!(self.kind, MethodKind::ClusCa | MethodKind::ResCa) {
            if self.clusters == 0 || self.clusters > tokens {
                return fail(format!(
                    "--clusters {} must be between 1 and the token count N = {tokens}",
                    self.clusters
                ));
            }
            if !(0.0..=1.0).contains(&self.alpha) {
                return fail(format!("--alpha {} must be in [0, 1]", self.alpha));
            }
            if !(0.0..=1.0).contains(&self.propagation) {
                return fail(format!("--gamma {} must be in [0, 1]", self.propagation));
            }
        }
        Ok(())
    }

    /// A short name such as `resca-ie (N=5, K=16)`.
    pub fn name(&self) -> String {
        match self.kind {
            MethodKind::Full => "full".to_string(),
            MethodKind::Fora => format!("fora (N={})", self.interval),
            MethodKind::TaylorSeer => format!("taylorseer (N={}, O={})", self.interval, self.order),
            MethodKind::ClusCa => format!(
                "clusca (N={}, K={}, gamma={})",
                self.interval, self.clusters, self.propagation
            ),
            MethodKind::ResCa => {
                let solver = match self.solver {
                    Solver::ImplicitEuler => "ie".to_string(),
                    Solver::ImplicitTaylor(m) => format!("it{m}"),
                    Solver::Bdf2 => "ib".to_string(),
                };
                let scaling = match self.residuals {
                    ResidualScaling::Paper => "",
                    ResidualScaling::Official => ", official",
                };
                format!("resca-{solver} (N={}, K={}{scaling})", self.interval, self.clusters)
            }
        }
    }

    /// The dense-step schedule (every step is full for `full`).
    pub fn schedule(&self) -> Schedule {
        match self.kind {
            MethodKind::Full => Schedule {
                first_enhance: usize::MAX,
                interval: 1,
            },
            _ => Schedule {
                first_enhance: self.first_enhance,
                interval: self.interval,
            },
        }
    }

    /// What a step computes per image.
    pub fn step_work(&self, full: bool, config: &DitConfig) -> StepWork {
        if full {
            return StepWork::full(config);
        }
        let mlp_tokens = match self.kind {
            MethodKind::ClusCa | MethodKind::ResCa => self.clusters.min(config.tokens()),
            _ => 0,
        };
        StepWork {
            attention_tokens: 0,
            mlp_tokens,
        }
    }

    /// Readies `model` for this method's sparse steps before a run, as loading readies it for a
    /// forward: ClusCa and ResCa multiply a few rows by every block's MLP, which reads a packed
    /// copy of fc1 and fc2 where the token layers are held plain for BLAS (CPUs without AVX-512;
    /// DiT-B/2: 226 MB, ~0.2 s to make). Without this call the first sparse step makes them.
    pub fn prepare(&self, model: &Dit) {
        if matches!(self.kind, MethodKind::ClusCa | MethodKind::ResCa) {
            model.weights.blocks.par_iter().for_each(|block| {
                block.fc1.pack_for_few_rows();
                block.fc2.pack_for_few_rows();
            });
        }
    }

    /// Taylor order cached for `branch` (ResCa caps every order at 1 but its `it` MLP cache).
    fn cached_order(&self, branch: Branch) -> usize {
        match self.kind {
            MethodKind::Full | MethodKind::Fora => 0,
            MethodKind::TaylorSeer | MethodKind::ClusCa => self.order,
            MethodKind::ResCa => match (branch, self.solver) {
                (Branch::Mlp, Solver::ImplicitTaylor(m)) => m,
                _ => 1,
            },
        }
    }
}

/// The clusters of one batch row at the last full step.
#[derive(Clone, Debug, Default)]
pub struct RowClusters {
    pub labels: Vec<usize>,
    /// ResCa: the proxy of each cluster.
    pub proxies: Vec<usize>,
}

/// The clustering made at one full step, for every batch row (kept for inspection and tests).
#[derive(Clone, Debug)]
pub struct ClusteringRecord {
    pub step_index: i64,
    pub rows: Vec<RowClusters>,
    /// ResCa: the (smoothed) similarity each row was clustered on.
    pub similarity: Vec<Array2<f32>>,
}

/// The per-run state of a caching method.
pub struct CachingHook {
    method: MethodConfig,
    depth: usize,
    sign: f32,
    schedule: ScheduleState,
    step: Option<StepInfo>,
    previous_index: Option<i64>,
    full: bool,
    /// Taylor caches per block: [attention, mlp].
    caches: Vec<[TaylorFactors; 2]>,
    /// ResCa (paper scaling): the MLP factors of the full steps alone, per block.
    full_step_mlp: Vec<TaylorFactors>,
    /// TETC's smoothed similarity per row.
    similarity: Vec<Option<Array2<f32>>>,
    /// ClusCa's centroids per row (warm start).
    centroids: Vec<Option<Array2<f32>>>,
    clusters: Vec<RowClusters>,
    rngs: Vec<ChaCha8Rng>,
    history: Vec<ClusteringRecord>,
    /// Clusterings to use instead of computing them, by full-step index (exact replay of a
    /// recorded run).
    replay: Vec<ClusteringRecord>,
    /// ClusCa: recorded random choices to use instead of drawing (exact replay).
    clusca_replay: Option<clusca::RecordedChoices>,
    timings: MethodTimings,
    last_full: bool,
}

impl CachingHook {
    /// A fresh hook for `rows` model rows (the guided batch counts both halves).
    pub fn new(method: MethodConfig, config: &DitConfig, rows: usize, orientation: Orientation) -> Result<Self> {
        method.validate(config.tokens())?;
        let schedule = ScheduleState::new(method.schedule());
        let rngs = (0..rows)
            .map(|row| {
                ChaCha8Rng::seed_from_u64(method.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(row as u64))
            })
            .collect();
        Ok(Self {
            depth: config.depth,
            sign: match orientation {
                Orientation::CountingDown => -1.0,
                Orientation::CountingUp => 1.0,
            },
            schedule,
            step: None,
            previous_index: None,
            full: true,
            caches: (0..config.depth).map(|_| Default::default()).collect(),
            full_step_mlp: vec![TaylorFactors::default(); config.depth],
            similarity: vec![None; rows],
            centroids: vec![None; rows],
            clusters: vec![RowClusters::default(); rows],
            rngs,
            history: Vec::new(),
            replay: Vec::new(),
            clusca_replay: None,
            timings: MethodTimings::default(),
            last_full: true,
            method,
        })
    }

    /// The clusterings computed so far, one record per full step.
    pub fn clustering_history(&self) -> &[ClusteringRecord] {
        &self.history
    }

    /// Uses `records` (by full-step index) instead of the computed clusterings: TETC still runs
    /// and is recorded, but the sparse steps follow the replayed clusters and proxies. This
    /// reproduces a recorded run exactly where float rounding decides K-medoids ties (two
    /// tokens of a cluster whose similarity sums differ only by the rounding of `S_ii`).
    pub fn replay_clusterings(&mut self, records: Vec<ClusteringRecord>) {
        self.replay = records;
    }

    /// ClusCa: uses the recorded initial centroid tokens and fresh members instead of drawing
    /// them, so a run of the official code is reproduced to float rounding. Steps and blocks the
    /// record does not cover still draw.
    pub fn replay_clusca_choices(&mut self, choices: clusca::RecordedChoices) {
        self.clusca_replay = Some(choices);
    }

    fn step(&self) -> StepInfo {
        self.step.expect("begin_step precedes every forward")
    }

    /// Whether `branch`'s cache holds ResCa's one-step residuals (paper scaling, MLP branch).
    fn one_step_residuals(&self, branch: Branch) -> bool {
        self.method.kind == MethodKind::ResCa
            && branch == Branch::Mlp
            && self.method.residuals == ResidualScaling::Paper
    }

    fn branch_slot(branch: Branch) -> usize {
        match branch {
            Branch::Attention => 0,
            Branch::Mlp => 1,
        }
    }

    /// Updates `branch`'s cache with this step's output. Every cached derivative is a finite
    /// difference divided by the gap between the last two full steps (TaylorSeer; the released
    /// ResCa code, sparse steps included), except ResCa's MLP cache in paper scaling, which holds
    /// per-step residuals: one-step differences on sparse steps, and on full steps the derivatives
    /// between the last two full (computed) outputs. A full step does not difference against the
    /// simulated output of the step before it: that jump is the correction of the simulation's
    /// error, and extrapolating it over the next sparse steps feeds the error back (measured on
    /// the embedded model: the MLP outputs then grow by ~35 per sparse step).
    fn update_cache(&mut self, block: usize, branch: Branch, output: ArrayView3<f32>) {
        let order = self.method.cached_order(branch);
        let slot = Self::branch_slot(branch);
        let full_gap = self.schedule.full_step_gap().unwrap_or(0) as f32;
        if !self.one_step_residuals(branch) {
            self.caches[block][slot].update(output, full_gap, order);
        } else if self.full {
            self.full_step_mlp[block].update(output, full_gap, order);
            // Into the sparse steps' buffers: no allocation (and no page faults) per full step.
            self.caches[block][slot].clone_from(&self.full_step_mlp[block]);
        } else {
            let step_gap = self.previous_index.map_or(0, |p| self.step().index - p) as f32;
            self.caches[block][slot].update(output, step_gap, order);
        }
    }

    fn predict(&self, block: usize, branch: Branch) -> Array3<f32> {
        let distance = (self.step().index - self.schedule.last_full().expect("a full step came first")) as f32;
        self.caches[block][Self::branch_slot(branch)].predict(distance)
    }

    /// ClusCa's sparse MLP: one random member per cluster computed, propagated into the order-0
    /// cache, then the Taylor prediction with the updated order-0 term.
    fn clusca_mlp(&mut self, input: &BranchInput<'_>) -> Array3<f32> {
        let k = self.method.clusters;
        let (index, block) = (self.step().index, input.block);
        let replay = self.clusca_replay.as_ref();
        let picks: Vec<Vec<(usize, usize)>> = self
            .clusters
            .iter()
            .zip(self.rngs.iter_mut())
            .enumerate()
            .map(|(r, (row, rng))| {
                replay
                    .and_then(|choices| choices.fresh_members(index, block, r, &row.labels))
                    .unwrap_or_else(|| clusca::random_members(&row.labels, k, rng))
            })
            .collect();
        let tokens: Vec<Vec<usize>> = picks.iter().map(|p| p.iter().map(|&(_, t)| t).collect()).collect();
        let fresh = input.compute_tokens(&tokens);
        let started = Instant::now();
        let cache0 = &mut self.caches[input.block][1].orders[0];
        for (row, (picks, outputs)) in picks.iter().zip(&fresh).enumerate() {
            let labels = &self.clusters[row].labels;
            clusca::propagate(
                cache0.index_axis_mut(Axis(0), row),
                labels,
                k,
                picks,
                outputs.view(),
                self.method.propagation,
            );
        }
        let out = self.predict(input.block, Branch::Mlp);
        self.timings.simulated_s += started.elapsed().as_secs_f64();
        out
    }

    /// ResCa's sparse MLP: the proxies computed, every other token simulated by PDDS, the cache
    /// updated from the simulated outputs as at a full step.
    fn resca_mlp(&mut self, input: &BranchInput<'_>) -> Array3<f32> {
        let proxies: Vec<Vec<usize>> = self.clusters.iter().map(|row| row.proxies.clone()).collect();
        let fresh = input.compute_tokens(&proxies);
        let started = Instant::now();
        let solver = self.method.solver;
        let cache = &self.caches[input.block][1];
        // Orders the cache does not hold yet read as zeros (allocated only then).
        let zeros = (cache.orders.len() <= solver.order()).then(|| Array3::<f32>::zeros(cache.orders[0].raw_dim()));
        let orders: Vec<&Array3<f32>> = (0..=solver.order())
            .map(|m| {
                cache
                    .orders
                    .get(m)
                    .or(zeros.as_ref())
                    .expect("zeros exist for missing orders")
            })
            .collect();
        // Batch rows are independent: simulate them on all cores, each into its part of `out`.
        let (sign, clusters) = (self.sign, &self.clusters);
        let mut out = Array3::<f32>::zeros(orders[0].raw_dim());
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(fresh.par_iter())
            .enumerate()
            .for_each(|(row, (out_row, fresh_row))| {
                let views: Vec<_> = orders.iter().map(|o| o.index_axis(Axis(0), row)).collect();
                let row_clusters = &clusters[row];
                pdds::simulate_into(
                    out_row,
                    &views,
                    &row_clusters.proxies,
                    &row_clusters.labels,
                    fresh_row.view(),
                    solver,
                    sign,
                );
            });
        self.update_cache(input.block, Branch::Mlp, out.view());
        self.timings.simulated_s += started.elapsed().as_secs_f64();
        out
    }

    /// Clusters every row's final-block tokens (TETC for ResCa, K-means for ClusCa).
    fn cluster(&mut self, x: ArrayView3<f32>) {
        let started = Instant::now();
        let k = self.method.clusters;
        let mut similarities = Vec::new();
        for row in 0..x.dim().0 {
            let tokens = x.index_axis(Axis(0), row);
            self.clusters[row] = match self.method.kind {
                MethodKind::ResCa => {
                    let current = tetc::cosine_similarity_matrix(tokens);
                    let smoothed = match self.method.clustering {
                        ClusteringSource::Trajectory => {
                            tetc::temporal_smoothing(current, self.similarity[row].as_ref(), self.method.alpha)
                        }
                        ClusteringSource::Feature => current,
                    };
                    let clustering = tetc::k_medoids(smoothed.view(), k, self.method.kmedoids_iters);
                    let proxies =
                        tetc::choose_proxies(smoothed.view(), &clustering, self.method.proxy, &mut self.rngs[row]);
                    similarities.push(smoothed.clone());
                    self.similarity[row] = Some(smoothed);
                    RowClusters {
                        labels: clustering.labels,
                        proxies,
                    }
                }
                _ => {
                    let init = match (self.centroids[row].take(), &self.clusca_replay) {
                        (Some(c), _) => c,
                        (None, Some(choices)) => tokens.select(Axis(0), &choices.init_tokens[row]),
                        (None, None) => clusca::random_centroids(tokens, k, &mut self.rngs[row]),
                    };
                    let result = clusca::kmeans_l1(tokens, init);
                    self.centroids[row] = Some(result.centroids);
                    RowClusters {
                        labels: result.labels,
                        proxies: Vec::new(),
                    }
                }
            };
        }
        let index = self.step().index;
        self.history.push(ClusteringRecord {
            step_index: index,
            rows: self.clusters.clone(),
            similarity: similarities,
        });
        if let Some(recorded) = self.replay.iter().find(|r| r.step_index == index) {
            self.clusters = recorded.rows.clone();
        }
        self.timings.clustering_s += started.elapsed().as_secs_f64();
    }
}

impl BranchHook for CachingHook {
    fn branch(&mut self, input: &BranchInput<'_>) -> Array3<f32> {
        if self.full {
            let out = input.compute();
            self.update_cache(input.block, input.branch, out.view());
            return out;
        }
        match (self.method.kind, input.branch) {
            (MethodKind::ClusCa, Branch::Mlp) => self.clusca_mlp(input),
            (MethodKind::ResCa, Branch::Mlp) => self.resca_mlp(input),
            _ => self.predict(input.block, input.branch),
        }
    }

    fn after_block(&mut self, block: usize, x: ArrayView3<f32>) {
        let clusters = matches!(self.method.kind, MethodKind::ClusCa | MethodKind::ResCa);
        if self.full && clusters && block + 1 == self.depth {
            self.cluster(x);
        }
    }
}

impl StepHook for CachingHook {
    fn begin_step(&mut self, step: &StepInfo) -> Result<()> {
        if let Some(current) = self.step {
            self.previous_index = Some(current.index);
        }
        self.step = Some(*step);
        self.full = self.schedule.next(step.position, step.index);
        self.last_full = self.full;
        Ok(())
    }

    fn timings(&self) -> MethodTimings {
        self.timings
    }

    fn last_step_work(&self, config: &DitConfig) -> StepWork {
        self.method.step_work(self.last_full, config)
    }
}

/// Reads recorded clusterings from `file`: `clus.cluster_step` (S), `clus.cluster_indices`
/// (S, rows, N) and `clus.proxy_indices` (S, rows, K), as the reference vectors hold them, checked
/// against the run's rows, tokens and clusters.
pub fn read_clusterings(
    file: &SafetensorsFile,
    rows: usize,
    tokens: usize,
    clusters: usize,
) -> Result<Vec<ClusteringRecord>> {
    let steps = file.read_i64("clus.cluster_step")?;
    let count = steps.len();
    file.check_shape("clus.cluster_indices", &[count, rows, tokens])?;
    file.check_shape("clus.proxy_indices", &[count, rows, clusters])?;
    let labels = file.read_i64("clus.cluster_indices")?;
    let proxies = file.read_i64("clus.proxy_indices")?;
    let path = file.path().display();
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= clusters) {
        return Err(Error::Input(format!(
            "{path}: `clus.cluster_indices` holds cluster {bad}, outside 0..{clusters}"
        )));
    }
    if let Some(bad) = proxies.iter().find(|&&p| p < 0 || p as usize >= tokens) {
        return Err(Error::Input(format!(
            "{path}: `clus.proxy_indices` holds token {bad}, outside 0..{tokens}"
        )));
    }
    let labels: Vec<usize> = labels.iter().map(|&v| v as usize).collect();
    let proxies: Vec<usize> = proxies.iter().map(|&v| v as usize).collect();
    let records: Vec<ClusteringRecord> = steps
        .iter()
        .enumerate()
        .map(|(k, &step_index)| ClusteringRecord {
            step_index,
            rows: (0..rows)
                .map(|row| RowClusters {
                    labels: labels[(k * rows + row) * tokens..][..tokens].to_vec(),
                    proxies: proxies[(k * rows + row) * clusters..][..clusters].to_vec(),
                })
                .collect(),
            similarity: Vec::new(),
        })
        .collect();
    check_recorded_clusters(&records, clusters).map_err(|e| Error::Input(format!("{path}: {e}")))?;
    Ok(records)
}

/// Checks recorded clusterings for what a run relies on: each step index once, every one of
/// the `clusters` clusters of every row non-empty, and each cluster's proxy one of its members.
fn check_recorded_clusters(records: &[ClusteringRecord], clusters: usize) -> std::result::Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for record in records {
        let step = record.step_index;
        if !seen.insert(step) {
            return Err(format!("`clus.cluster_step` holds step {step} twice"));
        }
        for (row, clustering) in record.rows.iter().enumerate() {
            let mut members = vec![0usize; clusters];
            for &label in &clustering.labels {
                members[label] += 1;
            }
            if let Some(empty) = members.iter().position(|&m| m == 0) {
                return Err(format!(
                    "step {step}, row {row}: cluster {empty} has no token in `clus.cluster_indices`"
                ));
            }
            for (cluster, &proxy) in clustering.proxies.iter().enumerate() {
                if clustering.labels[proxy] != cluster {
                    return Err(format!(
                        "step {step}, row {row}: `clus.proxy_indices` names token {proxy} as the proxy of cluster {cluster}, but that token is in cluster {}",
                        clustering.labels[proxy]
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Fails unless every recorded clustering is at one of the run's full steps (`full_steps`, the
/// sampler step indices at which the method clusters): a record at any other step would never
/// be used. `source` names the file in the message.
pub fn check_replay_steps(source: &str, records: &[ClusteringRecord], full_steps: &[i64]) -> Result<()> {
    if let Some(record) = records.iter().find(|r| !full_steps.contains(&r.step_index)) {
        return Err(Error::Input(format!(
            "{source}: the clustering recorded at step {} matches no full step of this run (full steps: {:?}); check --steps, --interval and --first-enhance",
            record.step_index, full_steps
        )));
    }
    Ok(())
}

/// The step hook of `method`: the plain forward for `full`, else a [`CachingHook`].
pub fn build_hook(
    method: &MethodConfig,
    config: &DitConfig,
    rows: usize,
    orientation: Orientation,
) -> Result<Box<dyn StepHook>> {
    match method.kind {
        MethodKind::Full => Ok(Box::new(FullCompute)),
        _ => Ok(Box::new(CachingHook::new(method.clone(), config, rows, orientation)?)),
    }
}
