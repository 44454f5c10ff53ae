//! Titled panels of sample grids, placed side by side (full compute next to a cached method) or
//! stacked (every method of a comparison).

use ndarray::ArrayView4;

use super::canvas::{Canvas, DARK, WHITE};

/// One titled grid: images (B, C, H, W) laid out `cols` per row.
pub struct Panel<'a> {
    pub title: String,
    pub images: ArrayView4<'a, f32>,
    pub cols: usize,
}

const GAP: usize = 2;
const MARGIN: usize = 8;
const TITLE_HEIGHT: usize = 14;

/// Panels side by side on a dark background, each image `scale` pixels per image pixel, each
/// panel titled above in white.
pub fn panels(panels: &[Panel<'_>], scale: usize) -> Canvas {
    let sizes: Vec<(usize, usize)> = panels
        .iter()
        .map(|p| {
            let (b, _, h, w) = p.images.dim();
            let cols = p.cols.clamp(1, b.max(1));
            let rows = b.div_ceil(cols);
            (cols * (w * scale + GAP), rows * (h * scale + GAP))
        })
        .collect();
    let width = MARGIN + sizes.iter().map(|(w, _)| w + MARGIN).sum::<usize>();
    let height = 2 * MARGIN + TITLE_HEIGHT + sizes.iter().map(|(_, h)| *h).max().unwrap_or(0);
    let mut canvas = Canvas::new(width, height, DARK);
    let mut x0 = MARGIN;
    for (panel, (panel_width, _)) in panels.iter().zip(&sizes) {
        canvas.text(x0 as i64, MARGIN as i64, &panel.title, WHITE, 1);
        let (b, _, h, w) = panel.images.dim();
        let cols = panel.cols.clamp(1, b.max(1));
        for (i, image) in panel.images.outer_iter().enumerate() {
            let (row, col) = (i / cols, i % cols);
            let x = x0 + col * (w * scale + GAP);
            let y = MARGIN + TITLE_HEIGHT + row * (h * scale + GAP);
            canvas.image(x, y, image, scale);
        }
        x0 += panel_width + MARGIN;
    }
    canvas
}

/// Panels stacked top to bottom, each a title line over its grid (for many methods at once).
pub fn panel_column(panels: &[Panel<'_>], scale: usize) -> Canvas {
    let sizes: Vec<(usize, usize)> = panels
        .iter()
        .map(|p| {
            let (b, _, h, w) = p.images.dim();
            let cols = p.cols.clamp(1, b.max(1));
            (cols * (w * scale + GAP), b.div_ceil(cols) * (h * scale + GAP))
        })
        .collect();
    let width = 2 * MARGIN + sizes.iter().map(|(w, _)| *w).max().unwrap_or(0);
    let height = MARGIN + sizes.iter().map(|(_, h)| h + TITLE_HEIGHT + MARGIN).sum::<usize>();
    let mut canvas = Canvas::new(width, height, DARK);
    let mut y0 = MARGIN;
    for (panel, (_, panel_height)) in panels.iter().zip(&sizes) {
        canvas.text(MARGIN as i64, y0 as i64, &panel.title, WHITE, 1);
        let (b, _, h, w) = panel.images.dim();
        let cols = panel.cols.clamp(1, b.max(1));
        for (i, image) in panel.images.outer_iter().enumerate() {
            let x = MARGIN + (i % cols) * (w * scale + GAP);
            let y = y0 + TITLE_HEIGHT + (i / cols) * (h * scale + GAP);
            canvas.image(x, y, image, scale);
        }
        y0 += panel_height + TITLE_HEIGHT + MARGIN;
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn two_panels_sit_side_by_side_with_their_images() {
        let white = Array4::<f32>::ones((4, 1, 8, 8));
        let black = Array4::<f32>::from_elem((4, 1, 8, 8), -1.0);
        let canvas = panels(
            &[
                Panel {
                    title: "FULL".into(),
                    images: white.view(),
                    cols: 2,
                },
                Panel {
                    title: "RESCA".into(),
                    images: black.view(),
                    cols: 2,
                },
            ],
            2,
        );
        // Two panels of 2 x (16 + 2) px plus margins; one title row and 2 image rows.
        assert_eq!(canvas.width, 8 + 2 * (36 + 8));
        assert_eq!(canvas.height, 16 + 14 + 36);
        assert_eq!(canvas.pixel(8 + 1, 8 + 14 + 1), WHITE);
        assert_eq!(canvas.pixel(8 + 44 + 1, 8 + 14 + 1), [0, 0, 0]);
    }
}
