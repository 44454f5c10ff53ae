//! The caching-method flags of `resca sample` and `resca plan`, checked against the method they
//! are given with: a flag that does not apply is an error, not silently ignored.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::ValueEnum;
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::tetc::ProxyChoice;
use resca_reference::cache::{ClusteringSource, MethodConfig, MethodKind, ResidualScaling};

use super::value_parsers::{non_negative, positive};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Every step computes every block for every token.
    Full,
    /// Reuse the last full step's branch outputs.
    Fora,
    /// Taylor prediction of every branch (orders 0-4).
    Taylorseer,
    /// K-means clusters, one random member per cluster recomputed and propagated.
    Clusca,
    /// Residual caching: TETC clusters, K proxies recomputed, PDDS for the other tokens.
    Resca,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SolverArg {
    /// Implicit Euler (ResCa-IE).
    Ie,
    /// Implicit Taylor of order --order (ResCa-IT).
    It,
    /// BDF2 (ResCa-IB).
    Bdf2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyArg {
    /// The cluster's medoid.
    Medoid,
    /// A member drawn around the medoid, weighted by similarity.
    CenterRandom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ResidualsArg {
    /// One-step residuals, as the paper's equations.
    Paper,
    /// The released code's scaling by the full-step gap.
    Official,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusteringArg {
    /// TETC: EMA of the similarity over full steps.
    Trajectory,
    /// The current similarity only (ablation).
    Feature,
}

/// Defaults when a flag is not given.
pub const DEFAULT_INTERVAL: usize = 5;
pub const DEFAULT_CLUSTERS: usize = 16;
pub const DEFAULT_ALPHA: f32 = 0.5;
pub const DEFAULT_GAMMA: f32 = 0.005;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct MethodArgs {
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Full step every N steps after the first ones (default 5).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = positive)]
    pub interval: Option<usize>,
    /// Full steps at the start (default 2 for DDIM, 3 for flow).
    #[arg(long, allow_negative_numbers = true, value_parser = non_negative)]
    pub first_enhance: Option<usize>,
    /// Taylor order: taylorseer/clusca 0-4 (default 1); resca with --solver it 1-4 (default 2).
    #[arg(long, value_name = "O", allow_negative_numbers = true, value_parser = non_negative)]
    pub order: Option<usize>,
    /// K clusters for clusca and resca (default 16).
    #[arg(long, value_name = "K", allow_negative_numbers = true, value_parser = positive)]
    pub clusters: Option<usize>,
    /// TETC's EMA weight of the current similarity, in [0, 1] (default 0.5; the released code 0.6).
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f32>,
    /// ResCa's implicit solver (default ie).
    #[arg(long, value_enum)]
    pub solver: Option<SolverArg>,
    /// ResCa's proxy per cluster (default medoid).
    #[arg(long, value_enum)]
    pub proxy: Option<ProxyArg>,
    /// ResCa's residual scaling (default paper).
    #[arg(long, value_enum)]
    pub residuals: Option<ResidualsArg>,
    /// What ResCa clusters on (default trajectory).
    #[arg(long, value_enum)]
    pub clustering: Option<ClusteringArg>,
    /// ClusCa's propagation ratio in [0, 1] (default 0.005).
    #[arg(long, allow_negative_numbers = true)]
    pub gamma: Option<f32>,
    /// K-medoids iterations at most (default 8).
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    pub kmedoids_iters: Option<usize>,
    /// Seed of the method's random choices (center-random proxies, ClusCa members).
    #[arg(long)]
    pub method_seed: Option<u64>,
    /// Replay the clusterings recorded in this file (`clus.cluster_step`, `clus.cluster_indices`,
    /// `clus.proxy_indices`), as the reference vectors hold them.
    #[arg(long, value_name = "FILE.safetensors")]
    pub replay_clusters: Option<PathBuf>,
}

impl MethodArgs {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Full)
    }

    /// The method's settings, after checking that every given flag applies to it.
    pub fn to_config(&self, default_first_enhance: usize) -> Result<MethodConfig> {
        let method = self.method();
        let name = format!("{method:?}").to_lowercase();
        let given = |flag: &str, present: bool| present.then(|| flag.to_string());
        let all = [
            given("--interval", self.interval.is_some()),
            given("--first-enhance", self.first_enhance.is_some()),
            given("--order", self.order.is_some()),
            given("--clusters", self.clusters.is_some()),
            given("--alpha", self.alpha.is_some()),
            given("--solver", self.solver.is_some()),
            given("--proxy", self.proxy.is_some()),
            given("--residuals", self.residuals.is_some()),
            given("--clustering", self.clustering.is_some()),
            given("--gamma", self.gamma.is_some()),
            given("--kmedoids-iters", self.kmedoids_iters.is_some()),
            given("--method-seed", self.method_seed.is_some()),
            given("--replay-clusters", self.replay_clusters.is_some()),
        ];
        let applies: &[&str] = match method {
            Method::Full => &[],
            Method::Fora => &["--interval", "--first-enhance"],
            Method::Taylorseer => &["--interval", "--first-enhance", "--order"],
            Method::Clusca => &[
                "--interval",
                "--first-enhance",
                "--order",
                "--clusters",
                "--gamma",
                "--method-seed",
            ],
            Method::Resca => &[
                "--interval",
                "--first-enhance",
                "--order",
                "--clusters",
                "--alpha",
                "--solver",
                "--proxy",
                "--residuals",
                "--clustering",
                "--kmedoids-iters",
                "--method-seed",
                "--replay-clusters",
            ],
        };
        if let Some(flag) = all.iter().flatten().find(|f| !applies.contains(&f.as_str())) {
            let what = match flag.as_str() {
                "--solver" => format!("--method {name} has no solver (only resca does)"),
                _ => format!("{flag} does not apply to --method {name}"),
            };
            bail!(what);
        }
        let solver = match (self.solver.unwrap_or(SolverArg::Ie), self.order) {
            (SolverArg::It, order) => Solver::ImplicitTaylor(order.unwrap_or(2)),
            (other, Some(order)) if method == Method::Resca && order != 1 => {
                bail!(
                    "--order {order} needs --solver it: --solver {other:?} is first order",
                    other = other
                )
            }
            (SolverArg::Ie, _) => Solver::ImplicitEuler,
            (SolverArg::Bdf2, _) => Solver::Bdf2,
        };
        let kind = match method {
            Method::Full => MethodKind::Full,
            Method::Fora => MethodKind::Fora,
            Method::Taylorseer => MethodKind::TaylorSeer,
            Method::Clusca => MethodKind::ClusCa,
            Method::Resca => MethodKind::ResCa,
        };
        let defaults = MethodConfig::full();
        Ok(MethodConfig {
            kind,
            interval: self
                .interval
                .unwrap_or(if kind == MethodKind::Full { 1 } else { DEFAULT_INTERVAL }),
            first_enhance: self.first_enhance.unwrap_or(default_first_enhance),
            order: match kind {
                MethodKind::Fora | MethodKind::Full => 0,
                _ => self.order.unwrap_or(1),
            },
            clusters: self.clusters.unwrap_or(DEFAULT_CLUSTERS),
            alpha: self.alpha.unwrap_or(DEFAULT_ALPHA),
            solver,
            proxy: match self.proxy.unwrap_or(ProxyArg::Medoid) {
                ProxyArg::Medoid => ProxyChoice::Medoid,
                ProxyArg::CenterRandom => ProxyChoice::CenterRandom,
            },
            residuals: match self.residuals.unwrap_or(ResidualsArg::Paper) {
                ResidualsArg::Paper => ResidualScaling::Paper,
                ResidualsArg::Official => ResidualScaling::Official,
            },
            clustering: match self.clustering.unwrap_or(ClusteringArg::Trajectory) {
                ClusteringArg::Trajectory => ClusteringSource::Trajectory,
                ClusteringArg::Feature => ClusteringSource::Feature,
            },
            propagation: self.gamma.unwrap_or(DEFAULT_GAMMA),
            kmedoids_iters: self.kmedoids_iters.unwrap_or(defaults.kmedoids_iters),
            seed: self.method_seed.unwrap_or(defaults.seed),
        })
    }
}
