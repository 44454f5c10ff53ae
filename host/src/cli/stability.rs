//! `resca stability`: the stability analysis of the Taylor and BDF2 updates (`resca-proofs`),
//! as text or JSON, with an optional plot of the stability region.

use std::path::PathBuf;

use anyhow::Result;
use resca_host::figures::canvas::Canvas;

use super::output::{check_outputs, print_line};
use super::value_parsers::non_negative;

/// Stability of the explicit/implicit Taylor and BDF2 updates on y' = lambda y.
#[derive(clap::Args)]
pub struct Args {
    /// explicit-taylor, implicit-taylor or bdf2.
    #[arg(long)]
    scheme: resca_proofs::Scheme,
    /// Order M (1-4 for the Taylor schemes, 2 for BDF2).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = order)]
    order: u32,
    /// Draw the stability region (|G| <= 1) into this PNG.
    #[arg(long, value_name = "FILE.png")]
    png: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// An order: a non-negative integer that fits 32 bits (the analysis checks its range).
fn order(text: &str) -> Result<u32, String> {
    let value = non_negative(text)?;
    u32::try_from(value).map_err(|_| format!("{value} is too large for an order"))
}

pub fn run(args: Args) -> Result<()> {
    let png = check_outputs(&[("--png", args.png.as_deref())], &[])?.into_iter().next();
    let report = resca_proofs::analyse(args.scheme, args.order)?;
    if let Some(png) = &png {
        let image = resca_proofs::render_stability_image(args.scheme, args.order, 500, 400)?;
        let canvas = Canvas {
            width: image.width as usize,
            height: image.height as usize,
            rgb: image.pixels.concat(),
        };
        png.write(|w| canvas.encode_png(w))?;
    }
    if args.json {
        print_line(&serde_json::to_string_pretty(&report)?)?;
    } else {
        print_line(&format!(
            "{} order {}: A-stable: {}; max |G| on the imaginary axis: {}",
            args.scheme,
            args.order,
            report.a_stable,
            if report.max_gain_on_imaginary_axis.is_finite() {
                format!("{:.6}", report.max_gain_on_imaginary_axis)
            } else {
                "unbounded".to_string()
            }
        ))?;
        if let Some(c) = report.counterexample {
            print_line(&format!(
                "counterexample: z = {:.6} {:+.6}i, |G| = {:.6}",
                c.re, c.im, c.gain
            ))?;
        }
    }
    Ok(())
}
