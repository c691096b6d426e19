//! Fuzz the range tree against a `BTreeMap` model (see `gpusvm::sim::harness::range_tree`).
//!
//! Run: `cargo +nightly fuzz run range_tree -- -max_total_time=60`.
//! A crash input replays on stable with the `replay` test of `tests/prop_range_tree.rs`:
//! `GPUSVM_REPLAY=<file> cargo test --features sim --test prop_range_tree replay`.
#![no_main]

use gpusvm::sim::harness::range_tree::{run, RangeTreeOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<RangeTreeOp>| {
    if let Err(e) = run(&ops) {
        panic!("range tree diverged from the model: {e}");
    }
});
