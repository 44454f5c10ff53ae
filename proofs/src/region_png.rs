//! Pictures of stability regions: a raster of [`PlotWindow::DEFAULT`] of the complex `z` plane
//! with every pixel where `gain <= 1` shaded.
//!
//! Layers, bottom to top:
//! 1. fill: [`STABLE`] where `gain(z) <= 1 + GAIN_TOLERANCE` at the pixel centre, else
//!    [`UNSTABLE_LEFT`] when `Re z <= 0` (where A-stability is violated) or [`UNSTABLE`];
//! 2. [`BOUNDARY`]: stable pixels next to an unstable one (4-neighbourhood);
//! 3. the real axis and the imaginary axis in [`AXIS`], with tick marks at the integers; the
//!    imaginary axis is drawn 3 pixels wide in [`AXIS_UNSTABLE`] where the gain on it exceeds 1;
//! 4. the counterexample of [`analyse`], if any, as a [`MARKER`] ring with a cross through it.
//!
//! There is no text (no fonts on the build machines); the colours are public constants.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::a_stability::GAIN_TOLERANCE;
use crate::{Complex, Scheme, StabilityError, analyse, gain};

pub type Rgb = [u8; 3];
/// Stable pixels (`gain <= 1`): light blue.
pub const STABLE: Rgb = [170, 200, 240];
/// Unstable pixels with `Re z > 0`: white.
pub const UNSTABLE: Rgb = [255, 255, 255];
/// Unstable pixels with `Re z <= 0`, where A-stability fails: light red.
pub const UNSTABLE_LEFT: Rgb = [250, 195, 195];
/// Edge of the stable region: dark blue.
pub const BOUNDARY: Rgb = [25, 55, 140];
/// Axes and ticks: dark grey.
pub const AXIS: Rgb = [60, 60, 60];
/// Imaginary-axis points with gain > 1: orange.
pub const AXIS_UNSTABLE: Rgb = [255, 140, 0];
/// The counterexample's ring and cross: red.
pub const MARKER: Rgb = [200, 0, 0];

/// Largest accepted width or height.
pub const MAX_SIDE: u32 = 8192;

/// A rectangle of the complex plane mapped onto the image: `re_min` at the left edge, `im_max`
/// at the top edge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotWindow {
    pub re_min: f64,
    pub re_max: f64,
    pub im_min: f64,
    pub im_max: f64,
}

impl PlotWindow {
    /// `Re z in [-5, 5]`, `Im z in [-4, 4]`: holds all regions drawn here, i.e. explicit Taylor
    /// `M <= 4` (reaching `Re z = -2.79`, `|Im z| = 2.83`), the unstable sets of implicit Taylor
    /// (the mirror images, reaching `Re z = 2.79`), BDF2's unstable set (reaching `Re z = 4`,
    /// `|Im z| = 2.6`), and every counterexample (`z = -3`, `i sqrt 2`, `i sqrt 6`). A 5:4 image
    /// (e.g. 500 x 400) has square pixels.
    pub const DEFAULT: PlotWindow = PlotWindow {
        re_min: -5.0,
        re_max: 5.0,
        im_min: -4.0,
        im_max: 4.0,
    };

    /// The point at the centre of pixel `(x, y)` (`x` to the right, `y` down).
    pub fn point_at(&self, width: u32, height: u32, x: u32, y: u32) -> Complex {
        let re =
            self.re_min + (f64::from(x) + 0.5) / f64::from(width) * (self.re_max - self.re_min);
        let im =
            self.im_max - (f64::from(y) + 0.5) / f64::from(height) * (self.im_max - self.im_min);
        Complex::new(re, im)
    }

    /// The pixel containing `z`, or `None` outside the window.
    pub fn pixel_of(&self, width: u32, height: u32, z: Complex) -> Option<(u32, u32)> {
        let fx = (z.re - self.re_min) / (self.re_max - self.re_min) * f64::from(width);
        let fy = (self.im_max - z.im) / (self.im_max - self.im_min) * f64::from(height);
        let inside = |f: f64, n: u32| (0.0..f64::from(n)).contains(&f);
        (inside(fx, width) && inside(fy, height)).then_some((fx as u32, fy as u32))
    }
}

/// An 8-bit RGB raster, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<Rgb>,
}

impl RgbImage {
    fn index(&self, x: u32, y: u32) -> usize {
        y as usize * self.width as usize + x as usize
    }

    /// The colour of pixel `(x, y)`. Panics outside the image.
    pub fn get(&self, x: u32, y: u32) -> Rgb {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside the image"
        );
        self.pixels[self.index(x, y)]
    }

    /// Sets pixel `(x, y)`; silently clips points outside the image.
    fn set(&mut self, x: i64, y: i64, colour: Rgb) {
        if (0..i64::from(self.width)).contains(&x) && (0..i64::from(self.height)).contains(&y) {
            let i = self.index(x as u32, y as u32);
            self.pixels[i] = colour;
        }
    }
}

