//! Fault injection of a simulated device: failures of DMA maps, copy-engine calls and
//! device-memory allocations, at a given count or at a seeded random rate.

use super::SimDevice;
use crate::sim::{lock, Rng};
use crate::{Error, Result};

#[derive(Debug, Default)]
pub(super) struct DevInject {
    /// The `n`-th DMA map from now fails (1 = the next one); 0 = off.
    pub(super) dma_fail_at: u64,
    pub(super) dma_fail_ppm: u32,
    pub(super) rng: Rng,
    /// The `n`-th copy call from now fails (1 = the next one); 0 = off.
    pub(super) copy_fail_at: u64,
    /// ... after completing this many of its runs (partial completion).
    pub(super) copy_fail_after_runs: usize,
    pub(super) copy_fail_ppm: u32,
    /// The `n`-th device-memory allocation from now fails; 0 = off.
    pub(super) alloc_fail_at: u64,
}

impl SimDevice {
    /// Fail the `n`-th copy call from now (1 = the next one) after `after_runs` of its runs
    /// completed; 0 turns it off.
    pub fn inject_copy_fail_at(&self, n: u64, after_runs: usize) {
        let mut i = lock(&self.inject);
        i.copy_fail_at = n;
        i.copy_fail_after_runs = after_runs;
    }

    /// Fail copy calls at random (seeded), `ppm` in a million, after half their runs.
    pub fn inject_copy_fail_rate(&self, ppm: u32, seed: u64) {
        let mut i = lock(&self.inject);
        i.copy_fail_ppm = ppm;
        i.rng = Rng::new(seed);
    }

    /// Fail the `n`-th device-memory allocation from now with `NoMem`; 0 turns it off.
    pub fn inject_alloc_fail_at(&self, n: u64) {
        lock(&self.inject).alloc_fail_at = n;
    }

    /// Fail the `n`-th DMA map (of a system page or a peer's device page) from now (1 = the
    /// next one) with `NoMem`; 0 turns it off.
    pub fn inject_dma_fail_at(&self, n: u64) {
        lock(&self.inject).dma_fail_at = n;
    }

    /// Fail DMA maps at random (seeded), `ppm` in a million.
    pub fn inject_dma_fail_rate(&self, ppm: u32, seed: u64) {
        let mut i = lock(&self.inject);
        i.dma_fail_ppm = ppm;
        i.rng = Rng::new(seed);
    }

    /// The countdowns of the armed `inject_*_fail_at` injections: `(dma, copy, alloc)`, 0 when
    /// off or already fired. An injection fired during a call iff its countdown went from
    /// non-zero to 0 (harnesses use this to know which errors a call may return).
    pub fn pending_injections(&self) -> (u64, u64, u64) {
        let i = lock(&self.inject);
        (i.dma_fail_at, i.copy_fail_at, i.alloc_fail_at)
    }

    /// An injected DMA-map failure (`map_page` and `map_peer` count alike): `NoMem` if this
    /// map is the one [`inject_dma_fail_at`](Self::inject_dma_fail_at) named or the random
    /// rate fires.
    pub(super) fn dma_injected(&self) -> Result<()> {
        let mut i = lock(&self.inject);
        if i.dma_fail_at > 0 {
            i.dma_fail_at -= 1;
            if i.dma_fail_at == 0 {
                return Err(Error::NoMem);
            }
        }
        let ppm = i.dma_fail_ppm;
        if ppm > 0 && i.rng.below(1_000_000) < u64::from(ppm) {
            return Err(Error::NoMem);
        }
        Ok(())
    }
}
