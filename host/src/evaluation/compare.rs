//! `resca compare`: every caching method at matched FLOPs ratios (as the paper's Table 1 groups
//! them) on the same samples: FLOPs, wall time, error against full compute (final-sample RMSE and
//! PSNR, per-step deviation) and sample quality (the classifier's accuracy and a Frechet distance
//! in its feature space, against the real test digits).

use anyhow::Result;
use ndarray::{Array4, Axis};
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::{MethodConfig, MethodKind};
use resca_reference::ddim::DdimSchedule;
use resca_reference::{Dit, Sampler};
use serde::Serialize;

use super::classifier::{Classifier, feature_statistics};
use super::metrics::{accuracy, frechet_distance, psnr, rmse};
use crate::job::{SampleJob, SampleResult, final_samples};
use crate::pipeline::launch::Precision;
use crate::run::{Backend, run_method};

/// One entry of the comparison: a caching method, or plain DDIM with fewer steps.
#[derive(Clone, Debug)]
pub struct Contender {
    pub group: &'static str,
    pub method: MethodConfig,
    /// Sampling steps (fewer than the reference run for the reduced-step baselines).
    pub steps: usize,
}

/// The paper's comparison at two FLOPs ratios (about 2.5x and about 4x) for `steps`-step DDIM:
/// reduced-step DDIM, FORA, TaylorSeer, ClusCa and ResCa-IE/IT/IB.
pub fn contenders(steps: usize) -> Vec<Contender> {
    let method = |kind, interval, order| MethodConfig::new(kind, interval, order);
    let resca = |solver, interval| MethodConfig {
        solver,
        ..MethodConfig::new(MethodKind::ResCa, interval, 1)
    };
    let reduced = |divisor: usize| (steps / divisor).max(2);
    vec![
        Contender {
            group: "1x",
            method: MethodConfig::full(),
            steps,
        },
        Contender {
            group: "~2.5x",
            method: MethodConfig::full(),
            steps: ((steps * 2) / 5).max(2),
        },
        Contender {
            group: "~2.5x",
            method: method(MethodKind::TaylorSeer, 3, 1),
            steps,
        },
        Contender {
            group: "~2.5x",
            method: resca(Solver::ImplicitEuler, 3),
            steps,
        },
        Contender {
            group: "~4x",
            method: MethodConfig::full(),
            steps: reduced(4),
        },
        Contender {
            group: "~4x",
            method: method(MethodKind::Fora, 5, 0),
            steps,
        },
        Contender {
            group: "~4x",
            method: method(MethodKind::TaylorSeer, 5, 1),
            steps,
        },
        Contender {
            group: "~4x",
            method: method(MethodKind::TaylorSeer, 5, 2),
            steps,
        },
        Contender {
            group: "~4x",
            method: method(MethodKind::ClusCa, 5, 1),
            steps,
        },
        Contender {
            group: "~4x",
            method: resca(Solver::ImplicitEuler, 5),
            steps,
        },
        Contender {
            group: "~4x",
            method: resca(Solver::ImplicitTaylor(2), 5),
            steps,
        },
        Contender {
            group: "~4x",
            method: resca(Solver::Bdf2, 5),
            steps,
        },
    ]
}

/// The measured row of one contender.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub group: String,
    pub method: String,
    pub steps: usize,
    pub tflops: f64,
    pub flops_speedup: f64,
    pub wall_s: f64,
    pub wall_speedup: f64,
    /// Final samples against full compute (images in [-1, 1]).
    pub rmse: f64,
    pub psnr_db: f64,
    /// Mean and max over steps of the RMSE of the state against full compute's state at the same
    /// step (`None` for reduced-step runs, whose steps are other times).
    pub mean_step_rmse: Option<f64>,
    pub max_step_rmse: Option<f64>,
    /// Per-step RMSE curve.
    pub step_rmse: Vec<f64>,
    /// The classifier's accuracy on the samples (share labelled with their class).
    pub accuracy: Option<f64>,
    /// Frechet distance of the classifier features to the real test digits.
    pub frechet: Option<f64>,
}

/// Everything `resca compare` produced.
pub struct Comparison {
    pub rows: Vec<Row>,
    pub results: Vec<SampleResult>,
    pub real_data_frechet_note: String,
}