/// Why a picture could not be drawn or written.
#[derive(Debug, Error)]
pub enum RenderError {
    #[error(transparent)]
    Stability(#[from] StabilityError),
    #[error("image size {width}x{height} is not supported: each side must be 1..={MAX_SIDE}")]
    BadSize { width: u32, height: u32 },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the PNG: {0}")]
    Png(#[from] png::EncodingError),
}

/// Draws the stability region of `scheme` of `order` over [`PlotWindow::DEFAULT`] (layers in
/// the module docs).
pub fn render_stability_image(
    scheme: Scheme,
    order: u32,
    width: u32,
    height: u32,
) -> Result<RgbImage, RenderError> {
    let report = analyse(scheme, order)?;
    if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
        return Err(RenderError::BadSize { width, height });
    }
    let window = PlotWindow::DEFAULT;
    let is_stable = |z: Complex| gain(scheme, order, z) <= 1.0 + GAIN_TOLERANCE;

    let count = width as usize * height as usize;
    let point = |i: usize| {
        let (x, y) = (i % width as usize, i / width as usize);
        window.point_at(width, height, x as u32, y as u32)
    };
    let stable: Vec<bool> = (0..count).map(|i| is_stable(point(i))).collect();
    let pixels = (0..count)
        .map(|i| match (stable[i], point(i).re <= 0.0) {
            (true, _) => STABLE,
            (false, true) => UNSTABLE_LEFT,
            (false, false) => UNSTABLE,
        })
        .collect();
    let mut image = RgbImage {
        width,
        height,
        pixels,
    };

    let stable_at = |x: i64, y: i64| {
        let inside = (0..i64::from(width)).contains(&x) && (0..i64::from(height)).contains(&y);
        // Outside the image counts as stable, so the image's frame is never drawn as a boundary.
        !inside || stable[y as usize * width as usize + x as usize]
    };
    for y in 0..i64::from(height) {
        for x in 0..i64::from(width) {
            let neighbours = [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)];
            if stable_at(x, y) && neighbours.iter().any(|&(nx, ny)| !stable_at(nx, ny)) {
                image.set(x, y, BOUNDARY);
            }
        }
    }

    draw_axes(&mut image, &window, |im| !is_stable(Complex::new(0.0, im)));

    if let Some(c) = report.counterexample
        && let Some((x, y)) = window.pixel_of(width, height, Complex::new(c.re, c.im))
    {
        draw_marker(&mut image, x.into(), y.into());
    }
    Ok(image)
}

/// Real and imaginary axes with integer ticks; the imaginary axis thick and orange where
/// `unstable_on_axis(Im z)`.
fn draw_axes(image: &mut RgbImage, window: &PlotWindow, unstable_on_axis: impl Fn(f64) -> bool) {
    let (width, height) = (image.width, image.height);
    let origin = window.pixel_of(width, height, Complex::new(0.0, 0.0));
    let Some((x0, y0)) = origin.map(|(x, y)| (i64::from(x), i64::from(y))) else {
        return;
    };
    for x in 0..i64::from(width) {
        image.set(x, y0, AXIS);
    }
    for y in 0..height {
        let im = window.point_at(width, height, 0, y).im;
        let y = i64::from(y);
        if unstable_on_axis(im) {
            for dx in -1..=1 {
                image.set(x0 + dx, y, AXIS_UNSTABLE);
            }
        } else {
            image.set(x0, y, AXIS);
        }
    }
    const TICK: i64 = 3;
    for k in (window.re_min.ceil() as i64)..=(window.re_max.floor() as i64) {
        if let Some((x, _)) = window.pixel_of(width, height, Complex::new(k as f64, 0.0)) {
            for dy in -TICK..=TICK {
                image.set(x.into(), y0 + dy, AXIS);
            }
        }
    }
    for k in (window.im_min.ceil() as i64)..=(window.im_max.floor() as i64) {
        if let Some((_, y)) = window.pixel_of(width, height, Complex::new(0.0, k as f64)) {
            for dx in -TICK..=TICK {
                image.set(x0 + dx, y.into(), AXIS);
            }
        }
    }
}

/// A ring of radius 7 pixels (2 pixels thick) and a cross of half-length 10 centred on `(x, y)`.
fn draw_marker(image: &mut RgbImage, x: i64, y: i64) {
    const RADIUS: i64 = 7;
    const ARM: i64 = 10;
    for dy in -RADIUS - 1..=RADIUS + 1 {
        for dx in -RADIUS - 1..=RADIUS + 1 {
            let r = ((dx * dx + dy * dy) as f64).sqrt();
            if (r - RADIUS as f64).abs() <= 1.0 {
                image.set(x + dx, y + dy, MARKER);
            }
        }
    }
    for d in -ARM..=ARM {
        image.set(x + d, y, MARKER);
        image.set(x, y + d, MARKER);
    }
}

/// Draws the stability region (see [`render_stability_image`]) and writes it as an 8-bit RGB
/// PNG to `path`. The PNG is written to a temporary file in the same directory, flushed to disk
/// and then renamed onto `path`, so `path` is either the old file or the complete new one,
/// never half written.
pub fn render_stability_png(
    scheme: Scheme,
    order: u32,
    path: &Path,
    width: u32,
    height: u32,
) -> Result<(), RenderError> {
    let image = render_stability_image(scheme, order, width, height)?;
    let io_error = |source| RenderError::Io {
        path: path.to_owned(),
        source,
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(".resca-stability-")
        .suffix(".png.tmp")
        .tempfile_in(directory)
        .map_err(io_error)?;
    {
        let mut writer = BufWriter::new(temporary.as_file_mut());
        write_png(&image, &mut writer)?;
        writer.flush().map_err(io_error)?;
    }
    temporary.as_file().sync_all().map_err(io_error)?;
    // On failure the temporary file is deleted when `temporary` is dropped.
    temporary.persist(path).map_err(|e| io_error(e.error))?;
    Ok(())
}

fn write_png(image: &RgbImage, writer: impl Write) -> Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(writer, image.width, image.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut png_writer = encoder.write_header()?;
    png_writer.write_image_data(image.pixels.as_flattened())?;
    png_writer.finish()
}
