//! Fuzz the whole simulated machine — CPU and device accesses on up to two devices with device
//! memory, mmap/munmap/mprotect/madvise, migrations, evictions, GC runs, fork, injected copy,
//! DMA and allocation failures, close — against a data model, with the invariant checker after
//! every step (see `gpusvm::sim::harness::state_machine`).
//!
//! Run: `cargo +nightly fuzz run state_machine -- -max_total_time=300`.
//! A crash input replays on stable with `tests/sim_state_machine.rs`:
//! `GPUSVM_REPLAY=fuzz/artifacts/state_machine/crash-... cargo test --features sim --test sim_state_machine replay -- --nocapture`.
#![no_main]

use gpusvm::sim::harness::state_machine::{run, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| {
    if let Err(e) = run(input.setup, &input.ops) {
        panic!("the machine diverged from the model: {e}");
    }
});
