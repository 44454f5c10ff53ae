//! How a run compares: error and quality measures ([`metrics`]), the digit classifier behind the
//! quality measures ([`classifier`]), every caching method side by side at matched FLOPs
//! ([`compare`]), and the tokens' denoising trajectories of the supplement ([`trajectories`]:
//! runs recorded by [`recording`], seen in the frame of [`trajectory_frame`]).

pub mod classifier;
pub mod compare;
pub mod metrics;
pub mod recording;
pub mod trajectories;
pub mod trajectory_frame;