/// Runs every contender on `noise` (B, C, H, W) with `labels` (B) on `backend` in `precision`
/// and measures it.
/// `classifier` (when the model is the embedded MNIST one) adds accuracy and the Frechet distance.
pub fn compare(
    model: &Dit,
    (backend, precision): (Backend, Precision),
    (noise, labels): (Array4<f32>, Vec<usize>),
    cfg_scale: f32,
    steps: usize,
    classifier: Option<&Classifier>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Comparison> {
    let mut rows: Vec<Row> = Vec::new();
    let mut results: Vec<SampleResult> = Vec::new();
    for contender in contenders(steps) {
        let name = match (contender.method.kind, contender.steps == steps) {
            (MethodKind::Full, false) => format!("ddim-{}", contender.steps),
            _ => contender.method.name(),
        };
        let job = SampleJob {
            noise: noise.clone(),
            labels: labels.clone(),
            cfg_scale,
            sampler: Sampler::Ddim(DdimSchedule::new(contender.steps)?),
            sampler_name: "ddim".to_string(),
        };
        let result = run_method(
            model,
            &job,
            &contender.method,
            backend,
            precision,
            None,
            &mut |done, total| progress(&name, done, total),
        )?;
        let reference = results.first().unwrap_or(&result);
        let (ours, full) = (final_samples(&result), final_samples(reference));
        let step_rmse: Vec<f64> = if contender.steps == steps {
            result
                .x
                .outer_iter()
                .zip(reference.x.outer_iter())
                .map(|(a, b)| rmse(a, b))
                .collect()
        } else {
            Vec::new()
        };
        let quality = classifier.map(|c| measure(c, &ours, &labels)).transpose()?;
        let full_stats = &reference.stats;
        rows.push(Row {
            group: contender.group.to_string(),
            method: name,
            steps: contender.steps,
            tflops: result.stats.tflops,
            flops_speedup: full_stats.tflops / result.stats.tflops,
            wall_s: result.stats.wall_s,
            wall_speedup: full_stats.wall_s / result.stats.wall_s,
            rmse: rmse(ours.view(), full.view()),
            psnr_db: psnr(ours.view(), full.view(), 2.0),
            mean_step_rmse: (!step_rmse.is_empty()).then(|| step_rmse.iter().sum::<f64>() / step_rmse.len() as f64),
            max_step_rmse: step_rmse.iter().copied().reduce(f64::max),
            step_rmse,
            accuracy: quality.map(|q| q.0),
            frechet: quality.map(|q| q.1),
        });
        results.push(result);
    }
    let note = format!(
        "{} samples per method; accuracy and Frechet distance from the embedded digit classifier (features against the real test digits)",
        noise.dim().0
    );
    Ok(Comparison {
        rows,
        results,
        real_data_frechet_note: note,
    })
}

/// (accuracy, Frechet distance to the real test digits) of samples `images`.
fn measure(classifier: &Classifier, images: &Array4<f32>, labels: &[usize]) -> Result<(f64, f64)> {
    let output = classifier.forward(images.view())?;
    let predicted = Classifier::predict(&output);
    let (mean, covariance) = feature_statistics(&output.features);
    let frechet = frechet_distance(
        mean.view(),
        covariance.view(),
        classifier.real_mean.view(),
        classifier.real_covariance.view(),
    )?;
    Ok((accuracy(&predicted, labels), frechet))
}

/// The comparison as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| group | method | steps | TFLOPs | FLOPs speedup | wall (s) | wall speedup | RMSE vs full | PSNR (dB) | mean step RMSE | accuracy | Frechet |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let opt = |v: Option<f64>, digits: usize| v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"));
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {:.4} | {:.2}x | {:.2} | {:.2}x | {:.4} | {} | {} | {} | {} |\n",
            r.group,
            r.method,
            r.steps,
            r.tflops,
            r.flops_speedup,
            r.wall_s,
            r.wall_speedup,
            r.rmse,
            if r.psnr_db.is_finite() {
                format!("{:.1}", r.psnr_db)
            } else {
                "inf".to_string()
            },
            opt(r.mean_step_rmse, 4),
            r.accuracy.map_or("n/a".to_string(), |a| format!("{:.1}%", 100.0 * a)),
            opt(r.frechet, 2),
        );
    }
    out
}

/// The samples of every run, for the side-by-side figure.
pub fn samples(comparison: &Comparison) -> Vec<(String, Array4<f32>)> {
    comparison
        .rows
        .iter()
        .zip(&comparison.results)
        .map(|(row, result)| (row.method.clone(), final_samples(result)))
        .collect()
}

/// The first `count` samples (B, C, H, W) of a batch.
pub fn first(images: &Array4<f32>, count: usize) -> Array4<f32> {
    images
        .slice_axis(Axis(0), ndarray::Slice::from(0..count.min(images.dim().0)))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::contenders;

    /// Every run of a comparison has at least one step and no more than the reference run's:
    /// a short `--steps` must not turn a reduced-step baseline into a refused `--steps 0`.
    #[test]
    fn every_contender_runs_between_one_step_and_the_reference_steps() {
        for steps in 2..=60 {
            for contender in contenders(steps) {
                assert!(
                    (1..=steps).contains(&contender.steps),
                    "--steps {steps}: a contender of {} steps",
                    contender.steps
                );
            }
        }
        assert_eq!(contenders(50)[1].steps, 20, "the ~2.5x reduced-step run of DDIM-50");
    }
}
