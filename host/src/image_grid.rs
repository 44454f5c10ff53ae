//! PNG grids of generated images: one tile per sample, written atomically.

use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};
use ndarray::ArrayView3;
use resca_reference::safetensors_file::{finish_atomic_write, temporary_sibling};

/// A grid of `rows x cols` tiles, each `scale` pixels per image pixel, with a 2-pixel gutter.
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
    pub scale: usize,
    width: usize,
    height: usize,
    tile: (usize, usize),
    rgb: Vec<u8>,
}

const GUTTER: usize = 2;

impl Grid {
    /// An empty (dark grey) grid for images of `image_side` pixels.
    pub fn new(rows: usize, cols: usize, image_side: usize, scale: usize) -> Self {
        let tile = (image_side * scale, image_side * scale);
        let width = cols * (tile.0 + GUTTER) + GUTTER;
        let height = rows * (tile.1 + GUTTER) + GUTTER;
        Self {
            rows,
            cols,
            scale,
            width,
            height,
            tile,
            rgb: vec![40; width * height * 3],
        }
    }

    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Draws image (C, H, W), values in [-1, 1], at tile (row, col): one channel as grey, three or
    /// more as RGB from the first three channels (latent channels are shown, not decoded).
    pub fn draw(&mut self, row: usize, col: usize, image: ArrayView3<f32>) {
        let (channels, h, w) = image.dim();
        let x0 = GUTTER + col * (self.tile.0 + GUTTER);
        let y0 = GUTTER + row * (self.tile.1 + GUTTER);
        let to_byte = |v: f32| (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8;
        for py in 0..h * self.scale {
            for px in 0..w * self.scale {
                let (iy, ix) = (py / self.scale, px / self.scale);
                let offset = ((y0 + py) * self.width + x0 + px) * 3;
                for c in 0..3 {
                    let channel = if channels >= 3 { c } else { 0 };
                    self.rgb[offset + c] = to_byte(image[[channel, iy, ix]]);
                }
            }
        }
    }

    /// Writes the grid as an 8-bit RGB PNG (temporary file, then renamed).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let temp = temporary_sibling(path);
        let written = (|| -> Result<()> {
            let file = std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
            let mut encoder = png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header()?;
            writer.write_image_data(&self.rgb)?;
            writer.finish()?;
            Ok(())
        })();
        let written = written.map_err(|e| resca_reference::Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("{e:#}")),
        });
        Ok(finish_atomic_write(path, &temp, written)?)
    }
}
