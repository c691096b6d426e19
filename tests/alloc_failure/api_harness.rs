//! The `api` fuzz harness with failing allocations (`ApiOp::FailAllocs` before every call).

use gpusvm::sim::SimAlloc;

// ---- the api harness with failing allocations -------------------------------------------------

/// The hostile-argument harness of the `api` fuzz target (`gpusvm::sim::harness::api`) with an
/// `ApiOp::FailAllocs` before every call: seeded random machines and calls, each call running
/// with up to 8 allocations failing, from its first allocation or after a few (up to 63)
/// succeeded. The harness checks after every call that a call failing with `NoMem` left the
/// state as it was where its contract says so, that the invariants hold, and after the run
/// that every allocation was freed.
#[test]
fn api_harness_with_failing_allocations() {
    use arbitrary::{Arbitrary, Unstructured};
    use gpusvm::sim::harness::api::{run_stats, ApiInput, ApiOp, Setup};
    use gpusvm::sim::Rng;

    let (seeds, ops) = if cfg!(miri) { (2u64, 8) } else { (500, 40) };
    let (mut failed, mut calls) = (0u64, 0usize);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed << 1 | 0x10_0000);
        let bytes: Vec<u8> = (0..ops * 48 + 256).map(|_| rng.next_u64() as u8).collect();
        let mut u = Unstructured::new(&bytes);
        let setup = Setup::arbitrary(&mut u).unwrap_or_default();
        let mut input = ApiInput {
            setup,
            ops: Vec::new(),
        };
        while input.ops.len() < 2 * ops {
            let Ok(op) = ApiOp::arbitrary(&mut u) else {
                break;
            };
            // Half the time from the call's first allocation, a quarter a few allocations into
            // it, a quarter anywhere up to 63 (the harness takes `skip` modulo 64).
            let r = rng.next_u64();
            let skip = match (r >> 8) % 4 {
                0 | 1 => 0,
                2 => (r >> 16) % 8,
                _ => r >> 16,
            };
            input.ops.push(ApiOp::FailAllocs {
                skip: skip as u8,
                n: r as u8,
            });
            input.ops.push(op);
        }
        calls += input.ops.len() / 2;
        if let Err(e) = run_stats(&input) {
            panic!("seed {seed}: {e}\ninput: {input:?}");
        }
        failed += SimAlloc::stats().failed;
    }
    eprintln!("{calls} calls, {failed} allocations failed");
    if !cfg!(miri) {
        assert!(
            failed >= 200,
            "the failures must reach the library: {failed}"
        );
    }
}
