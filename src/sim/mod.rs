//! A deterministic simulated platform (feature `sim`): a CPU address space with VMAs and real
//! page contents, devices with their own page tables, an IOMMU that records every mapping,
//! fault injection, and an invariant checker. Driver authors reuse it to test their
//! integration.
//!
//! ```
//! use gpusvm::sim::{SimWorld, SimMm, SimGpu};
//! use gpusvm::platform::VmaFlags;
//! let world = SimWorld::new();
//! let mm = SimMm::new(&world);
//! let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
//! let buf = mm.mmap(1 << 20, VmaFlags::READ | VmaFlags::WRITE, false).unwrap();
//! mm.write_u64(buf, 42).unwrap();                 // the CPU writes
//! assert_eq!(gpu.read_u64(buf).unwrap(), 42);     // the device faults and sees it
//! gpu.write_u64(buf + 8, 7).unwrap();             // the device writes
//! assert_eq!(mm.read_u64(buf + 8).unwrap(), 7);   // the CPU sees it
//! gpu.check().unwrap();                           // invariants hold
//! ```
//!
//! The simulator is a test tool: it favours clarity over speed, uses `std`, and reports misuse
//! (double DMA unmaps, stale device mappings, leaks) through [`check_invariants`].
#![allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

mod alloc;
mod check;
mod cpu;
mod device;
pub mod harness;
pub mod lockdep;
mod world;

pub use alloc::{AllocStats, SimAlloc};
pub use check::{check_closed, check_invariants};
pub use cpu::{CpuPte, InvalidationSink, SimMm, SimMmView, SimVma};
pub use device::{
    DevPte, DmaMapping, SimDevice, SimDevmem, SimGpu, SimPagemapArc, SimPlatform, VRAM_POISON,
};
pub use lockdep::SimHost;
pub use world::{SimPagemapHooks, SimWorld};

/// A range of the simulator's [`Svm`](crate::Svm)s (their locks are [`SimHost`]).
pub type SimRange = crate::Range<SimHost>;
/// A pagemap of simulated device memory with the simulator's locks.
pub type SimPagemap = crate::pagemap::Pagemap<SimDevmem, SimHost>;

use std::sync::{Mutex, MutexGuard};

/// Lock a std mutex, ignoring poisoning (a panicking test already failed).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small deterministic random number generator (xorshift64*) for seeded fault injection.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Default for Rng {
    fn default() -> Self {
        Rng::new(0x9E37_79B9_7F4A_7C15)
    }
}

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2545_F491_4F6C_DD1D | 1)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A value in `0..n` (0 if `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}
