//! The stability-region picture: decoded back from the PNG file where it matters.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use resca_proofs::region_png::{AXIS_UNSTABLE, BOUNDARY, MARKER, STABLE, UNSTABLE, UNSTABLE_LEFT};
use resca_proofs::{
    Complex, PlotWindow, RenderError, Scheme, analyse, render_stability_image, render_stability_png,
};

const WIDTH: u32 = 500;
const HEIGHT: u32 = 400;

/// A decoded PNG: `(width, height, RGB pixels)`.
fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(BufReader::new(File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels = buffer[..info.buffer_size()]
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

/// Renders to a PNG in a fresh directory and decodes it.
fn render_and_decode(scheme: Scheme, order: u32) -> (u32, u32, Vec<[u8; 3]>) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("region.png");
    render_stability_png(scheme, order, &path, WIDTH, HEIGHT).unwrap();
    decode(&path)
}

fn colour_at(pixels: &[[u8; 3]], z: Complex) -> [u8; 3] {
    let (x, y) = PlotWindow::DEFAULT.pixel_of(WIDTH, HEIGHT, z).unwrap();
    pixels[(y * WIDTH + x) as usize]
}

#[test]
fn png_has_the_requested_size_and_is_not_blank() {
    for (scheme, order) in [
        (Scheme::ImplicitTaylor, 3),
        (Scheme::Bdf2, 2),
        (Scheme::ExplicitTaylor, 4),
    ] {
        let (width, height, pixels) = render_and_decode(scheme, order);
        assert_eq!((width, height), (WIDTH, HEIGHT));
        assert_eq!(pixels.len(), (WIDTH * HEIGHT) as usize);
        // Both stable and unstable regions take a sizeable share of the window (>= 5% each).
        let share =
            |colour| pixels.iter().filter(|&&p| p == colour).count() as f64 / pixels.len() as f64;
        let unstable = share(UNSTABLE) + share(UNSTABLE_LEFT);
        assert!(share(STABLE) > 0.05 && unstable > 0.05, "{scheme} {order}");
        assert!(share(BOUNDARY) > 0.0, "{scheme} {order}: no boundary drawn");
    }
}

/// Points far (>= 0.5) from every region boundary and axis: shaded iff stable.
#[test]
fn known_stable_points_are_shaded_and_known_unstable_points_are_not() {
    let cases = [
        // (scheme, order, z, expected colour, reason)
        (
            Scheme::ExplicitTaylor,
            1,
            Complex::new(-1.0, 0.5),
            STABLE,
            "|1 + z| = 0.5",
        ),
        (
            Scheme::ExplicitTaylor,
            1,
            Complex::new(-4.0, 2.0),
            UNSTABLE_LEFT,
            "|1 + z| = 3.6",
        ),
        (
            Scheme::ExplicitTaylor,
            1,
            Complex::new(1.5, 1.5),
            UNSTABLE,
            "|1 + z| = 2.9",
        ),
        (
            Scheme::ImplicitTaylor,
            3,
            Complex::new(-3.0, 3.0),
            STABLE,
            "gain 0.03",
        ),
        (
            Scheme::ImplicitTaylor,
            3,
            Complex::new(1.0, 0.5),
            UNSTABLE,
            "gain 2.0",
        ),
        (Scheme::Bdf2, 2, Complex::new(-2.0, 2.0), STABLE, "rho 0.35"),
        (Scheme::Bdf2, 2, Complex::new(2.0, 0.5), UNSTABLE, "rho 2.7"),
    ];
    for (scheme, order, z, expected, reason) in cases {
        let (_, _, pixels) = render_and_decode(scheme, order);
        assert_eq!(
            colour_at(&pixels, z),
            expected,
            "{scheme} {order} at {z} ({reason})"
        );
    }
}

#[test]
fn the_counterexample_pixel_is_marked() {
    for (scheme, order) in [
        (Scheme::ImplicitTaylor, 3),
        (Scheme::ImplicitTaylor, 4),
        (Scheme::ExplicitTaylor, 1),
    ] {
        let c = analyse(scheme, order).unwrap().counterexample.unwrap();
        let (_, _, pixels) = render_and_decode(scheme, order);
        assert_eq!(
            colour_at(&pixels, Complex::new(c.re, c.im)),
            MARKER,
            "{scheme} {order}"
        );
        // The ring: 7 pixels (0.14 in z) to the right of the centre is red too.
        let ring = Complex::new(c.re + 7.0 * 10.0 / f64::from(WIDTH), c.im);
        assert_eq!(
            colour_at(&pixels, ring),
            MARKER,
            "{scheme} {order}: no ring"
        );
    }
}

/// A-stable schemes have no counterexample, hence no marker, and no unstable imaginary axis.
#[test]
fn a_stable_schemes_have_no_marker_and_no_unstable_axis() {
    for (scheme, order) in [(Scheme::ImplicitTaylor, 2), (Scheme::Bdf2, 2)] {
        let (_, _, pixels) = render_and_decode(scheme, order);
        assert!(!pixels.contains(&MARKER), "{scheme} {order}");
        assert!(!pixels.contains(&AXIS_UNSTABLE), "{scheme} {order}");
        assert!(!pixels.contains(&UNSTABLE_LEFT), "{scheme} {order}");
    }
}

/// Implicit Taylor M = 3: the imaginary axis is highlighted where `0 < |Im z| < sqrt 3`
/// (`|G(iy)| > 1` there) and not beyond (`y = 2.5`).
#[test]
fn the_unstable_part_of_the_imaginary_axis_is_highlighted() {
    let image = render_stability_image(Scheme::ImplicitTaylor, 3, WIDTH, HEIGHT).unwrap();
    let at = |im: f64| {
        let (x, y) = PlotWindow::DEFAULT
            .pixel_of(WIDTH, HEIGHT, Complex::new(0.0, im))
            .unwrap();
        image.get(x, y)
    };
    assert_eq!(at(0.5), AXIS_UNSTABLE);
    assert_eq!(at(-1.2), AXIS_UNSTABLE);
    assert_ne!(at(2.5), AXIS_UNSTABLE);
}

/// The file appears complete or not at all: after success the directory holds only the PNG (no
/// temporary left behind); writing into a missing directory is an error and creates nothing.
#[test]
fn png_is_written_atomically() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("region.png");
    render_stability_png(Scheme::Bdf2, 2, &path, 50, 40).unwrap();
    let names: Vec<_> = std::fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["region.png"]);

    let missing = directory.path().join("no-such-dir").join("region.png");
    let error = render_stability_png(Scheme::Bdf2, 2, &missing, 50, 40).unwrap_err();
    assert!(matches!(error, RenderError::Io { .. }), "{error}");
    assert!(!missing.exists());
}

#[test]
fn bad_sizes_and_orders_are_errors() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("region.png");
    for (width, height) in [(0, 10), (10, 0), (9000, 10)] {
        let error = render_stability_png(Scheme::Bdf2, 2, &path, width, height).unwrap_err();
        assert!(matches!(error, RenderError::BadSize { .. }), "{error}");
    }
    let error = render_stability_png(Scheme::ImplicitTaylor, 7, &path, 50, 40).unwrap_err();
    assert!(matches!(error, RenderError::Stability(_)), "{error}");
    assert!(!path.exists());
}

/// Tiny images work (the marker and the ticks are clipped, not out of bounds).
#[test]
fn tiny_images_render() {
    for (width, height) in [(1, 1), (3, 2), (17, 5)] {
        let image = render_stability_image(Scheme::ImplicitTaylor, 4, width, height).unwrap();
        assert_eq!(image.pixels.len(), (width * height) as usize);
    }
}
