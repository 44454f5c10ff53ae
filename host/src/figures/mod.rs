//! The CLI's pictures: a small RGB raster written as PNG ([`canvas`]), sample grids in titled
//! panels ([`panels`]) and the trajectory plots of `resca trajectories` ([`trajectory_plot`]).

pub mod canvas;
pub mod panels;
pub mod trajectory_plot;
