pub mod entry_points;
