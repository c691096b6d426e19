//! Whole-machine state-machine harness: a sequence of [`Op`]s (CPU and device accesses, VMA
//! changes, migrations, evictions, GC runs, injected failures, fork) is applied to a simulated
//! machine with one or more devices with device memory, next to a data model, and everything is
//! checked after every step. The machine is closed and torn down at the end.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/state_machine.rs` and the stable test
//! `tests/sim_state_machine.rs` (many seeds, proptest, the committed corpus).
//!
//! **The model.** `mapped`: every page of the arena that has a VMA, and whether it is writable;
//! `data`: every 8-byte word ever written (by the CPU or a device) with its last value (words
//! not in it read as zero). Values written are unique per step, so a stale copy cannot pass for
//! the current one.
//!
//! **Checked after every step:** the simulator's invariant checker on all devices (docs/DESIGN.md
//! invariants 1, 2, 3, 5, 6 with device-memory accounting); no CPU PTE left isolated or as a
//! migration placeholder; for every pagemap, allocations made = released + live, and no page
//! freed twice; the VMAs are exactly the model's. Every CPU and device read is compared with the
//! model (invariant 4). **At the end:** every device closes (`check_closed`), every word of the
//! model reads back by the CPU, and once the arena (and a forked child) are unmapped no device
//! memory, no allocation, no DMA mapping and no system frame is left.
//!
//! **Which errors are allowed.** A call fails exactly when the model says so — `Fault` on
//! unmapped memory, `Perm` for a write or atomic to read-only memory, `Invalid` for `mmap` over
//! a mapping, `NoMem` for `mprotect` over a hole — and otherwise must succeed, with these
//! exceptions, each a documented behaviour: any error when an injected failure fired during the
//! call (nothing may be lost even then); `Fault` for a device atomic (atomics need device
//! memory: SPEC §8) unless the device has room for the whole arena, no fork child shares
//! pages, and no injection fired; `Busy`/`NoMem`/`Again`/`NotSupported` for an explicit
//! migration. (A device write to a writable page whose range also covers pages an `mprotect`
//! made read-only must succeed: the fault service rebuilds the range; `Summary` counts them.)
//!
//! **Extending.** More devices: raise [`MAX_DEVICES`] (up to 4: [`Setup::vram`] has 4 entries
//! and every `dev` is taken modulo the device count). New operations (attribute changes,
//! prefetch, ...) are new [`Op`] variants with their expectation in `Machine::apply`; add them
//! at the end of the enum and regenerate the seed corpus (`write_seed_corpus` in
//! `tests/sim_state_machine.rs`), since `arbitrary` maps variant numbers by the variant count.
//!
//! ```
//! use gpusvm::sim::harness::state_machine::{run, Loc, Op, Setup};
//! let loc = Loc { slot: 0, block: 3, word: 1 };
//! let ops = [
//!     Op::CpuWrite { loc, value: 7 },
//!     Op::DevRead { dev: 0, loc },
//!     Op::DevWrite { dev: 1, loc, value: 9 },
//!     Op::CpuRead { loc },
//! ];
//! assert_eq!(run(Setup::default(), &ops), Ok(()));
//! ```

use machine::Machine;
use std::format;
use std::string::String;

mod apply;
mod input;
mod machine;

pub use input::{
    Input, Loc, Op, Premap, Prot, Setup, Span, Timeslice, VramSize, ATOMICS_ON_SYSMEM,
};

/// Devices a run uses at most (`Setup::devices` is reduced modulo this). The op encoding
/// (`dev: u8`, taken modulo the device count) and [`Setup::vram`] already allow 4.
pub const MAX_DEVICES: usize = 4;
/// Slots of the arena (each 2 MiB, 2 MiB aligned, adjacent).
pub const SLOTS: u8 = 4;
/// Size of one slot.
pub const SLOT_SIZE: u64 = 2 << 20;
/// Blocks (64 KiB) per slot: the granularity of VMA operations.
pub const BLOCKS: u8 = 32;
/// Size of one block.
pub const BLOCK_SIZE: u64 = 64 << 10;
/// Words per block that accesses name (each in a different 4 KiB page of the block).
pub const WORDS: u8 = 4;
/// First byte of the arena.
pub const ARENA: u64 = 0x40_0000_0000;
/// One past the last byte of the arena.
pub const ARENA_END: u64 = ARENA + SLOTS as u64 * SLOT_SIZE;
/// Longest op sequence run (the rest of a longer input is ignored).
pub const MAX_OPS: usize = 400;

/// What a run did (for tests that want to see that the interesting paths were reached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Steps run.
    pub steps: usize,
    /// Calls that failed as the model said they must (`Fault`, `Perm`, ...).
    pub expected_errors: usize,
    /// Calls that failed and were allowed to because an injected failure fired.
    pub injected_errors: usize,
    /// Injected failures that fired.
    pub injections_fired: usize,
    /// Device atomics that succeeded / failed with `Fault` (no device memory to be had).
    pub atomics_ok: usize,
    /// See `atomics_ok`.
    pub atomics_refused: usize,
    /// Device writes and atomics that succeeded although their existing range also covered
    /// read-only pages (the fault service rebuilt the range inside the writable VMA).
    pub straddles_rebuilt: usize,
    /// Explicit migrations refused with `Busy`/`NoMem`/`Again`/`NotSupported`.
    pub migrations_refused: usize,
    /// Summed over devices at the end: migrations to device memory, to RAM, evictions,
    /// failed migrations, GC'd ranges.
    pub migrations_to_devmem: usize,
    /// See `migrations_to_devmem`.
    pub migrations_to_ram: usize,
    /// See `migrations_to_devmem`.
    pub evictions: usize,
    /// See `migrations_to_devmem`.
    pub migrate_failures: usize,
    /// See `migrations_to_devmem`.
    pub gc_ranges: usize,
    /// Attribute changes applied / refused (`NoLink`, `Invalid`, as the model predicts).
    pub attrs_set: usize,
    /// See `attrs_set`.
    pub attrs_refused: usize,
    /// Device atomics refused with `Access` (atomic policy `cpu`).
    pub atomics_forbidden: usize,
    /// Prefetches that completed / failed (a hole, no room, ...).
    pub prefetches_ok: usize,
    /// See `prefetches_ok`.
    pub prefetches_failed: usize,
}

fn err<T>(what: String) -> Result<T, String> {
    Err(what)
}

/// Run `ops` (at most [`MAX_OPS`]) on a machine built from `setup`, checking after every step,
/// then close and tear down. Returns the first divergence.
pub fn run(setup: Setup, ops: &[Op]) -> Result<(), String> {
    run_summary(setup, ops).map(|_| ())
}

/// [`run`], returning what the run did.
pub fn run_summary(setup: Setup, ops: &[Op]) -> Result<Summary, String> {
    let mut m = Machine::new(&setup)?;
    for (i, op) in ops.iter().take(MAX_OPS).enumerate() {
        m.step = i;
        m.apply(op)
            .and_then(|()| m.check())
            .map_err(|e| format!("step {i} {op:?}: {e}"))?;
        m.sum.steps += 1;
    }
    m.finish().map_err(|e| format!("at the end: {e}"))?;
    Ok(m.sum)
}
