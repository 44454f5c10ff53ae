//! A minimal driver of the reference's PDDS, as the caching engine (`resca_reference::cache`)
//! runs it for ResCa's MLP cache in the paper's scaling: full steps store every token's true
//! output, each sparse step computes the proxies' true outputs, simulates the driven tokens with
//! `pdds::simulate`, and updates the cache from the result with the one-step gap `sign` (-1 for
//! DDIM's counting-down step index, +1 for flow), exactly as `CachingHook::resca_mlp` does.

#![allow(dead_code)] // each test file uses its own subset

use ndarray::{Array2, Array3, ArrayView2, Axis};
use resca_reference::cache::pdds::{Solver, confidence, simulate};
use resca_reference::cache::taylor::TaylorFactors;

/// One batch row of N tokens (rows) of D components, its clusters, and its MLP cache.
pub struct PddsRun {
    pub solver: Solver,
    pub sign: f32,
    pub proxies: Vec<usize>,
    pub labels: Vec<usize>,
    pub cache: TaylorFactors,
    /// Every output so far (full and sparse steps), oldest first, each (N, D).
    pub outputs: Vec<Array2<f32>>,
}

impl PddsRun {
    /// A run whose first `full_steps.len()` steps are full (`full_steps[j]` = the true outputs
    /// of every token at step j). The cache is updated like the engine's: order capped at the
    /// solver's order, gap `sign` (the first update's gap is unused).
    pub fn new(solver: Solver, sign: f32, proxies: Vec<usize>, labels: Vec<usize>, full_steps: &[Array2<f32>]) -> Self {
        let mut run = Self {
            solver,
            sign,
            proxies,
            labels,
            cache: TaylorFactors::default(),
            outputs: Vec::new(),
        };
        for outputs in full_steps {
            run.record(outputs.clone());
        }
        run
    }

    fn record(&mut self, outputs: Array2<f32>) {
        let gap = if self.outputs.is_empty() { 0.0 } else { self.sign };
        self.cache
            .update(outputs.view().insert_axis(Axis(0)), gap, self.solver.order());
        self.outputs.push(outputs);
    }

    /// The cache's order-`m` values (N, D) (zeros where the cache does not hold order m yet,
    /// as the engine passes them).
    pub fn order(&self, m: usize) -> Array2<f32> {
        match self.cache.orders.get(m) {
            Some(o) => o.index_axis(Axis(0), 0).to_owned(),
            None => Array2::zeros(self.outputs[0].raw_dim()),
        }
    }

    /// The confidences `theta_m` (m = 1..=order) of `token` in its proxy at the coming sparse
    /// step, computed from the cache exactly as `simulate` computes them.
    pub fn thetas(&self, token: usize) -> Vec<f32> {
        let proxy = self.proxies[self.labels[token]];
        (1..=self.solver.order())
            .map(|m| {
                let c = self.order(m);
                confidence(c.row(token), c.row(proxy))
            })
            .collect()
    }

    /// One sparse step: `fresh` (K, D) are the proxies' true outputs at this step. Returns the
    /// step's outputs (N, D), which also go into the cache.
    pub fn sparse_step(&mut self, fresh: ArrayView2<f32>) -> Array2<f32> {
        let orders: Vec<Array2<f32>> = (0..=self.solver.order()).map(|m| self.order(m)).collect();
        let views: Vec<ArrayView2<f32>> = orders.iter().map(|o| o.view()).collect();
        let out = simulate(&views, &self.proxies, &self.labels, fresh, self.solver, self.sign);
        self.record(out.clone());
        out
    }

    /// Component `i` of `token`'s outputs over the whole run, oldest first.
    pub fn history(&self, token: usize, i: usize) -> Vec<f64> {
        self.outputs.iter().map(|o| f64::from(o[[token, i]])).collect()
    }

    /// The (1, N, D) cache of order 0, for TaylorSeer comparisons.
    pub fn cache_orders(&self) -> &[Array3<f32>] {
        &self.cache.orders
    }
}

/// Every solver the engine offers: IE, IT of orders 1..=4, IB.
pub const SOLVERS: [Solver; 6] = [
    Solver::ImplicitEuler,
    Solver::ImplicitTaylor(1),
    Solver::ImplicitTaylor(2),
    Solver::ImplicitTaylor(3),
    Solver::ImplicitTaylor(4),
    Solver::Bdf2,
];
