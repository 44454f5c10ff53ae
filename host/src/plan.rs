//! `resca plan`: a method's step schedule and FLOPs for a model, without running it.

use resca_reference::DitConfig;
use resca_reference::cache::MethodConfig;
use resca_reference::flops::{StepWork, run_flops};
use serde::Serialize;

/// The schedule and cost of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub method: String,
    pub model: DitConfig,
    pub steps: usize,
    pub guided: bool,
    /// Per sampling position: "full" or "sparse".
    pub schedule: Vec<&'static str>,
    pub full_steps: usize,
    pub sparse_steps: usize,
    /// TFLOPs per sample (the guidance pair counted as two images).
    pub total_tflops: f64,
    pub full_tflops: f64,
    /// `full_tflops / total_tflops`.
    pub speedup: f64,
}

impl Plan {
    pub fn new(config: &DitConfig, method: &MethodConfig, steps: usize, guided: bool) -> Self {
        let schedule = method.schedule().plan(steps);
        let images = if guided { 2 } else { 1 };
        let work: Vec<StepWork> = schedule.iter().map(|&full| method.step_work(full, config)).collect();
        let total = run_flops(config, work, images) / 1e12;
        let full = run_flops(config, vec![StepWork::full(config); steps], images) / 1e12;
        let full_steps = schedule.iter().filter(|&&f| f).count();
        Self {
            method: method.name(),
            model: config.clone(),
            steps,
            guided,
            schedule: schedule.iter().map(|&f| if f { "full" } else { "sparse" }).collect(),
            full_steps,
            sparse_steps: steps - full_steps,
            total_tflops: total,
            full_tflops: full,
            speedup: full / total,
        }
    }

    /// Human-readable summary: the schedule as a strip (F full, . sparse) and the FLOPs.
    pub fn table(&self) -> String {
        let strip: String = self
            .schedule
            .iter()
            .map(|s| if *s == "full" { 'F' } else { '.' })
            .collect();
        format!(
            "{} on a {}-token DiT (D={}, depth {}), {} steps{}\nschedule: {strip}\n\
             {} full + {} sparse steps; {:.3} TFLOPs per sample vs {:.3} full compute: {:.2}x",
            self.method,
            self.model.tokens(),
            self.model.hidden_size,
            self.model.depth,
            self.steps,
            if self.guided { " with guidance" } else { "" },
            self.full_steps,
            self.sparse_steps,
            self.total_tflops,
            self.full_tflops,
            self.speedup
        )
    }
}
