//! Harnesses shared by the fuzz targets (`fuzz/`) and the stable replay/property tests
//! (`tests/`): each takes a structured input (derived with `arbitrary`) and checks the crate
//! against a simple model, returning the first divergence as an error.

pub mod api;
pub mod range_tree;
pub mod state_machine;
