//! `resca stability`: the stability analysis of the Taylor and BDF2 updates (`resca-proofs`),
//! as text or JSON, with an optional plot of the stability region.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Stability of the explicit/implicit Taylor and BDF2 updates on y' = lambda y.
#[derive(clap::Args)]
pub struct Args {
    /// explicit-taylor, implicit-taylor or bdf2.
    #[arg(long)]
    scheme: resca_proofs::Scheme,
    /// Order M (1-4 for the Taylor schemes, 2 for BDF2).
    #[arg(long, default_value_t = 1)]
    order: u32,
    /// Draw the stability region (|G| <= 1) into this PNG.
    #[arg(long, value_name = "FILE.png")]
    png: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let report = resca_proofs::analyse(args.scheme, args.order)?;
    if let Some(path) = &args.png {
        resca_proofs::render_stability_png(args.scheme, args.order, path, 500, 400)
            .with_context(|| format!("writing --png {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} order {}: A-stable: {}; max |G| on the imaginary axis: {}",
            args.scheme,
            args.order,
            report.a_stable,
            if report.max_gain_on_imaginary_axis.is_finite() {
                format!("{:.6}", report.max_gain_on_imaginary_axis)
            } else {
                "unbounded".to_string()
            }
        );
        if let Some(c) = report.counterexample {
            println!("counterexample: z = {:.6} {:+.6}i, |G| = {:.6}", c.re, c.im, c.gain);
        }
    }
    Ok(())
}
