//! Fuzz the public API with hostile arguments (see `gpusvm::sim::harness::api`): any address,
//! size, order, pagemap id, notifier id and event, on a simulated machine with one or two
//! devices, with injected allocation failures (`ApiOp::FailAllocs`). Nothing may panic (overflow
//! checks are on), every error must be a typed `Error`, a call failing with `NoMem` leaves the
//! state as its contract says, the simulator's invariant checker must hold after every call,
//! and after the run every allocation has been freed.
//!
//! Run: `cargo +nightly fuzz run api -- -max_total_time=600`.
//! A crash input replays on stable: `GPUSVM_REPLAY=<file> cargo test --features sim --test
//! api_hostile replay`.
#![no_main]

use gpusvm::sim::harness::api::{run, ApiInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: ApiInput| {
    if let Err(e) = run(&input) {
        panic!("public API contract violated: {e}");
    }
});
