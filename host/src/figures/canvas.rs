//! A small RGB raster for the CLI's pictures (sample grids, trajectory plots): filled
//! rectangles, lines, dots, images and text in a built-in 5x7 pixel font, written as PNG
//! through [`crate::outputs`] (a fresh temporary file, then a rename).

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use ndarray::ArrayView3;

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [150, 150, 150];
pub const DARK: Rgb = [40, 40, 40];

/// Distinct colours for series (clusters, methods).
pub const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// An RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        let rgb = background.iter().copied().cycle().take(width * height * 3).collect();
        Self { width, height, rgb }
    }

    /// Colour of pixel (x, y).
    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        let o = (y * self.width + x) * 3;
        [self.rgb[o], self.rgb[o + 1], self.rgb[o + 2]]
    }

    /// Sets pixel (x, y) if it lies on the canvas.
    pub fn set(&mut self, x: i64, y: i64, colour: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let o = (y as usize * self.width + x as usize) * 3;
            self.rgb[o..o + 3].copy_from_slice(&colour);
        }
    }

    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, colour: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, colour);
            }
        }
    }

    /// A straight line (Bresenham), `thickness` pixels wide.
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), colour: Rgb, thickness: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.fill_rect(x - thickness / 2, y - thickness / 2, thickness, thickness, colour);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A filled disc of radius `r`.
    pub fn dot(&mut self, (cx, cy): (i64, i64), r: i64, colour: Rgb) {
        for y in -r..=r {
            for x in -r..=r {
                if x * x + y * y <= r * r {
                    self.set(cx + x, cy + y, colour);
                }
            }
        }
    }

    /// Draws image (C, H, W), values in [-1, 1], with its top-left corner at (x0, y0), each image
    /// pixel `scale` canvas pixels: one channel as grey, three or more as RGB of the first three
    /// (latent channels are shown, not decoded).
    pub fn image(&mut self, x0: usize, y0: usize, image: ArrayView3<f32>, scale: usize) {
        let (channels, h, w) = image.dim();
        let to_byte = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
        for py in 0..h * scale {
            for px in 0..w * scale {
                let (iy, ix) = (py / scale, px / scale);
                let colour: Rgb = std::array::from_fn(|c| to_byte(image[[if channels >= 3 { c } else { 0 }, iy, ix]]));
                self.set((x0 + px) as i64, (y0 + py) as i64, colour);
            }
        }
    }

    /// Writes `text` with its top-left corner at (x, y), each font pixel `scale` canvas pixels.
    /// Lower-case letters are drawn as capitals; characters without a glyph as blanks.
    pub fn text(&mut self, x: i64, y: i64, text: &str, colour: Rgb, scale: i64) {
        for (i, ch) in text.chars().enumerate() {
            let glyph = glyph(ch.to_ascii_uppercase());
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let gx = x + (i as i64 * 6 + col) * scale;
                        self.fill_rect(gx, y + row as i64 * scale, scale, scale, colour);
                    }
                }
            }
        }
    }

    /// Width in pixels of `text` drawn at `scale`.
    pub fn text_width(text: &str, scale: i64) -> i64 {
        text.chars().count() as i64 * 6 * scale
    }

    /// Writes an 8-bit RGB PNG (temporary file, then renamed; nothing is left on failure).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let destination = crate::outputs::check_destinations(&[("the PNG", path)], &[])?.remove(0);
        destination.write(|w| self.encode_png(w))
    }

    /// The PNG encoding of the canvas (8-bit RGB).
    pub fn encode_png(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut encoder = png::Encoder::new(out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(&self.rgb).map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    }
}

/// The 5x7 glyph of `ch`: seven rows, the five low bits of each a pixel (bit 4 leftmost).
fn glyph(ch: char) -> [u8; 7] {
    match ch {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        'x' | '*' => [0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_shapes_touch_the_expected_pixels() {
        let mut canvas = Canvas::new(40, 20, WHITE);
        canvas.text(1, 1, "1", BLACK, 1);
        // The top row of '1' is the single pixel in column 2 of the glyph.
        assert_eq!(canvas.pixel(1 + 2, 1), BLACK);
        assert_eq!(canvas.pixel(1, 1), WHITE);
        canvas.line((0, 19), (39, 19), PALETTE[0], 1);
        assert_eq!(canvas.pixel(20, 19), PALETTE[0]);
        canvas.dot((30, 10), 2, PALETTE[1]);
        assert_eq!(canvas.pixel(30, 10), PALETTE[1]);
        assert_eq!(canvas.pixel(33, 10), WHITE);
    }

    #[test]
    fn png_round_trips_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let mut canvas = Canvas::new(7, 5, DARK);
        canvas.set(3, 2, WHITE);
        canvas.write_png(&path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 5));
        assert_eq!(&buf[(2 * 7 + 3) * 3..][..3], &WHITE);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
