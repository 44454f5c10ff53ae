//! The statistics every run prints: steps, FLOPs and the wall-time split of the supplement's
//! Fig. S2 (true denoising, clustering, simulated denoising).

use serde::Serialize;

/// What a sampling run did and how long it took.
#[derive(Clone, Debug, Serialize)]
pub struct RunStats {
    pub backend: String,
    /// The arithmetic of the big GEMMs and the attention (`exact`, or a tensor-core mode on a device backend).
    pub precision: String,
    pub method: String,
    pub sampler: String,
    /// Classifier-free guidance scale (guided when above 1).
    pub cfg_scale: f32,
    pub steps: usize,
    pub full_steps: usize,
    pub sparse_steps: usize,
    /// Samples produced (the guided batch evaluates twice as many model rows).
    pub samples: usize,
    pub model_rows: usize,
    /// FLOPs per sample (its guidance pair included), as the papers count them.
    pub tflops: f64,
    pub full_tflops: f64,
    /// Full-compute FLOPs over this run's FLOPs.
    pub flops_speedup: f64,
    pub wall_s: f64,
    /// Wall time in the network proper (everything but clustering and simulated denoising).
    pub true_denoising_s: f64,
    pub clustering_s: f64,
    pub simulated_denoising_s: f64,
    /// Wall time of the full (dense) steps and of the cached (sparse) steps.
    pub dense_steps_s: f64,
    pub sparse_steps_s: f64,
    /// Clustering as a share of dense-step time (the supplement: ~4.9%).
    pub clustering_pct_of_dense: f64,
    /// Simulated denoising as a share of sparse-step time (the supplement: ~27.5%).
    pub simulated_pct_of_sparse: f64,
}

impl RunStats {
    /// A short human-readable table.
    pub fn table(&self) -> String {
        let pct = |part: f64| {
            if self.wall_s > 0.0 {
                100.0 * part / self.wall_s
            } else {
                0.0
            }
        };
        format!(
            "method {} ({} backend{}, {} sampler, guidance {}), {} samples ({} model rows)\n\
             steps: {} ({} full, {} sparse)\n\
             FLOPs per sample: {:.4} T of {:.4} T full compute -> {:.2}x fewer\n\
             wall: {:.3} s = true denoising {:.3} s ({:.1}%) + clustering {:.3} s ({:.1}%) + simulated denoising {:.3} s ({:.1}%)\n\
             dense steps {:.3} s (clustering {:.1}% of it), sparse steps {:.3} s (simulated denoising {:.1}% of it)",
            self.method,
            self.backend,
            match self.precision.as_str() {
                "exact" => String::new(),
                fast => format!(" in {fast}"),
            },
            self.sampler,
            self.cfg_scale,
            self.samples,
            self.model_rows,
            self.steps,
            self.full_steps,
            self.sparse_steps,
            self.tflops,
            self.full_tflops,
            self.flops_speedup,
            self.wall_s,
            self.true_denoising_s,
            pct(self.true_denoising_s),
            self.clustering_s,
            pct(self.clustering_s),
            self.simulated_denoising_s,
            pct(self.simulated_denoising_s),
            self.dense_steps_s,
            self.clustering_pct_of_dense,
            self.sparse_steps_s,
            self.simulated_pct_of_sparse,
        )
    }
}
